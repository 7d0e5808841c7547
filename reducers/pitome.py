"""``pitome`` — Protect Informative Tokens before Merging (Tran et al., "Accelerating Transformers with
Spectrum-Preserving Token Merging", NeurIPS 2024; reference code hchautran/PiToMe, ``algo/pitome/merge.py``
and the MAE patch ``algo/pitome/patch/mae.py``).

Rule, in every block between attention and MLP (``after_attention``), per clip of n tokens:

1. the metric is the block's attention keys averaged over heads, cosine-normalised (as ToMe);
2. **energy**: every token's mean, over all n tokens of its clip (itself included), of
   ``elu(cos(kᵢ, kⱼ) − m, α)`` — ``cos − m`` above the margin m, ``α(exp(cos − m) − 1)`` below it. Tokens in
   a large cluster of similar tokens have high energy (mergeable); isolated ones low energy (informative);
3. the margin follows the MAE patch's schedule ``m_l = margin · (1 − l / L)`` over the L blocks
   (0.75 → 0.06 at L = 12 with the default ``margin = 0.75``);
4. the clip merges ``r = ⌊n − n·ratio⌋`` tokens (``ratio`` the share of tokens kept per block, the reference's
   parameter; r ≤ n/2 since ratio ≥ 0.5). Tokens are ranked by energy, highest first, and the block runs one
   of two matchings — the MAE patch's split: the **first ⌈L/2⌉ blocks** use the energy rule (``pitome``): the
   2r highest-energy tokens are the mergeable ones, alternating by rank into A (ranks 0, 2, …) and B
   (ranks 1, 3, …); every A token merges into its most similar B token; the other n − 2r tokens are protected.
   The **remaining blocks** use the energy-ordered bipartite rule (``pitome_bsm``): all tokens alternate by
   energy rank into A and B, and ToMe's bipartite soft matching merges the r A tokens with the most similar
   B partners;
5. the merge is ToMe's: size-weighted average, size accumulates, a merged token's pos is the smallest merged;
6. output order: the energy rule puts the protected tokens (by energy rank) then the B tokens (by rank); the
   bipartite rule the unmerged A tokens (most similar first) then the B tokens (by energy rank), as the
   reference concatenates them.

Where the reference's patches disagree: the MAE patch (``patch/mae.py``) runs the energy rule in the first
half of the blocks and the energy-ordered bipartite rule in the second; the DeiT patch (``patch/deit.py``) the
other way round. We follow the MAE patch — the backbone here is a VideoMAE-style ViT. The energy is the code's
``F.elu(sim − margin, alpha)`` of ``pitome_vision`` (the mean over all tokens with self-similarity included);
the paper's own write-up of the energy function could not be checked here, so the code is what we follow.
Other differences: ties in energy are broken by token order (a stable sort; the reference's ``argsort`` is
unstable), and there is no class token (the backbone pools size-weighted, as the reference's MAE patch).
Clips of a packed batch never mix; clips of equal length are matched in one batched pass.

Parameters: ``ratio`` (share kept per block, in [0.5, 1]; 1 is the identity), ``margin`` (the schedule's
first value, in [0, 1)), ``alpha`` (the ELU's α, > 0), ``prop_attn`` (proportional attention; off by default
as in the MAE patch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from .base import PackedTokens, Reducer, ReducerParamError
from .merge_plan import ClipPlan, apply_wavg, bipartite, plan_packed
from .registry import register_reducer


def energy_scores(m: Tensor, margin: float, alpha: float = 1.0) -> Tensor:
    """Energy of every token of each clip: m [g, n, d] cosine-normalised → [g, n]."""
    return F.elu(m @ m.transpose(1, 2) - margin, alpha=alpha).mean(dim=-1)


def energy_order(m: Tensor, margin: float, alpha: float) -> Tensor:
    """[g, n]: token indices by energy, highest first (ties by index)."""
    return energy_scores(m, margin, alpha).argsort(dim=-1, descending=True, stable=True)


def energy_rule(margin: float, alpha: float):
    """The energy rule (``pitome``): the 2r highest-energy tokens alternate into A and B, every A merges."""

    def rule(m: Tensor, r: int) -> ClipPlan:
        order = energy_order(m, margin, alpha)
        mergeable = order[:, : 2 * r]
        return bipartite(m, order[:, 2 * r:], mergeable[:, 0::2], mergeable[:, 1::2], r)

    return rule


def energy_bipartite_rule(margin: float, alpha: float):
    """The energy-ordered bipartite rule (``pitome_bsm``): all tokens alternate by energy rank into A and B."""

    def rule(m: Tensor, r: int) -> ClipPlan:
        order = energy_order(m, margin, alpha)
        return bipartite(m, order[:, :0], order[:, 0::2], order[:, 1::2], r)

    return rule


def merged_per_block(n: int, ratio: float) -> int:
    """The reference's r for a clip of n tokens: ⌊n − n·ratio⌋."""
    return math.floor(n - n * ratio)


@register_reducer("pitome")
@dataclass(repr=False)
class PiToMe(Reducer):
    """PiToMe: merge the most mergeable (highest-energy) tokens, protect the informative ones."""

    ratio: float = field(default=0.9, metadata={"help": "share of tokens kept per block, in [0.5, 1]"})
    margin: float = field(default=0.75, metadata={
        "help": "energy margin at block 0; block l uses margin·(1 − l/L) (the MAE patch's schedule)"})
    alpha: float = field(default=1.0, metadata={"help": "the ELU's alpha in the energy score"})
    prop_attn: bool = field(default=False, metadata={
        "help": "proportional attention: add log(size) to the attention logits"})

    def validate(self) -> None:
        for name, lo, hi in (("ratio", 0.5, 1.0), ("margin", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi or \
                    (name == "margin" and v == hi):
                rng = "[0.5, 1]" if name == "ratio" else "[0, 1)"
                raise ReducerParamError(f"pitome: {name} must be a number in {rng}, got {v!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ReducerParamError(f"pitome: alpha must be a number > 0, got {self.alpha!r}")
        if not isinstance(self.prop_attn, bool):
            raise ReducerParamError(f"pitome: prop_attn must be true or false, got {self.prop_attn!r}")

    def margin_at(self, layer: int, depth: int) -> float:
        return self.margin * (1.0 - layer / depth)

    @staticmethod
    def energy_blocks(depth: int) -> int:
        """Blocks (from the first) that run the energy rule; the rest run the energy-ordered bipartite one."""
        return math.ceil(depth * 0.5)

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int) -> PackedTokens:
        r_of = [merged_per_block(n, float(self.ratio)) for n in tokens.seqlens()]
        if max(r_of, default=0) <= 0:
            return tokens
        margin = self.margin_at(layer, depth)
        make = energy_rule if layer < self.energy_blocks(depth) else energy_bipartite_rule
        plan = plan_packed(keys.mean(dim=1), tokens, r_of, make(margin, float(self.alpha)))
        return apply_wavg(plan, tokens)
