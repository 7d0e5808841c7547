"""Tables of the report (DESIGN.md §6): built from result records alone, rendered as Markdown, CSV and LaTeX.

Everything here is deterministic: rows are sorted by a fixed key (model, input, dataset, batch size,
reducer in the order ``none, rlt, random, tome, sta, others A–Z``, then parameters by value), numbers
are formatted with fixed precision, and nothing depends on the time or machine of generation, so the
same records always give byte-identical files.

Records come in as plain dicts (:func:`records_from_frame` turns the DataFrame of ``results.load`` into
them): cell fields, ``label``, ``fingerprint``, ``fp_*`` fields and the metrics of
:data:`tokenbench.harness.schema.METRICS`, ``params`` parsed into a dict, missing values as ``None``.

Timing columns (clips/s, speedup, wall-clock to train) are only ever computed within one hardware
fingerprint: the builders take the records of one fingerprint, and the report makes one table per
fingerprint id. The tokens-per-dataset table holds no timings and spans fingerprints.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .schema import canonical_json, reducer_label

# Reducers in the order tables and legends list them; others follow alphabetically.
REDUCER_ORDER = ("none", "rlt", "random", "tome", "sta")
MISSING = "–"


# ----------------------------------------------------------------------------------------------------
# records


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return type(v).__name__ in ("NAType", "NaTType")


def num(v: Any) -> float | None:
    """A metric as a float, or None when absent / NaN / not a number."""
    if _is_missing(v) or isinstance(v, (list, tuple, dict)):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def num_list(v: Any) -> list[float] | None:
    """A list metric (``tokens_per_layer``, ``tokens_per_clip``) as floats, or None."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return None
    if v is None or isinstance(v, (str, bytes, dict)) or not hasattr(v, "__iter__"):
        return None
    out = [num(x) for x in v]
    out = [x for x in out if x is not None]
    return out or None


def records_from_frame(df) -> list[dict[str, Any]]:
    """The DataFrame of ``results.load`` as a list of record dicts (see module docstring)."""
    out = []
    for row in df.to_dict("records"):
        r = {k: (None if not isinstance(v, (list, tuple, dict)) and _is_missing(v) else v)
             for k, v in row.items()}
        params = r.get("params")
        if isinstance(params, str):
            try:
                params = json.loads(params)
            except ValueError:
                params = {"params": params}
        params = dict(params or {})
        r["params"] = params
        r["params_json"] = canonical_json(params)
        r["reducer"] = str(r.get("reducer") or "?")
        r["label"] = r.get("label") or reducer_label(r["reducer"], params)
        r["fingerprint"] = str(r.get("fingerprint") or "unknown")
        r["suite"] = str(r.get("suite") or "unnamed")
        bs = num(r.get("batch_size"))
        r["batch_size"] = int(bs) if bs is not None else None
        out.append(r)
    return out


def _sk(v: Any) -> tuple:
    """Total order over mixed values: numbers, then strings, then missing."""
    f = num(v) if not isinstance(v, str) else None
    if f is not None:
        return (0, f, "")
    if _is_missing(v):
        return (2, 0.0, "")
    return (1, 0.0, str(v))


def reducer_rank(name: str) -> tuple:
    return (REDUCER_ORDER.index(name), "") if name in REDUCER_ORDER else (len(REDUCER_ORDER), name)


def params_key(params: dict[str, Any]) -> tuple:
    return tuple((k, _sk(v) if not isinstance(v, (list, dict)) else (1, 0.0, canonical_json(v)))
                 for k, v in sorted(params.items()))


def checkpoint_of(r: dict) -> str:
    """A record's checkpoint: its weights' sha256 when recorded (two files holding the same weights are
    one checkpoint), else what the cell named (a path, ``none``, ``trained:<hash>``)."""
    sha = r.get("checkpoint_sha256")
    return f"sha256:{sha}" if isinstance(sha, str) and sha else str(r.get("checkpoint") or "")


def setting(r: dict) -> tuple:
    """What makes two records comparable: same model, input, checkpoint and data."""
    return tuple(checkpoint_of(r) if k == "checkpoint" else str(r.get(k)) if r.get(k) is not None else ""
                 for k in ("model", "num_frames", "img_size", "checkpoint", "dataset", "split"))


