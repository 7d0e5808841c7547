"""Interference on the record (issue 30 item 1): what the host did while a cell's arms were timed (/proc/stat's
run queue and steal, the paired ratios' spread), the rules that mark the cell, the record, the one-line warning,
the report's mark and ``--rerun-noisy``."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import seeded_model, suite_toml
from test_report import make_suite_records, write_records

from tokenbench.harness.model import BASELINE
from tokenbench.harness.timing import (
    HostProbe,
    HostSample,
    Interference,
    read_proc_stat,
    time_forward,
    usable_cpus,
)

PROC_STAT = """cpu  100 5 50 1000 20 0 3 40 0 0
cpu0 50 2 25 500 10 0 1 20 0 0
intr 12345
ctxt 999
procs_running 3
procs_blocked 0
"""


def test_proc_stat_is_read_for_the_run_queue_and_steal():
    s = read_proc_stat(PROC_STAT)
    assert s == HostSample(procs_running=3, steal=40, total=100 + 5 + 50 + 1000 + 20 + 0 + 3 + 40)
    assert read_proc_stat("no such lines\n") is None  # not Linux: nothing, never a made-up figure
    probe = HostProbe("/nonexistent/stat")
    probe.sample()
    assert probe.samples == []
    i = Interference.measure(probe.samples, [], threads=2, cpus=2)
    assert i == Interference.unknown(2, 2) and i.reasons == [] and i.as_metrics() == {"interference": ""}


def _samples(running, steal=(0, 0), total=(0, 10_000)):
    out = [HostSample(r, steal[0], total[0]) for r in running[:-1]]
    return out + [HostSample(running[-1], steal[1], total[1])]


@pytest.mark.parametrize("running,threads,cpus,steal,ratios,reasons", [
    ([1, 1, 2, 1], 2, 2, (0, 0), [1.0, 1.01, 0.99, 1.0], []),  # quiet: our own thread, a kworker once
    ([3, 3, 4, 3], 2, 2, (0, 0), [1.0] * 4, ["runqueue"]),  # two others runnable all the time
    ([3, 3, 4, 3], 2, 8, (0, 0), [1.0] * 4, []),  # … on a host with six CPUs the cell leaves free
    ([1, 1], 2, 2, (0, 900), [1.0] * 4, ["steal"]),  # 9 % of the CPU time stolen
    ([1, 1], 2, 2, (0, 0), [1.0, 1.3, 0.8, 1.2, 0.9], ["spread"]),  # IQR 0.3 of a median 1.0
    ([1, 1], 2, 2, (0, 0), [1.0, 1.075, 0.925, 1.07, 0.93], []),  # IQR ~0.15: a quiet short arm's own jitter
    ([1, 1], 2, 2, (0, 0), [1.0, 1.5, 0.7], []),  # too few repeats to judge a spread
    ([4, 5], 1, 2, (0, 1000), [1.0, 1.3, 0.8, 1.2, 0.9], ["runqueue", "steal", "spread"]),
])
def test_the_rules_mark_a_cell_timed_under_interference(running, threads, cpus, steal, ratios, reasons):
    i = Interference.measure(_samples(running, steal), ratios, threads, cpus)
    assert i.reasons == reasons and i.flagged == bool(reasons)
    m = i.as_metrics()
    assert m["interference"] == "+".join(reasons) and m["host_runnable_others"] == pytest.approx(
        sum(r - 1 for r in running) / len(running))


def _burner(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.3)  # running before the timed region starts
    return procs


def test_a_cell_timed_beside_a_cpu_burner_is_flagged_and_the_burner_shows_in_its_pressure():
    """A subprocess spinning on every usable CPU for the whole timed region: always runnable, so it adds its
    count to every /proc/stat read. A loaded CI machine adds its own load, varying by several tasks from one
    second to the next, to both runs (the run without the burner is flagged there too), so the run without it
    is compared only where it ran clean; the rules' quiet case is the hand-built test above."""
    model = seeded_model("vit_t", 3, num_frames=4, img_size=32)
    clips = torch.randn(2, 3, 4, 32, 32)
    cpus = usable_cpus()
    kw = dict(warmup=0, repeats=4, batch_size=2, threads=1)  # one thread: no spin-waiting barrier vs the burner
    quiet = time_forward(model, clips, BASELINE, **kw)
    procs = _burner(cpus)
    try:
        busy = time_forward(model, clips, BASELINE, **kw)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert len(busy.host_samples) == 2 * 2 * 4  # each timed arm run's start and end
    i_busy, i_quiet = busy.interference, quiet.interference
    assert "runqueue" in i_busy.reasons and busy.as_metrics()["interference"].startswith("runqueue")
    assert i_busy.runnable_others >= cpus - 0.5  # every burner process, at (nearly) every read
    if not i_quiet.flagged:  # a quiet machine: the run without the burner is clean and shows less pressure
        assert "runqueue" not in i_quiet.reasons and i_quiet.runnable_others < i_busy.runnable_others


