"""``.ci/gpu-run``, the GPU run in one command (issue 27), rehearsed on the CPU: the built-in gpu suite as
written, the script's dry run (install check, environment probe, the cells), and (slow) the whole rehearsal
end to end at the tiny size: GPU tests (skipped here), the 14 cells, report, summary and bundle."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tokenbench.harness.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "gpu-run"


def test_the_gpu_suite_is_vit_b_in_bf16_at_batch_8_and_32_with_every_reducer_and_two_varlen_rows():
    suite = load_suite("gpu", overrides=["defaults.device=cpu"])  # validated as written, on this machine
    cells = suite.cells()
    assert len(cells) == 14 and {c.batch_size for c in cells} == {8, 32}
    assert {(c.model, c.num_frames, c.img_size, c.checkpoint) for c in cells} == {("vit_b", 16, 224, "none")}
    assert {c.get("autocast") for c in cells} == {"bfloat16"} and {c.dataset for c in cells} == {"samples"}
    by_reducer = {}
    for c in cells:
        by_reducer.setdefault((c.reducer, c.attn_path), []).append(c)
    assert set(by_reducer) == {("none", None), ("rlt", None), ("random", None), ("tome", None), ("sta", None),
                               ("rlt", "packed"), ("random", "packed")}


def _run(tmp_path, *args, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable, "TOKENBENCH_CACHE": str(tmp_path / "cache")}
    return subprocess.run([str(SCRIPT), "--device", "cpu", "--out", str(tmp_path / "out"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_gpu_run_dry_run_probes_the_machine_and_lists_the_cells(tmp_path):
    proc = _run(tmp_path, "--dry-run", "--wheels", str(tmp_path / "no-wheels"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = (tmp_path / "out" / "environment.txt").read_text()
    assert "torch varlen_attn" in env and "attention backends for cpu" in env
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "-m gpu tests/test_gpu_cuda.py" in log and "--suite gpu" in log
    listed = [line for line in proc.stdout.splitlines() if " inference " in line]
    assert len(listed) == 14 and sum("[packed]" in line for line in listed) == 4


def test_gpu_run_refuses_an_unknown_device(tmp_path):
    proc = subprocess.run([str(SCRIPT), "--device", "tpu"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "cuda or cpu" in proc.stderr


@pytest.mark.slow
def test_gpu_run_rehearsed_end_to_end_on_the_cpu(tmp_path):
    """The whole script at the tiny size: ~25 s of CPU, about 90 s on the loaded 2-core machine."""
    proc = _run(tmp_path)
    out = tmp_path / "out"
    assert proc.returncode == 0, (out / "log.txt").read_text()[-4000:]
    recs = [json.loads(line) for f in out.glob("results/gpu/*/records.jsonl") for line in f.read_text().splitlines()]
    assert len(recs) == 14 and all(r["status"] == "ok" for r in recs)
    assert all("interference" in r["metrics"] and r["metrics"]["time_ms_median"] > 0 for r in recs)
    packed = [r for r in recs if r["cell"].get("attn_path") == "packed"]
    assert len(packed) == 4 and all(r["metrics"]["baseline_attn_path"] == r["metrics"]["attn_path"] for r in packed)
    summary = (out / "summary.txt").read_text()
    assert summary.count("\n") == 2 + 14 and "none" in summary and "÷FLOP" in summary
    assert (out / "reports" / "gpu" / "tables" / "inference.md").is_file()
    with tarfile.open(out / "gpu-run.tar.gz") as tar:
        names = tar.getnames()
    assert "./summary.txt" in names and any(n.endswith("records.jsonl") for n in names)
    assert "GPU tests" in (out / "log.txt").read_text()