def sort_key(r: dict) -> tuple:
    return (str(r.get("model") or ""), _sk(r.get("num_frames")), _sk(r.get("img_size")),
            str(r.get("checkpoint") or ""), str(r.get("dataset") or ""), str(r.get("split") or ""),
            _sk(r.get("batch_size")), reducer_rank(r["reducer"]), params_key(r["params"]), r["label"],
            str(r.get("key") or ""))


def dedupe(records: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """(ok, failed): the latest record per (suite, fingerprint, cell key); a failed cell that later
    succeeded on the same fingerprint is not listed as failed."""
    latest: dict[tuple, dict] = {}
    for r in records:
        k = (r["suite"], r["fingerprint"], str(r.get("key") or r["params_json"] + repr(sort_key(r))),
             r.get("status") == "ok")
        when = (str(r.get("finished") or ""), str(r.get("started") or ""))
        if k not in latest or when >= (str(latest[k].get("finished") or ""),
                                       str(latest[k].get("started") or "")):
            latest[k] = r
    ok = [r for k, r in latest.items() if k[3]]
    done = {k[:3] for k in latest if k[3]}
    failed = [r for k, r in latest.items() if not k[3] and k[:3] not in done]
    return sorted(ok, key=sort_key), sorted(failed, key=lambda r: (r["fingerprint"], sort_key(r)))


def model_names(records: list[dict]) -> dict[tuple, str]:
    """Display name of each (model, frames, size, checkpoint): the bare model name unless the same
    model appears with several inputs or checkpoints, then with ``16×224²`` (and the checkpoint's short hash,
    or its file name for records without one)."""
    variants: dict[str, set] = {}
    for r in records:
        variants.setdefault(str(r.get("model")), set()).add(setting(r)[:4])
    names = {}
    for model, vs in variants.items():
        geoms = {v[1:3] for v in vs}
        for v in vs:
            name = model
            if len(geoms) > 1:
                name += f" {v[1]}×{v[2]}²"
            if len(vs) > len(geoms) and v[3]:  # a checkpoint by its short hash, else by its file name
                sha = v[3].removeprefix("sha256:") if v[3].startswith("sha256:") else None
                name += f" ({sha[:12] if sha else v[3].replace(chr(92), '/').rsplit('/', 1)[-1]})"
            names[v] = name
    return names


# ----------------------------------------------------------------------------------------------------
# formatting


def fixed(d: int) -> Callable[[Any], str]:
    def f(v):
        v = num(v)
        return MISSING if v is None else f"{v:.{d}f}"
    return f


def signed(d: int) -> Callable[[Any], str]:
    def f(v):
        v = num(v)
        if v is None:
            return MISSING
        v = round(v, d) + 0.0  # no "-0.0"
        return f"{v:+.{d}f}"
    return f


def adaptive(v: Any) -> str:
    """3 significant-ish digits at fixed rules: 0 decimals ≥ 100, 1 decimal ≥ 10, 2 below."""
    v = num(v)
    if v is None:
        return MISSING
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def times(d: int) -> Callable[[Any], str]:
    """A ratio as ``1.23×``."""
    def f(v):
        v = num(v)
        return MISSING if v is None else f"{v:.{d}f}×"
    return f


def with_iqr(value: Any, q1: Any, q3: Any, fmt: Callable[[Any], str], suffix: str = "") -> str:
    if num(value) is None:
        return MISSING
    s = fmt(value) + suffix
    if num(q1) is not None and num(q3) is not None:
        s += f" ({fmt(q1)}–{fmt(q3)})"
    return s


def params_text(params: dict) -> str:
    if not params:
        return MISSING
    return ", ".join(f"{k}={canonical_json(v) if isinstance(v, (list, dict)) else v}"
                     for k, v in sorted(params.items()))


def csv_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, dict)):
        return canonical_json(v)
    f = num(v)
    if f is not None and not isinstance(v, str):
        return repr(round(f, 4) + 0.0)
    return "" if _is_missing(v) else str(v)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "τ": r"$\tau$", "Δ": r"$\Delta$", "×": r"$\times$", "–": "--", "—": "---", "²": r"$^2$",
          "±": r"$\pm$", "→": r"$\rightarrow$", "·": r"$\cdot$", "≥": r"$\geq$", "≤": r"$\leq$",
          "′": "'", "ᵀ": r"$^\top$", "…": r"\dots{}", "|": r"\textbar{}", "<": r"\textless{}",
          ">": r"\textgreater{}"}


