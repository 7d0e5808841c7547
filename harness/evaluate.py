"""Evaluation: top-1 / top-5 of a model with a reducer, softmax averaged over a video's views."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from tokenbench.datasets import to_model_input
from tokenbench.reducers import Reducer

from .distributed import Dist, all_reduce, resolve_amp
from .metrics import MultiViewAccuracy
from .model import BASELINE


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def collate(batch):
    clips = torch.stack([b[0] for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    metas = [b[2] for b in batch]
    return clips, labels, metas


def model_input(clips: torch.Tensor, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 clips [B, T, H, W, 3] → the model's input: float [B, 3, T, H, W], ImageNet-normalised, on
    ``device`` in ``dtype`` (the one clip → input step of training, evaluation and the runner)."""
    return to_model_input(clips.to(device, non_blocking=True)).to(dtype)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, reducer: Reducer = BASELINE, *, batch_size: int = 32,
             device: str | torch.device = "cpu", num_workers: int = 0, max_clips: int | None = None,
             amp: bool | str = False) -> dict[str, Any]:
    """Top-1 / top-5 (%) of ``model`` (+ ``reducer``, applied as given) on ``dataset``.

    Returns ``{"top1", "top5", "num_clips", "num_videos", "views", "tokens_mean", "loss"}``. With
    several views per video (``meta["video_index"]``) softmax scores are averaged per video before
    ranking. Under an initialised process group each rank evaluates a disjoint shard and the counts
    are summed, so every rank returns the same figures.
    """
    dist_on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist_on else (0, 1)
    dev = torch.device(device)
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    n = len(dataset) if max_clips is None else min(len(dataset), int(max_clips))
    indices = list(range(rank, n, world))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate)
    acc = MultiViewAccuracy(ks=(1, 5))
    tokens = loss_sum = 0.0
    count = 0
    amp_ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if resolve_amp(amp, dev) else contextlib.nullcontext()
    try:
        for clips, labels, metas in loader:
            video = model_input(clips, dev)
            with amp_ctx:
                logits = net(video, reducer).float()
            loss_sum += float(F.cross_entropy(logits, labels.to(dev), reduction="sum"))
            tokens += float(sum(net.last_stats.tokens_in))
            count += len(labels)
            acc.add(logits, labels, [int(m.get("video_index", m.get("index", 0))) for m in metas])
    finally:
        net.train(was_training)
    if dist_on:
        acc, (tokens, loss_sum, count) = _merge_ranks(acc, [tokens, loss_sum, float(count)],
                                                      Dist(world_size=world, rank=rank))
        count = int(count)
    videos = len(acc)
    top = acc.result() if videos else {"top1": 0.0, "top5": 0.0}
    return {"top1": top["top1"], "top5": top["top5"], "num_clips": count, "num_videos": videos,
            "views": f"{count // max(videos, 1)} per video", "tokens_mean": tokens / max(count, 1),
            "loss": loss_sum / max(count, 1)}


def _merge_ranks(acc: MultiViewAccuracy, sums: list[float], d: Dist) -> tuple[MultiViewAccuracy, list[float]]:
    """Every rank's shard merged: a video's views may lie on several ranks, so its scores are summed across
    them before ranking; the counters are summed."""
    shards: list[MultiViewAccuracy | None] = [None] * d.world_size
    dist.all_gather_object(shards, acc)
    merged = MultiViewAccuracy(acc.ks)
    for shard in shards:
        merged.merge(shard)
    return merged, all_reduce(sums, d, torch.device("cpu"))
