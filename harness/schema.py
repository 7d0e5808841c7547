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

A **metric** is described once, in :data:`METRIC_TABLE`: its meaning, unit, how a table formats it,
whether higher is better, and which report tables show it in which column. The report builds its columns
from that table, so a new metric reaches a table by being measured and getting one entry here.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

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


# ----------------------------------------------------------------------------------------------
# the metrics
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shown:
    """A metric's column in one report table: ``order`` sorts the columns, ``header`` overrides the
    metric's own."""

    table: str   # inference | training | tokens | rlt_threshold_sweep | inference_details | headline
    order: int
    header: str | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    meaning: str
    unit: str = ""
    fmt: str = "adaptive"      # fixed:N | signed:N | sig:N | adaptive | g | text (report.format.formatter)
    higher_is_better: bool | None = None
    header: str = ""           # column header (default: the name)
    suffix: str = ""           # appended to the formatted value, e.g. "×"
    iqr: tuple[str, str] | None = None  # metrics shown in brackets after it: (q1, q3)
    shown: tuple[Shown, ...] = ()
    derived: bool = False      # computed by the report from a record's metrics, never recorded
    when_recorded: bool = False  # a column only where some row recorded it (older records keep their tables)

    def column_header(self, table: str) -> str:
        for s in self.shown:
            if s.table == table and s.header:
                return s.header
        return self.header or self.name


def _m(name, meaning, unit="", fmt="adaptive", better=None, header="", shown=(), **kw) -> Metric:
    return Metric(name, meaning, unit, fmt, better, header, shown=tuple(Shown(*s) for s in shown), **kw)


# the report's tables; "headline" is the compact inference table `tokenbench run` prints
INF, TRAIN, TOK, SWEEP, HEAD = "inference", "training", "tokens", "rlt_threshold_sweep", "headline"
DET = "inference_details"  # what else each inference cell measured: protocol, side costs, the machine

