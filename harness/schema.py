"""The typed contracts between suite, runner, store and report: :class:`Cell`, the record, :data:`METRIC_TABLE`.

A **cell** is one measurement a suite asks for (model × dataset × reducer variant × batch size × mode, with
every setting that changes the number). Its ``key`` is a hash of its configuration: re-running a suite skips
cells whose key is recorded, so the key of a configuration never changes once records exist (a test
recomputes the key of every committed reference record).

A **record** is one JSON line per finished (or failed) cell, made by :func:`make_record`::

    {
      "schema": 1, "key": "3f2a…", "suite": "default", "status": "ok" | "failed",
      "error": null | "what failed, naming the file/line",
      "cell": { Cell.as_dict(): model, num_frames, …, label },
      "fingerprint": { harness.fingerprint: id, device, device_name, threads, torch, git_commit, … },
      "metrics": { METRIC: value, … },      # names in METRIC_TABLE; absent = not measured
      "started": "2026-11-21T23:40:00Z", "finished": "…", "duration_s": 12.3,
      "command": "tokenbench run --suite default",
      "traceback": "…",                      # failed records only
      "launcher": {"name": "slurm", "job_id": "4243_0", "hostname": "gpu-node-7"}   # submitit jobs only
    }

``results.load`` flattens records into one DataFrame row each (see its docstring).

A **metric** is described once, in :data:`METRIC_TABLE` (harness/metric_table.py, re-exported here): its
meaning, unit, how a table formats it, whether higher is better, which report tables show it in which column,
and a derived metric's formula. The report builds its columns from that table, so a new metric reaches a table
by being measured and getting one entry there.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .metric_table import (  # noqa: F401  (the record's metrics: importable from the record's module)
    DET,
    HEAD,
    INF,
    METRIC_BY_NAME,
    METRIC_TABLE,
    METRICS,
    SWEEP,
    TOK,
    TRAIN,
    Metric,
    Shown,
    shown_in,
)

SCHEMA_VERSION = 1


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cell_key(cell: dict[str, Any]) -> str:
    """Stable hash of a cell's configuration (a dict without ``key`` and ``label``)."""
    return hashlib.sha256(canonical_json(cell).encode()).hexdigest()[:16]


def reducer_label(reducer: str, params: dict[str, Any] | None) -> str:
    """Short human name for tables and legends, e.g. ``rlt τ=0.1``, ``tome r=8``, ``none``."""
    params = dict(params or {})
    alias = {"threshold": "τ"}
    shown = [_stages_label(v) if _is_stages(v) else f"{alias.get(k, k)}={v}"
             for k, v in sorted(params.items()) if k not in ("seed",)]
    return reducer + (" " + " ".join(shown) if shown else "")


