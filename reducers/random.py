"""``random`` — random tubelet masking at the input.

Rule: for each clip, keep a fixed number of its T'·H'·W' tubelets chosen uniformly at random without
replacement; the rest are never embedded. The number is ``count`` when given, else
``max(1, round(keep · T'·H'·W'))``. Draws come from a ``torch.Generator`` seeded with ``seed`` when the
reducer is built, so two reducers built with the same parameters make the same choices, call for call.

This is both a baseline (at RLT's mean keep ratio it is the fair comparison the RLT paper makes: the
same token budget, spent without looking at the content) and the training-time masking that RLT is
combined with (RLT paper §4, "RLT + random masking").

Kept tubelets get run length 1 (random masking has no notion of runs).

**Matching RLT's token budget.** With ``match_rlt=τ`` the keep fraction is not set by hand but measured:
``calibrate(videos)`` runs RLT at threshold τ (on the model's tubelets) over ``videos`` — an
iterable of ImageNet-normalised batches [B, 3, T, H, W], the same data the comparison runs on — and sets
``keep`` to RLT's mean keep ratio there (:func:`tokenbench.reducers.rlt.rlt_keep_ratio`). The runner calls
it, before any timed or evaluated work, as::

    if hasattr(reducer, "calibrate"):
        reducer.calibrate(batches)      # iterable of normalised [B, 3, T, H, W] tensors

``calibrate`` returns the fraction it set (``None``, without reading ``videos``, when ``match_rlt`` is
unset). After calibration ``params()`` carries the measured ``keep`` next to ``match_rlt``, so results
record the budget actually used. A reducer built with ``match_rlt`` refuses to ``select`` before it is
calibrated rather than silently masking at the default fraction. ``keep``, ``count`` and ``match_rlt``
exclude one another (given together, one would run and the record's label would name the other);
``keep`` unset means 0.5.

:meth:`RandomMasking.select_among` masks within an existing selection (RLT's kept tubelets); the
``rlt_random`` reducer (``tokenbench.reducers.compose``) uses it for RLT + random masking.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import VIDEOMAE, Geometry, Reducer, ReducerParamError, Selection
from .registry import register_reducer

DEFAULT_KEEP = 0.5


@register_reducer("random")
@dataclass(repr=False)
class RandomMasking(Reducer):
    calibrates = True  # match_rlt: keep is RLT's keep ratio on the cell's clips
    train_only = True  # as RLT's training-time masking: evaluated without it
    keep: float | None = field(default=None, metadata={
        "help": f"fraction of tubelets kept per clip, in (0, 1] ({DEFAULT_KEEP} unless count or match_rlt is given)"})
    count: int | None = field(default=None, metadata={"help": "exact tubelets kept per clip (instead of keep)"})
    seed: int = field(default=0, metadata={"help": "seed of the masking generator"})
    match_rlt: float | None = field(default=None, metadata={
        "help": "RLT threshold τ whose mean keep ratio calibrate(videos) measures and uses as keep"})

    def validate(self) -> None:
        if self.keep is not None and (isinstance(self.keep, bool) or not isinstance(self.keep, (int, float))
                                      or not 0.0 < self.keep <= 1.0):
            raise ReducerParamError(f"random: keep must be a fraction in (0, 1], got {self.keep!r}")
        # two ways of setting the budget at once would run one and be labelled with the other
        if self.keep is not None and self.count is not None:
            raise ReducerParamError(f"random: keep={self.keep} and count={self.count} exclude each other; give one")
        if self.keep is not None and self.match_rlt is not None and not getattr(self, "_calibrated", False):
            raise ReducerParamError(f"random: keep={self.keep} and match_rlt={self.match_rlt} exclude each other "
                                    "(match_rlt measures keep on the data being compared); give one")
        if self.count is not None and (isinstance(self.count, bool) or not isinstance(self.count, int)
                                       or self.count < 1):
            raise ReducerParamError(f"random: count must be a positive integer or None, got {self.count!r}")
        if self.match_rlt is not None:
            from .rlt import check_threshold

            check_threshold(self.match_rlt, "random", "match_rlt")
            if self.count is not None:
                raise ReducerParamError("random: match_rlt and count exclude each other (match_rlt sets keep)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ReducerParamError(f"random: seed must be an integer, got {self.seed!r}")
        self._gen = torch.Generator().manual_seed(int(self.seed))
        self._calibrated = getattr(self, "_calibrated", False)

    def calibrate(self, videos: Iterable[Tensor], geometry: Geometry = VIDEOMAE) -> float | None:
        """Set ``keep`` to RLT's mean keep ratio at τ = ``match_rlt`` on ``videos`` (an iterable of
        ImageNet-normalised batches [B, 3, T, H, W]); returns it. A no-op returning ``None`` (``videos``
        untouched) when ``match_rlt`` is unset."""
        if self.match_rlt is None:
            return None
        from .rlt import rlt_keep_ratio

        self.keep = rlt_keep_ratio(videos, self.match_rlt, geometry.frames, geometry.pixels)
        self._calibrated = True
        return self.keep

    def fresh(self) -> RandomMasking:
        if not self._calibrated:
            return type(self)(**self.params())
        twin = type(self)(**{**self.params(), "keep": None})  # the measured keep travels as calibration
        twin.keep, twin._calibrated = self.keep, True
        return twin

    @property
    def fraction(self) -> float:
        """The keep fraction in force: ``keep`` (measured, under ``match_rlt``), else 0.5."""
        return DEFAULT_KEEP if self.keep is None else float(self.keep)

    def _check_calibrated(self) -> None:
        if self.match_rlt is not None and not self._calibrated:
            raise RuntimeError(
                f"random: match_rlt={self.match_rlt} needs calibrate(videos) before select(): the keep "
                "fraction is RLT's mean keep ratio on the data being compared")

    def check_geometry(self, grid: tuple[int, int, int], depth: int) -> None:
        super().check_geometry(grid, depth)
        n = grid[0] * grid[1] * grid[2]
        if self.count is not None and self.count > n:
            raise ReducerParamError(f"random: count={self.count} exceeds the {n} tubelets of a clip of token grid "
                                    f"{tuple(grid)}")

    def kept_per_clip(self, n: int) -> int:
        if self.count is not None:
            if self.count > n:
                raise ReducerParamError(f"random: count={self.count} exceeds the {n} tubelets of a clip")
            return self.count
        return max(1, min(n, round(self.fraction * n)))

    def select(self, video: Tensor, geometry: Geometry = VIDEOMAE) -> Selection:
        self._check_calibrated()
        t, h, w = geometry.grid(video)
        b, n = video.shape[0], t * h * w
        k = self.kept_per_clip(n)
        scores = torch.rand(b, n, generator=self._gen)
        idx = scores.argsort(dim=1)[:, :k]
        keep = torch.zeros(b, n, dtype=torch.bool)
        keep.scatter_(1, idx, True)
        keep = keep.view(b, t, h, w).to(video.device)
        return Selection(keep=keep, lengths=keep.long())

    def refine(self, earlier: Selection, video: Tensor, geometry: Geometry = VIDEOMAE) -> Selection:
        """After another input stage: masking *among* the tubelets it kept (:meth:`select_among`);
        survivors keep their run lengths."""
        keep = self.select_among(earlier.keep)
        return Selection(keep=keep, lengths=earlier.lengths * keep)

    def select_among(self, keep: Tensor) -> Tensor:
        """Mask within a selection: ``keep`` [B, T', H', W'] bool → the subset of it this reducer keeps.

        Per clip, of its n kept tubelets ``kept_per_clip(n)`` survive (``keep`` · n rounded, at least 1;
        or ``count``, capped at n), uniformly at random. Draws one score per grid slot from the
        generator, so the choice is deterministic under ``seed``."""
        self._check_calibrated()
        b = keep.shape[0]
        flat = keep.reshape(b, -1).cpu()
        scores = torch.rand(flat.shape, generator=self._gen)
        scores[~flat] = 2.0  # never chosen: real scores lie in [0, 1)
        order = scores.argsort(dim=1)
        out = torch.zeros_like(flat)
        for i, n in enumerate(flat.sum(1).tolist()):
            k = min(n, self.count) if self.count is not None else max(1, min(n, round(self.fraction * n)))
            out[i, order[i, :k]] = True
        return out.view(keep.shape).to(keep.device)
