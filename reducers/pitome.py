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

Built on the bipartite core (:mod:`tokenbench.reducers.bipartite`): each clip's tokens are laid out in
energy order (a permutation of row indices, no copy of x), the core's :func:`match` runs on that layout with
a per-clip count and, for the energy rule, the ranks past 2r ``protected``; the plan is relabelled to the
batch's own rows (and, for the energy rule, its rows put in the reference's order) and applied with the core's
:func:`merge_wavg`. All clips of a packed batch are matched in one batched pass, unequal lengths padded; clips
never mix, and nothing is read back from the device.

Parameters: ``ratio`` (share kept per block, in [0.5, 1]; 1 is the identity), ``margin`` (the schedule's
first value, in [0, 1)), ``alpha`` (the ELU's α, > 0), ``prop_attn`` (proportional attention; off by default
as in the MAE patch).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import PackedTokens, Reducer, ReducerParamError, lengths
from .bipartite import BipartitePlan, ClipLayout, CosineScores, Count, match, merge_wavg
from .registry import register_reducer


def energy_scores(m: Tensor, margin: float, alpha: float = 1.0, valid: Tensor | None = None) -> Tensor:
    """Energy of every token of each clip: m [g, n, d] cosine-normalised → [g, n]. With ``valid`` [g, n]
    (padded clips), the mean runs over each clip's own tokens and padding scores −inf."""
    e = F.elu_((m @ m.transpose(1, 2)).sub_(margin), alpha=alpha)  # in place: [g, n, n] is the big one
    if valid is None:
        return e.mean(dim=-1)
    e = e.masked_fill(~valid.unsqueeze(1), 0.0).sum(dim=-1) / valid.sum(dim=-1, keepdim=True)
    return e.masked_fill(~valid, -math.inf)


def energy_permutation(metric: Tensor, tokens: PackedTokens, margin: float, alpha: float) -> Tensor:
    """[N] packed rows reordered clip by clip by energy, highest first (ties by position)."""
    layout = ClipLayout.of(tokens.cu_seqlens, tokens.seqlens())
    with torch.no_grad():
        m = F.normalize(layout.gather(metric).float(), dim=-1)
        order = energy_scores(m, margin, alpha, layout.valid).argsort(dim=-1, descending=True, stable=True)
        if layout.equal:
            return (layout.starts.unsqueeze(1) + order).flatten()
        ids = tokens.seq_ids()
        start = layout.starts.index_select(0, ids)
        return start + order[ids, torch.arange(ids.shape[0], device=ids.device) - start]


@dataclass
class PerClipCount(Count):
    """A count per clip fixed on the host (PiToMe's ⌊n − n·ratio⌋ of each clip's own n): no device read."""

    r: list[int]

    def counts(self, best: Tensor, n_dev: Tensor, lens: list[int]) -> tuple[Tensor, list[int]]:
        return torch.tensor(self.r, device=best.device), list(self.r)


def relabel(plan: BipartitePlan, perm: Tensor) -> BipartitePlan:
    """A plan matched on the rows ``perm`` of a packed batch, addressed to the batch's own rows."""
    return dataclasses.replace(plan, keep=perm.index_select(0, plan.keep),
                               src=perm.index_select(0, plan.src.flatten()).view_as(plan.src))


def protected_first(plan: BipartitePlan, tokens: PackedTokens, r_dev: Tensor) -> BipartitePlan:
    """The energy rule's output order, as the reference concatenates it: the protected tokens by energy rank,
    then the destinations by rank. The core leaves the even-ranked protected tokens first and the odd ranks
    (destinations, then the odd-ranked protected) after them; this reorders the plan's rows only."""
    n_out = plan.n_out
    dev = plan.keep.device
    out_counts = lengths(plan.cu_seqlens)
    out_start = plan.cu_seqlens[:-1].long()
    clip = torch.repeat_interleave(torch.arange(len(plan.lens), device=dev), out_counts, output_size=n_out)
    q = torch.arange(n_out, device=dev) - out_start[clip]
    n = (out_counts + r_dev)[clip]
    r = r_dev[clip]
    b_first = (n + 1).div(2, rounding_mode="floor") - r  # the core's first B row: after the unmatched A tokens
    n_prot = n - 2 * r
    k = 2 * r + q  # energy rank of reference row q (while q < n_prot)
    core = torch.where(q < n_prot, torch.where(k % 2 == 0, q.div(2, rounding_mode="floor"), b_first + (k - 1) // 2),
                       b_first + (q - n_prot))
    core = out_start[clip] + core
    inv = torch.empty(n_out + 1, dtype=torch.long, device=dev)
    inv[n_out] = n_out
    inv.index_copy_(0, core, torch.arange(n_out, device=dev))
    keep = torch.cat([plan.keep.index_select(0, core), plan.keep[n_out:]])
    return dataclasses.replace(plan, keep=keep,
                               dst_row=inv.index_select(0, plan.dst_row.flatten()).view_as(plan.dst_row))


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
        metric = keys.mean(dim=1)
        # match on the tokens laid out in energy order: the core's even/odd split is then the reference's
        # split by energy rank, and (energy rule) the ranks past 2r are protected
        perm = energy_permutation(metric, tokens, self.margin_at(layer, depth), float(self.alpha))
        energy_rule = layer < self.energy_blocks(depth)
        protected = r_dev = None
        if energy_rule:
            r_dev = torch.tensor(r_of, device=metric.device)
            ids = tokens.seq_ids()
            rank = torch.arange(ids.shape[0], device=ids.device) - tokens.cu_seqlens[:-1].long()[ids]
            protected = rank >= 2 * r_dev[ids]
        plan = relabel(match(tokens, CosineScores(metric.index_select(0, perm)), PerClipCount(r_of), protected),
                       perm)
        if energy_rule:
            plan = protected_first(plan, tokens, r_dev)
        return merge_wavg(plan, tokens)
