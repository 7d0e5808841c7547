"""What a cell measures. An **inference** cell, on the cell's clips (``max_clips`` videos × ``views``):

* accuracy (labelled data): top-1 / top-5, softmax averaged over a video's views, and the same model
  without reducer on the same clips (``top1_baseline``; once per model and data);
* tokens: per clip entering the first block, and per layer (mean over clips);
* GFLOPs: for every clip, the analytic backbone count from its token counts plus the reducer's own hook
  cost per clip; both checked against an fvcore trace (attention handles included) of
  ``flops_check_clips`` clips first (``harness.flops.verify_analytic``);
* wall-clock (``harness.timing.time_forward``): ``time_clips`` clips, a seeded sample spread over the videos
  (``clips.timing_sample``), decoded beforehand and resident on the device; the baseline timed interleaved
  with the reducer (for the ``none`` cell: the baseline against itself, the A/A control), selection inside
  the timed region and also timed alone; the timed clips' own tokens and GFLOPs beside the all-clip ones;
  the attention path of each arm; decode time per clip measured apart when the clips were loaded;
* intervals (95 %): top-1 Wilson over videos, Δtop-1 against this cell's own paired baseline (same clips,
  views, options, autocast) bootstrapped over the same videos.

``attn_path = "packed"`` runs every arm of the cell through the per-sequence path (no dense batched
shortcut for equal lengths), so reducers at one budget compare by selection, not by kernel shape.

A **train** cell trains the cell's model with the reducer (``harness.train``), times it, and evaluates
the result the same way, with the reducer's ``for_eval()`` (or none with ``train.eval_reducer = "none"``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

import torch

from tokenbench.datasets.classes import check_head_classes
from tokenbench.reducers import get_reducer

from ..allocator import heap_kept
from ..attention import missing_kernels
from ..checkpoint import load_checkpoint, weights_sha256
from ..errors import CellError
from ..evaluate import model_input
from ..flops import gflops_from_stats, verify_analytic
from ..intervals import paired_delta, wilson
from ..metrics import MultiViewAccuracy, TokenCounts
from ..model import build_model
from ..schema import Cell
from ..settings import TrainSettings
from ..timing import make_batches, time_forward
from ..train import inference_reducer, train
from .clips import ClipSet, data_key, first_items, load_clipset, timing_sample
from .common import DTYPES
from .models import (
    RunCache,
    base_model,
    build_reducer,
    calibrate,
    calibrate_with_model,
    load_model,
    model_classes,
    model_key,
)


def autocast_for(cell: Cell) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in the cell's ``autocast`` dtype on its device type (a no-op without one)."""
    amp = cell.amp
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(cell.device).type, dtype=DTYPES[amp])


MAX_TOKENS_PER_CLIP_RECORDED = 20000  # beyond this many clips a record keeps the first ones only
# The accuracy pass is not timed, so it runs in batches of about this many tokens (never fewer clips than the
# cell's batch): a small model takes fewer, larger GEMMs (vit_t at 8×112²: 64 clips a batch), while a ViT-B at
# 16×224² (1,568 tokens a clip) keeps its batch of 8 and the memory it was sized for
EVAL_BATCH_TOKENS = 64 * 196


class NonFiniteError(CellError):
    """The model produced NaN or infinite logits."""


