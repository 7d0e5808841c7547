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
ToMe paper §4.3 / MAE-ST); clips of a packed batch never mix. All clips are matched in one batched pass
(:func:`merge_packed`): equal-length clips as a [B, n, D] view like the reference, unequal ones (after RLT)
padded to the longest with masked slots; a clip's tokens do not depend on its batch-mates, and no count is
read back from the device (output sizes follow from the host copy of the clip lengths).

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
    cu_seqlens, lens) after clip i merged min(r, ⌊nᵢ/2⌋) tokens.

    Clips are laid out as [B, n_max] (a view when every clip has n_max tokens, the dense case of the
    reference; a gather padded with masked slots otherwise, e.g. after RLT), matched in one batched product,
    and every output size is computed on the host from ``lens``: nothing is read back from the device.
    Padding sorts last (score −inf), so each clip's choices are those it makes alone.

    The merge is the reference's ``merge_wavg`` (x·size summed into the B partner, then divided by the summed
    size), computed on the receiving rows only: untouched tokens are copied exactly, and each receiving row
    is written once (by the first of the A tokens merging into it), so gradients are not double counted."""
    b = len(lens)
    dev = x.device
    r_of = [min(r, n // 2) for n in lens]
    r_max = max(r_of, default=0)
    if r_max <= 0:
        return x, size, pos, cu_seqlens, list(lens)
    n_max = max(lens)
    out_lens = [n - k for n, k in zip(lens, r_of)]
    n_out = sum(out_lens)
    equal = min(lens) == n_max
    starts = cu_seqlens[:-1].long()
    counts = torch.diff(cu_seqlens).long()
    r_dev = counts.div(2, rounding_mode="floor").clamp(max=r)  # min(r, n // 2) per clip, on the device
    with torch.no_grad():
        if equal:
            m = metric.view(b, n_max, -1)
        else:
            j = torch.arange(n_max, device=dev)
            valid = j < counts.unsqueeze(1)
            m = metric.index_select(0, (starts.unsqueeze(1) + torch.minimum(j, counts.unsqueeze(1) - 1)).flatten())
            m = m.view(b, n_max, -1)
        m = F.normalize(m.float(), dim=-1)
        scores = m[:, 0::2] @ m[:, 1::2].transpose(1, 2)  # [B, |A|, |B|]
        if not equal:
            scores.masked_fill_(~valid[:, 1::2].unsqueeze(1), -math.inf)
        best, partner = scores.max(dim=-1)
        if not equal:
            best.masked_fill_(~valid[:, 0::2], -math.inf)
        order = best.argsort(dim=-1, descending=True, stable=True)  # [B, |A|]: most similar A tokens first
        n_a = counts.add(1).div(2, rounding_mode="floor")  # A tokens per clip
        # output rows of clip i: its unmerged A tokens (ranks rᵢ … |Aᵢ|−1), then its B tokens
        out_counts = counts - r_dev
        out_cu = F.pad(out_counts.cumsum(0), (1, 0))
        clip = torch.repeat_interleave(torch.arange(b, device=dev), out_counts, output_size=n_out)
        q = torch.arange(n_out, device=dev) - out_cu[clip]  # row within the clip's output
        n_unm = (n_a - r_dev)[clip]
        a_rank = torch.minimum(q + r_dev[clip], n_a[clip] - 1)
        a_tok = 2 * order[clip, a_rank]
        b_tok = 2 * (q - n_unm) + 1
        flat_keep = starts[clip] + torch.where(q < n_unm, a_tok, b_tok)
        # the merging A tokens (ranks < rᵢ), their rows in the output, and whether each is the first to land
        active = torch.arange(r_max, device=dev) < r_dev.unsqueeze(1)  # [B, r_max]
        src_idx = torch.where(active, order[:, :r_max], 0)  # inactive slots (short clips) point at token 0
        dst_idx = partner.gather(1, src_idx)
        flat_src = (starts.unsqueeze(1) + 2 * src_idx).flatten()
        same = (dst_idx.unsqueeze(2) == dst_idx.unsqueeze(1)) & active.unsqueeze(1)  # [B, r_max, r_max]
        earlier = torch.ones(r_max, r_max, dtype=torch.bool, device=dev).tril(-1)
        first = active & ~(same & earlier).any(-1)
        dst_row = out_cu[:-1].unsqueeze(1) + (n_a - r_dev).unsqueeze(1) + dst_idx
        write_row = torch.where(first, dst_row, n_out).flatten()  # others go to a spare row, dropped
        pos_row = torch.where(active, dst_row, n_out).flatten()
        flat_keep = F.pad(flat_keep, (0, 1))  # the spare row (a copy of token 0)
    out_x = x.index_select(0, flat_keep)
    out_size = size.index_select(0, flat_keep)
    out_pos = pos.index_select(0, flat_keep)
    src_w = size.index_select(0, flat_src).view(b, r_max)
    src_x = x.index_select(0, flat_src).view(b, r_max, -1)
    # per clip, Σ size·x of every A token merging into the same row (a one-hot product, batched over clips)
    onehot = same.to(x.dtype)
    wsum = out_size.index_select(0, write_row) + (onehot @ src_w.to(x.dtype).unsqueeze(2)).flatten().to(size.dtype)
    num = out_x.index_select(0, write_row) * out_size.index_select(0, write_row).unsqueeze(1).to(x.dtype)
    num = num + (onehot @ (src_x * src_w.unsqueeze(2).to(x.dtype))).flatten(0, 1)
    # in place: these are fresh gathers (index_select keeps nothing of its output for backward), so the
    # full [N_out, D] matrix is not copied a second time
    out_x = out_x.index_copy_(0, write_row, num / wsum.unsqueeze(1).to(x.dtype))[:n_out]
    out_size = out_size.index_copy_(0, write_row, wsum)[:n_out]
    out_pos = out_pos.scatter_reduce_(0, pos_row, pos.index_select(0, flat_src), reduce="amin")[:n_out]
    cu = F.pad(out_counts.cumsum(0, dtype=torch.int32), (1, 0))
    return out_x, out_size, out_pos, cu, out_lens


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
        x, size, pos, cu, lens = merge_packed(tokens.x, metric, tokens.size, tokens.pos, tokens.cu_seqlens,
                                              tokens.seqlens(), r)
        return tokens.replace(x=x, size=size, pos=pos, cu_seqlens=cu, lens=tuple(lens))
