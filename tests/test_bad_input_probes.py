"""The last fourteen probes (issue 29): a damaged op cache, a hung compiler, no compiler, a plugin that writes
into its input video or never returns, two runs on one --out, and the manifest, config, path, CLI and record
edges. Each case fails on the code before the issue with a traceback, a crash or a silent wrong answer."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import noise_video, seeded_model, suite_toml

from tokenbench.harness import attention, cpu_varlen
from tokenbench.harness.attention import choose_backend
from tokenbench.harness.results import ResultStore
from tokenbench.harness.run import run_cell
from tokenbench.harness.suite import load_suite
from tokenbench.harness.timing import time_forward
from tokenbench.reducers import Reducer, register_reducer

COMPILER = pytest.mark.skipif(cpu_varlen._compiler() is None, reason="no C++ compiler to build the op")

SMALL_SUITE = suite_toml("probes", "REDUCER", defaults={"flops_check_clips": 0})


@pytest.fixture
def fresh_op(monkeypatch):
    """cpu_varlen.available() asked again in this test (and its fallback line said again, though an earlier
    test in this process said it); afterwards the real op again."""
    cpu_varlen.available.cache_clear()
    attention._say_once.cache_clear()
    yield monkeypatch
    cpu_varlen.available.cache_clear()
    monkeypatch.undo()
    cpu_varlen._failure.clear()


def _script(folder: Path, name: str, body: str) -> Path:
    p = folder / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(0o755)
    return p


# --- the cpu_varlen op's cache and build ---------------------------------------------------------------
@COMPILER
def test_a_truncated_cached_op_is_found_by_its_size_before_it_is_loaded(tmp_path):
    assert cpu_varlen.available()
    good = cpu_varlen._library_path(cpu_varlen._compiler())
    lib = tmp_path / good.name
    shutil.copy(good, lib)
    cpu_varlen._write_sidecar(lib)
    assert cpu_varlen.damage(lib) is None
    with open(lib, "r+b") as f:  # what a full disk or a killed copy leaves: SIGBUS when loaded
        f.truncate(lib.stat().st_size // 2)
    assert "bytes where its build wrote" in cpu_varlen.damage(lib)
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    assert "SHA-256 differs" in cpu_varlen.damage(lib)


@pytest.mark.slow
@COMPILER
def test_a_damaged_op_without_its_hash_is_tested_in_a_child_then_rebuilt(tmp_path):
    assert cpu_varlen.available()
    good = cpu_varlen._library_path(cpu_varlen._compiler())
    ext = tmp_path / "ext"
    ext.mkdir()
    lib = ext / good.name
    lib.write_bytes(good.read_bytes()[: good.stat().st_size // 3])  # no .sha256: an old cache
    env = {**os.environ, "TOKENBENCH_EXT_CACHE": str(ext)}
    code = "from tokenbench.harness import cpu_varlen; print(cpu_varlen.available())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert "is damaged (loading it in a child process" in done.stderr and "building it again" in done.stderr
    assert cpu_varlen.damage(lib) is None and (ext / (lib.name + ".sha256")).exists()


def test_a_compiler_that_hangs_is_stopped_at_the_build_time_limit_leaving_no_library(fresh_op, tmp_path, capsys):
    ext = tmp_path / "ext"
    fresh_op.setenv("CXX", str(_script(tmp_path, "c++", "sleep 60")))
    fresh_op.setenv("TOKENBENCH_EXT_CACHE", str(ext))
    fresh_op.setenv("TOKENBENCH_EXT_BUILD_TIMEOUT_S", "1")
    t0 = time.monotonic()
    assert not cpu_varlen.available()
    assert time.monotonic() - t0 < 20
    assert "did not finish in 1 s" in cpu_varlen.unavailable_reason()
    assert choose_backend("cpu") == "sdpa"
    assert "did not finish in 1 s" in capsys.readouterr().err.split("auto uses sdpa")[0]
    assert not [p.name for p in ext.iterdir()]  # no .so, no temporary


def test_a_build_killed_from_outside_leaves_no_library_and_its_temporary_is_swept(fresh_op, tmp_path):
    ext = tmp_path / "ext"
    ext.mkdir()
    # a build killed by SIGKILL (no cleanup) leaves its hidden temporary, named by its (now dead) pid
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = ext / f".packed_sdpa-0123456789abcdef.{dead.pid}.tmp"
    stale.write_bytes(b"")
    assert not list(ext.glob("packed_sdpa-*.so"))  # never taken for a library
    fresh_op.setenv("CXX", shutil.which("false"))
    fresh_op.setenv("TOKENBENCH_EXT_CACHE", str(ext))
    assert not cpu_varlen.available()
    assert not [p.name for p in ext.iterdir()]


def test_without_a_compiler_auto_says_sdpa_and_an_explicit_cpu_varlen_names_the_compiler(fresh_op, tmp_path,
                                                                                       capsys):
    from tokenbench.harness.cli import main

    fresh_op.setenv("CXX", "no-such-compiler")
    fresh_op.setenv("TOKENBENCH_EXT_CACHE", str(tmp_path / "ext"))
    assert choose_backend("cpu") == "sdpa"
    err = capsys.readouterr().err
    assert "cpu_varlen attention unavailable (no C++ compiler" in err and "auto uses sdpa" in err
    with pytest.raises(ValueError, match="'cpu_varlen' cannot run on cpu with torch.float32 \\(no C\\+\\+ compiler"):
        choose_backend("cpu", requested="cpu_varlen")
    rc = main(["run", "--dry-run", "--only", "reducer=none", "--set", "defaults.attn_backend=cpu_varlen",
               "--out", str(tmp_path / "r")])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith(("suite", "  "))]
    assert rc == 2 and len(err) == 1, err  # the refusal alone: no "auto uses sdpa" where auto is not asked for
    assert "attn_backend = 'cpu_varlen', but no C++ compiler ('no-such-compiler' is not on PATH)" in err[0]


# --- a plugin that writes into its input video ---------------------------------------------------------
@dataclass(repr=False)
class Scribbler(Reducer):
    """select darkens the video it is given, in place, and keeps every token."""

    def select(self, video):
        video.mul_(0.5)
        return None


def test_a_reducer_writing_into_its_timed_clips_fails_the_timing_naming_the_hook():
    from tokenbench.harness.input_guard import InputMutatedError

    model = seeded_model(num_frames=8, img_size=64)
    with pytest.raises(InputMutatedError, match=r"'Scribbler' wrote into its input video in place \(its select"):
        time_forward(model, noise_video(2, 8, 64), Scribbler(), baseline=False, warmup=0, repeats=1, batch_size=2)


def test_the_runner_records_a_cell_whose_reducer_writes_into_its_input_as_failed(tmp_path):
    register_reducer("test_scribbler")(Scribbler)
    suite = tmp_path / "scribble.toml"
    suite.write_text(SMALL_SUITE.replace("REDUCER", "test_scribbler"))
    rec = run_cell(load_suite(suite).cells()[0])
    assert rec["status"] == "failed"
    assert rec["error"].startswith("InputMutatedError: reducer 'test_scribbler' wrote into its input video in place")


# --- a plugin that never returns -----------------------------------------------------------------------
@dataclass(repr=False)
class NeverReturns(Reducer):
    """select waits forever."""

    def select(self, video):
        while True:
            time.sleep(0.05)


def test_a_cell_past_its_time_limit_is_recorded_as_timeout_and_runs_again(tmp_path):
    register_reducer("test_never_returns")(NeverReturns)
    suite = tmp_path / "forever.toml"
    suite.write_text(SMALL_SUITE.replace("REDUCER", "test_never_returns"))
    t0 = time.monotonic()
    rec = run_cell(load_suite(suite).cells()[0], time_limit_s=3)
    assert time.monotonic() - t0 < 30
    assert rec["status"] == "timeout", rec["error"]
    assert rec["error"].startswith("stopped at the cell's time limit (3 s, --timeout-min)")
    store = ResultStore(tmp_path / "records.jsonl")
    store.append(rec)
    assert rec["key"] not in store.done_keys()  # not measured: the next run runs it


def test_submitits_timed_out_error_in_a_local_job_is_recorded_as_timeout(tmp_path):
    from submitit.core.utils import UncompletedJobError

    from tokenbench.harness.run.launch import _timed_out, local_cell_limit_s

    @dataclass(repr=False)
    class SubmititLimit(Reducer):  # what submitit's handler raises in the job at its limit
        def select(self, video):
            raise UncompletedJobError("Job 123 (task: 0) timed-out and not checkpointable")

    register_reducer("test_submitit_limit")(SubmititLimit)
    suite = tmp_path / "limit.toml"
    suite.write_text(SMALL_SUITE.replace("REDUCER", "test_submitit_limit"))
    rec = run_cell(load_suite(suite).cells()[0])
    assert rec["status"] == "timeout" and "timed-out and not checkpointable" in rec["error"]
    assert rec["error"].startswith("stopped at the job's time limit (submitit: Job 123")
    assert local_cell_limit_s(10) == 600 - 90 and local_cell_limit_s(1) == 15  # ahead of submitit's signal
    # a local job killed at its limit without a record: submitit's error carries the job's stderr, whose
    # handler said "timed-out"; recorded as timeout, not lost
    killed = UncompletedJobError("Job 7 (task: 0) with path /x/7_result.pkl\nhas not produced any output "
                                 "(state: FINISHED)\nError stream produced:\n----\nsubmitit WARNING: Caught "
                                 "signal SIGUSR2 on host: this job is timed-out.\n----")
    assert _timed_out(killed) and not _timed_out(UncompletedJobError("Job 7 ... (state: FAILED)"))


# --- two runs on one --out -----------------------------------------------------------------------------
def test_a_second_run_on_an_out_in_use_says_so_and_waits_for_the_first(tmp_path):
    import io
    import threading

    from tokenbench.harness.run import run_suite
    from tokenbench.harness.run.run_lock import timing_lock

    out = tmp_path / "results"
    held, release = threading.Event(), threading.Event()

    def first_run():
        with timing_lock(out, lambda msg: None, "tokenbench run --out results"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=first_run)
    holder.start()
    held.wait(10)
    timer = threading.Timer(1.0, release.set)
    timer.start()
    suite = tmp_path / "probes.toml"
    suite.write_text(SMALL_SUITE.replace("REDUCER", "none"))
    stream = io.StringIO()
    t0 = time.monotonic()
    summary = run_suite(load_suite(suite), out, stream=stream, show_progress=False)
    holder.join()
    log = stream.getvalue()
    assert f"another tokenbench run is timing cells into {out} (pid {os.getpid()} " in log
    assert "tokenbench run --out results); waiting for it to end" in log
    assert time.monotonic() - t0 >= 1.0 and summary.ran == 1  # then it measured its cell


# --- manifests -----------------------------------------------------------------------------------------
def test_a_repeated_manifest_line_warns_and_counts_once(tmp_path):
    from tokenbench.datasets import read_manifest
    from tokenbench.datasets.manifest import ManifestError, RepeatedVideoWarning

    m = tmp_path / "val.txt"
    m.write_text("a.mp4 0\nb.mp4 1\n./a.mp4 0\n")
    with pytest.warns(RepeatedVideoWarning, match=r"val.txt: 1 repeated video\(s\) counted once: line 3 repeats "
                                                  r"line 1 \(\./a\.mp4\)"):
        entries = read_manifest(m)
    assert [e.name for e in entries] == ["a.mp4", "b.mp4"]
    m.write_text("a.mp4 0\na.mp4 3\n")
    with pytest.raises(ManifestError, match="val.txt, line 2: a.mp4 is listed again with label 3; line 1 gives"):
        read_manifest(m)


def test_a_manifest_saved_with_a_byte_order_mark_finds_its_first_video(tmp_path):
    from tokenbench.datasets import read_manifest

    (tmp_path / "first.mp4").write_bytes(b"")
    m = tmp_path / "val.txt"
    m.write_bytes("\ufefffirst.mp4 0\nsecond.mp4 1\n".encode())
    entries = read_manifest(m)
    assert entries[0].path == tmp_path / "first.mp4" and entries[0].path.exists()
    assert entries[0].name == "first.mp4"


# --- checkpoints ---------------------------------------------------------------------------------------
def _config_with_list_labels(tmp_path: Path) -> Path:
    import json

    from safetensors.torch import save_file

    ck = tmp_path / "ck"
    ck.mkdir()
    save_file({"videomae.encoder.layer.0.attention.attention.query.weight": torch.zeros(4, 4)},
              ck / "model.safetensors")
    (ck / "config.json").write_text(json.dumps({"model_type": "videomae", "hidden_size": 192,
                                                "architectures": ["VideoMAEForVideoClassification"],
                                                "id2label": ["a", "b", "c"]}))
    return ck


def test_a_config_whose_id2label_is_a_list_is_refused_naming_the_file(tmp_path, capsys):
    from tokenbench.harness.cli import main

    ck = _config_with_list_labels(tmp_path)
    want = f"{ck / 'config.json'}: id2label must be an object like"
    assert main(["checkpoint", str(ck)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and want in err[0], err
    suite = tmp_path / "ck.toml"
    suite.write_text(SMALL_SUITE.replace("REDUCER", "none").replace('checkpoint = "none"', f'checkpoint = "{ck}"'))
    assert main(["run", "--suite", str(suite), "--dry-run", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and want in err[0], err


@pytest.mark.parametrize("flags,message", [
    (["--frames", "0"], "--frames must be ≥ 2, got 0"),
    (["--size", "-16"], "--size must be ≥ 16, got -16"),
    (["--classes", "-5"], "--classes must be ≥ 0, got -5"),
    (["--frames", "7"], "--frames must be even and --size a multiple of 16 (2×16×16 tubelets); got 7 frames × 224²"),
])
def test_checkpoint_refuses_a_shape_no_model_can_have_in_one_line(tmp_path, capsys, flags, message):
    from tokenbench.harness.cli import main

    assert main(["checkpoint", str(tmp_path / "any.pth"), "--model", "vit_t", *flags]) == 2
    assert capsys.readouterr().err.strip() == f"tokenbench checkpoint: error: {message}"


# --- paths ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["/proc/x", "/sys/x"])
def test_run_refuses_an_out_that_cannot_be_made_in_one_line(capsys, out):
    from tokenbench.harness.cli import main

    if not Path(out).parent.is_dir():
        pytest.skip(f"no {Path(out).parent} here")
    assert main(["run", "--dry-run", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tokenbench run: error: --out {out} cannot be made ("), err


def test_a_dry_run_leaves_no_folder_behind(tmp_path):
    from tokenbench.harness.cli.common import require_folder

    require_folder("--out", tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []


def test_run_refuses_a_symlink_out_of_out_in_one_line(tmp_path, capsys):
    from tokenbench.harness.cli import main

    out, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "probes").symlink_to(elsewhere)
    suite = tmp_path / "probes.toml"
    suite.write_text(SMALL_SUITE.replace("REDUCER", "none"))
    assert main(["run", "--suite", str(suite), "--out", str(out), "--no-report", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tokenbench run: error: refusing to use ") and f"outside {out}" in err[-1], err
    assert "Traceback" not in "\n".join(err) and not list(elsewhere.iterdir())


# --- records -------------------------------------------------------------------------------------------
def test_a_record_whose_cell_is_null_is_named_and_skipped_not_a_phantom_row(tmp_path):
    import json
    import warnings

    from tokenbench.harness.record_files import NotARecordWarning
    from tokenbench.harness.results import load

    results = tmp_path / "results"
    suite = tmp_path / "probes.toml"
    suite.write_text(SMALL_SUITE.replace("REDUCER", "none"))
    rec = run_cell(load_suite(suite).cells()[0], suite="probes")
    store = ResultStore.for_suite(results, "probes", rec["fingerprint"]["id"])
    store.append(rec)
    with open(store.path, "a") as f:
        f.write(json.dumps({**rec, "key": "0123456789abcdef", "cell": None}) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = load(results)
    named = [str(w.message) for w in caught if issubclass(w.category, NotARecordWarning)]
    assert named == [f"{store.path}:2: not a result record (its 'cell' is null, not an object); skipped"]
    assert len(df) == 1 and list(df["key"]) == [rec["key"]]
