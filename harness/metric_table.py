"""The metrics a record may carry and how the report shows them: :data:`METRIC_TABLE`, one entry per metric.

A :class:`Metric` is described once: its meaning, unit, how a table formats it, whether higher is better,
which report tables show it in which column (``shown``), and for a metric the report computes from others,
its formula (``derive``, over a record's readings). The report builds its columns from this table, so a new
metric reaches a table by being measured and getting one entry here; a derived one by one entry with its
``derive``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Protocol


class Readings(Protocol):
    """What a formula reads of a record: a metric (or cell field) as a number, or as a list of numbers."""

    def num(self, name: str) -> float | None: ...

    def nums(self, name: str) -> list[float] | None: ...

    def text(self, name: str) -> object: ...


@dataclass(frozen=True)
class Shown:
    """A metric's column in one report table: ``order`` sorts the columns, ``header`` overrides the
    metric's own."""

    table: str   # inference | training | tokens | rlt_threshold_sweep | inference_details | headline
    order: int
    header: str | None = None


@dataclass(frozen=True)
class Metric:
    """One metric. Entries name every setting but the name and meaning (``higher_is_better=False``, not a bare
    ``False``); ``shown`` takes ``Shown`` or its fields as a tuple, ``(table, order[, header])``."""

    name: str
    meaning: str
    _: KW_ONLY
    unit: str = ""
    fmt: str = "adaptive"      # fixed:N | signed:N | sig:N | adaptive | g | text (report.format.formatter)
    higher_is_better: bool | None = None
    header: str = ""           # column header (default: the name)
    suffix: str = ""           # appended to the formatted value, e.g. "×"
    iqr: tuple[str, str] | None = None  # metrics shown in brackets after it: (q1, q3)
    shown: tuple[Shown, ...] = ()
    derived: bool = False      # computed by the report, never recorded
    # the formula of a derived metric over one record; None: recorded, or derived across records (a baseline)
    derive: Callable[[Readings], float | str | None] | None = None
    when_recorded: bool = False  # a column only where some row recorded it (older records keep their tables)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shown", tuple(s if isinstance(s, Shown) else Shown(*s) for s in self.shown))
        if self.derive is not None:
            object.__setattr__(self, "derived", True)

    def column_header(self, table: str) -> str:
        for s in self.shown:
            if s.table == table and s.header:
                return s.header
        return self.header or self.name

    def read(self, record: Readings) -> float | str | None:
        """This metric of one record: its formula's value, else the recorded one (a number; text as is)."""
        if self.derive is not None:
            return self.derive(record)
        return record.text(self.name) if self.fmt == "text" else record.num(self.name)


# ----------------------------------------------------------------------------------------------
# the formulas of derived metrics, one home each
# ----------------------------------------------------------------------------------------------
def delta_top1(r: Readings) -> float | None:
    top1, base = r.num("top1"), r.num("top1_baseline")
    return top1 - base if top1 is not None and base is not None else None


def tokens_out_mean(r: Readings) -> float | None:
    layers = r.nums("tokens_per_layer")
    return layers[-1] if layers else None


def kept_pct(r: Readings) -> float | None:
    kept, total = r.num("tokens_in_mean"), r.num("tokens_total")
    return 100.0 * kept / total if kept is not None and total else None


def reduction_x(r: Readings) -> float | None:
    kept, total = r.num("tokens_in_mean"), r.num("tokens_total")
    return total / kept if kept and total is not None else None


def _clips_per_s_at(time_metric: str) -> Callable[[Readings], float | None]:
    def clips(r: Readings) -> float | None:
        batch, ms = r.num("batch_size"), r.num(time_metric)
        return batch / (ms / 1000.0) if batch and ms else None
    return clips


def load_avg(r: Readings) -> str | None:
    """``1.97→2.01``: the machine's load average around the cell (other tenants slow timings down)."""
    a, b = r.num("load_avg_start"), r.num("load_avg_end")
    return None if a is None or b is None else f"{a:.2f}→{b:.2f}"


# the report's tables; "headline" is the compact inference table `tokenbench run` prints
INF, TRAIN, TOK, SWEEP, HEAD = "inference", "training", "tokens", "rlt_threshold_sweep", "headline"
DET = "inference_details"  # what else each inference cell measured: protocol, side costs, the machine

