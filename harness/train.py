"""Training / fine-tuning with a token reducer active, and evaluation (top-1 / top-5).

:func:`train` is the paper's training table in one call: it trains (or fine-tunes) a model with a
reducer in the forward pass — RLT with or without the length embedding, random masking, RLT + random
masking, or none — and records the wall-clock to train, clips/s, tokens/clip and the final top-1.

Recipe (VideoMAE fine-tuning, scaled down): AdamW (β = 0.9, 0.999; no weight decay on biases, norms
and the length embedding), a per-step schedule of linear warm-up over ``warmup_epochs`` then cosine
decay to ``min_lr``, cross-entropy with label smoothing, gradient-norm clipping.

Precision: ``amp="auto"`` (the default) trains under bfloat16 autocast where the hardware runs bf16
matmuls natively (CUDA; a CPU with AMX or AVX512-BF16), float32 elsewhere; ``True`` / ``False`` force it.
On this project's CPU (AMX) bf16 makes the *dense* baseline step ~1.8× faster but the *packed* step of a
content-adaptive reducer slower: per-sequence bf16 attention kernels cost several times one batched call
(measured, 1 thread, 16 clips of 8 × 112², CPU-s/step: baseline 0.77 bf16 vs 1.37 fp32; RLT τ=0.1 1.13
bf16 vs 1.30 fp32). So bf16 is right for getting a model trained fast, but a *training comparison* of
reducers in bf16 on a CPU measures kernel shapes rather than tokens: run comparisons with ``amp=False``
(``train_compare`` does by default). The precision used is recorded (``TrainResult.amp``).

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
  (``None`` or a reducer; ``"auto"`` is the rule above). The reducer used is recorded.
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

Defaults (:data:`DEFAULTS`: 2 epochs, global batch 16, lr 1e-3, 0.2 warm-up epochs, weight decay 0.05,
label smoothing 0.1, amp "auto") are the recipe that trains ``vit_t`` from scratch on the default
``synthetic`` benchmark (8 × 112², 3000 train clips) to ≥ 90 % val top-1 on a 2-core CPU. Small batches
matter more than epochs here: the loss sits at chance until the network has found direction-selective
token features (~150 steps), so the recipe spends its budget on steps. The command line is
``tokenbench train``; ``python -m tokenbench.harness.train_compare`` runs the training table.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from tokenbench.reducers import Reducer

# The recipe for vit_t on the synthetic benchmark (see the module docstring).
DEFAULTS: dict[str, Any] = {
    "epochs": 2,
    "batch_size": 16,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 0.2,
    "label_smoothing": 0.1,
    "min_lr": 1e-5,
    "clip_grad": 1.0,
    "amp": "auto",
}


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
    reducer: str | None = None  # repr of the training reducer
    eval_reducer: str | None = None  # repr of the evaluation reducer
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
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _collate(batch):
    clips = torch.stack([b[0] for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    metas = [b[2] for b in batch]
    return clips, labels, metas


def _to_input(clips: torch.Tensor, device: torch.device) -> torch.Tensor:
    from tokenbench.datasets.transforms import to_model_input

    return to_model_input(clips.to(device, non_blocking=True))


def inference_reducer(reducer: Reducer | None) -> Reducer | None:
    """The reducer to evaluate a model trained with ``reducer`` (see the module docstring): its
    ``for_eval()`` when it has one, ``None`` for random masking, else the reducer itself."""
    if reducer is None:
        return None
    for_eval = getattr(reducer, "for_eval", None)
    if callable(for_eval):
        return for_eval()
    if getattr(reducer, "train_only", False) or getattr(reducer, "name", "") == "random":
        return None
    return reducer


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


@dataclass
class _Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    started_here: bool = False

    @property
    def on(self) -> bool:
        return self.world_size > 1


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        started = True
    return _Dist(world_size=dist.get_world_size(), rank=dist.get_rank(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")), started_here=started)


def _all_reduce(values: list[float], d: _Dist, device: torch.device) -> list[float]:
    if not d.on:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matmuls natively (CUDA with bf16; a CPU with AMX or AVX512-BF16),
    so that autocast speeds training up rather than emulating bf16 slowly."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_amp(amp: bool | str, device: torch.device) -> bool:
    """``amp``: True / False, or ``"auto"`` = bfloat16 autocast where :func:`native_bf16`."""
    if amp == "auto":
        return native_bf16(device)
    if isinstance(amp, bool):
        return amp
    raise ValueError(f"amp must be True, False or 'auto', got {amp!r}")


def _resolve_device(device: str | torch.device | None, d: _Dist) -> torch.device:
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", d.local_rank if d.on else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, reducer: Reducer | None = None, *, batch_size: int = 32,
             device: str | torch.device = "cpu", num_workers: int = 0, max_clips: int | None = None,
             amp: bool | str = False) -> dict[str, Any]:
    """Top-1 / top-5 (%) of ``model`` (+ ``reducer``, applied as given) on ``dataset``.

    Returns ``{"top1", "top5", "num_clips", "num_videos", "views", "tokens_mean", "loss"}``. With
    several views per video (``meta["video_index"]``) softmax scores are averaged per video before
    ranking. Under an initialised process group each rank evaluates a disjoint shard and the counts
    are summed, so every rank returns the same figures.
    """
    import torch.distributed as dist

    dist_on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist_on else (0, 1)
    dev = torch.device(device)
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    n = len(dataset) if max_clips is None else min(len(dataset), int(max_clips))
    indices = list(range(rank, n, world))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate)
    num_classes = int(getattr(net, "num_classes", 0) or getattr(dataset, "num_classes", 0))
    k5 = min(5, num_classes)
    probs_sum = torch.zeros(n, num_classes, dtype=torch.float64)
    labels_of = torch.full((n,), -1, dtype=torch.long)
    seen = torch.zeros(n, dtype=torch.bool)
    tokens = loss_sum = 0.0
    count = 0
    amp_ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if resolve_amp(amp, dev) else contextlib.nullcontext()
    try:
        for clips, labels, metas in loader:
            video = _to_input(clips, dev)
            with amp_ctx:
                logits = net(video, reducer).float()
            loss_sum += float(F.cross_entropy(logits, labels.to(dev), reduction="sum"))
            tokens += float(sum(net.last_stats.tokens_in))
            count += len(labels)
            probs = logits.softmax(-1).double().cpu()
            vid = torch.tensor([int(m.get("video_index", m.get("index", 0))) for m in metas], dtype=torch.long)
            probs_sum.index_add_(0, vid, probs)
            labels_of[vid] = labels
            seen[vid] = True
    finally:
        net.train(was_training)
    if dist_on:  # sum scores, merge labels / seen over ranks
        for t in (probs_sum,):
            dist.all_reduce(t)
        lab = torch.where(seen, labels_of, torch.full_like(labels_of, -1))
        dist.all_reduce(lab, op=dist.ReduceOp.MAX)
        labels_of = lab
        seen_i = seen.to(torch.int64)
        dist.all_reduce(seen_i)
        seen = seen_i > 0
        tokens, loss_sum, count = _all_reduce([tokens, loss_sum, float(count)],
                                              _Dist(world_size=world, rank=rank), torch.device("cpu"))
        count = int(count)
    probs_sum, labels_of = probs_sum[seen], labels_of[seen]
    videos = int(seen.sum())
    top = probs_sum.topk(k5, dim=1).indices if videos else torch.zeros(0, k5, dtype=torch.long)
    hit1 = (top[:, 0] == labels_of).sum().item() if videos else 0
    hit5 = (top == labels_of.unsqueeze(1)).any(1).sum().item() if videos else 0
    views = count // max(videos, 1)
    return {"top1": 100.0 * hit1 / max(videos, 1), "top5": 100.0 * hit5 / max(videos, 1),
            "num_clips": count, "num_videos": videos, "views": f"{views} per video",
            "tokens_mean": tokens / max(count, 1), "loss": loss_sum / max(count, 1)}


# ``eval`` as the brief names it; ``evaluate`` avoids shadowing the builtin in callers' code
eval = evaluate  # noqa: A001


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
def train(model: nn.Module, train_ds: Dataset, val_ds: Dataset | None = None, reducer: Reducer | None = None, *,
          epochs: int = DEFAULTS["epochs"], batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
          weight_decay: float = DEFAULTS["weight_decay"], warmup_epochs: float = DEFAULTS["warmup_epochs"],
          label_smoothing: float = DEFAULTS["label_smoothing"], seed: int = 0, num_workers: int = 0,
          device: str | torch.device = "cpu", out: str | Path | None = None,
          min_lr: float = DEFAULTS["min_lr"], clip_grad: float | None = DEFAULTS["clip_grad"],
          eval_reducer: Reducer | None | str = "auto", eval_batch_size: int | None = None,
          max_steps: int | None = None, amp: bool | str = DEFAULTS["amp"], find_unused_parameters: bool = False,
          log: bool = True, log_every: int = 0) -> TrainResult:
    """Train ``model`` on ``train_ds`` with ``reducer`` in every forward pass; evaluate on ``val_ds``.

    ``model`` is a :class:`~tokenbench.harness.model.VideoViT` (build it with
    ``length_embedding=reducer.length_embedding`` for RLT's length embedding); it is trained in place.
    ``batch_size`` is the global batch (split over ``torchrun`` ranks). ``max_steps`` stops early (the
    schedule still spans ``epochs``). ``out``: checkpoint path (VideoMAE layout; rank 0 writes it).
    Returns a :class:`TrainResult`. See the module docstring for the protocol.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be ≥ 1, got {epochs}")
    d = _init_distributed(str(device))
    dev = _resolve_device(device, d)
    if batch_size % d.world_size:
        raise ValueError(f"batch_size {batch_size} is the global batch; it must divide by the "
                         f"{d.world_size} ranks")
    per_rank = batch_size // d.world_size
    amp = resolve_amp(amp, dev)
    is_main = d.rank == 0
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if (log and is_main) else (lambda *a: None)

    torch.manual_seed(seed + d.rank)  # stochastic depth / dropout differ per rank, reproducibly
    if reducer is not None and d.on and "seed" in reducer.params():
        # each rank masks its own clips with its own draws
        reducer = type(reducer)(**{**reducer.params(), "seed": int(reducer.params()["seed"]) + d.rank})
    train_reducer = reducer.fresh() if reducer is not None else None
    ev_reducer = inference_reducer(reducer) if eval_reducer == "auto" else eval_reducer
    if isinstance(ev_reducer, str):
        raise ValueError(f"eval_reducer must be 'auto', None or a Reducer, got {ev_reducer!r}")

    net = model.to(dev)
    if train_reducer is not None:
        train_reducer.check_geometry(net.grid, net.depth)
    model_ddp: nn.Module = net
    if d.on:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model_ddp = DDP(net, device_ids=[dev.index] if dev.type == "cuda" else None,
                        find_unused_parameters=find_unused_parameters)

    gen = torch.Generator().manual_seed(seed)
    if d.on:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=seed,
                                     drop_last=True)
        loader = DataLoader(train_ds, batch_size=per_rank, sampler=sampler, num_workers=num_workers,
                            collate_fn=_collate, drop_last=True, persistent_workers=num_workers > 0)
    else:
        sampler = None
        loader = DataLoader(train_ds, batch_size=per_rank, shuffle=True, generator=gen, num_workers=num_workers,
                            collate_fn=_collate, drop_last=True, persistent_workers=num_workers > 0)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"training set of {len(train_ds)} clips gives no full batch of {batch_size}")
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    opt = torch.optim.AdamW(param_groups(net, weight_decay), lr=lr, betas=(0.9, 0.999))
    crit = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    amp_ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
              "warmup_epochs": warmup_epochs, "label_smoothing": label_smoothing, "seed": seed, "min_lr": min_lr,
              "clip_grad": clip_grad, "amp": amp, "max_steps": max_steps, "world_size": d.world_size,
              "steps_per_epoch": steps_per_epoch, "num_workers": num_workers,
              "model": getattr(net, "name", type(net).__name__),
              "length_embedding": getattr(net, "length_embed", None) is not None,
              "reducer": None if reducer is None else reducer.name,
              "params": None if reducer is None else reducer.params(),
              "train_dataset": _ds_info(train_ds), "val_dataset": _ds_info(val_ds) if val_ds is not None else None}
    say(f"train: {config['model']} on {len(train_ds)} clips, reducer {reducer!r}, {epochs} epochs × "
        f"{steps_per_epoch} steps of {batch_size}, {d.world_size} process(es), {torch.get_num_threads()} "
        f"threads, {dev}")

    step = 0
    losses, epoch_walls, history = [], [], []
    clips_done = tokens_seen = cpu_total = 0.0
    stop = False
    net.train()
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        loss_sum = 0.0
        n_batches = n_clips = n_tokens = 0
        for clips, labels, _ in loader:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total_steps, warmup_steps, lr, min_lr)
            video = _to_input(clips, dev)
            labels = labels.to(dev, non_blocking=True)
            with amp_ctx():
                logits = model_ddp(video, train_reducer)
                loss = crit(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad:
                nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
            opt.step()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch}, step {step}")
            loss_sum += float(loss.detach())
            n_batches += 1
            n_clips += len(labels)
            n_tokens += sum(net.last_stats.tokens_in)
            step += 1
            if log_every and step % log_every == 0:
                say(f"    step {step}/{total_steps}: loss {loss_sum / n_batches:.4f} "
                    f"({time.perf_counter() - t0:.1f} s into the epoch)")
            if max_steps is not None and step >= max_steps:
                stop = True
                break
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if d.on:
            import torch.distributed as dist

            dist.barrier()
        wall = time.perf_counter() - t0
        cpu_total += time.process_time() - c0
        loss_sum, n_batches, n_clips, n_tokens = _all_reduce(
            [loss_sum, float(n_batches), float(n_clips), float(n_tokens)], d, torch.device("cpu"))
        mean_loss = loss_sum / max(n_batches, 1)
        losses.append(mean_loss)
        epoch_walls.append(wall)
        clips_done += n_clips
        tokens_seen += n_tokens
        history.append({"epoch": epoch, "loss": mean_loss, "wall_s": wall, "clips": int(n_clips),
                        "tokens_mean": n_tokens / max(n_clips, 1), "lr": opt.param_groups[0]["lr"]})
        say(f"  epoch {epoch + 1}/{epochs}: loss {mean_loss:.4f}  {wall:.1f} s  "
            f"{n_clips / max(wall, 1e-9):.1f} clips/s  {n_tokens / max(n_clips, 1):.1f} tokens/clip")
        if stop:
            break

    wall_s = float(sum(epoch_walls))
    result = TrainResult(
        epochs=len(epoch_walls), steps=step, wall_s=wall_s, epoch_wall_s=epoch_walls, cpu_s=cpu_total,
        clips=int(clips_done),
        clips_per_s=clips_done / max(wall_s, 1e-9), tokens_mean=tokens_seen / max(clips_done, 1),
        tokens_total=int(math.prod(net.grid)) if hasattr(net, "grid") else 0,
        final_loss=losses[-1], losses=losses, reducer=repr(reducer) if reducer is not None else None,
        eval_reducer=repr(ev_reducer) if ev_reducer is not None else None, world_size=d.world_size,
        threads=torch.get_num_threads(), device=str(dev), amp=amp, config=config, history=history)

    if val_ds is not None:
        ev = evaluate(net, val_ds, ev_reducer, batch_size=eval_batch_size or per_rank, device=dev,
                      num_workers=num_workers, amp=amp)
        result.top1, result.top5 = ev["top1"], ev["top5"]
        result.eval_tokens_mean, result.eval_num_clips, result.eval_views = (ev["tokens_mean"], ev["num_clips"],
                                                                             ev["views"])
        say(f"  val: top-1 {ev['top1']:.2f}%  top-5 {ev['top5']:.2f}%  on {ev['num_clips']} clips, "
            f"reducer {result.eval_reducer}, {ev['tokens_mean']:.1f} tokens/clip")
    say(f"  trained in {wall_s:.1f} s ({result.clips_per_s:.1f} clips/s, {result.tokens_mean:.1f} tokens/clip)")

    if out is not None:
        if is_main:
            from .checkpoint import save_checkpoint

            summary = {k: v for k, v in result.to_dict().items() if k not in ("config", "history")}
            save_checkpoint(net, out, epoch=result.epochs, train_result=json.dumps(summary, default=str),
                            config=json.dumps(config, default=str))
        result.checkpoint = str(out)
        if d.on:
            import torch.distributed as dist

            dist.barrier()
    if d.started_here:
        import torch.distributed as dist

        dist.destroy_process_group()
    return result


