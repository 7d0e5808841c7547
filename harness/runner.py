"""The runner: executes a suite one cell at a time and records each cell (DESIGN.md §5–6).

* :func:`run_suite` — expands a :class:`~tokenbench.harness.suite.Suite`, skips every cell already in
  ``<out>/<suite>/<fingerprint>/records.jsonl``, trains the suite's self-trained models once (cached on
  disk, keyed by their training configuration), then runs the remaining cells in order under a progress
  bar (cell i/n, its label, clips done, ETA) and appends each record the moment it is finished.
* :func:`run_cell` — one cell → one record (harness/schema.py). It takes only the cell dict (plus
  optional in-process caches), so it can run in another process (submitit job arrays dispatch it).
  It never raises for a failing cell: a video that does not decode (the error names the file and the
  manifest line), out-of-memory, non-finite logits, any exception — the record says ``failed`` with the
  error and the suite goes on. ``KeyboardInterrupt`` is not caught.

What an **inference** cell measures, on the cell's clips (``max_clips`` videos × ``views``):

* accuracy (labelled data): top-1 / top-5, softmax averaged over a video's views (``views`` recorded),
  and the same model without reducer on the same clips (``top1_baseline``; computed once per model and
  data, shared by the cells of a run);
* tokens: per clip entering the first block, and per layer (mean over clips);
* GFLOPs: for every clip, the analytic backbone count from its token counts
  (``harness.flops.gflops_from_stats``) plus the reducer's own hook cost per clip; both come from an
  fvcore trace (attention handles included) of ``flops_check_clips`` clips first
  (``harness.flops.verify_analytic``, which fails the cell when fvcore's backbone count and the analytic
  one disagree by more than 1 %; ``gflops_fvcore`` is recorded beside ``gflops``);
* wall-clock (``harness.timing.time_forward``): ``time_clips`` clips decoded beforehand and resident on
  the device, the baseline timed interleaved with the reducer in the same cell, selection inside the
  timed region and also timed alone; decode time per clip measured apart when the clips were loaded.

A **train** cell trains the cell's model from scratch (or from its checkpoint, ``train.init``) with the
reducer (``harness.train``), times it, and evaluates the result the same way (its eval reducer: the
reducer's ``for_eval()`` when it has one — RLT + random masking is evaluated with RLT alone — else the
reducer itself, or none with ``train.eval_reducer = "none"``).

Every record also carries the machine's 1-minute load average before and after the cell
(``load_avg_start`` / ``load_avg_end``): timings taken beside other tenants of a shared machine are slower
and noisier, and the record says so.

Shared work is cached across the cells of one process (:class:`RunCache`): decoded clips, models,
baseline predictions, random-masking calibration to RLT's budget. Self-trained weights are cached on disk
in ``$TOKENBENCH_CACHE`` (default ``~/.cache/tokenbench``)/models, under a file lock, so parallel jobs
train a model once.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import inspect
import math
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenbench.datasets.classes import check_head_classes

from .fingerprint import load_average
from .results import ResultStore, store_path
from .schema import SCHEMA_VERSION, canonical_json
from .suite import Suite, cell_label, key_of, parse_views

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def autocast_for(cell: dict[str, Any]) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in the cell's ``autocast`` dtype on its device type (a no-op without one)."""
    amp = cell.get("autocast") or "none"
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(cell.get("device", "cpu")).type, dtype=DTYPES[amp])
MAX_TOKENS_PER_CLIP_RECORDED = 20000  # beyond this many clips a record keeps the first ones only
IN_MEMORY_BUDGET_BYTES = 2 * 2**30  # decoded clips kept in memory across cells up to this size


class CellError(RuntimeError):
    """A cell that cannot be measured (the message says why); recorded as failed."""


class NonFiniteError(CellError):
    """The model produced NaN or infinite logits."""


