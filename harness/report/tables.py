"""Tables of the report (docs/architecture.md §6): built from result records alone, rendered as Markdown, CSV and LaTeX.

Everything here is deterministic: rows are sorted by a fixed key (model, input, dataset, batch size,
reducer in the order ``none, rlt, random, tome, sta, others A–Z``, then parameters by value), numbers
are formatted with fixed precision, and nothing depends on the time or machine of generation, so the
same records always give byte-identical files.

Records come in typed (:class:`~tokenbench.harness.report.records.Record`, read straight from the records
files); a row of a table is a dict of its cells' values. A metric with a formula (``derive`` in
:data:`tokenbench.harness.schema.METRIC_TABLE`) is computed there, never here.

Timing columns (clips/s, speedup, wall-clock to train) are only ever computed within one hardware
fingerprint: the builders take the records of one fingerprint, and the report makes one table per
fingerprint id. The tokens-per-dataset table holds no timings and spans fingerprints.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import metric_table
from ..schema import DET, INF, SWEEP, TOK, TRAIN, Metric, shown_in
from .format import MISSING, Col, Table, formatter, params_text, with_iqr
from .records import Record, model_names, num, order_value, setting, sort_key

# ----------------------------------------------------------------------------------------------------
# derived values


def _baseline(bases: list[Record] | None, batch_size: Any, extra: Callable[[Record], bool] = lambda b: True):
    """The baseline record of a setting: same batch size if there is one, else the first in order."""
    if not bases:
        return None
    cands = [b for b in bases if extra(b)] or bases
    same = [b for b in cands if b.batch_size == batch_size]
    return (same or cands)[0]


def _bases(records: list[Record]) -> dict[tuple, list[Record]]:
    out: dict[tuple, list[Record]] = {}
    for r in sorted(records, key=sort_key):
        if r.reducer == "none":
            out.setdefault(setting(r), []).append(r)
    return out


def _speedup(r: Record, bases: dict[tuple, list[Record]], t_med: float | None) -> tuple:
    """(speedup, q1, q3): the record's paired speedup; else, for records without one (the runner always
    writes it), baseline median / median from the record or its baseline record at the same batch size."""
    sp, sp_q1, sp_q3 = (r.num(k) for k in ("speedup", "speedup_q1", "speedup_q3"))
    if sp is not None:
        return sp, sp_q1, sp_q3
    b_same = _baseline(bases.get(setting(r)), r.batch_size)
    b_time = r.num("baseline_time_ms_median")
    if b_time is None and b_same is not None and b_same.batch_size == r.batch_size:
        b_time = b_same.num("time_ms_median")
    if b_time is not None and t_med:
        return b_time / t_med, None, None
    return (1.0 if r.reducer == "none" and t_med is not None else None), None, None


def derived(r: Record) -> dict[str, Any]:
    """Every metric the table computes from one record by its formula (``Metric.derive``)."""
    return {m.name: m.read(r) for m in metric_table.METRIC_TABLE if m.derive is not None}


# the recorded numbers an inference row carries (its tables add the rest of theirs through with_metrics)
INFERENCE_NUMBERS = ("top1", "top1_baseline", "delta_top1_ci_lo", "delta_top1_ci_hi", "top1_ci_lo",
                     "top1_ci_hi", "top5", "time_gflops", "tokens_in_mean", "tokens_in_min", "tokens_in_max",
                     "tokens_total", "time_ms_median", "time_ms_q1", "time_ms_q3", "num_clips")


def inference_values(records: list[Record]) -> list[dict]:
    """One row per inference record of ONE fingerprint, with Δtop-1, speedup and clips/s derived.

    * Δtop-1: top-1 minus the record's own paired baseline (``top1_baseline``: the runner's baseline on the
      same clips, views, options and autocast), never another row picked by dataset name; its 95 %
      interval is the record's paired bootstrap (``delta_top1_ci_lo``/``_hi``).
    * speedup: the record's paired ``speedup`` (and IQR); else ``baseline_time_ms_median /
      time_ms_median`` from the record; else the baseline record's median at the same batch size;
      1 for the baseline itself.
    * clips/s: the record's ``clips_per_s``, else batch / median; its IQR from the time quartiles.
    """
    fps = {r.fingerprint for r in records}
    assert len(fps) <= 1, f"timings of several fingerprints in one table: {sorted(fps)}"
    names = model_names(records)
    bases = _bases(records)
    rows = []
    for r in sorted(records, key=sort_key):
        row = {name: r.num(name) for name in INFERENCE_NUMBERS} | derived(r)
        t_med = row["time_ms_median"]
        sp, sp_q1, sp_q3 = _speedup(r, bases, t_med)
        bs = r.batch_size
        clips = r.num("clips_per_s")
        if clips is None and t_med and bs:
            clips = bs / (t_med / 1000.0)
        gflops = r.num("gflops")
        rows.append(row | {
            "model": names.get(setting(r)[:4], r.model), "dataset": r.dataset,
            "reducer": r.reducer, "label": r.label, "params": params_text(r.params), "batch_size": bs,
            "gflops": gflops if gflops is not None else r.num("gflops_fvcore"), "clips_per_s": clips,
            "speedup": sp, "speedup_q1": sp_q1, "speedup_q3": sp_q3, "threshold": num_param(r, "threshold"),
            "views": r.text("views"), "_record": r,
        })
    return rows


def training_values(records: list[Record]) -> list[dict]:
    """One row per training arm of ONE fingerprint, its seeds (``[train] seeds``) pooled: speedup = the
    baseline's wall-clock / this one, the baseline trained on the same setting (same batch size and
    epochs) with the same seed where there is one; wall-clock, speedup and top-1 are means over the seeds,
    with their range (min–max) beside them when there are several."""
    fps = {r.fingerprint for r in records}
    assert len(fps) <= 1, f"timings of several fingerprints in one table: {sorted(fps)}"
    names = model_names(records)
    bases = _bases(records)
    arms: dict[tuple, list[dict]] = {}
    for r in sorted(records, key=sort_key):
        epochs = r.num("train_epochs")
        b = _baseline(bases.get(setting(r)), r.batch_size, lambda b, ep=epochs: b.num("train_epochs") == ep)
        same_seed = [x for x in bases.get(setting(r), []) if x.cell.get("seed") == r.cell.get("seed")
                     and x.batch_size == r.batch_size and x.num("train_epochs") == epochs]
        b = same_seed[0] if same_seed else b
        wall = r.num("train_wall_s")
        b_wall = b.num("train_wall_s") if b is not None else None
        top1 = r.num("top1")
        b_top1 = b.num("top1") if b is not None else r.num("top1_baseline")
        tokens = r.num("train_tokens_mean")
        key = (setting(r), r.label, r.params_json, r.batch_size, epochs)
        arms.setdefault(key, []).append({
            "model": names.get(setting(r)[:4], r.model), "dataset": r.dataset,
            "reducer": r.reducer, "label": r.label, "params": params_text(r.params),
            "batch_size": r.batch_size, "train_epochs": epochs,
            "train_wall_s": wall, "baseline_train_wall_s": b_wall,
            "train_speedup": b_wall / wall if b_wall is not None and wall else None,
            "train_clips_per_s": r.num("train_clips_per_s"),
            "top1": top1, "delta_top1": top1 - b_top1 if top1 is not None and b_top1 is not None else None,
            "top1_ci_lo": r.num("top1_ci_lo"), "top1_ci_hi": r.num("top1_ci_hi"),
            "train_tokens_mean": tokens if tokens is not None else r.num("tokens_in_mean"),
            "train_final_loss": r.num("train_final_loss"), "load_avg": metric_table.load_avg(r),
            "_record": r,
        })
    return [_pool_seeds(rows) for rows in arms.values()]


POOLED = ("train_wall_s", "baseline_train_wall_s", "train_speedup", "train_clips_per_s", "top1", "delta_top1",
          "train_tokens_mean", "train_final_loss")


def _pool_seeds(rows: list[dict]) -> dict:
    """One arm's rows over its seeds: the mean of each number, the range of speedup and top-1."""
    out = dict(rows[0])
    out["train_seeds"] = len(rows)
    if len(rows) == 1:
        return out
    for k in POOLED:
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = sum(vals) / len(vals) if vals else None
    for k in ("train_speedup", "top1"):
        vals = [r[k] for r in rows if r[k] is not None]
        out[f"{k}_range"] = f"{min(vals):.2f}–{max(vals):.2f}" if k == "train_speedup" and vals else (
            f"{min(vals):.1f}–{max(vals):.1f}" if vals else None)
    out["top1_ci_lo"] = out["top1_ci_hi"] = None  # a mean over seeds: its range is the spread shown
    loads = [r["load_avg"] for r in rows if r["load_avg"]]
    out["load_avg"] = "; ".join(loads) if loads else None
    return out


