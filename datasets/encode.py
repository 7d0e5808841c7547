"""Writing videos: :func:`write_video` encodes frames with PyAV, and :func:`colour_bars` makes frames that
carry their own number (:func:`frame_number` reads it back), so a test can tell which frames a decoder
returned. datasets/decode.py is the reading side.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: str | Path, frames: np.ndarray, fps: int = 25, *, codec: str = "libx264",
                crf: int = 10, gop: int | None = None, faststart: bool = False) -> Path:
    """Encode uint8 [T, H, W, 3] RGB frames to ``path`` with PyAV (yuv420p; even H and W).

    ``gop`` sets the keyframe interval (small values make seekable test videos). Used by the tests and
    handy for writing small clips of one's own. ``faststart`` puts an MP4's index first (as web videos
    have it), so a truncated file still opens."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video needs uint8 [T, H, W, 3] frames, got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even height and width, got {h}×{w}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                stream.options = {**stream.options, "keyint": str(gop), "min-keyint": str(gop),
                                  "scenecut": "0"}
        for f in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def colour_bars(num_frames: int, height: int = 64, width: int = 96, *, speed: int = 2,
                static: bool = False) -> np.ndarray:
    """Synthetic test frames, uint8 [T, H, W, 3]: eight colour bars sliding ``speed`` px per frame
    (``static=True``: they stay put) under a 16-pixel strip that spells the frame number in 8 binary
    cells (white = 1, most significant first) — :func:`frame_number` reads it back, even after lossy
    compression. Used to write test videos whose decoded frames can be identified."""
    if height < 32 or width < 64:
        raise ValueError(f"colour_bars needs at least 64×32 pixels, got {width}×{height}")
    palette = np.array([[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0], [255, 0, 255],
                        [255, 0, 0], [0, 0, 255], [32, 32, 32]], dtype=np.uint8)
    cols = np.arange(width)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    cell = width // 8
    for t in range(num_frames):
        shift = 0 if static else t * speed
        frames[t] = palette[((cols + shift) * 8 // width) % 8][None, :, :]
        frames[t, :16] = 0
        if not static:
            for b in range(8):
                if (t >> (7 - b)) & 1:
                    frames[t, 2:14, b * cell + 1:(b + 1) * cell - 1] = 255
    return frames


def frame_number(frame: np.ndarray) -> int:
    """The frame number :func:`colour_bars` wrote into ``frame`` (uint8 [H, W, 3], original size)."""
    width = frame.shape[1]
    cell = width // 8
    m = max(cell // 4, 1)
    bits = [frame[5:11, b * cell + m:(b + 1) * cell - m].mean() > 128 for b in range(8)]
    return int(sum(int(v) << (7 - b) for b, v in enumerate(bits)))
