"""Accuracy-vs-cost curves (docs/architecture.md §6: a comparison is a set of curves, not points).

Each reducer family (the reducer: every budget of RLT, of ToMe, …; random masking by keep and random matched
to RLT's budget are one family, random masking at a keep ratio) is a curve over its budgets, placed by its
**token fraction**: mean tokens per block (:func:`~.records.tokens_per_block`) ÷ the baseline's on the same
model and data. :func:`curve_sets` gathers the points, :func:`interpolate` reads a family's curve at a
budget, :func:`matched_budget_table` is the table "top-1 at matched budget".

A point carries the intervals its record lets us state honestly:

* top-1: the record's Wilson 95 % interval over videos; Δtop-1: its paired bootstrap interval;
* throughput: the paired estimate, the record's speedup × the baseline's clips/s (the ``none`` cell of the
  same model, data and batch size on the same hardware), with the speedup's 95 % bootstrap interval × that
  baseline throughput — the cell's own drift cancels, the baseline's own timing noise is not in the bar;
  the baseline itself is placed at its clips/s with its A/A interval; a row whose baseline arm ran another
  attention path (``[packed]``) multiplies its own baseline arm's clips/s instead;
* GFLOPs: none. It is the exact mean over every clip evaluated (a count, not an estimate from a sample of
  those clips); how it varies over clips is in the token-distribution figure.

``[packed]`` rows (every arm per sequence) are points but never part of a family's line: they repeat a
budget at another kernel shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .format import MISSING, Col, Table, fixed, signed
from .records import Record, forced_packed, model_names, setting, sort_key, tokens_per_block

BUDGETS = (0.75, 0.50, 0.30)  # token fractions the matched-budget table reads each family at


@dataclass(frozen=True)
class CurvePoint:
    label: str
    family: str                        # the reducer
    packed: bool                       # a [packed] row: drawn hollow, never joined into the line
    fraction: float                    # mean tokens per block ÷ the baseline's
    gflops: float | None
    top1: float | None
    top1_lo: float | None
    top1_hi: float | None
    delta: float | None                # top-1 − the record's paired baseline (pt)
    delta_lo: float | None
    delta_hi: float | None
    throughput: float | None           # clips/s, paired (see the module docstring)
    throughput_lo: float | None
    throughput_hi: float | None
    record: Record | None = field(repr=False, compare=False, default=None)


@dataclass
class CurveSet:
    """The points of one model and dataset (and batch size, when throughput is drawn)."""

    model: str
    dataset: str
    batch_size: int | None
    baseline: CurvePoint
    points: list[CurvePoint]           # every reducer point (baseline not included), sorted by record order

    def families(self) -> dict[str, list[CurvePoint]]:
        """Each family's line: its deployed (not [packed]) points sorted by token fraction."""
        out: dict[str, list[CurvePoint]] = {}
        for p in self.points:
            if not p.packed:
                out.setdefault(p.family, []).append(p)
        return {f: sorted(ps, key=lambda p: (p.fraction, p.label)) for f, ps in out.items()}

    @property
    def title(self) -> str:
        return f"{self.model} · {self.dataset}" + (f" · batch {self.batch_size}" if self.batch_size else "")


def _baseline_throughput(r: Record, base: Record, base_tp: float | None) -> float | None:
    """The clips/s a row's speedup multiplies: the baseline cell's, unless the row's own baseline arm ran
    another attention path (a [packed] cell times its baseline per sequence too); then that arm's, from
    the cell's ``baseline_time_ms_median``."""
    path, b_path = r.value("baseline_attn_path"), base.value("attn_path")
    if base_tp is None or not path or not b_path or path == b_path:
        return base_tp
    t, bs = r.num("baseline_time_ms_median"), r.num("batch_size")
    return bs / (t / 1000.0) if t and bs else None


