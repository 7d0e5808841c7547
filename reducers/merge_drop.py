"""The merge-vs-drop family of Pollard & Wray, "Video, How Do Your Tokens Merge?" (eLVM@CVPR 2025; reference
code sjpollard/video-how-do-your-tokens-merge, ``tome/merge.py`` and ``tome/patch/videomae.py``).

Each is ToMe (:mod:`tokenbench.reducers.tome`: same place in the block, same ``r`` schedule, same A/B
alternation and output order, same ``keys`` metric choice, ``mean`` or ``concat`` over heads) with one part
of the step on the bipartite core (:mod:`tokenbench.reducers.bipartite`) changed:

* ``tome_drop`` — ToMe's matching, the ``r`` sources *dropped* instead of merged (their
  ``bipartite_soft_matching_drop``, mode ``drop``): the destinations are left as they are;
* ``random_merge`` — uniform random edge scores instead of cosine (their mode ``random_merge``): a random
  partner in B for every A token and a random choice of which ``r`` A tokens go; then ToMe's merge. Drawn
  directly as a uniform partner and a uniform rank per A token (:class:`bipartite.RandomScores`), the
  distribution their [|A|, |B|] matrix of uniform scores gives, without building the matrix;
* ``random_drop`` — the same random matching, sources dropped (their mode ``random_drop``);
* ``tome_hybrid`` — ToMe's matching and merge, but a destination with an incoming edge scored below
  ``threshold`` is not merged *into*: it gives up its own token and becomes the size-weighted average of
  its sources alone (their ``bipartite_soft_matching_hybrid``). Their code multiplies each destination by
  the product over *all* its incoming edges of [score ≥ threshold] before the summing merge, and
  ``merge_wavg`` runs that merge on ``x·size`` and on ``size`` alike, so such a destination's own
  ``x·size`` and ``size`` both vanish; the brief's wording ("best incoming edge") differs: we follow the
  code (any incoming edge below the threshold). The token count is ToMe's: n − r per block. The sizes
  such a destination gives up are spread over its clip by :func:`bipartite.conserve_size` (one factor per
  clip, so pooling and proportional attention weigh tokens as the reference does).

Why thin registered reducers rather than parameters of ``tome``: each is a family of its own in the
tables and figures (reports key on the reducer's name), and a combination the paper does not define
(a threshold without the hybrid, a seed without random scores) cannot be written.

Dropping keeps the interface's size rule (sizes per clip sum to the tokens that entered): the kept
tokens' sizes are scaled by one per-clip factor (:func:`bipartite.drop`); the reference resets sizes to 1,
which pools and attends identically while nothing was merged before.

Random matching draws from a generator seeded with ``seed`` (one per device, created on first use), so
two reducers built with the same parameters choose the same tokens in the same sequence of forwards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import PackedTokens, ReducerParamError
from .bipartite import BipartitePlan, RandomScores, Scores, conserve_size, drop, merge_wavg
from .registry import register_reducer
from .tome import ToMe


@register_reducer("tome_drop")
@dataclass(repr=False)
class ToMeDrop(ToMe):
    """ToMe's matching; the r sources of each block are dropped, not merged."""

    def apply(self, plan: BipartitePlan, tokens: PackedTokens) -> PackedTokens:
        return drop(plan, tokens)


class _Seeded:
    """Seeded random edge scores, one generator per device."""

    seed: int

    def _check_seed(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ReducerParamError(f"{self.name}: seed must be an integer, got {self.seed!r}")
        self._gens: dict[str, torch.Generator] = {}

    def edge_scores(self, tokens: PackedTokens, keys: Tensor, layer: int) -> Scores:
        dev = tokens.x.device
        gen = self._gens.get(str(dev))
        if gen is None:
            gen = self._gens[str(dev)] = torch.Generator(device=dev).manual_seed(int(self.seed))
        return RandomScores(gen)


@register_reducer("random_merge")
@dataclass(repr=False)
class RandomMerge(_Seeded, ToMe):
    """Random bipartite matching (uniform edge scores), then ToMe's size-weighted merge."""

    seed: int = field(default=0, metadata={"help": "seed of the random edge scores"})

    def validate(self) -> None:
        super().validate()
        self._check_seed()


@register_reducer("random_drop")
@dataclass(repr=False)
class RandomDrop(_Seeded, ToMe):
    """Random bipartite matching (uniform edge scores); the r sources are dropped."""

    seed: int = field(default=0, metadata={"help": "seed of the random edge scores"})

    def validate(self) -> None:
        super().validate()
        self._check_seed()

    def apply(self, plan: BipartitePlan, tokens: PackedTokens) -> PackedTokens:
        return drop(plan, tokens)


@register_reducer("tome_hybrid")
@dataclass(repr=False)
class ToMeHybrid(ToMe):
    """ToMe, but a destination with an incoming edge below ``threshold`` is replaced by its sources' mean."""

    threshold: float = field(default=0.8, metadata={
        "help": "cosine below which a matched destination gives up its own token (their VideoMAE runs: 0.8)"})

    def validate(self) -> None:
        super().validate()
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not -1 <= t <= 1:
            raise ReducerParamError(f"{self.name}: threshold must be a cosine in [-1, 1], got {t!r}")

    def apply(self, plan: BipartitePlan, tokens: PackedTokens) -> PackedTokens:
        return conserve_size(tokens, merge_wavg(plan.without_weak_destinations(float(self.threshold)), tokens))