def num_param(r: Record, name: str) -> float | None:
    """A reducer parameter of the record as a number (RLT's ``threshold``), or None."""
    return num(r.params.get(name))


def token_records(records: list[Record]) -> list[Record]:
    """One inference record per (setting, reducer variant), across fingerprints (token counts do not
    depend on hardware): the one that counted the most clips, then the smallest batch, then the first
    fingerprint id."""
    best: dict[tuple, tuple] = {}
    for r in records:
        k = (setting(r), r.reducer, r.params_json)
        rank = (-(r.num("num_clips") or len(r.nums("tokens_per_clip") or [])),
                order_value(r.batch_size), r.fingerprint, r.key)
        if k not in best or rank < best[k][0]:
            best[k] = (rank, r)
    return sorted((r for _, r in best.values()), key=sort_key)


# ----------------------------------------------------------------------------------------------------
# the four tables


def col(header: str, key: str, fmt: Callable[[Any], str], align: str = "r") -> Col:
    return Col(header, (key,), lambda row, key=key, fmt=fmt: fmt(row.get(key)), align)


def text(v: Any) -> str:
    return MISSING if v is None else str(v)


def metric_col(m: Metric, table: str, iqr: bool = True) -> Col:
    """The column of metric ``m`` in ``table``, formatted as its entry says (IQR in brackets when it has one)."""
    f = formatter(m.fmt)
    if m.iqr and iqr:
        q1, q3 = m.iqr
        return Col(m.column_header(table), (m.name, q1, q3),
                   lambda r: with_iqr(r.get(m.name), r.get(q1), r.get(q3), f, m.suffix))

    def show(row: dict) -> str:
        s = f(row.get(m.name))
        return s if s == MISSING else s + m.suffix
    return Col(m.column_header(table), (m.name,), show)


