"""Which frames of a video make a clip: Kinetics-style windows and SSv2-style segments.

Both samplers return frame indices (int64 numpy arrays, ascending, repeats allowed) into a video of
``n`` frames; the decoder then reads just those frames (:meth:`VideoReader.get_frames`).

**Kinetics style** (:func:`window_indices`; VideoMAE / MMAction2 ``SampleFrames(clip_len=16,
frame_interval=4)``): ``num_frames`` frames ``stride`` apart, a window spanning
``(num_frames − 1)·stride + 1`` frames.

* *train*: the window start is drawn uniformly from ``[0, n − span]`` with the generator given;
* *eval, one clip*: the start is drawn the same way but from a generator seeded by ``(seed, key)``,
  where ``key`` identifies the video (:func:`video_key`): the same video and seed give the same
  frames on every run and machine, different videos get independent starts;
* *eval, several clips* (multi-view testing): ``num_clips`` windows evenly spaced from the first
  frame to the last possible start (``start_k = round(k·(n − span)/(num_clips − 1))``), as VideoMAE's
  test protocol spaces its temporal views;
* *short videos* (``num_frames ≤ n < span``): the window starts at frame 0 and indices past the last
  frame are **padded by repeating the last frame** (``pad="repeat"``, VideoMAE's behaviour), or with
  ``pad="loop"`` wrap around to the start (index mod ``n``);
* *too short to sample* (``n < num_frames``, e.g. a 1- or 3-frame file): refused with
  :class:`ShortVideoError`. Such a clip could only be made of repeated frames, at any stride, and
  repeated frames are exactly what RLT removes: its tokens and accuracy would measure the padding, not
  the video. A video long enough for ``num_frames`` distinct frames but shorter than the window is
  padded as VideoMAE's evaluation pads it (its protocol, kept so numbers stay comparable).

**SSv2 style** (:func:`segment_indices`; TSN / VideoMAE SSv2): the video is cut into ``num_segments``
equal segments and one frame is taken from each — the middle of the segment at evaluation, a uniformly
random frame of it in training. With ``num_clips`` > 1 views at evaluation, view ``k`` takes the
frame at fraction ``(0.5 + k/num_clips) mod 1`` of each segment (for two views: the middle and the
start, VideoMAE's two SSv2 test views). Videos shorter than ``num_segments`` are refused
(:class:`ShortVideoError`), for the reason above.
"""
from __future__ import annotations

import zlib

import numpy as np

PAD_MODES = ("repeat", "loop")


def window_span(num_frames: int, stride: int) -> int:
    """Frames covered by ``num_frames`` frames taken ``stride`` apart."""
    return (num_frames - 1) * stride + 1


def video_key(name: str | bytes) -> int:
    """A stable 32-bit key for a video (CRC-32 of its name as listed): the same on every run, process
    and machine, unlike ``hash()``."""
    return zlib.crc32(name.encode() if isinstance(name, str) else name)


class ShortVideoError(ValueError):
    """A video holds fewer frames than one clip takes: every clip of it would repeat frames."""


def _check(n: int, count: int, what: str) -> None:
    if count < 1:
        raise ValueError(f"{what} must be ≥ 1, got {count}")
    if n < 1:
        raise ShortVideoError(f"the video holds no frame (n={n})")
    if n < count:
        raise ShortVideoError(f"the video has {n} frame{'s' if n != 1 else ''}, fewer than the {count} a clip takes "
                              f"({what}): its clips would repeat frames, which RLT reads as static content")


def window_starts(n: int, span: int, num_clips: int) -> list[int]:
    """``num_clips`` evenly spaced window starts over a video of ``n`` frames (all 0 when it is short)."""
    last = max(n - span, 0)
    if num_clips == 1:
        return [last // 2]
    return [int(round(k * last / (num_clips - 1))) for k in range(num_clips)]


def window_indices(n: int, num_frames: int = 16, stride: int = 4, *, train: bool = False,
                   rng: np.random.Generator | None = None, seed: int = 0, key: int = 0,
                   clip_index: int = 0, num_clips: int = 1, start: int | None = None,
                   pad: str = "repeat") -> np.ndarray:
    """Kinetics-style frame indices (see module doc). ``start`` forces the window start."""
    _check(n, num_frames, "num_frames")
    if stride < 1:
        raise ValueError(f"stride must be ≥ 1, got {stride}")
    if pad not in PAD_MODES:
        raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index {clip_index} outside 0…{num_clips - 1}")
    span = window_span(num_frames, stride)
    last = max(n - span, 0)
    if start is None:
        if train:
            if rng is None:
                raise ValueError("training-mode sampling needs rng (a numpy Generator)")
            start = int(rng.integers(0, last + 1))
        elif num_clips == 1:
            start = int(np.random.default_rng([seed, key]).integers(0, last + 1))
        else:
            start = window_starts(n, span, num_clips)[clip_index]
    idx = start + stride * np.arange(num_frames, dtype=np.int64)
    return idx % n if pad == "loop" else np.minimum(idx, n - 1)


def segment_indices(n: int, num_segments: int = 16, *, train: bool = False,
                    rng: np.random.Generator | None = None, clip_index: int = 0,
                    num_clips: int = 1) -> np.ndarray:
    """SSv2-style indices: one frame per equal segment (see module doc)."""
    _check(n, num_segments, "num_segments")
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index {clip_index} outside 0…{num_clips - 1}")
    seg = n / num_segments
    if train:
        if rng is None:
            raise ValueError("training-mode sampling needs rng (a numpy Generator)")
        offset = rng.random(num_segments)
    else:
        offset = np.full(num_segments, (0.5 + clip_index / num_clips) % 1.0)
    idx = np.floor(seg * (np.arange(num_segments) + offset)).astype(np.int64)
    return np.clip(idx, 0, n - 1)


SAMPLERS = ("kinetics", "segment")


def sample_indices(sampling: str, n: int, num_frames: int, *, stride: int = 4, train: bool = False,
                   rng: np.random.Generator | None = None, seed: int = 0, key: int = 0, clip_index: int = 0,
                   num_clips: int = 1, pad: str = "repeat") -> np.ndarray:
    """Dispatch on ``sampling``: ``kinetics`` (windows, :func:`window_indices`) or ``segment``
    (SSv2-style, :func:`segment_indices`; ``stride``/``pad``/``seed``/``key`` unused there)."""
    if sampling == "kinetics":
        return window_indices(n, num_frames, stride, train=train, rng=rng, seed=seed, key=key,
                              clip_index=clip_index, num_clips=num_clips, pad=pad)
    if sampling in ("segment", "ssv2"):
        return segment_indices(n, num_frames, train=train, rng=rng, clip_index=clip_index,
                               num_clips=num_clips)
    raise ValueError(f"unknown sampling {sampling!r}; choose from {', '.join(SAMPLERS)}")
