"""Training / fine-tuning with a token reducer active, and evaluation (top-1 / top-5).

:func:`train` is the paper's training table in one call: it trains (or fine-tunes) a model with a
reducer in the forward pass — RLT with or without the length embedding, random masking, RLT + random
masking, or none — and records the wall-clock to train, clips/s, tokens/clip and the final top-1.

Recipe (VideoMAE fine-tuning, scaled down): AdamW (β = 0.9, 0.999; no weight decay on biases, norms
and the length embedding), a per-step schedule of linear warm-up over ``warmup_epochs`` then cosine
decay to ``min_lr``, cross-entropy with label smoothing, gradient-norm clipping.

Precision: ``amp="auto"`` (the default) trains under bfloat16 autocast where the hardware runs bf16
matmuls natively (CUDA; a CPU with AMX or AVX512-BF16), float32 elsewhere; ``True`` / ``False`` force it.
On a CPU, bf16 speeds up the *dense* baseline's batched kernels more than the *packed* per-sequence
kernels of a content-adaptive reducer (docs/performance.md has the measurement), so a
*training comparison* of reducers in bf16 on a CPU measures kernel shapes rather than tokens: run
comparisons with ``amp=False`` (``train_compare`` does by default). The precision used is recorded
(``TrainResult.amp``).

Measurement protocol
--------------------
* **Wall-clock to train** (``wall_s``): the sum over epochs of the time from asking the data loader for
  the first batch to the end of the last optimiser step — data loading, normalisation, the reducer's
  selection, forward, backward and step included; evaluation, checkpoint writing and process-group
  start-up excluded. Under ``torchrun`` it is rank 0's time and ranks synchronise at each epoch's end.
* **CPU time** (``cpu_s``): this process's CPU seconds over the same spans. On a shared machine it is
  the steadier figure (with one thread it hardly moves under load; with more, OpenMP spin-waiting
  inflates it), so it is recorded beside the wall-clock.
* **clips/s**: training clips processed (all ranks) / ``wall_s``.
* **tokens/clip**: tokens entering the first block (``model.last_stats.tokens_in``), mean over every
  training clip.
* **Evaluation reducer.** The model is evaluated the way it would be deployed: with the reducer it was
  trained with when that reducer is part of inference (RLT: its selection is deterministic and content
  based — the RLT paper evaluates RLT-trained models with RLT on), without the train-time-only parts:
  random masking is a training augmentation / speed-up and is off at evaluation; ``rlt_random`` is
  evaluated with plain RLT at the same τ (its ``for_eval()``). Pass ``eval_reducer=`` to override
  (a reducer, ``none`` for the bare model; ``"auto"`` is the rule above). The reducer used is recorded.
* **top-1 / top-5** are over the whole evaluation split (top-5 is top-min(5, C)). When a dataset has
  several views per video (``meta["video_index"]``), softmax scores are averaged per video first
  (VideoMAE's multi-view protocol) and the ``views`` figure records it.

Data-parallel under ``torchrun``: when ``WORLD_SIZE`` > 1, :func:`train` initialises ``torch.distributed``
(gloo on CPU, NCCL on CUDA), shards data with a ``DistributedSampler`` (``batch_size`` is the *global*
batch, split evenly over ranks), wraps the model in DDP and evaluates on disjoint shards whose counts
are summed. Packed tokens give each step a different activation graph, but every parameter takes part
in every step (the length embedding too: without a selection every run has length 1), so DDP runs with
``find_unused_parameters=False``; a reducer that bypasses parameters can set ``find_unused_parameters``.
Rank 0 writes the checkpoint (VideoMAE layout, :func:`tokenbench.harness.checkpoint.save_checkpoint`).

The defaults (:class:`TrainRecipe`) are the recipe that trains ``vit_t`` from scratch on the default
``synthetic`` benchmark (8 × 112²) on a CPU; the top-1 it reaches is in the committed reference report.
Small batches matter more than epochs here: the loss sits at chance until the network has found
direction-selective token features, so the recipe spends its budget on steps. The command line is
``tokenbench train``; ``tokenbench train-compare`` runs the training table.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from tokenbench.datasets import ClipDataset
from tokenbench.reducers import Reducer

from .checkpoint import save_checkpoint
from .distributed import Dist, all_reduce, init_distributed, native_bf16, rank_device, resolve_amp
from .evaluate import collate, evaluate, model_input
from .model import BASELINE

__all__ = ["TrainRecipe", "TrainResult", "DEFAULTS", "RECIPE_FIELDS", "train", "evaluate", "inference_reducer",
           "param_groups", "lr_at", "native_bf16", "resolve_amp"]


@dataclass(frozen=True)
class TrainRecipe:
    """How :func:`train` trains: the defaults are the recipe for vit_t on the synthetic benchmark (see the
    module docstring). A suite's ``[train]`` and ``pretrain`` tables are checked against these fields, by
    type (``metadata``: an integer's ``minimum``, 1 unless given; the words a switch takes besides true/false)."""

    epochs: int = 2
    batch_size: int = 16            # global: split over torchrun ranks
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.2
    label_smoothing: float = 0.1
    min_lr: float = 1e-5
    clip_grad: float | None = 1.0   # gradient-norm clipping; 0 / None: off
    amp: bool | str = field(default="auto", metadata={"choices": ("auto",)})  # bf16 autocast (resolve_amp)
    seed: int = field(default=0, metadata={"minimum": 0})
    max_steps: int | None = None    # stop early (the schedule still spans ``epochs``)
    num_workers: int = field(default=0, metadata={"minimum": 0})
    eval_batch_size: int | None = None  # default: the per-rank training batch
    find_unused_parameters: bool = False  # DDP: for a reducer that bypasses parameters

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be ≥ 1, got {self.epochs}")

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TrainRecipe:
        """The recipe among a suite's train / pretrain settings (other keys are the suite's own)."""
        return cls(**{k: v for k, v in settings.items() if k in RECIPE_FIELDS})


RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainRecipe))
# The recipe a suite's [train] and pretrain tables start from. Cells record these keys (their key hashes
# them), so this set stays as it was when reference results were recorded.
DEFAULTS: dict[str, Any] = {k: getattr(TrainRecipe(), k) for k in (
    "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing", "min_lr", "clip_grad", "amp")}


