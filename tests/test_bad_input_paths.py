"""Output stays inside --out (issue 16, item 2): suite names from records never lead a path outside its root,
and the report deletes only files it wrote itself."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tokenbench.harness import report
from tokenbench.harness.cli import main
from tokenbench.harness.paths import WRITTEN_MANIFEST, UnsafePathError, inside, safe_name
from tokenbench.harness.results import ResultStore, store_path
from tokenbench.harness.schema import SCHEMA_VERSION, cell_key

FP = "cpu-test-2t-torch2.13.0-float32"


def _records(suite: str) -> list[dict]:
    out = []
    for reducer, params, tokens, speed in (("none", {}, 256, 1.0), ("rlt", {"threshold": 0.1}, 150, 1.4)):
        cell = {"model": "vit_t", "num_frames": 8, "img_size": 64, "checkpoint": "none", "dataset": "samples",
                "split": "val", "reducer": reducer, "params": params, "batch_size": 2, "mode": "inference",
                "dtype": "float32", "compile": False, "attn_backend": "auto"}
        metrics = {"gflops": tokens / 100, "tokens_in_mean": tokens, "tokens_in_min": tokens,
                   "tokens_in_max": tokens, "tokens_total": 256, "tokens_per_layer": [tokens] * 12,
                   "tokens_per_clip": [tokens, tokens], "time_ms_median": 10 / speed, "time_ms_q1": 9 / speed,
                   "time_ms_q3": 11 / speed, "baseline_time_ms_median": 10.0, "speedup": speed,
                   "speedup_q1": speed, "speedup_q3": speed, "clips_per_s": 200 * speed, "num_clips": 2,
                   "views": "1x1"}
        out.append({"schema": SCHEMA_VERSION, "key": cell_key(cell), "suite": suite, "status": "ok", "error": None,
                    "cell": cell, "fingerprint": {"id": FP, "device": "cpu", "threads": 2}, "metrics": metrics,
                    "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:01Z", "duration_s": 1.0,
                    "command": "tokenbench run"})
    return out


def _write(results: Path, suite: str) -> Path:
    store = ResultStore.for_suite(results, suite, FP)
    for rec in _records(suite):
        store.append(rec)
    return store.path


def _snapshot(root: Path, skip: Path | None = None) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and (skip is None or skip not in p.parents)}


def test_safe_name_never_yields_a_relative_component():
    for bad in ("..", ".", "", "/", "../..", "/etc", "a/../../b", ".hidden", "x" * 500):
        name = safe_name(bad)
        assert name not in ("", ".", "..") and "/" not in name and not name.startswith(".") and len(name) <= 120
    assert safe_name("default") == "default" and safe_name("my suite") == "my_suite"
    with pytest.raises(UnsafePathError, match="outside"):
        inside("/tmp/x", "..", "y")
    with pytest.raises(UnsafePathError, match="outside"):
        inside("/tmp/x", "/etc/passwd")


def test_store_paths_for_dot_suites_stay_inside_the_results_root(tmp_path):
    for suite in ("..", ".", "../../escape"):
        p = store_path(tmp_path / "results", suite, "../fp")
        assert (tmp_path / "results").resolve() in p.resolve().parents


@pytest.mark.parametrize("suite", ["..", "."])
def test_report_on_dot_suites_writes_nothing_outside_out_and_deletes_nothing_it_did_not_write(tmp_path, suite):
    parent = tmp_path / "work"
    out = parent / "reports"
    results = tmp_path / "results"
    _write(results, suite)
    # files that are not the report's: in the parent of --out, and in --out itself
    for p in (parent / "README.md", parent / "tables" / "notes.md", parent / "tables" / "data.csv",
              out / "README.md", out / "tables" / "mine.md", out / "figures" / "mine.png"):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"not the report's: {p.name}\n")
    before = _snapshot(tmp_path)

    paths = report.write_report(results, out, figures=False)

    after = _snapshot(tmp_path)
    assert all(after.get(p) == data for p, data in before.items())  # nothing overwritten, nothing deleted
    new = set(after) - set(before)
    suite_dir = out / safe_name(suite)
    assert new and all(suite_dir in p.parents for p in new), sorted(new)
    assert paths.readmes == [suite_dir / "README.md"]


def test_a_rebuild_deletes_only_files_an_earlier_report_wrote(tmp_path):
    results_a, results_b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    _write(results_a, "s")
    report.write_report(results_a, out, figures=False)
    tables = out / "s" / "tables"
    assert (tables / "inference.md").is_file() and (out / "s" / WRITTEN_MANIFEST).is_file()
    theirs = tables / "my_notes.md"  # a user's file beside the report's
    theirs.write_text("keep me\n")
    # records without any inference cell: the inference tables are no longer produced
    store = ResultStore.for_suite(results_b, "s", FP)
    rec = _records("s")[0]
    rec.update(status="failed", error="ValueError: boom", metrics={})
    store.append(rec)
    report.write_report(results_b, out, figures=False)
    assert not (tables / "inference.md").exists()  # ours, stale: removed
    assert theirs.read_text() == "keep me\n"  # not ours: kept


def test_two_suites_that_would_share_a_folder_are_refused_before_writing(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "out"
    _write(results, "..")
    _write(results, ".")
    assert main(["report", str(results), "--out", str(out), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would share the folder '_'" in err[0]
    assert not out.exists()


def test_a_report_folder_that_is_a_symlink_out_of_out_is_refused(tmp_path):
    results, out, elsewhere = tmp_path / "results", tmp_path / "out", tmp_path / "elsewhere"
    _write(results, "s")
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "s")
    with pytest.raises(UnsafePathError, match="outside"):
        report.write_report(results, out, figures=False)
    assert list(elsewhere.iterdir()) == []
