"""Accuracy under a multi-view protocol, and token-count summaries (docs/architecture.md §5).

**Accuracy.** A video is evaluated through ``clips × crops`` views (VideoMAE's Kinetics protocol is
5 clips × 3 crops, SSv2's 2 × 3; the default here 1 × 1). Each view's logits go through a softmax; the
probabilities of a video's views are averaged; top-k is read off the average. :class:`MultiViewAccuracy`
accumulates batch by batch (views of one video may fall in different batches), and the protocol string
(``views_protocol(clips, crops)`` → ``"5x3"``) is recorded with the result.

**Tokens.** :class:`TokenCounts` accumulates ``model.last_stats`` over the batches of a run and
summarises them under the result schema's metric names: tokens per clip entering the network
(mean/min/max, and the full list), tokens before reduction, and the mean after every block.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor


def views_protocol(clips: int = 1, crops: int = 1) -> str:
    """``'clips×crops'`` as recorded in results, e.g. ``views_protocol(5, 3) == '5x3'``."""
    if clips < 1 or crops < 1:
        raise ValueError(f"clips and crops must be ≥ 1, got {clips} and {crops}")
    return f"{clips}x{crops}"


def topk_correct(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """[N] bool: whether each row's label is among its ``k`` highest scores (k capped at the class count)."""
    k = min(k, scores.shape[-1])
    top = scores.topk(k, dim=-1).indices
    return (top == labels.view(-1, 1)).any(dim=-1)


class MultiViewAccuracy:
    """Top-k accuracy with softmax probabilities averaged over every view of a video.

    ``add(logits [B, C], labels [B], video_ids [B])`` for each batch of views; ``result()`` gives
    ``{"top1": %, "top5": %, "num_clips": videos, "views": protocol}`` (top-k for each k in ``ks``)."""

    def __init__(self, ks: Sequence[int] = (1, 5), protocol: str | None = None, views_per_video: int | None = None):
        self.ks = tuple(ks)
        self.protocol = protocol
        if views_per_video is None and protocol is not None:
            a, _, b = protocol.partition("x")
            views_per_video = int(a) * int(b)
        self.views_per_video = views_per_video
        self._prob: dict[Any, Tensor] = {}
        self._views: dict[Any, int] = {}
        self._label: dict[Any, int] = {}

    def add(self, logits: Tensor, labels: Tensor | Sequence[int], video_ids: Iterable[Any]) -> None:
        # summed in float64: many views of one video add up without rounding deciding a near tie
        probs = logits.detach().float().softmax(dim=-1).double().cpu()
        labels = torch.as_tensor(labels).view(-1).tolist()
        ids = [v.item() if isinstance(v, Tensor) else v for v in video_ids]
        if not (len(ids) == len(labels) == probs.shape[0]):
            raise ValueError(f"{probs.shape[0]} logits rows, {len(labels)} labels, {len(ids)} video ids")
        for vid, label, p in zip(ids, labels, probs):
            self._add(vid, int(label), p, 1)

    def merge(self, other: MultiViewAccuracy) -> None:
        """Add ``other``'s views (another process's shard of the same evaluation) to these."""
        for vid, label in other._label.items():
            self._add(vid, label, other._prob[vid], other._views[vid])

    def _add(self, vid: Any, label: int, prob_sum: Tensor, views: int) -> None:
        if vid in self._label:
            if self._label[vid] != label:
                raise ValueError(f"video {vid!r} has views labelled {self._label[vid]} and {label}")
            self._prob[vid] += prob_sum
            self._views[vid] += views
        else:
            self._label[vid], self._prob[vid], self._views[vid] = label, prob_sum.clone(), views

    def __len__(self) -> int:
        return len(self._label)

    def result(self) -> dict[str, Any]:
        if not self._label:
            raise ValueError("no views were added")
        counts = set(self._views.values())
        if self.views_per_video is not None and counts != {self.views_per_video}:
            bad = {v: n for v, n in self._views.items() if n != self.views_per_video}
            raise ValueError(f"protocol {self.protocol or self.views_per_video} expects "
                             f"{self.views_per_video} views per video; got {dict(list(bad.items())[:5])}")
        ids = list(self._label)
        mean = torch.stack([self._prob[v] / self._views[v] for v in ids])
        labels = torch.tensor([self._label[v] for v in ids])
        out: dict[str, Any] = {f"top{k}": 100.0 * topk_correct(mean, labels, k).float().mean().item()
                               for k in self.ks}
        out["num_clips"] = len(ids)
        out["views"] = self.protocol or (f"{counts.pop()} views" if len(counts) == 1 else "mixed")
        return out

    def correct(self, k: int = 1) -> dict[Any, bool]:
        """video id → whether its label is in the top ``k`` of the averaged probabilities (the per-video
        outcomes behind ``top{k}``, for intervals and paired differences)."""
        ids = list(self._label)
        mean = torch.stack([self._prob[v] / self._views[v] for v in ids])
        hits = topk_correct(mean, torch.tensor([self._label[v] for v in ids]), k).tolist()
        return dict(zip(ids, hits))

    def predictions(self) -> dict[Any, int]:
        """video id → predicted class (argmax of the averaged probabilities)."""
        return {v: int((self._prob[v] / self._views[v]).argmax()) for v in self._label}


