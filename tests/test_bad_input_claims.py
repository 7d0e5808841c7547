"""Two runs on one results folder measure each cell once (issue 16, item 3): the store's per-cell claim."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import suite_toml

from tokenbench.harness.results import ResultStore, store_path
from tokenbench.harness.suite import load_suite

HOLDER = """\
import sys, time
from tokenbench.harness.results import ResultStore
store = ResultStore(sys.argv[1])
with store.claim(sys.argv[2]) as claim:
    print("held" if claim.held else "refused: " + claim.why, flush=True)
    if sys.argv[3] == "record":
        store.append({"schema": 1, "key": sys.argv[2], "suite": "s", "status": "ok", "cell": {}, "metrics": {}})
    else:
        time.sleep(600)
"""


def _holder(tmp_path: Path, store: ResultStore, key: str, what: str) -> subprocess.Popen:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(store.path), key, what], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first = proc.stdout.readline().strip()
    assert first == "held", first + proc.stdout.read()
    return proc


def test_a_cell_claimed_by_another_process_is_refused_until_that_process_dies(tmp_path):
    store = ResultStore.for_suite(tmp_path, "s", "cpu-test")
    proc = _holder(tmp_path, store, "k1", "hold")
    try:
        with store.claim("k1") as claim:
            assert not claim.held
            assert f"pid {proc.pid}" in claim.why and "another run" in claim.why
        with store.claim("k2") as other:  # a claim is per cell
            assert other.held
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # a crash: no cleanup runs
        proc.wait(30)
    assert store.claim_path("k1").exists()  # the killed holder left its file behind …
    with store.claim("k1") as claim:  # … but not its lock: the kernel dropped it with the process
        assert claim.held
    assert not store.claim_path("k1").exists()  # a clean release removes the file


def test_a_cell_recorded_while_waiting_for_the_claim_is_not_run_again(tmp_path):
    store = ResultStore.for_suite(tmp_path, "s", "cpu-test")
    proc = _holder(tmp_path, store, "k3", "record")
    assert proc.wait(60) == 0
    with store.claim("k3") as claim:
        assert not claim.held and "recorded meanwhile" in claim.why
    store.append({"schema": 1, "key": "k4", "suite": "s", "status": "failed", "cell": {}, "metrics": {}})
    with store.claim("k4", include_failed=False) as claim:  # --retry-failed: a failed record is no reason
        assert claim.held


TWO = suite_toml(
    "two", "none", {"name": "rlt", "sweep": {"threshold": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5]}},
    defaults={"modes": None, "repeats": 2},
    datasets=({"name": "samples", "options": {"windows": 1, "videos": ["bikes", "carphone_distorted"]}},))


def test_two_concurrent_runs_on_one_out_record_each_cell_once(tmp_path):
    from tokenbench.harness.run import hardware_fingerprint

    suite_file = tmp_path / "two.toml"
    suite_file.write_text(TWO)
    suite = load_suite(suite_file)
    cells = suite.cells()
    out = tmp_path / "results"
    env = {**os.environ, "TOKENBENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "tokenbench.harness.cli", "run", "--suite", str(suite_file), "--out", str(out),
           "--no-report", "--no-progress"]

    def start():
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # this test process holds the last cell, as a third run measuring it would: both runs must skip it
    fp = hardware_fingerprint("cpu", suite.dtype, 1)["id"]
    store = ResultStore(store_path(out, "two", fp))
    with store.claim(cells[-1]["key"]) as held:
        assert held.held
        first, second = start(), start()  # at once: both find every cell unrecorded
        logs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], "\n----\n".join(logs)[-4000:]
    for log in logs:
        assert f"cell {len(cells)}/{len(cells)} rlt τ=0.5 skipped: claimed by another run (pid {os.getpid()} " in log
    keys = [json.loads(line)["key"] for line in store.path.read_text().splitlines()]
    assert sorted(keys) == sorted(c["key"] for c in cells[:-1])  # every cell once: none twice, none lost
    # released: the next run measures just that cell
    third = start()
    log = third.communicate(timeout=600)[0]
    assert third.returncode == 0 and f"1 of {len(cells)} cells to run" in log, log[-3000:]
    keys = [json.loads(line)["key"] for line in store.path.read_text().splitlines()]
    assert sorted(keys) == sorted(c["key"] for c in cells)
    assert list(out.glob("two/*/records.jsonl")) == [store.path]
    assert not list(out.glob("two/*/.claims/*.lock"))  # every claim released
