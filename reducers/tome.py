"""``tome`` — Token Merging (Bolya et al., ICLR 2023; reference code facebookresearch/ToMe).

Rule (docs/architecture.md §4), in every block between attention and MLP (``after_attention``), per clip:

1. the metric is the block's attention keys averaged over heads, cosine-normalised;
2. the clip's tokens, in their current order, alternate into set A (even index) and set B (odd);
3. each A token finds its most similar B token (cosine); the ``r`` A tokens whose best match is
   highest merge into their B partner — several A tokens may merge into the same B token;
4. a merged token is the size-weighted average of the tokens merged into it
   (x = Σ sizeᵢ·xᵢ / Σ sizeᵢ) and its ``size`` is the sum of theirs, so ``size`` accumulates over layers
   and counts the input tokens a token stands for; its ``pos`` is the smallest (first) ``pos`` merged;
5. the output order is the reference's: the unmerged A tokens, most-similar first, then the B tokens
   in their order. The next layer's even/odd split runs over that order, as in the reference.

For video every token of a clip is matched jointly, across space and time (the ToMe video setting,
ToMe paper §4.3 / MAE-ST); clips of a packed batch never mix. The step runs on the bipartite core
(:mod:`tokenbench.reducers.bipartite`): :func:`~tokenbench.reducers.bipartite.match` decides the plan for all
clips in one batched pass (equal-length clips as a [B, n, D] view like the reference, unequal ones after RLT
padded to the longest with masked slots), :func:`~tokenbench.reducers.bipartite.merge_wavg` applies it; a
clip's tokens do not depend on its batch-mates, and no count is read back from the device. The three parts
of the step are methods (:meth:`ToMe.edge_scores`, :meth:`ToMe.count`, :meth:`ToMe.apply`) that the
merge-vs-drop family (:mod:`tokenbench.reducers.merge_drop`) overrides one at a time.

At most half the tokens can merge in a layer (r ≤ ⌊n/2⌋): :meth:`ToMe.check_geometry` rejects a schedule
that asks for more on a full clip of the model's geometry, naming ``r`` and the layer; a shorter clip
(content-adaptive input, e.g. after RLT) merges ``min(r, ⌊n/2⌋)`` there, as the reference clamps.
On full clips the token count after L layers is N − Σ_{l<L} r_l (N − L·r for constant r).

Parameters:

* ``r`` — tokens merged per layer. An int (constant, or linear with ``inflection``), a list of ints (one
  per layer; a shorter list is padded with 0s, a longer one is an error), or a pair ``(r, inflection)``
  as the reference's ``parse_r`` takes;
* ``inflection`` in [−1, 1] (default 0): linear schedule from r·(1 − inflection) to r·(1 + inflection)
  over the layers, the reference's ``parse_r``: −1 is the paper's "decreasing schedule" (2r … 0);
* ``keys`` (default ``mean``): the matching metric from the block's attention keys, averaged over heads
  (ToMe's) or ``concat`` (the heads side by side; Pollard & Wray offer both);
* ``prop_attn`` (default False): proportional attention, ``+log(size)`` on the attention logits of every
  key (the model reads ``reducer.prop_attn``); off for MAE-style models, as the reference advises for
  off-the-shelf MAE checkpoints.

Pooling: the model pools size-weighted (the reference's MAE patch), so a merged token counts as many
times as the tokens it stands for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import PackedTokens, Reducer, ReducerParamError
from .bipartite import BipartitePlan, CosineScores, Count, FixedCount, Scores, match, merge_wavg
from .registry import register_reducer

# the per-token matching metric from the block's keys [N, heads, head_dim] (Pollard & Wray offer both)
KEY_METRICS = {
    "mean": lambda keys: keys.mean(dim=1),  # ToMe's: keys averaged over heads
    "concat": lambda keys: keys.flatten(1),  # the heads side by side
}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def linear_schedule(r: int, inflection: float, depth: int) -> list[int]:
    """The reference's ``parse_r`` for (r, inflection): ints from r·(1 − inflection) to r·(1 + inflection)."""
    lo = int(r * (1.0 - inflection))
    hi = 2 * r - lo
    step = (hi - lo) / (depth - 1) if depth > 1 else 0.0
    return [int(lo + step * i) for i in range(depth)]


def bipartite_merge(x: Tensor, metric: Tensor, size: Tensor, pos: Tensor,
                    r: int) -> tuple[Tensor, Tensor, Tensor]:
    """One ToMe step on a batch of equal-length clips: x [B, n, D], metric [B, n, d], size [B, n],
    pos [B, n] → the same with n − r tokens. ``r`` must be ≤ n // 2 (see :func:`merge_packed`)."""
    b, n, dim = x.shape
    if r <= 0:
        return x, size, pos
    cu = torch.arange(b + 1, dtype=torch.int32, device=x.device) * n
    out_x, out_size, out_pos, _, _ = merge_packed(x.reshape(b * n, dim), metric.reshape(b * n, -1),
                                                  size.reshape(-1), pos.reshape(-1), cu, [n] * b, r)
    return out_x.view(b, n - r, dim), out_size.view(b, n - r), out_pos.view(b, n - r)