def latex_escape(s: str) -> str:
    out = "".join(_LATEX.get(c, c) for c in s)
    return out.replace("$$", "")  # merge adjacent math, e.g. "$\tau$$\times$"


def md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------------------------------
# the table model


@dataclass(frozen=True)
class Col:
    header: str                      # Markdown / LaTeX header
    fields: tuple[str, ...]          # CSV columns, read raw from the row
    text: Callable[[dict], str]      # the cell as shown in Markdown / LaTeX / terminal
    align: str = "r"                 # "l" or "r"


@dataclass
class Table:
    name: str                        # file stem, e.g. "inference"
    title: str
    columns: list[Col]
    rows: list[dict]
    fingerprint: str | None = None   # the one fingerprint of its timings (None: hardware-independent)
    notes: list[str] = field(default_factory=list)

    def csv_fields(self) -> list[str]:
        seen: list[str] = ["fingerprint"] if self.fingerprint else []
        for c in self.columns:
            seen += [f for f in c.fields if f not in seen]
        return seen

    def markdown_body(self) -> str:
        head = "| " + " | ".join(md_escape(c.header) for c in self.columns) + " |"
        rule = "|" + "|".join("---:" if c.align == "r" else ":---" for c in self.columns) + "|"
        lines = [head, rule]
        for row in self.rows:
            lines.append("| " + " | ".join(md_escape(c.text(row)) for c in self.columns) + " |")
        out = "\n".join(lines) + "\n"
        if self.notes:
            out += "\n" + "\n".join(f"* {n}" for n in self.notes) + "\n"
        return out

    def markdown(self) -> str:
        out = f"# {self.title}\n\n"
        if self.fingerprint:
            out += f"Hardware fingerprint: `{self.fingerprint}` (all timings in this table were measured on it).\n\n"
        return out + self.markdown_body()

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        fields = self.csv_fields()
        w.writerow(fields)
        for row in self.rows:
            w.writerow([csv_value(self.fingerprint if f == "fingerprint" else row.get(f)) for f in fields])
        return buf.getvalue()

    def latex(self, label: str) -> str:
        spec = "".join(c.align for c in self.columns)
        caption = self.title + (f" (hardware: {self.fingerprint})" if self.fingerprint else "")
        lines = ["% Generated by `tokenbench report` from result records; do not edit by hand.",
                 "% Needs \\usepackage{booktabs}.",
                 "\\begin{table}[t]", "\\centering", "\\small",
                 f"\\caption{{{latex_escape(caption)}}}", f"\\label{{{label}}}",
                 f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                 " & ".join(latex_escape(c.header) for c in self.columns) + " \\\\", "\\midrule"]
        for row in self.rows:
            lines.append(" & ".join(latex_escape(c.text(row)) for c in self.columns) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines) + "\n"

    def text(self, headers: Iterable[str] | None = None) -> str:
        """Aligned plain text for the terminal; ``headers`` picks columns by header."""
        cols = self.columns if headers is None else [c for h in headers for c in self.columns
                                                       if c.header == h]
        cells = [[c.header for c in cols]] + [[c.text(r) for c in cols] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
        lines = []
        for row in cells:
            parts = [v.rjust(w) if c.align == "r" else v.ljust(w) for v, w, c in zip(row, widths, cols)]
            lines.append("  ".join(parts).rstrip())
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# derived values


def _baseline(bases: list[dict] | None, batch_size: Any, extra: Callable[[dict], bool] = lambda b: True):
    """The baseline record of a setting: same batch size if there is one, else the first in order."""
    if not bases:
        return None
    cands = [b for b in bases if extra(b)] or bases
    same = [b for b in cands if b.get("batch_size") == batch_size]
    return (same or cands)[0]


def _bases(records: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in sorted(records, key=sort_key):
        if r["reducer"] == "none":
            out.setdefault(setting(r), []).append(r)
    return out


def inference_values(records: list[dict]) -> list[dict]:
    """One row per inference record of ONE fingerprint, with Δtop-1, speedup and clips/s derived.

    * Δtop-1: top-1 minus the baseline's (reducer ``none``, same model/input/dataset) in these
      records, falling back to the record's own ``top1_baseline``.
    * speedup: the record's paired ``speedup`` (and IQR); else ``baseline_time_ms_median /
      time_ms_median`` from the record; else the baseline record's median at the same batch size;
      1 for the baseline itself.
    * clips/s: the record's ``clips_per_s``, else batch / median; its IQR from the time quartiles.
    """
    fps = {r["fingerprint"] for r in records}
    assert len(fps) <= 1, f"timings of several fingerprints in one table: {sorted(fps)}"
    names = model_names(records)
    bases = _bases(records)
    rows = []
    for r in sorted(records, key=sort_key):
        b = _baseline(bases.get(setting(r)), r.get("batch_size"), lambda b: num(b.get("top1")) is not None)
        top1 = num(r.get("top1"))
        b_top1 = num(b.get("top1")) if b is not None else None
        if b_top1 is None:
            b_top1 = num(r.get("top1_baseline"))
        t_med, t_q1, t_q3 = (num(r.get(k)) for k in ("time_ms_median", "time_ms_q1", "time_ms_q3"))
        sp, sp_q1, sp_q3 = (num(r.get(k)) for k in ("speedup", "speedup_q1", "speedup_q3"))
        if sp is None:
            sp_q1 = sp_q3 = None
            b_same = _baseline(bases.get(setting(r)), r.get("batch_size"))
            b_time = num(r.get("baseline_time_ms_median"))
            if b_time is None and b_same is not None and b_same.get("batch_size") == r.get("batch_size"):
                b_time = num(b_same.get("time_ms_median"))
            if b_time is not None and t_med:
                sp = b_time / t_med
            elif r["reducer"] == "none" and t_med is not None:
                sp = 1.0
        bs = r.get("batch_size")
        clips = num(r.get("clips_per_s"))
        if clips is None and t_med and bs:
            clips = bs / (t_med / 1000.0)
        clips_q1 = bs / (t_q3 / 1000.0) if bs and t_q3 else None
        clips_q3 = bs / (t_q1 / 1000.0) if bs and t_q1 else None
        layers = num_list(r.get("tokens_per_layer"))
        tok_in, total = num(r.get("tokens_in_mean")), num(r.get("tokens_total"))
        gflops = num(r.get("gflops"))
        rows.append({
            "model": names.get(setting(r)[:4], r.get("model")), "dataset": r.get("dataset"),
            "reducer": r["reducer"], "label": r["label"], "params": params_text(r["params"]),
            "batch_size": bs, "top1": top1, "top1_baseline": b_top1,
            "delta_top1": top1 - b_top1 if top1 is not None and b_top1 is not None else None,
            "top5": num(r.get("top5")),
            "gflops": gflops if gflops is not None else num(r.get("gflops_fvcore")),
            "tokens_in_mean": tok_in, "tokens_in_min": num(r.get("tokens_in_min")),
            "tokens_in_max": num(r.get("tokens_in_max")), "tokens_total": total,
            "tokens_out_mean": layers[-1] if layers else None,
            "kept_pct": 100.0 * tok_in / total if tok_in is not None and total else None,
            "reduction_x": total / tok_in if tok_in and total is not None else None,
            "time_ms_median": t_med, "time_ms_q1": t_q1, "time_ms_q3": t_q3,
            "clips_per_s": clips, "clips_per_s_q1": clips_q1, "clips_per_s_q3": clips_q3,
            "speedup": sp, "speedup_q1": sp_q1, "speedup_q3": sp_q3,
            "threshold": num(r["params"].get("threshold")),
            "num_clips": num(r.get("num_clips")), "views": r.get("views"),
            "_record": r,
        })
    return rows


def training_values(records: list[dict]) -> list[dict]:
    """One row per training record of ONE fingerprint; speedup = baseline wall-clock / wall-clock for the
    baseline trained on the same setting (same batch size and epochs where recorded)."""
    fps = {r["fingerprint"] for r in records}
    assert len(fps) <= 1, f"timings of several fingerprints in one table: {sorted(fps)}"
    names = model_names(records)
    bases = _bases(records)
    rows = []
    for r in sorted(records, key=sort_key):
        epochs = num(r.get("train_epochs"))
        b = _baseline(bases.get(setting(r)), r.get("batch_size"),
                      lambda b, ep=epochs: num(b.get("train_epochs")) == ep)
        wall = num(r.get("train_wall_s"))
        b_wall = num(b.get("train_wall_s")) if b is not None else None
        top1 = num(r.get("top1"))
        b_top1 = num(b.get("top1")) if b is not None else num(r.get("top1_baseline"))
        tokens = num(r.get("train_tokens_mean"))
        rows.append({
            "model": names.get(setting(r)[:4], r.get("model")), "dataset": r.get("dataset"),
            "reducer": r["reducer"], "label": r["label"], "params": params_text(r["params"]),
            "batch_size": r.get("batch_size"), "train_epochs": num(r.get("train_epochs")),
            "train_wall_s": wall, "baseline_train_wall_s": b_wall,
            "train_speedup": b_wall / wall if b_wall is not None and wall else None,
            "train_clips_per_s": num(r.get("train_clips_per_s")),
            "top1": top1, "delta_top1": top1 - b_top1 if top1 is not None and b_top1 is not None else None,
            "train_tokens_mean": tokens if tokens is not None else num(r.get("tokens_in_mean")),
            "train_final_loss": num(r.get("train_final_loss")),
            "_record": r,
        })
    return rows


def token_records(records: list[dict]) -> list[dict]:
    """One inference record per (setting, reducer variant), across fingerprints (token counts do not
    depend on hardware): the one that counted the most clips, then the smallest batch, then the first
    fingerprint id."""
    best: dict[tuple, dict] = {}
    for r in records:
        k = (setting(r), r["reducer"], r["params_json"])
        rank = (-(num(r.get("num_clips")) or len(num_list(r.get("tokens_per_clip")) or [])),
                _sk(r.get("batch_size")), r["fingerprint"], str(r.get("key") or ""))
        if k not in best or rank < best[k][0]:
            best[k] = (rank, r)
    return sorted((r for _, r in best.values()), key=sort_key)


# ----------------------------------------------------------------------------------------------------
# the four tables


def col(header: str, key: str, fmt: Callable[[Any], str], align: str = "r") -> Col:
    return Col(header, (key,), lambda row, key=key, fmt=fmt: fmt(row.get(key)), align)


def text(v: Any) -> str:
    return MISSING if v is None else str(v)


def _ident_cols(params: bool = True) -> list[Col]:
    cols = [col("model", "model", text, "l"), col("dataset", "dataset", text, "l"),
            col("reducer", "label", text, "l")]
    if params:
        cols.append(col("params", "params", text, "l"))
    return cols


SPEEDUP_NOTE = ("speedup: median over repeats of baseline time / reducer time per batch, each reducer run "
                "paired with the baseline run just before it in the same cell on the same hardware; in "
                "brackets the interquartile range of those paired ratios. clips/s: batch size / median batch "
                "time, IQR from the time quartiles.")


def inference_table(records: list[dict], fingerprint: str) -> Table | None:
    rows = inference_values([r for r in records if r.get("mode") == "inference"])
    if not rows:
        return None
    cols = _ident_cols() + [
        col("batch", "batch_size", text),
        col("top-1 (%)", "top1", fixed(1)),
        col("Δtop-1 (pt)", "delta_top1", signed(1)),
        col("GFLOPs/clip", "gflops", adaptive),
        col("tokens/clip in", "tokens_in_mean", fixed(1)),
        col("tokens/clip out", "tokens_out_mean", fixed(1)),
        Col("clips/s", ("clips_per_s", "clips_per_s_q1", "clips_per_s_q3"),
            lambda r: with_iqr(r["clips_per_s"], r["clips_per_s_q1"], r["clips_per_s_q3"], adaptive)),
        Col("speedup", ("speedup", "speedup_q1", "speedup_q3"),
            lambda r: with_iqr(r["speedup"], r["speedup_q1"], r["speedup_q3"], fixed(2), "×")),
    ]
    notes = ["Δtop-1: percentage points against the baseline (reducer none) of the same model and dataset.",
             "tokens/clip in: entering the first block; out: after the last block (differs for "
             "progressive reducers such as ToMe and STA).", SPEEDUP_NOTE]
    return Table("inference", "Inference: accuracy, cost and speed per reducer", cols, rows, fingerprint, notes)


def training_table(records: list[dict], fingerprint: str) -> Table | None:
    rows = training_values([r for r in records if r.get("mode") == "train"])
    if not rows:
        return None
    cols = _ident_cols() + [
        col("batch", "batch_size", text),
        col("epochs", "train_epochs", fixed(0)),
        col("wall-clock to train (s)", "train_wall_s", fixed(1)),
        col("speedup", "train_speedup", times(2)),
        col("train clips/s", "train_clips_per_s", adaptive),
        col("top-1 (%)", "top1", fixed(1)),
        col("Δtop-1 (pt)", "delta_top1", signed(1)),
        col("tokens/clip", "train_tokens_mean", fixed(1)),
    ]
    notes = ["wall-clock to train: data loading included, evaluation excluded.",
             "speedup: the baseline's (reducer none, same model, dataset, batch size and epochs) "
             "wall-clock divided by this one, both on this hardware.",
             "tokens/clip: mean tokens per clip seen in training."]
    return Table("training", "Training: wall-clock to train and accuracy per reducer", cols, rows,
                 fingerprint, notes)


def tokens_table(records: list[dict]) -> Table | None:
    recs = [r for r in records if r.get("mode") == "inference"
            and num(r.get("tokens_in_mean")) is not None]
    if not recs:
        return None
    names = model_names(recs)
    rows = []
    for r in token_records(recs):
        tok, total = num(r.get("tokens_in_mean")), num(r.get("tokens_total"))
        layers = num_list(r.get("tokens_per_layer"))
        rows.append({
            "dataset": r.get("dataset"), "model": names.get(setting(r)[:4], r.get("model")),
            "label": r["label"], "reducer": r["reducer"], "params": params_text(r["params"]),
            "tokens_total": total, "tokens_in_mean": tok, "tokens_in_min": num(r.get("tokens_in_min")),
            "tokens_in_max": num(r.get("tokens_in_max")),
            "kept_pct": 100.0 * tok / total if total else None,
            "reduction_x": total / tok if total is not None and tok else None,
            "tokens_out_mean": layers[-1] if layers else None,
            "num_clips": num(r.get("num_clips")),
        })
    rows.sort(key=lambda row: str(row["dataset"]))  # stable: keeps the model/reducer order per dataset
    cols = [col("dataset", "dataset", text, "l"), col("model", "model", text, "l"), col("reducer", "label", text, "l"),
            col("tokens total", "tokens_total", fixed(0)),
            col("kept mean", "tokens_in_mean", fixed(1)), col("kept min", "tokens_in_min", fixed(0)),
            col("kept max", "tokens_in_max", fixed(0)), col("kept (%)", "kept_pct", fixed(1)),
            col("reduction", "reduction_x", times(2)),
            col("after last block", "tokens_out_mean", fixed(1)), col("clips", "num_clips", fixed(0))]
    notes = ["Tokens per clip entering the network (kept), over the clips of each dataset; "
             "tokens total = T′·H′·W′ before reduction; reduction = total / mean kept.",
             "Token counts do not depend on hardware; each row is from the record that counted the most clips."]
    return Table("tokens", "Tokens per clip by dataset and reducer", cols, rows, None, notes)


def sweep_table(records: list[dict], fingerprint: str) -> Table | None:
    recs = [r for r in records if r.get("mode") == "inference"]
    rlt = [r for r in recs if r["reducer"] == "rlt" and num(r["params"].get("threshold")) is not None]
    if not rlt:
        return None
    settings = {(setting(r), r.get("batch_size")) for r in rlt}
    base = [r for r in recs if r["reducer"] == "none" and (setting(r), r.get("batch_size")) in settings]
    rows = inference_values(rlt + base)
    for row in rows:
        row["tau"] = row["threshold"] if row["reducer"] == "rlt" else None
    cols = [col("model", "model", text, "l"), col("dataset", "dataset", text, "l"), col("batch", "batch_size", text),
            col("reducer", "label", text, "l"),
            col("τ", "tau", lambda v: MISSING if num(v) is None else f"{num(v):g}"),
            col("tokens/clip", "tokens_in_mean", fixed(1)), col("kept (%)", "kept_pct", fixed(1)),
            col("GFLOPs/clip", "gflops", adaptive),
            Col("speedup", ("speedup", "speedup_q1", "speedup_q3"),
                lambda r: with_iqr(r["speedup"], r["speedup_q1"], r["speedup_q3"], fixed(2), "×")),
            col("top-1 (%)", "top1", fixed(1)), col("Δtop-1 (pt)", "delta_top1", signed(1))]
    notes = ["RLT keeps a tubelet iff its mean absolute difference from the previous one exceeds τ "
             "(ImageNet-normalised pixels); the baseline row (none) keeps every tubelet.", SPEEDUP_NOTE]
    return Table("rlt_threshold_sweep", "RLT threshold sweep: τ against tokens, GFLOPs, speedup and top-1",
                 cols, rows, fingerprint, notes)
