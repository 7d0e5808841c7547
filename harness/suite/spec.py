"""A parsed suite: its constants, the model / dataset / reducer entries and the :class:`Suite` itself."""
from __future__ import annotations

import copy
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from tokenbench.datasets import dataset_format

from ..attention import BACKENDS
from ..model import MODEL_SIZES
from ..schema import Cell, canonical_json
from ..settings import PretrainSettings, SuiteDefaults, TrainSettings, resolve_device

MODES = ("inference", "train")
DTYPES = ("auto", "float32", "float16", "bfloat16")
AUTOCAST = ("none", "bfloat16", "float16")
ATTN_BACKENDS = ("auto", *BACKENDS)  # harness.attention's backend table
CHECKPOINT_NONE = "none"  # random weights (timing and tokens only make sense)

TOP_KEYS = {
    "suite": "suite name and description",
    "defaults": "settings shared by every cell",
    "train": "settings of train-mode cells",
    "models": "[[models]] entries",
    "datasets": "[[datasets]] entries",
    "reducers": "[[reducers]] entries",
}
SUITE_KEYS = ("name", "description")
# [defaults], [train] and pretrain tables: the dataclasses of .settings


MODEL_KEYS = ("name", "id", "num_frames", "img_size", "checkpoint", "num_classes", "pretrain", "modes")
DATASET_KEYS = ("name", "id", "split", "train_split", "views", "max_clips", "manifest", "root", "options",
                "skip_unreadable", "modes")
REDUCER_KEYS = ("name", "id", "params", "sweep", "label", "modes", "datasets", "models", "attn_path")
ATTN_PATHS = ("auto", "packed")  # packed: every arm per sequence (harness.run.measure.attention_path)


@dataclass
class ModelSpec:
    id: str
    name: str
    num_frames: int = 16
    img_size: int = 224
    checkpoint: str = ""  # a path, CHECKPOINT_NONE, or "" (train per pretrain)
    num_classes: int = 0
    pretrain: PretrainSettings | None = None
    modes: tuple[str, ...] = MODES
    path: tuple = ()

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.num_frames // 2, self.img_size // 16, self.img_size // 16)

    @property
    def depth(self) -> int:
        return MODEL_SIZES[self.name][1]

    def pretrain_config(self) -> dict[str, Any]:
        """Everything that decides the weights a self-trained model gets (its cache key)."""
        settings = self.pretrain.record() if self.pretrain is not None else {}
        return {**settings, "model": self.name, "num_frames": self.num_frames, "img_size": self.img_size}

    @property
    def checkpoint_id(self) -> str:
        """What the cell records as its checkpoint: the path, ``none``, or ``trained:<hash>``."""
        if self.checkpoint:
            return self.checkpoint
        return "trained:" + hashlib.sha256(canonical_json(self.pretrain_config()).encode()).hexdigest()[:12]


@dataclass
class DatasetSpec:
    id: str
    name: str
    split: str = "val"
    train_split: str = "train"
    views: str = "1x1"
    max_clips: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    skip_unreadable: bool = False
    modes: tuple[str, ...] = MODES
    path: tuple = ()

    @property
    def labelled(self) -> bool:
        return dataset_format(self.name).labelled


@dataclass
class ReducerSpec:
    id: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list] = field(default_factory=dict)
    label: str | None = None
    modes: tuple[str, ...] = MODES
    datasets: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    attn_path: str = "auto"
    path: tuple = ()

    def variants(self) -> list[dict[str, Any]]:
        """The parameter sets of this entry: ``params`` merged with each combination of ``sweep``. A dotted
        sweep key is a path into a nested parameter (:func:`set_param`), e.g. ``stages.tome.params.r``."""
        if not self.sweep:
            return [dict(self.params)]
        names, out = list(self.sweep), []
        for combo in itertools.product(*(self.sweep[n] for n in names)):
            params = copy.deepcopy(self.params)
            for name, value in zip(names, combo):
                set_param(params, name, value)
            out.append(params)
        return out


def _step(container: Any, seg: str, key: str) -> Any:
    """One segment of a dotted parameter path: a table's key, a list's index, or, in a list of reducer
    tables (``compose``'s stages), the one named ``seg``."""
    if isinstance(container, dict):
        if seg not in container:
            raise ValueError(f"sweep key {key!r}: no {seg!r} in {container!r}")
        return container[seg]
    if isinstance(container, list):
        if seg.isdigit():
            if int(seg) >= len(container):
                raise ValueError(f"sweep key {key!r}: index {seg} past the {len(container)} entries")
            i = int(seg)
        else:
            named = [i for i, s in enumerate(container) if s == seg or (isinstance(s, dict) and s.get("name") == seg)]
            if len(named) != 1:
                raise ValueError(f"sweep key {key!r}: {'no' if not named else 'more than one'} entry named {seg!r}"
                                 f"{' (use its index)' if named else ''}")
            i = named[0]
        if isinstance(container[i], str):  # a stage given by name alone: spelt out so a parameter can be set
            container[i] = {"name": container[i]}
        return container[i]
    raise ValueError(f"sweep key {key!r}: {seg!r} is inside {container!r}, which is neither a table nor a list")


def set_param(params: dict[str, Any], key: str, value: Any) -> None:
    """``params[key] = value``, where a dotted ``key`` is a path into nested parameters: table keys, list
    indices, or a stage's name in a list of reducer tables (``stages.tome.params.r``, ``stages.1.params.r``).
    A table on the path that lacks the last key gets it (a stage's ``params`` may be absent)."""
    *path, last = key.split(".")
    container: Any = params
    for i, seg in enumerate(path):
        if isinstance(container, dict) and seg not in container and seg == "params" and i == len(path) - 1:
            container[seg] = {}
        container = _step(container, seg, key)
    if not isinstance(container, dict):
        raise ValueError(f"sweep key {key!r}: {last!r} must name a table's key, got {container!r}")
    container[last] = value


def param_at(params: dict[str, Any], key: str) -> Any:
    """The value at ``key`` (dotted as for :func:`set_param`)."""
    container: Any = params
    for seg in key.split("."):
        container = _step(container, seg, key)
    return container


@dataclass
class Suite:
    name: str
    description: str
    file: str  # where it came from (shown in errors)
    defaults: SuiteDefaults  # as asked: device and dtype may be "auto"
    train: TrainSettings
    models: list[ModelSpec]
    datasets: list[DatasetSpec]
    reducers: list[ReducerSpec]
    overrides: list[str] = field(default_factory=list)
    auto_device: str | None = None  # what device "auto" stands for where the cells run; None: this machine
    total_cells: int = 0  # before --only
    selected: list[Cell] = field(default_factory=list, repr=False)

    def cells(self) -> list[Cell]:
        """Every cell (of --only's selection), inference cells first."""
        return list(self.selected)

    @property
    def device(self) -> str:
        """The device the cells run on: ``defaults.device``, ``auto`` resolved where they run."""
        asked = self.defaults.device
        return self.auto_device if asked == "auto" and self.auto_device else resolve_device(asked)

    @property
    def dtype(self) -> str:
        """The cells' weight dtype: ``defaults.dtype``, ``auto`` resolved for :attr:`device`."""
        return self.defaults.resolved_dtype(self.device)


def parse_views(views: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", str(views))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"views must read 'CLIPSxCROPS' like '5x3', got {views!r}")
    return int(m.group(1)), int(m.group(2))