TINY = suite_toml(
    "noisy", "none", {"name": "random", "params": {"keep": 0.5}},
    defaults={"modes": None, "repeats": 2, "flops_check_clips": 0}, model={"num_frames": 4, "img_size": 32},
    datasets=({"name": "synthetic", "max_clips": 2},))


def test_rerun_noisy_re_times_exactly_the_cells_timed_under_interference(tmp_path):
    from tokenbench.harness.run import RunCache, run_suite
    from tokenbench.harness.suite import load_suite

    f = tmp_path / "noisy.toml"
    f.write_text(TINY)
    suite = load_suite(f)
    out, cache = tmp_path / "results", RunCache(cache_dir=tmp_path / "cache")
    first = run_suite(suite, out, show_progress=False, cache=cache, stream=open("/dev/null", "w"))
    assert first.ran == 2 and first.failed == 0
    store = next(out.glob("noisy/*/records.jsonl"))
    recs = [json.loads(line) for line in store.read_text().splitlines()]
    assert all("interference" in r["metrics"] and "host_runnable_others" in r["metrics"] for r in recs)
    for r in recs:  # the none cell as if timed beside a burner, the random one clean
        r["metrics"]["interference"] = "runqueue" if r["cell"]["reducer"] == "none" else ""
    store.write_text("".join(json.dumps(r) + "\n" for r in recs))
    kept = run_suite(suite, out, show_progress=False, cache=cache, stream=open("/dev/null", "w"))
    assert kept.ran == 0 and kept.noisy == 1  # counted, kept
    again = run_suite(suite, out, show_progress=False, cache=cache, stream=open("/dev/null", "w"),
                      rerun_noisy=True)
    assert again.ran == 1 and again.rerun_noisy
    newest = json.loads(store.read_text().splitlines()[-1])
    assert newest["cell"]["reducer"] == "none" and len(store.read_text().splitlines()) == 3


def test_run_warns_in_one_line_and_the_report_marks_noisy_cells(tmp_path, capsys):
    from tokenbench.harness import report
    from tokenbench.harness.cli.run import warn_noisy

    records = make_suite_records(train=False, failed=False, batches=(2,), datasets=("synthetic",))
    noisy = next(r for r in records if r["cell"]["reducer"] != "none")
    noisy["metrics"].update(interference="runqueue+steal", host_runnable_others=2.5, host_steal_pct=7.0)
    write_records(tmp_path / "results", records)
    suite_dir = tmp_path / "results" / "default"
    # not a cell of this run: silent
    warn_noisy(report.read(suite_dir), {r["key"] for r in records if r is not noisy})
    assert capsys.readouterr().err == ""
    warn_noisy(report.read(suite_dir), {r["key"] for r in records})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 cell(s) were timed under interference (runqueue, steal" in err
    assert "--rerun-noisy" in err
    report.write_report(tmp_path / "results", tmp_path / "reports", figures=False)
    tables = tmp_path / "reports" / "default" / "tables"
    inf = (tables / "inference.md").read_text(encoding="utf-8")
    det = (tables / "inference_details.md").read_text(encoding="utf-8")
    assert inf.count(" †") == 1 + 1 and "timed under interference" in inf  # the row and the note
    assert "runqueue+steal" in det and "other runnable" in det


def test_the_cells_own_running_threads_are_not_interference(tmp_path):
    # torch's OpenMP workers spin after a parallel region: at the probe's instants a quiet 2-thread cell shows
    # procs_running = 2, both its own; only tasks beyond them count (a quiet run flagged every cell before)
    from tokenbench.harness.interference import own_running_threads

    for tid, state in (("100", "R"), ("101", "R"), ("102", "S")):
        (tmp_path / tid).mkdir()
        (tmp_path / tid / "stat").write_text(f"{tid} (py thr (x)) {state} 1 2 3\n")
    assert own_running_threads(str(tmp_path)) == 2
    quiet = [HostSample(2, 0, t, own_running=2) for t in (100, 200)]
    busy = [HostSample(4, 0, t, own_running=2) for t in (100, 200)]
    assert Interference.measure(quiet, [1.0] * 8, threads=2, cpus=2).reasons == []
    assert Interference.measure(busy, [1.0] * 8, threads=2, cpus=2).reasons == ["runqueue"]
