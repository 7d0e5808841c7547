"""Figures of the report (docs/architecture.md §6), drawn from result records alone.

Each figure is planned first (:func:`plan_figures`: which figures the records can support, and why the
others are skipped) and drawn on demand, so ``tokenbench report --check`` can tell which figure files
must exist without drawing them. Figures are built on :class:`matplotlib.figure.Figure` directly (no
pyplot, no global backend switch). Every reducer has one colour in every figure
(:data:`REDUCER_COLOURS`; unknown reducers get a fixed colour from a hash of their name); variants of a
reducer (e.g. RLT thresholds) share its colour and differ in marker. SVGs are written with a fixed
``svg.hashsalt`` and no date, so the same records give the same SVG on the same matplotlib.

Figures involving wall-clock are drawn once per hardware fingerprint, never mixing two.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator

from .curve_figures import plan_curve_figures
from .records import Record, sort_key
from .style import (
    DASHES,
    MARKERS,
    RC,
    REDUCER_COLOURS,
    FigurePlan,
    FigureSpec,
    Style,
    fp_suffix,
    grouped,
    legend_below,
    panel_grid,
    pareto_front,
    reducer_colour,
)
from .tables import inference_values, token_records

__all__ = ["RC", "REDUCER_COLOURS", "FigurePlan", "FigureSpec", "Style", "pareto_front", "plan_figures",
           "reducer_colour", "sweep_panels"]

# ----------------------------------------------------------------------------------------------------
# the figures


def _accuracy_vs_throughput(rows: list[dict], style: Style, fp: str, title_fp: str) -> Callable[[], Figure]:
    def draw() -> Figure:
        groups = grouped(rows, lambda r: (r["model"], r["dataset"], r["batch_size"]))
        fig, axes = panel_grid(len(groups))
        for ax, ((model, dataset, bs), grp) in zip(axes, groups):
            for r in sorted(grp, key=lambda r: sort_key(r["_record"])):
                ax.scatter(r["clips_per_s"], r["top1"], facecolors=style.face(r["label"]), s=46, zorder=3,
                           marker=style.marker.get(r["label"], "o"), edgecolors=style.edge(r["label"]),
                           linewidths=0.6 if r["label"] not in style.hollow else 1.2)
                if r["clips_per_s_q1"] is not None and r["clips_per_s_q3"] is not None:
                    ax.plot([r["clips_per_s_q1"], r["clips_per_s_q3"]], [r["top1"]] * 2,
                            color=style.colour(r["label"]), linewidth=1.2, alpha=0.7, zorder=2)
            front = pareto_front([(r["clips_per_s"], r["top1"]) for r in grp])
            xs, ys = zip(*front)
            ax.plot(xs, ys, color="#999999", linestyle="--", linewidth=1.2, drawstyle="steps-pre",
                    zorder=1, label="Pareto front")
            ax.set_title(f"{model} · {dataset} · batch {bs}")
            ax.set_xlabel("throughput (clips/s, higher is better)")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.margins(0.12)
        handles = style.handles(r["label"] for r in rows)
        handles.append(Line2D([], [], color="#999999", linestyle="--", label="Pareto front"))
        legend_below(fig, handles)
        fig.suptitle("Accuracy vs throughput" + title_fp)
        return fig
    return draw


def _timed_gflops(r: dict) -> float:
    """GFLOPs per clip of the clips the row's time was measured on, else (older records) of all clips."""
    return r.get("time_gflops") or r["gflops"]


