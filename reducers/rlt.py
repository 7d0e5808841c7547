"""``rlt`` — Run-Length Tokenization (Choudhury et al., NeurIPS 2024; reference code rccchoudhury/rlt).

Rule (docs/architecture.md §4). On the ImageNet-normalised clip ``video`` [B, 3, T, H, W], cut into the model's
tubelets (``geometry``: ``tubelet`` frames × ``patch`` × ``patch`` pixels, told by the model with every
``select`` call) on the grid (T', H', W'):

* for t ≥ 1 the score of tubelet (t, h, w) is the mean absolute difference between the *last* frame of
  tubelet t and the *first* frame of tubelet t−1 at the same cell, averaged over the ``patch``×``patch``
  pixels and the 3 channels. With ``tubelet=2`` that compares frames 2t+1 and 2t−2 — the reference's
  ``x[:, :, 2k-1::k] - x[:, :, :-k:k]`` (the comparison spans the whole pair of tubelets, so slow drift
  within a tubelet counts);
* tubelet (t, h, w) is kept iff its score is **strictly** greater than ``threshold`` (τ); tubelet 0 is
  always kept (the reference pads the scores with a constant 255 in front);
* a kept tubelet's run length is the distance, in tubelets, to the next kept tubelet at the same
  cell, or to the end of the clip: 1 … T'. Per cell the lengths of the kept tubelets sum to T', so per
  clip they sum to T'·H'·W'. Dropped tubelets get length 0.

The scores are computed in float32 like the reference (``x.type(torch.float32)``), whatever the clip's
dtype. τ is on normalised pixels: 0.1 ≈ 0.1 · 0.226 · 255 ≈ 6 grey levels.

Run lengths are returned in ``Selection.lengths`` in grid (t, h, w) order, so they line up with the
kept tokens the model packs in raster order. (The reference's ``batched_get_token_lengths`` emits them
cell by cell, (h, w, t) order, which does not line up with its own (t, h, w) token order; we do not
copy that.) Kept tokens keep the position embedding of their own original slot (the model does this
for every selection).

Parameters (dataclass fields):

* ``threshold`` τ ≥ 0 (default 0.1, the paper's default);
* ``length_embedding`` (False): when True the runner builds the model with
  ``build_model(..., length_embedding=reducer.length_embedding)``, which adds a learned table of T' rows
  indexed by run length − 1 after the position embedding (RLT paper §3.2, "length encoding"; a
  train-time option: an off-the-shelf checkpoint has no such table).

Token count per clip is content-dependent: from H'·W' (a fully static clip, each cell one run of
length T') to T'·H'·W' (every tubelet changes). Random noise is never static, so timing RLT on noise
measures no reduction at all — time it on real clips.

:func:`rlt_keep_ratio` computes RLT's mean keep ratio over an iterable of video batches; random masking
uses it to spend the same token budget (``tokenbench.reducers.random``).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import VIDEOMAE, Geometry, Reducer, ReducerParamError, Selection, grid_of
from .registry import register_reducer


def check_threshold(value: object, who: str = "rlt", name: str = "threshold") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value:
        raise ReducerParamError(f"{who}: {name} (τ) must be a number ≥ 0, got {value!r}")
    if value < 0:
        raise ReducerParamError(f"{who}: {name} (τ) must be ≥ 0 (a mean absolute difference), got {value!r}")


def rlt_scores(video: Tensor, tubelet: int = 2, patch: int = 16) -> Tensor:
    """[B, T'−1, H', W'] float32: for tubelets t = 1 … T'−1, the mean |last frame of t − first frame of
    t−1| over each ``patch``×``patch`` cell and the 3 channels."""
    t_, h_, w_ = grid_of(video, tubelet, patch)
    b = video.shape[0]
    if t_ < 2:
        return video.new_zeros((b, 0, h_, w_), dtype=torch.float32)
    v = video if video.dtype == torch.float32 else video.float()
    last = v[:, :, 2 * tubelet - 1 :: tubelet]  # frames k·t + k − 1, t = 1 … T'−1
    first = v[:, :, : (t_ - 1) * tubelet : tubelet]  # frames k·(t − 1)
    diff = (last - first).abs_()  # [B, 3, T'−1, H, W]
    diff = diff.view(b, 3, t_ - 1, h_, patch, w_, patch)
    return diff.mean(dim=(1, 4, 6))


def run_lengths(keep: Tensor) -> Tensor:
    """keep [B, T', H', W'] bool → long run lengths: for a kept tubelet, the distance to the next kept
    tubelet at the same cell (or to T'); 0 where dropped."""
    t_ = keep.shape[1]
    steps = torch.arange(t_, device=keep.device).view(1, t_, 1, 1)
    at = torch.where(keep, steps, torch.full_like(steps, t_))  # own index if kept, else T'
    # next kept index strictly after t: a suffix minimum of `at` shifted by one step
    after = torch.cat([at[:, 1:], torch.full_like(at[:, :1], t_)], dim=1)
    nxt = after.flip(1).cummin(dim=1).values.flip(1)
    return torch.where(keep, nxt - steps, torch.zeros_like(steps))


def rlt_select(video: Tensor, threshold: float = 0.1, tubelet: int = 2, patch: int = 16) -> Selection:
    """RLT's selection of ``video`` [B, 3, T, H, W] (ImageNet-normalised) at τ = ``threshold``."""
    t_, h_, w_ = grid_of(video, tubelet, patch)
    b = video.shape[0]
    keep = torch.ones(b, t_, h_, w_, dtype=torch.bool, device=video.device)
    keep[:, 1:] = rlt_scores(video, tubelet, patch) > threshold
    return Selection(keep=keep, lengths=run_lengths(keep))


def rlt_keep_ratio(videos: Iterable[Tensor], threshold: float = 0.1, tubelet: int = 2, patch: int = 16) -> float:
    """RLT's mean keep ratio (kept tubelets / all tubelets, averaged over clips) on an iterable of
    ImageNet-normalised video batches [B, 3, T, H, W] (single clips [3, T, H, W] are accepted too).

    Clips may differ in size between batches; each clip counts once, whatever its size."""
    check_threshold(threshold)
    total, clips = 0.0, 0
    for batch in videos:
        if batch.dim() == 4:
            batch = batch.unsqueeze(0)
        keep = rlt_select(batch, threshold, tubelet, patch).keep.flatten(1)
        n = keep.shape[1]
        total += sum(k / n for k in keep.sum(1).tolist())  # exact counts, float64 ratios
        clips += batch.shape[0]
    if clips == 0:
        raise ValueError("rlt_keep_ratio: no clips in the data given")
    return total / clips


@register_reducer("rlt")
@dataclass(repr=False)
class RLT(Reducer):
    """Run-Length Tokenization: drop tubelets that repeat the one before them; keep run lengths."""

    threshold: float = field(default=0.1, metadata={
        "help": "τ: keep a tubelet iff the mean |Δ| of its last frame vs the previous tubelet's first "
                "frame (ImageNet-normalised pixels) is > τ"})
    length_embedding: bool = field(default=False, metadata={
        "help": "build the model with a learned run-length embedding (T' rows; train-time option)"})

    def validate(self) -> None:
        check_threshold(self.threshold)
        if not isinstance(self.length_embedding, bool):
            raise ReducerParamError(f"rlt: length_embedding must be true or false, got {self.length_embedding!r}")

    def select(self, video: Tensor, geometry: Geometry = VIDEOMAE) -> Selection:
        return rlt_select(video, self.threshold, geometry.frames, geometry.pixels)
