"""Sweeps through submitit (issue 7): real LocalExecutor jobs, real cells, one records file. Slurm runs for
real in tests/test_slurm.py (a single-node cluster); what a CPU-only cluster cannot show — GPU requests,
``device = "auto"`` resolved for GPU nodes from a login node without one — is checked here with stand-in
``srun``/``sbatch`` executables on PATH that capture what submitit hands to Slurm."""
from __future__ import annotations

import fcntl
import json
import os
import pickle
import stat
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from conftest import PRETRAINED, suite_toml, write_file

from tokenbench.harness.cli import main
from tokenbench.harness.results import ResultStore, load, store_path
from tokenbench.harness.run import pretrained_path
from tokenbench.harness.run.executors import warning_delay_s
from tokenbench.harness.run.launch import (
    LaunchOptions,
    launch,
    local_parallelism,
    pin_gpu,
    recorded_keys,
    run_job,
    slurm_executor,
)
from tokenbench.harness.run.slurm_job import run_slurm_cell
from tokenbench.harness.suite import load_suite

TWO = suite_toml(
    "two", "none", {"name": "rlt", "params": {"threshold": 0.1}}, model=PRETRAINED,
    defaults={"modes": None, "repeats": 2, "flops_check_clips": 1},
    datasets=({"name": "synthetic", "max_clips": 4, "options": {"num_clips": 8}},))


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("TOKENBENCH_CACHE", str(path))  # the jobs inherit it
    return path


def test_two_cell_sweep_through_the_local_launcher_lands_in_one_records_file(tmp_path, cache_dir, capsys):
    suite_file = tmp_path / "two.toml"
    suite_file.write_text(TWO)
    cells = load_suite(suite_file).cells()
    assert len(cells) == 2
    out = tmp_path / "results"
    args = ["run", "--suite", str(suite_file), "--out", str(out), "--no-report", "--launcher", "local",
            "--timeout-min", "10"]
    assert main(args) == 0
    log = capsys.readouterr().err
    assert "prepare job" in log  # the self-trained model: trained by one job before the cells fan out
    assert pretrained_path(cells[0]["pretrain"], cache_dir).is_file()

    files = sorted(out.rglob("records.jsonl"))
    assert len(files) == 1 and files[0].parent.parent == out / "two"
    lines = files[0].read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    recs = [json.loads(line) for line in lines[:-1]]
    assert sorted(r["key"] for r in recs) == sorted(c["key"] for c in cells)
    assert all(r["status"] == "ok" for r in recs), [r["error"] for r in recs]
    jobs = [r["launcher"]["job_id"] for r in recs]
    assert all(r["launcher"]["name"] == "local" for r in recs) and len(set(jobs)) == 2 and str(os.getpid()) not in jobs
    # one at a time on a machine without GPUs: the second cell started after the first finished
    first, second = sorted(recs, key=lambda r: r["started"])
    assert second["started"] >= first["finished"]
    df = load(out)
    assert len(df) == 2 and set(df["status"]) == {"ok"} and set(df["reducer"]) == {"none", "rlt"}
    assert (df["time_ms_median"] > 0).all() and df["top1"].notna().all()

    # again: every cell is recorded, nothing is submitted
    assert main(args) == 0
    assert "nothing to submit" in capsys.readouterr().err
    assert len(files[0].read_bytes().split(b"\n")) == 3

    # the records as if measured at another commit: counted and kept, then measured again by jobs that are
    # told the submitting checkout's commit (a job must not skip a cell its store holds from other code)
    files[0].write_text("".join(json.dumps({**r, "fingerprint": {**r["fingerprint"], "git_commit": "0" * 40}})
                                + "\n" for r in recs))
    assert main(args) == 0
    log = capsys.readouterr().err
    assert "nothing to submit" in log and "2 recorded cell(s) were measured at another commit" in log
    assert main(args + ["--rerun-stale"]) == 0
    assert "were measured again" in capsys.readouterr().err
    newest = [json.loads(line) for line in files[0].read_text().splitlines()][2:]
    assert len(newest) == 2 and all(r["status"] == "ok" and r["fingerprint"]["git_commit"] != "0" * 40
                                    for r in newest)


