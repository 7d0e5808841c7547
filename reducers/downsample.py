"""``temporal`` and ``spatial`` — plain downsampling at the input, the cheapest competitors.

Both are input-stage reducers: they choose which tubelets of the model's grid (T', H', W') are embedded,
independent of the content, the same for every clip. Kept tokens keep the position embedding of their
own original slot (the model does this for every selection), so a kept token sits where it sat.

``temporal`` — fewer frames. Keeps every tubelet of some time steps and none of the others:

* ``stride`` k: the time steps t with t mod k = 0, the **first** step of each group of k. The first, so a
  clip still starts where its sampler started it and the kept steps are those frame striding
  (``video[:, :, ::2k]``, then the usual tubelets) would give: the model sees the clip at 1/k of its frame
  rate. When k does not divide T' the last group is shorter (T'=4, k=3 keeps steps 0 and 3).
* ``scale`` s: n = max(1, round(s·T')) steps, evenly spaced, t_i = ⌊i·T'/n⌋ (again the first step of
  each of n equal groups; ``stride`` k is ``scale`` 1/k when k divides T'). Reaches the budgets an
  integer stride cannot: on T' = 4, 3 of 4 steps (0.75).

Run lengths are those of RLT (``tokenbench.reducers.rlt.run_lengths``): a kept tubelet stands for the
steps up to the next kept one at its cell (k for a stride), so the length embedding sees what RLT would
give a clip that is static between kept steps.

``spatial`` — a coarser token grid. What a reviewer means by "plain downsampling" of the input is a
lower resolution; with a fixed tubelet that is a coarser grid of the *same* tubelets, nearest-neighbour:
keep one cell of the H'×W' grid in each k×k block (``stride`` k: cells with h, w ≡ 0 mod k, the top-left
of each block, as ``temporal`` keeps the first step) or ``scale`` s: n_h = max(1, round(s·H')) rows and
n_w = max(1, round(s·W')) columns, evenly spaced (h_i = ⌊i·H'/n_h⌋), so about s² of the tokens. Every time
step keeps the same cells. It does not average-pool: pooling 2×2 tubelets' pixels makes a token the
embedding was never trained on (a 32×32 patch squeezed into 16×16), while a kept tubelet is exactly a
token of the un-reduced model; pooling tokens after the embedding is ToMe-style merging, compared
elsewhere. Run lengths are 1 (a spatial drop does not lengthen a run in time).

Reach on the default suites' 4×7×7 grid (mean tokens per block = keep ratio, nothing changes in the
blocks): temporal 1/4, 2/4, 3/4 (no 0.9 or 0.3: T' has 4 steps); spatial scale² on 7 rows: 36/49,
25/49, 16/49 (and 42/49 with 7×6, which ``scale`` does not give: rows and columns scale alike).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import VIDEOMAE, Geometry, Reducer, ReducerParamError, Selection
from .registry import register_reducer
from .rlt import run_lengths


def evenly_spaced(total: int, n: int) -> Tensor:
    """n of ``range(total)``, the first of each of n equal groups: ⌊i·total/n⌋, i = 0 … n−1."""
    return torch.div(torch.arange(n) * total, n, rounding_mode="floor")


def _steps(total: int, stride: int | None, scale: float | None) -> Tensor:
    """bool [total]: the kept steps of one axis."""
    keep = torch.zeros(total, dtype=torch.bool)
    if stride is not None:
        keep[::stride] = True
    else:
        keep[evenly_spaced(total, max(1, min(total, round(scale * total))))] = True
    return keep


class _Downsample(Reducer):
    """The parameters both rules share: ``stride`` or ``scale``, one of them (neither: ``stride`` 2)."""

    stride: int | None
    scale: float | None

    def validate(self) -> None:
        if self.stride is not None and self.scale is not None:
            raise ReducerParamError(f"{self.name}: stride={self.stride} and scale={self.scale} exclude each "
                                    "other; give one")
        if self.stride is None and self.scale is None:
            self.stride = 2  # neither given: one in two (TOML has no null, so scale alone must be enough)
        if self.stride is not None and (isinstance(self.stride, bool) or not isinstance(self.stride, int)
                                        or self.stride < 1):
            raise ReducerParamError(f"{self.name}: stride must be a positive integer, got {self.stride!r}")
        if self.scale is not None and (isinstance(self.scale, bool) or not isinstance(self.scale, (int, float))
                                       or not 0.0 < self.scale <= 1.0):
            raise ReducerParamError(f"{self.name}: scale must be a fraction in (0, 1], got {self.scale!r}")


@register_reducer("temporal")
@dataclass(repr=False)
class TemporalDownsample(_Downsample):
    """Keep the tubelets of one time step in k (fewer frames), the first step of each group."""

    stride: int | None = field(default=None, metadata={
        "help": "keep time steps t with t mod stride = 0, the first of each group (2 unless scale is given)"})
    scale: float | None = field(default=None, metadata={
        "help": "instead of stride: keep round(scale·T') time steps, evenly spaced"})

    def select(self, video: Tensor, geometry: Geometry = VIDEOMAE) -> Selection:
        t, h, w = geometry.grid(video)
        steps = _steps(t, self.stride, self.scale).to(video.device)
        keep = steps.view(1, t, 1, 1).expand(video.shape[0], t, h, w).contiguous()
        return Selection(keep=keep, lengths=run_lengths(keep))


@register_reducer("spatial")
@dataclass(repr=False)
class SpatialDownsample(_Downsample):
    """A coarser token grid: one cell of each k×k block (its top-left), the same cells at every step."""

    stride: int | None = field(default=None, metadata={
        "help": "keep cells (h, w) with h and w ≡ 0 mod stride, one per stride×stride block (2 unless scale "
                "is given)"})
    scale: float | None = field(default=None, metadata={
        "help": "instead of stride: keep round(scale·H') rows and round(scale·W') columns, evenly spaced"})

    def select(self, video: Tensor, geometry: Geometry = VIDEOMAE) -> Selection:
        t, h, w = geometry.grid(video)
        rows = _steps(h, self.stride, self.scale)
        cols = _steps(w, self.stride, self.scale)
        cells = (rows.view(h, 1) & cols.view(1, w)).to(video.device)
        keep = cells.view(1, 1, h, w).expand(video.shape[0], t, h, w).contiguous()
        return Selection(keep=keep, lengths=keep.long())
