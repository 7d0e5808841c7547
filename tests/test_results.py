"""The results store keeps every finished cell and nothing torn: real files, real processes."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import warnings

import pytest

from tokenbench.harness import results
from tokenbench.harness.results import ResultStore, TornLineWarning, load, store_path
from tokenbench.harness.schema import CELL_FIELDS, METRICS, cell_key


def make_record(i: int, status: str = "ok", pad: int = 0, reducer: str = "rlt") -> dict:
    cell = {"model": "vit_t", "num_frames": 8, "img_size": 64, "checkpoint": "none", "dataset": "samples",
            "split": "all", "reducer": reducer,
            "params": {"threshold": round(0.1 * (i + 1), 3)} if reducer == "rlt" else {}, "batch_size": 2,
            "mode": "inference", "dtype": "float32", "compile": False, "attn_backend": "auto",
            "views": "1x1", "pad": "x" * pad}
    return {"schema": 1, "key": cell_key(cell), "suite": "t", "status": status,
            "error": None if status == "ok" else "cannot decode /tmp/bad.mp4: truncated",
            "cell": cell, "fingerprint": {"id": "cpu-test-2t", "threads": 2, "torch": "2.x",
                                          "attn_backend": "sdpa"},
            "metrics": {"gflops": 1.5 + i, "tokens_per_layer": [10, 9, 8], "top1": None,
                        "extra_metric": 7},
            "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:01Z", "duration_s": 1.0,
            "command": "tokenbench run"}


def test_layout_and_roundtrip(tmp_path):
    store = ResultStore.for_suite(tmp_path, "default", "cpu-x 2t")
    assert store.path == store_path(tmp_path, "default", "cpu-x 2t")
    assert store.path.parent.parent.name == "default" and store.path.name == "records.jsonl"
    recs = [make_record(i) for i in range(3)]
    for r in recs:
        store.append(r)
    data = store.path.read_bytes()
    assert data.count(b"\n") == 3 and data.endswith(b"\n")
    assert [r["key"] for r in store.records()] == [r["key"] for r in recs]
    # a fresh store object on the same file sees the same records
    assert ResultStore(store.path).done_keys() == {r["key"] for r in recs}


def test_append_is_fsynced_before_it_returns(tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "s" / "fp" / "records.jsonl")
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.fstat(fd).st_size)  # what is on disk at the moment of the sync
        return real_fsync(fd)

    monkeypatch.setattr(results.os, "fsync", spy)
    store.append(make_record(0))
    size = store.path.stat().st_size
    assert synced and synced[-1] == size  # the whole line was written when fsync ran


def test_nan_is_stored_as_null_and_every_line_is_strict_json(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    rec = make_record(0)
    rec["metrics"]["speedup"] = float("nan")
    store.append(rec)
    line = store.path.read_text().strip()
    assert json.loads(line)["metrics"]["speedup"] is None
    assert "NaN" not in line


def test_torn_last_line_is_dropped_on_open(tmp_path):
    path = tmp_path / "default" / "fp" / "records.jsonl"
    store = ResultStore(path)
    store.append(make_record(0))
    store.append(make_record(1))
    good = path.read_bytes()
    # a writer killed mid-line: half a record, no newline
    half = results.encode_record(make_record(2))[:40]
    with open(path, "ab") as f:
        f.write(half)
    with pytest.warns(TornLineWarning):
        df = load(path)  # reading ignores it ...
    assert len(df) == 2
    with pytest.warns(TornLineWarning, match="dropped a torn last line"):
        store = ResultStore(path)  # ... opening removes it
    assert path.read_bytes() == good
    store.append(make_record(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load(path)) == 3
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_torn_line_left_after_open_is_dropped_before_the_next_append(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    store.append(make_record(0))
    with open(store.path, "ab") as f:  # another writer dies after we opened
        f.write(b'{"schema": 1, "key": "abc')
    with pytest.warns(TornLineWarning):
        store.append(make_record(1))
    keys = [r["key"] for r in store.records()]
    assert keys == [make_record(0)["key"], make_record(1)["key"]]


def test_done_keys_skip_finished_and_optionally_failed(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    ok, bad = make_record(0), make_record(1, status="failed")
    store.append(ok)
    store.append(bad)
    assert store.done_keys() == {ok["key"], bad["key"]}
    assert store.done_keys(include_failed=False) == {ok["key"]}
    # the failed cell re-run successfully: the newer record wins
    fixed = make_record(1)
    store.append(fixed)
    assert store.done_keys(include_failed=False) == {ok["key"], fixed["key"]}
    df = load(store.path)
    assert len(df) == 2 and set(df["status"]) == {"ok"}
    assert len(load(store.path, latest=False)) == 3


def test_lost_and_timed_out_cells_are_not_done(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    lost, late = make_record(0, status="lost"), make_record(1, status="timeout")
    store.append(lost)
    store.append(late)
    assert store.done_keys() == set() and store.done_keys(include_failed=False) == set()


def test_done_keys_of_a_file_are_read_only_and_filter_by_device(tmp_path):
    """The one ``done_keys`` the store and the launcher's ``recorded_keys`` both use: reading a folder that
    does not exist creates nothing, and ``device_type`` keeps the records measured on that device."""
    missing = tmp_path / "none" / "fp" / "records.jsonl"
    assert results.done_keys(missing) == set() and not missing.parent.exists()
    store = ResultStore(tmp_path / "r.jsonl")
    cpu, gpu = make_record(0), make_record(1)
    gpu["fingerprint"] = {**gpu["fingerprint"], "device": "cuda"}
    cpu["fingerprint"] = {**cpu["fingerprint"], "device": "cpu"}
    store.append(cpu)
    store.append(gpu)
    assert results.done_keys(store.path, device_type="cuda") == {gpu["key"]}
    assert results.done_keys(store.path, device_type="cpu") == {cpu["key"]}
    assert results.done_keys(store.path) == store.done_keys() == {cpu["key"], gpu["key"]}


def test_load_columns_follow_the_documented_schema(tmp_path):
    store = ResultStore.for_suite(tmp_path, "t", "cpu-test-2t")
    store.append(make_record(0))
    store.append(make_record(1, status="failed", reducer="none"))
    df = load(tmp_path)  # a folder is searched recursively
    for col in ("key", "suite", "status", "error", "label", "started", "finished", "duration_s", "command",
                "fingerprint", "schema"):
        assert col in df.columns, col
    for col in CELL_FIELDS:
        assert col in df.columns, col
    for col in METRICS:
        assert col in df.columns, col
    row = df.iloc[0]
    assert row["params"] == '{"threshold":0.1}'
    assert row["label"] == "rlt τ=0.1"
    assert row["fingerprint"] == "cpu-test-2t" and row["fp_threads"] == 2 and row["fp_attn_backend"] == "sdpa"
    assert row["views"] == "1x1"  # a cell extra
    assert row["tokens_per_layer"] == [10, 9, 8]
    assert row["extra_metric"] == 7
    assert row["top1"] is None or row["top1"] != row["top1"]  # absent -> None/NaN
    assert df.iloc[1]["label"] == "none" and "bad.mp4" in df.iloc[1]["error"]
    assert list(load(tmp_path / "t").columns) == list(df.columns)  # the suite folder works too


def test_load_of_an_empty_folder_has_the_schema_columns(tmp_path):
    df = load(tmp_path)
    assert len(df) == 0 and "key" in df.columns and "gflops" in df.columns


def _writer(path: str, who: int, n: int, pad: int) -> None:
    store = ResultStore(path)
    for i in range(n):
        rec = make_record(i, pad=pad)
        rec["writer"] = who
        store.append(rec)


def test_concurrent_appends_from_two_processes_all_parse(tmp_path):
    path = tmp_path / "s" / "fp" / "records.jsonl"
    ResultStore(path)
    n, pad = 60, 200_000  # lines far larger than any atomic-write size (PIPE_BUF is 4 KiB)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, n, pad)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    recs = [json.loads(line) for line in lines[:-1]]
    assert len(recs) == 2 * n
    assert sorted(r["writer"] for r in recs) == [0] * n + [1] * n
    assert all(len(r["cell"]["pad"]) == pad for r in recs)