def forward_all(model, reducer, clips: ClipSet, cell: Cell,
                progress: Callable[[str], None] | None = None, what: str = "eval",
                overhead_per_clip: float = 0.0) -> dict[str, Any]:
    """Every clip through the model in batches of the cell's size or more (``EVAL_BATCH_TOKENS``; the pass is
    not timed, and no count depends on the batch): accuracy (multi-view), tokens per clip
    and layer, GFLOPs per clip (the analytic backbone count from the clip's token counts, plus the
    reducer's hook cost per clip measured by fvcore: ``overhead_per_clip``), the attention backend that
    ran; beside the metrics, ``correct``: video → top-1 correct (labelled data), for paired intervals."""
    device, dtype = cell.device, DTYPES[cell.dtype]
    net = base_model(model)
    bs = max(1, int(cell.batch_size), EVAL_BATCH_TOKENS // max(1, int(net.num_tokens)))
    acc = MultiViewAccuracy(protocol=cell.views) if clips.labelled else None
    tokens = TokenCounts(tokens_total=net.num_tokens)
    gflops, gflops_attn, backends = [], [], set()
    n, done = len(clips), 0
    # the heap kept as in the timing (harness.allocator): at 64 clips a batch an MLP activation is over glibc's
    # largest mmap threshold, and mapping it afresh every block costs the pass page faults, not arithmetic
    with torch.inference_mode(), heap_kept():
        for batch, labels, vids, paths in clips.batches(bs):
            x = model_input(batch, device, dtype)
            out = model(x, reducer=reducer)
            finite = torch.isfinite(out).all(dim=1)
            if not bool(finite.all()):
                bad = [paths[i] for i in range(out.shape[0]) if not bool(finite[i])]
                raise NonFiniteError(f"non-finite logits for {len(bad)} clip(s) of this batch, first {bad[0]}")
            stats = net.last_stats
            if acc is not None:
                acc.add(out, labels, vids)
            tokens.add(stats)
            fl = gflops_from_stats(net, stats)
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
    correct: dict[Any, bool] = {}
    if acc is not None:
        r = acc.result()
        metrics.update(top1=r["top1"], top5=r["top5"], views=r["views"], num_videos=r["num_clips"])
        correct = acc.correct(1)
        metrics["top1_ci_lo"], metrics["top1_ci_hi"] = wilson(sum(correct.values()), len(correct))
    else:
        metrics["views"] = cell.views
    return {"metrics": metrics, "backend": "+".join(sorted(backends)), "correct": correct}


def _baseline(model, clips: ClipSet, cell: Cell, cache: RunCache, mkey: str, progress,
              own: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`forward_all` of the same model without reducer on the same clips (once per model, data and
    autocast): its top-1 and per-video correctness are this cell's paired baseline. ``own``: the cell is
    the baseline, and its forward pass is the one kept."""
    key = mkey + ":" + data_key(cell) + ":" + str(cell.amp)
    if own is not None:
        cache.baseline.setdefault(key, own)
    if key not in cache.baseline:
        with autocast_for(cell), cache.phases("accuracy (baseline)"):
            cache.baseline[key] = forward_all(model, get_reducer("none"), clips, cell, progress, what="baseline")
    return cache.baseline[key]


def paired_accuracy(fw: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``top1_baseline`` and the paired 95 % interval of Δtop-1 (top-1 − top1_baseline) over the videos
    both arms scored."""
    delta, lo, hi = paired_delta(base["correct"], fw["correct"])
    return {"top1_baseline": base["metrics"]["top1"], "delta_top1_ci_lo": lo, "delta_top1_ci_hi": hi}


@contextlib.contextmanager
def attention_path(net, cell: Cell):
    """``attn_path = "packed"``: the model's dense batched shortcut off for the cell (restored after)."""
    before = net.dense_fast_path
    net.dense_fast_path = before and cell.attn_path != "packed"
    try:
        yield
    finally:
        net.dense_fast_path = before


def timed_clip_metrics(model, resident: torch.Tensor, reducer, batch_size: int,
                       overhead_per_clip: float) -> dict[str, Any]:
    """Mean tokens and GFLOPs of the clips exactly as timed (``harness.timing.make_batches``: the last batch
    is filled by wrapping around, so those clips count again), from one untimed pass over them."""
    net = base_model(model)
    tokens_in, gflops = [], []
    with torch.inference_mode():
        for batch in make_batches(resident, batch_size):
            model(batch, reducer=reducer)
            stats = net.last_stats
            tokens_in.extend(stats.tokens_in)
            gflops.extend(g + overhead_per_clip for g in gflops_from_stats(net, stats).per_clip)
    return {"time_tokens_in_mean": statistics.fmean(tokens_in), "time_gflops": statistics.fmean(gflops)}


def inference_cell(cell: Cell, cache: RunCache, progress=None, log=None) -> tuple[dict, dict]:
    with cache.phases("clips"):
        clips = load_clipset(cell, cache, progress)
    reducer = build_reducer(cell)
    length_emb = bool(reducer.length_embedding)
    num_classes = model_classes(cell, clips.num_classes)
    check_head_classes(num_classes, clips.num_classes, clips.labels.tolist(), clips.paths, clips.info)
    model = load_model(cell, cache, num_classes, length_emb, log)
    net = base_model(model)
    reducer.check_geometry(net.grid, net.depth)
    reducer = calibrate(reducer, cell, clips, cache)
    with autocast_for(cell):  # on train clips, never the clips scored below
        reducer, calibration = calibrate_with_model(reducer, cell, net, model_key(cell, num_classes, length_emb),
                                                    cache, progress)
    device, dtype = cell.device, DTYPES[cell.dtype]

    # FLOPs: an fvcore trace (attention handles included) of a sample checks the analytic count used for
    # every clip, and measures what the reducer's own hooks cost per clip (ToMe/STA similarity matmuls)
    metrics: dict[str, Any] = {} if calibration is None else {"calibration": calibration}
    overhead = 0.0
    n_check = min(int(cell.flops_check_clips), int(clips.clips.shape[0]))
    if n_check:
        if progress:
            progress(f"fvcore check on {n_check} clip(s)")
        sample = model_input(clips.clips[:n_check], device, dtype)
        with cache.phases("flop trace"):
            rep = verify_analytic(net, sample, reducer.fresh())
        overhead = rep.reducer_gflops
        metrics["gflops_fvcore"] = rep.gflops
        # what the analytic count (+ the hook cost) gives the same traced clips: agrees with gflops_fvcore
        metrics["gflops_fvcore_analytic"] = rep.analytic.mean + rep.reducer_gflops
        metrics["gflops_reducer_overhead"] = rep.reducer_gflops
    with attention_path(net, cell):
        # accuracy, tokens and GFLOPs of every clip
        with autocast_for(cell), cache.phases("accuracy"):
            fw = forward_all(model, reducer, clips, cell, progress, overhead_per_clip=overhead)
        metrics.update(fw["metrics"])
        if "top1" in metrics:
            base = _baseline(model, clips, cell, cache, model_key(cell, num_classes, length_emb), progress,
                             own=fw if reducer.identity else None)
            metrics.update(paired_accuracy(fw, fw if reducer.identity else base))
        # wall-clock: a seeded sample of clips spread over the videos, decoded beforehand and resident on the
        # device; the baseline interleaved (the none cell: against itself, the A/A control)
        in_memory = int(clips.clips.shape[0])
        n_time = min(int(cell.time_clips or 0) or in_memory, in_memory)
        picked = timing_sample(clips.video_index[:in_memory], n_time, seed=int(cell.seed))
        if progress:
            progress(f"timing {n_time} clips × {cell.repeats} repeats")
        resident = model_input(clips.clips[picked], device, dtype)
        # the context is entered once; every timed forward runs inside it
        with autocast_for(cell), cache.phases("paired timing"):
            timing = time_forward(model, resident, reducer.fresh(),
                                  baseline=True, warmup=int(cell.warmup), repeats=int(cell.repeats),
                                  batch_size=int(cell.batch_size))
            metrics.update(timed_clip_metrics(model, resident, reducer.fresh(),
                                              int(cell.batch_size), overhead))
    metrics.update(timing.as_metrics())
    metrics["time_clips"] = timing.num_clips
    metrics["time_videos"] = len({clips.video_index[i] for i in picked})
    metrics["decode_ms_per_clip"] = statistics.fmean(clips.decode_ms)
    if reducer.params() != (cell.params or {}):
        metrics["reducer_params_used"] = reducer.params()  # e.g. random's keep calibrated to RLT's budget
    missing = missing_kernels(device)
    if missing:  # said in the record: what stood in is the backend and path that ran
        metrics["attn_kernels_missing"] = "+".join(missing)
    env = {"attn_backend": timing.backend or fw["backend"], "timer": timing.timer,
           "timing_allocator": timing.allocator.description,
           "decoder": clips.info.get("decoder"), "decoder_version": clips.info.get("decoder_version"),
           "checkpoint": cache.checkpoints.get(model_key(cell, num_classes, length_emb), {})}
    return metrics, env


def train_cell(cell: Cell, cache: RunCache, progress=None, log=None) -> tuple[dict, dict]:
    """Train the cell's model with its reducer (``harness.train.train``), then evaluate it on the cell's
    clips like an inference cell (the reducer at evaluation: ``harness.train.inference_reducer``)."""
    settings = TrainSettings.from_table(cell.train)
    device, dtype = cell.device, DTYPES[cell.dtype]
    with cache.phases("clips"):
        clips = load_clipset(cell, cache, progress)  # evaluation clips, and the calibration data
    reducer = calibrate(build_reducer(cell), cell, clips, cache)
    if reducer.calibrates_with_model:
        raise CellError(f"{cell.reducer} calibrates with a trained model in the loop: run it in inference cells")
    with cache.phases("clips"):
        train_ds = first_items(cell.dataset, cell.train["split"], settings.max_clips,
                               num_frames=cell.num_frames, img_size=cell.img_size, options=cell.dataset_options)
    num_classes = int(cell.num_classes or train_ds.num_classes)
    if not num_classes:
        raise CellError(f"dataset {cell.dataset!r} is unlabelled: a train cell needs labels")
    check_head_classes(num_classes, clips.num_classes, clips.labels.tolist(), clips.paths, clips.info)
    torch.manual_seed(int(cell.seed))
    model = build_model(cell.model, num_classes, num_frames=cell.num_frames, img_size=cell.img_size,
                        length_embedding=bool(reducer.length_embedding),
                        attn_backend=cell.attn_backend)
    # the weights training starts from, named beside the ones it ends with (arms compare by it)
    init = {"init_checkpoint_sha256": weights_sha256(model.state_dict())}
    if settings.init == "checkpoint":
        ck = cell.checkpoint
        if ck.startswith("trained:"):
            ck = str(cache.pretrained(cell.pretrain, device, log))
        if ck != "none":
            info = load_checkpoint(model, ck, strict=False)
            init = {"init_checkpoint_sha256": info.sha256, "init_checkpoint_path": ck}
    if progress:
        progress(f"training {settings.recipe.epochs} epochs")
    with cache.phases("training"):
        result = train(model, train_ds, None, reducer,
                       dataclasses.replace(settings.recipe, seed=cell.seed), device=device, log=False)
    model = model.to(device=device, dtype=dtype).eval()
    eval_red = get_reducer("none") if settings.eval_reducer == "none" else inference_reducer(reducer)
    with cache.phases("accuracy"):
        fw = forward_all(model, eval_red, clips, cell, progress)
    metrics: dict[str, Any] = dict(fw["metrics"])
    metrics.update({k: v for k, v in result.metrics().items() if k.startswith("train_")})
    metrics["train_clips"] = result.clips
    metrics["eval_reducer"] = "none" if eval_red.identity else f"{eval_red.name} {eval_red.params()}"
    if reducer.params() != (cell.params or {}):
        metrics["reducer_params_used"] = reducer.params()
    env = {"attn_backend": fw["backend"], "decoder": clips.info.get("decoder"),
           "decoder_version": clips.info.get("decoder_version"),
           "checkpoint": {"checkpoint_sha256": weights_sha256(base_model(model).state_dict()), **init}}
    return metrics, env
