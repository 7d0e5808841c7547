"""``attn_prune`` — attention-importance top-k pruning without a class token (EViT, Liang et al., ICLR 2022,
youweiliang/evit ``evit.py``; Top-K in JoakimHaurum/TokenReduction ``models/topk.py``; FastV-style one-shot).

Rule, at each block listed in ``layers``, between attention and MLP (``after_attention``), per clip:

1. **Score** = the mean attention each token receives from the clip's queries, head-averaged
   (:func:`~tokenbench.reducers.attention_stats.attention_received`: exact, chunked, the block's own attention
   stays fused), the attention the block computed (its logit bias included). The authors score by the class
   token's head-averaged attention row ``attn[:, :, 0, 1:].mean(1)``; a VideoMAE backbone has no class token,
   and the mean over all queries is its CLS-free stand-in (MCTF's importance). Like the class row it sums to 1
   over the clip.
2. **Keep** the ``⌈keep_rate · n⌉`` highest-scoring tokens (EViT's ``left_tokens = ceil(keep_rate·(N−1))`` on
   the tokens entering the block; at least one), in descending score order (``topk(sorted=True)``, ties by
   position).
3. **Fuse** (``fuse=True``, EViT's ``fuse_token``): the dropped tokens become one token appended after the kept
   ones, ``Σ score_j · x_j`` over the dropped (EViT's ``extra_token``, not renormalised), with ``size`` the sum
   of theirs (an exact count), ``weight`` 1 (one token in the sequence, as in EViT; it has no class token to
   pool through, here it is one token of the clip's mean) and ``pos`` the smallest dropped. At a later
   location it competes like any token.

Which CLS-based rule each setting stands in for:

* ``layers=[3, 6, 9]``, ``keep_rate=0.7``, ``fuse=True`` — EViT (DeiT's default: blocks 4, 7, 10 keep 70 %,
  inattentive tokens fused);
* the same with ``fuse=False`` — Top-K of Haurum et al. (the class-attention top-k, dropped tokens discarded;
  their keep rate counts from the initial tokens, ours from those entering the block, as EViT's);
* one location (``layers=[2]``, ``keep_rate=0.5``) — FastV's one-shot prune after an early layer (FastV ranks
  the average attention received, as here, since an LLM has no class token either).

``size`` without fusing: the dropped tokens vanish, as in the authors' models, and the kept tokens' sizes are
scaled by (tokens entered) / (kept size) per clip so that sizes still count the clip's tokens (as ``sta``
does); ``weight`` is the kept tokens' own, so pooling is the plain mean over the kept tokens, as theirs.

Parameters: ``layers`` (block indices, distinct, ascending); ``keep_rate`` in (0, 1], one number for every
location or a list with one per location; ``fuse`` (default False).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention_stats import attention_received
from .base import NO_ATTENTION, AttentionContext, PackedTokens, Reducer, ReducerParamError
from .registry import register_reducer


def _is_rate(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v <= 1.0


def kept_count(keep_rate: float, n: int) -> int:
    """EViT's ``left_tokens``: ⌈keep_rate · n⌉, at least 1."""
    return max(1, min(n, math.ceil(keep_rate * n)))


