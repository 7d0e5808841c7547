"""Data-parallel training under ``torchrun --nproc-per-node 2`` on the CPU (gloo): it runs, both ranks
agree on the figures, and rank 0's checkpoint loads."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tokenbench.datasets.synthetic import load_backgrounds
from tokenbench.harness.checkpoint import load_checkpoint
from tokenbench.harness.model import build_model


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def test_torchrun_two_processes_on_cpu(tmp_path):
    load_backgrounds(146)  # decode the bundled clips once here, not in both ranks
    ckpt, js = tmp_path / "ddp.pt", tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "tokenbench.harness.cli", "train",
           "--model", "vit_t", "--dataset", "synthetic", "--num-frames", "8", "--img-size", "32",
           "--data", "num_clips=16", "cache=False", "--reducer", "random", "keep=0.5",
           "--epochs", "2", "--batch-size", "8", "--threads", "1", "--amp", "off", "--out", str(ckpt),
           "--json", str(js)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(js.read_text())
    assert res["world_size"] == 2
    assert res["steps"] == 4  # 16 clips, global batch 8 = 4 per rank → 2 steps per epoch, 2 epochs
    assert res["clips"] == 32  # counted over both ranks
    assert res["eval_num_clips"] == 16  # each val clip evaluated once, shards summed
    assert res["tokens_mean"] == 8  # random keep=0.5 of 4 × 2 × 2 tubelets
    model = build_model("vit_t", 4, num_frames=8, img_size=32)
    info = load_checkpoint(model, ckpt)
    assert info.missing == [] and info.unexpected == []  # no DDP "module." prefix left behind