def metric_cols(table: str, iqr: bool = True, rows: list[dict] | None = None) -> list[Col]:
    """The table's metric columns; given ``rows``, those ``when_recorded`` only where a row has a value."""
    return [metric_col(m, table, iqr) for m in shown_in(table)
            if not (m.when_recorded and rows is not None) or any(row.get(m.name) is not None for row in rows)]


def with_metrics(row: dict, r: Record, table: str) -> dict:
    """``row`` plus every metric ``table`` shows that the row builder did not fill: recorded, or computed from
    the record by its formula (a metric derived across records is the builder's)."""
    for m in shown_in(table):
        if m.name not in row and (m.derive is not None or not m.derived):
            row[m.name] = m.read(r)
    return row


IDENT = {"model": col("model", "model", text, "l"), "dataset": col("dataset", "dataset", text, "l"),
         "reducer": col("reducer", "label", text, "l"), "params": col("params", "params", text, "l"),
         "batch": col("batch", "batch_size", text)}


def ident_cols(*names: str) -> list[Col]:
    return [IDENT[n] for n in names]


SPEEDUP_NOTE = ("speedup: median over repeats of baseline time / reducer time per batch, the two timed in the "
                "same cell on the same clips in a balanced order (ABBA over repeats); in brackets the "
                "interquartile range of those paired ratios (the details table has its 95 % bootstrap "
                "interval). The none row is the A/A control, the baseline timed against itself the same way: it "
                "should read 1.00 within noise (records from before the control carry a typed-in 1.00 without "
                "an interval). clips/s: batch size / median batch time, IQR from the time quartiles.")


NOISY_MARK = " †"
NOISY_NOTE = ("† timed under interference (the details table's interference column names the rule: runqueue, other "
              "tasks runnable beyond the CPUs the cell's threads leave free; steal, CPU steal above 5 %; spread, "
              "the paired ratios' IQR above 10 % of their median): its speedup is not to be trusted; "
              "tokenbench run --rerun-noisy times such cells again.")


def _mark_noisy(rows: list[dict]) -> list[str]:
    """Mark the label of every row whose cell was timed under interference; the note to add (none: none)."""
    noisy = [row for row in rows if row["_record"].value("interference")]
    for row in noisy:
        row["label"] = f"{row['label']}{NOISY_MARK}"
    return [NOISY_NOTE] if noisy else []


def inference_table(records: list[Record], fingerprint: str) -> Table | None:
    rows = [with_metrics(row, row["_record"], INF)
            for row in inference_values([r for r in records if r.mode == "inference"])]
    if not rows:
        return None
    noisy_note = _mark_noisy(rows)
    cols = ident_cols("model", "dataset", "reducer", "params", "batch") + metric_cols(INF)
    notes = ["top-1: in brackets its 95 % interval (Wilson over videos). Δtop-1: percentage points against the "
             "cell's own paired baseline (the same model without reducer on the same clips, views, options "
             "and autocast); in brackets its 95 % interval, a paired bootstrap over the same videos.",
             "attention path: dense (one batched call), packed (per-sequence loop) or varlen (one kernel call), "
             "as the reducer arm ran; rows marked [packed] ran every arm per sequence (attn_path = \"packed\"), "
             "so they compare selection at one kernel shape.",
             "tokens/clip in: entering the first block; out: after the last block (differs for "
             "progressive reducers such as ToMe and STA).", SPEEDUP_NOTE] + noisy_note
    return Table("inference", "Inference: accuracy, cost and speed per reducer", cols, rows, fingerprint, notes)