METRIC_TABLE: tuple[Metric, ...] = (
    # cost
    Metric("gflops", "GFLOPs per clip (multiply-adds, fvcore convention), mean over the clips measured",
           unit="GFLOPs", higher_is_better=False, header="GFLOPs/clip",
           shown=((INF, 30), (SWEEP, 40), (HEAD, 30, "GFLOPs"))),
    Metric("gflops_fvcore", "GFLOPs per clip traced by fvcore on a sample (cross-check of gflops)",
           unit="GFLOPs", fmt="fixed:3", higher_is_better=False, header="fvcore GFLOPs (traced)",
           shown=((DET, 70),)),
    Metric("gflops_fvcore_analytic", "the analytic count (+ the reducer's hook cost) of the clips fvcore "
           "traced: agrees with gflops_fvcore", unit="GFLOPs", fmt="fixed:3", higher_is_better=False,
           header="analytic (traced)", shown=((DET, 75),)),
    Metric("gflops_reducer_overhead", "a reducer's own in-block cost per clip (similarity matmuls), included "
           "in gflops", unit="GFLOPs", fmt="sig:3", higher_is_better=False, header="reducer GFLOPs",
           shown=((DET, 80),)),
    Metric("gflops_attention", "share of gflops in attention matmuls (QKᵀ and AV), GFLOPs per clip",
           unit="GFLOPs", fmt="sig:3", higher_is_better=False, header="attention GFLOPs", shown=((DET, 60),)),
    # tokens
    Metric("tokens_in_mean", "tokens per clip entering the first block, mean", unit="tokens", fmt="fixed:1",
           higher_is_better=False, header="tokens/clip in",
           shown=((INF, 40), (TOK, 20, "kept mean"), (SWEEP, 20, "tokens/clip"), (HEAD, 40, "tokens in"))),
    Metric("tokens_in_min", "tokens per clip entering the first block, min", unit="tokens", fmt="fixed:0",
           higher_is_better=False, header="kept min", shown=((TOK, 30),)),
    Metric("tokens_in_max", "tokens per clip entering the first block, max", unit="tokens", fmt="fixed:0",
           higher_is_better=False, header="kept max", shown=((TOK, 40),)),
    Metric("tokens_total", "tokens per clip before reduction (T'·H'·W')", unit="tokens", fmt="fixed:0",
           header="tokens total", shown=((TOK, 10),)),
    Metric("tokens_per_layer", "list: mean tokens per clip after each block", unit="tokens", fmt="text"),
    Metric("tokens_out_min", "tokens per clip after the last block, min", unit="tokens", fmt="fixed:0",
           header="out min", shown=((TOK, 50),), when_recorded=True),
    Metric("tokens_out_max", "tokens per clip after the last block, max", unit="tokens", fmt="fixed:0",
           header="out max", shown=((TOK, 60),), when_recorded=True),
    Metric("tokens_mlp_per_layer", "list: mean tokens per clip entering each block's MLP (the budget axis)",
           unit="tokens", fmt="text"),
    Metric("tokens_per_clip", "list: tokens entering the network, one entry per clip", unit="tokens",
           fmt="text"),
    # wall-clock (inference)
    Metric("time_ms_median", "forward wall-clock per batch (ms), median over repeats, selection included",
           unit="ms", higher_is_better=False, header="time/batch (ms)", shown=((DET, 10),),
           iqr=("time_ms_q1", "time_ms_q3")),
    Metric("time_ms_q1", "25th percentile of the same", unit="ms", higher_is_better=False),
    Metric("time_ms_q3", "75th percentile of the same", unit="ms", higher_is_better=False),
    Metric("baseline_time_ms_median", "the baseline (reducer none) per batch, timed interleaved in the same "
           "cell", unit="ms", higher_is_better=False, header="baseline (ms)", shown=((DET, 20),)),
    Metric("speedup", "median of the paired per-repeat ratios baseline / reducer, same cell", unit="×",
           fmt="fixed:2", higher_is_better=True, header="speedup", shown=((INF, 70), (SWEEP, 50), (HEAD, 70)),
           suffix="×", iqr=("speedup_q1", "speedup_q3")),
    Metric("speedup_q1", "25th percentile of the paired per-repeat ratios", unit="×", fmt="fixed:2",
           higher_is_better=True),
    Metric("speedup_q3", "75th percentile of the paired per-repeat ratios", unit="×", fmt="fixed:2",
           higher_is_better=True),
    Metric("speedup_ci_lo", "lower end of the speedup's 95 % interval (bootstrap of the median over repeats)",
           unit="×", fmt="fixed:2", higher_is_better=True, header="speedup 95% lo", shown=((DET, 21),)),
    Metric("speedup_ci_hi", "upper end of the same", unit="×", fmt="fixed:2", higher_is_better=True,
           header="speedup 95% hi", shown=((DET, 22),)),
    Metric("clips_per_s", "batch_size / median seconds per batch", unit="clips/s", higher_is_better=True,
           header="clips/s", shown=((INF, 60), (HEAD, 60)), iqr=("clips_per_s_q1", "clips_per_s_q3")),
    Metric("select_ms_median", "reducer.select alone per batch (ms), median", unit="ms", fmt="sig:3",
           higher_is_better=False, header="select (ms)", shown=((DET, 30),)),
    Metric("decode_ms_per_clip", "decode + sample + resize per clip (ms), measured apart from the forward",
           unit="ms", fmt="sig:3", higher_is_better=False, header="decode (ms/clip)", shown=((DET, 40),)),
    Metric("peak_mem_mb", "reducer arm's peak device memory (MB) above the resident clips, timed runs (CUDA "
           "only)", unit="MB", fmt="fixed:0", higher_is_better=False, header="peak mem (MB)",
           shown=((DET, 50),)),
    Metric("baseline_peak_mem_mb", "the same for the baseline arm (CUDA only)", unit="MB", fmt="fixed:0",
           higher_is_better=False, header="baseline peak mem (MB)", shown=((DET, 51),)),
    Metric("repeats", "timed repeats per arm", fmt="fixed:0",
           header="repeats", shown=((DET, 130),)),
    Metric("warmup", "warm-up runs per arm", fmt="fixed:0", header="warm-up",
           shown=((DET, 140),)),
    Metric("time_clips", "clips each timed repeat ran", unit="clips", fmt="fixed:0",
           header="clips timed", shown=((DET, 120),)),
    Metric("time_videos", "videos the timed clips come from (a seeded sample spread over videos)",
           unit="videos", fmt="fixed:0", header="videos timed", shown=((DET, 121),)),
    Metric("time_tokens_in_mean", "tokens per clip entering the first block, mean over the timed clips (as "
           "timed)", unit="tokens", fmt="fixed:1", higher_is_better=False, header="tokens/clip in (timed)",
           shown=((DET, 122),)),
    Metric("time_gflops", "GFLOPs per clip, mean over the timed clips (as timed): the x the time is paired "
           "with", unit="GFLOPs", fmt="adaptive", higher_is_better=False, header="GFLOPs/clip (timed)",
           shown=((DET, 123),)),
    Metric("attn_path", "attention path the reducer arm ran: dense (one batched call), packed (per-sequence "
           "loop), varlen (one packed kernel call); '+' joins several", fmt="text",
           header="attention path", shown=((INF, 75), (DET, 23))),
    Metric("baseline_attn_path", "the same for the baseline arm", fmt="text",
           header="baseline path", shown=((DET, 24),)),
    Metric("attn_kernels_missing", "varlen attention kernels of the cell's device not installed on the "
           "machine ('+' joins several; e.g. flash_attn on a GPU without flash-attn: torch's varlen_attn and "
           "SDPA stood in, attn_backend and attn_path say which ran)", fmt="text",
           header="kernels missing", shown=((DET, 29),), when_recorded=True),
    # interference while the arms were timed (harness.timing.Interference has the rules)
    Metric("interference", "rules that marked the cell timed under interference: runqueue (other tasks "
           "runnable beyond the CPUs the cell's threads leave free), steal (CPU steal above 5 %), spread "
           "(paired ratios' IQR above 10 % of their median); '+' joins several, empty: clean",
           fmt="text", header="interference", shown=((DET, 25),), when_recorded=True),
    Metric("host_runnable_others", "runnable tasks on the host besides this process's timing thread, mean of "
           "/proc/stat procs_running read at each timed arm's start and end", unit="tasks", fmt="fixed:1",
           higher_is_better=False, header="other runnable", shown=((DET, 26),), when_recorded=True),
    Metric("host_steal_pct", "CPU steal time during the timed runs (/proc/stat), % of all CPU time", unit="%",
           fmt="fixed:1", higher_is_better=False, header="steal (%)", shown=((DET, 27),), when_recorded=True),
    Metric("speedup_rel_iqr", "interquartile range of the paired ratios over their median",
           fmt="fixed:3", higher_is_better=False, header="ratio IQR/median", shown=((DET, 28),),
           when_recorded=True),
    # accuracy
    Metric("top1", "top-1 accuracy (%) over the evaluated split", unit="%", fmt="fixed:1",
           higher_is_better=True, header="top-1 (%)",
           shown=((INF, 10), (TRAIN, 50), (SWEEP, 60), (HEAD, 10, "top-1 %")),
           iqr=("top1_ci_lo", "top1_ci_hi")),
    Metric("top1_ci_lo", "lower end of top-1's 95 % interval (Wilson over videos)", unit="%", fmt="fixed:1",
           higher_is_better=True),
    Metric("top1_ci_hi", "upper end of the same", unit="%", fmt="fixed:1", higher_is_better=True),
    Metric("top5", "top-5 accuracy (%)", unit="%", fmt="fixed:1", higher_is_better=True, header="top-5 (%)",
           shown=((DET, 90),)),
    Metric("top1_baseline", "top-1 (%) of the same model without reducer, same cell's clips, views, options "
           "and autocast (the paired baseline Δtop-1 is read against)", unit="%", fmt="fixed:1",
           higher_is_better=True),
    Metric("delta_top1_ci_lo", "lower end of Δtop-1's 95 % interval (paired bootstrap over the same videos)",
           unit="pt", fmt="signed:1", higher_is_better=True),
    Metric("delta_top1_ci_hi", "upper end of the same", unit="pt", fmt="signed:1", higher_is_better=True),
    Metric("num_clips", "clips evaluated", unit="clips", fmt="fixed:0", header="clips",
           shown=((TOK, 80),)),
    Metric("num_videos", "videos evaluated (a video gives views clips)", unit="videos", fmt="fixed:0",
           header="videos", shown=((DET, 110),)),
    Metric("views", "view protocol, 'clips×crops', e.g. '1x1'", fmt="text",
           header="views", shown=((DET, 100),)),
    Metric("skipped_videos", "unreadable videos left out (skip_unreadable = true)", unit="videos",
           fmt="fixed:0", higher_is_better=False, header="skipped videos", shown=((DET, 150),)),
    Metric("skipped_errors", "list: the first errors of the videos left out (the README lists them)",
           fmt="text"),
    Metric("reducer_params_used", "dict: the reducer's parameters after calibration (random's measured keep; "
           "the README lists them)", fmt="text"),
    Metric("calibration", "dict: a model-in-the-loop calibration run before the cell (threshold merging): "
           "the train-split clips it used (dataset, split, count, how chosen) and what it found (thresholds)",
           fmt="text"),
    # training
    Metric("train_wall_s", "wall-clock to train (s), data loading included, evaluation excluded", unit="s",
           fmt="fixed:1", higher_is_better=False, header="wall-clock to train (s)", shown=((TRAIN, 20),)),
    Metric("train_epochs", "epochs trained", fmt="fixed:0", header="epochs",
           shown=((TRAIN, 10),)),
    Metric("train_clips_per_s", "training clips per second", unit="clips/s", fmt="adaptive",
           higher_is_better=True, header="train clips/s", shown=((TRAIN, 40),)),
    Metric("train_tokens_mean", "tokens per clip seen in training, mean", unit="tokens", fmt="fixed:1",
           header="tokens/clip", shown=((TRAIN, 70),)),
    Metric("train_final_loss", "training loss of the last epoch", fmt="fixed:3",
           higher_is_better=False, header="final loss", shown=((TRAIN, 80),)),
    Metric("train_clips", "training clips used", unit="clips", fmt="fixed:0",
           header="train clips", shown=((TRAIN, 90),)),
    Metric("eval_reducer", "the reducer a train cell was evaluated with (the README lists it)",
           fmt="text"),
    # the machine
    Metric("load_avg_start", "the machine's 1-minute load average before the cell (other tenants slow "
           "timings)", fmt="fixed:2", higher_is_better=False),
    Metric("load_avg_end", "the same after the cell", fmt="fixed:2", higher_is_better=False),
    # derived by the report, never recorded: from the record (derive), or across records (the row builders)
    Metric("delta_top1", "top-1 minus the record's own paired baseline (top1_baseline; train cells: the none "
           "cell trained alike)", unit="pt", fmt="signed:1", higher_is_better=True, header="Δtop-1 (pt)",
           shown=((INF, 20), (TRAIN, 60), (SWEEP, 70), (HEAD, 20, "Δtop-1")), derive=delta_top1,
           iqr=("delta_top1_ci_lo", "delta_top1_ci_hi")),
    Metric("train_seeds", "training runs (seeds) pooled in the row", fmt="fixed:0",
           header="seeds", shown=((TRAIN, 31),), derived=True),
    Metric("train_speedup_range", "min–max of the wall-clock speedup over the seeds", unit="×", fmt="text",
           header="speedup range (seeds)", shown=((TRAIN, 32),), derived=True),
    Metric("top1_range", "min–max of top-1 over the seeds", unit="%", fmt="text",
           header="top-1 range (seeds)", shown=((TRAIN, 51),), derived=True),
    Metric("tokens_out_mean", "tokens per clip after the last block, mean", unit="tokens", fmt="fixed:1",
           higher_is_better=False, header="tokens/clip out",
           shown=((INF, 50), (TOK, 70, "after last block"), (HEAD, 50, "out")), derive=tokens_out_mean),
    Metric("kept_pct", "share of the tubelets kept at the input (%)", unit="%", fmt="fixed:1",
           higher_is_better=False, header="kept (%)", shown=((TOK, 50), (SWEEP, 30)), derive=kept_pct),
    Metric("reduction_x", "tokens total / mean tokens kept", unit="×", fmt="fixed:2", higher_is_better=True,
           header="reduction", shown=((TOK, 60),), suffix="×", derive=reduction_x),
    Metric("train_speedup", "the baseline's wall-clock to train / this one, same setting", unit="×",
           fmt="fixed:2", higher_is_better=True, header="speedup", shown=((TRAIN, 30),), suffix="×",
           derived=True),
    Metric("clips_per_s_q1", "clips/s at the 75th percentile batch time", unit="clips/s",
           higher_is_better=True, derive=_clips_per_s_at("time_ms_q3")),
    Metric("clips_per_s_q3", "clips/s at the 25th percentile batch time", unit="clips/s",
           higher_is_better=True, derive=_clips_per_s_at("time_ms_q1")),
    Metric("tau", "RLT's threshold τ of the row (none for the baseline)", fmt="g",
           header="τ", shown=((SWEEP, 10),), derived=True),
    Metric("load_avg", "load_avg_start→load_avg_end", fmt="text", higher_is_better=False,
           header="load avg", shown=((DET, 160), (TRAIN, 100)), derive=load_avg),
)

METRIC_BY_NAME: dict[str, Metric] = {m.name: m for m in METRIC_TABLE}
# recorded metric name -> meaning (results.load makes one column of each)
METRICS: dict[str, str] = {m.name: m.meaning for m in METRIC_TABLE if not m.derived}


def shown_in(table: str, metrics: tuple[Metric, ...] | None = None) -> list[Metric]:
    """The metrics a report table shows, in column order."""
    metrics = METRIC_TABLE if metrics is None else metrics
    cols = [(s.order, i, m) for i, m in enumerate(metrics) for s in m.shown if s.table == table]
    return [m for _, _, m in sorted(cols, key=lambda c: (c[0], c[1]))]
