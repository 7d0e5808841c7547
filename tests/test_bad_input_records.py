"""Records files that hold something else (issue 16, item 7): a non-record JSON line, a record whose ``cell`` is
not an object, a video given to ``report``."""
from __future__ import annotations

import json
import warnings

import pytest

from tokenbench.datasets.samples import sample_paths
from tokenbench.harness import report
from tokenbench.harness.cli import main
from tokenbench.harness.results import (
    NotARecordWarning,
    NotResultsError,
    ResultStore,
    find_record_files,
    load,
)
from tokenbench.harness.schema import cell_key

FP = "cpu-test-2t"


def _record(i: int) -> dict:
    cell = {"model": "vit_t", "num_frames": 8, "img_size": 64, "checkpoint": "none", "dataset": "samples",
            "split": "val", "reducer": "rlt", "params": {"threshold": 0.1 * (i + 1)}, "batch_size": 2,
            "mode": "inference", "dtype": "float32", "compile": False, "attn_backend": "auto"}
    return {"schema": 1, "key": cell_key(cell), "suite": "real", "status": "ok", "error": None, "cell": cell,
            "fingerprint": {"id": FP}, "metrics": {"gflops": 1.0, "tokens_in_mean": 100.0}}


def test_lines_that_are_not_records_are_skipped_with_a_named_warning(tmp_path):
    store = ResultStore.for_suite(tmp_path, "real", FP)
    store.append(_record(0))
    with open(store.path, "a") as f:
        for junk in ([1, 2, 3], "a string", 42, None, {"hello": "world"}, {**_record(1), "cell": "vit_t"},
                     {**_record(2), "cell": [1]}, {**_record(3), "metrics": "fast"}):
            f.write(json.dumps(junk) + "\n")
    store.append(_record(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = load(tmp_path)
    named = [str(w.message) for w in caught if issubclass(w.category, NotARecordWarning)]
    assert len(named) == 8
    assert f"{store.path}:2: not a result record (a JSON list, not an object)" in named[0]
    assert any(":7: not a result record (its 'cell' is a str, not an object)" in m for m in named)
    assert set(df["suite"]) == {"real"} and len(df) == 2  # no phantom suite, both real records kept


def test_report_on_records_with_a_non_object_cell_does_not_crash_or_invent_a_suite(tmp_path):
    store = ResultStore.for_suite(tmp_path / "results", "real", FP)
    store.append(_record(0))
    with open(store.path, "a") as f:
        f.write(json.dumps({**_record(1), "suite": "phantom", "cell": 7}) + "\n")
        f.write(json.dumps({"not": "a record", "suite": "ghost"}) + "\n")
    with pytest.warns(NotARecordWarning):
        paths = report.write_report(tmp_path / "results", tmp_path / "out", figures=False)
    assert [p.parent.name for p in paths.readmes] == ["real"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["real"]


def test_report_given_a_video_is_refused_in_one_line(tmp_path, capsys):
    video = sample_paths()["bikes"]
    with pytest.raises(NotResultsError, match="not a results file"):
        find_record_files(video)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not one warning per unreadable "line" of the video
        code = main(["report", str(video), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(video) in lines[0] and "not a results file" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_records_file_that_is_one_torn_line_is_still_a_records_file(tmp_path):
    p = tmp_path / "records.jsonl"
    p.write_bytes(json.dumps(_record(0)).encode()[:40])  # a run killed while writing its first record
    assert find_record_files(p) == [p]
