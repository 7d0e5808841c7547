"""The report's accuracy-vs-cost curves: matched-budget interpolation, the Pareto front, the curve and
static-share figures and table, from records built with the real constructor (``schema.make_record`` on
real :class:`Cell` objects) and loaded the way ``tokenbench report`` loads them.

Every expected number is computed here from the metrics the fixture chose, independently of the report code.
"""
from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest

from tokenbench.datasets import get_dataset
from tokenbench.harness import report
from tokenbench.harness.report import curve_figures, curves, records, static_share
from tokenbench.harness.report.format import MISSING
from tokenbench.harness.report.style import Style, pareto_front, reducer_colour
from tokenbench.harness.results import store_path
from tokenbench.harness.schema import Cell, make_record

FP_ID = "cpu-test-2t-torch2.13.0-float32"
FINGERPRINT = {"id": FP_ID, "device": "cpu", "device_name": "Xeon", "threads": 2, "torch": "2.13.0",
               "git_commit": "0123abcd", "dtype": "float32", "attn_backend": "sdpa"}
DEPTH, TOTAL, BATCH = 12, 196, 8
BASE_TP = 80.0          # the baseline cell's clips/s
SUITE = "curves"


def _record(reducer: str, params: dict, *, fraction: float, top1: float, ci: tuple[float, float],
            base_top1: float, dci: tuple[float, float] = (-1.0, 1.0), speedup: float | None = None,
            sp_ci: tuple[float, float] | None = None, dataset_id: str | None = None,
            options: dict | None = None, packed: bool = False, minute: int = 0) -> dict:
    tokens = TOTAL * fraction
    sp = speedup if speedup is not None else 1.0 / fraction
    lo, hi = sp_ci or (sp * 0.97, sp * 1.03)
    cell = Cell(model="vit_t", dataset="synthetic", reducer=reducer, params=params, num_frames=8, img_size=112,
                batch_size=BATCH, dataset_id=dataset_id, dataset_options=options,
                attn_path="packed" if packed else None)
    if packed:  # the suite's label for an attn_path = "packed" entry
        cell = cell.with_(given_label=cell.label + " [packed]")
    ms = 1000.0 * BATCH / BASE_TP / sp
    metrics = {"tokens_per_layer": [tokens] * DEPTH, "tokens_in_mean": tokens, "tokens_total": TOTAL,
               "tokens_in_min": int(tokens) - 3, "tokens_in_max": int(tokens) + 3, "num_clips": 240,
               "gflops": 1.3 * fraction, "top1": top1, "top1_ci_lo": ci[0], "top1_ci_hi": ci[1],
               "top1_baseline": base_top1, "delta_top1_ci_lo": top1 - base_top1 + dci[0],
               "delta_top1_ci_hi": top1 - base_top1 + dci[1], "time_ms_median": ms, "clips_per_s": BATCH / ms * 1000,
               "baseline_time_ms_median": 1000.0 * BATCH / BASE_TP, "speedup": sp, "speedup_ci_lo": lo,
               "speedup_ci_hi": hi, "attn_path": "packed" if packed or reducer == "rlt" else "dense",
               "baseline_attn_path": "packed" if packed else "dense", "num_videos": 240}
    return make_record(cell, suite=SUITE, fingerprint=FINGERPRINT, started=f"2026-01-01T00:{minute:02d}:00Z",
                       finished=f"2026-01-01T00:{minute:02d}:30Z", duration_s=30.0, command="tokenbench run",
                       metrics=metrics)


BASE_TOP1 = 95.0
# (reducer, params, fraction, top1, (lo, hi)): RLT spans 80 %…40 % (not 30 %), random 90 %…25 %
SWEEP = [
    ("none", {}, 1.0, BASE_TOP1, (93.0, 96.5)),
    ("rlt", {"threshold": 0.05}, 0.8, 90.0, (88.0, 92.0)),
    ("rlt", {"threshold": 0.2}, 0.4, 70.0, (66.0, 74.0)),
    ("random", {"keep": 0.9}, 0.9, 91.0, (89.0, 93.0)),
    ("random", {"match_rlt": 0.05}, 0.8, 86.0, (84.0, 88.0)),
    ("random", {"keep": 0.25}, 0.25, 40.0, (36.0, 44.0)),
    ("tome", {"r": 8}, 0.6, 88.0, (86.0, 90.0)),
]


