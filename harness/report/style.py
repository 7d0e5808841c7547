"""What every report figure shares: one colour per reducer, one marker per variant, the matplotlib settings
that make SVGs deterministic, the figure plan (which figures the records support), layout helpers."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..paths import safe_name
from .records import Record, forced_packed, params_key, reducer_rank

REDUCER_COLOURS: dict[str, str] = {
    "none": "#4d4d4d",    # grey-black: the baseline
    "rlt": "#1f77b4",     # blue
    "random": "#2ca02c",  # green
    "tome": "#ff7f0e",    # orange
    "sta": "#d62728",     # red
    "temporal": "#6a3d9a",  # dark purple: downsampling, time
    "spatial": "#b15928",   # brown: downsampling, space
    "compose": "#1b9e77",   # teal: compositions
    # the ToMe family on the bipartite core
    "tome_drop": "#fdbf6f", "random_merge": "#b2df8a", "random_drop": "#a6761d", "tome_hybrid": "#e6ab02",
    "dtome": "#e7298a", "pitome": "#66a61e", "tofu": "#fb9a99",
    # reducers that read attention, and feature-difference pruning
    "vid_tldr": "#17becf", "attn_prune": "#9467bd", "feature_diff": "#7f7f7f",
}
# Curve figures with more families than PANEL_FAMILIES draw one panel per group, each with the simple
# baselines (random masking, temporal downsampling) beside the group; a plugin joins the first group.
FAMILY_GROUPS: dict[str, tuple[str, ...]] = {
    "the four of the RLT paper, downsampling, composition": ("rlt", "tome", "sta", "spatial", "compose"),
    "the ToMe family (bipartite core)": ("tome", "tome_drop", "random_merge", "random_drop", "tome_hybrid",
                                         "dtome", "pitome", "tofu"),
    "reducers that read attention or features": ("rlt", "tome", "vid_tldr", "attn_prune", "feature_diff"),
}
GROUP_BASELINES = ("none", "random", "temporal")
PANEL_FAMILIES = 8
_EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
# one marker per reducer family in the curve figures (a family's budgets are joined by its line)
FAMILY_MARKERS: dict[str, str] = {"none": "*", "rlt": "o", "random": "s", "tome": "^", "sta": "D",
                                  "temporal": "v", "spatial": "P", "compose": "X", "tome_drop": "<",
                                  "random_merge": ">", "random_drop": "h", "tome_hybrid": "p", "dtome": "H",
                                  "pitome": "d", "tofu": "8", "vid_tldr": "s", "attn_prune": "^",
                                  "feature_diff": "D"}
_EXTRA_MARKERS = ("v", "P", "X", "<", ">", "h")
DASHES = ("-", "--", "-.", ":")

RC = {
    "svg.hashsalt": "tokenbench",
    "svg.fonttype": "path",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "figure.dpi": 120,
    "savefig.dpi": 120,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _pick(reducer: str, table: dict[str, str], extra: tuple[str, ...]) -> str:
    """A built-in reducer's entry of ``table``; any other (a plugin) a stable pick from ``extra`` by its name."""
    if reducer in table:
        return table[reducer]
    return extra[int(hashlib.sha256(reducer.encode()).hexdigest()[:8], 16) % len(extra)]


def family_groups(families: set[str]) -> list[tuple[str, set[str]]]:
    """(title, families drawn) per panel: all in one when they are few, else one panel per group of
    :data:`FAMILY_GROUPS` present, each with the simple baselines; families of no group join the first."""
    if len(families) <= PANEL_FAMILIES:
        return [("", set(families))]
    grouped = {f for g in FAMILY_GROUPS.values() for f in g}
    out = []
    for i, (title, members) in enumerate(FAMILY_GROUPS.items()):
        own = families & set(members) | ({f for f in families if f not in grouped and f not in GROUP_BASELINES}
                                         if i == 0 else set())
        if own - {"rlt", "tome"} or i == 0:
            out.append((title, own | (families & set(GROUP_BASELINES))))
    return out


def reducer_colour(reducer: str) -> str:
    return _pick(reducer, REDUCER_COLOURS, _EXTRA_COLOURS)


def family_marker(reducer: str) -> str:
    return _pick(reducer, FAMILY_MARKERS, _EXTRA_MARKERS)