def _point(r: Record, base_tokens: float, base_tp: float | None, is_base: bool) -> CurvePoint:
    top1, b_top1 = r.num("top1"), r.num("top1_baseline")
    sp, sp_lo, sp_hi = (r.num(k) for k in ("speedup", "speedup_ci_lo", "speedup_ci_hi"))
    clips = r.num("clips_per_s")
    if base_tp is not None and sp is not None:
        tp = base_tp if is_base else sp * base_tp
        tp_lo = sp_lo * base_tp if sp_lo is not None else None
        tp_hi = sp_hi * base_tp if sp_hi is not None else None
    else:
        tp, tp_lo, tp_hi = clips, None, None
    gflops = r.num("gflops")
    return CurvePoint(
        label=r.label, family=r.reducer, packed=forced_packed(r),
        fraction=(tokens_per_block(r) or 0.0) / base_tokens,
        gflops=gflops if gflops is not None else r.num("gflops_fvcore"),
        top1=top1, top1_lo=r.num("top1_ci_lo"), top1_hi=r.num("top1_ci_hi"),
        delta=0.0 if is_base and top1 is not None else (top1 - b_top1 if top1 is not None and b_top1 is not None
                                                        else None),
        delta_lo=r.num("delta_top1_ci_lo"), delta_hi=r.num("delta_top1_ci_hi"),
        throughput=tp, throughput_lo=tp_lo, throughput_hi=tp_hi, record=r)


def curve_sets(records: list[Record], by_batch: bool) -> list[CurveSet]:
    """Curve sets of the ok inference records given, one per (model, data[, batch size]) that has a
    baseline with token counts and at least one reducer point with top-1. Without ``by_batch`` (accuracy
    and GFLOPs do not depend on batch size or hardware) each variant is taken once: its record of the
    smallest batch size, then the first fingerprint id; with it, ``records`` must be one fingerprint's."""
    recs = [r for r in records if r.mode == "inference" and tokens_per_block(r)]
    if not by_batch:
        first: dict[tuple, Record] = {}
        for r in sorted(recs, key=lambda r: (r.batch_size or 0, r.fingerprint, sort_key(r))):
            first.setdefault((setting(r), r.label, r.params_json), r)
        recs = list(first.values())
    names = model_names(recs)
    groups: dict[tuple, list[Record]] = {}
    for r in sorted(recs, key=sort_key):
        groups.setdefault((setting(r), r.batch_size if by_batch else None), []).append(r)
    out = []
    for (st, bs), grp in groups.items():
        bases = [r for r in grp if r.reducer == "none" and not forced_packed(r)]
        if not bases:
            continue
        b = bases[0]
        base_tp = b.num("clips_per_s") if by_batch else None
        base = _point(b, tokens_per_block(b), base_tp, True)
        pts = [_point(r, tokens_per_block(b), _baseline_throughput(r, b, base_tp), False)
               for r in grp if r is not b and r.reducer != "none"]
        if not any(p.top1 is not None for p in pts):
            continue
        out.append(CurveSet(names.get(st[:4], str(b.model)), str(b.dataset), bs, base, pts))
    return out


def _mean(vals: list[float | None]) -> float | None:
    return None if any(v is None for v in vals) else sum(vals) / len(vals)


def _lerp(a: float | None, b: float | None, t: float) -> float | None:
    return None if a is None or b is None else a + t * (b - a)


# a curve whose end lies this close to a budget (as a fraction of the tokens) is read at its end there: the
# suites place budgets within rounding of their targets (random keep 0.3 → 0.301 of 196 tokens)
SNAP = 0.01


def interpolate(curve: list[tuple[float, float, float | None, float | None]],
                at: float) -> tuple[float, float | None, float | None] | None:
    """``(value, lo, hi)`` of a curve of ``(fraction, value, lo, hi)`` at token fraction ``at``, linear
    between the two points around it (the interval's ends interpolated the same way); None when the
    curve does not span ``at`` (no extrapolation; an end within :data:`SNAP` of ``at`` is read as it is).
    Points at one fraction are averaged first."""
    by_x: dict[float, list[tuple]] = {}
    for x, v, lo, hi in curve:
        by_x.setdefault(round(x, 9), []).append((v, lo, hi))
    pts = [(x, *(_mean([v[i] for v in by_x[x]]) for i in range(3))) for x in sorted(by_x)]
    if pts and pts[0][0] - SNAP <= at < pts[0][0]:
        at = pts[0][0]
    elif pts and pts[-1][0] < at <= pts[-1][0] + SNAP:
        at = pts[-1][0]
    if not pts or not pts[0][0] - 1e-9 <= at <= pts[-1][0] + 1e-9:
        return None
    for (x0, v0, lo0, hi0), (x1, v1, lo1, hi1) in zip(pts, pts[1:] + pts[-1:]):
        if x0 - 1e-9 <= at <= x1 + 1e-9:
            t = 0.0 if x1 == x0 else (at - x0) / (x1 - x0)
            return _lerp(v0, v1, t), _lerp(lo0, lo1, t), _lerp(hi0, hi1, t)
    return None