def multiview_accuracy(logits: Tensor, labels: Tensor | Sequence[int], video_ids: Iterable[Any],
                       ks: Sequence[int] = (1, 5), protocol: str | None = None) -> dict[str, Any]:
    """One-shot :class:`MultiViewAccuracy`: logits [V_total, C] of every view, their labels and video ids."""
    acc = MultiViewAccuracy(ks, protocol)
    acc.add(logits, labels, video_ids)
    return acc.result()


def token_summary(tokens_in: Sequence[int], tokens_per_layer: Sequence[Sequence[int]] | None = None,
                  tokens_total: int | None = None,
                  tokens_mlp_per_layer: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """Schema metrics from per-clip counts: ``tokens_in`` one entry per clip; ``tokens_per_layer``
    ``[layer][clip]`` after each block, ``tokens_mlp_per_layer`` entering each block's MLP (they differ for
    a reducer that prunes between attention and MLP, like STA); ``tokens_total`` the un-reduced T'·H'·W'."""
    if not tokens_in:
        raise ValueError("no clips")
    out: dict[str, Any] = {
        "tokens_in_mean": statistics.fmean(tokens_in),
        "tokens_in_min": min(tokens_in),
        "tokens_in_max": max(tokens_in),
        "tokens_per_clip": list(tokens_in),
    }
    if tokens_total is not None:
        out["tokens_total"] = tokens_total
    if tokens_per_layer:
        out["tokens_per_layer"] = [statistics.fmean(layer) for layer in tokens_per_layer]
        # the spread a content-adaptive in-block reducer (threshold merging) gives clips
        out["tokens_out_min"] = min(tokens_per_layer[-1])
        out["tokens_out_max"] = max(tokens_per_layer[-1])
    if tokens_mlp_per_layer:
        out["tokens_mlp_per_layer"] = [statistics.fmean(layer) for layer in tokens_mlp_per_layer]
    return out


def _extend_layers(acc: list[list[int]], layers: Sequence[Sequence[int]]) -> None:
    """Append one batch's ``[layer][clip]`` counts to ``acc`` (empty: one list per layer is made)."""
    if not acc:
        acc.extend([] for _ in layers)
    for a, layer in zip(acc, layers):
        a.extend(int(n) for n in layer)


class TokenCounts:
    """Accumulates ``model.last_stats`` over a run's batches: ``add(model.last_stats)`` after each forward."""

    def __init__(self, tokens_total: int | None = None):
        self.tokens_total = tokens_total
        self.tokens_in: list[int] = []
        self.tokens_per_layer: list[list[int]] = []  # [layer][clip], clips of every batch
        self.tokens_mlp_per_layer: list[list[int]] = []  # [layer][clip], entering each MLP

    def add(self, stats: Any) -> None:
        if not stats.tokens_in:
            raise ValueError("empty forward statistics (has the model run?)")
        if self.tokens_per_layer and len(stats.tokens_per_layer) != len(self.tokens_per_layer):
            raise ValueError(f"{len(stats.tokens_per_layer)} layers, earlier batches had {len(self.tokens_per_layer)}")
        self.tokens_in.extend(int(n) for n in stats.tokens_in)
        _extend_layers(self.tokens_per_layer, stats.tokens_per_layer)
        _extend_layers(self.tokens_mlp_per_layer, stats.tokens_mlp_per_layer)

    def __len__(self) -> int:
        return len(self.tokens_in)

    def summary(self) -> dict[str, Any]:
        return token_summary(self.tokens_in, self.tokens_per_layer, self.tokens_total, self.tokens_mlp_per_layer)