def _is_stages(value: Any) -> bool:
    """A list of reducers (``compose``'s stages: names or ``{name, params}`` tables)."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(s, str) or (isinstance(s, dict) and isinstance(s.get("name"), str)) for s in value)


def _stages_label(stages: list) -> str:
    """``rlt τ=0.1 → tome r=4``: each stage as its own label, in order."""
    return " → ".join(reducer_label(s, None) if isinstance(s, str) else reducer_label(s["name"], s.get("params"))
                      for s in stages)


# ----------------------------------------------------------------------------------------------
# the cell
# ----------------------------------------------------------------------------------------------
CELL_FIELDS = ("model", "num_frames", "img_size", "checkpoint", "dataset", "split", "reducer", "params",
               "batch_size", "mode", "dtype", "compile", "attn_backend")
INFERENCE_ONLY = ("repeats", "warmup", "flops_check_clips", "time_clips")
TRAIN_ONLY = ("train",)
# written only when set: absent and unset are the same configuration (and the same key)
OPTIONAL = ("model_id", "dataset_id", "num_classes", "dataset_options", "skip_unreadable", "pretrain", "autocast",
            "attn_path")
# recorded in a record's cell beside its configuration, not part of it: the key, the label, and which weights
# the cell's checkpoint held when it ran (content hash, and where a trained-here model was cached); a train
# cell's checkpoint_sha256 is of the weights it trained, init_checkpoint_* of those it started from
NOT_IN_KEY = ("key", "label", "checkpoint_sha256", "checkpoint_path", "init_checkpoint_sha256",
              "init_checkpoint_path")


@dataclass(frozen=True)
class Cell(Mapping):
    """One measurement of a suite. Fields hold their defaults; :meth:`as_dict` is the record's ``cell``.

    The record's JSON shape is kept exactly: inference-only fields are written for inference cells, the
    ``train`` settings for train cells, and each ``OPTIONAL`` field only when it is set. The Mapping
    interface reads that JSON shape (``cell["key"]``), for code that handles records.
    """

    model: str
    dataset: str
    reducer: str = "none"
    params: dict[str, Any] = field(default_factory=dict)
    num_frames: int = 16
    img_size: int = 224
    checkpoint: str = "none"   # a path, "none" (random weights) or "trained:<hash>" (see pretrain)
    split: str = "val"
    batch_size: int = 8
    mode: str = "inference"    # inference | train
    dtype: str = "float32"
    compile: bool = False
    attn_backend: str = "auto"
    device: str = "cpu"
    views: str = "1x1"         # temporal clips × spatial crops
    max_clips: int = 0         # 0 = all
    seed: int = 0
    threads: int = 0           # 0 = torch's default
    # inference cells
    repeats: int = 10
    warmup: int = 2
    flops_check_clips: int = 1
    time_clips: int = 16       # 0 = all clips
    # train cells: harness.train's recipe and the suite's [train] extras
    train: dict[str, Any] = field(default_factory=dict)
    # optional
    model_id: str | None = None
    dataset_id: str | None = None
    num_classes: int | None = None
    dataset_options: dict[str, Any] | None = None
    skip_unreadable: bool | None = None
    pretrain: dict[str, Any] | None = None  # how a "trained:<hash>" checkpoint is made
    autocast: str | None = None             # None = no autocast
    attn_path: str | None = None            # "packed": every arm per sequence; None = auto (dense when equal)
    given_label: str | None = None          # the suite's label; None = reducer_label

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cell:
        """The cell of a record's ``cell`` object (or a suite cell dict); ``key`` is recomputed."""
        names = {f.name for f in fields(cls)} - {"given_label"}
        unknown = set(d) - names - set(NOT_IN_KEY)
        if unknown:
            raise ValueError(f"cell has unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in d.items() if k in names}, given_label=d.get("label"))

    def as_dict(self, with_label: bool = True) -> dict[str, Any]:
        """The JSON shape of the cell (the record's ``cell``), without its ``key``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            name, v = f.name, getattr(self, f.name)
            if name == "given_label" or (name in OPTIONAL and v is None):
                continue
            if (name in INFERENCE_ONLY and self.mode != "inference") or (name in TRAIN_ONLY and self.mode != "train"):
                continue
            out[name] = v
        if with_label:
            out["label"] = self.label
        return out

    @property
    def key(self) -> str:
        return cell_key(self.as_dict(with_label=False))

    @property
    def label(self) -> str:
        return self.given_label or reducer_label(self.reducer, self.params)

    @property
    def amp(self) -> str:
        """The autocast dtype, ``none`` without one."""
        return self.autocast or "none"

    @property
    def where(self) -> str:
        """``model/dataset`` by their suite ids, for logs."""
        return f"{self.model_id or self.model}/{self.dataset_id or self.dataset}"

    def with_(self, **changes: Any) -> Cell:
        return replace(self, **changes)

    # Mapping: the JSON shape, with its key
    def _json(self) -> dict[str, Any]:
        return {**self.as_dict(), "key": self.key}

    def __getitem__(self, name: str) -> Any:
        return self._json()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json())

    def __len__(self) -> int:
        return len(self._json())

    __hash__ = None  # type: ignore[assignment]  # params and settings are dicts


# ----------------------------------------------------------------------------------------------
# the record
# ----------------------------------------------------------------------------------------------
def make_record(cell: Cell, *, suite: str, fingerprint: dict[str, Any], started: str, finished: str,
                duration_s: float, command: str = "", metrics: dict[str, Any] | None = None,
                error: str | None = None, traceback: str | None = None, launcher: dict[str, Any] | None = None,
                key: str | None = None, weights: dict[str, str] | None = None,
                status: str | None = None) -> dict[str, Any]:
    """The one record constructor: ``ok`` when ``error`` is None, else ``failed`` with its error, or the
    ``status`` given (``lost``: the job died mid-cell; ``timeout``: it ran out of time).
    ``weights`` (``checkpoint_sha256``, ``checkpoint_path``) identify the weights the cell ran with (a train
    cell's: those it trained, and ``init_checkpoint_sha256`` / ``init_checkpoint_path`` those it started from)."""
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "key": key or cell.key, "suite": suite,
        "status": status or ("ok" if error is None else "failed"), "error": error,
        "cell": {**cell.as_dict(), **(weights or {})}, "fingerprint": fingerprint, "metrics": dict(metrics or {}),
        "started": started, "finished": finished, "duration_s": duration_s, "command": command,
    }
    if traceback:
        record["traceback"] = traceback
    if launcher:
        record["launcher"] = launcher
    return record
