"""The dataset contract (see the package docstring) and the video-file dataset every real loader shares.

:class:`ClipDataset` is what every dataset is: ``ds[i] -> (clip uint8 [T,H,W,3], label, meta)``.
:class:`VideoClipDataset` turns a list of video files into clips: it owns decoding, frame sampling,
views (clips × crops), train/eval transforms and error locations; the manifest datasets and the
bundled samples are thin layers over it. :func:`load_clips` gathers clips into one batch and times
how long each took to decode, sample and resize (decode is measured apart from the forward pass).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .decode import VideoDecodeError, VideoReader, decoder_info, resolve_decoder
from .sampling import PAD_MODES, SAMPLERS, ShortVideoError, sample_indices, video_key
from .transforms import eval_transform, train_transform

TRAIN_SPLITS = ("train",)


class ClipDataset(Dataset):
    """Base of every tokenbench dataset. Subclasses set the attributes and implement ``__len__`` and
    ``__getitem__`` returning ``(clip uint8 [T, H, W, 3], label int (−1 unlabelled), meta dict with at
    least path and index)``."""

    name: str = ""
    split: str = "val"
    num_classes: int = 0
    num_frames: int = 16
    img_size: int = 224
    # what the harness reads about a format (datasets/registry.py); never its name
    labelled: ClassVar[bool] = True      # labels for training and top-1
    needs: ClassVar[tuple[str, ...]] = ()  # options a suite must give (paths), checked before any work
    generated: ClassVar[bool] = False    # clips made in memory: nothing is decoded
    decoded: ClassVar[bool] = False      # clips decoded from video files (decoder / stride options)

    @classmethod
    def view_options(cls, clips: int, crops: int) -> dict[str, Any]:
        """Options giving ``clips`` temporal clips × ``crops`` spatial crops per video (views ≠ 1x1)."""
        return {"num_clips": clips, "num_crops": crops}

    @classmethod
    def first_options(cls, n: int) -> dict[str, Any]:
        """Options that make a split of only ``n`` items, drawn like the whole split — for a format that
        makes its clips, so a run that uses ``n`` of them makes no more; none by default."""
        return {}

    @classmethod
    def identity(cls, split: str = "val", num_frames: int = 16, img_size: int = 224, **options: Any) -> dict[str, Any]:
        """What decides a split's clips, worked out without making them (a cache key of weights trained on
        them hashes it). By default the options as given; a format whose defaults or generator decide its clips
        (the synthetic one) gives them all, its generator's version included."""
        return {"dataset": cls.name, "split": split, "num_frames": num_frames, "img_size": img_size, **options}

    def info(self) -> dict[str, Any]:
        """What identifies this data in a result record."""
        return {"dataset": self.name, "split": self.split, "num_frames": self.num_frames,
                "img_size": self.img_size, "num_classes": self.num_classes, "num_clips": len(self)}

    def set_epoch(self, epoch: int) -> None:
        """Training calls this before each epoch; a format whose draws vary per epoch overrides it."""

    def head(self, n: int | None) -> ClipDataset:
        """The first ``n`` items (all when 0/None), still of this contract (a torch Subset is not)."""
        if not n or n >= len(self):
            return self
        return Head(self, int(n))

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int):  # pragma: no cover - abstract
        raise NotImplementedError


class Head(ClipDataset):
    """The first ``n`` items of a dataset (:meth:`ClipDataset.head`): its attributes, info and epochs."""

    def __init__(self, whole: ClipDataset, n: int):
        self.whole, self.n = whole, n
        self.name, self.split, self.num_classes = whole.name, whole.split, whole.num_classes
        self.num_frames, self.img_size = whole.num_frames, whole.img_size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for the first {self.n} clips")
        return self.whole[i % self.n]

    def info(self) -> dict[str, Any]:
        return {**self.whole.info(), "num_clips": self.n}

    def set_epoch(self, epoch: int) -> None:
        self.whole.set_epoch(epoch)


@dataclass
class VideoEntry:
    """One video of a dataset: where it is, its label, and where it was listed."""

    path: Path
    label: int = -1
    name: str = ""  # as listed (relative path in a manifest): keys the seeded window start
    line: int | None = None  # 1-based manifest line
    extra: dict[str, Any] = field(default_factory=dict)


