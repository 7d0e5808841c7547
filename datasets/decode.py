"""Video decoding: the one place tokenbench reads video files.

Two decoders sit behind one interface:

* **PyAV** (``av``, always installed) — the reference path;
* **TorchCodec** (``torchcodec``, optional) — used by ``decoder="auto"`` when it imports and can load
  its FFmpeg libraries; otherwise ``auto`` falls back to PyAV. Which one ran is recorded through
  :func:`decoder_info`.

Only the frames a clip needs are decoded. :class:`VideoReader` first demuxes the stream *without
decoding* (cheap: packets only) to learn the exact frame count and every frame's presentation
timestamp; a request for frames ``[i0 … i1]`` then seeks to the last keyframe at or before frame
``i0``, decodes forward, converts to RGB only the frames asked for, and stops after ``i1``. Frame
``k`` is the ``k``-th frame in presentation order (the same numbering decord and TorchCodec's exact
mode use), whatever the container's frame rate says.

Every failure — a missing file, a file that is not a video, a truncated or corrupt stream, no frames —
raises :class:`VideoDecodeError`, which names the file (and, when the file came from a manifest, the
manifest and its line).
"""
from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Writing lives in encode; its names stay importable from here, where the tests and users found them.
from .encode import colour_bars, frame_number, write_video

DECODERS = ("pyav", "torchcodec")


