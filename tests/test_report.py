"""tokenbench report: tables, figures, README and --check, from record fixtures in the exact schema.

The fixtures are input data written as JSON lines (harness/schema.py); every expected number in the
assertions is read back from those records, never typed in.
"""
from __future__ import annotations

import csv
import io
import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tokenbench.harness import report
from tokenbench.harness.cli import main as cli_main
from tokenbench.harness.paths import WRITTEN_MANIFEST, safe_name
from tokenbench.harness.report import figures as report_figures
from tokenbench.harness.report import records as report_records
from tokenbench.harness.report import tables as report_tables
from tokenbench.harness.results import store_path
from tokenbench.harness.schema import SCHEMA_VERSION, cell_key, reducer_label

FP_A = "cpu-xeon-2t-torch2.13.0"
FP_B = "cuda-h100-torch2.13.0"
GRID = (4, 7, 7)
DEPTH = 12
TOTAL = GRID[0] * GRID[1] * GRID[2]


# ----------------------------------------------------------------------------------------------------
# fixtures: records in the exact schema


def _fingerprint(fp_id: str) -> dict:
    cpu = fp_id.startswith("cpu")
    return {"id": fp_id, "device": "cpu" if cpu else "cuda", "device_name": "Xeon" if cpu else "H100",
            "threads": 2, "torch": "2.13.0", "cuda": None if cpu else "12.8", "python": "3.11.7",
            "git_commit": "0123abcd", "dtype": "float32", "attn_backend": "sdpa" if cpu else "flash_attn"}


def _record(fp_id: str, cell: dict, metrics: dict, status: str = "ok", error: str | None = None,
            minute: int = 0) -> dict:
    return {"schema": SCHEMA_VERSION, "key": cell_key(cell), "suite": cell.pop("_suite", "default"),
            "status": status, "error": error, "cell": cell, "fingerprint": _fingerprint(fp_id),
            "metrics": metrics, "started": f"2026-01-01T00:{minute:02d}:00Z",
            "finished": f"2026-01-01T00:{minute:02d}:30Z", "duration_s": 30.0,
            "command": "tokenbench run --suite default"}


def _cell(dataset, reducer, params, batch, mode="inference", suite="default"):
    return {"model": "vit_t", "num_frames": 8, "img_size": 112, "checkpoint": None, "dataset": dataset,
            "split": "val", "reducer": reducer, "params": params, "batch_size": batch, "mode": mode,
            "dtype": "float32", "compile": False, "attn_backend": "auto", "_suite": suite}


def _gflops(layers: list[float], tokens_in: float, d: int = 192) -> float:
    n = [tokens_in] + layers[:-1]
    return sum(12 * x * d * d + 2 * x * x * d for x in n) / 1e9


VARIANTS = [("none", {}), ("rlt", {"threshold": 0.05}), ("rlt", {"threshold": 0.1}),
            ("rlt", {"threshold": 0.2}), ("random", {"fraction": 0.6, "seed": 0}), ("tome", {"r": 8}),
            ("sta", {"r": 4})]


