"""``feature_diff`` — temporal-difference pruning in feature space: RLT's cousin on embeddings instead of
pixels (EVEREST, Hwang et al., ICML 2024, sunilhoho/EVEREST ``modeling_finetune.py``, ``mcm_step``;
DyCoke's temporal merging, Tao et al., CVPR 2025, drops a frame's tokens that repeat the previous frame's).

Rule, in :meth:`Reducer.before_position` — on the tubelet embeddings of the kept tubelets *before* the
position embedding is added, where EVEREST computes it (``mcm_step`` runs on ``patch_embed(x)`` and the mask
is applied after ``pos_embed``); after it the rows of one cell at two times would differ by the sin-cos
table, not by content. Per clip, for each token at (t, h, w) with the same cell present at t − 1:
``d = ‖e(t, h, w) − e(t − 1, h, w)‖₂`` (``distance="l2"``, EVEREST) or ``1 − cos`` (``distance="cosine"``,
DyCoke's similarity). Then either

* ``drop_rate`` > 0 (EVEREST's ``mcm_ratio``): keep the ``int((1 − drop_rate) · n)`` tokens of largest ``d``
  (at least one). The first time step has no predecessor; it takes the distance of the step after it, as
  EVEREST does (``importance = cat(distance[:, 0], distance)``); or
* ``threshold`` > 0 (RLT's and DyCoke's rule): drop every token whose ``d`` is below ``threshold``; tokens
  without a predecessor (the first time step) are always kept.

A token whose predecessor cell is missing from the clip (an input-stage reducer dropped it) counts as
changed (never dropped); on full clips this does not arise. Kept tokens stay in their original order, as
EVEREST's ``x[~mask]``.

``size``: dropped tokens vanish (as in EVEREST); the kept tokens' sizes are scaled by n_in / n_out per clip
so that sizes count the clip's tokens (as ``sta``), and ``weight`` is left as it was, so pooling is the
plain mean over the kept tokens, as EVEREST's ``x.mean(1)``. With a length embedding in the model (RLT's),
it is already in the embeddings this hook sees (the sum commutes with the position embedding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import PackedTokens, Reducer, ReducerParamError
from .registry import register_reducer

DISTANCES = ("l2", "cosine")


def temporal_distance(tokens: PackedTokens, distance: str = "l2") -> Tensor:
    """[N] distance of each token's embedding to the same cell's at the previous time step of its clip;
    +inf where that cell is absent (the first time step, or dropped before)."""
    t_, h_, w_ = tokens.grid
    cells = h_ * w_
    ids = tokens.seq_ids()
    b = tokens.batch_size
    slot = ids * (t_ * cells) + tokens.pos  # flat (clip, t, cell)
    dense = tokens.x.new_zeros(b * t_ * cells, tokens.x.shape[1]).index_copy(0, slot, tokens.x)
    # index_add, not a bool index_fill: jit tracing (FLOP counting) has no bool overload of the latter
    present = torch.zeros(b * t_ * cells, dtype=torch.long, device=tokens.x.device).index_add(
        0, slot, torch.ones_like(slot)) > 0
    has_prev = (tokens.pos >= cells) & present.index_select(0, (slot - cells).clamp(min=0))
    prev = dense.index_select(0, (slot - cells).clamp(min=0))
    x, p = tokens.x.float(), prev.float()
    if distance == "l2":
        d = (x - p).norm(dim=1)
    else:
        d = 1.0 - F.cosine_similarity(x, p, dim=1)
    return torch.where(has_prev, d, torch.full_like(d, math.inf))


@register_reducer("feature_diff")
@dataclass(repr=False)
class FeatureDiff(Reducer):
    """Drop tokens whose embedding repeats the same cell's previous time step (EVEREST / DyCoke)."""

    drop_rate: float = field(default=0.5, metadata={
        "help": "share of each clip's tokens dropped, least changed first (EVEREST's mcm_ratio); 0 = off"})
    threshold: float = field(default=0.0, metadata={
        "help": "drop tokens whose distance to the previous time step is below this (instead of drop_rate)"})
    distance: str = field(default="l2", metadata={
        "help": "l2 (EVEREST: Euclidean distance of embeddings) or cosine (1 - cosine similarity, DyCoke)"})

    def validate(self) -> None:
        for name in ("drop_rate", "threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ReducerParamError(f"feature_diff: {name} must be a number ≥ 0, got {v!r}")
        if self.drop_rate >= 1:
            raise ReducerParamError(f"feature_diff: drop_rate must be below 1, got {self.drop_rate!r}")
        if self.drop_rate > 0 and self.threshold > 0:
            raise ReducerParamError("feature_diff: give drop_rate or threshold, not both (set the other to 0)")
        if self.distance not in DISTANCES:
            raise ReducerParamError(f"feature_diff: distance must be one of {', '.join(DISTANCES)}, "
                                    f"got {self.distance!r}")

    def before_position(self, tokens: PackedTokens) -> PackedTokens:
        if self.drop_rate == 0 and self.threshold == 0:
            return tokens
        with torch.no_grad():
            d = temporal_distance(tokens, self.distance)
            lens = tokens.seqlens()
            if self.drop_rate > 0:
                keep = self._rank_keep(tokens, d, lens)
            else:
                keep = ~(d < self.threshold)
            ids = tokens.seq_ids()
            kept_per_clip = torch.zeros(tokens.batch_size, dtype=torch.long, device=d.device).index_add_(
                0, ids, keep.long())
            out_lens = tuple(kept_per_clip.tolist())  # content-adaptive (threshold): the one device read
            idx = keep.nonzero().squeeze(1)
        size_in = torch.zeros(tokens.batch_size, dtype=torch.float64, device=d.device).index_add_(
            0, ids, tokens.size.double())
        kept_ids = ids.index_select(0, idx)
        size = tokens.size.index_select(0, idx)
        kept_size = torch.zeros_like(size_in).index_add_(0, kept_ids, size.double())
        size = size * (size_in / kept_size).index_select(0, kept_ids).to(size.dtype)
        cu = F.pad(kept_per_clip.cumsum(0).to(torch.int32), (1, 0))
        return tokens.replace(x=tokens.x.index_select(0, idx), pos=tokens.pos.index_select(0, idx), size=size,
                              weight=tokens.weight.index_select(0, idx), cu_seqlens=cu, lens=out_lens)

    def _rank_keep(self, tokens: PackedTokens, d: Tensor, lens: list[int]) -> Tensor:
        """EVEREST's ranking: the int((1 − drop_rate)·n) largest distances of each clip, the first time step
        scored with the distance of the step after it."""
        cells = tokens.grid[1] * tokens.grid[2]
        ids = tokens.seq_ids()
        t_ = tokens.grid[0]
        slot = ids * (t_ * cells) + tokens.pos
        dense = torch.full((tokens.batch_size * t_ * cells,), math.inf, device=d.device).index_copy(0, slot, d)
        first = tokens.pos < cells
        nxt = dense.index_select(0, (slot + cells).clamp(max=dense.numel() - 1))
        score = torch.where(first, nxt, d) if t_ > 1 else d
        starts = tokens.cu_seqlens[:-1].long()
        local = torch.arange(d.numel(), device=d.device) - starts[ids]
        padded = torch.full((len(lens), max(lens)), -math.inf, device=d.device)
        padded[ids, local] = score
        rank = torch.empty_like(padded, dtype=torch.long)
        order = padded.argsort(dim=1, descending=True, stable=True)
        rank.scatter_(1, order, torch.arange(padded.shape[1], device=d.device).expand_as(order).contiguous())
        n_keep = torch.tensor([max(1, int((1 - self.drop_rate) * n)) for n in lens], device=d.device)
        return rank[ids, local] < n_keep[ids]
