"""harness.schema: the Cell reproduces every committed record's key; the record constructor; the Metric table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenbench.harness.schema import (
    METRIC_TABLE,
    METRICS,
    Cell,
    cell_key,
    make_record,
    reducer_label,
    shown_in,
)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = sorted((ROOT / "results" / "reference").rglob("records.jsonl"))


def _reference_records():
    for f in REFERENCE:
        for line in f.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def test_cell_recomputes_the_key_of_every_committed_reference_record():
    records = list(_reference_records())
    assert len(records) >= 20  # the default suite's reference run
    for rec in records:
        cell = Cell.from_dict(rec["cell"])
        assert cell.key == rec["key"], rec["cell"]
        # the JSON shape round-trips exactly; the weights' identity is recorded beside the configuration
        weights = {k: rec["cell"][k] for k in ("checkpoint_sha256", "checkpoint_path") if k in rec["cell"]}
        assert {**cell.as_dict(), **weights} == rec["cell"]
        assert len(weights.get("checkpoint_sha256", "")) == 64  # every reference record names its weights


def test_cell_defaults_mode_fields_and_optional_fields():
    c = Cell(model="vit_t", dataset="synthetic")
    d = c.as_dict()
    assert d["device"] == "cpu" and d["repeats"] == 10 and "train" not in d and "autocast" not in d
    assert d["label"] == "none" and c.label == "none" and c.amp == "none"
    t = c.with_(mode="train", train={"epochs": 1})
    assert "repeats" not in t.as_dict() and t.as_dict()["train"] == {"epochs": 1} and t.key != c.key
    assert c.with_(given_label="mine").key == c.key  # the label names a cell, it does not identify it
    assert c.with_(autocast="bfloat16").key != c.key
    rlt = c.with_(reducer="rlt", params={"threshold": 0.1})
    assert rlt.label == reducer_label("rlt", {"threshold": 0.1}) == "rlt τ=0.1"
    assert rlt["key"] == rlt.key == cell_key({k: v for k, v in rlt.as_dict().items() if k != "label"})
    assert {**rlt}["reducer"] == "rlt"
    with pytest.raises(ValueError, match="unknown field"):
        Cell.from_dict({"model": "vit_t", "dataset": "x", "modle": 1})


def test_one_record_constructor_for_ok_and_failed():
    c = Cell(model="vit_t", dataset="synthetic")
    kw = dict(suite="s", fingerprint={"id": "cpu-x"}, started="a", finished="b", duration_s=1.0)
    ok = make_record(c, metrics={"top1": 50.0}, **kw)
    bad = make_record(c, error="boom", traceback="tb", launcher={"name": "local"}, **kw)
    assert ok["status"] == "ok" and ok["error"] is None and ok["key"] == c.key and "traceback" not in ok
    assert bad["status"] == "failed" and bad["error"] == "boom" and bad["metrics"] == {}
    assert bad["traceback"] == "tb" and bad["launcher"] == {"name": "local"} and bad["cell"] == ok["cell"]


def test_every_metric_a_reference_record_holds_is_in_the_metric_table():
    held = {k for rec in _reference_records() for k in rec["metrics"]}
    assert held <= set(METRICS), sorted(held - set(METRICS))
    names = [m.name for m in METRIC_TABLE]
    assert len(names) == len(set(names))


def test_table_columns_follow_their_order():
    assert [m.name for m in shown_in("inference")] == [
        "top1", "delta_top1", "gflops", "tokens_in_mean", "tokens_out_mean", "clips_per_s", "speedup", "attn_path"]
    assert shown_in("nowhere") == []


def test_the_default_suite_expands_to_exactly_the_reference_cells():
    from tokenbench.harness.suite import load_suite

    cells = load_suite("default", overrides=["defaults.device=cpu"]).cells()  # as recorded
    records = list(_reference_records())
    suite_keys = {c.key for c in cells}
    reference_keys = {rec["key"] for rec in records if rec["suite"] == "default"}
    assert suite_keys == reference_keys, (
        f"results/reference is stale: re-measure it (tokenbench run from a fresh clone): "
        f"{len(suite_keys - reference_keys)} cells of the default suite have no reference record, "
        f"{len(reference_keys - suite_keys)} reference records are of no default cell")
    # the attn_path = "packed" cells (issue 12, in `full` since issue 26) are their twins' cells but for the path
    full_cells = load_suite("full", overrides=["defaults.device=cpu"]).cells()
    keys = {c.key for c in full_cells if c.attn_path is None}
    packed = [c for c in full_cells if c.attn_path == "packed"]
    assert sorted({c.label for c in packed}) == sorted(f"{r} [packed]" for r in ("rlt τ=0.1", "random match_rlt=0.1"))
    assert all(c.with_(attn_path=None, given_label=None).key in keys for c in packed)
    # the committed `full` records (its new families and static-share sweep, run with --only) are cells of full
    full_keys = {c.key for c in full_cells}
    full_records = {rec["key"] for rec in records if rec["suite"] == "full"}
    assert full_records and full_records <= full_keys