def make_suite_records(fingerprint: str = FP_A, seed: int = 0, batches=(1, 4),
                       datasets=("synthetic", "samples"), variants=VARIANTS, train: bool = True,
                       failed: bool = True, suite: str = "default") -> list[dict]:
    rng = random.Random(seed)
    out, minute = [], 0
    for dataset in datasets:
        base_top1 = round(rng.uniform(90, 97), 2)
        clips = 24
        for reducer, params in variants:
            # token counts per clip (hardware independent: same seed per dataset/variant)
            trng = random.Random(f"{dataset}-{reducer}-{json.dumps(params)}")
            if reducer == "rlt":
                keep = {0.05: 0.85, 0.1: 0.6, 0.2: 0.4}[params["threshold"]]
                per_clip = [min(TOTAL, max(TOTAL // GRID[0], round(TOTAL * keep * trng.uniform(0.7, 1.3))))
                            for _ in range(clips)]
            elif reducer == "random":
                per_clip = [round(TOTAL * params["fraction"])] * clips
            else:
                per_clip = [TOTAL] * clips
            tin = sum(per_clip) / clips
            if reducer == "tome":
                layers = [tin - params["r"] * (i + 1) for i in range(DEPTH)]
            elif reducer == "sta":
                layers, n = [], tin
                for i in range(DEPTH):
                    if i in (0, DEPTH // 3, 2 * DEPTH // 3):
                        n -= params["r"] * (8 // (2 ** [0, DEPTH // 3, 2 * DEPTH // 3].index(i)))
                    layers.append(n)
            else:
                layers = [tin] * DEPTH
            gflops = _gflops(layers, tin)
            top1 = base_top1 if reducer == "none" else round(base_top1 - trng.uniform(0.2, 4), 2)
            for bs in batches:
                base_ms = bs * (_gflops([TOTAL] * DEPTH, TOTAL) * 9.0 + 1.5)
                ms = base_ms if reducer == "none" else bs * (gflops * 9.0 * rng.uniform(1.0, 1.4) + 1.5)
                sp = base_ms / ms
                m = {"gflops": gflops, "tokens_in_mean": tin, "tokens_in_min": min(per_clip),
                     "tokens_in_max": max(per_clip), "tokens_total": TOTAL, "tokens_per_layer": layers,
                     "tokens_per_clip": per_clip, "time_ms_median": ms, "time_ms_q1": ms * 0.97,
                     "time_ms_q3": ms * 1.04, "baseline_time_ms_median": base_ms, "speedup": sp,
                     "speedup_q1": sp * 0.98, "speedup_q3": sp * 1.02, "clips_per_s": bs / (ms / 1000),
                     "top1": top1, "top5": 99.0, "top1_baseline": base_top1, "num_clips": clips,
                     "views": "1x1", "repeats": 10, "warmup": 3}
                out.append(_record(fingerprint, _cell(dataset, reducer, params, bs, suite=suite), m,
                                   minute=minute))
                minute = (minute + 1) % 60
    if train:
        base_wall = rng.uniform(100, 140)
        for reducer, params in [("none", {}), ("rlt", {"threshold": 0.1}), ("random", {"fraction": 0.6, "seed": 0})]:
            wall = base_wall if reducer == "none" else base_wall * rng.uniform(0.5, 0.8)
            m = {"train_wall_s": wall, "train_epochs": 2, "train_clips_per_s": 480 / wall,
                 "train_tokens_mean": TOTAL * (1 if reducer == "none" else rng.uniform(0.5, 0.7)),
                 "train_final_loss": rng.uniform(0.1, 0.5), "top1": round(rng.uniform(88, 96), 2)}
            out.append(_record(fingerprint, _cell("synthetic", reducer, params, 8, "train", suite=suite), m,
                               minute=minute))
            minute = (minute + 1) % 60
    if failed:
        out.append(_record(fingerprint, _cell("samples", "sta", {"r": 99}, 4, suite=suite), {},
                           status="failed", error="ValueError: r=99 exceeds half the tokens | layer 3"))
    return out


def write_records(root: Path, records: list[dict], shuffle_seed: int | None = None) -> list[Path]:
    root = Path(root)
    by_path: dict[Path, list[dict]] = {}
    for r in records:
        by_path.setdefault(store_path(root, r["suite"], r["fingerprint"]["id"]), []).append(r)
    for path, recs in by_path.items():
        if shuffle_seed is not None:
            recs = recs[:]
            random.Random(shuffle_seed).shuffle(recs)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return sorted(by_path)


def _csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def _label(rec: dict) -> str:
    return reducer_label(rec["cell"]["reducer"], rec["cell"]["params"])


@pytest.fixture()
def suite_dir(tmp_path):
    records = make_suite_records(batches=(2,), datasets=("synthetic",))
    write_records(tmp_path / "results", records)
    return tmp_path, records


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One full report with figures (drawing is the slow part: do it once for the module)."""
    tmp = tmp_path_factory.mktemp("report")
    records = make_suite_records(batches=(1, 8))
    write_records(tmp / "results", records)
    paths = report.write_report(tmp / "results" / "default", tmp / "reports")
    return tmp, records, paths


# ----------------------------------------------------------------------------------------------------
# tables


def test_inference_table_has_a_row_per_reducer_with_the_records_numbers(written):
    tmp, records, paths = written
    rows = _csv(tmp / "reports" / "default" / "tables" / "inference.csv")
    ok = [r for r in records if r["status"] == "ok" and r["cell"]["mode"] == "inference"]
    assert len(rows) == len(ok)
    for rec in ok:
        c, m = rec["cell"], rec["metrics"]
        match = [row for row in rows if row["dataset"] == c["dataset"] and row["label"] == _label(rec)
                 and int(row["batch_size"]) == c["batch_size"]]
        assert len(match) == 1, (c, _label(rec))
        row = match[0]
        assert row["fingerprint"] == FP_A
        for col in ("top1", "gflops", "tokens_in_mean", "clips_per_s", "speedup", "speedup_q1", "speedup_q3"):
            assert float(row[col]) == pytest.approx(m[col], abs=1e-4), col
        assert float(row["tokens_out_mean"]) == pytest.approx(m["tokens_per_layer"][-1], abs=1e-4)
    # every reducer variant is in the Markdown table too, with its top-1 at the table's precision
    md = (tmp / "reports" / "default" / "tables" / "inference.md").read_text(encoding="utf-8")
    for rec in ok:
        line = next(ln for ln in md.splitlines()
                    if f"| {rec['cell']['dataset']} | {_label(rec)} |" in ln
                    and f"| {rec['cell']['batch_size']} | {rec['metrics']['top1']:.1f} |" in ln)
        assert f"{rec['metrics']['speedup']:.2f}×" in line
    tex = (tmp / "reports" / "default" / "tables" / "inference.tex").read_text(encoding="utf-8")
    assert "\\toprule" in tex and "$\\tau$=0.1" in tex and tex.count("\\\\") == len(ok) + 1


def test_delta_top1_is_read_against_the_records_own_baseline_and_speedup_falls_back(tmp_path):
    records = make_suite_records(train=False, failed=False, batches=(2,), datasets=("synthetic",))
    # a record whose paired baseline (other views, say) is not the none row's top-1: its own is used
    sta = next(r for r in records if r["cell"]["reducer"] == "sta")
    sta["metrics"]["top1_baseline"] = sta["metrics"]["top1"] - 3.0
    # one record without its own speedup (from its baseline_time_ms_median), one without either
    # (from the baseline record's median at the same batch size)
    rlt = next(r for r in records if r["cell"]["reducer"] == "rlt")
    tome = next(r for r in records if r["cell"]["reducer"] == "tome")
    for k in ("speedup", "speedup_q1", "speedup_q3", "top1_baseline"):
        rlt["metrics"].pop(k)
        tome["metrics"].pop(k)
    tome["metrics"].pop("baseline_time_ms_median")
    tome["metrics"]["time_ms_median"] *= 1.5  # make the fallback differ from any stored number
    base = next(r for r in records if r["cell"]["reducer"] == "none")
    write_records(tmp_path / "results", records)
    recs = report.read(tmp_path / "results").records
    rows = {row["label"]: row for row in report_tables.inference_values(recs)}
    for rec in records:
        row = rows[_label(rec)]
        if "top1_baseline" in rec["metrics"]:
            assert row["delta_top1"] == pytest.approx(rec["metrics"]["top1"] - rec["metrics"]["top1_baseline"])
        else:  # never a baseline row picked by dataset name
            assert row["delta_top1"] is None
    assert rows[_label(sta)]["delta_top1"] == pytest.approx(3.0)
    assert rows["none"]["delta_top1"] == 0
    assert rows[_label(rlt)]["speedup"] == pytest.approx(
        rlt["metrics"]["baseline_time_ms_median"] / rlt["metrics"]["time_ms_median"])
    assert rows[_label(rlt)]["speedup_q1"] is None
    assert rows[_label(tome)]["speedup"] == pytest.approx(
        base["metrics"]["time_ms_median"] / tome["metrics"]["time_ms_median"])
    # clips/s IQR comes from the time quartiles
    assert rows["none"]["clips_per_s_q1"] == pytest.approx(2 / (base["metrics"]["time_ms_q3"] / 1000))
    # the Markdown shows the signed delta
    report.write_report(tmp_path / "results", tmp_path / "reports", figures=False)
    md = (tmp_path / "reports" / "default" / "tables" / "inference.md").read_text(encoding="utf-8")
    assert "| +3.0 |" in md


def test_training_table_speedup_against_baseline_training(written):
    tmp, records, _ = written
    rows = {r["label"]: r for r in _csv(tmp / "reports" / "default" / "tables" / "training.csv")}
    train = [r for r in records if r["status"] == "ok" and r["cell"]["mode"] == "train"]
    base = next(r for r in train if r["cell"]["reducer"] == "none")
    assert set(rows) == {_label(r) for r in train}
    for rec in train:
        row = rows[_label(rec)]
        assert float(row["train_wall_s"]) == pytest.approx(rec["metrics"]["train_wall_s"], abs=1e-4)
        assert float(row["train_speedup"]) == pytest.approx(
            base["metrics"]["train_wall_s"] / rec["metrics"]["train_wall_s"], abs=1e-4)
        assert float(row["top1"]) == pytest.approx(rec["metrics"]["top1"])


def test_tokens_and_sweep_tables(written):
    tmp, records, _ = written
    tables = tmp / "reports" / "default" / "tables"
    tokens = _csv(tables / "tokens.csv")
    inf = [r for r in records if r["status"] == "ok" and r["cell"]["mode"] == "inference"]
    variants = {(r["cell"]["dataset"], _label(r)) for r in inf}
    assert len(tokens) == len(variants)  # one row per dataset and variant, not per batch size
    for row in tokens:
        rec = next(r for r in inf if (r["cell"]["dataset"], _label(r)) == (row["dataset"], row["label"]))
        assert float(row["tokens_in_min"]) == min(rec["metrics"]["tokens_per_clip"])
        assert float(row["reduction_x"]) == pytest.approx(TOTAL / rec["metrics"]["tokens_in_mean"], abs=1e-4)
    sweep = _csv(tables / "rlt_threshold_sweep.csv")
    rlt = [r for r in inf if r["cell"]["reducer"] == "rlt"]
    assert sorted(float(r["tau"]) for r in sweep if r["tau"]) == sorted(r["cell"]["params"]["threshold"]
                                                                        for r in rlt)
    assert {r["label"] for r in sweep} == {"none"} | {_label(r) for r in rlt}


def test_mixed_fingerprints_give_separate_tables_never_one_speedup_column(tmp_path):
    a = make_suite_records(FP_A, seed=1, failed=False)
    b = make_suite_records(FP_B, seed=2, failed=False)
    write_records(tmp_path / "results", a + b)
    paths = report.write_report(tmp_path / "results", tmp_path / "reports", figures=False)
    tables = tmp_path / "reports" / "default" / "tables"
    names = sorted(p.name for p in tables.glob("*.csv"))
    slug_a, slug_b = safe_name(FP_A), safe_name(FP_B)
    for stem in ("inference", "training", "rlt_threshold_sweep"):
        assert f"{stem}__{slug_a}.csv" in names and f"{stem}__{slug_b}.csv" in names
        assert f"{stem}.csv" not in names
    # every table with a speedup or clips/s column holds the rows of exactly one fingerprint
    for p in tables.glob("*.csv"):
        rows = _csv(p)
        if any(k in rows[0] for k in ("speedup", "clips_per_s", "train_speedup")):
            assert len({r["fingerprint"] for r in rows}) == 1, p.name
    for fp, recs in ((FP_A, a), (FP_B, b)):
        rows = _csv(tables / f"inference__{safe_name(fp)}.csv")
        ok = [r for r in recs if r["cell"]["mode"] == "inference"]
        assert len(rows) == len(ok) and {r["fingerprint"] for r in rows} == {fp}
        for rec in ok:
            row = next(r for r in rows if (r["dataset"], r["label"], int(r["batch_size"])) ==
                       (rec["cell"]["dataset"], _label(rec), rec["cell"]["batch_size"]))
            assert float(row["speedup"]) == pytest.approx(rec["metrics"]["speedup"], abs=1e-4)
    readme = paths.readmes[0].read_text(encoding="utf-8")
    assert f"— `{FP_A}`" in readme and f"— `{FP_B}`" in readme
    # the tokens table is hardware independent: one table, no duplicated rows
    assert len(_csv(tables / "tokens.csv")) == len({(r["cell"]["dataset"], _label(r)) for r in a
                                                   if r["cell"]["mode"] == "inference"})
    # and the builders refuse mixed input outright
    mixed = report.read(tmp_path / "results").records
    # timing figures are planned once per fingerprint, token figures once
    ok, _ = report_records.dedupe(mixed)
    by_fp = {fp: [r for r in ok if r.fingerprint == fp] for fp in (FP_A, FP_B)}
    names = {s.name for s in report_figures.plan_figures(by_fp, ok, report_figures.Style(ok)).figures}
    timed = ("accuracy_vs_throughput", "gflops_vs_time", "rlt_threshold_sweep", "curves_top1_vs_throughput")
    assert names == {f"{n}__{s}" for n in timed for s in (slug_a, slug_b)} | {
        "token_distribution", "tokens_per_layer", "curves_top1_vs_gflops"}
    assert "(figures/accuracy_vs_throughput__" + slug_b + ".png)" in readme
    with pytest.raises(AssertionError, match="several fingerprints"):
        report_tables.inference_values([r for r in mixed if r.mode == "inference"])
    # the headline table prints one block per fingerprint
    head = report.headline_table(report.read(tmp_path / "results"))
    assert head.count("hardware ") == 2 and FP_A in head and FP_B in head


def test_tables_are_deterministic(tmp_path, monkeypatch):
    records = make_suite_records()
    write_records(tmp_path / "a" / "results", records)
    write_records(tmp_path / "b" / "results", records, shuffle_seed=3)  # same records, another order
    monkeypatch.chdir(tmp_path / "a")
    report.write_report("results", "reports", figures=False)
    first = {p: p.read_bytes() for p in Path("reports").rglob("*") if p.is_file()}
    report.write_report("results/default", "reports/", figures=False)  # another spelling, same folders
    monkeypatch.chdir(tmp_path / "b")
    report.write_report(["results"], Path("reports"), figures=False)
    assert {f.suffix for f in first if f.name != WRITTEN_MANIFEST} == {".md", ".csv", ".tex"}
    assert Path("reports/default/README.md") in first
    for f, data in first.items():
        assert (tmp_path / "a" / f).read_bytes() == data, f
        assert (tmp_path / "b" / f).read_bytes() == data, f
    assert sorted(p for p in Path("reports").rglob("*") if p.is_file()) == sorted(first)


def test_svg_is_deterministic(tmp_path):
    records = make_suite_records(train=False, failed=False, batches=(1,), datasets=("synthetic",))
    write_records(tmp_path / "results", records)
    report.write_report(tmp_path / "results", tmp_path / "o1")
    report.write_report(tmp_path / "results", tmp_path / "o2")
    svgs = sorted((tmp_path / "o1" / "default" / "figures").glob("*.svg"))
    assert svgs
    for p in svgs:
        assert p.read_bytes() == (tmp_path / "o2" / "default" / "figures" / p.name).read_bytes(), p.name


# ----------------------------------------------------------------------------------------------------
# --check


def test_check_passes_on_fresh_and_detects_stale_tables(suite_dir, capsys):
    tmp, records = suite_dir
    results, out = str(tmp / "results" / "default"), str(tmp / "reports")
    assert cli_main(["report", results, "--out", out]) == 0
    assert report.check_report(results, out) == []
    assert cli_main(["report", results, "--out", out, "--check"]) == 0
    # the records change (a cell re-measured): the committed tables are stale
    rec = next(r for r in records if r["cell"]["reducer"] == "tome")
    rec["metrics"]["top1"] -= 1.0
    write_records(tmp / "results", records)
    capsys.readouterr()
    assert cli_main(["report", results, "--out", out, "--check"]) == 1
    err = capsys.readouterr().err
    assert "inference.md" in err and "inference.csv" in err and "inference.tex" in err
    assert "README.md" in err and "training.md" not in err
    # regenerating makes it current; a hand edit makes it stale again; so does a deleted table
    assert cli_main(["report", results, "--out", out, "--no-figures"]) == 0
    assert report.check_report(results, out) == []
    tokens_md = tmp / "reports" / "default" / "tables" / "tokens.md"
    tokens_md.write_text(tokens_md.read_text(encoding="utf-8").replace("|", "|", 1) + "edited\n",
                         encoding="utf-8")
    assert any("tokens.md" in s for s in report.check_report(results, out))
    tokens_md.unlink()
    assert any("tokens.md: missing" in s for s in report.check_report(results, out))
    # a missing figure is reported too
    assert cli_main(["report", results, "--out", out, "--no-figures"]) == 0
    (tmp / "reports" / "default" / "figures" / "tokens_per_layer.svg").unlink()
    assert [s for s in report.check_report(results, out)] == [
        f"{tmp / 'reports' / 'default' / 'figures' / 'tokens_per_layer.svg'}: missing figure"]


def test_check_without_records_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--check"]) == 2
    assert cli_main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2


# ----------------------------------------------------------------------------------------------------
# README, failed cells, skipped figures


def test_readme_ties_the_report_together(written):
    tmp, records, paths = written
    readme = (tmp / "reports" / "default" / "README.md").read_text(encoding="utf-8")
    assert "tokenbench run --suite default" in readme                      # the producing command
    assert "tokenbench report " in readme and "--out " in readme           # the regenerating one
    assert f"`{FP_A}`" in readme and "0123abcd" in readme and "2.13.0" in readme
    for spec_name in ("accuracy_vs_throughput", "gflops_vs_time", "token_distribution", "tokens_per_layer",
                      "rlt_threshold_sweep"):
        assert f"(figures/{spec_name}.png)" in readme and f"(figures/{spec_name}.svg)" in readme
        assert (tmp / "reports" / "default" / "figures" / f"{spec_name}.png").is_file()
    inference_md = (tmp / "reports" / "default" / "tables" / "inference.md").read_text(encoding="utf-8")
    assert inference_md.split("\n\n", 2)[2] in readme                       # table inline
    bad = next(r for r in records if r["status"] == "failed")
    assert "## Failed cells" in readme and "ValueError: r=99 exceeds half the tokens \\| layer 3" in readme
    assert "sta r=99" not in (tmp / "reports" / "default" / "tables" / "inference.md").read_text()
    assert paths.failed_cells == 1 and bad["error"]


def test_figures_without_data_are_skipped_and_said_so(tmp_path):
    variants = [("none", {}), ("random", {"fraction": 0.5, "seed": 0})]
    records = make_suite_records(variants=variants, train=False, failed=False, datasets=("synthetic",))
    for r in records:
        r["metrics"].pop("top1")
    write_records(tmp_path / "results", records)
    paths = report.write_report(tmp_path / "results", tmp_path / "reports")
    names = {p.name for p in paths.figures}
    assert names == {f"{n}{e}" for n in ("gflops_vs_time", "token_distribution") for e in (".png", ".svg")}
    readme = paths.readmes[0].read_text(encoding="utf-8")
    assert "Figures not drawn" in readme
    for title in ("Accuracy vs throughput", "Tokens per layer", "RLT threshold sweep"):
        assert f"* {title}: " in readme
    assert not (tmp_path / "reports" / "default" / "tables" / "training.md").exists()


# ----------------------------------------------------------------------------------------------------
# figures are real images with data in the plot area


def _draw_and_check_plot_areas(spec, tmp_path: Path):
    """Draw a planned figure, save it as PNG, read it back and find data (not background, not the faint
    grid) inside every visible axes' pixel box. Returns (figure, image, visible axes)."""
    import matplotlib
    from matplotlib.image import imread

    with matplotlib.rc_context(report_figures.RC):
        fig = spec.draw()
        fig.savefig(tmp_path / f"{spec.name}.png", dpi="figure")
    img = imread(tmp_path / f"{spec.name}.png")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), spec.name
        area = _plot_area_pixels(img, fig, ax)
        grey = area.max(axis=2) - area.min(axis=2) < 0.06
        light = area.mean(axis=2) > 0.75
        ink = ~(grey & light)
        assert ink.sum() > 50, (spec.name, ax.get_title())
    return fig, img, axes


def _plot_area_pixels(png: np.ndarray, fig, ax) -> np.ndarray:
    h = png.shape[0]
    bb = ax.get_window_extent()
    x0, x1 = int(np.ceil(bb.x0)) + 3, int(np.floor(bb.x1)) - 3
    y0, y1 = h - int(np.floor(bb.y1)) + 3, h - int(np.ceil(bb.y0)) - 3
    assert 0 <= x0 < x1 <= png.shape[1] and 0 <= y0 < y1 <= h
    return png[y0:y1, x0:x1, :3]


def test_every_figure_is_a_real_image_with_data_in_each_plot_area(written, tmp_path):
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    tmp, records, paths = written
    # the files write_report wrote open as images / SVG documents
    pngs = [p for p in paths.figures if p.suffix == ".png"]
    assert len(pngs) == 7  # the five figures and the two curve figures (no static-share sweep here)
    for p in pngs:
        img = imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    for p in (p for p in paths.figures if p.suffix == ".svg"):
        assert ET.parse(p).getroot().tag.endswith("svg")
    # redraw each planned figure and look inside each axes' pixel box
    recs = report.read(tmp / "results").records
    ok, _ = report_records.dedupe(recs)
    plan = report_figures.plan_figures({FP_A: ok}, ok, report_figures.Style(ok))
    assert sorted(s.name for s in plan.figures) == sorted(p.stem for p in pngs)
    for spec in plan.figures:
        fig, img, axes = _draw_and_check_plot_areas(spec, tmp_path)
        # each reducer drawn in the figure shows up in its fixed colour
        reducers = {r["cell"]["reducer"] for r in records if r["status"] == "ok"}
        if spec.name == "rlt_threshold_sweep":
            reducers = {"rlt"}
        elif spec.name == "tokens_per_layer":
            reducers = {"tome", "sta"}  # the solid lines; flat ones are thin dashes
        whole = np.concatenate([_plot_area_pixels(img, fig, ax).reshape(-1, 3) for ax in axes])
        for red in reducers:
            c = np.array(to_rgb(report_figures.reducer_colour(red)))
            near = np.abs(whole - c).max(axis=1) < 0.05
            assert near.sum() >= 5, (spec.name, red)


def test_reducer_colours_are_fixed_and_distinct():
    names = ["none", "rlt", "random", "tome", "sta"]
    colours = [report_figures.reducer_colour(n) for n in names]
    assert len(set(colours)) == len(colours)
    assert report_figures.reducer_colour("my_plugin") == report_figures.reducer_colour("my_plugin")
    assert report_figures.pareto_front([(1, 90), (2, 85), (1.5, 80), (3, 70), (2, 86)]) == [
        (1, 90), (2, 86), (3, 70)]


def test_sweep_figure_draws_only_the_panels_it_has_data_for(tmp_path):
    variants = [("none", {}), ("rlt", {"threshold": 0.05}), ("rlt", {"threshold": 0.1})]
    records = make_suite_records(variants=variants, train=False, failed=False, datasets=("samples",),
                                 batches=(4,))
    for r in records:  # an unlabelled dataset: no accuracy
        for k in ("top1", "top5", "top1_baseline"):
            r["metrics"].pop(k)
    write_records(tmp_path / "results", records)
    ok, _ = report_records.dedupe(report.read(tmp_path / "results").records)
    plan = report_figures.plan_figures({FP_A: ok}, ok, report_figures.Style(ok))
    assert "accuracy_vs_throughput" not in {s.name for s in plan.figures}
    sweep = next(s for s in plan.figures if s.name == "rlt_threshold_sweep")
    fig, _, axes = _draw_and_check_plot_areas(sweep, tmp_path)
    assert [ax.get_ylabel() for ax in axes] == ["tokens per clip entering the network",
                                               "speedup (× baseline, same cell)"]


def test_one_metric_table_entry_gives_a_column(tmp_path, monkeypatch):
    from tokenbench.harness import metric_table, schema

    records = make_suite_records(train=False, failed=False, batches=(2,), datasets=("synthetic",))
    for i, rec in enumerate(records):
        rec["metrics"]["energy_j"] = 0.5 + i
    new = schema.Metric("energy_j", "energy per batch", unit="J", fmt="fixed:2", higher_is_better=False,
                        header="energy (J)", shown=(schema.Shown("inference", 65),))
    monkeypatch.setattr(metric_table, "METRIC_TABLE", schema.METRIC_TABLE + (new,))
    write_records(tmp_path / "results", records)
    report.write_report(tmp_path / "results", tmp_path / "reports", figures=False)
    tables = tmp_path / "reports" / "default" / "tables"
    md = (tables / "inference.md").read_text(encoding="utf-8").splitlines()
    header = [h.strip() for h in md[4].strip("|").split("|")]
    assert header.index("energy (J)") == header.index("clips/s") + 1  # order 65: after clips/s (60)
    rows = {r["label"]: r for r in _csv(tables / "inference.csv")}
    for i, rec in enumerate(records):
        assert float(rows[_label(rec)]["energy_j"]) == pytest.approx(0.5 + i)
    assert any(f"| {0.5 + i:.2f} |" in line for line in md for i in range(len(records)))


def test_every_recorded_metric_reaches_a_table_the_readme_or_a_figure(tmp_path):
    from tokenbench.harness.schema import METRIC_TABLE, METRICS

    root = Path(__file__).resolve().parents[1]
    report.write_report(root / "results" / "reference", tmp_path, figures=False)
    suite = tmp_path / "default"
    columns = {c for p in (suite / "tables").glob("*.csv") for c in _csv(p)[0]}
    # the reference has no training cells now (they are in `full`): the training table of made-up records
    write_records(tmp_path / "made", make_suite_records())
    report.write_report(tmp_path / "made", tmp_path / "made-report", figures=False)
    columns |= {c for c in _csv(tmp_path / "made-report" / "default" / "tables" / "training.csv")[0]}
    readme = (suite / "README.md").read_text(encoding="utf-8")
    assert "### Reducer parameters as run" in readme and "keep=0.8063" in readme  # random's calibrated keep
    in_readme = {"reducer_params_used", "eval_reducer", "skipped_errors", "calibration"}
    # columns that appear only where a record carries them (newer than some committed records)
    when_recorded = {m.name for m in METRIC_TABLE if m.when_recorded}
    in_figures = {"tokens_per_layer", "tokens_per_clip"}   # token figures
    via_derived = {"load_avg_start", "load_avg_end",       # the load avg column
                   "top1_baseline",                        # Δtop-1 when a table has no baseline row
                   "tokens_mlp_per_layer"}                 # the budget axis: matched-budget table, curves
    for name in ("select_ms_median", "decode_ms_per_clip", "peak_mem_mb", "gflops_attention", "warmup"):
        assert name in columns, name
    assert set(METRICS) - columns <= in_readme | in_figures | via_derived | when_recorded, \
        sorted(set(METRICS) - columns)


def test_a_failing_aa_control_marks_its_fingerprint_and_tables_name_their_commits(tmp_path):
    records = make_suite_records(train=False, failed=False, batches=(2,), datasets=("synthetic",))
    base = next(r for r in records if r["cell"]["reducer"] == "none")
    base["metrics"].update(speedup=1.00, speedup_ci_lo=0.99, speedup_ci_hi=1.01)  # a good A/A control
    other = next(r for r in records if r["cell"]["reducer"] == "tome")
    other["fingerprint"] = {**other["fingerprint"], "git_commit": "fedcba987654321", "git_dirty": True}
    write_records(tmp_path / "results", records)
    report.write_report(tmp_path / "results", tmp_path / "reports", figures=False)
    readme = (tmp_path / "reports" / "default" / "README.md").read_text(encoding="utf-8")
    assert "A/A control off" not in readme
    md = (tmp_path / "reports" / "default" / "tables" / "inference.md").read_text(encoding="utf-8")
    n = sum(r["cell"]["mode"] == "inference" for r in records)
    assert f"`0123abcd` ({n - 1} records), `fedcba987654+dirty` (1 record)" in md
    # the baseline against itself reads 3 % fast: the estimator failed its check on this hardware
    base["metrics"].update(speedup=1.03, speedup_ci_lo=1.02, speedup_ci_hi=1.05)
    write_records(tmp_path / "results2", records)
    report.write_report(tmp_path / "results2", tmp_path / "reports2", figures=False)
    readme = (tmp_path / "reports2" / "default" / "README.md").read_text(encoding="utf-8")
    assert f"#### `{FP_A}` ⚠ A/A control off" in readme and "1.030× (95 % 1.020–1.050)" in readme
    md = (tmp_path / "reports2" / "default" / "tables" / "inference.md").read_text(encoding="utf-8")
    assert "⚠ the A/A control" in md



def test_one_derived_metric_entry_gives_its_column_in_every_table_that_shows_it(tmp_path, monkeypatch):
    from tokenbench.harness import metric_table, schema

    def dropped(r) -> float | None:  # tokens per clip dropped at the input: a formula over the record
        kept, total = r.num("tokens_in_mean"), r.num("tokens_total")
        return total - kept if kept is not None and total is not None else None

    records = make_suite_records(train=False, failed=False, batches=(2,), datasets=("synthetic",))
    new = schema.Metric("tokens_dropped", "tokens per clip dropped at the input", unit="tokens", fmt="fixed:1",
                        header="dropped", shown=(("inference", 45), ("tokens", 55)), derive=dropped)
    assert new.derived and new.shown == (schema.Shown("inference", 45), schema.Shown("tokens", 55))
    monkeypatch.setattr(metric_table, "METRIC_TABLE", schema.METRIC_TABLE + (new,))
    write_records(tmp_path / "results", records)
    report.write_report(tmp_path / "results", tmp_path / "reports", figures=False)
    tables = tmp_path / "reports" / "default" / "tables"
    for name in ("inference", "tokens"):
        rows = {r["label"]: r for r in _csv(tables / f"{name}.csv")}
        assert len(rows) == len(records)
        for rec in records:
            m = rec["metrics"]
            assert float(rows[_label(rec)]["tokens_dropped"]) == pytest.approx(
                m["tokens_total"] - m["tokens_in_mean"], abs=1e-4)

def test_tokenbench_run_warns_in_one_line_when_an_aa_control_is_off(tmp_path, capsys):
    from tokenbench.harness.cli.run import warn_aa

    records = make_suite_records(train=False, failed=False, batches=(2,), datasets=("synthetic",))
    base = next(r for r in records if r["cell"]["reducer"] == "none")
    base["metrics"].update(speedup=0.97, speedup_ci_lo=0.95, speedup_ci_hi=0.99)
    write_records(tmp_path / "results", records)
    suite_dir = tmp_path / "results" / "default"
    # not a cell of this run: silent
    warn_aa(report.read(suite_dir), {r["key"] for r in records if r is not base})
    assert capsys.readouterr().err == ""
    warn_aa(report.read(suite_dir), {r["key"] for r in records})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "A/A control is off 1 by more than 2%" in err and "0.970×" in err


def test_training_seeds_are_pooled_with_their_spread_and_paired_by_seed(tmp_path):
    walls = {("none", 0): 100.0, ("none", 1): 110.0, ("rlt", 0): 50.0, ("rlt", 1): 100.0}
    top1 = {("none", 0): 90.0, ("none", 1): 92.0, ("rlt", 0): 89.0, ("rlt", 1): 93.0}
    records = []
    for (reducer, seed), wall in walls.items():
        cell = {**_cell("synthetic", reducer, {"threshold": 0.1} if reducer == "rlt" else {}, 8, "train"),
                "seed": seed}
        records.append(_record(FP_A, cell, {"train_wall_s": wall, "train_epochs": 1, "top1": top1[reducer, seed]},
                               minute=len(records)))
    write_records(tmp_path / "results", records)
    rows = {r["label"]: r for r in report_tables.training_values(
        report.read(tmp_path / "results").records)}
    assert set(rows) == {"none", "rlt τ=0.1"}
    rlt = rows["rlt τ=0.1"]
    assert rlt["train_seeds"] == 2
    assert rlt["train_speedup"] == pytest.approx((100 / 50 + 110 / 100) / 2)  # each seed against its own
    assert rlt["train_speedup_range"] == "1.10–2.00"
    assert rlt["top1"] == pytest.approx(91.0) and rlt["top1_range"] == "89.0–93.0"
    assert rlt["delta_top1"] == pytest.approx(((89 - 90) + (93 - 92)) / 2)
    report.write_report(tmp_path / "results", tmp_path / "reports", figures=False)
    md = (tmp_path / "reports" / "default" / "tables" / "training.md").read_text(encoding="utf-8")
    assert "| 2 | 1.10–2.00 |" in md and "89.0–93.0" in md


def test_training_rows_find_their_baseline_though_each_arm_trained_other_weights(tmp_path):
    """A train record's checkpoint_sha256 is of the weights that arm trained; the arms compare by the checkpoint
    they started from, so RLT's and random's rows carry a speedup over `none`."""
    records = make_suite_records(failed=False, batches=(1,), datasets=("synthetic",))
    for i, r in enumerate(x for x in records if x["cell"]["mode"] == "train"):
        r["cell"].update(checkpoint_sha256=f"{i:064x}", init_checkpoint_sha256="a" * 64)  # each trained its own
    write_records(tmp_path / "results", records)
    report.write_report(tmp_path / "results", tmp_path, figures=False)
    speedups = {row["label"]: row["train_speedup"] for row in _csv(tmp_path / "default" / "tables" / "training.csv")}
    assert len(speedups) == 3 and "none" in speedups
    assert all(float(v) > 0 for v in speedups.values()), speedups
