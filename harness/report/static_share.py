"""RLT against the share of static content (issue 13: "savings follow content").

Datasets of one format that differ only in ``static_share`` (the synthetic benchmark's share of clips whose
background is one frame held still) make a series: at each share, RLT at each τ and random masking matched
to that τ's measured budget (``match_rlt = τ``), both from cells of one hardware fingerprint and batch size.
:func:`static_share_series` finds them; the figure (``curve_figures``) and :func:`static_share_table` show
them. A dataset entry that does not set ``static_share`` has its format's default (the registry's factory
signature), so the main synthetic dataset joins its sweep.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from ..schema import METRIC_BY_NAME, canonical_json
from .format import MISSING, Col, Table, fixed, signed
from .records import Record, forced_packed, model_names, num, setting, sort_key

OPTION = "static_share"


def option_default(dataset_format: str | None, option: str) -> float | None:
    """The default of ``option`` in the registered dataset format's factory, or None (unknown format, or
    it has no such option)."""
    from ...datasets import dataset_format as fmt  # the registry; report code needs it only here
    try:
        p = inspect.signature(fmt(str(dataset_format)).factory).parameters.get(option)
    except (ValueError, TypeError):
        return None
    return num(p.default) if p is not None and p.default is not inspect.Parameter.empty else None


def share_of(r: Record) -> float | None:
    v = num(r.dataset_options.get(OPTION)) if OPTION in r.dataset_options else None
    return v if v is not None else option_default(r.dataset_name, OPTION)


@dataclass(frozen=True)
class SharePoint:
    share: float
    dataset: str
    tau: float
    rlt: Record                    # the RLT record
    random: Record | None          # random masking at this τ's budget, when measured


@dataclass
class ShareSeries:
    model: str
    dataset_format: str            # the datasets' format (registry name)
    batch_size: int | None
    taus: list[float]
    points: list[SharePoint]       # sorted by (τ, share)


# options a static-share sweep may move with the share: the camera share (the suites split the non-static
# rest evenly between panning and playing backgrounds) and the clip count (a split of exactly the clips used)
WITH_SHARE = {OPTION, "camera_share", "num_clips"}


def _group_key(r: Record) -> tuple:
    opts = {k: v for k, v in r.dataset_options.items() if k not in WITH_SHARE}
    return (str(r.model), str(r.value("num_frames")), str(r.value("img_size")), str(r.value("checkpoint")),
            str(r.dataset_name), str(r.value("split")), canonical_json(opts), r.batch_size)


def static_share_series(records: list[Record]) -> list[ShareSeries]:
    """One series per model, dataset format (with every other option equal) and batch size that has RLT
    measured on at least two static shares; only the τ values measured on two or more shares are in it.
    ``records``: ok inference records of one fingerprint."""
    recs = [r for r in records if r.mode == "inference" and not forced_packed(r)]
    groups: dict[tuple, list[Record]] = {}
    for r in sorted(recs, key=sort_key):
        groups.setdefault(_group_key(r), []).append(r)
    names = model_names(recs)
    out = []
    for grp in groups.values():
        shares = {r.dataset: share_of(r) for r in grp}
        rlt = [r for r in grp if r.reducer == "rlt" and num(r.params.get("threshold")) is not None
               and shares[r.dataset] is not None]
        if len({shares[r.dataset] for r in rlt}) < 2:
            continue
        pts = []
        for r in rlt:
            tau = num(r.params["threshold"])
            match = [x for x in grp if x.dataset == r.dataset and num(x.params.get("match_rlt")) == tau]
            pts.append(SharePoint(shares[r.dataset], r.dataset, tau, r, match[0] if match else None))
        # a τ measured at one share only (a τ sweep on one of the datasets) is a point, not a curve against the
        # share: the RLT sweep's table and figure show it
        swept = {t for t in {p.tau for p in pts} if len({p.share for p in pts if p.tau == t}) >= 2}
        if not swept:
            continue
        pts = sorted((p for p in pts if p.tau in swept), key=lambda p: (p.tau, p.share, p.dataset))
        first = rlt[0]
        model = names.get(setting(first)[:4], str(first.model))
        out.append(ShareSeries(model, str(first.dataset_name), first.batch_size, sorted({p.tau for p in pts}),
                               pts))
    return out


def kept(r: Record | None) -> float | None:
    """Share of the tubelets kept at the input (``kept_pct``'s formula, as a fraction)."""
    pct = METRIC_BY_NAME["kept_pct"].read(r) if r is not None else None
    return pct / 100.0 if pct is not None else None


def triple(r: Record | None, name: str) -> tuple[float | None, float | None, float | None]:
    """``(value, lo, hi)`` of ``top1`` (Wilson) or ``speedup`` (bootstrap) of a record."""
    if r is None:
        return None, None, None
    return r.num(name), r.num(f"{name}_ci_lo"), r.num(f"{name}_ci_hi")


def _overlap(a: tuple, b: tuple) -> str | None:
    if None in (a[1], a[2], b[1], b[2]):
        return None
    return "yes" if a[1] <= b[2] and b[1] <= a[2] else "no"


def static_share_table(records: list[Record], fingerprint: str) -> Table | None:
    rows = []
    for s in static_share_series(records):
        for p in s.points:
            t_r, t_m = triple(p.rlt, "top1"), triple(p.random, "top1")
            row = {"model": s.model, "batch_size": s.batch_size, "dataset": p.dataset, "static_share": p.share,
                   "tau": p.tau, "rlt_kept_pct": None, "random_kept_pct": None,
                   "delta_top1_rlt_random": t_r[0] - t_m[0] if None not in (t_r[0], t_m[0]) else None,
                   "top1_intervals_overlap": _overlap(t_r, t_m)}
            for who, r in (("rlt", p.rlt), ("random", p.random)):
                row[f"{who}_kept_pct"] = METRIC_BY_NAME["kept_pct"].read(r) if r is not None else None
                for name in ("speedup", "top1"):
                    v = triple(r, name)
                    row[f"{who}_{name}"], row[f"{who}_{name}_ci_lo"], row[f"{who}_{name}_ci_hi"] = v
            rows.append(row)
    if not rows:
        return None
    one, two = fixed(1), fixed(2)

    def ci(prefix: str, fmt, suffix: str = "") -> Col:
        fields = (prefix, f"{prefix}_ci_lo", f"{prefix}_ci_hi")

        def show(r: dict) -> str:
            if r[prefix] is None:
                return MISSING
            s = fmt(r[prefix]) + suffix
            return s + (f" ({fmt(r[fields[1]])}–{fmt(r[fields[2]])})" if None not in (r[fields[1]], r[fields[2]])
                        else "")
        return Col({"rlt_speedup": "RLT speedup", "random_speedup": "random speedup", "rlt_top1": "RLT top-1 (%)",
                    "random_top1": "random top-1 (%)"}[prefix], fields, show)

    cols = [Col("model", ("model",), lambda r: str(r["model"]), "l"),
            Col("batch", ("batch_size",), lambda r: str(r["batch_size"])),
            Col("dataset", ("dataset",), lambda r: str(r["dataset"]), "l"),
            Col("static share", ("static_share",), lambda r: f"{r['static_share']:g}"),
            Col("τ", ("tau",), lambda r: f"{r['tau']:g}"),
            Col("RLT kept (%)", ("rlt_kept_pct",), lambda r: one(r["rlt_kept_pct"])),
            Col("random kept (%)", ("random_kept_pct",), lambda r: one(r["random_kept_pct"])),
            ci("rlt_speedup", two, "×"), ci("random_speedup", two, "×"),
            ci("rlt_top1", one), ci("random_top1", one),
            Col("Δtop-1 RLT − random (pt)", ("delta_top1_rlt_random",),
                lambda r: signed(1)(r["delta_top1_rlt_random"])),
            Col("top-1 intervals overlap", ("top1_intervals_overlap",),
                lambda r: r["top1_intervals_overlap"] or MISSING, "l")]
    notes = ["Datasets of one format differing only in static_share (the share of clips whose background is one "
             "frame held still); random: random masking matched to RLT's measured budget at the same τ "
             "(match_rlt = τ) on the same data. kept: tubelets kept at the input.",
             "speedup: paired, against the baseline timed in the same cell, with its 95 % bootstrap interval; "
             "top-1 with its 95 % interval (Wilson over videos).",
             "Δtop-1 RLT − random: the difference of the two cells' top-1. RLT and random are two cells, so no "
             "paired interval of the difference is available here; the last column says only whether the two "
             "top-1 intervals overlap (overlapping intervals do not rule out a difference; disjoint ones are a "
             "conservative sign of one)."]
    return Table("static_share", "RLT and random masking at RLT's budget against the share of static content",
                 cols, rows, fingerprint, notes)
