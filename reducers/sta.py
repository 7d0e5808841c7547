"""``sta`` — Semantic-aware Temporal Accumulation pruning (Ding et al., ICCV 2023; reference code
Mark12Ding/STA, ``model_vit.py``).

Rule (docs/architecture.md §4). After three whole blocks — 0, depth//3 and 2·depth//3 (``after_block``) — each
clip's tokens are put in original order (by ``pos``: time, then raster) and grouped in time; every
group loses ``r`` tokens (dropped, not merged):

* **Groups.** Stage s ∈ {0, 1, 2} uses G_s = T'/2^s groups of 2^s consecutive time steps: a token whose
  first tubelet lies at time t belongs to group t // 2^s. For T' = 8 that is the paper's 8, 4, 2 groups
  (the reference hard-codes 8/4/2); T' = 16 gives 16, 8, 4 and T' = 4 gives 4, 2, 1 — a group always
  spans the same 1, 2, 4 time steps, so the stages prune at the same temporal granularity whatever the
  clip length. T' must be a multiple of 4 (:meth:`STA.check_geometry` raises otherwise). Only T' = 8 is
  what the paper defines; any other T' (4/2/1 groups for 8-frame clips, 16/8/4 for 32-frame ones) is
  this generalisation, and :meth:`STA.geometry_note` says so for the report to label such rows.
* **Walk.** Stages 0 and 2 walk the groups forward in time, stage 1 (after block depth//3; "stage 2"
  in docs/architecture.md's count from 1) backwards, as the reference's ``perm``; the first group of the walk is
  the first non-empty one.
* **First group**: ToMe-style bipartite split of the group's tokens (in order) into even and odd; each
  even token's best cosine match among the odd ones; the ``r`` even tokens with the highest match are
  dropped.
* **Later groups**: with K the cosine-normalised, head-averaged keys of this group (n tokens) and K⁻
  the keys of the previous group in the walk, with masses s⁻, A = softmax over this group's tokens of
  K·K⁻ᵀ (each previous token spreads one unit of its mass over the current tokens) and s = A·s⁻, the
  accumulated temporal redundancy. With a = ‖x‖₁ (token activation, the block's output), min-max
  normalised within the group, the score is s · (1 − a); the n − r lowest scores are kept. Their masses,
  renormalised to sum to 1, and keys become s⁻ and K⁻ for the next group.
* **Which previous keys** (the authors' code is the reference, docs/architecture.md §4): the second group of the
  walk is linked to **all** of the first group's keys, dropped ones included, with uniform mass — the
  reference computes ``m_t`` for t = 1 from ``m_0``, the first group before its r tokens are cut; every
  later group is linked to the previous group's *kept* keys and their carried masses.
* **Output**: the kept tokens of every group, in original temporal (``pos``) order.

Token counts on a full clip: ViT-L (grid (8, 14, 14), depth 24) with r = 64 gives 1568 → 8·(196 − 64) =
1056 after block 0 → 4·(264 − 64) = 800 after block 8 → 2·(400 − 64) = 672 after block 16.

Batching. All clips and groups of a stage are processed at once (:func:`sta_stage`), on a [B, G, C]
layout of each clip's tokens in time order; only the walk's chain of masses steps from group to group, as
the reference's loop over T does. Full clips fill every group, so the layout is the reference's [B, T, N]
view and every output size is known on the host: nothing is read back from the device. Content-adaptive
clips (after RLT) are padded to the largest group with masked slots that sort last, so a clip's choices
never depend on its batch-mates; their [B, G] group sizes, which set the output size, are read once a stage
(3 reads a forward, where the per-clip, per-group loop made hundreds).

Departures from the reference, all deliberate:

* the reference leaves tokens in its gather order (odd tokens first, then survivors sorted by score),
  so its later even/odd splits run over a scrambled order; we keep original order throughout;
* clips shorter than the full geometry (packed, content-adaptive input, e.g. after RLT) are grouped by
  their tokens' time, empty groups are skipped, and a group of n tokens loses min(r, ⌊n/2⌋) so no group
  empties; full clips lose exactly r per group (``check_geometry`` guarantees r ≤ ⌊n/2⌋ there);
* ``size``: STA drops tokens, but the interface keeps per-clip sizes summing to the tokens that entered
  (docs/architecture.md §3), so the kept tokens' sizes are scaled by n_in / n_out per clip. A per-clip constant
  factor leaves size-weighted pooling equal to the reference's plain mean over the kept tokens (and,
  after ToMe-merged input, scales by Σ size_in / Σ size_kept, keeping relative weights).

Parameter: ``r`` (int ≥ 0, default 64) tokens dropped per temporal group per stage; ``r = 0`` is the
baseline, token for token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import PackedTokens, Reducer, ReducerParamError, lengths
from .registry import register_reducer

STAGES = 3
PAPER_T = 8  # the paper's and the reference's only geometry: 16 frames, tubelet 2


def stage_layers(depth: int) -> tuple[int, int, int]:
    """The blocks after which STA prunes: 0, depth//3, 2·depth//3."""
    return 0, depth // 3, 2 * depth // 3


