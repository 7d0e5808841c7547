"""A dataset format from a separately installed package, found through the ``tokenbench.datasets``
entry-point group only, run by ``tokenbench run --suite`` in a fresh process.

Installed with pip into a throwaway target folder put on PYTHONPATH, as tests/test_plugin.py installs the
README's reducer: the same entry-point discovery as a site-packages install, without touching the test
environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenbench.harness.results import load

MODULE = '''\
import torch

from tokenbench.datasets.base import ClipDataset


class Squares(ClipDataset):
    """Label 0: a bright square moving right; label 1: the same square standing still."""

    labelled = True
    generated = True

    def __init__(self, split="val", *, num_frames=8, img_size=32, videos=4):
        self.name, self.split, self.num_classes = "squares", split, 2
        self.num_frames, self.img_size, self.videos = num_frames, img_size, videos

    def __len__(self):
        return self.videos

    def __getitem__(self, i):
        label = i % 2
        clip = torch.zeros(self.num_frames, self.img_size, self.img_size, 3, dtype=torch.uint8)
        for t in range(self.num_frames):
            x = (4 * t) % (self.img_size - 8) if label == 0 else 4
            clip[t, 8:16, x:x + 8] = 255
        return clip, label, {"path": f"squares://{i}", "index": i}
'''

PYPROJECT = '''\
[project]
name = "my-squares"
version = "0.1.0"

[tool.setuptools]
py-modules = ["my_squares"]

[project.entry-points."tokenbench.datasets"]
squares = "my_squares:Squares"
broken_squares = "my_squares:Nope"
'''

SUITE = '''\
[suite]
name = "plugged-data"

[defaults]
batch_sizes = [4]
repeats = 1
warmup = 0
threads = 1
time_clips = 4
device = "cpu"

[[models]]
name = "vit_t"
num_frames = 8
img_size = 32
checkpoint = "none"
num_classes = 2

[[datasets]]
name = "DATASET"
options = { videos = 6 }

[[reducers]]
name = "none"
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataset-plugin")
    (root / "my-squares").mkdir()
    (root / "my-squares" / "my_squares.py").write_text(MODULE)
    (root / "my-squares" / "pyproject.toml").write_text(PYPROJECT)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(root / "site"), str(root / "my-squares")],
                   check=True, capture_output=True, text=True)
    return root / "site"


def _tokenbench(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site))
    main = "import sys; from tokenbench.harness.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", main, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_an_installed_dataset_format_runs_through_tokenbench_run(site, tmp_path):
    suite = tmp_path / "plugged.toml"
    suite.write_text(SUITE.replace("DATASET", "squares"))
    out = _tokenbench(site, tmp_path, "run", "--suite", str(suite), "--out", str(tmp_path / "results"),
                      "--no-report", "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    df = load(tmp_path / "results")
    assert len(df) == 1, df
    rec = df.iloc[0]
    assert rec["dataset"] == "squares" and rec["reducer"] == "none" and rec["status"] == "ok"
    assert rec["num_clips"] == 6 and rec["tokens_in_mean"] == 16  # 4 × 2 × 2 tubelets of 8 × 32²
    assert rec["top1"] >= 0 and rec["time_ms_median"] > 0
    assert rec["fp_decoder"].startswith("none")  # declared generated: nothing decoded


def test_a_broken_dataset_plugin_is_named_when_asked_for(site, tmp_path):
    suite = tmp_path / "broken.toml"
    suite.write_text(SUITE.replace("DATASET", "broken_squares"))
    out = _tokenbench(site, tmp_path, "run", "--suite", str(suite), "--dry-run")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "installed but failed to load" in out.stderr and "my_squares:Nope" in out.stderr
    assert "Traceback" not in out.stderr
