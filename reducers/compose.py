"""``rlt_random`` — RLT followed by random masking, the training-time combination of the RLT paper.

Rule. First RLT's selection (``tokenbench.reducers.rlt``: threshold τ, tubelet, patch; tubelet 0 always
kept; run lengths to the next kept tubelet at the same cell). Then, per clip, random masking *among the
tubelets RLT kept*: of a clip's n RLT tokens, ``max(1, round(keep · n))`` survive, chosen uniformly at
random by a generator seeded with ``seed`` (``RandomMasking.select_among``). Survivors keep the run
length RLT gave them — the length describes the stretch of video the token stands for, which masking
another token does not change — so the length embedding (``length_embedding=True``) sees the same
values it sees at evaluation.

How it maps to the paper. The RLT paper (§3.3 / §4, "RLT + random masking") trains with RLT and, on
top of it, the random token dropping of MAE-style training, so that training is faster still; the
model is then evaluated with RLT alone. The random stage is a training-time augmentation: build this
reducer for the training arm, and evaluate with :meth:`RLTRandom.for_eval`, which returns the plain
``rlt`` reducer with the same τ, tubelet, patch and length embedding. (This reducer itself always masks;
it has no view of whether the model is training.)

Parameters: ``threshold`` (τ, 0.1), ``tubelet`` (2), ``patch`` (16), ``length_embedding`` (False) as
for ``rlt``; ``keep`` (0.5): the fraction of RLT's tokens random masking keeps; ``seed`` (0).

The same thing in code, for any reducer pair: ``RLTRandom`` is RLT's ``select`` followed by
``RandomMasking(keep=…, seed=…).select_among(selection.keep)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .base import Reducer, ReducerParamError, Selection
from .random import RandomMasking
from .registry import register_reducer
from .rlt import RLT


@register_reducer("rlt_random")
@dataclass(repr=False)
class RLTRandom(Reducer):
    """RLT, then random masking of a fixed fraction of RLT's kept tubelets (training-time combination)."""

    threshold: float = field(default=0.1, metadata={"help": "RLT τ (see reducer rlt)"})
    keep: float = field(default=0.5, metadata={
        "help": "fraction of RLT's kept tubelets that random masking keeps, per clip, in (0, 1]"})
    seed: int = field(default=0, metadata={"help": "seed of the masking generator"})
    tubelet: int = field(default=2, metadata={"help": "frames per tubelet"})
    patch: int = field(default=16, metadata={"help": "tubelet height and width in pixels"})
    length_embedding: bool = field(default=False, metadata={
        "help": "build the model with RLT's learned run-length embedding"})

    def validate(self) -> None:
        try:
            self._rlt = RLT(threshold=self.threshold, tubelet=self.tubelet, patch=self.patch,
                            length_embedding=self.length_embedding)
            self._random = RandomMasking(keep=self.keep, seed=self.seed, tubelet=self.tubelet, patch=self.patch)
        except ReducerParamError as exc:
            msg = str(exc)
            for prefix in ("random:", "rlt:"):
                if msg.startswith(prefix):
                    msg = "rlt_random:" + msg[len(prefix):]
            raise ReducerParamError(msg) from exc

    def select(self, video: Tensor) -> Selection:
        sel = self._rlt.select(video)
        keep = self._random.select_among(sel.keep)
        return Selection(keep=keep, lengths=sel.lengths * keep)

    def for_eval(self) -> RLT:
        """The reducer to evaluate a model trained with this one: plain RLT, random stage off."""
        return self._rlt.fresh()
