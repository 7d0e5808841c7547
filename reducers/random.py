"""``random`` — random tubelet masking at the input.

Rule: for each clip, keep a fixed number of its T'·H'·W' tubelets chosen uniformly at random without
replacement; the rest are never embedded. The number is ``count`` when given, else
``max(1, round(keep · T'·H'·W'))``. Draws come from a ``torch.Generator`` seeded with ``seed`` when the
reducer is built, so two reducers built with the same parameters make the same choices, call for call.

This is both a baseline (at RLT's mean keep ratio it is the fair comparison the RLT paper makes: the
same token budget, spent without looking at the content) and the training-time masking that RLT is
combined with (RLT paper §4, "RLT + random masking").

Kept tubelets get run length 1 (random masking has no notion of runs).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import Reducer, ReducerParamError, Selection, grid_of
from .registry import register_reducer


@register_reducer("random")
@dataclass(repr=False)
class RandomMasking(Reducer):
    keep: float = field(default=0.5, metadata={"help": "fraction of tubelets kept per clip, in (0, 1]"})
    count: int | None = field(default=None, metadata={"help": "exact tubelets kept per clip (overrides keep)"})
    seed: int = field(default=0, metadata={"help": "seed of the masking generator"})
    tubelet: int = field(default=2, metadata={"help": "frames per tubelet"})
    patch: int = field(default=16, metadata={"help": "tubelet height and width in pixels"})

    def validate(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) or not 0.0 < self.keep <= 1.0:
            raise ReducerParamError(f"random: keep must be a fraction in (0, 1], got {self.keep!r}")
        if self.count is not None and (isinstance(self.count, bool) or not isinstance(self.count, int)
                                       or self.count < 1):
            raise ReducerParamError(f"random: count must be a positive integer or None, got {self.count!r}")
        for name in ("tubelet", "patch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ReducerParamError(f"random: {name} must be a positive integer, got {v!r}")
        self._gen = torch.Generator().manual_seed(int(self.seed))

    def kept_per_clip(self, n: int) -> int:
        if self.count is not None:
            if self.count > n:
                raise ReducerParamError(f"random: count={self.count} exceeds the {n} tubelets of a clip")
            return self.count
        return max(1, min(n, round(self.keep * n)))

    def select(self, video: Tensor) -> Selection:
        t, h, w = grid_of(video, self.tubelet, self.patch)
        b, n = video.shape[0], t * h * w
        k = self.kept_per_clip(n)
        scores = torch.rand(b, n, generator=self._gen)
        idx = scores.argsort(dim=1)[:, :k]
        keep = torch.zeros(b, n, dtype=torch.bool)
        keep.scatter_(1, idx, True)
        keep = keep.view(b, t, h, w).to(video.device)
        return Selection(keep=keep, lengths=keep.long())
