"""Frame sampling: Kinetics-style windows and SSv2-style segments."""
from __future__ import annotations

import numpy as np
import pytest

from tokenbench.datasets.sampling import (
    sample_indices,
    segment_indices,
    video_key,
    window_indices,
    window_span,
    window_starts,
)


def test_window_is_16_frames_4_apart():
    idx = window_indices(300, 16, 4, start=10)
    assert idx.tolist() == list(range(10, 10 + 64, 4))
    assert window_span(16, 4) == 61


def test_eval_start_is_deterministic_under_seed_and_key():
    a = window_indices(300, seed=0, key=video_key("abseiling/x.mp4"))
    b = window_indices(300, seed=0, key=video_key("abseiling/x.mp4"))
    np.testing.assert_array_equal(a, b)
    assert video_key("abseiling/x.mp4") == 1554610100  # CRC-32: the same in every process and machine
    starts = {int(window_indices(300, seed=s, key=k)[0]) for s in range(3) for k in range(20)}
    assert len(starts) > 10  # seeds and videos do move the window
    assert all(0 <= s <= 300 - 61 for s in starts)


def test_train_start_uses_the_generator():
    rng = np.random.default_rng(1)
    starts = [int(window_indices(200, train=True, rng=rng)[0]) for _ in range(50)]
    assert len(set(starts)) > 20 and min(starts) >= 0 and max(starts) <= 200 - 61
    again = [int(window_indices(200, train=True, rng=np.random.default_rng(1))[0])]
    assert again[0] == starts[0]
    with pytest.raises(ValueError, match="rng"):
        window_indices(200, train=True)


def test_multi_clip_windows_are_evenly_spaced():
    assert window_starts(301, 61, 5) == [0, 60, 120, 180, 240]
    views = [window_indices(301, clip_index=k, num_clips=5)[0] for k in range(5)]
    assert views == [0, 60, 120, 180, 240]
    last = window_indices(301, clip_index=4, num_clips=5)
    assert last[-1] == 300  # the last view ends on the last frame


def test_short_video_repeats_the_last_frame_or_loops():
    idx = window_indices(30, 16, 4, seed=3)
    assert idx.tolist() == [0, 4, 8, 12, 16, 20, 24, 28] + [29] * 8
    loop = window_indices(30, 16, 4, pad="loop")
    assert loop.tolist() == [i % 30 for i in range(0, 64, 4)]
    assert window_indices(16, 16, 4).tolist() == [0, 4, 8, 12] + [15] * 12  # as short as a clip: still padded


def test_segments_take_the_middle_at_eval():
    assert segment_indices(160, 16).tolist() == list(range(5, 160, 10))
    # two views: middle and start of each segment (VideoMAE's SSv2 test views)
    assert segment_indices(160, 16, clip_index=1, num_clips=2).tolist() == list(range(0, 160, 10))


def test_segments_at_train_stay_in_their_segment():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = segment_indices(97, 16, train=True, rng=rng)
        seg = 97 / 16
        assert all(np.floor(seg * k) <= i < np.ceil(seg * (k + 1)) for k, i in enumerate(idx))
    draws = {tuple(segment_indices(97, 16, train=True, rng=rng)) for _ in range(5)}
    assert len(draws) > 1


def test_segments_of_a_video_as_long_as_the_clip_take_every_frame():
    assert segment_indices(16, 16).tolist() == list(range(16))


def test_dispatch_and_errors():
    assert sample_indices("segment", 160, 16).tolist() == segment_indices(160, 16).tolist()
    assert sample_indices("kinetics", 160, 8, stride=2, seed=1, key=2).tolist() == \
        window_indices(160, 8, 2, seed=1, key=2).tolist()
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_indices("dense", 10, 4)
    with pytest.raises(ValueError):
        window_indices(0, 16, 4)
    with pytest.raises(ValueError, match="clip_index"):
        window_indices(100, clip_index=3, num_clips=3)