def details_table(records: list[Record], fingerprint: str) -> Table | None:
    rows = [with_metrics(row, row["_record"], DET)
            for row in inference_values([r for r in records if r.mode == "inference"])]
    if not rows:
        return None
    noisy_note = _mark_noisy(rows)
    cols = ident_cols("model", "dataset", "reducer", "batch") + metric_cols(DET, rows=rows)
    notes = ["time/batch: the median forward time per batch with the reducer's selection inside it (IQR in "
             "brackets); baseline: the reducer none timed interleaved in the same cell (ABBA); speedup 95 %: "
             "bootstrap over repeats of the median paired ratio; attention path / baseline path: what each arm "
             "ran; videos / tokens / GFLOPs (timed): of the timed clips, a seeded sample over the videos; "
             "select: the "
             "reducer's selection timed alone; decode: decode + sample + resize per clip, timed apart.",
             "fvcore GFLOPs (traced): fvcore with attention handles on a sample of the clips; analytic: the "
             "count from the same clips' token counts (they agree); reducer GFLOPs: the reducer's own "
             "in-block work per clip, included in GFLOPs/clip; attention GFLOPs: the QKᵀ and AV share.",
             "load avg: the machine's 1-minute load average before → after the cell."] + noisy_note
    if any(row.get("host_runnable_others") is not None for row in rows):
        notes.append("other runnable, steal: what /proc/stat said while the arms were timed (at each timed arm's "
                     "start and end); ratio IQR/median: the spread of the paired ratios.")
    return Table("inference_details", "Inference details: timing protocol and side costs per cell", cols, rows,
                 fingerprint, notes)


def training_table(records: list[Record], fingerprint: str) -> Table | None:
    rows = [with_metrics(row, row["_record"], TRAIN)
            for row in training_values([r for r in records if r.mode == "train"])]
    if not rows:
        return None
    cols = ident_cols("model", "dataset", "reducer", "params", "batch") + metric_cols(TRAIN)
    notes = ["wall-clock to train: data loading included, evaluation excluded.",
             "speedup: the baseline's (reducer none, same model, dataset, batch size and epochs; the same "
             "seed) wall-clock divided by this one, both on this hardware.",
             "seeds: training runs of the arm ([train] seeds); with several, wall-clock, speedup and top-1 "
             "are means over them and the ranges (min–max over seeds) are their spread; top-1 of a single "
             "run carries its 95 % interval (Wilson over videos) in brackets.",
             "tokens/clip: mean tokens per clip seen in training."]
    return Table("training", "Training: wall-clock to train and accuracy per reducer", cols, rows,
                 fingerprint, notes)


def tokens_table(records: list[Record]) -> Table | None:
    recs = [r for r in records if r.mode == "inference" and r.num("tokens_in_mean") is not None]
    if not recs:
        return None
    names = model_names(recs)
    rows = [with_metrics({"dataset": r.dataset, "model": names.get(setting(r)[:4], r.model), "label": r.label,
                          "reducer": r.reducer, "params": params_text(r.params)}, r, TOK)
            for r in token_records(recs)]
    rows.sort(key=lambda row: str(row["dataset"]))  # stable: keeps the model/reducer order per dataset
    cols = ident_cols("dataset", "model", "reducer") + metric_cols(TOK)
    notes = ["Tokens per clip entering the network (kept), over the clips of each dataset; "
             "tokens total = T′·H′·W′ before reduction; reduction = total / mean kept.",
             "Token counts do not depend on hardware; each row is from the record that counted the most clips."]
    return Table("tokens", "Tokens per clip by dataset and reducer", cols, rows, None, notes)


def sweep_table(records: list[Record], fingerprint: str) -> Table | None:
    recs = [r for r in records if r.mode == "inference"]
    rlt = [r for r in recs if r.reducer == "rlt" and num_param(r, "threshold") is not None]
    if not rlt:
        return None
    settings = {(setting(r), r.batch_size) for r in rlt}
    base = [r for r in recs if r.reducer == "none" and (setting(r), r.batch_size) in settings]
    rows = [with_metrics(row, row["_record"], SWEEP) for row in inference_values(rlt + base)]
    for row in rows:
        row["tau"] = row["threshold"] if row["reducer"] == "rlt" else None
    cols = ident_cols("model", "dataset", "batch", "reducer") + metric_cols(SWEEP)
    notes = ["RLT keeps a tubelet iff its mean absolute difference from the previous one exceeds τ "
             "(ImageNet-normalised pixels); the baseline row (none) keeps every tubelet.", SPEEDUP_NOTE]
    return Table("rlt_threshold_sweep", "RLT threshold sweep: τ against tokens, GFLOPs, speedup and top-1",
                 cols, rows, fingerprint, notes)