def sweep_records() -> list[dict]:
    out = [_record(red, p, fraction=f, top1=t, ci=ci, base_top1=BASE_TOP1, minute=i, speedup=1.0 if red == "none"
                   else None, sp_ci=(0.99, 1.01) if red == "none" else None)
           for i, (red, p, f, t, ci) in enumerate(SWEEP)]
    # RLT τ=0.05 once more with every arm per sequence: slower in its cell (its baseline ran packed too)
    out.append(_record("rlt", {"threshold": 0.05}, fraction=0.8, top1=90.0, ci=(88.0, 92.0), base_top1=BASE_TOP1,
                       speedup=1.1, packed=True, minute=30))
    return out


def _write(root: Path, recs: list[dict]) -> Path:
    path = store_path(root, SUITE, FP_ID)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return root


def _ok(root: Path) -> list[dict]:
    ok, failed = records.dedupe(report.read(root).records)
    assert not failed
    return ok


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


# ----------------------------------------------------------------------------------------------------
# the matched-budget table


def test_interpolation_at_50_is_linear_in_value_and_interval_and_unspanned_budgets_are_missing(tmp_path):
    report.write_report(_write(tmp_path / "results", sweep_records()), tmp_path / "out", figures=False)
    tables = tmp_path / "out" / SUITE / "tables"
    rows = {r["family"]: r for r in _csv(tables / "matched_budget.csv")}
    assert set(rows) == {"rlt", "random", "tome"}
    # RLT: between 40 % (70, 66–74) and 80 % (90, 88–92), 50 % is a quarter of the way up from 40 %
    t = (0.5 - 0.4) / (0.8 - 0.4)
    rlt = rows["rlt"]
    assert float(rlt["top1_at_50"]) == pytest.approx(70 + t * (90 - 70), abs=1e-4)
    assert float(rlt["top1_at_50_lo"]) == pytest.approx(66 + t * (88 - 66), abs=1e-4)
    assert float(rlt["top1_at_50_hi"]) == pytest.approx(74 + t * (92 - 74), abs=1e-4)
    assert float(rlt["delta_at_50"]) == pytest.approx(70 + t * 20 - BASE_TOP1, abs=1e-4)
    assert float(rlt["delta_at_50_lo"]) == pytest.approx(70 + t * 20 - BASE_TOP1 - 1.0, abs=1e-4)
    # 75 %: between 40 % and 80 % too
    t75 = (0.75 - 0.4) / 0.4
    assert float(rlt["top1_at_75"]) == pytest.approx(70 + t75 * 20, abs=1e-4)
    # RLT's budgets stop at 40 %: nothing at 30 % (no extrapolation), in the CSV and the Markdown
    assert rlt["top1_at_30"] == "" and rlt["top1_at_30_lo"] == "" and rlt["delta_at_30"] == ""
    # random (keep and matched to RLT: one family) spans 90 %…25 %: 30 % lies between 25 % (40) and 80 % (86)
    t30 = (0.3 - 0.25) / (0.8 - 0.25)
    assert float(rows["random"]["top1_at_30"]) == pytest.approx(40 + t30 * 46, abs=1e-4)
    assert float(rows["random"]["top1_at_30_hi"]) == pytest.approx(44 + t30 * (88 - 44), abs=1e-4)
    assert int(rows["random"]["budgets"]) == 3
    # one ToMe budget at 60 %: it spans no budget of the table
    assert all(rows["tome"][f"top1_at_{p}"] == "" for p in ("75", "50", "30"))
    md = (tables / "matched_budget.md").read_text(encoding="utf-8")
    rlt_line = next(line for line in md.splitlines() if line.startswith("| vit_t | synthetic | rlt |"))
    cells = [c.strip() for c in rlt_line.strip("|").split("|")]
    assert cells[-2:] == [MISSING, MISSING]                       # @30 %: top-1 and Δ
    assert cells[8] == f"{70 + t * 20:.1f} ({66 + t * 22:.1f}–{74 + t * 18:.1f})"   # @50 % with its interval
    # the [packed] repeat of τ=0.05 is not a budget of the line
    assert int(rlt["budgets"]) == 2
    assert "matched_budget" in (tmp_path / "out" / SUITE / "README.md").read_text(encoding="utf-8")


def test_interpolate_reads_exact_points_and_refuses_outside_the_curve():
    curve = [(0.4, 70.0, 66.0, 74.0), (0.8, 90.0, 88.0, 92.0)]
    assert curves.interpolate(curve, 0.8) == (90.0, 88.0, 92.0)
    assert curves.interpolate(curve, 0.4) == (70.0, 66.0, 74.0)
    assert curves.interpolate(curve, 0.38) is None and curves.interpolate(curve, 0.82) is None
    assert curves.interpolate([], 0.5) is None
    # an interval missing at one end: the value is read, the interval is not
    assert curves.interpolate([(0.4, 70.0, None, None), (0.8, 90.0, 88.0, 92.0)], 0.6) == (80.0, None, None)