def _rank(values: Tensor, descending: bool) -> Tensor:
    """Each entry's place in a stable sort along the last dim (0 = first)."""
    order = values.argsort(dim=-1, descending=descending, stable=True)
    ranks = torch.arange(values.shape[-1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks)


def bipartite_drop(metric: Tensor, valid: Tensor, r: Tensor) -> Tensor:
    """The first group's rule, batched: metric [B, C, d] (normalised), ``valid`` [B, C] (a group's tokens
    first, then padding), r [B] → keep [B, C]: the r even tokens whose best cosine match among the odd
    tokens is highest are dropped."""
    keep = valid.clone()
    if metric.shape[1] < 2:
        return keep
    scores = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)
    scores = scores.masked_fill(~valid[:, 1::2].unsqueeze(1), -math.inf)
    best = scores.max(dim=-1).values.masked_fill(~valid[:, 0::2], -math.inf)  # padding sorts last
    keep[:, 0::2] &= _rank(best, descending=True) >= r.unsqueeze(1)
    return keep


def link(metric: Tensor, prev_metric: Tensor, valid: Tensor) -> Tensor:
    """A = softmax over the current tokens of K·K⁻ᵀ, batched: metric [..., C, d] of a group, prev_metric
    [..., C⁻, d] of the group before it, ``valid`` [..., C] → [..., C, C⁻] (0 on padded rows): each previous
    token spreads one unit of mass over the current tokens."""
    logits = (metric @ prev_metric.transpose(-1, -2)).masked_fill(~valid.unsqueeze(-1), -math.inf)
    return logits.softmax(dim=-2).masked_fill(~valid.unsqueeze(-1), 0.0)  # an empty group: 0, not NaN


