"""``tokenbench run --launcher slurm`` on a real single-node Slurm (issue 17; the cluster: .ci/slurm-up,
tests/slurm_cluster.py), faults included: a job SIGKILLed mid-cell, a job over its time limit, a requeued
job, two sweeps on one results folder, a job whose interpreter cannot run tokenbench.

Each launcher runs as its own process (the ``tokenbench`` console script), as a user runs it, and
the jobs are Slurm's: sbatch, srun, slurmstepd. Cells are tiny (vit_t 8×64², random weights, the bundled
clips, two timed repeats). The time-limit sweep needs Slurm's shortest limit (1 min, enforced up to 30 s
late), so it is started in the background when the module starts and checked by the last test."""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import PRETRAINED, suite_toml, write_file
from slurm_cluster import running_cluster, wait_for

from tokenbench.harness.results import ResultStore, store_path
from tokenbench.harness.run.job import fingerprint_for
from tokenbench.harness.run.launch import recorded_keys
from tokenbench.harness.run.slurm_job import CellStart
from tokenbench.harness.suite import load_suite

TOKENBENCH = str(Path(sys.executable).with_name("tokenbench"))  # the console script, as a user runs it
SLURM = ["--launcher", "slurm", "--partition", "debug", "--gpus-per-job", "0", "--cpus-per-job", "1",
         "--mem-gb", "2"]


def write_suite(folder: Path, name: str, thresholds: tuple[float, ...] = (), repeats: int = 2) -> Path:
    rlt = [{"name": "rlt", "sweep": {"threshold": list(thresholds)}}] if thresholds else []
    return write_file(folder, f"{name}.toml", suite_toml(
        name, "none", *rlt, defaults={"modes": None, "batch_sizes": [4], "repeats": repeats, "time_clips": 4,
                                      "flops_check_clips": 1},
        datasets=({"name": "samples", "options": {"windows": 1}},)))


@pytest.fixture(scope="module")
def cluster():
    with running_cluster() as c:
        yield c


def launch(cluster, suite: Path, out: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    """``tokenbench run --launcher slurm`` as its own process (its output: stdout and stderr together)."""
    cmd = [TOKENBENCH, "run", "--suite", str(suite), "--out", str(out),
           "--report-dir", str(out.parent / "reports"), *SLURM, *(["--wait"] if wait else []), *extra]
    env = cluster.env(TOKENBENCH_CACHE=str(out.parent / "cache"))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=out.parent)