def _append_many(path: str, who: int, n: int, pad: int) -> int:
    store = ResultStore(path)
    for i in range(n):
        store.append({"key": f"{who}-{i}", "status": "ok", "writer": who, "pad": "x" * pad})
    return n


def test_jobs_appending_at_once_through_the_store_never_interleave(tmp_path):
    """Three LocalExecutor jobs running at the same time append large records to one file."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job imports tokenbench, not this file
    path = tmp_path / "s" / "fp" / "records.jsonl"
    ResultStore(path)
    ex = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    ex.update_parameters(timeout_min=5)
    n, pad = 40, 150_000  # each line far beyond an atomic write (PIPE_BUF is 4 KiB)
    jobs = ex.map_array(_append_many, [str(path)] * 3, [0, 1, 2], [n] * 3, [pad] * 3)
    assert [j.result() for j in jobs] == [n] * 3
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    recs = [json.loads(line) for line in lines[:-1]]
    assert len(recs) == 3 * n and all(len(r["pad"]) == pad for r in recs)
    assert sorted(r["key"] for r in recs) == sorted(f"{w}-{i}" for w in range(3) for i in range(n))


def _append_after_marker(path: str, marker: str) -> int:
    Path(marker).touch()
    ResultStore(path).append({"key": "late", "status": "ok"})
    return 1


def test_a_job_waits_for_the_records_lock_another_writer_holds(tmp_path):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    path, marker = tmp_path / "s" / "fp" / "records.jsonl", tmp_path / "started"
    ResultStore(path)
    ex = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    ex.update_parameters(timeout_min=5)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another writer mid-append
        job = ex.submit(_append_after_marker, str(path), str(marker))
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), job.stderr()
        time.sleep(1.5)
        assert path.read_bytes() == b"" and not job.done()  # the job is blocked on the lock
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert job.result() == 1
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["late"]


def test_local_jobs_never_share_a_gpu_or_the_cpu():
    assert local_parallelism("cpu", None, [])[0] == 1
    width, note = local_parallelism("cpu", 4, ["0", "1"])
    assert width == 1 and "one at a time" in note
    assert local_parallelism("cuda", None, ["0", "1", "2", "3"])[0] == 1
    assert local_parallelism("cuda", 4, ["0"])[0] == 1  # one GPU: timing cells one at a time
    assert local_parallelism("cuda", 4, ["0", "1"])[0] == 2  # one job per GPU
    assert local_parallelism("cuda", 2, ["0", "1", "2", "3"]) == (2, "")


def _visible() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")


def test_each_local_job_sees_only_the_gpu_it_was_given(tmp_path):
    """What the launcher's pinning hands a job process (no GPU needed to see the variable)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    ex.update_parameters(timeout_min=5)
    jobs = []
    for gpu in ("3", "GPU-8f2c1d9e-uuid", None):
        pin_gpu(ex, gpu)
        jobs.append(ex.submit(_visible))
    assert [j.result() for j in jobs] == ["3", "GPU-8f2c1d9e-uuid", ""]


def test_a_job_skips_a_cell_its_machine_already_recorded(tmp_path):
    cell = load_suite(_write(tmp_path, TWO.replace('pretrain = { dataset = "synthetic", options = { num_clips = 8 }, '
                                                   'epochs = 1, batch_size = 8, warmup_epochs = 0 }',
                                                   'checkpoint = "none"'))).cells()[0]
    out = tmp_path / "results"
    first = run_job(cell, "two", str(out))
    assert first["status"] == "ok"
    again = run_job(cell, "two", str(out))
    assert again["status"] == "skipped" and again["store"] == first["store"]
    assert len(Path(first["store"]).read_text().splitlines()) == 1


def _write(tmp_path: Path, text: str, name: str = "two.toml") -> Path:
    return write_file(tmp_path, name, text)