METRIC_TABLE: tuple[Metric, ...] = (
    # cost
    _m("gflops", "GFLOPs per clip (multiply-adds, fvcore convention), mean over the clips measured", "GFLOPs",
       better=False, header="GFLOPs/clip", shown=((INF, 30), (SWEEP, 40), (HEAD, 30, "GFLOPs"))),
    _m("gflops_fvcore", "GFLOPs per clip traced by fvcore on a sample (cross-check of gflops)", "GFLOPs",
       "fixed:3", False, "fvcore GFLOPs (traced)", ((DET, 70),)),
    _m("gflops_fvcore_analytic", "the analytic count (+ the reducer's hook cost) of the clips fvcore traced: "
       "agrees with gflops_fvcore", "GFLOPs", "fixed:3", False, "analytic (traced)", ((DET, 75),)),
    _m("gflops_reducer_overhead", "a reducer's own in-block cost per clip (similarity matmuls), included in "
       "gflops", "GFLOPs", "sig:3", False, "reducer GFLOPs", ((DET, 80),)),
    _m("gflops_attention", "share of gflops in attention matmuls (QKᵀ and AV), GFLOPs per clip", "GFLOPs",
       "sig:3", False, "attention GFLOPs", ((DET, 60),)),
    # tokens
    _m("tokens_in_mean", "tokens per clip entering the first block, mean", "tokens", "fixed:1", False,
       "tokens/clip in", ((INF, 40), (TOK, 20, "kept mean"), (SWEEP, 20, "tokens/clip"), (HEAD, 40, "tokens in"))),
    _m("tokens_in_min", "tokens per clip entering the first block, min", "tokens", "fixed:0", False,
       "kept min", ((TOK, 30),)),
    _m("tokens_in_max", "tokens per clip entering the first block, max", "tokens", "fixed:0", False,
       "kept max", ((TOK, 40),)),
    _m("tokens_total", "tokens per clip before reduction (T'·H'·W')", "tokens", "fixed:0", None,
       "tokens total", ((TOK, 10),)),
    _m("tokens_per_layer", "list: mean tokens per clip after each block", "tokens", "text"),
    _m("tokens_out_min", "tokens per clip after the last block, min", "tokens", "fixed:0", None, "out min", ((TOK, 50),), when_recorded=True),  # noqa: E501
    _m("tokens_out_max", "tokens per clip after the last block, max", "tokens", "fixed:0", None, "out max", ((TOK, 60),), when_recorded=True),  # noqa: E501
    _m("tokens_mlp_per_layer", "list: mean tokens per clip entering each block's MLP (the budget axis)",
       "tokens", "text"),
    _m("tokens_per_clip", "list: tokens entering the network, one entry per clip", "tokens", "text"),
    # wall-clock (inference)
    _m("time_ms_median", "forward wall-clock per batch (ms), median over repeats, selection included", "ms",
       better=False, header="time/batch (ms)", shown=((DET, 10),), iqr=("time_ms_q1", "time_ms_q3")),
    _m("time_ms_q1", "25th percentile of the same", "ms", better=False),
    _m("time_ms_q3", "75th percentile of the same", "ms", better=False),
    _m("baseline_time_ms_median", "the baseline (reducer none) per batch, timed interleaved in the same cell",
       "ms", better=False, header="baseline (ms)", shown=((DET, 20),)),
    _m("speedup", "median of the paired per-repeat ratios baseline / reducer, same cell", "×", "fixed:2", True,
       "speedup", ((INF, 70), (SWEEP, 50), (HEAD, 70)), suffix="×", iqr=("speedup_q1", "speedup_q3")),
    _m("speedup_q1", "25th percentile of the paired per-repeat ratios", "×", "fixed:2", True),
    _m("speedup_q3", "75th percentile of the paired per-repeat ratios", "×", "fixed:2", True),
    _m("speedup_ci_lo", "lower end of the speedup's 95 % interval (bootstrap of the median over repeats)", "×",
       "fixed:2", True, "speedup 95% lo", ((DET, 21),)),
    _m("speedup_ci_hi", "upper end of the same", "×", "fixed:2", True, "speedup 95% hi", ((DET, 22),)),
    _m("clips_per_s", "batch_size / median seconds per batch", "clips/s", better=True, header="clips/s",
       shown=((INF, 60), (HEAD, 60)), iqr=("clips_per_s_q1", "clips_per_s_q3")),
    _m("select_ms_median", "reducer.select alone per batch (ms), median", "ms", "sig:3", False, "select (ms)",
       ((DET, 30),)),
    _m("decode_ms_per_clip", "decode + sample + resize per clip (ms), measured apart from the forward", "ms",
       "sig:3", False, "decode (ms/clip)", ((DET, 40),)),
    _m("peak_mem_mb", "reducer arm's peak device memory (MB) above the resident clips, timed runs (CUDA only)",
       "MB", "fixed:0", False, "peak mem (MB)", ((DET, 50),)),
    _m("baseline_peak_mem_mb", "the same for the baseline arm (CUDA only)", "MB", "fixed:0", False,
       "baseline peak mem (MB)", ((DET, 51),)),
    _m("repeats", "timed repeats per arm", "", "fixed:0", None, "repeats", ((DET, 130),)),
    _m("warmup", "warm-up runs per arm", "", "fixed:0", None, "warm-up", ((DET, 140),)),
    _m("time_clips", "clips each timed repeat ran", "clips", "fixed:0", None, "clips timed", ((DET, 120),)),
    _m("time_videos", "videos the timed clips come from (a seeded sample spread over videos)", "videos", "fixed:0",
       None, "videos timed", ((DET, 121),)),
    _m("time_tokens_in_mean", "tokens per clip entering the first block, mean over the timed clips (as timed)",
       "tokens", "fixed:1", False, "tokens/clip in (timed)", ((DET, 122),)),
    _m("time_gflops", "GFLOPs per clip, mean over the timed clips (as timed): the x the time is paired with",
       "GFLOPs", "adaptive", False, "GFLOPs/clip (timed)", ((DET, 123),)),
    _m("attn_path", "attention path the reducer arm ran: dense (one batched call), packed (per-sequence "
       "loop), varlen (one packed kernel call); '+' joins several", "", "text", None, "attention path",
       ((INF, 75), (DET, 23))),
    _m("baseline_attn_path", "the same for the baseline arm", "", "text", None, "baseline path", ((DET, 24),)),
    _m("attn_kernels_missing", "varlen attention kernels of the cell's device not installed on the machine "
       "('+' joins several; e.g. flash_attn on a GPU without flash-attn: torch's varlen_attn and SDPA stood in, "
       "attn_backend and attn_path say which ran)", "", "text", None, "kernels missing", ((DET, 29),), when_recorded=True),  # noqa: E501
    # interference while the arms were timed (harness.timing.Interference has the rules)
    _m("interference", "rules that marked the cell timed under interference: runqueue (other tasks runnable beyond "
       "the CPUs the cell's threads leave free), steal (CPU steal above 5 %), spread (paired ratios' IQR above 10 % "
       "of their median); '+' joins several, empty: clean", "", "text", None, "interference", ((DET, 25),),
       when_recorded=True),
    _m("host_runnable_others", "runnable tasks on the host besides this process's timing thread, mean of "
       "/proc/stat procs_running read at each timed arm's start and end", "tasks", "fixed:1", False,
       "other runnable", ((DET, 26),), when_recorded=True),
    _m("host_steal_pct", "CPU steal time during the timed runs (/proc/stat), % of all CPU time", "%", "fixed:1",
       False, "steal (%)", ((DET, 27),), when_recorded=True),
    _m("speedup_rel_iqr", "interquartile range of the paired ratios over their median", "", "fixed:3", False,
       "ratio IQR/median", ((DET, 28),), when_recorded=True),
    # accuracy
    _m("top1", "top-1 accuracy (%) over the evaluated split", "%", "fixed:1", True, "top-1 (%)",
       ((INF, 10), (TRAIN, 50), (SWEEP, 60), (HEAD, 10, "top-1 %")), iqr=("top1_ci_lo", "top1_ci_hi")),
    _m("top1_ci_lo", "lower end of top-1's 95 % interval (Wilson over videos)", "%", "fixed:1", True),
    _m("top1_ci_hi", "upper end of the same", "%", "fixed:1", True),
    _m("top5", "top-5 accuracy (%)", "%", "fixed:1", True, "top-5 (%)", ((DET, 90),)),
    _m("top1_baseline", "top-1 (%) of the same model without reducer, same cell's clips, views, options and "
       "autocast (the paired baseline Δtop-1 is read against)", "%", "fixed:1", True),
    _m("delta_top1_ci_lo", "lower end of Δtop-1's 95 % interval (paired bootstrap over the same videos)", "pt",
       "signed:1", True),
    _m("delta_top1_ci_hi", "upper end of the same", "pt", "signed:1", True),
    _m("num_clips", "clips evaluated", "clips", "fixed:0", None, "clips", ((TOK, 80),)),
    _m("num_videos", "videos evaluated (a video gives views clips)", "videos", "fixed:0", None, "videos",
       ((DET, 110),)),
    _m("views", "view protocol, 'clips×crops', e.g. '1x1'", "", "text", None, "views", ((DET, 100),)),
    _m("skipped_videos", "unreadable videos left out (skip_unreadable = true)", "videos", "fixed:0", False,
       "skipped videos", ((DET, 150),)),
    _m("skipped_errors", "list: the first errors of the videos left out (the README lists them)", "", "text"),
    _m("reducer_params_used", "dict: the reducer's parameters after calibration (random's measured keep; the "
       "README lists them)", "", "text"),
    _m("calibration", "dict: a model-in-the-loop calibration run before the cell (threshold merging): the "
       "train-split clips it used (dataset, split, count, how chosen) and what it found (thresholds)", "", "text"),
    # training
    _m("train_wall_s", "wall-clock to train (s), data loading included, evaluation excluded", "s", "fixed:1",
       False, "wall-clock to train (s)", ((TRAIN, 20),)),
    _m("train_epochs", "epochs trained", "", "fixed:0", None, "epochs", ((TRAIN, 10),)),
    _m("train_clips_per_s", "training clips per second", "clips/s", "adaptive", True, "train clips/s",
       ((TRAIN, 40),)),
    _m("train_tokens_mean", "tokens per clip seen in training, mean", "tokens", "fixed:1", None, "tokens/clip",
       ((TRAIN, 70),)),
    _m("train_final_loss", "training loss of the last epoch", "", "fixed:3", False, "final loss", ((TRAIN, 80),)),
    _m("train_clips", "training clips used", "clips", "fixed:0", None, "train clips", ((TRAIN, 90),)),
    _m("eval_reducer", "the reducer a train cell was evaluated with (the README lists it)", "", "text"),
    # the machine
    _m("load_avg_start", "the machine's 1-minute load average before the cell (other tenants slow timings)",
       "", "fixed:2", False),
    _m("load_avg_end", "the same after the cell", "", "fixed:2", False),
    # derived by the report from the record (and its baseline), never recorded
    _m("delta_top1", "top-1 minus the record's own paired baseline (top1_baseline; train cells: the none "
       "cell trained alike)", "pt", "signed:1", True, "Δtop-1 (pt)",
       ((INF, 20), (TRAIN, 60), (SWEEP, 70), (HEAD, 20, "Δtop-1")), derived=True,
       iqr=("delta_top1_ci_lo", "delta_top1_ci_hi")),
    _m("train_seeds", "training runs (seeds) pooled in the row", "", "fixed:0", None, "seeds", ((TRAIN, 31),),
       derived=True),
    _m("train_speedup_range", "min–max of the wall-clock speedup over the seeds", "×", "text", None,
       "speedup range (seeds)", ((TRAIN, 32),), derived=True),
    _m("top1_range", "min–max of top-1 over the seeds", "%", "text", None, "top-1 range (seeds)", ((TRAIN, 51),),
       derived=True),
    _m("tokens_out_mean", "tokens per clip after the last block, mean", "tokens", "fixed:1", False,
       "tokens/clip out", ((INF, 50), (TOK, 70, "after last block"), (HEAD, 50, "out")), derived=True),
    _m("kept_pct", "share of the tubelets kept at the input (%)", "%", "fixed:1", False, "kept (%)",
       ((TOK, 50), (SWEEP, 30)), derived=True),
    _m("reduction_x", "tokens total / mean tokens kept", "×", "fixed:2", True, "reduction", ((TOK, 60),),
       suffix="×", derived=True),
    _m("train_speedup", "the baseline's wall-clock to train / this one, same setting", "×", "fixed:2", True,
       "speedup", ((TRAIN, 30),), suffix="×", derived=True),
    _m("clips_per_s_q1", "clips/s at the 75th percentile batch time", "clips/s", better=True, derived=True),
    _m("clips_per_s_q3", "clips/s at the 25th percentile batch time", "clips/s", better=True, derived=True),
    _m("tau", "RLT's threshold τ of the row (none for the baseline)", "", "g", None, "τ", ((SWEEP, 10),),
       derived=True),
    _m("load_avg", "load_avg_start→load_avg_end", "", "text", False, "load avg", ((DET, 160), (TRAIN, 100)),
       derived=True),
)

METRIC_BY_NAME: dict[str, Metric] = {m.name: m for m in METRIC_TABLE}
# recorded metric name -> meaning (results.load makes one column of each)
METRICS: dict[str, str] = {m.name: m.meaning for m in METRIC_TABLE if not m.derived}


def shown_in(table: str, metrics: tuple[Metric, ...] | None = None) -> list[Metric]:
    """The metrics a report table shows, in column order."""
    metrics = METRIC_TABLE if metrics is None else metrics
    cols = [(s.order, i, m) for i, m in enumerate(metrics) for s in m.shown if s.table == table]
    return [m for _, _, m in sorted(cols, key=lambda c: (c[0], c[1]))]