def prune_packed(tokens: PackedTokens, score: Tensor, keep: list[int], fuse: bool) -> PackedTokens:
    """Keep the ``keep[i]`` best-scored tokens of clip i, in descending score order; with ``fuse``, the rest
    become one score-weighted token appended after them. Output sizes follow from the host counts."""
    lens = tokens.seqlens()
    b, dev = len(lens), tokens.x.device
    n_max = max(lens)
    starts = tokens.cu_seqlens[:-1].long()
    ids = tokens.seq_ids()
    local = torch.arange(tokens.x.shape[0], device=dev) - starts[ids]
    padded = torch.full((b, n_max), -math.inf, dtype=torch.float32, device=dev)
    padded[ids, local] = score.float()
    order = padded.argsort(dim=1, descending=True, stable=True)  # [B, n_max]: padding last

    def ranked(first: list[int], count: list[int]) -> tuple[Tensor, Tensor]:
        """(clip, flat token index) of ranks first[i] … first[i]+count[i]−1 of each clip, clip-major."""
        total = sum(count)
        c = torch.tensor(count, device=dev)
        clip = torch.repeat_interleave(torch.arange(b, device=dev), c, output_size=total)
        offs = F.pad(c.cumsum(0), (1, 0))[:-1]
        rank = torch.arange(total, device=dev) - offs[clip] + torch.tensor(first, device=dev)[clip]
        return clip, starts[clip] + order[clip, rank]

    kclip, kept = ranked([0] * b, keep)
    dropped_n = [n - k for n, k in zip(lens, keep)]
    x = tokens.x.index_select(0, kept)
    weight = tokens.weight.index_select(0, kept)
    size = tokens.size.index_select(0, kept)
    pos = tokens.pos.index_select(0, kept)
    if not fuse:
        entered = torch.zeros(b, dtype=torch.float64, device=dev).index_add_(0, ids, tokens.size.double())
        kept_size = torch.zeros(b, dtype=torch.float64, device=dev).index_add_(0, kclip, size.double())
        size = size * (entered / kept_size).index_select(0, kclip).to(size.dtype)
        out_lens = list(keep)
        return tokens.replace(x=x, size=size, weight=weight, pos=pos, lens=tuple(out_lens),
                              cu_seqlens=F.pad(torch.tensor(out_lens, device=dev).cumsum(0, dtype=torch.int32), (1, 0)))
    dclip, dropped = ranked(keep, dropped_n)
    s = score.index_select(0, dropped).to(tokens.x.dtype)
    fx = tokens.x.new_zeros(b, tokens.x.shape[1]).index_add_(
        0, dclip, tokens.x.index_select(0, dropped) * s.unsqueeze(1))
    fsize = tokens.size.new_zeros(b).index_add_(0, dclip, tokens.size.index_select(0, dropped))
    fpos = torch.full((b,), tokens.grid[0] * tokens.grid[1] * tokens.grid[2], dtype=torch.long, device=dev)
    fpos = fpos.scatter_reduce(0, dclip, tokens.pos.index_select(0, dropped), reduce="amin")
    has = [i for i, d in enumerate(dropped_n) if d > 0]  # EViT fuses only where it dropped
    out_lens = [k + (d > 0) for k, d in zip(keep, dropped_n)]
    out_cu = F.pad(torch.tensor(out_lens, device=dev).cumsum(0), (1, 0))
    kcu = F.pad(torch.tensor(keep, device=dev).cumsum(0), (1, 0))
    kept_row = out_cu[kclip] + torch.arange(sum(keep), device=dev) - kcu[kclip]
    hi = torch.tensor(has, dtype=torch.long, device=dev)
    fused_row = out_cu[hi] + torch.tensor([keep[i] for i in has], dtype=torch.long, device=dev)
    n_out = sum(out_lens)

    def place(kept_v: Tensor, fused_v: Tensor) -> Tensor:
        out = kept_v.new_empty((n_out, *kept_v.shape[1:]))
        return out.index_copy(0, kept_row, kept_v).index_copy(0, fused_row, fused_v.index_select(0, hi))

    return tokens.replace(
        x=place(x, fx), size=place(size, fsize), weight=place(weight, torch.ones_like(fsize).to(weight.dtype)),
        pos=place(pos, fpos), lens=tuple(out_lens), cu_seqlens=out_cu.to(torch.int32))


@register_reducer("attn_prune")
@dataclass(repr=False)
class AttnPrune(Reducer):
    """Attention-importance top-k: keep the tokens that receive the most attention at chosen blocks."""

    layers: list[int] = field(default_factory=lambda: [3, 6, 9], metadata={
        "help": "blocks after whose attention tokens are pruned (EViT's DeiT default: 3, 6, 9)"})
    keep_rate: float | list[float] = field(default=0.7, metadata={
        "help": "share of the entering tokens kept at each location: one number or one per location"})
    fuse: bool = field(default=False, metadata={
        "help": "EViT's fused token: the dropped tokens become one score-weighted token"})

    def validate(self) -> None:
        layers = self.layers
        if isinstance(layers, tuple):
            self.layers = layers = list(layers)
        if not isinstance(layers, list) or not layers or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in layers):
            raise ReducerParamError(f"attn_prune: layers must be a non-empty list of block indices ≥ 0, got {layers!r}")
        if sorted(set(layers)) != layers:
            raise ReducerParamError(f"attn_prune: layers must be distinct and ascending, got {layers!r}")
        rate = self.keep_rate
        if isinstance(rate, tuple):
            self.keep_rate = rate = list(rate)
        rates = rate if isinstance(rate, list) else [rate]
        if not rates or not all(_is_rate(v) for v in rates):
            raise ReducerParamError(f"attn_prune: keep_rate must be in (0, 1] (one, or one per layer), got {rate!r}")
        if isinstance(rate, list) and len(rate) != len(layers):
            raise ReducerParamError(f"attn_prune: keep_rate lists {len(rate)} rates for {len(layers)} layers")
        if not isinstance(self.fuse, bool):
            raise ReducerParamError(f"attn_prune: fuse must be true or false, got {self.fuse!r}")

    def rate_at(self, layer: int) -> float:
        rates = self.keep_rate if isinstance(self.keep_rate, list) else [self.keep_rate] * len(self.layers)
        return float(dict(zip(self.layers, rates)).get(layer, 1.0))

    def check_geometry(self, grid: tuple[int, int, int], depth: int) -> None:
        if self.layers[-1] >= depth:
            raise ReducerParamError(f"attn_prune: layers={self.layers!r} names block {self.layers[-1]}, but the "
                                    f"model has {depth} blocks (0 … {depth - 1})")

    def attention_layers(self, depth: int) -> frozenset[int]:
        return frozenset(i for i in self.layers if i < depth and self.rate_at(i) < 1.0)

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int,
                        attn: AttentionContext = NO_ATTENTION) -> PackedTokens:
        rate = self.rate_at(layer)
        if rate >= 1.0:
            return tokens
        lens = tokens.seqlens()
        keep = [kept_count(rate, n) for n in lens]
        if keep == lens:
            return tokens
        return prune_packed(tokens, attention_received(attn, bias=True), keep, self.fuse)
