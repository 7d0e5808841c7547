"""``tofu`` — Token Fusion (Kim et al., "Token Fusion: Bridging the Gap between Token Pruning and Token
Merging", WACV 2024). No official code; readings: hchautran/PiToMe ``algo/tofu/`` and Westlake-AI/OpenToMe
``opentome/timm/tofu.py`` (with ``opentome/tome/tome.py``).

Rule, in every block between attention and MLP (``after_attention``), per clip:

1. ToMe's matching, unchanged: keys averaged over heads, cosine; tokens alternate into A and B in their
   current order; the ``r`` A tokens whose best B partner is most similar are the sources (``r`` and its
   schedule exactly as ``tome``'s: an int, an (r, inflection) pair or a per-layer list);
2. in the **first half of the blocks** (block l < ⌊L/2⌋) the sources are **pruned** (dropped). The paper's
   abstract gives the reason: pruning suits a model sensitive to interpolated inputs, merging one that
   responds close to linearly; the reimplementations (and the issue) put pruning in the early blocks;
3. in the **second half** they are **merged with MLERP**, the paper's norm-preserving merge: a destination and
   its sources become one token pointing along their size-weighted mean, with the largest norm among them,
   ``x = x̄ · maxᵢ‖xᵢ‖ / ‖x̄‖``, ``x̄ = Σ sizeᵢ·xᵢ / Σ sizeᵢ``. An average of unaligned tokens is shorter than
   any of them; MLERP keeps the norm distribution the next block expects. Size accumulates and pos is the
   smallest merged, as in ToMe;
4. output order as ToMe's: the unmerged A tokens, most similar first, then the B tokens.

Sizes on a pruning block: the interface keeps each clip's sizes summing to the tokens that entered, so the
kept tokens' sizes are scaled by one factor per clip (as STA and ``tome_drop`` do); size-weighted pooling then
equals the reimplementations' plain mean over the kept tokens.

The paper's text could not be opened from this machine (its abstract only: MLERP, "a variant of the SLERP
technique, tailored to merge multiple tokens while maintaining the norm distribution"). We take its rule to be
what both reimplementations compute where they use MLERP — the direction of the mean, the largest norm of the
tokens merged — and differ from the reimplementations where they leave that rule or the issue's brief:

* the merge itself: hchautran/PiToMe's MAE patch (``algo/tofu/patch/mae.py``) merges with a plain mean
  (``strategy = "mean"``), not MLERP, though its ``merge.py`` has an MLERP mode; OpenToMe uses MLERP
  (``"tofu"`` mode). We use MLERP, the paper's contribution;
* the mean inside MLERP: both take ``scatter_reduce(..., reduce="mean")`` — an *unweighted* mean of the
  destination and its sources — and track no size in ToFu; we weight by size (our choice, not checked against
  the paper), as ToMe's merge does, since a token standing for many inputs should pull the direction as many;
  while a clip's sizes are all equal (no merge yet, only pruning) the two agree;
* the split: both prune in blocks ``i ≤ L // 2`` and merge in ``i > L // 2`` (7 pruning blocks of 12); we
  prune in the first half, blocks ``l < L // 2`` (6 of 12), as the issue asks.

Built on the bipartite core (:mod:`tokenbench.reducers.bipartite`): ``tome``'s matching (:func:`match` with
its scores and count) decides the plan; a pruning block applies the core's :func:`drop` (sizes kept per clip by
:func:`conserve_size`), a merging block :func:`merge_mlerp` below (the core's ``merge_wavg``, then rescaled).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import PackedTokens
from .bipartite import BipartitePlan, drop, match, merge_wavg
from .registry import register_reducer
from .tome import ToMe


def merge_mlerp(plan: BipartitePlan, tokens: PackedTokens) -> PackedTokens:
    """MLERP over a bipartite plan: each destination becomes the size-weighted mean of itself and its sources
    (:func:`~tokenbench.reducers.bipartite.merge_wavg`, which also sums sizes and takes the smallest pos),
    rescaled to the largest norm among them. Untouched tokens are copied exactly (scaled by exactly 1)."""
    if plan.r_max == 0:
        return tokens
    out = merge_wavg(plan, tokens)
    n_out = plan.n_out
    b, r_max = plan.src.shape
    # per source slot: the largest norm among its destination's own token and all sources sharing it
    src_norm = tokens.x.index_select(0, plan.src.flatten()).norm(dim=1).view(b, 1, r_max)
    shared = src_norm.expand(b, r_max, r_max).masked_fill(~plan.same, 0.0).amax(dim=-1).flatten()
    rows = plan.write_row()  # each destination once; every other slot writes the spare row n_out
    dst_norm = tokens.x.index_select(0, plan.keep.index_select(0, rows)).norm(dim=1)
    dst_norm = dst_norm * plan.dst_kept.flatten().to(dst_norm.dtype)  # a destination giving up its own token
    mean_norm = out.x.index_select(0, rows.clamp(max=n_out - 1)).norm(dim=1)
    # a mean of exactly opposite tokens has no direction: it stays (zero) rather than divide by zero
    scale = torch.maximum(dst_norm, shared) / mean_norm.clamp_min(torch.finfo(mean_norm.dtype).tiny)
    factor = torch.ones(n_out + 1, dtype=out.x.dtype, device=out.x.device).index_copy_(0, rows, scale.to(out.x.dtype))
    return out.replace(x=out.x * factor[:n_out].unsqueeze(1))


@register_reducer("tofu")
@dataclass(repr=False)
class ToFu(ToMe):
    """Token Fusion: ToMe's matching; prune in the first half of the blocks, MLERP-merge in the second.

    Parameters as ``tome`` (``r``, ``inflection``, ``prop_attn``, ``keys``)."""

    @staticmethod
    def prunes(layer: int, depth: int) -> bool:
        """Whether block ``layer`` prunes (first half) rather than merges (second half)."""
        return layer < depth // 2

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int) -> PackedTokens:
        if self.schedule(depth)[layer] == 0:
            return tokens
        plan = match(tokens, self.edge_scores(tokens, keys, layer), self.count(layer, depth))
        return (drop if self.prunes(layer, depth) else merge_mlerp)(plan, tokens)