# ----------------------------------------------------------------------------------------------------
# the Pareto front


def _non_dominated(points, lower_x_better=False):
    """Brute force: points no other point beats or equals on both axes while beating on one."""
    sgn = -1 if lower_x_better else 1
    out = set()
    for p in points:
        if not any((sgn * q[0] >= sgn * p[0] and q[1] >= p[1]) and (q[0], q[1]) != (p[0], p[1]) for q in points):
            out.add(p)
    return out


def test_pareto_front_holds_exactly_the_non_dominated_points():
    rng = random.Random(3)
    for _ in range(200):
        pts = [(rng.choice(range(10)), rng.choice(range(10))) for _ in range(rng.randint(1, 12))]
        assert set(pareto_front(pts)) == _non_dominated(set(pts)), pts


def _front_line(fig):
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_color() == curve_figures.FRONT and ln.get_linestyle() == "--"]
    assert len(lines) == 1
    return set(zip(lines[0].get_xdata(), lines[0].get_ydata()))


def test_curve_figures_mark_the_front_join_each_family_and_draw_packed_rows_hollow(tmp_path):
    ok = _ok(_write(tmp_path / "results", sweep_records()))
    specs, skipped = curve_figures.plan_curve_figures({FP_ID: ok}, ok)
    by_name = {s.name: s for s in specs}
    assert set(by_name) == {"curves_top1_vs_gflops", "curves_top1_vs_throughput"}
    assert [t for t, _ in skipped] == ["RLT against the share of static content"]
    fig = by_name["curves_top1_vs_gflops"].draw()
    # front over every point, lower GFLOPs and higher top-1 better
    pts = {(r.num("gflops"), r.num("top1")) for r in ok}
    assert _front_line(fig) == _non_dominated(pts, lower_x_better=True)
    ax = fig.axes[0]
    # each family's line: its deployed budgets sorted by tokens, the [packed] repeat not in it
    rlt_line = [ln for ln in ax.get_lines() if ln.get_color() == reducer_colour("rlt") and ln.get_linestyle() == "-"]
    assert len(rlt_line) == 1
    deployed = sorted((r for r in ok if r.reducer == "rlt" and not records.forced_packed(r)),
                      key=lambda r: r.num("tokens_in_mean"))
    assert list(rlt_line[0].get_xdata()) == pytest.approx([r.num("gflops") for r in deployed])
    hollow = [ln for ln in ax.get_lines() if ln.get_markerfacecolor() == "none"
              and ln.get_markeredgecolor() == reducer_colour("rlt")]
    assert len(hollow) == 1
    random_line = next(ln for ln in ax.get_lines() if ln.get_color() == reducer_colour("random")
                       and ln.get_linestyle() == "-")
    assert len(random_line.get_xdata()) == 3   # random by keep and matched to RLT: one line
    # throughput: speedup × the baseline cell's clips/s; the [packed] row's speedup is against its own
    # per-sequence baseline arm, so it multiplies that arm's clips/s
    sets = curves.curve_sets(ok, by_batch=True)
    assert len(sets) == 1
    for p in sets[0].points:
        r = p.record
        base = BATCH / (r.num("baseline_time_ms_median") / 1000) if p.packed else BASE_TP
        assert p.throughput == pytest.approx(r.num("speedup") * base)
        assert (p.throughput_lo, p.throughput_hi) == pytest.approx(
            (r.num("speedup_ci_lo") * base, r.num("speedup_ci_hi") * base))
    fig = by_name["curves_top1_vs_throughput"].draw()
    tp = {(p.throughput, p.top1) for p in [sets[0].baseline] + sets[0].points}
    assert _front_line(fig) == _non_dominated(tp)


def test_packed_variants_share_their_twins_marker_hollow_in_every_figure(tmp_path):
    ok = _ok(_write(tmp_path / "results", sweep_records()))
    style = Style(ok)
    assert style.hollow == {"rlt τ=0.05 [packed]"}
    assert style.marker["rlt τ=0.05 [packed]"] == style.marker["rlt τ=0.05"]
    assert style.face("rlt τ=0.05 [packed]") == "none" and style.face("rlt τ=0.05") == reducer_colour("rlt")


