"""A suite's settings as types: ``[defaults]`` (:class:`SuiteDefaults`), ``[train]`` (:class:`TrainSettings`)
and a model's ``pretrain`` table (:class:`PretrainSettings`). Each field's default is the one default of its
key; the suite's validator (:mod:`~tokenbench.harness.suite.validate`) checks a table against these fields
(``metadata``: ``minimum`` of an integer, ``choices`` of a string)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .train import DEFAULTS as RECIPE_DEFAULTS
from .train import RECIPE_FIELDS, TrainRecipe

AT_LEAST_0 = {"minimum": 0}


def one_of(*choices: str) -> dict[str, Any]:
    return {"choices": choices}


def resolve_device(device: str) -> str:
    """``auto`` → this machine's device (cuda when torch sees one, else cpu); anything else as given."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class SuiteDefaults:
    """``[defaults]``: the settings every cell shares, as the suite asks for them (``device`` and ``dtype``
    may be ``auto``: :meth:`Suite.device` and :meth:`Suite.dtype` resolve them where the cells run)."""

    modes: tuple[str, ...] = ("inference",)
    batch_sizes: tuple[int, ...] = (8,)
    repeats: int = 10
    warmup: int = 2
    threads: int = 0
    max_clips: int = 0
    seed: int = 0
    dtype: str = "auto"
    compile: bool = False
    autocast: tuple[str, ...] = ("none",)
    attn_backend: str = "auto"
    device: str = "auto"
    flops_check_clips: int = 1
    time_clips: int = 16

    @property
    def amp(self) -> bool:
        return any(a != "none" for a in self.autocast)

    def resolved_dtype(self, device: str) -> str:
        """``auto``: bfloat16 weights on CUDA (unless autocast lowers float32 weights), else float32."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if device.startswith("cuda") and not self.amp else "float32"


DEFAULT_KEYS = tuple(f.name for f in dataclasses.fields(SuiteDefaults))
# the recipe fields a cell records whatever its table sets (its key hashes them, so these sets stay as they
# were when reference results were recorded), before the ones the table sets
TRAIN_RECORDED = ("max_steps", *RECIPE_DEFAULTS)
PRETRAIN_RECORDED = ("seed", *RECIPE_DEFAULTS)


def table_fields(cls: type, skip: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    """The field of every key a settings table may hold: the class's own, then its recipe's (less ``skip``)."""
    return [f for f in dataclasses.fields(cls) if f.name not in ("recipe", "recorded")] + [
        f for f in dataclasses.fields(TrainRecipe) if f.name not in skip]


def _from_table(cls: type, table: dict[str, Any], always: tuple[str, ...]) -> Any:
    """A settings object from a checked table (or a cell's record of one): keys not given keep the
    field defaults; recipe keys given beyond ``always`` are recorded too."""
    own = {f.name for f in dataclasses.fields(cls)} - {"recipe", "recorded"}
    recipe = TrainRecipe.from_settings(table)
    extra = tuple(k for k in table if k in RECIPE_FIELDS and k not in always)
    return cls(recipe=recipe, recorded=extra, **{k: v for k, v in table.items() if k in own})


@dataclass(frozen=True)
class TrainSettings:
    """``[train]``: harness.train's recipe (its seed is the cell's, ``defaults.seed``) and the suite's own."""

    max_clips: int = field(default=0, metadata=AT_LEAST_0)  # training clips used (0 = the whole split)
    init: str = field(default="scratch", metadata=one_of("scratch", "checkpoint"))  # checkpoint: fine-tune
    eval_reducer: str = field(default="auto", metadata=one_of("auto", "none"))  # auto: inference_reducer
    seeds: int = 1  # each train arm repeated with seeds defaults.seed, +1, …: the spread is reported
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    recorded: tuple[str, ...] = ()  # recipe keys the table sets beyond TRAIN_RECORDED (the cells record them)

    SKIP = ("seed",)

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> TrainSettings:
        return _from_table(cls, table, TRAIN_RECORDED)

    def record(self, split: str) -> dict[str, Any]:
        """What a train cell carries (``Cell.train``; its key hashes it): the seeds are cells of their own."""
        return {"max_clips": self.max_clips, "init": self.init, "eval_reducer": self.eval_reducer,
                **{k: getattr(self.recipe, k) for k in (*TRAIN_RECORDED, *self.recorded)}, "split": split}


@dataclass(frozen=True)
class PretrainSettings:
    """A model entry's ``pretrain`` table: how the weights of a self-trained model are made."""

    dataset: str = "synthetic"
    split: str = "train"
    options: dict[str, Any] = field(default_factory=dict)
    max_clips: int = field(default=0, metadata=AT_LEAST_0)
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    recorded: tuple[str, ...] = ()

    SKIP = ()

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> PretrainSettings:
        """From the table, or from a cell's ``pretrain`` record (its model keys are not settings)."""
        return _from_table(cls, table, PRETRAIN_RECORDED)

    def record(self) -> dict[str, Any]:
        """The settings as a cell carries them (``Cell.pretrain`` adds the model; its hash names the
        weights)."""
        return {"dataset": self.dataset, "split": self.split, "options": self.options,
                "max_clips": self.max_clips,
                **{k: getattr(self.recipe, k) for k in (*PRETRAIN_RECORDED, *self.recorded)}}