def merge_packed(x: Tensor, metric: Tensor, size: Tensor, pos: Tensor, cu_seqlens: Tensor, lens: list[int],
                 r: int) -> tuple[Tensor, Tensor, Tensor, Tensor, list[int]]:
    """One ToMe step on a packed batch, all clips at once: x [N, D], metric [N, d], size [N], pos [N],
    ``cu_seqlens`` (on x's device) and its per-clip counts ``lens`` on the host → (x, size, pos,
    cu_seqlens, lens) after clip i merged min(r, ⌊nᵢ/2⌋) tokens: :func:`bipartite.match` with cosine scores
    and a fixed count, then :func:`bipartite.merge_wavg`. Nothing is read back from the device."""
    n = x.shape[0]
    grid = (1, 1, max(n, 1))  # only carried along: the merge never reads the grid
    tokens = PackedTokens(x=x, cu_seqlens=cu_seqlens, pos=pos, size=size, grid=grid, lens=tuple(lens))
    out = merge_wavg(match(tokens, CosineScores(metric), FixedCount(r)), tokens)
    return out.x, out.size, out.pos, out.cu_seqlens, list(out.seqlens())


@register_reducer("tome")
@dataclass(repr=False)
class ToMe(Reducer):
    """Token Merging: merge the r most similar token pairs of each clip in every block."""

    r: int | list[int] | tuple[int, float] = field(default=8, metadata={
        "help": "tokens merged per block: int, per-layer list of ints, or (r, inflection)"})
    inflection: float = field(default=0.0, metadata={
        "help": "linear schedule for int r, in [-1, 1]: r(1-i) at the first block to r(1+i) at the last"})
    prop_attn: bool = field(default=False, metadata={
        "help": "proportional attention: add log(size) to the attention logits"})
    keys: str = field(default="mean", metadata={
        "help": "matching metric from the attention keys: 'mean' over heads (ToMe) or 'concat' of the heads"})

    def validate(self) -> None:
        r = self.r
        if isinstance(r, tuple):
            if len(r) != 2 or not _is_int(r[0]) or isinstance(r[1], bool) or not isinstance(r[1], (int, float)):
                raise ReducerParamError(f"tome: r as a tuple must be (r: int, inflection: float), got {r!r}")
            if self.inflection != 0.0:
                raise ReducerParamError("tome: give the inflection either inside r=(r, inflection) or as "
                                        "inflection=, not both")
            base, infl = r
        elif isinstance(r, list):
            if not all(_is_int(v) and v >= 0 for v in r):
                raise ReducerParamError(f"tome: r as a list must hold one non-negative int per layer, got {r!r}"
                                        " (for a linear schedule use an int r with inflection=)")
            if self.inflection != 0.0:
                raise ReducerParamError("tome: inflection applies to an int r, not to a per-layer list r")
            base, infl = 0, 0.0
        elif _is_int(r):
            base, infl = r, self.inflection
        else:
            raise ReducerParamError(f"{self.name}: r must be an int, a list of ints or (r, inflection), got {r!r}")
        if base < 0:
            raise ReducerParamError(f"{self.name}: r must be ≥ 0, got {base!r}")
        if isinstance(infl, bool) or not isinstance(infl, (int, float)) or not -1.0 <= infl <= 1.0:
            raise ReducerParamError(f"tome: inflection must be a number in [-1, 1], got {infl!r}")
        if not isinstance(self.prop_attn, bool):
            raise ReducerParamError(f"tome: prop_attn must be true or false, got {self.prop_attn!r}")
        if self.keys not in KEY_METRICS:
            raise ReducerParamError(f"{self.name}: keys must be one of {sorted(KEY_METRICS)}, got {self.keys!r}")
        self._schedules: dict[int, list[int]] = {}

    def schedule(self, depth: int) -> list[int]:
        """Tokens merged at each of ``depth`` blocks."""
        if depth not in self._schedules:
            r = self.r
            if isinstance(r, list):
                if len(r) > depth:
                    raise ReducerParamError(f"tome: r lists {len(r)} layers but the model has {depth} blocks")
                sched = list(r) + [0] * (depth - len(r))
            elif isinstance(r, tuple):
                sched = linear_schedule(r[0], float(r[1]), depth)
            else:
                sched = linear_schedule(r, float(self.inflection), depth)
            self._schedules[depth] = sched
        return self._schedules[depth]

    def check_geometry(self, grid: tuple[int, int, int], depth: int) -> None:
        n = math.prod(grid)
        for layer, r in enumerate(self.schedule(depth)):
            if r > n // 2:
                raise ReducerParamError(
                    f"tome: r={self.r!r} merges {r} tokens in block {layer}, but a clip of grid {tuple(grid)} "
                    f"has {n} tokens there and at most half ({n // 2}) can merge in a block")
            n -= r

    # --- the step, on the bipartite core: subclasses (the merge-vs-drop family) override one part each ----
    def edge_scores(self, tokens: PackedTokens, keys: Tensor, layer: int) -> Scores:
        """How A→B edges are scored: cosine of the key metric."""
        return CosineScores(KEY_METRICS[self.keys](keys))

    def count(self, layer: int, depth: int) -> Count:
        """How many sources per clip at ``layer``: the schedule's r."""
        return FixedCount(self.schedule(depth)[layer])

    def apply(self, plan: BipartitePlan, tokens: PackedTokens) -> PackedTokens:
        """What happens to the sources: the size-weighted merge."""
        return merge_wavg(plan, tokens)

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int) -> PackedTokens:
        if self.schedule(depth)[layer] == 0:
            return tokens
        return self.apply(match(tokens, self.edge_scores(tokens, keys, layer), self.count(layer, depth)), tokens)