# ----------------------------------------------------------------------------------------------------
# static share


SHARES = [(None, None), ("synthetic_s0", 0.0), ("synthetic_s1", 1.0)]  # the main dataset: its default share


def share_records() -> list[dict]:
    out, minute = [], 0
    for (did, share), (rlt_keep, rnd_top1) in zip(SHARES, [(0.95, 80.0), (0.7, 84.0), (0.35, 70.0)]):
        opts = {"static_share": share} if share is not None else None
        base = 90.0 + minute % 3
        for red, params, frac, top1, ci, sp in (
                ("none", {}, 1.0, base, (88.0, 92.0), 1.0),
                ("rlt", {"threshold": 0.1}, rlt_keep, base - 2, (base - 5, base + 1), 1 / rlt_keep),
                ("random", {"match_rlt": 0.1}, rlt_keep, rnd_top1, (rnd_top1 - 3, rnd_top1 + 3), 1.1 / rlt_keep)):
            out.append(_record(red, params, fraction=frac, top1=top1, ci=ci, base_top1=base, speedup=sp,
                               dataset_id=did, options=opts, minute=minute))
            minute += 1
    return out


def test_static_share_table_rows_match_the_records_and_the_figure_is_written(tmp_path):
    recs = share_records()
    paths = report.write_report(_write(tmp_path / "results", recs), tmp_path / "out")
    root = tmp_path / "out" / SUITE
    for stem in ("curves_top1_vs_gflops", "curves_top1_vs_throughput", "static_share"):
        for ext in (".png", ".svg"):
            f = root / "figures" / f"{stem}{ext}"
            assert f.is_file() and f.stat().st_size > 1000 and f in paths.figures
    rows = _csv(root / "tables" / "static_share.csv")
    # the main dataset sets no static_share: it has the dataset's own default
    default = get_dataset("synthetic", split="val", num_frames=8, img_size=112, cache=False).options["static_share"]
    expected_shares = sorted(default if s is None else s for _, s in SHARES)
    assert [float(r["static_share"]) for r in rows] == expected_shares
    by_ds: dict[str, dict[str, dict]] = {}
    for rec in recs:
        if rec["cell"]["dataset"] == "synthetic":
            by_ds.setdefault(rec["cell"].get("dataset_id") or "synthetic", {})[rec["cell"]["reducer"]] = rec["metrics"]
    for row in rows:
        m = by_ds[row["dataset"]]
        rlt, rnd = m["rlt"], m["random"]
        assert float(row["tau"]) == 0.1
        assert float(row["rlt_kept_pct"]) == pytest.approx(100 * rlt["tokens_in_mean"] / TOTAL, abs=1e-4)
        assert float(row["random_kept_pct"]) == pytest.approx(100 * rnd["tokens_in_mean"] / TOTAL, abs=1e-4)
        for who, mm in (("rlt", rlt), ("random", rnd)):
            for k in ("speedup", "speedup_ci_lo", "speedup_ci_hi", "top1", "top1_ci_lo", "top1_ci_hi"):
                assert float(row[f"{who}_{k}"]) == pytest.approx(mm[k], abs=1e-4), (who, k)
        assert float(row["delta_top1_rlt_random"]) == pytest.approx(rlt["top1"] - rnd["top1"], abs=1e-4)
        overlap = rlt["top1_ci_lo"] <= rnd["top1_ci_hi"] and rnd["top1_ci_lo"] <= rlt["top1_ci_hi"]
        assert row["top1_intervals_overlap"] == ("yes" if overlap else "no")
    assert {r["top1_intervals_overlap"] for r in rows} == {"yes", "no"}  # the fixture has both cases
    md = (root / "README.md").read_text(encoding="utf-8")
    assert "static_share.png" in md and "no paired interval of the difference" in md
    # the series the figure draws: one τ, three shares, each RLT point with its matched random cell
    ok = _ok(tmp_path / "results")
    (series,) = static_share.static_share_series(ok)
    assert series.taus == [0.1] and [p.share for p in series.points] == expected_shares
    assert all(p.random is not None and p.random.params["match_rlt"] == p.tau for p in series.points)


