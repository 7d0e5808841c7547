"""A cell's clips: decoded once per process (each decode timed), kept in memory or streamed."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from tokenbench.datasets import VideoDecodeError, dataset_format, decoder_info, get_dataset

from ..errors import CellError
from ..schema import Cell
from ..suite import parse_views
from .common import stable_hash

if TYPE_CHECKING:
    from .models import RunCache


IN_MEMORY_BUDGET_BYTES = 2 * 2**30  # decoded clips kept in memory across cells up to this size


@dataclass
class ClipSet:
    """A cell's clips (views), decoded once: uint8 [N, T, H, W, 3], labels, the video of each view.

    When the clips would not fit in memory (``IN_MEMORY_BUDGET_BYTES``, e.g. Kinetics-400 val × 15 views),
    ``clips`` holds only a ``head`` of clips spread evenly over the whole set (for timing and the FLOP
    check; :func:`head_positions`) and :meth:`batches` decodes every clip on the fly through a
    ``DataLoader`` with worker processes.
    """

    clips: torch.Tensor  # all clips, or the head when streaming
    labels: torch.Tensor
    video_index: list[int]
    paths: list[str]
    decode_ms: list[float]  # per clip decoded up front (decode + sample + resize)
    num_classes: int
    info: dict[str, Any]
    total: int = 0  # clips in the set (> len(clips) when streaming)
    dataset: Any = None  # kept when streaming
    workers: int = 0
    skip_unreadable: bool = False
    skipped: list[str] = field(default_factory=list)  # errors of videos left out (skip_unreadable)

    def __len__(self) -> int:
        return self.total or int(self.clips.shape[0])

    @property
    def streaming(self) -> bool:
        return self.total > int(self.clips.shape[0])

    @property
    def labelled(self) -> bool:
        return self.num_classes > 0 and bool((self.labels >= 0).all())

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int], list[str]]]:
        """(uint8 clips, labels, video ids, paths) of every clip, ``batch_size`` at a time, in order."""
        if not self.streaming:
            for i in range(0, int(self.clips.shape[0]), batch_size):
                yield (self.clips[i:i + batch_size], self.labels[i:i + batch_size],
                       self.video_index[i:i + batch_size], self.paths[i:i + batch_size])
            return
        ds = _Tolerant(self.dataset) if self.skip_unreadable else self.dataset
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(self.total)),
                                             batch_size=batch_size, shuffle=False, num_workers=self.workers,
                                             collate_fn=_collate_views)
        seen = set(self.skipped)
        for clips, labels, vids, paths, errors in loader:
            for e in errors:
                if e not in seen:
                    seen.add(e)
                    self.skipped.append(e)
            if len(labels):
                yield clips, labels, vids, paths


class _Tolerant(torch.utils.data.Dataset):
    """A dataset whose unreadable items come back as ``None`` with the error (``skip_unreadable``)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        try:
            return self.ds[i]
        except VideoDecodeError as exc:
            return None, -1, {"error": str(exc)}


def _collate_views(items):
    good = [it for it in items if it[0] is not None]
    errors = [it[2]["error"] for it in items if it[0] is None]
    clips = torch.stack([torch.as_tensor(c) for c, _, _ in good]) if good else torch.empty(0, dtype=torch.uint8)
    labels = torch.tensor([int(y) for _, y, _ in good], dtype=torch.long)
    vids = [int(m.get("video_index", m.get("index", 0))) for _, _, m in good]
    paths = [str(m.get("path", "")) for _, _, m in good]
    return clips, labels, vids, paths, errors


def dataset_options(cell: Cell, split: str | None = None) -> dict[str, Any]:
    """Options for ``get_dataset`` from a cell: its ``dataset_options`` plus the view protocol."""
    opts = dict(cell.dataset_options or {})
    clips, crops = parse_views(cell.views)
    if (clips, crops) != (1, 1) and (split or cell.split) != "train":
        try:
            opts.update(dataset_format(cell.dataset).view_options(clips, crops))
        except ValueError as exc:
            raise CellError(str(exc)) from None
    return opts


def build_dataset(cell: Cell, split: str | None = None, **extra):
    split = split or cell.split
    opts = {**dataset_options(cell, split), **extra}
    return get_dataset(cell.dataset, split, num_frames=cell.num_frames, img_size=cell.img_size, **opts)


def data_key(cell: Cell) -> str:
    return stable_hash({k: getattr(cell, k) for k in ("dataset", "split", "num_frames", "img_size",
                                                      "dataset_options", "views", "max_clips")})