@dataclass
class TrainResult:
    """What one training run measured. ``metrics()`` gives the result-record names (harness.schema)."""

    epochs: int
    steps: int
    wall_s: float  # training wall-clock, data loading included, evaluation excluded
    epoch_wall_s: list[float]
    cpu_s: float  # CPU time of this process over the same spans (all its threads; rank 0 under torchrun)
    clips: int  # training clips processed (all ranks)
    clips_per_s: float
    tokens_mean: float  # tokens per clip entering the network during training
    tokens_total: int  # T'·H'·W' (tokens per clip before reduction)
    final_loss: float  # mean training loss of the last epoch
    losses: list[float]  # mean training loss per epoch
    top1: float | None = None  # % on the evaluation split, with ``eval_reducer``
    top5: float | None = None
    eval_tokens_mean: float | None = None
    eval_num_clips: int | None = None
    eval_views: str | None = None
    reducer: str | None = None  # repr of the training reducer (None: the baseline, no reduction)
    eval_reducer: str | None = None  # repr of the evaluation reducer (None: the baseline, no reduction)
    world_size: int = 1
    threads: int = 1
    device: str = "cpu"
    amp: bool = False
    checkpoint: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch

    def metrics(self) -> dict[str, Any]:
        out = {"train_wall_s": self.wall_s, "train_epochs": self.epochs, "train_clips_per_s": self.clips_per_s,
               "train_tokens_mean": self.tokens_mean, "train_final_loss": self.final_loss,
               "tokens_total": self.tokens_total}
        if self.top1 is not None:
            out.update({"top1": self.top1, "top5": self.top5, "num_clips": self.eval_num_clips,
                        "views": self.eval_views, "tokens_in_mean": self.eval_tokens_mean})
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def inference_reducer(reducer: Reducer) -> Reducer:
    """The reducer to evaluate a model trained with ``reducer``: its ``for_eval()`` (see the module docstring)."""
    return reducer.for_eval()