def cache_root() -> Path:
    """``$TOKENBENCH_CACHE`` or ``~/.cache/tokenbench``."""
    root = os.environ.get("TOKENBENCH_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tokenbench"


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------------------------
# provenance
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """``torch.set_num_threads(threads)`` for the block when ``threads`` > 0; yields the count in force."""
    before = torch.get_num_threads()
    if threads and threads > 0:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


_FP_CACHE: dict[tuple, dict[str, Any]] = {}


def hardware_fingerprint(device: str = "cpu", dtype: str = "float32", threads: int | None = None,
                         attn_backend: str | None = None) -> dict[str, Any]:
    """``harness.fingerprint.fingerprint`` (cached per process: git and /proc are read once)."""
    from .fingerprint import fingerprint

    threads = threads or torch.get_num_threads()
    key = (device, dtype, threads)
    if key not in _FP_CACHE:
        _FP_CACHE[key] = fingerprint(device, dtype, threads)
    fp = dict(_FP_CACHE[key])
    fp["attn_backend"] = attn_backend
    return fp


def describe_error(exc: BaseException) -> str:
    """One line naming what failed; for a video, the file (and manifest line)."""
    from tokenbench.datasets import VideoDecodeError

    if isinstance(exc, VideoDecodeError):
        return str(exc)
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if (oom is not None and isinstance(exc, oom)) or isinstance(exc, MemoryError):
        return f"out of memory: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------------------
# shared work
# ----------------------------------------------------------------------------------------------
@dataclass
class ClipSet:
    """A cell's clips (views), decoded once: uint8 [N, T, H, W, 3], labels, the video of each view.

    When the clips would not fit in memory (``IN_MEMORY_BUDGET_BYTES``, e.g. Kinetics-400 val × 15 views),
    ``clips`` holds only the first ``head`` clips (for timing and the FLOP check) and :meth:`batches`
    decodes the rest on the fly through a ``DataLoader`` with worker processes.
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
        from tokenbench.datasets import VideoDecodeError

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


@dataclass
class RunCache:
    """What the cells of one process share: decoded clips, models, baseline predictions, calibrations."""

    clips: dict[str, ClipSet] = field(default_factory=dict)
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibrated: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path = field(default_factory=cache_root)
    pretrain_failures: dict[str, str] = field(default_factory=dict)  # a model whose training failed: why
    checkpoints: dict[str, dict[str, str]] = field(default_factory=dict)  # model key -> sha256 (+path)

    def pretrained(self, pretrain: dict[str, Any], device: str = "cpu",
                   log: Callable[[str], None] | None = None) -> Path:
        """:func:`ensure_pretrained`, remembering a failure so the model's other cells do not retrain it."""
        key = _hash(pretrain)
        if key in self.pretrain_failures:
            raise CellError(f"training the suite's {pretrain['model']} failed earlier in this run: "
                            f"{self.pretrain_failures[key]}")
        try:
            return ensure_pretrained(pretrain, self.cache_dir, device, log)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self.pretrain_failures[key] = describe_error(exc)
            raise

    def drop_clips_except(self, keep: str | None) -> None:
        for k in [k for k in self.clips if k != keep]:
            del self.clips[k]


def _hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def dataset_options(cell: dict[str, Any], split: str | None = None) -> dict[str, Any]:
    """Options for ``get_dataset`` from a cell: its ``dataset_options`` plus the view protocol."""
    opts = dict(cell.get("dataset_options") or {})
    clips, crops = parse_views(cell.get("views", "1x1"))
    if (clips, crops) != (1, 1) and (split or cell["split"]) != "train":
        if cell["dataset"] == "synthetic":
            raise CellError("the synthetic dataset has one view per clip; use views = \"1x1\"")
        if cell["dataset"] == "samples":
            opts["windows"] = clips
        else:
            opts["num_clips"] = clips
        opts["num_crops"] = crops
    return opts


def build_dataset(cell: dict[str, Any], split: str | None = None, **extra):
    from tokenbench.datasets import get_dataset

    split = split or cell["split"]
    opts = {**dataset_options(cell, split), **extra}
    return get_dataset(cell["dataset"], split, num_frames=cell["num_frames"], img_size=cell["img_size"], **opts)


def data_key(cell: dict[str, Any]) -> str:
    return _hash({k: cell.get(k) for k in ("dataset", "split", "num_frames", "img_size", "dataset_options",
                                           "views", "max_clips")})


def load_clipset(cell: dict[str, Any], cache: RunCache, progress: Callable[[str], None] | None = None) -> ClipSet:
    """The cell's clips, decoded once per process, each clip's decode timed. A set too large for memory
    keeps its first clips (enough to time) and streams the rest (see :class:`ClipSet`)."""
    key = data_key(cell)
    if key in cache.clips:
        return cache.clips[key]
    ds = build_dataset(cell)
    views = math.prod(parse_views(cell.get("views", "1x1")))
    n = len(ds)
    if cell.get("max_clips"):
        n = min(n, int(cell["max_clips"]) * views)
    if n == 0:
        raise CellError(f"dataset {cell['dataset']!r} ({cell['split']}) holds no clips")
    per_clip = cell["num_frames"] * cell["img_size"] ** 2 * 3
    streaming = n * per_clip > IN_MEMORY_BUDGET_BYTES
    head = n
    if streaming:
        need = max(int(cell.get("time_clips") or 0), int(cell.get("batch_size", 1)),
                   int(cell.get("flops_check_clips") or 0), 1)
        head = min(n, need)
    from tokenbench.datasets import VideoDecodeError

    skip = bool(cell.get("skip_unreadable"))
    clips, labels, vids, paths, ms, skipped = [], [], [], [], [], []
    bad_paths: set[str] = set()
    for i in range(head):
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
        if progress and (i % 16 == 15 or i == head - 1):
            progress(f"decoding {i + 1}/{head}")
    info = {}
    try:
        info = dict(ds.info()) if hasattr(ds, "info") else {}
    except Exception:
        info = {}
    if "decoder" not in info:
        if cell["dataset"] == "synthetic":
            info.update(decoder="none (synthetic, generated in memory)", decoder_version=None)
        else:
            from tokenbench.datasets import decoder_info

            info.update(decoder_info())
    if not clips:
        raise CellError(f"no clip of dataset {cell['dataset']!r} could be read; first error: "
                        f"{skipped[0] if skipped else '?'}")
    cs = ClipSet(torch.stack(clips), torch.tensor(labels, dtype=torch.long), vids, paths, ms,
                 int(getattr(ds, "num_classes", 0) or 0), info, total=n if streaming else 0,
                 dataset=ds if streaming else None, workers=min(8, os.cpu_count() or 1) if streaming else 0,
                 skip_unreadable=skip, skipped=skipped)
    cache.clips[key] = cs
    return cs


def normalised(clips_uint8: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
    from tokenbench.datasets import to_model_input

    return to_model_input(clips_uint8.to(device)).to(dtype)


# --- models ---------------------------------------------------------------------------------------
def pretrained_path(pretrain: dict[str, Any], cache_dir: Path) -> Path:
    """Where a self-trained model's checkpoint is cached: named by its whole training configuration."""
    return cache_dir / "models" / f"{pretrain['model']}-{pretrain['num_frames']}x{pretrain['img_size']}-" \
                                  f"{_hash(pretrain)}.pt"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def limited(ds, max_items: int | None):
    """The first ``max_items`` items of ``ds`` (all when 0/None), keeping its attributes visible."""
    if not max_items or max_items >= len(ds):
        return ds
    sub = torch.utils.data.Subset(ds, range(int(max_items)))
    for attr in ("name", "num_classes", "num_frames", "img_size", "split"):
        if hasattr(ds, attr):
            setattr(sub, attr, getattr(ds, attr))
    return sub


def train_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``harness.train.train`` among a suite's train / pretrain settings."""
    from .train import train

    params = inspect.signature(train).parameters
    own = ("model", "train_ds", "val_ds", "reducer", "eval_reducer", "device", "seed", "out", "log")
    return {k: v for k, v in settings.items() if k in params and k not in own}


def ensure_pretrained(pretrain: dict[str, Any], cache_dir: Path, device: str = "cpu",
                      log: Callable[[str], None] | None = None) -> Path:
    """The checkpoint of a self-trained model: trained once per training configuration and cached on disk
    (a file lock keeps parallel jobs from training it twice)."""
    path = pretrained_path(pretrain, cache_dir)
    if path.is_file():
        return path
    with file_lock(path.with_suffix(".lock")):
        if path.is_file():
            return path
        from tokenbench.datasets import get_dataset

        from .model import build_model
        from .train import train

        if log:
            log(f"training {pretrain['model']} ({pretrain['num_frames']}×{pretrain['img_size']}²) on "
                f"{pretrain['dataset']} for {pretrain.get('epochs')} epochs (once; cached as {path})")
        ds = get_dataset(pretrain["dataset"], pretrain.get("split", "train"), num_frames=pretrain["num_frames"],
                         img_size=pretrain["img_size"], **(pretrain.get("options") or {}))
        if not ds.num_classes:
            raise CellError(f"cannot pretrain on the unlabelled dataset {pretrain['dataset']!r}")
        torch.manual_seed(int(pretrain.get("seed", 0)))
        model = build_model(pretrain["model"], ds.num_classes, num_frames=pretrain["num_frames"],
                            img_size=pretrain["img_size"])
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        train(model, limited(ds, pretrain.get("max_clips")), None, None, device=device,
              seed=int(pretrain.get("seed", 0)), out=tmp, log=log is not None, **train_settings(pretrain))
        os.replace(tmp, path)
    return path


def model_key(cell: dict[str, Any], num_classes: int, length_embedding: bool) -> str:
    return _hash({k: cell.get(k) for k in ("model", "num_frames", "img_size", "checkpoint", "pretrain", "device",
                                           "dtype", "attn_backend", "compile")}
                 | {"num_classes": num_classes, "length_embedding": length_embedding})


def load_model(cell: dict[str, Any], cache: RunCache, num_classes: int, length_embedding: bool = False,
               log: Callable[[str], None] | None = None) -> torch.nn.Module:
    """The cell's model in eval mode on its device and dtype (cached per process)."""
    from .checkpoint import load_checkpoint, weights_sha256
    from .model import build_model

    key = model_key(cell, num_classes, length_embedding)
    if key in cache.models:
        return cache.models[key]
    torch.manual_seed(int(cell.get("seed", 0)))
    model = build_model(cell["model"], num_classes, num_frames=cell["num_frames"], img_size=cell["img_size"],
                        length_embedding=length_embedding, attn_backend=cell.get("attn_backend", "auto"))
    ckpt = cell["checkpoint"]
    if ckpt.startswith("trained:"):
        if not cell.get("pretrain"):
            raise CellError(f"checkpoint {ckpt} names a self-trained model but the cell has no pretrain settings")
        path = cache.pretrained(cell["pretrain"], cell.get("device", "cpu"), log)
        info = load_checkpoint(model, path, strict=False)
        cache.checkpoints[key] = {"checkpoint_sha256": info.sha256, "checkpoint_path": str(path)}
    elif ckpt == "none":
        info = None
        cache.checkpoints[key] = {"checkpoint_sha256": weights_sha256(model.state_dict())}
    else:
        info = load_checkpoint(model, ckpt, strict=False)
        cache.checkpoints[key] = {"checkpoint_sha256": info.sha256}
    missing = [k for k in info.missing if k != "length_embed"] if info else []
    if missing:
        raise CellError(f"checkpoint {ckpt} lacks weights of {cell['model']}: {', '.join(missing[:6])}")
    if length_embedding and info and "length_embed" in info.missing:
        raise CellError(f"the reducer uses a learned length embedding but checkpoint {ckpt} has none "
                        "(train with it: a train-mode cell, or a checkpoint fine-tuned with RLT's length embedding)")
    model = model.to(device=cell.get("device", "cpu"), dtype=DTYPES[cell.get("dtype", "float32")]).eval()
    if cell.get("compile"):
        model = torch.compile(model)
    cache.models[key] = model
    return model


def model_classes(cell: dict[str, Any], clipset_classes: int) -> int:
    if cell.get("num_classes"):
        return int(cell["num_classes"])
    ckpt = cell["checkpoint"]
    if ckpt.startswith("trained:") and cell.get("pretrain"):
        pre = cell["pretrain"]
        from tokenbench.datasets import get_dataset

        ds = get_dataset(pre["dataset"], pre.get("split", "train"), num_frames=pre["num_frames"],
                         img_size=pre["img_size"], **(pre.get("options") or {}))
        return int(ds.num_classes)
    if ckpt not in ("none", "") and not ckpt.startswith("trained:"):
        from .checkpoint import checkpoint_classes

        n = checkpoint_classes(ckpt)
        if n:
            return n
    return clipset_classes or 1000


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


# --- reducers -------------------------------------------------------------------------------------
def build_reducer(cell: dict[str, Any]):
    from tokenbench.reducers import get_reducer

    if cell["reducer"] == "none":
        return None
    from tokenbench.reducers.testing import checked  # a broken reducer fails naming the rule it broke

    return checked(get_reducer(cell["reducer"], **(cell.get("params") or {})))


def calibrate(reducer, cell: dict[str, Any], clips: ClipSet, cache: RunCache):
    """Reducers with ``calibrate(batches)`` (random masking matched to RLT's budget) calibrate on the cell's
    clips before any measured work; the calibrated reducer is shared by cells on the same data."""
    if reducer is None or not hasattr(reducer, "calibrate"):
        return reducer
    key = _hash({"reducer": cell["reducer"], "params": cell.get("params"), "data": data_key(cell)})
    if key in cache.calibrated:
        return cache.calibrated[key].fresh()
    bs = max(1, int(cell.get("batch_size", 8)))
    reducer.calibrate(normalised(b, "cpu", torch.float32) for b, _, _, _ in clips.batches(bs))
    cache.calibrated[key] = reducer
    return reducer.fresh()


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------
def forward_all(model, reducer, clips: ClipSet, cell: dict[str, Any],
                progress: Callable[[str], None] | None = None, what: str = "eval",
                overhead_per_clip: float = 0.0) -> dict[str, Any]:
    """Every clip through the model in batches of the cell's size: accuracy (multi-view), tokens per clip
    and layer, GFLOPs per clip (the analytic backbone count from the clip's token counts, plus the
    reducer's hook cost per clip measured by fvcore: ``overhead_per_clip``), the attention backend that
    ran."""
    from .flops import gflops_from_stats
    from .metrics import MultiViewAccuracy, TokenCounts

    device, dtype = cell.get("device", "cpu"), DTYPES[cell.get("dtype", "float32")]
    bs = max(1, int(cell["batch_size"]))
    net = base_model(model)
    acc = MultiViewAccuracy(protocol=cell.get("views", "1x1")) if clips.labelled else None
    tokens = TokenCounts(tokens_total=net.num_tokens)
    gflops, gflops_attn, backends = [], [], set()
    n, done = len(clips), 0
    with torch.inference_mode():
        for batch, labels, vids, paths in clips.batches(bs):
            x = normalised(batch, device, dtype)
            out = model(x, reducer=reducer)
            finite = torch.isfinite(out).all(dim=1)
            if not bool(finite.all()):
                bad = [paths[i] for i in range(out.shape[0]) if not bool(finite[i])]
                raise NonFiniteError(f"non-finite logits for {len(bad)} clip(s) of this batch, first {bad[0]}")
            stats = net.last_stats
            if acc is not None:
                acc.add(out, labels, vids)
            tokens.add(stats)
            fl = gflops_from_stats(net, reducer, stats)
            gflops.extend(g + overhead_per_clip for g in fl.per_clip)
            gflops_attn.extend(fl.attention_per_clip)
            backends.add(stats.backend)
            done += len(labels)
            if progress:
                progress(f"{what} {done}/{n} clips")
    metrics = tokens.summary()
    metrics["tokens_per_clip"] = metrics["tokens_per_clip"][:MAX_TOKENS_PER_CLIP_RECORDED]
    metrics.update(gflops=statistics.fmean(gflops), gflops_attention=statistics.fmean(gflops_attn),
                   num_clips=done)
    if clips.skipped:
        metrics["skipped_videos"] = len(clips.skipped)
        metrics["skipped_errors"] = clips.skipped[:20]
    if acc is not None:
        r = acc.result()
        metrics.update(top1=r["top1"], top5=r["top5"], views=r["views"], num_videos=r["num_clips"])
    else:
        metrics["views"] = cell.get("views", "1x1")
    return {"metrics": metrics, "backend": "+".join(sorted(backends))}


def _baseline_top1(model, clips: ClipSet, cell: dict[str, Any], cache: RunCache, mkey: str, progress) -> float:
    """Top-1 of the same model without reducer on the same clips (once per model and data)."""
    key = mkey + ":" + data_key(cell) + ":" + str(cell.get("autocast") or "none")
    if key not in cache.baseline:
        with autocast_for(cell):
            cache.baseline[key] = forward_all(model, None, clips, cell, progress, what="baseline")["metrics"]
    return cache.baseline[key]["top1"]


def inference_cell(cell: dict[str, Any], cache: RunCache, progress=None, log=None) -> tuple[dict, dict]:
    from .flops import verify_analytic
    from .timing import time_forward

    clips = load_clipset(cell, cache, progress)
    reducer = build_reducer(cell)
    length_emb = bool(getattr(reducer, "length_embedding", False))
    num_classes = model_classes(cell, clips.num_classes)
    check_head_classes(num_classes, clips.num_classes, clips.labels.tolist(), clips.paths, clips.info)
    model = load_model(cell, cache, num_classes, length_emb, log)
    net = base_model(model)
    if reducer is not None:
        reducer.check_geometry(net.grid, net.depth)
    reducer = calibrate(reducer, cell, clips, cache)
    device, dtype = cell.get("device", "cpu"), DTYPES[cell.get("dtype", "float32")]

    # FLOPs: an fvcore trace (attention handles included) of a sample checks the analytic count used for
    # every clip, and measures what the reducer's own hooks cost per clip (ToMe/STA similarity matmuls)
    metrics: dict[str, Any] = {}
    overhead = 0.0
    n_check = min(int(cell.get("flops_check_clips", 1)), int(clips.clips.shape[0]))
    if n_check:
        if progress:
            progress(f"fvcore check on {n_check} clip(s)")
        sample = normalised(clips.clips[:n_check], device, dtype)
        rep = verify_analytic(net, sample, reducer.fresh() if reducer is not None else None)
        overhead = rep.reducer_gflops
        metrics["gflops_fvcore"] = rep.gflops
        # what the analytic count (+ the hook cost) gives the same traced clips: agrees with gflops_fvcore
        metrics["gflops_fvcore_analytic"] = rep.analytic.mean + rep.reducer_gflops
        metrics["gflops_reducer_overhead"] = rep.reducer_gflops
    # accuracy, tokens and GFLOPs of every clip
    with autocast_for(cell):
        fw = forward_all(model, reducer, clips, cell, progress, overhead_per_clip=overhead)
    metrics.update(fw["metrics"])
    if "top1" in metrics:
        metrics["top1_baseline"] = metrics["top1"] if reducer is None else _baseline_top1(
            model, clips, cell, cache, model_key(cell, num_classes, length_emb), progress)
    # wall-clock: clips decoded beforehand and resident on the device; baseline interleaved
    n_time = min(int(cell.get("time_clips") or 0) or len(clips), int(clips.clips.shape[0]))
    if progress:
        progress(f"timing {n_time} clips × {cell.get('repeats', 10)} repeats")
    resident = normalised(clips.clips[:n_time], device, dtype)
    with autocast_for(cell):  # the context is entered once; every timed forward runs inside it
        timing = time_forward(model, resident, reducer.fresh() if reducer is not None else None,
                              baseline=reducer is not None, warmup=int(cell.get("warmup", 2)),
                              repeats=int(cell.get("repeats", 10)), batch_size=int(cell["batch_size"]))
    metrics.update(timing.as_metrics())
    metrics["time_clips"] = timing.num_clips
    if reducer is None:  # the baseline cell is its own reference
        metrics.update(baseline_time_ms_median=metrics["time_ms_median"], speedup=1.0, speedup_q1=1.0,
                       speedup_q3=1.0)
    metrics["decode_ms_per_clip"] = statistics.fmean(clips.decode_ms)
    if reducer is not None and reducer.params() != (cell.get("params") or {}):
        metrics["reducer_params_used"] = reducer.params()  # e.g. random's keep calibrated to RLT's budget
    env = {"attn_backend": timing.backend or fw["backend"], "timer": timing.timer,
           "decoder": clips.info.get("decoder"), "decoder_version": clips.info.get("decoder_version"),
           "checkpoint": cache.checkpoints.get(model_key(cell, num_classes, length_emb), {})}
    return metrics, env


def train_cell(cell: dict[str, Any], cache: RunCache, progress=None, log=None) -> tuple[dict, dict]:
    """Train the cell's model with its reducer (``harness.train.train``), then evaluate it on the cell's
    clips like an inference cell (the reducer at evaluation: ``harness.train.inference_reducer``)."""
    from tokenbench.datasets import get_dataset

    from .checkpoint import load_checkpoint, weights_sha256
    from .model import build_model
    from .train import inference_reducer, train

    settings = dict(cell.get("train") or {})
    device, dtype = cell.get("device", "cpu"), DTYPES[cell.get("dtype", "float32")]
    clips = load_clipset(cell, cache, progress)  # evaluation clips, and the calibration data
    reducer = calibrate(build_reducer(cell), cell, clips, cache)
    train_split = settings.get("split", "train")
    train_ds = get_dataset(cell["dataset"], train_split, num_frames=cell["num_frames"], img_size=cell["img_size"],
                           **dict(cell.get("dataset_options") or {}))
    num_classes = int(cell.get("num_classes") or train_ds.num_classes)
    if not num_classes:
        raise CellError(f"dataset {cell['dataset']!r} is unlabelled: a train cell needs labels")
    check_head_classes(num_classes, clips.num_classes, clips.labels.tolist(), clips.paths, clips.info)
    torch.manual_seed(int(cell.get("seed", 0)))
    model = build_model(cell["model"], num_classes, num_frames=cell["num_frames"], img_size=cell["img_size"],
                        length_embedding=bool(getattr(reducer, "length_embedding", False)),
                        attn_backend=cell.get("attn_backend", "auto"))
    if settings.get("init") == "checkpoint":
        ck = cell["checkpoint"]
        if ck.startswith("trained:"):
            ck = str(cache.pretrained(cell["pretrain"], device, log))
        if ck != "none":
            load_checkpoint(model, ck, strict=False)
    if progress:
        progress(f"training {settings.get('epochs')} epochs")
    result = train(model, limited(train_ds, settings.get("max_clips")), None, reducer, device=device,
                   seed=int(cell.get("seed", 0)), log=False, **train_settings(settings))
    model = model.to(device=device, dtype=dtype).eval()
    eval_red = None if settings.get("eval_reducer") == "none" else inference_reducer(reducer)
    fw = forward_all(model, eval_red, clips, cell, progress)
    metrics: dict[str, Any] = dict(fw["metrics"])
    metrics.update({k: v for k, v in result.metrics().items() if k.startswith("train_")})
    metrics["train_clips"] = result.clips
    metrics["eval_reducer"] = "none" if eval_red is None else f"{eval_red.name} {eval_red.params()}"
    if reducer is not None and reducer.params() != (cell.get("params") or {}):
        metrics["reducer_params_used"] = reducer.params()
    env = {"attn_backend": fw["backend"], "decoder": clips.info.get("decoder"),
           "decoder_version": clips.info.get("decoder_version"),
           "checkpoint": {"checkpoint_sha256": weights_sha256(base_model(model).state_dict())}}
    return metrics, env


# ----------------------------------------------------------------------------------------------
# one cell, one record
# ----------------------------------------------------------------------------------------------
def run_cell(cell: dict[str, Any], *, suite: str = "adhoc", command: str = "", cache: RunCache | None = None,
             progress: Callable[[str], None] | None = None, log: Callable[[str], None] | None = None
             ) -> dict[str, Any]:
    """Measure one cell and return its record (harness/schema.py). Never raises for a failing cell."""
    cache = cache or RunCache()
    cell = dict(cell)
    key = cell.pop("key", None) or key_of(cell)
    started, t0 = utc_now(), time.perf_counter()
    load_start = load_average()
    status, error, tb, metrics, env = "ok", None, None, {}, {}
    threads_in_force = torch.get_num_threads()
    try:
        with torch_threads(int(cell.get("threads") or 0)) as threads_in_force:
            torch.manual_seed(int(cell.get("seed", 0)))
            if cell["mode"] == "inference":
                metrics, env = inference_cell(cell, cache, progress, log)
            elif cell["mode"] == "train":
                metrics, env = train_cell(cell, cache, progress, log)
            else:
                raise CellError(f"unknown mode {cell['mode']!r}")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, the suite goes on
        if isinstance(exc, SystemExit):
            raise
        status, error = "failed", describe_error(exc)
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
        if cell.get("device", "cpu").startswith("cuda"):
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    if metrics and load_start is not None:
        # other work on the machine while this cell was timed (1-minute load average; compare with the
        # fingerprint's cpu_count): timings taken beside other tenants are slower and noisier
        metrics["load_avg_start"], metrics["load_avg_end"] = load_start, load_average()
    fp = hardware_fingerprint(cell.get("device", "cpu"), cell.get("dtype", "float32"), threads_in_force,
                              attn_backend=env.pop("attn_backend", None))
    fp.update({k: v for k, v in env.items() if k in ("decoder", "decoder_version", "timer")})
    record = {
        "schema": SCHEMA_VERSION, "key": key, "suite": suite, "status": status, "error": error,
        "cell": {**cell, **env.get("checkpoint", {}), "label": cell_label(cell)},  # + the weights' sha256
        "fingerprint": fp, "metrics": metrics,
        "started": started, "finished": utc_now(), "duration_s": round(time.perf_counter() - t0, 3),
        "command": command,
    }
    if tb:
        record["traceback"] = tb
    return record


# ----------------------------------------------------------------------------------------------
# a whole suite
# ----------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    suite: str
    store: Path
    total: int
    skipped: int = 0
    ran: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def run_suite(suite: Suite, out: str | Path = "results", *, command: str = "", retry_failed: bool = False,
              cells: list[dict[str, Any]] | None = None, show_progress: bool = True,
              cache: RunCache | None = None, stream=None) -> RunSummary:
    """Run every unrecorded cell of ``suite``, appending each record to the suite's store as it finishes."""
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    t_start = time.perf_counter()
    cells = suite.cells() if cells is None else cells
    device = suite.defaults.get("device", "cpu")
    with torch_threads(int(suite.defaults.get("threads") or 0)) as threads:
        fp = hardware_fingerprint(device, suite.defaults.get("dtype", "float32"), threads)
    store = ResultStore(store_path(out, suite.name, fp["id"]))
    done = store.done_keys(include_failed=not retry_failed)
    pending = [c for c in cells if c["key"] not in done]
    summary = RunSummary(suite.name, store.path, len(cells), skipped=len(cells) - len(pending))
    cache = cache or RunCache()

    def log(msg: str) -> None:
        tqdm.write(msg, file=stream)

    if not pending:
        log(f"{suite.name}: all {len(cells)} cells are recorded in {store.path}; nothing to run")
        return summary
    log(f"{suite.name}: {len(pending)} of {len(cells)} cells to run ({summary.skipped} recorded) → {store.path}")
    # self-trained models first: once, cached on disk
    seen = set()
    for c in pending:
        pre = c.get("pretrain")
        if pre and c["checkpoint"].startswith("trained:") and c["checkpoint"] not in seen:
            seen.add(c["checkpoint"])
            path = pretrained_path(pre, cache.cache_dir)
            if not path.is_file():
                t0 = time.perf_counter()
                try:
                    with torch_threads(int(c.get("threads") or 0)):
                        cache.pretrained(pre, c.get("device", "cpu"), log)
                    log(f"trained {pre['model']} in {time.perf_counter() - t0:.0f} s → {path}")
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # its cells fail one by one with this error
                    log(f"training {pre['model']} failed: {describe_error(exc)}")
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    bar = tqdm(total=len(cells), initial=summary.skipped, unit="cell", file=stream, dynamic_ncols=True,
               mininterval=0.5 if interactive else 30.0,
               disable=not show_progress, bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} cells "
                                                     "[{elapsed}<{remaining}]{postfix}")
    data_in_use = None
    try:
        for i, cell in enumerate(pending, summary.skipped + 1):
            label = cell_label(cell)
            where = f"{cell.get('model_id', cell['model'])}/{cell.get('dataset_id', cell['dataset'])}"
            bar.set_description_str(f"cell {i}/{len(cells)} {cell['mode']} {where} b{cell['batch_size']} {label}")
            bar.set_postfix_str("", refresh=True)
            dk = data_key(cell)
            if data_in_use is not None and dk != data_in_use:
                cache.drop_clips_except(dk)  # keep memory to one dataset's clips at a time
            data_in_use = dk

            def progress(msg: str) -> None:
                bar.set_postfix_str(msg, refresh=interactive)

            with store.claim(cell["key"], include_failed=not retry_failed) as claim:
                if not claim.held:  # another run on this results folder has it: measure each cell once
                    log(f"cell {i}/{len(cells)} {label} skipped: {claim.why}")
                    summary.skipped += 1
                    bar.update(1)
                    continue
                rec = run_cell(cell, suite=suite.name, command=command, cache=cache, progress=progress, log=log)
                target = store if rec["fingerprint"]["id"] == fp["id"] else ResultStore(
                    store_path(out, suite.name, rec["fingerprint"]["id"]))
                target.append(rec)
            summary.ran += 1
            if rec["status"] != "ok":
                summary.failed += 1
                summary.failures.append(f"{label} ({where}, {cell['mode']}): {rec['error']}")
                log(f"cell {i}/{len(cells)} {label} FAILED: {rec['error']}")
            bar.update(1)
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - t_start
    return summary


def command_line(argv: list[str] | None = None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return "tokenbench " + " ".join(shlex.quote(a) for a in args)