def _gflops_vs_time(rows: list[dict], style: Style, fp: str, title_fp: str) -> Callable[[], Figure]:
    """Per (model, dataset, batch): left, absolute ms per clip against GFLOPs per clip, with time ∝
    GFLOPs through the baseline; right, the same against the paired timing: time ÷ the baseline timed
    interleaved in the same cell (1 / speedup, IQR from the speedup quartiles), which cancels drift
    between cells, with the ideal line through (baseline GFLOPs, 1). x is the GFLOPs of the clips that were
    timed (``time_gflops``; records from before it was recorded: the all-clip mean)."""
    def draw() -> Figure:
        groups = grouped(rows, lambda r: (r["model"], r["dataset"], r["batch_size"]))
        fig = Figure(figsize=(10.2, 3.5 * len(groups) + 0.6), layout="constrained")
        axes = fig.subplots(len(groups), 2, squeeze=False)
        for (ax_abs, ax_rel), ((model, dataset, bs), grp) in zip(axes, groups):
            grp = sorted(grp, key=lambda r: sort_key(r["_record"]))
            base = [r for r in grp if r["reducer"] == "none"]
            xmax = max(_timed_gflops(r) for r in grp) * 1.1
            for ax, relative in ((ax_abs, False), (ax_rel, True)):
                ytop = 0.0
                for r in grp:
                    if relative:
                        if not r["speedup"]:
                            continue
                        y = 1.0 / r["speedup"]
                        lo_hi = (1.0 / r["speedup_q3"], 1.0 / r["speedup_q1"]) \
                            if r["speedup_q1"] and r["speedup_q3"] else None
                    else:
                        y = r["time_ms_median"] / bs
                        lo_hi = (r["time_ms_q1"] / bs, r["time_ms_q3"] / bs) \
                            if r["time_ms_q1"] is not None and r["time_ms_q3"] is not None else None
                    yerr = [[max(y - lo_hi[0], 0)], [max(lo_hi[1] - y, 0)]] if lo_hi else None
                    ytop = max(ytop, lo_hi[1] if lo_hi else y)
                    c = style.colour(r["label"])
                    ax.errorbar(_timed_gflops(r), y, yerr=yerr, color=c, marker=style.marker.get(r["label"], "o"),
                                markersize=6, linestyle="", capsize=2, zorder=3,
                                markerfacecolor=style.face(r["label"]), markeredgecolor=style.edge(r["label"]),
                                markeredgewidth=0.6 if r["label"] not in style.hollow else 1.2)
                if base:
                    b = base[0]
                    y0 = 1.0 if relative else b["time_ms_median"] / bs
                    ax.plot([0, xmax], [0, y0 / _timed_gflops(b) * xmax], color=reducer_colour("none"),
                            linestyle=":", linewidth=1.2, zorder=1)
                    ytop = max(ytop, y0 / _timed_gflops(b) * xmax * 0.9)
                ax.set_xlim(0, xmax)
                ax.set_ylim(0, max(ytop * 1.12, 1e-9))
                ax.set_xlabel("compute (GFLOPs per clip)")
            ax_abs.set_title(f"{model} · {dataset} · batch {bs}: measured")
            ax_abs.set_ylabel("time (ms per clip)")
            ax_rel.set_title(f"{model} · {dataset} · batch {bs}: paired with baseline")
            ax_rel.set_ylabel("time ÷ paired baseline\n(1 / speedup)")
        handles = style.handles(r["label"] for r in rows)
        handles.append(Line2D([], [], color=reducer_colour("none"), linestyle=":",
                              label="time ∝ GFLOPs\n(through baseline)"))
        legend_below(fig, handles)
        fig.suptitle("GFLOPs vs measured time" + title_fp
                     + "\npoints above the dotted line are slower than their FLOPs predict")
        return fig
    return draw


def _token_distribution(recs: list[Record], style: Style) -> Callable[[], Figure]:
    def draw() -> Figure:
        groups = grouped(recs, lambda r: (str(r.model), str(r.dataset)))
        width = max(len({r.label for r in g}) for _, g in groups)
        fig, axes = panel_grid(len(groups), panel=(max(4.6, 0.62 * width + 1.6), 3.8), legend_w=0)
        for ax, ((model, dataset), grp) in zip(axes, groups):
            grp = sorted(grp, key=sort_key)
            totals = sorted({r.num("tokens_total") for r in grp} - {None})
            for i, r in enumerate(grp):
                c = style.colour(r.label)
                vals = r.nums("tokens_per_clip")
                lo, hi, mean = (r.num(k) for k in ("tokens_in_min", "tokens_in_max", "tokens_in_mean"))
                if vals:
                    lo, hi, mean = min(vals), max(vals), float(np.mean(vals))
                    if hi > lo and len(vals) > 2:
                        parts = ax.violinplot([vals], positions=[i], widths=0.8, showextrema=False)
                        for body in parts["bodies"]:
                            body.set_facecolor(c)
                            body.set_edgecolor(c)
                            body.set_alpha(0.35)
                    jitter = (np.arange(len(vals)) % 7 - 3) * 0.035
                    ax.scatter(i + jitter, vals, s=6, color=c, alpha=0.6, zorder=3, linewidths=0)
                if lo is not None and hi is not None:
                    ax.plot([i, i], [lo, hi], color=c, linewidth=1.5, zorder=2)
                if mean is not None:
                    ax.scatter([i], [mean], facecolors=style.face(r.label),
                               marker=style.marker.get(r.label, "o"),
                               s=52, zorder=4, edgecolors="black" if r.label not in style.hollow else c,
                               linewidths=0.6 if r.label not in style.hollow else 1.2)
            for t in totals:
                ax.axhline(t, color="#777777", linestyle="--", linewidth=1)
                ax.annotate("all tokens (T′·H′·W′)", (len(grp) - 0.5, t), xytext=(0, 7),
                            textcoords="offset points", ha="right", fontsize=7, color="#555555")
            ax.set_xticks(range(len(grp)), [r.label for r in grp], rotation=30, ha="right")
            ax.set_xlim(-0.6, len(grp) - 0.4)
            ax.set_ylim(0, max(totals + [ax.get_ylim()[1]]) * 1.1)
            ax.set_xlabel("reducer")
            ax.grid(axis="x", visible=False)
            ax.set_title(f"{model} · {dataset}")
            ax.set_ylabel("tokens per clip entering the network")
        fig.suptitle("Token-count distribution per clip\n(marker: mean; bar: min–max; dots: clips)")
        return fig
    return draw