class VideoDecodeError(RuntimeError):
    """A video file is missing or cannot be decoded.

    Attributes: ``path`` (the file), ``reason``, and ``manifest`` / ``line`` (1-based) when the file was
    listed in a manifest (``None`` otherwise).
    """

    def __init__(self, path: str | Path, reason: str, *, manifest: str | Path | None = None,
                 line: int | None = None):
        self.path = str(path)
        self.reason = reason
        self.manifest = None if manifest is None else str(manifest)
        self.line = line
        where = ""
        if self.manifest is not None:
            where = f" (listed in {self.manifest}" + (f", line {line}" if line is not None else "") + ")"
        elif line is not None:
            where = f" (line {line})"
        super().__init__(f"cannot decode {self.path}{where}: {reason}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (_rebuild_decode_error, (self.path, self.reason, self.manifest, self.line))

    def at(self, manifest: str | Path, line: int) -> VideoDecodeError:
        """The same error, located at ``line`` of ``manifest``."""
        return VideoDecodeError(self.path, self.reason, manifest=manifest, line=line)


def _rebuild_decode_error(path, reason, manifest, line):
    return VideoDecodeError(path, reason, manifest=manifest, line=line)


# --------------------------------------------------------------------------------------------
# decoder choice and provenance
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _torchcodec_status() -> tuple[bool, str]:
    """(usable, version or the reason it is not). TorchCodec loads FFmpeg shared libraries at import;
    a missing or mismatched FFmpeg raises something other than ImportError, so catch broadly."""
    try:
        import torchcodec  # noqa: F401
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as exc:  # ImportError, OSError, RuntimeError from its library loader
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return True, str(getattr(torchcodec, "__version__", "unknown"))


def available_decoders() -> list[str]:
    """The decoders that work here, preferred first."""
    usable, _ = _torchcodec_status()
    return ["torchcodec", "pyav"] if usable else ["pyav"]


def resolve_decoder(decoder: str = "auto") -> str:
    """``auto`` → ``torchcodec`` when usable, else ``pyav``. An explicit choice that cannot work raises
    ``ValueError`` with the reason."""
    if decoder == "auto":
        return available_decoders()[0]
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose from auto, {', '.join(DECODERS)}")
    if decoder == "torchcodec":
        usable, why = _torchcodec_status()
        if not usable:
            raise ValueError(f"decoder 'torchcodec' is not usable here ({why}); use 'pyav' or 'auto'")
    return decoder


def decoder_info(decoder: str = "auto") -> dict[str, str]:
    """The decoder ``decoder`` resolves to, its version and the FFmpeg it decodes with — recorded with
    results: ``{"decoder": "pyav", "decoder_version": "18.1.0", "ffmpeg": "libavcodec 62.28.102"}``."""
    name = resolve_decoder(decoder)
    if name == "torchcodec":
        _, version = _torchcodec_status()
        return {"decoder": "torchcodec", "decoder_version": version, "ffmpeg": "(torchcodec's)"}
    import av

    lav = getattr(av, "library_versions", {}).get("libavcodec")
    ffmpeg = "libavcodec " + ".".join(map(str, lav)) if lav else "unknown"
    return {"decoder": "pyav", "decoder_version": av.__version__, "ffmpeg": ffmpeg}


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, from its packets (no frame decoded)."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


class VideoReader:
    """One open video: exact frame count, and decoding of just the frames asked for.

    >>> with VideoReader("clip.mp4") as v:          # doctest: +SKIP
    ...     frames = v.get_frames([0, 4, 8])        # uint8 [3, H, W, 3] RGB

    Indices past the last frame are clamped to it (the frame is repeated), so a sampler may ask for
    a window longer than a short video. Raises :class:`VideoDecodeError` naming the file when it is
    missing or unreadable, or when a frame its packets promise does not decode (truncated data).
    """

    def __init__(self, path: str | Path, decoder: str = "auto"):
        self.path = Path(path)
        self.decoder = resolve_decoder(decoder)
        if not self.path.is_file():
            raise VideoDecodeError(self.path, "no such file" if not self.path.exists() else "not a file")
        self._impl = _TorchCodecImpl(self.path) if self.decoder == "torchcodec" else _PyAVImpl(self.path)
        self.info: VideoInfo = self._impl.info
        if self.info.num_frames <= 0:
            self.close()
            raise VideoDecodeError(self.path, "the video stream holds no frames")
        declared, says = getattr(self._impl, "declared", (0, ""))
        if declared > self.info.num_frames:  # cut mid-stream: would be measured as a shorter video
            self.close()
            raise VideoDecodeError(self.path, f"truncated: the container {says} but only {self.info.num_frames} "
                                              "frames are present (the file was cut short)")

    @property
    def num_frames(self) -> int:
        return self.info.num_frames

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] RGB, in the order asked (repeats allowed)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("get_frames needs at least one index")
        if (idx < 0).any():
            raise ValueError(f"frame indices must be ≥ 0, got {idx[idx < 0][:3].tolist()}")
        idx = np.minimum(idx, self.num_frames - 1)
        want = sorted(set(idx.tolist()))
        try:
            got = self._impl.decode(want)
        except VideoDecodeError:
            raise
        except Exception as exc:  # decoders raise many error types on corrupt data
            raise VideoDecodeError(self.path, f"{type(exc).__name__}: {exc}") from exc
        if not got:
            raise VideoDecodeError(self.path, "no frame could be decoded")
        lost = [i for i in want if i not in got]
        if lost:  # the packets are there but do not decode: truncated or corrupt data
            raise VideoDecodeError(self.path, f"frame(s) {', '.join(map(str, lost[:4]))}"
                                              f"{'…' if len(lost) > 4 else ''} of {self.num_frames} could not "
                                              "be decoded (truncated or corrupt stream)")
        return np.stack([got[i] for i in idx.tolist()])

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _PyAVImpl:
    def __init__(self, path: Path):
        import av

        self.path = path
        try:
            self.container = av.open(str(path))
        except Exception as exc:
            raise VideoDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
        try:
            if not self.container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            self.stream = self.container.streams.video[0]
            self.stream.thread_type = "AUTO"
            self._scan()
        except BaseException:
            self.container.close()
            raise

    def _scan(self) -> None:
        """Demux (no decoding) to learn every frame's pts and the keyframes."""
        s = self.stream
        pts, key = [], []
        try:
            for pkt in self.container.demux(s):
                if pkt.size == 0:  # flush packet
                    continue
                pts.append(pkt.pts)
                if pkt.is_keyframe:
                    key.append(pkt.pts)
        except Exception as exc:
            raise VideoDecodeError(self.path, f"{type(exc).__name__}: {exc}") from exc
        self.seekable = bool(pts) and all(p is not None for p in pts)
        if self.seekable:
            self.frame_pts = sorted(pts)
            self.index_of = {p: i for i, p in enumerate(self.frame_pts)}
            self.key_index = sorted(self.index_of[p] for p in key if p in self.index_of)
            if len(self.index_of) != len(self.frame_pts):  # duplicate pts: cannot map frames by pts
                self.seekable = False
        n = len(pts) if pts else int(s.frames or 0)
        rate = s.average_rate or s.guessed_rate or 0
        cc = s.codec_context
        self.info = VideoInfo(str(self.path), n, float(rate), int(cc.width), int(cc.height), cc.name)
        self.declared = self._declared(float(rate))

    def _declared(self, rate: float) -> tuple[int, str]:
        """(frames the container promises, how it says so): its frame count (an MP4/MOV sample table), else
        its duration (the stream's, else the container's) × the frame rate less a 10 % margin for rounding
        and variable frame rates; (0, "") when it says neither."""
        import av

        s = self.stream
        if s.frames:
            return int(s.frames), f"declares {int(s.frames)} frames"
        if s.duration and s.time_base:
            seconds = float(s.duration * s.time_base)
        elif self.container.duration:  # Matroska/WebM: the segment's duration, in av.time_base units
            seconds = self.container.duration / av.time_base
        else:
            return 0, ""
        n = int(0.9 * seconds * rate) if rate > 0 else 0
        return n, f"lasts {seconds:.2f} s at {rate:g} fps (at least {n} frames)"

    def decode(self, want: list[int]) -> dict[int, np.ndarray]:
        first, last = want[0], want[-1]
        wanted = set(want)
        start_key = 0
        if self.seekable and self.key_index:
            j = bisect.bisect_right(self.key_index, first) - 1
            start_key = self.key_index[max(j, 0)]
        got = self._decode_from(start_key, wanted, last, by_pts=self.seekable)
        if got is None:  # the seek landed somewhere unexpected: decode from the start, counting frames
            got = self._decode_from(0, wanted, last, by_pts=False)
        return got

    def _reopen(self) -> None:
        import av

        self.container.close()
        self.container = av.open(str(self.path))
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"

    def _decode_from(self, key_frame: int, wanted: set[int], last: int, by_pts: bool):
        if by_pts and key_frame > 0:
            self.container.seek(self.frame_pts[key_frame], stream=self.stream, backward=True, any_frame=False)
        else:
            self._reopen()  # the scan consumed the packets; start again from the top
        first = min(wanted)
        got: dict[int, np.ndarray] = {}
        count = -1
        for frame in self.container.decode(self.stream):
            if by_pts:
                i = self.index_of.get(frame.pts)
                if i is None or (count == -1 and i > first):  # unmapped, or landed after the first wanted
                    return None
                count = i
            else:
                count += 1
                i = count
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
        return got

    def close(self) -> None:
        self.container.close()


