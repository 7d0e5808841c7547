"""``tome`` — Token Merging (Bolya et al., ICLR 2023; reference code facebookresearch/ToMe).

Rule (DESIGN.md §4), in every block between attention and MLP (``after_attention``), per clip:

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
ToMe paper §4.3 / MAE-ST); clips of a packed batch never mix. Equal-length batches take one batched
pass; unequal ones loop over clips. Both give the same tokens.

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
import torch.nn.functional as F
from torch import Tensor

from .base import PackedTokens, Reducer, ReducerParamError
from .registry import register_reducer


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
    pos [B, n] → the same with n − r tokens. ``r`` must be ≤ n // 2.

    Same result as the reference's ``merge_wavg`` (x·size scatter-summed, then divided by the summed
    size), computed with one gather of the surviving rows plus arithmetic on the ≤ r rows that receive
    merges only; untouched tokens are copied exactly rather than multiplied and divided by their size."""
    b, n, dim = x.shape
    if r <= 0:
        return x, size, pos
    n_a, n_b = (n + 1) // 2, n // 2
    with torch.no_grad():
        m = F.normalize(metric.float(), dim=-1)
        scores = m[:, 0::2] @ m[:, 1::2].transpose(1, 2)  # [B, |A|, |B|]
        best, partner = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True, stable=True)
        src_idx, unm_idx = order[:, :r], order[:, r:]  # A tokens that merge / stay
        dst_idx = partner.gather(1, src_idx)  # their B partners
        dev = x.device
        offs = (torch.arange(b, device=dev) * n).unsqueeze(1)
        b_tok = (2 * torch.arange(n_b, device=dev) + 1).expand(b, n_b)
        keep_tok = torch.cat([2 * unm_idx, b_tok], dim=1)  # token index (in 0…n) of each output row
        src_tok = 2 * src_idx
        out_offs = (torch.arange(b, device=dev) * (n - r)).unsqueeze(1)
        dst_row = (dst_idx + (n_a - r) + out_offs).flatten()  # output row receiving each merge
        rows, inverse = torch.unique(dst_row, return_inverse=True)
    flat_keep = (keep_tok + offs).flatten()
    flat_src = (src_tok + offs).flatten()
    size_f = size.reshape(-1)
    out_x = x.reshape(b * n, dim).index_select(0, flat_keep)
    out_size = size_f.index_select(0, flat_keep)
    out_pos = pos.reshape(-1).index_select(0, flat_keep)
    src_w = size_f.index_select(0, flat_src)
    # weighted sums on the receiving rows only: (x_dst·size_dst + Σ x_src·size_src) / Σ size
    # (a one-hot matmul sums the merged rows; CPU index_add is far slower at these shapes)
    onehot = F.one_hot(inverse, rows.numel()).T.to(x.dtype)  # [rows, B·r]
    wsum = out_size.index_select(0, rows) + (onehot @ src_w.to(x.dtype)).to(size.dtype)
    num = out_x.index_select(0, rows) * out_size.index_select(0, rows).unsqueeze(1).to(x.dtype)
    num = num + onehot @ (x.reshape(b * n, dim).index_select(0, flat_src) * src_w.unsqueeze(1).to(x.dtype))
    out_x = out_x.index_copy(0, rows, num / wsum.unsqueeze(1).to(x.dtype))
    out_size = out_size.index_copy(0, rows, wsum)
    out_pos = out_pos.scatter_reduce(0, dst_row, pos.reshape(-1).index_select(0, flat_src), reduce="amin")
    return out_x.view(b, n - r, dim), out_size.view(b, n - r), out_pos.view(b, n - r)


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
            raise ReducerParamError(f"tome: r must be an int, a list of ints or (r, inflection), got {r!r}")
        if base < 0:
            raise ReducerParamError(f"tome: r must be ≥ 0, got {base!r}")
        if isinstance(infl, bool) or not isinstance(infl, (int, float)) or not -1.0 <= infl <= 1.0:
            raise ReducerParamError(f"tome: inflection must be a number in [-1, 1], got {infl!r}")
        if not isinstance(self.prop_attn, bool):
            raise ReducerParamError(f"tome: prop_attn must be true or false, got {self.prop_attn!r}")
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

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int) -> PackedTokens:
        r = self.schedule(depth)[layer]
        if r == 0:
            return tokens
        metric = keys.mean(dim=1)  # [N, head_dim]
        lens = tokens.seqlens()
        if len(set(lens)) == 1:  # equal lengths: one batched pass
            b, n = len(lens), lens[0]
            x, size, pos = bipartite_merge(tokens.x.view(b, n, -1), metric.view(b, n, -1),
                                           tokens.size.view(b, n), tokens.pos.view(b, n), min(r, n // 2))
            x, size, pos = x.flatten(0, 1), size.flatten(), pos.flatten()
            counts = [x.shape[0] // b] * b
        else:
            xs, sizes, poss, counts = [], [], [], []
            for a, n in zip(tokens.cu_seqlens[:-1].tolist(), lens):
                sl = slice(a, a + n)
                xi, si, pi = bipartite_merge(tokens.x[sl].unsqueeze(0), metric[sl].unsqueeze(0),
                                             tokens.size[sl].unsqueeze(0), tokens.pos[sl].unsqueeze(0),
                                             min(r, n // 2))
                xs.append(xi[0])
                sizes.append(si[0])
                poss.append(pi[0])
                counts.append(xi.shape[1])
            x, size, pos = torch.cat(xs), torch.cat(sizes), torch.cat(poss)
        cu = F.pad(torch.tensor(counts, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
        return tokens.replace(x=x, size=size, pos=pos, cu_seqlens=cu.to(tokens.cu_seqlens.device))