def finish(p: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        output, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        output, _ = p.communicate()
        pytest.fail(f"the launcher did not end in {timeout:.0f} s; its output:\n{output}")
    return p.returncode, output


def records(out: Path, suite: str) -> list[dict]:
    return [json.loads(line) for f in sorted((out / suite).glob("*/records.jsonl"))
            for line in f.read_text().splitlines()]


def markers(out: Path, suite: str) -> list[Path]:
    """The start markers of the suite's jobs (written by each job just before it runs its cell)."""
    return sorted((out / "_submitit" / suite).glob("*/*_cell.json"))


def has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (a job waiting for the records file's lock)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        return any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == str(path.resolve()) for fd in fds)
    except OSError:
        return False


@contextmanager
def store_locked(path: Path):
    """Hold the records file's lock, as a writer on a slow shared filesystem would: every job of the suite
    reaches its cell's store and waits there, still running, until the block ends."""
    ResultStore(path)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def cell_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if ln.startswith("cell ")]


# ---- the time-limit sweep, started first (it needs 60–90 s of Slurm's time) ------------------------
@pytest.fixture(scope="module", autouse=True)
def overrun(cluster, tmp_path_factory):
    """One cell far longer than its 1-minute limit, at nice 19 so that it only uses idle CPU."""
    tmp = tmp_path_factory.mktemp("overrun")
    suite, out = write_suite(tmp, "overrun", repeats=100_000), tmp / "results"
    p = launch(cluster, suite, out, "--timeout-min", "1", "--slurm-param", 'setup=["renice -n 19 -p $$ >/dev/null"]')
    yield p, suite, out
    if p.poll() is None:
        p.kill()
        p.communicate()
    subprocess.run(["scancel", "--name=tokenbench-overrun"], env=cluster.env(), capture_output=True)


# ---- tests ----------------------------------------------------------------------------------------
def test_a_sweep_records_each_cell_once_and_builds_the_report(cluster, tmp_path):
    suite, out = write_suite(tmp_path, "sweep", thresholds=(0.05, 0.1)), tmp_path / "results"
    cells = load_suite(suite).cells()
    assert len(cells) == 3
    rc, log = finish(launch(cluster, suite, out))
    assert rc == 0, log

    recs = records(out, "sweep")
    assert sorted(r["key"] for r in recs) == sorted(c["key"] for c in cells)  # each cell recorded once
    assert {r["status"] for r in recs} == {"ok"}, [r["error"] for r in recs]
    jobs = sorted(r["launcher"]["job_id"] for r in recs)
    assert all(re.fullmatch(r"\d+_[0-2]", j) for j in jobs) and len({j.split("_")[0] for j in jobs}) == 1, jobs
    for r in recs:  # each cell ran in its own Slurm array task, with its own log
        jid = r["launcher"]["job_id"]
        assert r["launcher"]["name"] == "slurm"
        assert "→" in (out / "_submitit" / "sweep" / jid / f"{jid}_0_log.out").read_text()
    assert (tmp_path / "reports" / "sweep" / "README.md").is_file()
    assert "rlt τ=0.05" in log and "rlt τ=0.1" in log  # the headline table

    # quiet polling: accounting is off here; said once, and one line per cell
    assert log.count("sacct is unavailable") == 1 and "sacct error" not in log and "WARNING" not in log, log
    lines = cell_lines(log)
    assert len(lines) == 3 and all(": ok (" in ln for ln in lines), log
    assert sorted(ln.split(": ")[0].split(" ", 2)[2] for ln in lines) == ["none", "rlt τ=0.05", "rlt τ=0.1"]

    rc, again = finish(launch(cluster, suite, out))  # everything is recorded: nothing is submitted
    assert rc == 0 and "nothing to submit" in again, again
    assert len(records(out, "sweep")) == 3


def _started_measuring(out: Path, suite: str) -> Path | None:
    """The marker of a job whose cell is being measured (its log says the cell started)."""
    for m in markers(out, suite):
        log = m.with_name(f"{m.name.removesuffix('_cell.json')}_0_log.out")
        if log.is_file() and "→" in log.read_text():
            return m
    return None


def test_a_job_killed_mid_cell_is_recorded_lost_and_only_its_cell_runs_again(cluster, tmp_path):
    suite, out = write_suite(tmp_path, "kill", thresholds=(0.05, 0.1)), tmp_path / "results"
    cells = load_suite(suite).cells()
    p = launch(cluster, suite, out)
    victim = CellStart.read(wait_for("a job measuring its cell", lambda: _started_measuring(out, "kill"), every=0.02))
    os.kill(victim.pid, signal.SIGKILL)  # what the kernel's OOM killer does
    rc, log = finish(p)
    assert rc == 1, log

    recs = records(out, "kill")
    lost = [r for r in recs if r["status"] == "lost"]
    assert len(recs) == 3 and len(lost) == 1 and sum(r["status"] == "ok" for r in recs) == 2, recs
    rec, jid = lost[0], victim.job_id
    assert rec["launcher"]["job_id"] == jid and "traceback" not in rec
    job_dir = out / "_submitit" / "kill" / jid
    assert (f"job {jid}" in rec["error"] and "SIGKILL" in rec["error"]
            and str(job_dir / f"{jid}_0_log.out") in rec["error"])
    assert rec["launcher"]["log"] == str(job_dir / f"{jid}_0_log.out")
    assert {r["fingerprint"]["id"] for r in recs} == {victim.fingerprint["id"]}  # the store of the node it ran on
    assert ": ok in" not in (job_dir / f"{jid}_0_log.out").read_text()  # it was killed mid-cell
    said = [ln for ln in cell_lines(log) if "LOST" in ln]
    assert len(said) == 1 and f"job {jid}" in said[0] and str(job_dir) in said[0], log
    assert sum(": ok (" in ln for ln in cell_lines(log)) == 2  # the other cells finished

    rc, again = finish(launch(cluster, suite, out))  # the next run: that cell, and only that one
    assert rc == 0, again
    assert "1 of 3 cells to run (2 recorded)" in again
    new = records(out, "kill")[3:]
    assert [(r["key"], r["status"]) for r in new] == [(rec["key"], "ok")]
    assert sorted(recorded_keys(out, "kill", device_type="cpu")) == sorted(c["key"] for c in cells)


def test_a_requeued_job_records_its_cell_once(cluster, tmp_path):
    suite, out = write_suite(tmp_path, "requeue"), tmp_path / "results"
    cell = load_suite(suite).cells()[0]
    store = store_path(out, "requeue", fingerprint_for(cell.device, cell.dtype, cell.threads)["id"])
    with store_locked(store):  # the job's first run cannot record before it is requeued
        p = launch(cluster, suite, out)
        first = CellStart.read(wait_for("the job to start its cell", lambda: (markers(out, "requeue") or [None])[0]))
        wait_for("the job to reach its store", lambda: has_open(first.pid, store))
        cluster.run("scontrol", "requeue", first.job_id)
        wait_for("the requeued job to be pending", lambda: cluster.state(first.job_id).startswith("PENDING"), 60)
    cluster.run("scontrol", "update", f"JobId={first.job_id}", "StartTime=now")  # Slurm holds a requeued job 2 min
    rc, log = finish(p)
    assert rc == 0, log

    recs = records(out, "requeue")
    assert len(recs) == 1 and recs[0]["status"] == "ok", recs  # no duplicate, no lost record
    assert recs[0]["launcher"]["job_id"] == first.job_id and first.restarts == 0
    again = CellStart.read(markers(out, "requeue")[0])
    assert again.restarts == 1 and again.pid != first.pid  # the record is the restarted run's
    assert f"job {first.job_id}" in log and "requeued" in log, log


def test_two_sweeps_at_once_on_one_results_folder_record_each_cell_once(cluster, tmp_path):
    suite, out = write_suite(tmp_path, "twice", thresholds=(0.1,)), tmp_path / "results"
    cells = load_suite(suite).cells()
    store = store_path(out, "twice", fingerprint_for(cells[0].device, cells[0].dtype, cells[0].threads)["id"])
    with store_locked(store):  # both sweeps' jobs start before either records: the race, every time
        a, b = launch(cluster, suite, out), launch(cluster, suite, out)
        wait_for("four jobs at their store", lambda: len(ms := markers(out, "twice")) == 4
                 and all(has_open(CellStart.read(m).pid, store) for m in ms))
    (rc_a, log_a), (rc_b, log_b) = finish(a), finish(b)
    assert rc_a == 0 and rc_b == 0, log_a + log_b
    recs = records(out, "twice")
    assert {r["status"] for r in recs} == {"ok"}
    assert sorted(r["key"] for r in recs) == sorted(c["key"] for c in cells)  # each cell once


def test_a_job_whose_interpreter_cannot_run_tokenbench_is_named_in_the_launchers_output(cluster, tmp_path):
    suite = write_suite(tmp_path, "python")
    missing = tmp_path / "gone-venv" / "bin" / "python"  # the login node's venv, absent on the compute node
    base = Path(sys.base_prefix) / "bin" / "python3"  # a Python without tokenbench (nor submitit)
    if subprocess.run([base, "-c", "import submitit"], capture_output=True).returncode == 0:
        pytest.fail(f"{base} imports submitit; this test needs a Python that does not")
    runs = [(launch(cluster, suite, tmp_path / name, "--slurm-param", f"python={python}"), tmp_path / name, python,
             said) for name, python, said in (("a", missing, "No such file or directory"),
                                              ("b", base, "No module named 'submitit'"))]
    for p, out, python, said in runs:
        rc, log = finish(p)
        assert rc == 1, log
        line = [ln for ln in cell_lines(log) if "NOT RUN" in ln]
        assert len(line) == 1, log
        assert "before its cell started" in line[0] and said in line[0] and str(python) in line[0], line[0]
        assert "--slurm-param python=PATH" in line[0] and str(out / "_submitit" / "python") in line[0]
        assert records(out, "python") == []  # never measured: nothing recorded, the next run submits it again


def test_ctrl_c_stops_the_wait_not_the_jobs(cluster, tmp_path):
    # cells long enough (several seconds) to be interrupted while they run: at 2 repeats they ended in ~1.4 s,
    # and beside another test worker the Ctrl-C could arrive after the launcher had already finished (rc 0)
    suite, out = write_suite(tmp_path, "interrupt", thresholds=(0.1,), repeats=100), tmp_path / "results"
    p = launch(cluster, suite, out, "--no-report")
    wait_for("the jobs to start", lambda: markers(out, "interrupt"))
    p.send_signal(signal.SIGINT)
    rc, log = finish(p)
    assert rc == 130 and "stopped waiting: " in log and "go on running on the cluster" in log, log
    wait_for("the jobs' records", lambda: len(records(out, "interrupt")) == 2, timeout=60)
    recs = records(out, "interrupt")
    assert {r["status"] for r in recs} == {"ok"}, [r.get("error") for r in recs]


PREPARE = suite_toml(  # fewer training clips than one batch: the prepare job fails
    "prepare", "none", {"name": "rlt", "params": {"threshold": 0.1}}, defaults={"modes": None, "repeats": 2},
    model={**PRETRAINED, "pretrain": {**PRETRAINED["pretrain"], "options": {"num_clips": 4}}},
    datasets=({"name": "synthetic", "max_clips": 4, "options": {"num_clips": 8}},))


def test_cells_waiting_on_a_failed_prepare_job_are_cancelled_and_reported(cluster, tmp_path):
    suite, out = tmp_path / "prepare.toml", tmp_path / "results"
    suite.write_text(PREPARE)
    rc, log = finish(launch(cluster, suite, out))
    assert rc == 1, log
    prep = re.search(r"prepare job (\d+)", log).group(1)
    lines = [ln for ln in cell_lines(log) if "NOT RUN" in ln]
    assert len(lines) == 2, log
    for ln in lines:  # the prepare job's own error and log, not a wait for ever on an unsatisfiable dependency
        assert f"(job {prep}: ValueError: training set of 4 clips gives no full batch of 8" in ln, ln
        assert str(out / "_submitit" / "prepare" / prep / f"{prep}_0_log.err") in ln
    array = {jid.split("_")[0] for jid in re.findall(r"job (\d+_\d+) never started", log)}
    assert len(array) == 1  # and nothing of it is left waiting in the queue
    states = cluster.run("squeue", "--noheader", "--array", "--states=all", f"--jobs={array.pop()}", "--format=%T")
    assert set(states.split()) == {"CANCELLED"}, states
    assert records(out, "prepare") == []


def test_a_partition_slurm_does_not_have_is_one_line_naming_slurms_reason(cluster, tmp_path):
    suite, out = write_suite(tmp_path, "partition"), tmp_path / "results"
    rc, log = finish(launch(cluster, suite, out, "--partition", "gpu-h100"))
    assert rc == 2, log
    assert "Traceback" not in log and log.strip().splitlines()[-1] == (
        "tokenbench run: error: --launcher slurm: sbatch refused the jobs: sbatch: error: invalid partition "
        "specified: gpu-h100; sbatch: error: Batch job submission failed: Invalid partition name specified")


def test_a_job_over_its_time_limit_is_recorded_as_timed_out_and_runs_again(cluster, overrun):
    p, suite, out = overrun
    rc, log = finish(p, timeout=240)
    assert rc == 1, log
    recs = records(out, "overrun")
    assert len(recs) == 1, recs
    rec, jid = recs[0], recs[0]["launcher"]["job_id"]
    assert rec["status"] == "timeout" and "traceback" not in rec, rec
    assert "time limit (--timeout-min 1)" in rec["error"] and f"job {jid}" in rec["error"]
    assert "UncompletedJobError" not in log and "Traceback" not in log
    assert [ln for ln in cell_lines(log) if "timeout — " in ln], log
    # Slurm's own account: stopped at the limit (on a loaded node it may still read COMPLETING for a while)
    wait_for("Slurm to account the job as timed out", lambda: cluster.state(jid).startswith("TIMEOUT"), timeout=120)
    job_log = (out / "_submitit" / "overrun" / jid / f"{jid}_0_log.out").read_text()
    assert "Slurm warns of the time limit" in job_log  # the warning was heard, and the cell went on

    # the next run submits it again (not waited for: it would time out again)
    rc, again = finish(launch(cluster, suite, out, wait=False))
    assert rc == 0 and "1 of 1 cells to run (0 recorded)" in again, again
