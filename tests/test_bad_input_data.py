"""Silent wrong results at the data level (issue 16, item 4): labels the head cannot score, a model trained for
another class count, an mp4 cut mid-stream, videos too short to make a clip. Real PyAV-encoded videos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import suite_toml

from tokenbench.datasets import ManifestDataset, VideoDecodeError, VideoReader, get_dataset, write_video
from tokenbench.datasets.classes import ClassCountError, check_head_classes
from tokenbench.datasets.decode import colour_bars
from tokenbench.datasets.sampling import ShortVideoError, segment_indices, window_indices
from tokenbench.harness.run import run_cell
from tokenbench.harness.suite import load_suite


def _video(path: Path, frames: int, **kw) -> Path:
    return write_video(path, colour_bars(frames, 64, 96), gop=4, **kw)


def _manifest(tmp_path: Path, rows: list[tuple[str, int]]) -> Path:
    m = tmp_path / "val.txt"
    m.write_text("# path label\n" + "".join(f"{p} {y}\n" for p, y in rows))
    return m


# --- the head's classes against the data's labels --------------------------------------------------------
def test_a_label_outside_the_heads_classes_is_refused_naming_the_manifest_line(tmp_path):
    for name in ("a", "b", "c"):
        _video(tmp_path / f"{name}.mp4", 16)
    manifest = _manifest(tmp_path, [("a.mp4", 0), ("b.mp4", 1), ("c.mp4", 7)])
    ds = ManifestDataset(manifest, num_frames=8, img_size=64)
    labels = [e.label for e in ds.entries]
    paths = [str(e.path) for e in ds.entries]
    with pytest.raises(ClassCountError, match=rf"{manifest}, line 4 \(c\.mp4\): label 7 is outside the model's "
                                              r"4 classes \(0…3\)"):
        check_head_classes(4, ds.num_classes, labels, paths, ds.info())
    # an inferred class count (max label + 1 = 8) short of the head's is a subset, not an error
    check_head_classes(10, ds.num_classes, labels, paths, ds.info())


def test_a_head_of_another_class_count_than_declared_data_is_refused_naming_both(tmp_path):
    ds = get_dataset("synthetic", "val", num_frames=8, img_size=32, num_clips=8, cache=False)
    labels = [int(ds[i][1]) for i in range(len(ds))]
    with pytest.raises(ClassCountError, match=r"head has 10 classes but dataset 'synthetic' has 4"):
        check_head_classes(10, ds.num_classes, labels, [""] * len(labels), ds.info())
    check_head_classes(4, ds.num_classes, labels, [""] * len(labels), ds.info())
    # a manifest with declared classes is held to them too
    _video(tmp_path / "a.mp4", 16)
    declared = ManifestDataset(_manifest(tmp_path, [("a.mp4", 0)]), num_frames=8, img_size=64, num_classes=3)
    with pytest.raises(ClassCountError, match=r"head has 5 classes but dataset 'manifest' has 3"):
        check_head_classes(5, 3, [0], ["a.mp4"], declared.info())


CLASSES = suite_toml("classes", model={"num_classes": 4}, defaults={"time_clips": None},
                     datasets=({"name": "manifest", "manifest": "MANIFEST"},))


def test_the_runner_fails_a_cell_whose_labels_the_model_cannot_score_before_measuring(tmp_path):
    for name in ("a", "b"):
        _video(tmp_path / f"{name}.mp4", 16)
    manifest = _manifest(tmp_path, [("a.mp4", 0), ("b.mp4", 9)])
    suite = tmp_path / "classes.toml"
    suite.write_text(CLASSES.replace("MANIFEST", str(manifest)))
    rec = run_cell(load_suite(suite).cells()[0])
    assert rec["status"] == "failed"
    assert f"{manifest}, line 3 (b.mp4): label 9 is outside the model's 4 classes" in rec["error"]
    assert "time_ms_median" not in rec["metrics"] and "top1" not in rec["metrics"]


# --- a stream cut short ----------------------------------------------------------------------------------
def test_an_mp4_truncated_mid_stream_is_unreadable_not_a_shorter_video(tmp_path):
    full = _video(tmp_path / "full.mp4", 48, faststart=True)  # index first: a cut file still opens
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4: truncated: the container declares 48 frames but only "
                                               r"\d+ frames are present"):
        VideoReader(cut, "pyav")
    with VideoReader(full, "pyav") as v:  # the intact file reads as before
        assert v.num_frames == 48 and v.get_frames([0, 47]).shape == (2, 64, 96, 3)
    ds = ManifestDataset(_manifest(tmp_path, [("full.mp4", 0), ("cut.mp4", 1)]), num_frames=8, img_size=64,
                         stride=2, decoder="pyav")
    ds[0]
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4 \(listed in .*val\.txt, line 3\): truncated"):
        ds[1]


def test_a_truncated_matroska_file_is_caught_by_its_duration(tmp_path):
    mkv = write_video(tmp_path / "v.mkv", colour_bars(60, 64, 96), gop=8)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(mkv.read_bytes()[: int(mkv.stat().st_size * 0.5)])
    with pytest.raises(VideoDecodeError, match=r"truncated: the container lasts 2\.40 s at 25 fps"):
        VideoReader(cut, "pyav")
    with VideoReader(mkv, "pyav") as v:
        assert v.num_frames == 60


# --- too short to sample ---------------------------------------------------------------------------------
def test_one_and_three_frame_videos_are_refused_naming_the_file_and_line(tmp_path):
    for name, n in (("one", 1), ("three", 3), ("eight", 8)):
        _video(tmp_path / f"{name}.mp4", n)
    ds = ManifestDataset(_manifest(tmp_path, [("one.mp4", 0), ("three.mp4", 0), ("eight.mp4", 1)]),
                         num_frames=8, img_size=64, decoder="pyav")
    with pytest.raises(VideoDecodeError, match=r"one\.mp4 \(listed in .*, line 2\): the video has 1 frame, fewer "
                                               r"than the 8 a clip takes"):
        ds[0]
    with pytest.raises(VideoDecodeError, match=r"three\.mp4 .*line 3.*: the video has 3 frames, fewer than the 8"):
        ds[1]
    clip, label, meta = ds[2]  # as many frames as a clip: sampled (the window's tail padded, VideoMAE's rule)
    assert clip.shape[0] == 8 and meta["video_frames"] == 8
    for sampler in (lambda: window_indices(3, 8, 4), lambda: segment_indices(3, 8)):
        with pytest.raises(ShortVideoError, match="3 frames, fewer than the 8"):
            sampler()
    assert np.array_equal(window_indices(8, 8, 1), np.arange(8))


def test_a_manifest_that_is_a_directory_is_called_a_directory(tmp_path):
    from tokenbench.datasets import read_manifest

    with pytest.raises(FileNotFoundError, match=r"is a directory, not a manifest file"):
        read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        read_manifest(tmp_path / "nope.txt")