class VideoClipDataset(ClipDataset):
    """Clips from video files.

    * ``split="train"``: one clip per video, random window / segment frames (seeded by ``seed``,
      the epoch (:meth:`set_epoch`) and the item), :func:`train_transform` (random resized crop + flip);
    * any other split: ``num_clips × num_crops`` views per video (``len`` counts views; ``meta`` has
      ``video_index``, ``clip_index``, ``crop_index`` so predictions can be averaged per video),
      deterministic frames, :func:`eval_transform`.

    ``sampling``: ``kinetics`` (``num_frames`` frames ``stride`` apart) or ``segment`` (SSv2 style).
    ``decoder``: ``auto`` / ``pyav`` / ``torchcodec``. A file that cannot be read raises
    :class:`VideoDecodeError` naming the file and, for manifests, the manifest line.
    """

    decoded = True

    def __init__(self, entries: Sequence[VideoEntry], *, name: str, split: str = "val", num_frames: int = 16,
                 img_size: int = 224, sampling: str = "kinetics", stride: int = 4, num_clips: int = 1,
                 num_crops: int = 1, seed: int = 0, decoder: str = "auto", pad: str = "repeat",
                 num_classes: int | None = None, flip: bool | None = None,
                 scale: tuple[float, float] = (0.08, 1.0), manifest: str | Path | None = None):
        if sampling not in SAMPLERS and sampling != "ssv2":
            raise ValueError(f"unknown sampling {sampling!r}; choose from {', '.join(SAMPLERS)}")
        if pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {', '.join(PAD_MODES)}, got {pad!r}")
        for k, v in (("num_frames", num_frames), ("img_size", img_size), ("stride", stride),
                     ("num_clips", num_clips), ("num_crops", num_crops)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive integer, got {v!r}")
        self.entries = list(entries)
        self.name = name
        self.split = split
        self.train = split in TRAIN_SPLITS
        self.num_frames, self.img_size = num_frames, img_size
        self.sampling = "segment" if sampling == "ssv2" else sampling
        self.stride, self.pad, self.seed = stride, pad, seed
        self.num_clips = 1 if self.train else num_clips
        self.num_crops = 1 if self.train else num_crops
        self.decoder = resolve_decoder(decoder)
        self.flip = (self.sampling != "segment") if flip is None else flip
        self.scale = scale
        self.manifest = None if manifest is None else str(manifest)
        labels = [e.label for e in self.entries]
        self.num_classes = num_classes if num_classes is not None else (max(labels) + 1 if labels else 0)
        self.epoch = 0

    # --- the contract --------------------------------------------------------------------------
    @property
    def views(self) -> int:
        return self.num_clips * self.num_crops

    def __len__(self) -> int:
        return len(self.entries) * self.views

    def set_epoch(self, epoch: int) -> None:
        """Training draws differ per epoch (and stay reproducible under the seed)."""
        self.epoch = int(epoch)

    def locate(self, i: int) -> tuple[int, int, int]:
        """Item ``i`` → (video index, clip index, crop index)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        i %= len(self)
        v, view = divmod(i, self.views)
        c, k = divmod(view, self.num_crops)
        return v, c, k

    def __getitem__(self, i: int) -> tuple[Tensor, int, dict[str, Any]]:
        v, clip_index, crop_index = self.locate(i)
        entry = self.entries[v]
        try:
            return self._load(i % len(self), v, entry, clip_index, crop_index)
        except VideoDecodeError as exc:
            if entry.line is not None and exc.line is None:
                raise exc.at(self.manifest or "manifest", entry.line) from exc
            raise

    def _load(self, i: int, v: int, entry: VideoEntry, clip_index: int, crop_index: int):
        rng = gen = None
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        key = video_key(entry.name or str(entry.path))
        with VideoReader(entry.path, self.decoder) as reader:
            n = reader.num_frames
            try:
                idx = sample_indices(self.sampling, n, self.num_frames, stride=self.stride, train=self.train,
                                     rng=rng, seed=self.seed, key=key, clip_index=clip_index,
                                     num_clips=self.num_clips, pad=self.pad)
            except ShortVideoError as exc:  # failed or skipped like any video that cannot make a clip
                raise VideoDecodeError(entry.path, str(exc)) from None
            frames = reader.get_frames(idx)
        if self.train:
            clip = train_transform(frames, self.img_size, gen, scale=self.scale, flip=self.flip)
        else:
            clip = eval_transform(frames, self.img_size, crop_index, self.num_crops)
        meta = {"path": str(entry.path), "index": i, "video_index": v, "clip_index": clip_index,
                "crop_index": crop_index, "frame_indices": idx.tolist(), "video_frames": n,
                "name": entry.name or entry.path.name}
        if entry.line is not None:
            meta["line"] = entry.line
        meta.update(entry.extra)
        return clip, int(entry.label), meta

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update({"sampling": self.sampling, "stride": self.stride if self.sampling == "kinetics" else None,
                    "views": f"{self.num_clips}x{self.num_crops}", "num_videos": len(self.entries),
                    "seed": self.seed, **decoder_info(self.decoder)})
        if self.manifest:
            out["manifest"] = self.manifest
        return out


@dataclass
class ClipBatch:
    """Clips gathered into one batch. ``decode_ms[i]``: decode + sample + resize of clip ``i``."""

    clips: Tensor  # uint8 [N, T, H, W, 3]
    labels: Tensor  # long [N]
    metas: list[dict[str, Any]]
    decode_ms: list[float]

    def __len__(self) -> int:
        return int(self.clips.shape[0])


def load_clips(dataset: ClipDataset, n: int | None = None, *, indices: Sequence[int] | None = None,
               repeat: bool = False) -> ClipBatch:
    """The first ``n`` clips of ``dataset`` (all when ``n`` is None), or those at ``indices``, as one
    uint8 batch, each clip's load timed with ``perf_counter``. Asking for more clips than the dataset
    holds is an error unless ``repeat=True`` (then clips cycle, e.g. to time large batches)."""
    total = len(dataset)
    if indices is None:
        n = total if n is None else int(n)
        if n < 1:
            raise ValueError(f"need at least one clip, got n={n}")
        if n > total and not repeat:
            raise ValueError(f"dataset {dataset.name!r} holds {total} clips, {n} asked; "
                             "pass repeat=True to cycle, or ask the dataset for more windows per video")
        indices = [k % total for k in range(n)]
    clips, labels, metas, ms = [], [], [], []
    for i in indices:
        t0 = time.perf_counter()
        clip, label, meta = dataset[i]
        ms.append((time.perf_counter() - t0) * 1e3)
        clips.append(clip)
        labels.append(int(label))
        metas.append(meta)
    return ClipBatch(torch.stack(clips), torch.tensor(labels, dtype=torch.long), metas, ms)
