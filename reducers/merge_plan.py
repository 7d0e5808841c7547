"""A merge plan decided once per step, and the ways to apply it (PiToMe's and ToFu's own small core).

A step of a bipartite reducer first decides, per clip, which tokens stay (``keep``, in output order) and which
*source* tokens go into which kept *destination* (``src`` → ``dst`` row of the output): a :class:`MergePlan`.
Applying it to (x, size, pos) is a separate choice:

* :func:`apply_wavg` — ToMe's ``merge_wavg``: a destination becomes the size-weighted mean of itself and its
  sources, its size the sum, its pos the smallest;
* :func:`apply_drop` — the sources are discarded (pruning); each clip's sizes are rescaled by one factor so they
  still sum to the tokens that entered (the interface's invariant, as STA does), which leaves size-weighted
  pooling equal to a plain mean over the kept tokens;
* :func:`apply_mlerp` — ToFu's norm-preserving merge: the direction of the size-weighted mean, the largest norm
  among the tokens merged (see :mod:`tokenbench.reducers.tofu`); size and pos as :func:`apply_wavg`.

Matching (:func:`plan_packed`) runs one batched pass per group of equal-length clips — a single group on full
clips, as in the reference's [B, N, C] layout — with the per-clip rule supplied as a function of the group's
[g, n, d] metric. Every output size comes from the host copy of the clip lengths: nothing is read back from the
device. Untouched tokens are copied exactly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import PackedTokens


@dataclass(frozen=True)
class ClipPlan:
    """One group's decision in clip-local indices: ``keep`` [g, n_out] tokens in output order; ``src`` [g, s]
    source tokens and ``dst`` [g, s] the output row (within the clip) each merges into."""

    keep: Tensor
    src: Tensor
    dst: Tensor


@dataclass(frozen=True)
class MergePlan:
    """A packed batch's decision in flat indices: ``keep`` [N_out] rows of the input that become the output
    rows, in order; ``src`` [S] input rows merged (or dropped) into output rows ``dst`` [S]; the output's
    ``cu_seqlens`` and host ``lens``."""

    keep: Tensor
    src: Tensor
    dst: Tensor
    cu_seqlens: Tensor
    lens: tuple[int, ...]


# (metric [g, n, d] cosine-normalised, r) → the clips' ClipPlan; r is the same for every clip of a group
ClipRule = Callable[[Tensor, int], ClipPlan]


def bipartite(m: Tensor, protected: Tensor, a: Tensor, b: Tensor, r: int) -> ClipPlan:
    """ToMe's bipartite soft matching between index sets ``a`` [g, na] and ``b`` [g, nb] of each clip (metric
    ``m`` [g, n, d], cosine-normalised): each A token's partner is its most similar B token; the ``r`` A tokens
    with the best partners merge into them. Output order: ``protected`` [g, p] (left out of the matching), the
    unmerged A tokens most-similar first, then the B tokens in their order."""
    scores = torch.gather(m, 1, a.unsqueeze(-1).expand(-1, -1, m.shape[-1])) @ \
        torch.gather(m, 1, b.unsqueeze(-1).expand(-1, -1, m.shape[-1])).transpose(1, 2)  # [g, na, nb]
    best, partner = scores.max(dim=-1)
    rank = best.argsort(dim=-1, descending=True, stable=True)
    src_rank, unm_rank = rank[:, :r], rank[:, r:]
    keep = torch.cat([protected, a.gather(1, unm_rank), b], dim=1)
    dst = protected.shape[1] + unm_rank.shape[1] + partner.gather(1, src_rank)
    return ClipPlan(keep=keep, src=a.gather(1, src_rank), dst=dst)


def plan_packed(metric: Tensor, tokens: PackedTokens, r_of: list[int], rule: ClipRule) -> MergePlan:
    """Run ``rule`` on every clip of ``tokens`` (``metric`` [N, d] per token), clip i reducing ``r_of[i]``
    tokens; clips of equal length and r are matched together in one batched call."""
    dev = metric.device
    lens = tokens.seqlens()
    out_lens = [n - r for n, r in zip(lens, r_of)]
    starts = [0]
    for n in lens[:-1]:
        starts.append(starts[-1] + n)
    out_starts = [0]
    for n in out_lens[:-1]:
        out_starts.append(out_starts[-1] + n)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(lens, r_of)):
        groups.setdefault(key, []).append(i)
    n_out = sum(out_lens)
    keep = torch.empty(n_out, dtype=torch.long, device=dev)
    srcs, dsts = [], []
    with torch.no_grad():
        m_all = F.normalize(metric.float(), dim=-1)
        for (n, r), clips in groups.items():
            first = torch.tensor([starts[i] for i in clips], device=dev)
            rows = torch.tensor([out_starts[i] for i in clips], device=dev)
            if len(clips) == len(lens):  # every clip alike: the packed rows are a [B, n, d] view
                m = m_all.view(len(clips), n, -1)
            else:
                m = m_all.index_select(0, (first.unsqueeze(1) + torch.arange(n, device=dev)).flatten())
                m = m.view(len(clips), n, -1)
            plan = rule(m, r) if r > 0 else ClipPlan(
                keep=torch.arange(n, device=dev).expand(len(clips), n),
                src=torch.empty(len(clips), 0, dtype=torch.long, device=dev),
                dst=torch.empty(len(clips), 0, dtype=torch.long, device=dev))
            out_rows = rows.unsqueeze(1) + torch.arange(n - r, device=dev)
            keep[out_rows.flatten()] = (first.unsqueeze(1) + plan.keep).flatten()
            srcs.append((first.unsqueeze(1) + plan.src).flatten())
            dsts.append((rows.unsqueeze(1) + plan.dst).flatten())
    cu = F.pad(torch.tensor(out_lens, dtype=torch.int32, device=dev).cumsum(0, dtype=torch.int32), (1, 0))
    return MergePlan(keep=keep, src=torch.cat(srcs), dst=torch.cat(dsts), cu_seqlens=cu, lens=tuple(out_lens))


def _gathered(plan: MergePlan, tokens: PackedTokens) -> tuple[Tensor, Tensor, Tensor]:
    return (tokens.x.index_select(0, plan.keep), tokens.size.index_select(0, plan.keep),
            tokens.pos.index_select(0, plan.keep))


def _received(plan: MergePlan, n_out: int) -> Tensor:
    """[N_out, 1] bool: the rows a source merges into (every other row is copied exactly)."""
    got = torch.zeros(n_out, dtype=torch.bool, device=plan.keep.device)
    return got.index_fill_(0, plan.dst, True).unsqueeze(1)


def _wavg(plan: MergePlan, tokens: PackedTokens) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, size, pos, merged) with x the size-weighted mean on the receiving rows, not yet copied elsewhere."""
    x, size, pos = _gathered(plan, tokens)
    w_src = tokens.size.index_select(0, plan.src)
    num = (x * size.unsqueeze(1).to(x.dtype)).index_add(
        0, plan.dst, tokens.x.index_select(0, plan.src) * w_src.unsqueeze(1).to(x.dtype))
    size = size.index_add(0, plan.dst, w_src)
    mean = num / size.unsqueeze(1).to(x.dtype)
    pos = pos.scatter_reduce(0, plan.dst, tokens.pos.index_select(0, plan.src), reduce="amin")
    return x, size, pos, mean