def _described(reducer: Reducer) -> str | None:
    """A reducer as the result records it: its repr, or None for the baseline (nothing reduced)."""
    return None if reducer.identity else repr(reducer)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases, norm weights, 1-D parameters and the length embedding."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or "length_embed" in name or "pos_embed" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """Everything one training run set up: what :func:`_one_epoch` and :func:`_finish` work on."""

    recipe: TrainRecipe
    d: Dist
    dev: torch.device
    net: nn.Module
    model_ddp: nn.Module
    reducer: Reducer
    train_reducer: Reducer
    ev_reducer: Reducer
    loader: DataLoader
    sampler: Any
    opt: torch.optim.Optimizer
    crit: nn.Module
    amp: bool
    per_rank: int
    total_steps: int
    warmup_steps: int
    config: dict[str, Any]
    say: Callable[..., None]
    log_every: int = 0
    step: int = 0


def train(model: nn.Module, train_ds: ClipDataset, val_ds: ClipDataset | None = None,
          reducer: Reducer = BASELINE,
          recipe: TrainRecipe | None = None, *, device: str | torch.device = "cpu", out: str | Path | None = None,
          eval_reducer: Reducer | str = "auto", log: bool = True, log_every: int = 0) -> TrainResult:
    """Train ``model`` on ``train_ds`` with ``reducer`` in every forward pass, by ``recipe``; evaluate on
    ``val_ds``.

    ``model`` is a :class:`~tokenbench.harness.model.VideoViT` (build it with
    ``length_embedding=reducer.length_embedding`` for RLT's length embedding); it is trained in place.
    ``out``: checkpoint path (VideoMAE layout; rank 0 writes it). ``eval_reducer``: ``"auto"``
    (:func:`inference_reducer`) or a reducer (``NoReducer()``: none). Returns a :class:`TrainResult`. See the module
    docstring for the protocol.
    """
    run = _setup(model, train_ds, val_ds, reducer, recipe or TrainRecipe(), device, eval_reducer, log, log_every)
    epochs: list[dict[str, Any]] = []
    for epoch in range(run.recipe.epochs):
        stats = _one_epoch(run, train_ds, epoch)
        epochs.append(stats)
        if stats["stopped"]:
            break
    return _finish(run, val_ds, epochs, out)


def _setup(model, train_ds, val_ds, reducer, recipe: TrainRecipe, device, eval_reducer, log, log_every) -> _Run:
    d = init_distributed(str(device))
    dev = rank_device(device, d)
    if recipe.batch_size % d.world_size:
        raise ValueError(f"batch_size {recipe.batch_size} is the global batch; it must divide by the "
                         f"{d.world_size} ranks")
    per_rank = recipe.batch_size // d.world_size
    amp = resolve_amp(recipe.amp, dev)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if (log and d.rank == 0) else (lambda *a: None)
    torch.manual_seed(recipe.seed + d.rank)  # stochastic depth / dropout differ per rank, reproducibly
    if d.on and "seed" in reducer.params():
        # each rank masks its own clips with its own draws
        reducer = type(reducer)(**{**reducer.params(), "seed": int(reducer.params()["seed"]) + d.rank})
    train_reducer = reducer.fresh()
    ev_reducer = inference_reducer(reducer) if eval_reducer == "auto" else eval_reducer
    if isinstance(ev_reducer, str):
        raise ValueError(f"eval_reducer must be 'auto' or a Reducer, got {ev_reducer!r}")
    net = model.to(dev)
    train_reducer.check_geometry(net.grid, net.depth)
    model_ddp: nn.Module = net
    if d.on:
        model_ddp = DDP(net, device_ids=[dev.index] if dev.type == "cuda" else None,
                        find_unused_parameters=recipe.find_unused_parameters)
    loader, sampler = _loader(train_ds, recipe, d, per_rank)
    if len(loader) == 0:
        raise ValueError(f"training set of {len(train_ds)} clips gives no full batch of {recipe.batch_size}")
    r = recipe
    config = {"epochs": r.epochs, "batch_size": r.batch_size, "lr": r.lr, "weight_decay": r.weight_decay,
              "warmup_epochs": r.warmup_epochs, "label_smoothing": r.label_smoothing, "seed": r.seed,
              "min_lr": r.min_lr, "clip_grad": r.clip_grad, "amp": amp, "max_steps": r.max_steps,
              "world_size": d.world_size, "steps_per_epoch": len(loader), "num_workers": r.num_workers,
              "model": getattr(net, "name", type(net).__name__),
              "length_embedding": getattr(net, "length_embed", None) is not None,
              "reducer": None if reducer.identity else reducer.name,
              "params": None if reducer.identity else reducer.params(),
              "train_dataset": train_ds.info(), "val_dataset": val_ds.info() if val_ds is not None else None}
    say(f"train: {config['model']} on {len(train_ds)} clips, reducer {reducer!r}, {recipe.epochs} epochs × "
        f"{len(loader)} steps of {recipe.batch_size}, {d.world_size} process(es), {torch.get_num_threads()} "
        f"threads, {dev}")
    return _Run(recipe, d, dev, net, model_ddp, reducer, train_reducer, ev_reducer, loader, sampler,
                torch.optim.AdamW(param_groups(net, recipe.weight_decay), lr=recipe.lr, betas=(0.9, 0.999)),
                nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing), amp, per_rank,
                recipe.epochs * len(loader), int(round(recipe.warmup_epochs * len(loader))), config, say, log_every)


def _loader(train_ds: ClipDataset, recipe: TrainRecipe, d: Dist, per_rank: int) -> tuple[DataLoader, Any]:
    """The training loader: a seeded shuffle, or a ``DistributedSampler`` shard per rank."""
    workers = recipe.num_workers
    if d.on:
        sampler = DistributedSampler(train_ds, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                     seed=recipe.seed, drop_last=True)
        return DataLoader(train_ds, batch_size=per_rank, sampler=sampler, num_workers=workers, collate_fn=collate,
                          drop_last=True, persistent_workers=workers > 0), sampler
    gen = torch.Generator().manual_seed(recipe.seed)
    return DataLoader(train_ds, batch_size=per_rank, shuffle=True, generator=gen, num_workers=workers,
                      collate_fn=collate, drop_last=True, persistent_workers=workers > 0), None


def _one_epoch(run: _Run, train_ds: ClipDataset, epoch: int) -> dict[str, Any]:
    """One pass over the loader; its wall-clock spans the first batch request to the last optimiser step."""
    rec, dev, net = run.recipe, run.dev, run.net
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    train_ds.set_epoch(epoch)
    amp_ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if run.amp else contextlib.nullcontext
    _sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    loss_sum, n_batches, n_clips, n_tokens, stopped = 0.0, 0, 0, 0, False
    for clips, labels, _ in run.loader:
        for g in run.opt.param_groups:
            g["lr"] = lr_at(run.step, run.total_steps, run.warmup_steps, rec.lr, rec.min_lr)
        video = model_input(clips, dev)
        labels = labels.to(dev, non_blocking=True)
        with amp_ctx():
            logits = run.model_ddp(video, run.train_reducer)
            loss = run.crit(logits.float(), labels)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        if rec.clip_grad:
            nn.utils.clip_grad_norm_(net.parameters(), rec.clip_grad)
        run.opt.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch}, step {run.step}")
        loss_sum += float(loss.detach())
        n_batches, n_clips, n_tokens = n_batches + 1, n_clips + len(labels), n_tokens + sum(net.last_stats.tokens_in)
        run.step += 1
        if run.log_every and run.step % run.log_every == 0:
            run.say(f"    step {run.step}/{run.total_steps}: loss {loss_sum / n_batches:.4f} "
                    f"({time.perf_counter() - t0:.1f} s into the epoch)")
        if rec.max_steps is not None and run.step >= rec.max_steps:
            stopped = True
            break
    _sync(dev)
    if run.d.on:
        dist.barrier()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    loss_sum, n_batches, n_clips, n_tokens = all_reduce(
        [loss_sum, float(n_batches), float(n_clips), float(n_tokens)], run.d, torch.device("cpu"))
    mean_loss = loss_sum / max(n_batches, 1)
    run.say(f"  epoch {epoch + 1}/{rec.epochs}: loss {mean_loss:.4f}  {wall:.1f} s  "
            f"{n_clips / max(wall, 1e-9):.1f} clips/s  {n_tokens / max(n_clips, 1):.1f} tokens/clip")
    return {"epoch": epoch, "loss": mean_loss, "wall_s": wall, "cpu_s": cpu, "clips": int(n_clips),
            "tokens": n_tokens, "tokens_mean": n_tokens / max(n_clips, 1), "lr": run.opt.param_groups[0]["lr"],
            "stopped": stopped}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _finish(run: _Run, val_ds: ClipDataset | None, epochs: list[dict[str, Any]],
            out: str | Path | None) -> TrainResult:
    """The result of the epochs, evaluated on ``val_ds``; the checkpoint written; the process group closed."""
    net, reducer, ev_reducer = run.net, run.reducer, run.ev_reducer
    wall_s = float(sum(e["wall_s"] for e in epochs))
    clips_done, tokens_seen = sum(e["clips"] for e in epochs), sum(e["tokens"] for e in epochs)
    history = [{k: e[k] for k in ("epoch", "loss", "wall_s", "clips", "tokens_mean", "lr")} for e in epochs]
    result = TrainResult(
        epochs=len(epochs), steps=run.step, wall_s=wall_s, epoch_wall_s=[e["wall_s"] for e in epochs],
        cpu_s=sum(e["cpu_s"] for e in epochs), clips=int(clips_done),
        clips_per_s=clips_done / max(wall_s, 1e-9), tokens_mean=tokens_seen / max(clips_done, 1),
        tokens_total=int(math.prod(net.grid)) if hasattr(net, "grid") else 0,
        final_loss=epochs[-1]["loss"], losses=[e["loss"] for e in epochs],
        reducer=_described(reducer), eval_reducer=_described(ev_reducer), world_size=run.d.world_size,
        threads=torch.get_num_threads(), device=str(run.dev), amp=run.amp, config=run.config, history=history)
    if val_ds is not None:
        ev = evaluate(net, val_ds, ev_reducer, batch_size=run.recipe.eval_batch_size or run.per_rank, device=run.dev,
                      num_workers=run.recipe.num_workers, amp=run.amp)
        result.top1, result.top5 = ev["top1"], ev["top5"]
        result.eval_tokens_mean, result.eval_num_clips, result.eval_views = (ev["tokens_mean"], ev["num_clips"],
                                                                             ev["views"])
        run.say(f"  val: top-1 {ev['top1']:.2f}%  top-5 {ev['top5']:.2f}%  on {ev['num_clips']} clips, "
                f"reducer {result.eval_reducer}, {ev['tokens_mean']:.1f} tokens/clip")
    run.say(f"  trained in {wall_s:.1f} s ({result.clips_per_s:.1f} clips/s, {result.tokens_mean:.1f} tokens/clip)")
    if out is not None:
        if run.d.rank == 0:
            summary = {k: v for k, v in result.to_dict().items() if k not in ("config", "history")}
            save_checkpoint(net, out, epoch=result.epochs, train_result=json.dumps(summary, default=str),
                            config=json.dumps(run.config, default=str))
        result.checkpoint = str(out)
        if run.d.on:
            dist.barrier()
    if run.d.started_here:
        dist.destroy_process_group()
    return result
