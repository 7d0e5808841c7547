"""Video decoding with PyAV: one function every other part of tokenbench reads video through."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class VideoDecodeError(RuntimeError):
    """A video file is missing or cannot be decoded. ``path`` names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode {self.path}: {reason}")


def decoder_info() -> dict[str, str]:
    """The decoder and its version, recorded with results."""
    import av

    return {"decoder": "pyav", "decoder_version": av.__version__}


def read_video(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Decode all (or the first ``max_frames``) frames of ``path`` → uint8 [T, H, W, 3] RGB."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "no such file")
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except VideoDecodeError:
        raise
    except Exception as exc:  # PyAV raises several error types for corrupt data
        raise VideoDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
    if not frames:
        raise VideoDecodeError(path, "no frames decoded")
    return np.stack(frames)