def _tokens_per_layer(recs: list[Record], style: Style) -> Callable[[], Figure]:
    def draw() -> Figure:
        groups = grouped(recs, lambda r: (str(r.model), str(r.dataset)))
        fig, axes = panel_grid(len(groups))
        dashed: dict[str, bool] = {}
        for ax, ((model, dataset), grp) in zip(axes, groups):
            depth = 0
            for r in sorted(grp, key=sort_key):
                layers = r.nums("tokens_per_layer")
                start = r.num("tokens_in_mean")
                ys = ([start] if start is not None else []) + layers
                xs = list(range(len(ys))) if start is not None else list(range(1, len(ys) + 1))
                depth = max(depth, len(layers))
                progressive = len(set(ys)) > 1
                dashed[r.label] = dashed.get(r.label, True) and not progressive
                ax.plot(xs, ys, color=style.colour(r.label), marker=style.marker.get(r.label, "o"),
                        markersize=4 if progressive else 0, linewidth=1.8 if progressive else 1.0,
                        linestyle="-" if progressive else "--", label=r.label)
            ax.set_xlim(-0.3, depth + 0.3)
            ax.set_ylim(bottom=0)
            ax.xaxis.set_major_locator(FixedLocator(list(range(0, depth + 1, max(1, depth // 12)))))
            ax.set_title(f"{model} · {dataset}")
            ax.set_xlabel("block (0 = entering the first block)")
            ax.set_ylabel("tokens per clip (mean)")
        legend_below(fig, [Line2D([], [], color=style.colour(lb), label=lb,
                             **({"linestyle": "--", "linewidth": 1.0} if dashed[lb] else
                                {"marker": style.marker.get(lb, "o"), "markersize": 4, "linewidth": 1.8}))
                      for lb in style.order(r.label for r in recs)])
        fig.suptitle("Tokens per layer\n(solid: progressive reducers; dashed: constant after the input, "
                     "so reducers at one budget draw one line)")
        return fig
    return draw


SWEEP_PANELS = {  # panel -> (the row field it needs, title, y label)
    "tokens": ("tokens_in_mean", "tokens per clip (mean; band: min–max)", "tokens per clip entering the network"),
    "speedup": ("speedup", "speedup vs baseline (bars: IQR)", "speedup (× baseline, same cell)"),
    "top1": ("top1", "top-1 accuracy", "top-1 (%)"),
}


def sweep_panels(rlt_rows: list[dict]) -> list[str]:
    """The sweep panels these RLT rows have data for (a panel is never drawn empty)."""
    return [p for p, (f, _, _) in SWEEP_PANELS.items() if any(r[f] is not None for r in rlt_rows)]


def _rlt_sweep(rows: list[dict], style: Style, title_fp: str) -> Callable[[], Figure]:
    def draw() -> Figure:
        rlt = [r for r in rows if r["reducer"] == "rlt" and r["threshold"] is not None]
        base = [r for r in rows if r["reducer"] == "none"]
        panels = sweep_panels(rlt)
        fig = Figure(figsize=(4.3 * len(panels) + 2.4, 3.9), layout="constrained")
        ax = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False)[0]))
        none_c, colour = reducer_colour("none"), reducer_colour("rlt")
        taus = sorted({r["threshold"] for r in rlt})
        data_groups = [k for k, _ in grouped(rlt, lambda r: (r["model"], r["dataset"]))]
        dash = {k: DASHES[i % len(DASHES)] for i, k in enumerate(data_groups)}
        handles = [Line2D([], [], color=colour, linestyle=dash[k], label=f"rlt · {k[0]} · {k[1]}")
                   for k in data_groups]
        batches = sorted({r["batch_size"] for r in rlt})
        bmark = {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(batches)}

        def one_per_tau(grp):
            best = {}
            for r in sorted(grp, key=lambda r: (r["batch_size"], sort_key(r["_record"]))):
                best.setdefault(r["threshold"], r)
            return [best[t] for t in sorted(best)]

        for k, grp in grouped(rlt, lambda r: (r["model"], r["dataset"])):
            pts = one_per_tau(grp)
            if "tokens" in ax:
                tok = [r for r in pts if r["tokens_in_mean"] is not None]
                if tok:
                    ts = [r["threshold"] for r in tok]
                    ax["tokens"].plot(ts, [r["tokens_in_mean"] for r in tok], color=colour, linestyle=dash[k],
                                      marker="o", markersize=5)
                    lo, hi = [r["tokens_in_min"] for r in tok], [r["tokens_in_max"] for r in tok]
                    if all(v is not None for v in lo + hi):
                        ax["tokens"].fill_between(ts, lo, hi, color=colour, alpha=0.12, linewidth=0)
            if "top1" in ax:
                top = [(r["threshold"], r["top1"]) for r in pts if r["top1"] is not None]
                if top:
                    ax["top1"].plot(*zip(*top), color=colour, linestyle=dash[k], marker="o", markersize=5)
            if "speedup" in ax:
                for bs, bgrp in grouped(grp, lambda r: (r["batch_size"],)):
                    sp = [r for r in one_per_tau(bgrp) if r["speedup"] is not None]
                    if not sp:
                        continue
                    ax["speedup"].plot([r["threshold"] for r in sp], [r["speedup"] for r in sp], color=colour,
                                       linestyle=dash[k], marker=bmark[bs[0]], markersize=5)
                    for r in sp:
                        if r["speedup_q1"] is not None and r["speedup_q3"] is not None:
                            ax["speedup"].plot([r["threshold"]] * 2, [r["speedup_q1"], r["speedup_q3"]],
                                               color=colour, linewidth=1.2, alpha=0.6)
            for b in (b for b in base if (b["model"], b["dataset"]) == k):
                if "tokens" in ax and b["tokens_total"] is not None:
                    ax["tokens"].axhline(b["tokens_total"], color=none_c, linestyle=dash[k], linewidth=0.9)
                if "top1" in ax and b["top1"] is not None:
                    ax["top1"].axhline(b["top1"], color=none_c, linestyle=dash[k], linewidth=0.9)
        if "speedup" in ax:
            ax["speedup"].axhline(1.0, color=none_c, linestyle=":", linewidth=1)
        if len(batches) > 1 and "speedup" in ax:
            handles += [Line2D([], [], color=colour, marker=bmark[b], linestyle="", label=f"batch {b}")
                        for b in batches]
        handles.append(Line2D([], [], color=none_c, linewidth=0.9,
                              label="baseline (none),\nline style as its dataset"))
        for p, a in ax.items():
            _, title, ylabel = SWEEP_PANELS[p]
            a.set_xscale("log")
            a.xaxis.set_major_locator(FixedLocator(taus))
            a.xaxis.set_minor_locator(NullLocator())
            a.set_xticklabels([f"{t:g}" for t in taus])
            a.set_xlabel("RLT threshold τ (mean |Δpixel|, normalised)")
            a.set_ylabel(ylabel)
            a.set_title(title)
            a.margins(x=0.08, y=0.1)
        if "tokens" in ax:
            ax["tokens"].set_ylim(bottom=0)
        legend_below(fig, handles)
        fig.suptitle("RLT threshold sweep" + title_fp)
        return fig
    return draw


# ----------------------------------------------------------------------------------------------------
# planning


def plan_figures(by_fp: dict[str, list[Record]], ok: list[Record], style: Style) -> FigurePlan:
    """Which figures these records support. ``by_fp``: the ok records of each fingerprint id;
    ``ok``: all ok records of the suite (for the hardware-independent token figures)."""
    plan = FigurePlan()
    several = len(by_fp) > 1
    throughput, flops_time, sweep = [], [], []
    for fp in sorted(by_fp):
        rows = inference_values([r for r in by_fp[fp] if r.mode == "inference"])
        suffix, title_fp = fp_suffix(fp, several)
        acc = [r for r in rows if r["top1"] is not None and r["clips_per_s"] is not None]
        if acc:
            throughput.append(FigureSpec(
                "accuracy_vs_throughput" + suffix, "Accuracy vs throughput" + title_fp,
                "top-1 against clips/s per reducer (bars: IQR of throughput), one panel per model, dataset "
                "and batch size; the dashed step line is the Pareto front (no other point is both faster "
                "and more accurate).", _accuracy_vs_throughput(acc, style, fp, title_fp), fp))
        ft = [r for r in rows if r["gflops"] and r["time_ms_median"] is not None and r["batch_size"]]
        if ft:
            flops_time.append(FigureSpec(
                "gflops_vs_time" + suffix, "GFLOPs vs measured time" + title_fp,
                "forward time per clip against GFLOPs per clip of the same (timed) clips, per reducer and batch "
                "size: left the "
                "measured median (bars: IQR), right the time relative to the baseline timed interleaved in "
                "the same cell (1/speedup; bars from the speedup IQR), which cancels drift between cells. "
                "The dotted line is time proportional to GFLOPs through the baseline; points above it gain "
                "less wall-clock than their FLOPs promise.", _gflops_vs_time(ft, style, fp, title_fp), fp))
        rlt = [r for r in rows if r["reducer"] == "rlt" and r["threshold"] is not None]
        groups = grouped(rlt, lambda r: (r["model"], r["dataset"]))
        if any(len({r["threshold"] for r in g}) >= 2 for _, g in groups) and sweep_panels(rlt):
            settings = {(r["model"], r["dataset"]) for r in rlt}
            base = [r for r in rows if r["reducer"] == "none" and (r["model"], r["dataset"]) in settings]
            sweep.append(FigureSpec(
                "rlt_threshold_sweep" + suffix, "RLT threshold sweep" + title_fp,
                "tokens per clip, speedup and top-1 (where measured) against RLT's threshold τ; grey "
                "lines: the baseline.",
                _rlt_sweep(rlt + base, style, title_fp), fp))
    inf = [r for r in ok if r.mode == "inference"]
    tok = [r for r in token_records([r for r in inf if r.num("tokens_in_mean") is not None
                                     or r.nums("tokens_per_clip")])]
    layer = [r for r in token_records([r for r in inf if r.nums("tokens_per_layer")])]
    progressive = [r for r in layer if len(set(r.nums("tokens_per_layer"))
                                            | ({r.num("tokens_in_mean")} - {None})) > 1]

    def add(specs, title, reason):
        if specs:
            plan.figures.extend(specs)
        else:
            plan.skipped.append((title, reason))

    add(throughput, "Accuracy vs throughput", "no inference record has both top-1 and clips/s")
    add(flops_time, "GFLOPs vs measured time", "no inference record has both GFLOPs and a timed median")
    add([FigureSpec("token_distribution", "Token-count distribution per dataset",
                    "tokens per clip entering the network, per reducer and dataset (violin where counts "
                    "vary; marker: mean; bar: min–max; dots: individual clips; dashed: all T′·H′·W′ tokens).",
                    _token_distribution(tok, style))] if tok else [],
        "Token-count distribution per dataset", "no inference record has token counts")
    add([FigureSpec("tokens_per_layer", "Tokens per layer",
                    "mean tokens per clip after each block; progressive reducers (ToMe, STA) shrink the "
                    "sequence inside the network, input-stage reducers are flat after the input.",
                    _tokens_per_layer(layer, style))] if progressive else [],
        "Tokens per layer", "no progressive reducer (token count changing across blocks) in these records"
        if layer else "no record has per-layer token counts")
    add(sweep, "RLT threshold sweep", "fewer than two RLT thresholds on the same model and dataset")
    curves, skipped = plan_curve_figures(by_fp, ok)
    plan.figures.extend(curves)
    plan.skipped.extend(skipped)
    return plan