def _ds_info(ds: Dataset) -> dict[str, Any]:
    info = getattr(ds, "info", None)
    if callable(info):
        try:
            return info()
        except Exception:  # informational only
            pass
    return {"dataset": getattr(ds, "name", type(ds).__name__), "num_clips": len(ds)}  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def add_cli(sub) -> None:
    p = sub.add_parser(
        "train", help="train / fine-tune a model with a reducer active; report wall-clock, tokens and top-1",
        description="Train (or fine-tune with --init) a model on a dataset with a token reducer in the forward "
                    "pass, then evaluate top-1 on the validation split. Runs data-parallel under torchrun "
                    "(torchrun --nproc-per-node 2 -m tokenbench.harness.cli train ...).",
        epilog="example:\n  tokenbench train --model vit_t --dataset synthetic --reducer rlt threshold=0.1 "
               "--epochs 6 --out ckpt.pt",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_t", help="vit_t, vit_s, vit_b, vit_l, vit_h (default vit_t)")
    p.add_argument("--dataset", default="synthetic", help="dataset name for get_dataset (default synthetic)")
    p.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dataset options, e.g. num_clips=1000 static_share=0.8 (both splits)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--reducer", nargs="+", default=["none"], metavar=("NAME", "KEY=VALUE"),
                   help="reducer and its parameters, e.g. --reducer rlt threshold=0.1 length_embedding=True")
    p.add_argument("--eval-reducer", nargs="+", default=None, metavar=("NAME", "KEY=VALUE"),
                   help="reducer at evaluation (default: the training reducer without its train-time-only "
                        "parts: random masking off, rlt_random → rlt); 'none' for none")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="global batch size")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--min-lr", type=float, default=DEFAULTS["min_lr"])
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--warmup-epochs", type=float, default=DEFAULTS["warmup_epochs"])
    p.add_argument("--label-smoothing", type=float, default=DEFAULTS["label_smoothing"])
    p.add_argument("--clip-grad", type=float, default=DEFAULTS["clip_grad"], help="0 disables")
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                   help="bfloat16 autocast: on, off, or auto (on where the hardware has native bf16 matmuls: "
                        "CUDA, or a CPU with AMX / AVX512-BF16; default). Compare reducers' training speed "
                        "with --amp off on a CPU (see the module docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--log-every", type=int, default=0, metavar="STEPS", help="progress line every STEPS steps")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="fine-tune: load these weights first (a head of another size is re-initialised)")
    p.add_argument("--out", default=None, metavar="CKPT", help="write the trained checkpoint here")
    p.add_argument("--json", default=None, metavar="PATH", help="write the TrainResult here as JSON")
    p.set_defaults(func=run_cli)