def _out(tokens: PackedTokens, plan: MergePlan, x: Tensor, size: Tensor, pos: Tensor) -> PackedTokens:
    return tokens.replace(x=x, size=size, pos=pos, cu_seqlens=plan.cu_seqlens, lens=plan.lens)


def apply_wavg(plan: MergePlan, tokens: PackedTokens) -> PackedTokens:
    """ToMe's size-weighted merge: x = Σ sizeᵢ·xᵢ / Σ sizeᵢ over a destination and its sources."""
    x, size, pos, mean = _wavg(plan, tokens)
    return _out(tokens, plan, torch.where(_received(plan, x.shape[0]), mean, x), size, pos)


def apply_mlerp(plan: MergePlan, tokens: PackedTokens) -> PackedTokens:
    """ToFu's MLERP: the size-weighted mean's direction with the largest norm among the tokens merged."""
    x, size, pos, mean = _wavg(plan, tokens)
    norm = x.norm(dim=1).scatter_reduce(0, plan.dst, tokens.x.index_select(0, plan.src).norm(dim=1), reduce="amax")
    # a mean of exactly opposite tokens has no direction: keep it (zero) rather than divide by zero
    scaled = mean * (norm / mean.norm(dim=1).clamp_min(torch.finfo(mean.dtype).tiny)).unsqueeze(1)
    return _out(tokens, plan, torch.where(_received(plan, x.shape[0]), scaled, x), size, pos)


def apply_drop(plan: MergePlan, tokens: PackedTokens) -> PackedTokens:
    """Prune the sources; each clip's kept sizes scaled by Σ size_in / Σ size_kept (one factor per clip)."""
    x, size, pos = _gathered(plan, tokens)
    b = tokens.batch_size
    clip_out = torch.repeat_interleave(torch.arange(b, device=x.device), torch.diff(plan.cu_seqlens.long()),
                                       output_size=x.shape[0])
    total = torch.zeros(b, dtype=torch.float64, device=x.device).index_add_(
        0, tokens.seq_ids(), tokens.size.double())
    kept = torch.zeros(b, dtype=torch.float64, device=x.device).index_add_(0, clip_out, size.double())
    return _out(tokens, plan, x, size * (total / kept).index_select(0, clip_out).to(size.dtype), pos)