def at_budgets(points: list[CurvePoint]) -> dict[float, dict[str, tuple | None]]:
    """Top-1 and Δtop-1 of one family's points at each of :data:`BUDGETS`."""
    top = [(p.fraction, p.top1, p.top1_lo, p.top1_hi) for p in points if p.top1 is not None]
    dl = [(p.fraction, p.delta, p.delta_lo, p.delta_hi) for p in points if p.delta is not None]
    return {b: {"top1": interpolate(top, b), "delta": interpolate(dl, b)} for b in BUDGETS}


def _pct(b: float) -> str:
    return f"{round(b * 100)}"


def _with_ci(fmt):
    def show(v: tuple | None) -> str:
        if v is None or v[0] is None:
            return MISSING
        s = fmt(v[0])
        return s + (f" ({fmt(v[1])}–{fmt(v[2])})" if v[1] is not None and v[2] is not None else "")
    return show


def matched_budget_table(records: list[Record]) -> Table | None:
    """Per model, dataset and reducer family: top-1 and Δtop-1 at 75 / 50 / 30 % of the baseline's mean
    tokens per block, read along the family's own curve. Hardware-independent (no timings)."""
    rows = []
    for cs in curve_sets(records, by_batch=False):
        for family, pts in cs.families().items():
            if not any(p.top1 is not None for p in pts):
                continue
            row = {"model": cs.model, "dataset": cs.dataset, "family": family, "budgets": len(pts),
                   "fraction_min": 100 * pts[0].fraction, "fraction_max": 100 * pts[-1].fraction,
                   "top1_baseline": cs.baseline.top1, "top1_baseline_lo": cs.baseline.top1_lo,
                   "top1_baseline_hi": cs.baseline.top1_hi}
            for b, vals in at_budgets(pts).items():
                for k, v in vals.items():
                    for i, end in enumerate(("", "_lo", "_hi")):
                        row[f"{k}_at_{_pct(b)}{end}"] = v[i] if v is not None else None
                    row[f"_{k}_{_pct(b)}"] = v
            rows.append(row)
    if not rows:
        return None
    one = fixed(1)
    top, dlt = _with_ci(one), _with_ci(signed(1))
    cols = [Col("model", ("model",), lambda r: str(r["model"]), "l"),
            Col("dataset", ("dataset",), lambda r: str(r["dataset"]), "l"),
            Col("reducer", ("family",), lambda r: str(r["family"]), "l"),
            Col("budgets", ("budgets",), lambda r: str(r["budgets"])),
            Col("tokens/block (% of baseline)", ("fraction_min", "fraction_max"),
                lambda r: f"{one(r['fraction_min'])}–{one(r['fraction_max'])}"),
            Col("baseline top-1 (%)", ("top1_baseline", "top1_baseline_lo", "top1_baseline_hi"),
                lambda r: top((r["top1_baseline"], r["top1_baseline_lo"], r["top1_baseline_hi"])))]
    for b in BUDGETS:
        p = _pct(b)
        cols.append(Col(f"top-1 @{p} % (%)", tuple(f"top1_at_{p}{e}" for e in ("", "_lo", "_hi")),
                        lambda r, p=p: top(r[f"_top1_{p}"])))
        cols.append(Col(f"Δtop-1 @{p} % (pt)", tuple(f"delta_at_{p}{e}" for e in ("", "_lo", "_hi")),
                        lambda r, p=p: dlt(r[f"_delta_{p}"])))
    notes = ["Each reducer family's budgets (RLT's τ; random masking's keep, and random matched to each RLT τ, "
             "as one family; ToMe's and STA's r) sorted by mean tokens per block (tokens entering each block's "
             "MLP, averaged over clips and blocks) as a share of the baseline's on the same model and data; "
             "top-1 read at 75 / 50 / 30 % by linear interpolation between the two budgets around it, its 95 % "
             "interval (Wilson over videos) interpolated the same way, end by end. Δtop-1: the same for the "
             "difference from each cell's paired baseline and its paired bootstrap interval.",
             f"{MISSING}: the family's budgets do not reach that share (no extrapolation; a budget within "
             f"{SNAP * 100:g} % of it is read as it is). [packed] rows repeat "
             "a budget at another kernel shape and are left out. tokens/block: the span the family covers."]
    return Table("matched_budget", "Top-1 at matched budget (mean tokens per block)", cols, rows, None, notes)
