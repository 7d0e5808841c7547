"""The bipartite core every ToMe-family reducer is built on: *match* once, then *apply*.

ToMe's step (facebookresearch/ToMe ``merge.py``) is two parts, kept apart here as the reference keeps
``bipartite_soft_matching`` apart from ``merge_wavg``:

* :func:`match` decides a :class:`BipartitePlan` for a packed batch: per clip, the tokens in their current
  order alternate into set A (even index) and set B (odd); a :class:`Scores` policy gives every A→B edge a
  score (cosine of a metric, :class:`CosineScores`; seeded uniform noise, :class:`RandomScores`); each A
  token keeps its best edge; a :class:`Count` policy says how many A tokens per clip become *sources* (the
  highest-scoring ones): a fixed ``r`` (:class:`FixedCount`, clamped to ⌊n/2⌋ as the reference clamps),
  every edge above a threshold (:class:`ThresholdCount`) or the top ``r·B`` edges of the whole batch
  (:class:`BatchRankCount`, DyMU's calibration ranking). Tokens in a ``protected`` mask are never sources
  nor destinations. The output order is the reference's: unmatched A tokens, best edge first, then the B
  tokens in their order.
* an *apply* turns the plan into new :class:`PackedTokens`: :func:`merge_wavg` (size-weighted average into
  the destination), :func:`merge_weighted` (the same with extra per-token weights, e.g. saliency) or
  :func:`drop` (sources discarded). A plan can be amended before it is applied
  (:meth:`BipartitePlan.without_weak_destinations`: Pollard & Wray's hybrid), and a rule that discards
  tokens keeps the interface's size rule with :func:`conserve_size`. Other rules (a norm-preserving merge)
  read the plan's fields: which input rows are kept and in what order, each source's row, destination row
  and score, and which sources share a destination.

Everything is batched over the clips of a packed batch, of equal length (a [B, n, d] view like the
reference) or unequal (padded to the longest with masked slots); a clip's choices never depend on its
batch-mates (except under :class:`BatchRankCount`, whose ranking is batch-level by definition). With a
fixed count nothing is read back from the device (output sizes follow from the host copy of the clip
lengths); content-dependent counts read the [B] counts back once per call — the output size depends on them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import PackedTokens, lengths

# --- score policies ------------------------------------------------------------------------------------


class Scores:
    """How every A→B edge of a clip is scored. ``scores`` gets the clips' layout and returns [B, |A|, |B|]
    floats (padding is masked by :meth:`best_edges`, not here)."""

    def scores(self, layout: ClipLayout) -> Tensor:
        raise NotImplementedError

    def best_edges(self, layout: ClipLayout, protected: Tensor | None) -> tuple[Tensor, Tensor]:
        """Each A token's best score and B partner, [B, |A|] each; −inf on padding and ``protected``
        ([B, n_max] bool) rows, and no edge into a padded or protected B token."""
        s = self.scores(layout)
        if protected is not None:
            s = s.masked_fill(protected[:, 0::2].unsqueeze(2) | protected[:, 1::2].unsqueeze(1), -math.inf)
        if not layout.equal:
            s.masked_fill_(~layout.valid[:, 1::2].unsqueeze(1), -math.inf)
        return s.max(dim=-1)


@dataclass
class CosineScores(Scores):
    """Cosine similarity of a per-token metric [N, d] (ToMe: keys averaged over heads)."""

    metric: Tensor

    def scores(self, layout: ClipLayout) -> Tensor:
        m = F.normalize(layout.gather(self.metric).float(), dim=-1)
        return m[:, 0::2] @ m[:, 1::2].transpose(1, 2)


@dataclass
class RandomScores(Scores):
    """Uniform random edge scores (Pollard & Wray's random matching), drawn from ``generator``."""

    generator: torch.Generator

    def scores(self, layout: ClipLayout) -> Tensor:
        n = layout.n_max
        u = torch.rand(layout.batch, (n + 1) // 2, n // 2, generator=self.generator,
                       device=self.generator.device)
        return u.to(layout.device)

    def best_edges(self, layout: ClipLayout, protected: Tensor | None) -> tuple[Tensor, Tensor]:
        """Without a protected set, drawn directly: the argmax of a row of i.i.d. uniform scores is a
        uniform B partner, and the rows' maxima are i.i.d., so ranking them is a uniform random order —
        the same distribution as the full [B, |A|, |B|] matrix at a fraction of its cost."""
        if protected is not None:
            return super().best_edges(layout, protected)
        n = layout.n_max
        shape = (layout.batch, (n + 1) // 2)
        dev = self.generator.device
        best = torch.rand(shape, generator=self.generator, device=dev).to(layout.device)
        n_b = layout.n_dev.div(2, rounding_mode="floor").clamp(min=1).unsqueeze(1)  # valid B tokens per clip
        u = torch.rand(shape, generator=self.generator, device=dev).to(layout.device)
        partner = (u * n_b).long().minimum(n_b - 1)
        return best, partner


# --- count policies ------------------------------------------------------------------------------------


class Count:
    """How many A tokens of each clip become sources. ``counts`` gets each A token's best score
    ([B, |A|], −inf on padding and protected rows), the clips' token counts on the device and on the host,
    and returns the counts per clip on the device and on the host (each ≤ ⌊n/2⌋)."""

    def counts(self, best: Tensor, n_dev: Tensor, lens: list[int]) -> tuple[Tensor, list[int]]:
        raise NotImplementedError


@dataclass
class FixedCount(Count):
    """``min(r, ⌊n/2⌋)`` per clip, known on the host: no device read."""

    r: int

    def counts(self, best: Tensor, n_dev: Tensor, lens: list[int]) -> tuple[Tensor, list[int]]:
        return n_dev.div(2, rounding_mode="floor").clamp(max=self.r), [min(self.r, n // 2) for n in lens]


@dataclass
class ThresholdCount(Count):
    """Every A token whose best edge is strictly above ``threshold`` (DyMU's inference rule), at most
    ⌊n/2⌋ per clip (and at most ``cap`` when given ≥ 0). The counts are read back once."""

    threshold: float
    cap: int = -1

    def counts(self, best: Tensor, n_dev: Tensor, lens: list[int]) -> tuple[Tensor, list[int]]:
        limit = n_dev.div(2, rounding_mode="floor")
        if self.cap >= 0:
            limit = limit.clamp(max=self.cap)
        r = (best > self.threshold).sum(-1).minimum(limit)
        return r, r.tolist()


@dataclass
class BatchRankCount(Count):
    """The ``r·B`` best edges of the whole batch (DyMU's batch-level ranking during threshold finding), at
    most ⌊n/2⌋ per clip. ``threshold`` is set to the score of the best edge left out (clamped at 0, as
    DyMU's ``batch_threshold``): the per-batch threshold calibration averages."""

    r: int
    threshold: float = field(default=math.nan, init=False)

    def counts(self, best: Tensor, n_dev: Tensor, lens: list[int]) -> tuple[Tensor, list[int]]:
        b, n_a = best.shape
        flat = best.flatten()
        k = min(self.r * b, flat.numel())
        order = flat.argsort(descending=True, stable=True)
        taken = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, order[:k], True).view(b, n_a)
        taken &= best > -math.inf  # padding and protected rows rank last but are never sources
        r = taken.sum(-1).minimum(n_dev.div(2, rounding_mode="floor"))
        cut = flat[order[min(k, flat.numel() - 1)]]
        self.threshold = max(float(cut), 0.0) if torch.isfinite(cut) else 0.0
        return r, r.tolist()


# --- the plan -------------------------------------------------------------------------------------------


@dataclass
class ClipLayout:
    """A packed batch seen as [B, n_max] clips: a view when all clips have n_max tokens, a gather padded
    with masked slots (``valid``) otherwise."""

    starts: Tensor  # [B] long: first row of each clip
    n_dev: Tensor  # [B] long: tokens per clip, on the device
    lens: list[int]  # the same on the host
    n_max: int
    equal: bool
    valid: Tensor | None  # [B, n_max] bool where not padding (None when equal)
    rows: Tensor | None  # [B·n_max] long rows of the packed stream (None when equal)

    @property
    def batch(self) -> int:
        return len(self.lens)

    @property
    def device(self) -> torch.device:
        return self.starts.device

    @classmethod
    def of(cls, cu_seqlens: Tensor, lens: list[int]) -> ClipLayout:
        starts = cu_seqlens[:-1].long()
        n_dev = lengths(cu_seqlens)
        n_max = max(lens)
        if min(lens) == n_max:
            return cls(starts, n_dev, list(lens), n_max, True, None, None)
        j = torch.arange(n_max, device=starts.device)
        valid = j < n_dev.unsqueeze(1)
        rows = (starts.unsqueeze(1) + torch.minimum(j, n_dev.unsqueeze(1) - 1)).flatten()
        return cls(starts, n_dev, list(lens), n_max, False, valid, rows)

    def gather(self, t: Tensor) -> Tensor:
        """[N, ...] packed → [B, n_max, ...] (padding repeats a clip's last token; mask with ``valid``)."""
        if self.equal:
            return t.reshape(self.batch, self.n_max, *t.shape[1:])
        return t.index_select(0, self.rows).view(self.batch, self.n_max, *t.shape[1:])


@dataclass
class BipartitePlan:
    """Which tokens of a packed batch are sources and where each goes, decided once by :func:`match`.

    Slots are [B, r_max] (r_max the largest count of any clip); slot j of clip i is active when j < rᵢ.
    Row indices address the packed input (``src``, ``keep``) or the packed output (``dst_row``)."""

    keep: Tensor  # [N_out + 1] long input rows in output order; the last is a spare row (apply drops it)
    src: Tensor  # [B, r_max] long input row of each source (inactive slots: the clip's first row)
    dst_row: Tensor  # [B, r_max] long output row of each source's destination
    score: Tensor  # [B, r_max] float: each source's edge score
    active: Tensor  # [B, r_max] bool
    same: Tensor  # [B, r_max, r_max] bool: active sources j and k share a destination
    first: Tensor  # [B, r_max] bool: the first active source of its destination
    dst_kept: Tensor  # [B, r_max] bool: the destination keeps its own token in the merge (see hybrid)
    cu_seqlens: Tensor  # [B + 1] int32 of the output
    lens: tuple[int, ...]  # output tokens per clip, host
    r: tuple[int, ...]  # sources per clip, host

    @property
    def n_out(self) -> int:
        return sum(self.lens)

    @property
    def r_max(self) -> int:
        return self.src.shape[1]

    def write_row(self) -> Tensor:
        """[B·r_max] the output row each slot writes the merged destination to, the spare row for all but
        the first source of a destination (so each destination is written once)."""
        return torch.where(self.first, self.dst_row, self.n_out).flatten()

    def without_weak_destinations(self, threshold: float) -> BipartitePlan:
        """Pollard & Wray's hybrid: a destination with any incoming edge scored below ``threshold`` gives up
        its own token; it becomes the size-weighted average of its sources alone."""
        weak = self.active & (self.score < threshold)
        hit = (self.same & weak.unsqueeze(1)).any(-1)  # [B, r_max]: slot's destination has a weak edge
        return _replace(self, dst_kept=self.dst_kept & ~hit)


def _replace(plan: BipartitePlan, **kw) -> BipartitePlan:
    return dataclasses.replace(plan, **kw)


def _identity_plan(tokens: PackedTokens, lens: list[int]) -> BipartitePlan:
    dev = tokens.x.device
    empty = torch.zeros(len(lens), 0, dtype=torch.long, device=dev)
    return BipartitePlan(
        keep=F.pad(torch.arange(tokens.x.shape[0], device=dev), (0, 1)), src=empty, dst_row=empty,
        score=empty.float(), active=empty.bool(), same=empty.bool().unsqueeze(2), first=empty.bool(),
        dst_kept=empty.bool(), cu_seqlens=tokens.cu_seqlens, lens=tuple(lens), r=(0,) * len(lens))


def match(tokens: PackedTokens, scores: Scores, count: Count, protected: Tensor | None = None) -> BipartitePlan:
    """The bipartite matching of every clip of ``tokens`` (see the module docstring). ``protected`` [N]
    bool marks tokens that are neither sources nor destinations."""
    lens = tokens.seqlens()
    dev = tokens.x.device
    b = len(lens)
    layout = ClipLayout.of(tokens.cu_seqlens, lens)
    if layout.n_max < 2:  # no clip has a B token
        return _identity_plan(tokens, lens)
    with torch.no_grad():
        p = None if protected is None else layout.gather(protected)
        best, partner = scores.best_edges(layout, p)
        if not layout.equal:
            best.masked_fill_(~layout.valid[:, 0::2], -math.inf)
        if protected is not None:
            best.masked_fill_(p[:, 0::2], -math.inf)
        r_dev, r_of = count.counts(best, layout.n_dev, lens)
    r_max = max(r_of, default=0)
    if r_max <= 0:
        return _identity_plan(tokens, lens)
    with torch.no_grad():
        order = best.argsort(dim=-1, descending=True, stable=True)  # [B, |A|]: best edges first
        if layout.equal and min(r_of) == r_max:  # every clip n tokens, r sources: the layout is known on the host
            return _uniform_plan(layout, best, partner, order, r_max)
        n_dev = layout.n_dev
        starts = layout.starts
        out_lens = [n - k for n, k in zip(lens, r_of)]
        n_out = sum(out_lens)
        n_a = n_dev.add(1).div(2, rounding_mode="floor")  # A tokens per clip
        # output rows of clip i: its unmatched A tokens (ranks rᵢ … |Aᵢ|−1), then its B tokens
        out_counts = n_dev - r_dev
        out_cu = F.pad(out_counts.cumsum(0), (1, 0))
        clip = torch.repeat_interleave(torch.arange(b, device=dev), out_counts, output_size=n_out)
        q = torch.arange(n_out, device=dev) - out_cu[clip]  # row within the clip's output
        n_unm = (n_a - r_dev)[clip]
        a_rank = torch.minimum(q + r_dev[clip], n_a[clip] - 1)
        a_tok = 2 * order[clip, a_rank]
        b_tok = 2 * (q - n_unm) + 1
        keep = F.pad(starts[clip] + torch.where(q < n_unm, a_tok, b_tok), (0, 1))  # + the spare row
        active = torch.arange(r_max, device=dev) < r_dev.unsqueeze(1)  # [B, r_max]
        src_idx = torch.where(active, order[:, :r_max], 0)  # inactive slots (short clips) point at token 0
        dst_idx = partner.gather(1, src_idx)
        src = starts.unsqueeze(1) + 2 * src_idx
        same = (dst_idx.unsqueeze(2) == dst_idx.unsqueeze(1)) & active.unsqueeze(1)  # [B, r_max, r_max]
        earlier = torch.ones(r_max, r_max, dtype=torch.bool, device=dev).tril(-1)
        first = active & ~(same & earlier).any(-1)
        dst_row = out_cu[:-1].unsqueeze(1) + (n_a - r_dev).unsqueeze(1) + dst_idx
        cu = F.pad(out_counts.cumsum(0, dtype=torch.int32), (1, 0))
        return BipartitePlan(keep=keep, src=src, dst_row=dst_row, score=best.gather(1, src_idx), active=active,
                             same=same, first=first, dst_kept=torch.ones_like(active), cu_seqlens=cu,
                             lens=tuple(out_lens), r=tuple(r_of))


def _uniform_plan(layout: ClipLayout, best: Tensor, partner: Tensor, order: Tensor, r: int) -> BipartitePlan:
    """:func:`match`'s plan when every clip has n tokens and r sources (full clips under a fixed count: ToMe
    at any batch size), built from host integers: the same rows as the general construction in about half its
    small operations, which is what a batch of one clip pays for."""
    b, n, dev = layout.batch, layout.n_max, layout.device
    n_unm = (n + 1) // 2 - r  # unmatched A tokens per clip: they come first in the output, then the B tokens
    starts = layout.starts.unsqueeze(1)
    b_tok = torch.arange(1, n, 2, device=dev).expand(b, n // 2)
    keep = F.pad((torch.cat([2 * order[:, r:], b_tok], 1) + starts).flatten(), (0, 1))  # + the spare row
    src_idx = order[:, :r]
    dst_idx = partner.gather(1, src_idx)
    same = dst_idx.unsqueeze(2) == dst_idx.unsqueeze(1)  # [B, r, r]
    earlier = torch.ones(r, r, dtype=torch.bool, device=dev).tril(-1)
    out_starts = torch.arange(0, b * (n - r), n - r, device=dev).unsqueeze(1)
    cu = torch.arange(0, (b + 1) * (n - r), n - r, dtype=torch.int32, device=dev)
    every = torch.ones(b, r, dtype=torch.bool, device=dev)  # every pair active, every destination kept (read only)
    return BipartitePlan(keep=keep, src=starts + 2 * src_idx, dst_row=out_starts + n_unm + dst_idx,
                         score=best.gather(1, src_idx), active=every, same=same, first=~(same & earlier).any(-1),
                         dst_kept=every, cu_seqlens=cu, lens=(n - r,) * b, r=(r,) * b)


# --- applies --------------------------------------------------------------------------------------------


def merge_wavg(plan: BipartitePlan, tokens: PackedTokens) -> PackedTokens:
    """The reference's ``merge_wavg``: each destination becomes Σ sizeᵢ·xᵢ / Σ sizeᵢ over itself and its
    sources, its size the sum, its ``pos`` the smallest ``pos`` merged."""
    return merge_weighted(plan, tokens, tokens.size)


def merge_weighted(plan: BipartitePlan, tokens: PackedTokens, weight: Tensor) -> PackedTokens:
    """Like :func:`merge_wavg` with the average weighted by ``weight`` [N] (e.g. size × saliency) instead
    of size; the output ``size`` is still the sum of sizes.

    Computed on the receiving rows only: untouched tokens are copied exactly, and each receiving row is
    written once (by the first of its sources), so gradients are not double counted."""
    if plan.r_max == 0:
        return tokens
    x, size, pos = tokens.x, tokens.size, tokens.pos
    b, r_max = plan.src.shape
    n_out = plan.n_out
    flat_src = plan.src.flatten()
    write_row = plan.write_row()
    pos_row = torch.where(plan.active, plan.dst_row, n_out).flatten()
    out_x = x.index_select(0, plan.keep)
    out_size = size.index_select(0, plan.keep)
    out_pos = pos.index_select(0, plan.keep)
    kept = plan.dst_kept.flatten()
    onehot = plan.same.to(x.dtype)
    src_s = size.index_select(0, flat_src).view(b, r_max)
    dst_s = out_size.index_select(0, write_row) * kept.to(size.dtype)
    size_sum = dst_s + (onehot @ src_s.to(x.dtype).unsqueeze(2)).flatten().to(size.dtype)
    if weight is size:
        src_w, dst_w, w_sum = src_s, dst_s, size_sum
    else:
        out_w = weight.index_select(0, plan.keep)
        src_w = weight.index_select(0, flat_src).view(b, r_max)
        dst_w = out_w.index_select(0, write_row) * kept.to(weight.dtype)
        w_sum = dst_w + (onehot @ src_w.to(x.dtype).unsqueeze(2)).flatten().to(weight.dtype)
    src_x = x.index_select(0, flat_src).view(b, r_max, -1)
    # per clip, Σ w·x of every source merging into the same row (a one-hot product, batched over clips)
    num = out_x.index_select(0, write_row) * dst_w.unsqueeze(1).to(x.dtype)
    num = num + (onehot @ (src_x * src_w.unsqueeze(2).to(x.dtype))).flatten(0, 1)
    # in place: these are fresh gathers (index_select keeps nothing of its output for backward), so the
    # full [N_out, D] matrix is not copied a second time
    out_x = out_x.index_copy_(0, write_row, num / w_sum.unsqueeze(1).to(x.dtype))[:n_out]
    out_size = out_size.index_copy_(0, write_row, size_sum)[:n_out]
    out_pos = out_pos.scatter_reduce_(0, pos_row, pos.index_select(0, flat_src), reduce="amin")[:n_out]
    return tokens.replace(x=out_x, size=out_size, pos=out_pos, cu_seqlens=plan.cu_seqlens, lens=plan.lens)


def drop(plan: BipartitePlan, tokens: PackedTokens) -> PackedTokens:
    """The sources are discarded (Pollard & Wray's drop); the rest keep the plan's order and their sizes,
    scaled by :func:`conserve_size`."""
    if plan.r_max == 0:
        return tokens
    keep = plan.keep[:plan.n_out]
    out = tokens.replace(x=tokens.x.index_select(0, keep), size=tokens.size.index_select(0, keep),
                         pos=tokens.pos.index_select(0, keep), cu_seqlens=plan.cu_seqlens, lens=plan.lens)
    return conserve_size(tokens, out)


def conserve_size(before: PackedTokens, after: PackedTokens) -> PackedTokens:
    """``after`` with each clip's sizes scaled by one factor so they sum to the clip's sizes in ``before``:
    the interface's rule (sizes per clip count the tokens that entered, docs/architecture.md §3), as STA keeps it after
    pruning. A per-clip constant leaves size-weighted pooling and proportional attention (a constant added
    to all of a clip's logits) unchanged, so a rule that discards tokens (the reference resets their sizes
    to 1 or zeroes them) pools and attends as its authors' code does while nothing was merged before."""
    b = before.batch_size
    dt = before.size.dtype
    total_in = torch.zeros(b, dtype=dt, device=before.size.device).index_add_(0, before.seq_ids(), before.size)
    ids = after.seq_ids()
    total_out = torch.zeros(b, dtype=dt, device=before.size.device).index_add_(0, ids, after.size)
    return after.replace(size=after.size * (total_in / total_out).index_select(0, ids))


