"""``tofu`` — Token Fusion (Kim et al., "Token Fusion: Bridging the Gap between Token Pruning and Token
Merging", WACV 2024). No official code; readings: hchautran/PiToMe ``algo/tofu/`` and Westlake-AI/OpenToMe
``opentome/timm/tofu.py`` (with ``opentome/tome/tome.py``).

Rule, in every block between attention and MLP (``after_attention``), per clip:

1. ToMe's matching, unchanged: keys averaged over heads, cosine; tokens alternate into A and B in their
   current order; the ``r`` A tokens whose best B partner is most similar are the sources (``r`` and its
   schedule exactly as ``tome``'s: an int, an (r, inflection) pair or a per-layer list);
2. in the **first half of the blocks** (block l < ⌊L/2⌋) the sources are **pruned** (dropped): the model is
   far from linear there, where an average of tokens is a point it never saw;
3. in the **second half** they are **merged with MLERP**, the paper's norm-preserving merge: a destination and
   its sources become one token pointing along their size-weighted mean, with the largest norm among them,
   ``x = x̄ · maxᵢ‖xᵢ‖ / ‖x̄‖``, ``x̄ = Σ sizeᵢ·xᵢ / Σ sizeᵢ``. An average of unaligned tokens is shorter than
   any of them; MLERP keeps the norm distribution the next block expects. Size accumulates and pos is the
   smallest merged, as in ToMe;
4. output order as ToMe's: the unmerged A tokens, most similar first, then the B tokens.

Sizes on a pruning block: the interface keeps each clip's sizes summing to the tokens that entered, so the
kept tokens' sizes are scaled by one factor per clip (as STA does); size-weighted pooling then equals the
reimplementations' plain mean over the kept tokens.

Where the reimplementations differ from the paper, we follow the paper:

* the mean: both compute MLERP as ``scatter_reduce(..., reduce="mean")`` — an *unweighted* mean of the
  destination and its sources — and do not track size at all in ToFu; we weight by size, as ToMe's merge
  does and as a merged token standing for many inputs must be;
* the merge itself: hchautran/PiToMe's MAE patch (``algo/tofu/patch/mae.py``) merges with a plain mean
  (``strategy = "mean"``), not MLERP; OpenToMe uses MLERP (``"tofu"`` mode). We use MLERP;
* the split: both prune in blocks ``i ≤ L // 2`` and merge in ``i > L // 2`` (7 pruning blocks of 12); we
  prune in the first half, blocks ``l < L // 2`` (6 of 12), as the paper describes (pruning early, merging
  late).

The paper's text could not be opened from this machine; the MLERP formula above is the one both
reimplementations compute (max norm over the merged tokens, direction of their mean), which we take to be the
paper's, weighted by size as ToMe. Clips of a packed batch never mix; clips of equal length are matched in one
batched pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import PackedTokens
from .merge_plan import ClipPlan, apply_drop, apply_mlerp, bipartite, plan_packed
from .registry import register_reducer
from .tome import ToMe


def tome_rule(m: Tensor, r: int) -> ClipPlan:
    """ToMe's matching: A = even, B = odd positions of the clip's current order."""
    idx = torch.arange(m.shape[1], device=m.device).expand(m.shape[0], -1)
    return bipartite(m, idx[:, :0], idx[:, 0::2], idx[:, 1::2], r)


@register_reducer("tofu")
@dataclass(repr=False)
class ToFu(ToMe):
    """Token Fusion: ToMe's matching; prune in the first half of the blocks, MLERP-merge in the second.

    Parameters as ``tome`` (``r``, ``inflection``, ``prop_attn``)."""

    @staticmethod
    def prunes(layer: int, depth: int) -> bool:
        """Whether block ``layer`` prunes (first half) rather than merges (second half)."""
        return layer < depth // 2

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int) -> PackedTokens:
        r = self.schedule(depth)[layer]
        if r == 0:
            return tokens
        r_of = [min(r, n // 2) for n in tokens.seqlens()]
        plan = plan_packed(keys.mean(dim=1), tokens, r_of, tome_rule)
        return (apply_drop if self.prunes(layer, depth) else apply_mlerp)(plan, tokens)
