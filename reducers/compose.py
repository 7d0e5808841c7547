"""``compose`` — reducers run one after another: input-stage reducers, then (at most) one in-block reducer.

Rule. ``stages`` is an ordered list of reducers, each ``{name = "…", params = {…}}`` (or just its name, at
its defaults), e.g. RLT then ToMe::

    [[reducers]]
    name = "compose"
    params = { stages = [{ name = "rlt", params = { threshold = 0.1 } }, { name = "tome", params = { r = 4 } }] }
    sweep = { "stages.tome.params.r" = [2, 4, 8] }   # a dotted path into params (a stage by name or index)

* the input stages (those that select tubelets: ``rlt``, ``random``, ``temporal``, ``spatial``, …) come
  first and run in order: the first selects, each later one *refines* the selection it is given
  (:meth:`Reducer.refine`: by default the tubelets both keep, survivors keeping the earlier run lengths;
  random masking draws among the earlier stage's tubelets);
* then the in-block stage (``tome``, ``sta``, …) runs its hooks on the tokens the input stages left. One
  only: a second in-block stage would be handed keys that no longer line up with the first's tokens.

Capabilities combine as the stages need them: proportional attention, the length embedding and
calibration when **any** stage declares them (``calibrate`` calibrates each stage that calibrates, in
order, on the same clips; ``calibrate_model``, the model-in-the-loop calibration of threshold merging,
runs each stage that has it with the input stages before it applied to every forward pass it makes, so
ToMe-style thresholds after RLT are fitted on RLT's tokens; ``budget_reducer`` composes the stages'
own); ``train_only`` when every stage is; :meth:`for_eval` composes each stage's own
``for_eval`` (a train-only stage drops out, so ``rlt`` then ``random`` evaluates as plain ``rlt``). The
geometry checks of every stage run (an in-block stage is checked against the full grid: the tokens an
input stage leaves depend on the clip). ``params()`` lists every stage with all its parameters, as
recorded with results (``reducer_params_used`` beside the parameters the suite gave).

FLOPs need nothing of their own: the input stages' selection decides the tokens the backbone embeds and
the in-block stage's hooks run inside the traced forward pass, so the count is that of the in-block stage
run on the input stages' tokens.

``rlt_random`` — RLT followed by random masking, the training-time combination of the RLT paper, is this
composition under its own registered name and parameters: RLT's selection (``threshold``; tubelet 0
always kept; run lengths to the next kept tubelet at the same cell), then, per clip, random masking among
the tubelets RLT kept: of a clip's n RLT tokens, ``max(1, round(keep · n))`` survive, chosen uniformly at
random by a generator seeded with ``seed`` (``RandomMasking.select_among``). Survivors keep the run length
RLT gave them, so the length embedding (``length_embedding``) sees the values it sees at evaluation. The
RLT paper (§3.3 / §4, "RLT + random masking") trains so and evaluates with RLT alone:
:meth:`RLTRandom.for_eval` returns plain ``rlt`` with the same τ and length embedding. (This reducer
itself always masks; it has no view of whether the model is training.)
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .base import (
    NO_ATTENTION,
    VIDEOMAE,
    AttentionContext,
    Geometry,
    PackedTokens,
    Reducer,
    ReducerParamError,
    Selection,
)
from .none import NoReducer
from .random import RandomMasking
from .registry import get_reducer, register_reducer
from .rlt import RLT


def _stage(i: int, spec: object) -> Reducer:
    if isinstance(spec, Reducer):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or set(spec) - {"name", "params"}:
        raise ReducerParamError(f"compose: stages[{i}] must be a reducer name or a table "
                                f"{{ name = \"…\", params = {{ … }} }}, got {spec!r}")
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise ReducerParamError(f"compose: stages[{i}].params must be a table, got {params!r}")
    try:
        return get_reducer(spec["name"], **params)
    except (ReducerParamError, KeyError) as exc:
        raise ReducerParamError(f"compose: stages[{i}] ({spec['name']}): {exc}") from None


@register_reducer("compose")
@dataclass(repr=False)
class Compose(Reducer):
    """Input-stage reducers in order, then at most one in-block reducer."""

    stages: list = field(default_factory=list, metadata={
        "help": "ordered stages, each { name = \"…\", params = { … } } or a name: input stages first, "
                "then at most one in-block stage"})

    @classmethod
    def of(cls, *stages: Reducer) -> Compose:
        """The composition of built reducers (their state, e.g. a calibration, kept)."""
        return cls(stages=list(stages))

    def validate(self) -> None:
        if not isinstance(self.stages, (list, tuple)) or not self.stages:
            raise ReducerParamError(f"compose: stages must be a non-empty list of reducers, got {self.stages!r}")
        self._stages = [_stage(i, s) for i, s in enumerate(self.stages)]
        in_block = [i for i, s in enumerate(self._stages) if s.acts_in_blocks]
        if len(in_block) > 1:
            raise ReducerParamError(f"compose: stages {in_block} both act inside the blocks; give at most one "
                                    "in-block stage (a second would get keys that no longer match its tokens)")
        late = [i for i, s in enumerate(self._stages) if s.acts_at_input and in_block and i > in_block[0]]
        if late:
            raise ReducerParamError(f"compose: stages[{late[0]}] selects at the input but comes after the "
                                    f"in-block stages[{in_block[0]}]; put input stages first")
        self._inputs = [s for s in self._stages if s.acts_at_input]
        self._block = next((s for s in self._stages if s.acts_in_blocks), None)
        # capabilities: any stage's need is the composition's
        self.prop_attn = any(bool(s.prop_attn) for s in self._stages)
        self.length_embedding = any(bool(s.length_embedding) for s in self._stages)
        self.calibrates = any(s.calibrates for s in self._stages)
        # model-in-the-loop calibration (threshold merging, branch `core`): read with a default, so the
        # composition delegates it whether or not this checkout's Reducer declares it yet
        self.calibrates_with_model = any(getattr(s, "calibrates_with_model", False) for s in self._stages)
        self.train_only = all(s.train_only for s in self._stages)
        self.identity = all(s.identity for s in self._stages)

    # --- what the model calls -------------------------------------------------------------------
    def select(self, video: Tensor, geometry: Geometry = VIDEOMAE) -> Selection | None:
        if not self._inputs:
            return None
        sel = self._inputs[0].select(video, geometry)
        for stage in self._inputs[1:]:
            sel = stage.select(video, geometry) if sel is None else stage.refine(sel, video, geometry)
        return sel

    def attention_layers(self, depth: int) -> frozenset[int]:
        return frozenset() if self._block is None else self._block.attention_layers(depth)

    def before_position(self, tokens: PackedTokens) -> PackedTokens:
        return tokens if self._block is None else self._block.before_position(tokens)

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int,
                        attn: AttentionContext = NO_ATTENTION) -> PackedTokens:
        if self._block is None:
            return tokens
        # the context only where the stage declared it, so a hook written without the keyword keeps working
        context = {} if attn is NO_ATTENTION else {"attn": attn}
        return self._block.after_attention(tokens, keys, layer, depth, **context)

    def after_block(self, tokens: PackedTokens, keys: Tensor | None, layer: int, depth: int) -> PackedTokens:
        return tokens if self._block is None else self._block.after_block(tokens, keys, layer, depth)

    @property
    def acts_at_input(self) -> bool:
        return bool(self._inputs)

    @property
    def acts_in_blocks(self) -> bool:
        return self._block is not None

    def check_geometry(self, grid: tuple[int, int, int], depth: int) -> None:
        for i, s in enumerate(self._stages):
            try:
                s.check_geometry(grid, depth)
            except ReducerParamError as exc:
                raise ReducerParamError(f"compose: stages[{i}] ({s.name}): {exc}") from None

    def geometry_note(self, grid: tuple[int, int, int]) -> str | None:
        return next((n for n in (s.geometry_note(grid) for s in self._stages) if n), None)

    def calibrate(self, videos: Iterable[Tensor]) -> list[Any]:
        """Calibrate each stage that calibrates, in order, on the same clips; their results, per stage."""
        batches = list(videos)  # several stages may read them
        return [s.calibrate(batches) if s.calibrates else None for s in self._stages]

    def calibrate_model(self, model: Any, batches: Iterable[Tensor]) -> Any:
        """Each stage that calibrates with the model in the loop, on ``batches``, with the input stages before
        it applied to every forward pass it makes (an in-block stage after RLT calibrates on RLT's tokens);
        what the stage returns (a list when several do)."""
        batches = list(batches)
        found = []
        for i, s in enumerate(self._stages):
            if getattr(s, "calibrates_with_model", False):
                before = Compose.of(*self._stages[:i]) if i else None
                found.append(s.calibrate_model(_AfterInputs(model, before), batches))
        return found[0] if len(found) == 1 else found

    def budget_reducer(self) -> Reducer:
        """The composition of each stage's budget reducer (threshold merging: ToMe at its target r)."""
        return Compose.of(*(getattr(s, "budget_reducer", lambda s=s: s)() for s in self._stages))

    def for_eval(self) -> Reducer:
        kept = [e for e in (s.for_eval() for s in self._stages) if not e.identity]
        if not kept:
            return NoReducer()
        return kept[0] if len(kept) == 1 else Compose.of(*kept)

    # --- bookkeeping ----------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Every stage with all its parameters (a calibrated stage's measured values included)."""
        return {"stages": [{"name": s.name, "params": s.params()} for s in self._stages]}

    def fresh(self) -> Compose:
        return Compose.of(*(s.fresh() for s in self._stages))


class _AfterInputs:
    """``model`` as a calibrating stage sees it inside a composition: every call applies the stages before it
    (their selection), then runs the model with the reducer the stage passes."""

    def __init__(self, model: Any, before: Compose | None):
        self.model, self.before = model, before

    def __getattr__(self, name: str) -> Any:  # grid, depth, geometry, last_stats, …: the model's own
        if name in ("model", "before"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, video: Tensor, reducer: Reducer, selection: Selection | None = None) -> Tensor:
        if selection is None and self.before is not None:
            selection = self.before.select(video, self.model.geometry)
        return self.model(video, reducer=reducer, selection=selection)


def _renamed(exc: ReducerParamError, name: str) -> ReducerParamError:
    msg = str(exc)
    for prefix in ("random:", "rlt:"):
        if msg.startswith(prefix):
            msg = name + ":" + msg[len(prefix):]
    return ReducerParamError(msg)


@register_reducer("rlt_random")
@dataclass(repr=False)
class RLTRandom(Reducer):
    """RLT, then random masking of a fixed fraction of RLT's kept tubelets (training-time combination)."""

    threshold: float = field(default=0.1, metadata={"help": "RLT τ (see reducer rlt)"})
    keep: float = field(default=0.5, metadata={
        "help": "fraction of RLT's kept tubelets that random masking keeps, per clip, in (0, 1]"})
    seed: int = field(default=0, metadata={"help": "seed of the masking generator"})
    length_embedding: bool = field(default=False, metadata={
        "help": "build the model with RLT's learned run-length embedding"})

    def validate(self) -> None:
        try:
            self._rlt = RLT(threshold=self.threshold, length_embedding=self.length_embedding)
            self._composed = Compose.of(self._rlt, RandomMasking(keep=self.keep, seed=self.seed))
        except ReducerParamError as exc:
            raise _renamed(exc, "rlt_random") from exc

    def select(self, video: Tensor, geometry: Geometry = VIDEOMAE) -> Selection:
        return self._composed.select(video, geometry)

    def for_eval(self) -> Reducer:
        """The reducer to evaluate a model trained with this one: plain RLT, random stage off."""
        return self._composed.fresh().for_eval()