# ---- Slurm, without a cluster ----------------------------------------------------------------------
SBATCH = """#!/bin/sh
# stand-in for Slurm's sbatch: keep the script, answer like sbatch does
n=$(ls "$CAPTURE" | wc -l)
id=$((4242 + n))
cp "$1" "$CAPTURE/$id.sh"
echo "Submitted batch job $id"
"""


@pytest.fixture()
def fake_slurm(tmp_path, monkeypatch):
    """``srun`` and ``sbatch`` stand-ins on PATH (submitit looks for srun; sbatch gets the scripts)."""
    bin_dir, capture = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir()
    capture.mkdir()
    for name, text in (("srun", "#!/bin/sh\nexit 0\n"), ("sbatch", SBATCH)):
        f = bin_dir / name
        f.write_text(text)
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CAPTURE", str(capture))
    return capture


def _sbatch_flags(script: str) -> dict[str, str]:
    flags = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            k, _, v = line[len("#SBATCH --"):].partition("=")
            flags[k] = v
    return flags


def test_slurm_executor_parameters(tmp_path, fake_slurm):
    opts = LaunchOptions(launcher="slurm", partition="gpu-h100", gpus_per_job=1, array_parallelism=3,
                         timeout_min=90, cpus_per_job=8, mem_gb=32, slurm_params={"account": "vision"})
    ex = slurm_executor(tmp_path / "jobs", opts, "tokenbench-x")
    assert isinstance(ex, submitit.SlurmExecutor)
    p = ex.parameters
    assert p["partition"] == "gpu-h100" and p["gpus_per_node"] == 1 and p["array_parallelism"] == 3
    assert p["time"] == 90 and p["cpus_per_task"] == 8 and p["mem"] == "32768MB" and p["account"] == "vision"
    assert p["ntasks_per_node"] == 1 and p["nodes"] == 1 and p["job_name"] == "tokenbench-x"
    cpu = slurm_executor(tmp_path / "jobs", LaunchOptions(launcher="slurm", gpus_per_job=0), "t")
    assert "gpus_per_node" not in cpu.parameters  # no --gpus-per-node=0 line for CPU-only partitions
    # submitit's 90 s warning before the limit, less for short limits (slurmctld looks every 30 s: a warning
    # due within 30 s of the start would reach a job still starting Python, and kill it)
    assert p["signal_delay_s"] == 90 and [warning_delay_s(m) for m in (1, 2, 3, 240)] == [1, 30, 60, 90]
    short = slurm_executor(tmp_path / "jobs", LaunchOptions(launcher="slurm", timeout_min=1,
                                                            slurm_params={"python": "/shared/env/bin/python"}), "t")
    assert short.parameters["signal_delay_s"] == 1
    assert short.python == "/shared/env/bin/python" and "python" not in short.parameters  # the jobs' interpreter


