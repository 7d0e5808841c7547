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

The bipartite step runs on the shared core (:mod:`tokenbench.reducers.bipartite`): :func:`match` on the
hidden states with a per-clip count, the plan re-ordered so the unmerged A tokens keep their original order
(:func:`in_original_order`), then the core's weighted apply with the A tokens' weights scaled by their
saliency (:func:`merge_step`), all clips of a packed batch at once, equal lengths or not. The core scores
edges by the cosine itself, not the reference's ``(cos + 1)/2``: the same order.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention_stats import attention_entropy
from .base import NO_ATTENTION, AttentionContext, PackedTokens, Reducer, ReducerParamError
from .bipartite import BipartitePlan, ClipLayout, CosineScores, Count, match, merge_weighted
from .registry import register_reducer


def objective_score(neg_entropy: Tensor, valid: Tensor | None = None) -> Tensor:
    """The reference's ``get_objective_score`` after the head average, per clip of a [B, n] batch of
    ``Σ p̄ log p̄`` (``valid`` [B, n] masks padding out of every clip statistic): background (below the clip's
    mean after min-max) 0, foreground sharpened into (0, 1]."""
    ok = torch.ones_like(neg_entropy, dtype=torch.bool) if valid is None else valid
    count = ok.sum(dim=1, keepdim=True)

    def amin(t: Tensor) -> Tensor:
        return t.masked_fill(~ok, math.inf).amin(dim=1, keepdim=True)

    def amax(t: Tensor) -> Tensor:
        return t.masked_fill(~ok, -math.inf).amax(dim=1, keepdim=True)

    def mean(t: Tensor) -> Tensor:
        return t.masked_fill(~ok, 0.0).sum(dim=1, keepdim=True) / count

    s = neg_entropy - amin(neg_entropy)
    s = _safe_div(s, amax(s))
    m = mean(s)
    background = s < m
    s = s - m
    s = _safe_div(s, amax(s))
    return s.masked_fill(background | ~ok, 0.0)


def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    # a constant saliency (b = 0) is all background: 0, where the reference gets NaN
    return torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), torch.zeros_like(a))


def clip_saliency(tokens: PackedTokens, neg_entropy: Tensor) -> Tensor:
    """[N] :func:`objective_score` of each clip of a packed batch (every statistic within its own clip)."""
    lens = tokens.seqlens()
    layout = ClipLayout.of(tokens.cu_seqlens, lens)
    scores = objective_score(layout.gather(neg_entropy.float()), layout.valid)
    if layout.equal:
        return scores.flatten()
    ids = tokens.seq_ids()
    local = torch.arange(tokens.x.shape[0], device=ids.device) - layout.starts[ids]
    return scores[ids, local]


def in_original_order(plan: BipartitePlan, tokens: PackedTokens) -> BipartitePlan:
    """The plan with each clip's unmerged A tokens in their original order (the reference sorts
    ``unm_idx``; the core, as ToMe, puts the best-matched first). The B tokens, where the merges land, stay."""
    if plan.r_max == 0:
        return plan
    dev = tokens.x.device
    n_in = tokens.x.shape[0]
    out_lens = torch.tensor(plan.lens, device=dev)
    n_unm = torch.tensor([(n + 1) // 2 - r for n, r in zip(tokens.seqlens(), plan.r)], device=dev)
    clip = torch.repeat_interleave(torch.arange(len(plan.lens), device=dev), out_lens, output_size=plan.n_out)
    row = torch.arange(plan.n_out, device=dev)
    q = row - F.pad(out_lens.cumsum(0), (1, 0))[clip]
    keep = plan.keep[:plan.n_out]
    # within a clip: unmerged A rows by input row, then the B rows where they are
    key = clip * (2 * (n_in + plan.n_out)) + torch.where(q < n_unm[clip], keep, n_in + row)
    order = key.argsort(stable=True)
    return dataclasses.replace(plan, keep=torch.cat([keep.index_select(0, order), plan.keep[plan.n_out:]]))


@dataclass
class PerClipCount(Count):
    """Sources per clip given on the host (vid-TLDR's ``r_merge``, which a share r < 1 sets per clip)."""

    r: list[int]

    def counts(self, best: Tensor, n_dev: Tensor, lens: list[int]) -> tuple[Tensor, list[int]]:
        return torch.tensor(self.r, device=n_dev.device), list(self.r)


def merge_step(tokens: PackedTokens, saliency: Tensor, r: list[int]) -> PackedTokens:
    """One vid-TLDR merge of ``r[i]`` tokens of clip i (each ≤ ⌊nᵢ/2⌋) on the bipartite core: matched on the hidden
    states, sources weighted by their ``saliency`` [N] in the weighted average and in the weight; ``size``
    (the exact count) and ``pos`` (the smallest) merge whole."""
    plan = in_original_order(match(tokens, CosineScores(tokens.x.detach()), PerClipCount(list(r))), tokens)
    if plan.r_max == 0:
        return tokens
    # sources are A tokens, destinations B tokens: scaling the A tokens' weight by their saliency scales the
    # sources' alone, as the reference's ``src * src_so``
    ids = tokens.seq_ids()
    local = torch.arange(tokens.x.shape[0], device=ids.device) - tokens.cu_seqlens[:-1].long()[ids]
    factor = torch.where(local % 2 == 0, saliency.to(tokens.weight.dtype), torch.ones_like(tokens.weight))
    weighted = tokens.weight * factor
    out = merge_weighted(plan, tokens, weighted)
    # the merged weights (merge_weighted returns sizes): Σ over each destination and its weighted sources
    b, r_max = plan.src.shape
    write_row = plan.write_row()
    out_w = tokens.weight.index_select(0, plan.keep)
    src_w = weighted.index_select(0, plan.src.flatten()).view(b, r_max, 1)
    w_sum = out_w.index_select(0, write_row) * plan.dst_kept.flatten().to(out_w.dtype)
    w_sum = w_sum + (plan.same.to(out_w.dtype) @ src_w).flatten()
    return out.replace(weight=out_w.index_copy_(0, write_row, w_sum)[:plan.n_out])


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
        with torch.no_grad():
            saliency = clip_saliency(tokens, -attention_entropy(attn, bias=False))
        return merge_step(tokens, saliency, rs)