def accumulate(attn: Tensor, prev_mass: Tensor, act: Tensor, valid: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """A later group's rule, batched: attn [B, C, C⁻] from :func:`link`, the previous group's masses
    prev_mass [B, C⁻] (0 where not linked), L1 activations act [B, C], ``valid`` [B, C], r [B] →
    (keep [B, C], masses [B, C] of the kept tokens renormalised to sum to 1, 0 elsewhere)."""
    mass = (attn @ prev_mass.unsqueeze(-1)).squeeze(-1)
    lo = act.masked_fill(~valid, math.inf).amin(dim=-1, keepdim=True)
    hi = act.masked_fill(~valid, -math.inf).amax(dim=-1, keepdim=True)
    act = torch.where(hi > lo, (act - lo) / (hi - lo), torch.zeros_like(act))
    score = (mass * (1.0 - act)).masked_fill(~valid, math.inf)  # padding sorts last
    keep = _rank(score, descending=False) < (valid.sum(-1) - r).unsqueeze(1)
    m = mass * keep
    total = m.sum(dim=-1, keepdim=True)
    uniform = keep / keep.sum(dim=-1, keepdim=True).clamp(min=1)
    return keep, torch.where(total > 0, m / total, uniform)


def first_group_keep(metric: Tensor, r: int) -> Tensor:
    """One group: metric [n, d] (normalised) → sorted indices of the n − r tokens :func:`bipartite_drop`
    keeps."""
    n = metric.shape[0]
    valid = torch.ones(1, n, dtype=torch.bool, device=metric.device)
    return bipartite_drop(metric.unsqueeze(0), valid, torch.tensor([r], device=metric.device))[0].nonzero()[:, 0]


def later_group_keep(metric: Tensor, act: Tensor, prev_metric: Tensor, prev_mass: Tensor,
                     r: int) -> tuple[Tensor, Tensor]:
    """One group: metric [n, d] and L1 activations ‖x‖₁ [n] of this group, the previous group's linked keys
    [m, d] and masses [m] → (sorted indices of the n − r kept tokens, their accumulated masses
    renormalised to sum to 1)."""
    n = metric.shape[0]
    valid = torch.ones(1, n, dtype=torch.bool, device=metric.device)
    attn = link(metric.unsqueeze(0), prev_metric.unsqueeze(0), valid)
    keep, mass = accumulate(attn, prev_mass.unsqueeze(0).to(attn.dtype), act.unsqueeze(0), valid,
                            torch.tensor([r], device=metric.device))
    kept = keep[0].nonzero()[:, 0]
    return kept, mass[0, kept]


@dataclass
class _Groups:
    """One stage's grouping of a packed batch, in walk order: ``index`` [B, G, C] the token (row of x) in
    each slot, ``valid`` [B, G, C] whether the slot holds one; ``by_time`` [B, n_max] each clip's tokens in
    original order (``by_time_valid`` where not padding); the output size on the host."""

    index: Tensor
    valid: Tensor
    by_time: Tensor
    by_time_valid: Tensor
    n_out: int
    lens_out: tuple[int, ...]


def _by_time(pos: Tensor, cu: Tensor, lens: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Each clip's tokens in original order (by pos, stable): (index [B, n_max] rows of x, valid [B, n_max],
    pos [B, n_max]); a view-shaped gather when every clip has n_max tokens, padded (last) otherwise."""
    b, n_max = len(lens), max(lens)
    starts = cu[:-1].long().unsqueeze(1)
    j = torch.arange(n_max, device=pos.device)
    if min(lens) == n_max:
        valid = torch.ones(b, n_max, dtype=torch.bool, device=pos.device)
        rows = starts + j
        p = pos.view(b, n_max)
    else:
        counts = lengths(cu).unsqueeze(1)
        valid = j < counts
        rows = starts + torch.minimum(j, counts - 1)  # padding repeats the clip's last token
        p = pos.index_select(0, rows.flatten()).view(b, n_max).masked_fill(~valid, torch.iinfo(pos.dtype).max)
    local = p.argsort(dim=1, stable=True)  # padding sorts last
    return rows.gather(1, local), valid, p.gather(1, local)


def _full_group_sizes(grid: tuple[int, int, int], r: int) -> list[int]:
    """Tokens per group of a full clip entering each stage: H'·W', then 2·(c − r) from the stage before."""
    c, out = grid[1] * grid[2], []
    for _ in range(STAGES):
        out.append(c)
        c = 2 * (c - min(r, c // 2))
    return out


def _groups(tokens: PackedTokens, stage: int, r: int, full_groups: bool) -> _Groups:
    """``full_groups``: the caller knows every group of every clip holds the full geometry's count."""
    t_, h_, w_ = tokens.grid
    span, n_groups = 2 ** stage, t_ // 2 ** stage
    lens = tokens.seqlens()
    b = len(lens)
    index, valid, pos = _by_time(tokens.pos, tokens.cu_seqlens, lens)
    group = (pos // (h_ * w_)).div(span, rounding_mode="floor").masked_fill(~valid, n_groups)
    walk = torch.arange(n_groups - 1, -1, -1) if stage == 1 else torch.arange(n_groups)
    walk = walk.to(index.device)
    full = _full_group_sizes(tokens.grid, r)[stage]
    if full_groups:
        # Full clips (no input-stage reducer): every group holds exactly `full` tokens, as in the reference's
        # [B, T, N] view, so the output size is known on the host and nothing is read back.
        if stage == 0:  # an interface invariant (distinct pos per clip), checked on the device
            expect = torch.arange(n_groups, device=group.device).repeat_interleave(full)
            torch._assert_async((group == expect).all(), "sta: a whole clip repeats a token position")
        kept = full - min(r, full // 2)
        return _Groups(index.view(b, n_groups, full)[:, walk], valid.view(b, n_groups, full)[:, walk], index,
                       valid, b * n_groups * kept, (n_groups * kept,) * b)
    # Content-adaptive clips (e.g. after RLT): group sizes depend on which tokens survived, and so does the
    # output size; reading the [B, G] counts is this stage's one device read.
    counts = torch.zeros(b, n_groups + 1, dtype=torch.long, device=index.device)
    counts = counts.scatter_add_(1, group, torch.ones_like(group))[:, :n_groups]
    host = counts.tolist()
    cap = max(max(row) for row in host)
    lens_out = tuple(sum(n - min(r, n // 2) for n in row) for row in host)
    first = F.pad(counts.cumsum(1), (1, 0))[:, :-1]  # where each group starts in time order
    k = torch.arange(cap, device=index.device)
    slot = (first.unsqueeze(2) + k).clamp(max=index.shape[1] - 1).flatten(1)
    g_index = index.gather(1, slot).view(b, n_groups, cap)
    g_valid = k < counts.unsqueeze(2)
    # walk order, empty groups moved to the end so that each clip's walk starts at its first non-empty group
    empty = (counts == 0)[:, walk]
    walk = walk[empty.to(torch.uint8).argsort(dim=1, stable=True)]  # [B, G]
    sel = walk.unsqueeze(2).expand(-1, -1, cap)
    return _Groups(g_index.gather(1, sel), g_valid.gather(1, sel), index, valid, sum(lens_out), lens_out)


def sta_stage(metric: Tensor, act: Tensor, groups: _Groups, r: int) -> Tensor:
    """One STA stage on every clip and group at once: metric [N, d] (normalised keys) and act [N] (L1
    activations) of the packed tokens → keep [N] bool.

    The walk along time is sequential by definition (a group's masses come from the previous group's kept
    tokens), so it steps through the groups as the reference's loop over T does; everything else — the
    first group's matching, every group's similarity to the group before it, the softmax — is one batched
    operation over clips and groups, and no step reads anything back from the device."""
    index, valid = groups.index, groups.valid
    b, n_groups, cap = index.shape
    m = metric.index_select(0, index.flatten()).view(b, n_groups, cap, -1)
    a = act.index_select(0, index.flatten()).view(b, n_groups, cap)
    n_in = valid.sum(-1)  # [B, G]
    r_g = n_in.div(2, rounding_mode="floor").clamp(max=r)
    keep = torch.zeros_like(valid)
    keep[:, 0] = bipartite_drop(m[:, 0], valid[:, 0], r_g[:, 0])
    # the second group links to all of the first group's tokens, with uniform mass (the reference's m_0)
    mass = valid[:, 0] / n_in[:, :1].clamp(min=1)
    if n_groups > 1:
        attn = link(m[:, 1:], m[:, :-1], valid[:, 1:])  # [B, G−1, C, C]: every link at once
        for g in range(1, n_groups):
            keep[:, g], mass = accumulate(attn[:, g - 1], mass, a[:, g], valid[:, g], r_g[:, g])
    out = torch.zeros(metric.shape[0] + 1, dtype=torch.bool, device=metric.device)
    return out.index_put_((torch.where(valid, index, metric.shape[0]).flatten(),), keep.flatten())[:-1]


@register_reducer("sta")
@dataclass(repr=False)
class STA(Reducer):
    """STA: drop r tokens per temporal group after blocks 0, depth//3, 2·depth//3."""

    r: int = field(default=64, metadata={"help": "tokens dropped per temporal group at each of the 3 stages"})

    def validate(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 0:
            raise ReducerParamError(f"sta: r must be an integer ≥ 0, got {self.r!r}")
        self._full_pos: tuple[Tensor, int] | None = None  # (pos, stage) of the last output with full groups

    def check_geometry(self, grid: tuple[int, int, int], depth: int) -> None:
        t_, h_, w_ = grid
        if t_ % (2 ** (STAGES - 1)):
            raise ReducerParamError(
                f"sta: cannot group T'={t_} time steps (grid {tuple(grid)}) into T', T'/2, T'/4 groups; "
                f"T' must be a multiple of 4 (e.g. 16 frames with tubelet 2 give T'=8)")
        if depth < STAGES:
            raise ReducerParamError(f"sta: needs a model of at least 3 blocks to prune after blocks 0, "
                                    f"depth//3, 2·depth//3; got depth {depth}")
        if self.r == 0:
            return
        per_step = h_ * w_  # tokens per time step of a full clip entering stage 0
        group = per_step
        for s in range(STAGES):
            if self.r > group // 2:
                raise ReducerParamError(
                    f"sta: r={self.r} is too large for a temporal group: at stage {s} (after block "
                    f"{stage_layers(depth)[s]}) a group of grid {tuple(grid)} holds {group} tokens and at "
                    f"most half ({group // 2}) can be dropped")
            group = 2 * (group - self.r)  # the next stage's group: two of this stage's, pruned

    def geometry_note(self, grid: tuple[int, int, int]) -> str | None:
        t_ = grid[0]
        if t_ == PAPER_T:
            return None
        groups = "/".join(str(t_ // 2 ** s) for s in range(STAGES))
        return (f"STA at T'={t_} (groups {groups}) generalises the paper, which defines T'={PAPER_T} "
                f"(groups 8/4/2) only")

    def after_block(self, tokens: PackedTokens, keys: Tensor | None, layer: int, depth: int) -> PackedTokens:
        if self.r == 0 or layer not in stage_layers(depth):
            return tokens
        if keys is None:
            raise RuntimeError("sta: this block's keys are unavailable because another reducer changed the "
                               "tokens after attention; STA cannot follow an in-block merging reducer")
        stage = stage_layers(depth).index(layer)
        t_, h_, w_ = tokens.grid
        lens = tokens.seqlens()
        # Groups are known to be full without looking at pos when the clips are whole at stage 0 (distinct
        # positions fill every slot), or when these are the very tokens this reducer left full at the stage
        # before (the same pos tensor: nothing moved them since).
        full_groups = (all(n == t_ * h_ * w_ for n in lens) if stage == 0
                       else self._full_pos is not None and tokens.pos is self._full_pos[0]
                       and self._full_pos[1] == stage - 1)
        self._full_pos = None
        with torch.no_grad():
            groups = _groups(tokens, stage, self.r, full_groups)
            metric = F.normalize(keys.mean(dim=1).float(), dim=-1)
            act = tokens.x.abs().sum(dim=-1).float()  # L1 activation of each token
            keep = sta_stage(metric, act, groups, self.r)
            # kept tokens in original temporal order, packed without reading their count back
            index, valid = groups.by_time, groups.by_time_valid
            kept = keep.index_select(0, index.flatten()).view_as(index) & valid
            n_out = groups.n_out
            dest = torch.where(kept, kept.flatten().cumsum(0).view_as(kept) - 1, n_out)
            idx = torch.empty(n_out + 1, dtype=torch.long, device=index.device)
            idx = idx.scatter_(0, dest.flatten(), index.flatten())[:n_out]
            counts = kept.sum(1)
            # conserve each clip's total size: one factor per clip, so pooling is unchanged
            size = tokens.size.index_select(0, index.flatten()).view_as(index).double()
            scale = (size * valid).sum(1) / (size * kept).sum(1)
            clip = torch.repeat_interleave(torch.arange(len(counts), device=idx.device), counts, output_size=n_out)
        cu = F.pad(counts.cumsum(0, dtype=torch.int32), (1, 0))
        pos = tokens.pos.index_select(0, idx)
        if full_groups and stage < STAGES - 1:  # kept only until the next stage: no tensor outlives a forward
            self._full_pos = (pos, stage)
        return tokens.replace(x=tokens.x.index_select(0, idx), pos=pos, cu_seqlens=cu, lens=groups.lens_out,
                              size=tokens.size.index_select(0, idx) * scale.index_select(0, clip).to(tokens.size.dtype))