def test_a_threshold_measured_at_one_share_is_not_a_curve_against_the_share(tmp_path):
    recs = share_records()  # τ = 0.1 on three shares; add τ = 0.4 (and its random match) on the main dataset only
    for red, params, sp in (("rlt", {"threshold": 0.4}, 1.5), ("random", {"match_rlt": 0.4}, 1.6)):
        recs.append(_record(red, params, fraction=0.6, top1=85.0, ci=(82.0, 88.0), base_top1=90.0, speedup=sp,
                            minute=90 + len(recs)))
    report.write_report(_write(tmp_path / "results", recs), tmp_path / "out", figures=False)
    rows = _csv(tmp_path / "out" / SUITE / "tables" / "static_share.csv")
    assert {float(r["tau"]) for r in rows} == {0.1} and len(rows) == 3
    (series,) = static_share.static_share_series(_ok(tmp_path / "results"))
    assert series.taus == [0.1]


def test_no_threshold_on_two_shares_is_no_series_and_no_figure(tmp_path):
    # RLT on two shares, but a different τ on each: nothing to draw against the share (the report must not
    # plan a figure of no points)
    recs = []
    for did, share, tau in (("synthetic_s0", 0.0, 0.1), ("synthetic_s1", 1.0, 0.2)):
        for red, params in (("none", {}), ("rlt", {"threshold": tau})):
            recs.append(_record(red, params, fraction=0.7 if params else 1.0, top1=85.0, ci=(82.0, 88.0),
                                base_top1=86.0, dataset_id=did, options={"static_share": share}, minute=len(recs)))
    paths = report.write_report(_write(tmp_path / "results", recs), tmp_path / "out")
    assert static_share.static_share_series(_ok(tmp_path / "results")) == []
    assert not any(f.stem == "static_share" for f in paths.figures)


def test_datasets_of_one_format_stay_apart_in_every_table(tmp_path):
    """Three entries of the synthetic format (ids differ, options differ) are three datasets, each read
    against its own baseline."""
    report.write_report(_write(tmp_path / "results", share_records()), tmp_path / "out", figures=False)
    rows = _csv(tmp_path / "out" / SUITE / "tables" / "inference.csv")
    assert sorted({r["dataset"] for r in rows}) == ["synthetic", "synthetic_s0", "synthetic_s1"]
    assert len(rows) == 9


def test_csv_counts_are_written_as_integers(tmp_path):
    report.write_report(_write(tmp_path / "results", sweep_records()), tmp_path / "out", figures=False)
    tables = tmp_path / "out" / SUITE / "tables"
    tok = _csv(tables / "tokens.csv")
    assert all(r["num_clips"] == "240" and r["tokens_total"] == "196" for r in tok)
    assert all(r["tokens_in_min"].lstrip("-").isdigit() for r in tok)
    det = _csv(tables / "inference_details.csv")
    assert all(r["num_videos"] == "240" for r in det)
    assert any("." in r["tokens_in_mean"] for r in tok)  # a mean stays a float


def test_report_check_passes_on_the_regenerated_reference():
    root = Path(__file__).resolve().parents[1]
    assert report.check_report(root / "results" / "reference", root / "reports" / "reference") == []



def test_a_curve_ending_within_rounding_of_a_budget_is_read_at_its_end():
    from tokenbench.harness.report.curves import SNAP, interpolate

    curve = [(0.301, 88.7, 86.6, 90.5), (0.5, 92.1, 90.3, 93.6)]
    assert interpolate(curve, 0.30) == pytest.approx((88.7, 86.6, 90.5))  # random keep 0.3 → 0.301 of 196
    assert interpolate(curve, 0.301 - 2 * SNAP) is None                 # farther: no extrapolation


def test_many_families_split_into_group_panels_each_with_the_simple_baselines():
    from tokenbench.harness.report.style import FAMILY_GROUPS, REDUCER_COLOURS, family_groups, family_marker

    few = {"none", "rlt", "random", "tome", "sta", "temporal"}
    assert family_groups(few) == [("", few)]  # a default-sized figure stays one panel
    many = few | {"spatial", "tome_drop", "random_merge", "pitome", "tofu", "vid_tldr", "attn_prune", "my_plugin"}
    panels = family_groups(many)
    assert [t for t, _ in panels] == list(FAMILY_GROUPS)
    for _, shown in panels:
        assert {"none", "random", "temporal"} <= shown  # the simple baselines on every panel
    assert "my_plugin" in panels[0][1] and "pitome" in panels[1][1] and "vid_tldr" in panels[2][1]
    assert set().union(*(s for _, s in panels)) == many  # every family drawn somewhere
    # every built-in family has its own colour-and-marker pair
    styles = [(c, family_marker(f)) for f, c in REDUCER_COLOURS.items()]
    assert len(set(styles)) == len(styles)