def _reducer_from(spec: list[str] | None):
    from tokenbench.harness.cli import UserError, parse_params
    from tokenbench.reducers import ReducerParamError, UnknownReducerError, get_reducer

    if not spec or spec[0] == "none" and len(spec) == 1:
        return None
    try:
        return get_reducer(spec[0], **parse_params(spec[1:]))
    except (ReducerParamError, UnknownReducerError) as exc:
        raise UserError(str(exc)) from exc


def run_cli(args) -> int:
    from tokenbench.datasets import get_dataset
    from tokenbench.harness.cli import UserError, parse_params

    from .checkpoint import CheckpointError, load_checkpoint
    from .model import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    reducer = _reducer_from(args.reducer)
    eval_red: Any = "auto" if args.eval_reducer is None else _reducer_from(args.eval_reducer)
    data_opts = parse_params(args.data)
    try:
        train_ds = get_dataset(args.dataset, args.train_split, num_frames=args.num_frames, img_size=args.img_size,
                               **data_opts)
        val_ds = get_dataset(args.dataset, args.val_split, num_frames=args.num_frames, img_size=args.img_size,
                             **data_opts) if args.val_split else None
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from exc
    if not train_ds.num_classes:
        raise UserError(f"dataset {args.dataset!r} is unlabelled; training needs labels")
    length_embedding = bool(getattr(reducer, "length_embedding", False))
    torch.manual_seed(args.seed)
    model = build_model(args.model, train_ds.num_classes, num_frames=args.num_frames, img_size=args.img_size,
                        length_embedding=length_embedding, drop_path_rate=args.drop_path)
    if args.init:
        try:
            info = load_checkpoint(model, args.init, strict=False)
        except CheckpointError as exc:
            raise UserError(f"--init: {exc}") from None
        if info.missing:
            print(f"fine-tuning from {args.init}; newly initialised: {', '.join(info.missing)}", file=sys.stderr)
    result = train(model, train_ds, val_ds, reducer, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                   label_smoothing=args.label_smoothing, seed=args.seed, num_workers=args.num_workers,
                   device=args.device, out=args.out, min_lr=args.min_lr, clip_grad=args.clip_grad or None,
                   eval_reducer=eval_red, max_steps=args.max_steps,
                   amp={"auto": "auto", "on": True, "off": False}[args.amp],
                   log_every=args.log_every)
    if args.json and int(os.environ.get("RANK", "0")) == 0:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    if int(os.environ.get("RANK", "0")) == 0:
        top = f"top-1 {result.top1:.2f}%" if result.top1 is not None else "no evaluation"
        print(f"{args.model} {reducer!r}: {top}, {result.wall_s:.1f} s to train "
              f"({result.wall_s / result.epochs:.1f} s/epoch), {result.tokens_mean:.1f} tokens/clip"
              + (f", checkpoint {args.out}" if args.out else ""))
    return 0