def load_clipset(cell: Cell, cache: RunCache, progress: Callable[[str], None] | None = None) -> ClipSet:
    """The cell's clips, decoded once per process, each clip's decode timed. A set too large for memory
    keeps its first clips (enough to time) and streams the rest (see :class:`ClipSet`)."""
    key = data_key(cell)
    if key in cache.clips:
        return cache.clips[key]
    ds = build_dataset(cell)
    views = math.prod(parse_views(cell.views))
    n = len(ds)
    if cell.max_clips:
        n = min(n, int(cell.max_clips) * views)
    if n == 0:
        raise CellError(f"dataset {cell.dataset!r} ({cell.split}) holds no clips")
    per_clip = cell.num_frames * cell.img_size ** 2 * 3
    streaming = n * per_clip > IN_MEMORY_BUDGET_BYTES
    head = n
    if streaming:
        need = max(int(cell.time_clips or 0), int(cell.batch_size),
                   int(cell.flops_check_clips or 0), 1)
        head = min(n, need)
    skip = bool(cell.skip_unreadable)
    clips, labels, vids, paths, ms, skipped = [], [], [], [], [], []
    bad_paths: set[str] = set()
    positions = head_positions(n, head, int(cell.seed)) if streaming else range(n)
    for j, i in enumerate(positions):
        t0 = time.perf_counter()
        try:
            clip, label, meta = ds[i]  # a VideoDecodeError names the file; the cell fails with it …
        except VideoDecodeError as exc:
            if not skip:
                raise
            if exc.path not in bad_paths:  # … unless the suite says to leave unreadable videos out
                bad_paths.add(exc.path)
                skipped.append(str(exc))
            continue
        ms.append((time.perf_counter() - t0) * 1e3)
        clips.append(clip if isinstance(clip, torch.Tensor) else torch.as_tensor(clip))
        labels.append(int(label))
        vids.append(int(meta.get("video_index", i)))
        paths.append(str(meta.get("path", "")))
        if progress and (j % 16 == 15 or j == head - 1):
            progress(f"decoding {j + 1}/{head}")
    info = dict(ds.info())
    if "decoder" not in info:
        if dataset_format(cell.dataset).cls.generated:
            info.update(decoder=f"none ({cell.dataset}, generated in memory)", decoder_version=None)
        else:
            info.update(decoder_info())
    if not clips:
        raise CellError(f"no clip of dataset {cell.dataset!r} could be read; first error: "
                        f"{skipped[0] if skipped else '?'}")
    cs = ClipSet(torch.stack(clips), torch.tensor(labels, dtype=torch.long), vids, paths, ms,
                 int(ds.num_classes), info, total=n if streaming else 0,
                 dataset=ds if streaming else None, workers=min(8, os.cpu_count() or 1) if streaming else 0,
                 skip_unreadable=skip, skipped=skipped)
    cache.clips[key] = cs
    return cs




def head_positions(n: int, head: int, seed: int = 0) -> list[int]:
    """``head`` clip positions of ``n`` spread evenly over the set, from a seeded offset: views of one video
    sit side by side, so the first ``head`` clips would be a few videos' views."""
    if head >= n:
        return list(range(n))
    step = n / head
    offset = torch.rand(1, generator=torch.Generator().manual_seed(int(seed))).item() * step
    return sorted({min(n - 1, int(offset + k * step)) for k in range(head)})


def first_items(name: str, split: str, max_items: int | None, *, num_frames: int, img_size: int,
                options: dict | None = None):
    """Dataset ``name``/``split`` limited to ``max_items`` items (all when 0/None): a split made no larger
    than that where the format makes its clips (``first_options``: the synthetic generator then renders
    only those), else the first ``max_items`` of the split."""
    opts = dict(options or {})
    if max_items:
        opts = {**dataset_format(name).cls.first_options(int(max_items)), **opts}  # the suite's options win
    ds = get_dataset(name, split, num_frames=num_frames, img_size=img_size, **opts)
    return ds.head(max_items)


def timing_sample(video_index: list[int], n: int, seed: int = 0) -> list[int]:
    """Indices of ``n`` clips to time, spread over videos: the videos in a seeded random order, each
    video's views shuffled, then one view of each video in turn (round-robin) until ``n`` are taken.
    The first N clips would be the first few videos' views (5×3 views: 16 clips ≈ 1 video), so the timed
    clips would not be the clips whose tokens and GFLOPs the record reports."""
    if n >= len(video_index):
        return list(range(len(video_index)))
    gen = torch.Generator().manual_seed(int(seed))
    by_video: dict[int, list[int]] = {}
    for i, v in enumerate(video_index):
        by_video.setdefault(v, []).append(i)
    videos = list(by_video)
    queues = [[by_video[videos[j]][k] for k in torch.randperm(len(by_video[videos[j]]), generator=gen).tolist()]
              for j in torch.randperm(len(videos), generator=gen).tolist()]
    out: list[int] = []
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return sorted(out)  # clip order: a batch holds views of several videos either way