class _TorchCodecImpl:
    def __init__(self, path: Path):
        from torchcodec.decoders import VideoDecoder

        self.path = path
        try:
            self.dec = VideoDecoder(str(path), dimension_order="NHWC", seek_mode="exact")
        except Exception as exc:
            raise VideoDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
        m = self.dec.metadata
        self.info = VideoInfo(str(path), int(m.num_frames or 0), float(m.average_fps or 0.0),
                              int(m.width or 0), int(m.height or 0), str(m.codec or ""))
        # exact mode counts the frames present; the header says what the container promised
        header = int(getattr(m, "num_frames_from_header", None) or 0)
        self.declared = (header, f"declares {header} frames")

    def decode(self, want: list[int]) -> dict[int, np.ndarray]:
        batch = self.dec.get_frames_at(indices=want)
        data = batch.data.numpy()
        return {i: data[k] for k, i in enumerate(want)}

    def close(self) -> None:
        self.dec = None


def probe_video(path: str | Path, decoder: str = "auto") -> VideoInfo:
    """Frame count, rate, size and codec of ``path`` without decoding a frame."""
    with VideoReader(path, decoder) as v:
        return v.info


def read_frames(path: str | Path, indices: Sequence[int] | np.ndarray, *, decoder: str = "auto") -> np.ndarray:
    """Decode only frames ``indices`` of ``path`` → uint8 [len(indices), H, W, 3] RGB (indices past the
    end repeat the last frame)."""
    with VideoReader(path, decoder) as v:
        return v.get_frames(indices)


def read_video(path: str | Path, max_frames: int | None = None, *, decoder: str = "auto") -> np.ndarray:
    """Decode all (or the first ``max_frames``) frames of ``path`` → uint8 [T, H, W, 3] RGB."""
    with VideoReader(path, decoder) as v:
        n = v.num_frames if max_frames is None else min(max_frames, v.num_frames)
        return v.get_frames(np.arange(max(n, 1)))


__all__ = ["DECODERS", "VideoDecodeError", "VideoInfo", "VideoReader", "available_decoders", "colour_bars",
           "decoder_info", "frame_number", "probe_video", "read_frames", "read_video", "resolve_decoder",
           "write_video"]
