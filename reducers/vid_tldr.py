"""``vid_tldr`` — vid-TLDR (Choi et al., CVPR 2024; reference code mlvlab/vid-TLDR, MIT,
``multi_modality/utils/vid_TLDR.py``: ``get_objective_score``, ``merging``, ``merge_wavg``).

Rule, in the blocks where the schedule ``r`` is non-zero, between attention and MLP (``after_attention``),
per clip:

1. **Saliency** (``get_objective_score``). From the block's attention *before* any size bias (the
   reference softmaxes its logits once without ``log(size)`` for the score and once with it for the block),
   averaged over heads: ``s_i = Σ_j p̄_ij log p̄_ij``, the negative entropy of token i's head-averaged row
   (:func:`~tokenbench.reducers.attention_stats.attention_entropy`, exact, chunked; the block's own attention
   stays fused). Within the clip: min-max normalise ``s``; tokens below the clip's mean are **background**
   and get weight 0; the rest (**foreground**) get ``(s − mean) / max(s − mean)`` ∈ (0, 1] (sharpening).
2. **Matching** (``merging``) on the hidden states ``x`` after the attention residual (not the keys, unlike
   ToMe), cosine-normalised: tokens alternate into A (even index) and B (odd); each A token's best B match
   (score ``(cos + 1)/2``); the ``r`` A tokens with the highest score are the sources, merging into their
   partner; at most ⌊n/2⌋ per block (``r`` is clamped on shorter clips, as the reference).
3. **Merge** (``merge_wavg``): a source's contribution is scaled by its saliency ``s_src``:
   ``x_dst ← (w_dst·x_dst + Σ s_src·w_src·x_src) / (w_dst + Σ s_src·w_src)`` and
   ``w_dst ← w_dst + Σ s_src·w_src``, where ``w`` is the reference's ``size``. A background source
   vanishes (weight 0); the destination's own saliency does not enter.
4. **Order out**: the unmerged A tokens in their original order (the reference sorts ``unm_idx``; ToMe
   does not), then the B tokens in theirs.

Proportional attention is on (the reference adds ``log(size)`` to every block's logits): the model adds
``log(weight)``. **Weight and count.** The reference's ``size`` no longer counts tokens (background sources
add nothing to it), so it is kept as :attr:`PackedTokens.weight`, used in pooling and proportional
attention, while ``size`` stays the exact count of input tokens each token stands for (sources add their
whole ``size``): FLOPs, budgets and the conformance helper read ``size``. ``pos`` is the smallest merged.

Schedules: ``r`` per block, the reference's ``vidTLDR_r`` lists, front-loaded (e.g. ``[200, 200, 200, 100]``
for a ViT-B on 1,568 tokens in their SSv2 retrieval script); an entry below 1 is a share of the tokens
entering that block (``int(n·r)``), as in the reference. A shorter list is padded with zeros.

Departures from the reference: a clip whose saliency is constant (max = min, or every token at the mean)
has all weights 0 instead of the reference's NaN; matching sorts stably (the reference's ``argsort`` does
not promise an order among equal scores); the reference divides by ``size / size.amax()`` around the sum,
which cancels exactly in real arithmetic and is left out.

The bipartite step is written here on its own (:func:`match_clips`, :func:`apply_weighted`), shaped as a
match → plan / apply split so it can move onto a shared bipartite core: the plan holds the sources, their
destinations and the unmerged tokens per clip; the apply is this reducer's saliency-weighted average.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention_stats import attention_entropy
from .base import NO_ATTENTION, AttentionContext, PackedTokens, Reducer, ReducerParamError
from .registry import register_reducer


def objective_score(neg_entropy: Tensor) -> Tensor:
    """The reference's ``get_objective_score`` after the head average, on one clip batch [B, n] of
    ``Σ p̄ log p̄``: background (below the clip's mean after min-max) 0, foreground sharpened into (0, 1]."""
    s = neg_entropy - neg_entropy.amin(dim=1, keepdim=True)
    s = _safe_div(s, s.amax(dim=1, keepdim=True))
    mean = s.mean(dim=1, keepdim=True)
    background = s < mean
    s = s - mean
    s = _safe_div(s, s.amax(dim=1, keepdim=True))
    return s.masked_fill(background, 0.0)


def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    # a constant saliency (b = 0) is all background: 0, where the reference gets NaN
    return torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), torch.zeros_like(a))


class MergePlan(NamedTuple):
    """One bipartite step for a batch of equal-length clips [B, n]: indices into the A (even) and B (odd)
    halves."""

    src: Tensor  # [B, r] A indices merging, most similar first
    dst: Tensor  # [B, r] their B partners
    unmerged: Tensor  # [B, |A| − r] A indices kept, in original order


def match_clips(metric: Tensor, r: int) -> MergePlan:
    """The reference's ``merging`` on metric [B, n, d] (cosine): each A token's best B token, the ``r``
    best-matched A tokens merge."""
    m = metric / metric.norm(dim=-1, keepdim=True)
    scores = (m[:, 0::2] @ m[:, 1::2].transpose(1, 2) + 1) / 2
    best, partner = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    src = order[:, :r]
    return MergePlan(src=src, dst=partner.gather(1, src), unmerged=order[:, r:].sort(dim=1).values)


