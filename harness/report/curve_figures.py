"""The curve figures: top-1 against GFLOPs and against measured throughput, one line per reducer family
(:mod:`.curves`), and RLT against the share of static content (:mod:`.static_share`).

Sized for print: each panel is drawn at a single column's width (3.4 in) with 7–8 pt text, at 200 dpi, so a
two-panel figure fits a double column (~7 in) at its own size. One colour (:func:`reducer_colour`) and one
marker (:func:`family_marker`) per reducer family; hollow markers: ``[packed]`` rows; a star: the baseline;
grey rings and a dashed line: the Pareto front over every point of the panel; legends below the panels.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .curves import CurvePoint, CurveSet, curve_sets
from .records import Record, reducer_rank
from .static_share import ShareSeries, kept, static_share_series, triple
from .style import DASHES, FigureSpec, family_groups, family_marker, fp_suffix, pareto_front, reducer_colour

TEXT, SMALL = 8, 7          # pt: labels and titles; ticks and legends
PANEL = (3.4, 2.6)          # inches per panel
DPI = 200
FRONT = "#777777"


def _fig(nrows: int, ncols: int, panel=PANEL, legend_h: float = 0.9) -> tuple[Figure, list]:
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + legend_h), dpi=DPI, layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes:
        ax.tick_params(labelsize=SMALL)
    return fig, axes


def _legend(fig: Figure, handles: list, ncol: int = 3, handlelength: float = 2.2) -> None:
    fig.legend(handles=handles, loc="outside lower center", frameon=False, ncol=ncol, fontsize=SMALL,
               handlelength=handlelength, columnspacing=1.2)


def _err(v: float | None, lo: float | None, hi: float | None):
    if v is None or lo is None or hi is None:
        return None
    return [[max(v - lo, 0.0)], [max(hi - v, 0.0)]]


def _curves(sets: list[CurveSet], x_of: Callable[[CurvePoint], float | None],
            x_err: Callable[[CurvePoint], tuple | None], lower_is_better: bool, xlabel: str,
            title: str) -> Callable[[], Figure]:
    def draw() -> Figure:
        panels = [(cs, group, shown) for cs in sets for group, shown in family_groups(set(cs.families()))]
        ncols = min(len(panels), 2)
        fig, axes = _fig(math.ceil(len(panels) / ncols), ncols)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        families: set[str] = set()
        packed = False
        for ax, (cs, group, shown) in zip(axes, panels):
            every = [p for p in [cs.baseline] + cs.points if x_of(p) is not None and p.top1 is not None
                     and (p is cs.baseline or p.family in shown)]
            for fam, pts in sorted(cs.families().items(), key=lambda kv: reducer_rank(kv[0])):
                if fam not in shown:
                    continue
                pts = [p for p in pts if x_of(p) is not None and p.top1 is not None]
                if pts:
                    families.add(fam)
                    ax.plot([x_of(p) for p in pts], [p.top1 for p in pts], color=reducer_colour(fam),
                            marker=family_marker(fam), markersize=4.5, linewidth=1.2, zorder=3,
                            markeredgecolor="white", markeredgewidth=0.5)
            for p in every:
                c = reducer_colour(p.family)
                is_base = p is cs.baseline
                ax.errorbar(x_of(p), p.top1, yerr=_err(p.top1, p.top1_lo, p.top1_hi), xerr=x_err(p), fmt="none",
                            ecolor=c, elinewidth=0.8, capsize=1.5, alpha=0.7, zorder=2)
                if p.packed:
                    packed = True
                    ax.plot([x_of(p)], [p.top1], linestyle="", marker=family_marker(p.family), markersize=5,
                            markerfacecolor="none", markeredgecolor=c, markeredgewidth=1.0, zorder=4)
                elif is_base:
                    ax.plot([x_of(p)], [p.top1], linestyle="", marker=family_marker("none"), markersize=9,
                            color=c, markeredgecolor="white", markeredgewidth=0.5, zorder=5)
            sign = -1.0 if lower_is_better else 1.0
            front = sorted((sign * x, y) for x, y in pareto_front([(sign * x_of(p), p.top1) for p in every]))
            if front:
                ax.plot(*zip(*front), color=FRONT, linestyle="--", linewidth=0.8, zorder=1)
                ax.plot(*zip(*front), linestyle="", marker="o", markersize=10, markerfacecolor="none",
                        markeredgecolor=FRONT, markeredgewidth=0.8, zorder=1)
            ax.set_title(cs.title + (f"\n{group}" if group else ""), fontsize=TEXT)
            ax.set_xlabel(xlabel, fontsize=SMALL)
            ax.set_ylabel("top-1 (%), bars: 95 % Wilson", fontsize=SMALL)
            ax.margins(0.1)
        handles = [Line2D([], [], color=reducer_colour(f), marker=family_marker(f), markersize=4.5,
                          markeredgecolor="white", markeredgewidth=0.5, label=f)
                   for f in sorted(families, key=reducer_rank)]
        handles.append(Line2D([], [], color=reducer_colour("none"), marker=family_marker("none"), markersize=8,
                              linestyle="", markeredgecolor="white", label="baseline (none)"))
        if packed:
            handles.append(Line2D([], [], color="#555555", marker="o", markersize=5, linestyle="",
                                  markerfacecolor="none", label="hollow: [packed]\n(every arm per sequence)"))
        handles.append(Line2D([], [], color=FRONT, linestyle="--", linewidth=0.8, marker="o", markersize=8,
                              markerfacecolor="none", label="Pareto front"))
        _legend(fig, handles, ncol=min(len(handles), 2 * ncols))  # two legend columns per panel width
        fig.suptitle(title, fontsize=TEXT)
        return fig
    return draw


def _throughput_err(p: CurvePoint):
    return _err(p.throughput, p.throughput_lo, p.throughput_hi)


def _static_share(series: list[ShareSeries], title: str) -> Callable[[], Figure]:
    panels = (("kept", "tubelets kept (fraction)"), ("speedup", "speedup (×), bars: 95 % CI"),
              ("top1", "top-1 (%), bars: 95 % Wilson"))

    def draw() -> Figure:
        fig, axes = _fig(len(series), 3, panel=(2.4, 2.3))
        handles: dict[str, Line2D] = {}
        for row, s in enumerate(series):
            shares = sorted({p.share for p in s.points})
            dx = 0.012 * ((shares[-1] - shares[0]) or 1.0)  # random drawn just right of RLT: bars stay apart
            for (name, ylabel), ax in zip(panels, axes[3 * row:3 * row + 3]):
                for i, tau in enumerate(s.taus):
                    pts = [p for p in s.points if p.tau == tau]
                    for who, offset in (("rlt", 0.0), ("random", dx)):
                        recs = [(p.share + offset, p.rlt if who == "rlt" else p.random) for p in pts]
                        recs = [(x, r) for x, r in recs if r is not None]
                        vals = [(x, kept(r), None, None) if name == "kept" else (x, *triple(r, name))
                                for x, r in recs]
                        vals = [v for v in vals if v[1] is not None]
                        if not vals:
                            continue
                        c, m = reducer_colour(who), family_marker(who)
                        ax.plot([v[0] for v in vals], [v[1] for v in vals], color=c, marker=m, markersize=4,
                                linestyle=DASHES[i % len(DASHES)], linewidth=1.2, markeredgecolor="white",
                                markeredgewidth=0.5, zorder=3)
                        for x, v, lo, hi in vals:
                            e = _err(v, lo, hi)
                            if e is not None:
                                ax.errorbar(x, v, yerr=e, fmt="none", ecolor=c, elinewidth=0.8, capsize=1.5,
                                            alpha=0.7, zorder=2)
                        label = f"RLT τ={tau:g}" if who == "rlt" else f"random at RLT τ={tau:g}'s budget"
                        handles.setdefault(label, Line2D([], [], color=c, marker=m, markersize=4, linewidth=1.2,
                                                         linestyle=DASHES[i % len(DASHES)], markevery=[1],
                                                         label=label))
                if name == "speedup":
                    ax.axhline(1.0, color=reducer_colour("none"), linestyle=":", linewidth=0.8)
                if name == "kept":
                    ax.set_ylim(0, 1.05)
                ax.set_xticks(shares, [f"{v:g}" for v in shares])
                ax.set_xlabel("static share of the clips", fontsize=SMALL)
                ax.set_ylabel(ylabel, fontsize=SMALL)
                ax.set_title(f"{s.model} · {s.dataset_format} · batch {s.batch_size}", fontsize=SMALL)
                ax.margins(x=0.08, y=0.1)
        _legend(fig, list(handles.values()), ncol=2, handlelength=4.0)  # long enough to show each τ's dashes
        fig.suptitle(title, fontsize=TEXT)
        return fig
    return draw


def plan_curve_figures(by_fp: dict[str, list[Record]], ok: list[Record]):
    """``(figures, skipped)``: the curve figures these ok records support, and the titles they cannot."""
    specs: list[FigureSpec] = []
    skipped: list[tuple[str, str]] = []
    inf = [r for r in ok if r.mode == "inference"]
    sets = [cs for cs in curve_sets(inf, by_batch=False) if any(p.gflops is not None for p in cs.points)]
    if sets:
        specs.append(FigureSpec(
            "curves_top1_vs_gflops", "Top-1 against GFLOPs, per reducer family",
            "top-1 against GFLOPs per clip, one line per reducer family through its budgets (sorted by mean "
            "tokens per block; random masking by keep ratio and matched to RLT's budget are one family), vertical "
            "bars the 95 % Wilson interval of top-1. GFLOPs carry no bar: each is "
            "the exact mean over every clip evaluated (the token-distribution figure shows its spread over "
            "clips). Star: the baseline; hollow: [packed] rows, not joined; grey rings and dashed line: the "
            "Pareto front over the panel's points (no other is both cheaper and more accurate). With many "
            "families, one panel per group, each with the baseline, random masking and temporal downsampling. "
            "Hardware-"
            "independent.", _curves(sets, lambda p: p.gflops, lambda p: None, True,
                                    "GFLOPs per clip (lower: cheaper)", "Top-1 against compute")))
    else:
        skipped.append(("Top-1 against GFLOPs", "no model and dataset with a baseline, GFLOPs and top-1"))
    several = len(by_fp) > 1
    tp_specs, share_specs = [], []
    for fp in sorted(by_fp):
        suffix, title_fp = fp_suffix(fp, several)
        recs = [r for r in by_fp[fp] if r.mode == "inference"]
        sets = [cs for cs in curve_sets(recs, by_batch=True) if any(p.throughput is not None for p in cs.points)]
        if sets:
            tp_specs.append(FigureSpec(
                "curves_top1_vs_throughput" + suffix, "Top-1 against throughput, per reducer family" + title_fp,
                "top-1 against measured throughput, one line per reducer family through its budgets (sorted by "
                "mean tokens per block, as in the GFLOPs figure), one panel per model, dataset and batch size. "
                "Throughput is the paired estimate: the row's speedup (against the baseline "
                "timed interleaved in its own cell) × the baseline cell's clips/s, so drift between cells "
                "cancels ([packed] rows: × their own per-sequence baseline arm's clips/s); horizontal bars: the "
                "speedup's 95 % bootstrap interval × the same clips/s (the "
                "baseline's own timing noise is not in them; the baseline's bar is its A/A control). Vertical "
                "bars: top-1's 95 % Wilson interval. Star: the baseline; hollow: [packed] rows, not joined; "
                "grey rings and dashed line: the Pareto front over the panel's points (no other both faster and more "
                "accurate); with many families, one panel per group, each with the simple baselines.",
                _curves(sets, lambda p: p.throughput, _throughput_err, False,
                        "throughput (clips/s): speedup × baseline clips/s", "Top-1 against throughput" + title_fp),
                fp))
        series = static_share_series(recs)
        if series:
            share_specs.append(FigureSpec(
                "static_share" + suffix, "RLT against the share of static content" + title_fp,
                "datasets of one format differing only in static_share: RLT's kept tubelets, paired speedup "
                "(95 % bootstrap interval) and top-1 (95 % Wilson interval) against the static share, one line "
                "style per τ, with random masking matched to RLT's budget at the same τ beside it (drawn just "
                "right of RLT so the bars stay apart). The kept tubelets are over all clips; the speedup is of the "
                "timed clips, where RLT keeps what their content allows and random the all-clip budget, so read "
                "a speedup gap with the details table's timed GFLOPs.",
                _static_share(series, "RLT against static content" + title_fp), fp))
    if not tp_specs:
        skipped.append(("Top-1 against throughput", "no model and dataset with a baseline, clips/s and top-1"))
    if not share_specs:
        skipped.append(("RLT against the share of static content",
                        "no RLT cells on two or more datasets differing only in static_share"))
    return specs + tp_specs + share_specs, skipped