class Style:
    """Colour (per reducer) and marker (per variant of a reducer) of every label in a suite.

    Colour + marker identify a point uniquely through the legend, so scatter points carry no text labels:
    reducers at matched budgets land on top of each other and their labels became unreadable. A
    ``[packed]`` variant (every arm per sequence) takes the marker of the same parameters run as deployed,
    drawn hollow (:meth:`face`), so it reads as "the same budget, another kernel shape"."""

    def __init__(self, records: list[Record]):
        variants: dict[str, dict[str, tuple]] = {}
        packed: dict[str, tuple[str, str]] = {}  # label -> (reducer, params) of a [packed] variant
        for r in records:
            if forced_packed(r):
                packed[r.label] = (r.reducer, r.params_json)
            else:
                variants.setdefault(r.reducer, {})[r.label] = params_key(r.params)
        self.reducer_of: dict[str, str] = {}
        self.marker: dict[str, str] = {}
        self.hollow: set[str] = set(packed)
        for reducer, labels in variants.items():
            for i, label in enumerate(sorted(labels, key=lambda lb: (labels[lb], lb))):
                self.marker[label] = MARKERS[i % len(MARKERS)]
                self.reducer_of[label] = reducer
        twin = {(r.reducer, r.params_json): r.label for r in records if not forced_packed(r)}
        extra = 0
        for label, (reducer, pj) in sorted(packed.items()):
            self.reducer_of[label] = reducer
            if (reducer, pj) in twin:
                self.marker[label] = self.marker[twin[(reducer, pj)]]
            else:  # no deployed twin: the next marker after the reducer's own variants
                self.marker[label] = MARKERS[(len(variants.get(reducer, {})) + extra) % len(MARKERS)]
                extra += 1

    def face(self, label: str) -> str:
        """The marker's fill: the reducer's colour, or none (hollow) for a [packed] variant."""
        return "none" if label in self.hollow else self.colour(label)

    def edge(self, label: str) -> str:
        """The marker's edge: white around a filled marker, the reducer's colour around a hollow one."""
        return self.colour(label) if label in self.hollow else "white"

    def colour(self, label: str) -> str:
        return reducer_colour(self.reducer_of.get(label, label.split(" ")[0]))

    def order(self, labels) -> list[str]:
        return sorted(set(labels), key=lambda lb: (reducer_rank(self.reducer_of.get(lb, lb)), lb))

    def handles(self, labels) -> list[Line2D]:
        return [Line2D([], [], color=self.colour(lb), marker=self.marker.get(lb, "o"), linestyle="",
                       markersize=6, markerfacecolor=self.face(lb), label=lb) for lb in self.order(labels)]


@dataclass
class FigureSpec:
    name: str                          # file stem
    title: str
    caption: str
    draw: Callable[[], Figure]
    fingerprint: str | None = None

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        with matplotlib.rc_context(RC):
            fig = self.draw()
            png, svg = directory / f"{self.name}.png", directory / f"{self.name}.svg"
            fig.savefig(png, format="png", dpi="figure", metadata={"Software": None})
            fig.savefig(svg, format="svg", metadata={"Date": None})
        return [png, svg]


@dataclass
class FigurePlan:
    figures: list[FigureSpec] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (figure title, reason)


def panel_grid(n: int, panel=(4.6, 3.6), legend_w=2.2, title_h=0.6, min_w=7.2):
    """A figure with ``n`` panels (at most 3 across), room for a legend on the right and a title."""
    ncols = min(n, 3) if n != 4 else 2
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(max(panel[0] * ncols + legend_w, min_w), panel[1] * nrows + title_h),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def legend_below(fig: Figure, handles: list, ncol: int | None = None) -> None:
    # a long legend goes under the panels: two columns on the right squeezed the panels of a narrow figure
    # and ran into its title
    if ncol is None and len(handles) > 14:
        fig.legend(handles=handles, loc="outside lower center", frameon=False, ncol=3)
        return
    fig.legend(handles=handles, loc="outside right upper", frameon=False, ncol=ncol or 1)


def grouped(rows: list[dict], key: Callable[[dict], tuple]) -> list[tuple[tuple, list[dict]]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return sorted(out.items(), key=lambda kv: tuple(str(x) for x in kv[0]))


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated in (higher x, higher y), sorted by x."""
    front = []
    best_y = -math.inf
    for x, y in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def fp_suffix(fp: str, several: bool) -> tuple[str, str]:
    return (f"__{safe_name(fp)}", f" — {fp}") if several else ("", "")