def apply_weighted(plan: MergePlan, x: Tensor, weight: Tensor, size: Tensor, pos: Tensor,
                   saliency: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """vid-TLDR's ``merge_wavg`` of a plan on [B, n, ·] clips → (x, weight, size, pos) [B, n − r, ·]:
    sources weighted by their saliency in the weighted average and the weight; ``size`` (the exact count)
    and ``pos`` (the smallest) merge whole."""
    b, _, dim = x.shape

    def take(t: Tensor, idx: Tensor) -> Tensor:  # t [B, m, ...] gathered along tokens
        return t.gather(1, idx.view(b, -1, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))

    xa, xb = x[:, 0::2], x[:, 1::2]
    wa, wb = weight[:, 0::2], weight[:, 1::2]
    sa, sb = size[:, 0::2], size[:, 1::2]
    pa, pb = pos[:, 0::2], pos[:, 1::2]
    w_src = take(wa, plan.src) * take(saliency[:, 0::2], plan.src).to(wa.dtype)
    w_dst = wb.scatter_add(1, plan.dst, w_src)
    num = xb * wb.unsqueeze(-1).to(x.dtype)
    num = num.scatter_add(1, plan.dst.unsqueeze(-1).expand(-1, -1, dim),
                          take(xa, plan.src) * w_src.unsqueeze(-1).to(x.dtype))
    x_dst = num / w_dst.unsqueeze(-1).to(x.dtype)
    s_dst = sb.scatter_add(1, plan.dst, take(sa, plan.src))
    p_dst = pb.scatter_reduce(1, plan.dst, take(pa, plan.src), reduce="amin")
    unm = plan.unmerged
    return (torch.cat([take(xa, unm), x_dst], 1), torch.cat([take(wa, unm), w_dst], 1),
            torch.cat([take(sa, unm), s_dst], 1), torch.cat([take(pa, unm), p_dst], 1))


@register_reducer("vid_tldr")
@dataclass(repr=False)
class VidTLDR(Reducer):
    """vid-TLDR: saliency-weighted bipartite merging of the foreground, front-loaded, from attention entropy."""

    r: list[float] = field(default_factory=lambda: [200, 200, 200, 100], metadata={
        "help": "tokens merged per block (a list, padded with 0; an entry < 1 is a share of the block's tokens)"})
    prop_attn: bool = field(default=True, metadata={
        "help": "proportional attention: add log(weight) to the attention logits (the reference: on)"})

    def validate(self) -> None:
        r = self.r
        if isinstance(r, tuple):
            self.r = r = list(r)
        if not isinstance(r, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v) for v in r):
            raise ReducerParamError(f"vid_tldr: r must be a list of non-negative numbers, one per block, got {r!r}")
        if any(v >= 1 and v != int(v) for v in r):
            raise ReducerParamError(f"vid_tldr: an entry of r ≥ 1 is a token count and must be whole, got {r!r}")
        if not isinstance(self.prop_attn, bool):
            raise ReducerParamError(f"vid_tldr: prop_attn must be true or false, got {self.prop_attn!r}")

    def schedule(self, depth: int) -> list[float]:
        if len(self.r) > depth:
            raise ReducerParamError(f"vid_tldr: r lists {len(self.r)} blocks but the model has {depth}")
        return list(self.r) + [0] * (depth - len(self.r))

    @staticmethod
    def merged(r: float, n: int) -> int:
        """Tokens a block merges on a clip of ``n`` tokens: the reference's ``r_merge``."""
        k = int(n * r) if r < 1 else int(r)
        return max(min(k, n // 2), 0)

    def check_geometry(self, grid: tuple[int, int, int], depth: int) -> None:
        n = math.prod(grid)
        for layer, r in enumerate(self.schedule(depth)):
            if r >= 1 and r > n // 2:
                raise ReducerParamError(
                    f"vid_tldr: r={self.r!r} merges {int(r)} tokens in block {layer}, but a clip of grid "
                    f"{tuple(grid)} has {n} tokens there and at most half ({n // 2}) can merge in a block")
            n -= self.merged(r, n)

    def attention_layers(self, depth: int) -> frozenset[int]:
        return frozenset(i for i, r in enumerate(self.schedule(depth)) if r > 0)

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int,
                        attn: AttentionContext = NO_ATTENTION) -> PackedTokens:
        r = self.schedule(depth)[layer]
        lens = tokens.seqlens()
        rs = [self.merged(r, n) for n in lens]
        if max(rs, default=0) == 0:
            return tokens
        neg_entropy = -attention_entropy(attn, bias=False)
        fields = (tokens.x, tokens.weight, tokens.size, tokens.pos, neg_entropy)
        if len(set(lens)) == 1:  # equal lengths: one batched step on a [B, n] view
            out = self._step([f.view(len(lens), lens[0], *f.shape[1:]) for f in fields], rs[0])
            out = [o.flatten(0, 1) for o in out]
        else:  # unequal lengths (after an input-stage reducer): clip by clip
            per_clip = [self._step([f.unsqueeze(0) for f in clip], k)
                        for k, clip in zip(rs, zip(*(f.split(lens) for f in fields)))]
            out = [torch.cat([c[i].squeeze(0) for c in per_clip]) for i in range(4)]
        x, weight, size, pos = out
        out_lens = tuple(n - k for n, k in zip(lens, rs))
        cu = F.pad(torch.tensor(out_lens, device=tokens.cu_seqlens.device).cumsum(0, dtype=torch.int32), (1, 0))
        return tokens.replace(x=x, size=size, weight=weight, pos=pos, cu_seqlens=cu, lens=out_lens)

    @staticmethod
    def _step(fields: list[Tensor], r: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, weight, size, pos, neg_entropy = fields
        if r == 0:
            return x, weight, size, pos
        with torch.no_grad():
            saliency = objective_score(neg_entropy.float())
            plan = match_clips(x.detach().float(), r)
        return apply_weighted(plan, x, weight, size, pos, saliency)
