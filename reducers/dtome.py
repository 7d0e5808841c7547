"""``dtome`` — threshold merging (DToMe, the token-merging half of DyMU, Wang et al., NeurIPS 2025; reference
code MikeWangWZHL/dymu ``src/open_clip/tome.py``, ``src/open_clip_train/threshold_finder.py``).

Rule, in every block between attention and MLP (where ToMe merges), per clip: ToMe's bipartite matching
(:mod:`tokenbench.reducers.bipartite`: A/B alternation, cosine of the key metric, each A token's best B
partner), then **every** A token whose best edge is strictly above the layer's threshold τ_l merges into its
partner (size-weighted average, as ToMe), at most ⌊n/2⌋ per clip. The count per clip follows the content,
as RLT's does, but inside the model: a clip of repeated content merges more.

Calibration, with the model in the loop (:meth:`ThresholdMerge.calibrate_model`; the reference's
``batch_level_bipartite_soft_matching`` in training mode, run by ``threshold_finder.py``): batches of
train-split clips go through the model while each block ranks the best edges of *all* clips of the batch
together and merges the top ``r_l · B`` of them (so clips of a batch merge different counts, as at
inference), ``r_l`` the target schedule (``target_r``: an int, ``(r, inflection)`` or a per-layer list, as
ToMe's ``r``). The block's batch threshold is the score of the best edge left unmerged, clamped at 0 (the
reference's ``batch_threshold``), and τ_l is its mean over the batches (the reference's running average).
So on clips like the calibration clips the mean count per layer is about r_l, while each clip's count
varies with its content.

The runner calibrates before any measured work on clips of the dataset's *train* split, never the clips it
scores (``harness.run.models.calibrate_with_model``), records the clips used and the thresholds with the
cell, and caches them per configuration. Given ``thresholds`` (one per block), no calibration runs.

Deviations: the reference's inference path with batch size 1 caps nothing but ⌊n/2⌋, as here; its batched
inference path ranks over the batch with the threshold (the same counts per clip). Its optional
``max_r_per_instance`` cap is not offered. Protected class tokens do not exist in this backbone.

Parameters: ``target_r`` (calibration target: tokens merged per block on average; with ``inflection`` a
linear schedule, as ToMe's ``r``), ``thresholds`` (per
block; empty until calibrated), ``keys`` (``mean`` over heads or ``concat``), ``prop_attn``,
``calibration_clips`` (train clips, default 64) and ``calibration_batch`` (clips ranked together, default 8;
the reference ranks per batch of 128 images).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .base import PackedTokens, Reducer, ReducerParamError
from .bipartite import BatchRankCount, CosineScores, ThresholdCount, match, merge_wavg
from .registry import register_reducer
from .tome import KEY_METRICS, ToMe


@dataclass
class ModelCalibration:
    """What a model-in-the-loop calibration used and found (recorded with the cell)."""

    thresholds: list[float]
    batches: int
    clips: int
    split: str = "train"
    source: dict = field(default_factory=dict)  # the runner adds the dataset and how clips were chosen
    # mean tokens merged per block over the calibration batches (the batch ranking: the target on full clips)
    merged_per_layer: list[float] = field(default_factory=list)


@register_reducer("dtome")
@dataclass(repr=False)
class ThresholdMerge(Reducer):
    """Merge every A→B edge above a per-layer threshold calibrated for a target mean r per layer."""

    target_r: int | list[int] | tuple[int, float] = field(default=8, metadata={
        "help": "calibration target: tokens merged per block on average (int, per-layer list or (r, inflection))"})
    inflection: float = field(default=0.0, metadata={
        "help": "linear target schedule for an int target_r, in [-1, 1], as ToMe's"})
    thresholds: list[float] = field(default_factory=list, metadata={
        "help": "cosine threshold per block; empty: calibrated with the model on train clips before the run"})
    keys: str = field(default="mean", metadata={"help": "matching metric: 'mean' of the heads' keys or 'concat'"})
    prop_attn: bool = field(default=False, metadata={
        "help": "proportional attention: add log(size) to the attention logits"})
    calibration_clips: int = field(default=64, metadata={"help": "train-split clips the calibration sees"})
    calibration_batch: int = field(default=8, metadata={"help": "clips ranked together in a calibration batch"})

    calibrates_with_model: ClassVar[bool] = True

    def validate(self) -> None:
        # the target schedule is ToMe's r, checked and expanded by ToMe's own rules
        try:
            self._schedule = ToMe(r=self.target_r, inflection=self.inflection)
        except ReducerParamError as exc:
            raise ReducerParamError(
                f"dtome: target_r/inflection as ToMe's r: {str(exc).removeprefix('tome: ')}") from None
        if not isinstance(self.thresholds, (list, tuple)) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in self.thresholds):
            raise ReducerParamError(f"dtome: thresholds must be a list of numbers, got {self.thresholds!r}")
        self.thresholds = [float(t) for t in self.thresholds]
        if self.keys not in KEY_METRICS:
            raise ReducerParamError(f"dtome: keys must be one of {sorted(KEY_METRICS)}, got {self.keys!r}")
        if not isinstance(self.prop_attn, bool):
            raise ReducerParamError(f"dtome: prop_attn must be true or false, got {self.prop_attn!r}")
        for name in ("calibration_clips", "calibration_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ReducerParamError(f"dtome: {name} must be an integer ≥ 1, got {v!r}")

    def schedule(self, depth: int) -> list[int]:
        """The target tokens merged at each of ``depth`` blocks."""
        return self._schedule.schedule(depth)

    def check_geometry(self, grid: tuple[int, int, int], depth: int) -> None:
        try:
            self._schedule.check_geometry(grid, depth)
        except ReducerParamError as exc:
            raise ReducerParamError(f"dtome: target_r as ToMe's r: {str(exc).removeprefix('tome: ')}") from None
        if self.thresholds and len(self.thresholds) != depth:
            raise ReducerParamError(f"dtome: thresholds lists {len(self.thresholds)} blocks but the model has "
                                    f"{depth}")

    def budget_reducer(self) -> Reducer:
        """Its budget is its calibration target: ToMe at ``target_r`` (the batch ranking on a lone clip)."""
        return ToMe(r=self.target_r, inflection=self.inflection, keys=self.keys, prop_attn=self.prop_attn)

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int) -> PackedTokens:
        if not self.thresholds:
            raise ReducerParamError("dtome: no thresholds: calibrate with the model first (the runner does, "
                                    "before any measured work) or give thresholds=[one per block]")
        scores = CosineScores(KEY_METRICS[self.keys](keys))
        return merge_wavg(match(tokens, scores, ThresholdCount(self.thresholds[layer])), tokens)

    def calibrate_model(self, model: torch.nn.Module, batches: Iterable[Tensor]) -> ModelCalibration:
        """Find the thresholds with ``model`` in the loop on ``batches`` (model inputs [B, 3, T, H, W] of
        train-split clips): see the module docstring. Sets ``thresholds`` and returns what it used."""
        ranker = _BatchRanking(self)
        clips = n_batches = 0
        with torch.no_grad():
            for video in batches:
                model(video, reducer=ranker)
                clips += int(video.shape[0])
                n_batches += 1
        if not n_batches:
            raise ReducerParamError("dtome: calibration got no clips")
        depth = len(ranker.found)
        self.thresholds = [statistics.fmean(ranker.found[layer]) if ranker.found[layer] else 1.0
                           for layer in range(depth)]
        merged = [statistics.fmean(ranker.merged[layer]) if ranker.merged[layer] else 0.0 for layer in range(depth)]
        return ModelCalibration(thresholds=list(self.thresholds), batches=n_batches, clips=clips,
                                merged_per_layer=merged)


class _BatchRanking(Reducer):
    """The calibration pass: each block merges the top r_l·B edges of the whole batch and notes the
    threshold (the best edge left out) and the mean count merged per clip."""

    def __init__(self, target: ThresholdMerge):
        self.target = target
        self.prop_attn = target.prop_attn
        self.found: dict[int, list[float]] = {}
        self.merged: dict[int, list[float]] = {}

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int) -> PackedTokens:
        if not self.found:
            self.found = {i: [] for i in range(depth)}
            self.merged = {i: [] for i in range(depth)}
        r = self.target.schedule(depth)[layer]
        if r == 0:  # nothing to merge: a threshold above every cosine (the reference's initial 1.0)
            self.found[layer].append(1.0)
            self.merged[layer].append(0.0)
            return tokens
        count = BatchRankCount(r)
        plan = match(tokens, CosineScores(KEY_METRICS[self.target.keys](keys)), count)
        self.found[layer].append(count.threshold)
        self.merged[layer].append(statistics.fmean(plan.r))
        return merge_wavg(plan, tokens)