def test_slurm_array_submission_builds_the_right_jobs(tmp_path, fake_slurm, cache_dir, capsys):
    """Through the CLI: a login node without a GPU, a suite asking for device auto, one cell recorded on a GPU
    already, a self-trained model not cached yet. Expect a prepare job, then one array of the two pending
    cells on CUDA with a GPU each, depending on it."""
    text = TWO.replace('device = "cpu"', 'device = "auto"').replace(
        '[[reducers]]\nname = "rlt"', '[[reducers]]\nname = "tome"\nparams = { r = 2 }\n\n[[reducers]]\nname = "rlt"')
    suite_file = _write(tmp_path, text)
    out = tmp_path / "results"
    args = ["run", "--suite", str(suite_file), "--out", str(out), "--launcher", "slurm", "--partition", "gpu-h100",
            "--array-parallelism", "1", "--timeout-min", "90", "--cpus-per-job", "8", "--slurm-param",
            "account=vision"]
    cells = load_suite(suite_file, overrides=["defaults.device=cuda"], check_device=False).cells()
    assert len(cells) == 3 and {c["device"] for c in cells} == {"cuda"} and {c["dtype"] for c in cells} == {"bfloat16"}
    ResultStore(store_path(out, "two", "cuda-some-gpu-torch2.13.0-cu12-bfloat16")).append(
        {"key": cells[0]["key"], "status": "ok", "fingerprint": {"id": "cuda-some-gpu", "device": "cuda"}})
    assert recorded_keys(out, "two", device_type="cuda") == {cells[0]["key"]}
    assert recorded_keys(out, "two", device_type="cpu") == set()

    assert main(args) == 0
    err = capsys.readouterr().err
    scripts = sorted(fake_slurm.glob("*.sh"))
    assert [s.name for s in scripts] == ["4242.sh", "4243.sh"], err
    prep, array = (_sbatch_flags(s.read_text()) for s in scripts)
    for flags in (prep, array):
        assert flags["partition"] == "gpu-h100" and flags["gpus-per-node"] == "1" and flags["time"] == "90"
        assert flags["cpus-per-task"] == "8" and flags["account"] == "vision" and flags["ntasks-per-node"] == "1"
    assert "array" not in prep and prep["job-name"] == "tokenbench-two-prepare"
    assert array["array"] == "0-1%1"  # two pending cells, one at a time
    assert array["dependency"] == "afterok:4242" and array["job-name"] == "tokenbench-two"
    assert array["output"].endswith("%A_%a_0_log.out")
    assert array["signal"] == "USR2@90"  # Slurm's warning 90 s before a 90-minute limit
    assert "submitit.core._submit" in scripts[1].read_text()

    # what each array task will run: one pending cell, on CUDA, appending under OUT, with the job's limit
    folder = out / "_submitit" / "two"
    pickles = sorted(folder.glob("4243_*/4243_*_submitted.pkl"))
    assert len(pickles) == 2
    submitted = []
    for pk in pickles:
        with open(pk, "rb") as f:
            ds = pickle.load(f)
        assert ds.function is run_slurm_cell
        cell, suite_name, out_dir = ds.args[:3]
        assert suite_name == "two" and Path(out_dir) == out.resolve() and cell["device"] == "cuda"
        assert ds.args[5:] == (90, None)  # --timeout-min: the job tells Slurm's limit from a preemption; no
        # --rerun-stale (with it: the submitting checkout's CodeVersion)
        submitted.append(cell["key"])
    assert sorted(submitted) == sorted(c["key"] for c in cells[1:])  # the recorded cell was not submitted
    with open(next(folder.glob("4242/4242_submitted.pkl")), "rb") as f:
        prep_ds = pickle.load(f)
    assert prep_ds.args[0] == [cells[0]["pretrain"]] and prep_ds.args[1] == "cuda"


def test_slurm_refuses_gpu_cells_without_gpus(tmp_path, fake_slurm):
    suite = load_suite(_write(tmp_path, TWO.replace('device = "cpu"', 'device = "cuda"')), check_device=False)
    from tokenbench.harness.cli import UserError

    with pytest.raises(UserError, match="needs a GPU"):
        launch(suite, tmp_path / "results", LaunchOptions(launcher="slurm", gpus_per_job=0))
    assert not list(fake_slurm.iterdir())


def test_a_model_that_fails_to_train_fails_its_cells_without_a_job_each(tmp_path, cache_dir):
    text = TWO.replace("options = { num_clips = 8 }, epochs", "options = { num_clips = 4 }, epochs")  # < one batch
    suite = load_suite(_write(tmp_path, text))
    out = tmp_path / "results"
    summary = launch(suite, out, LaunchOptions(launcher="local", timeout_min=10), log=lambda m: None)
    assert summary.prepare_job and summary.submitted == 0  # no cell job retrains the broken recipe
    assert summary.failed == 2 and len(summary.failures) == 2
    df = load(out)
    assert len(df) == 2 and set(df["status"]) == {"failed"}
    assert all("prepare job" in e and "no full batch" in e for e in df["error"])
