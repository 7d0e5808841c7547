"""A dataset format registered from outside tokenbench runs through a suite like the built-ins."""
from __future__ import annotations

import pytest
import torch
from conftest import suite_toml

from tokenbench.datasets import available_datasets, dataset_format, get_dataset, register_dataset
from tokenbench.datasets.base import ClipDataset
from tokenbench.harness.results import load
from tokenbench.harness.run import RunCache, run_suite
from tokenbench.harness.suite import SuiteError, parse_suite


@register_dataset("test_squares")
class MovingSquares(ClipDataset):
    """Label 0: a bright square moving right; label 1: the same square standing still (RLT drops it)."""

    name = "test_squares"
    labelled = True

    @classmethod
    def view_options(cls, clips: int, crops: int) -> dict:
        return {"windows": clips}

    def __init__(self, split: str = "val", *, num_frames: int = 8, img_size: int = 32, videos: int = 4,
                 windows: int = 1):
        self.split, self.num_frames, self.img_size, self.num_classes = split, num_frames, img_size, 2
        self.videos, self.windows = videos, windows

    def __len__(self) -> int:
        return self.videos * self.windows

    def __getitem__(self, i: int):
        video, window = divmod(i, self.windows)
        label = video % 2
        clip = torch.zeros(self.num_frames, self.img_size, self.img_size, 3, dtype=torch.uint8)
        for t in range(self.num_frames):
            x = (4 * t + window) % (self.img_size - 8) if label == 0 else 4
            clip[t, 8:16, x:x + 8] = 255
        return clip, label, {"path": f"squares://{i}", "index": i, "video_index": video}


SUITE = suite_toml(
    "squares", "none", {"name": "rlt", "params": {"threshold": 0.1}},
    defaults={"modes": None, "batch_sizes": [4], "time_clips": 4}, model={"img_size": 32, "num_classes": 2},
    datasets=({"name": "test_squares", "views": "VIEWS", "options": {"videos": 4}},))


def test_a_registered_format_runs_through_a_suite(tmp_path):
    assert "test_squares" in available_datasets() and dataset_format("test_squares").cls is MovingSquares
    suite = parse_suite(SUITE.replace("VIEWS", "2x1"), "squares.toml", "squares")
    assert {c.dataset for c in suite.cells()} == {"test_squares"} and len(suite.cells()) == 2
    summary = run_suite(suite, tmp_path / "results", show_progress=False, cache=RunCache(cache_dir=tmp_path))
    assert summary.ran == 2 and summary.failed == 0, summary.failures
    df = load(tmp_path / "results").set_index("reducer")
    assert (df["num_clips"] == 8).all() and (df["num_videos"] == 4).all()  # views = "2x1": the declared mapping
    assert df.loc["none", "tokens_in_mean"] == 16 and df.loc["rlt", "tokens_in_mean"] < 16  # still squares drop
    assert df["top1"].notna().all() and (df["time_ms_median"] > 0).all()
    assert df.loc["none", "fp_decoder"] != "none"  # not declared generated: the decoder is recorded


def test_the_suite_reads_the_format_declarations(tmp_path):
    class Unlabelled(MovingSquares):
        labelled = False
        needs = ("manifest",)

    register_dataset("test_unlabelled_squares")(Unlabelled)
    text = SUITE.replace("VIEWS", "1x1").replace('name = "test_squares"', 'name = "test_unlabelled_squares"')
    with pytest.raises(SuiteError, match="needs manifest"):
        parse_suite(text, "u.toml")
    text = text.replace("views = ", 'manifest = "m.txt"\nviews = ').replace(
        '[defaults]', '[defaults]\nmodes = ["inference", "train"]')
    suite = parse_suite(text, "u.toml", check_paths=False)
    assert {c.mode for c in suite.cells()} == {"inference"}  # an unlabelled format is never trained on
    assert isinstance(get_dataset("test_squares", videos=2), MovingSquares)
