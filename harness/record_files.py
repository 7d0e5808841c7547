"""Reading records files: which files a path names, which of their lines are records, the newest record of
each key, which cells are done, and a pandas DataFrame of them all (:func:`load`, columns documented there).

Only records are read: a line that parses but is not a record, or a record whose ``cell`` is not an object,
is skipped with a :class:`NotARecordWarning` naming the file and line; a file that is not JSON Lines at all
(a video given as results) is refused with :class:`NotResultsError`. Nothing here writes: harness/results.py
is the store that appends records and repairs a torn tail.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .schema import CELL_FIELDS, METRICS, SCHEMA_VERSION, canonical_json, reducer_label

RECORDS_FILE = "records.jsonl"
# A record with one of these statuses is finished; ``lost`` and ``timeout`` are not: the cell's job died or
# ran out of time, so the cell runs again.
FINISHED = ("ok", "failed")


class TornLineWarning(UserWarning):
    """A records file ended in a partial line (a writer died mid-write); the partial line was dropped."""


class NotARecordWarning(UserWarning):
    """A line of a records file parses but is not a result record (not an object, no key/suite/status, or a
    ``cell`` that is not an object); it was skipped."""


class NotResultsError(ValueError):
    """A file named as results is not a records file (JSON Lines): e.g. a video given to ``report``."""


def not_a_record(rec: Any) -> str:
    """Why a parsed JSON line is not a result record (harness/schema.py), or ``""`` when it is one."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    for name in ("key", "status"):
        if not isinstance(rec.get(name), str):
            return f"no {name!r} string"
    if rec.get("suite") is not None and not isinstance(rec["suite"], str):
        return f"its 'suite' is a {type(rec['suite']).__name__}, not a string"
    if "cell" in rec and rec["cell"] is None:  # a null cell has no row to go on (the report drew a phantom one)
        return "its 'cell' is null, not an object"
    for name in ("cell", "fingerprint", "metrics"):
        if rec.get(name) is not None and not isinstance(rec[name], dict):
            return f"its {name!r} is a {type(rec[name]).__name__}, not an object"
    return ""


def check_records_file(path: str | Path) -> None:
    """Raise :class:`NotResultsError` when ``path`` is plainly not a records file: binary data, or a first
    line that is not JSON (a video or a CSV given as results). A file that starts with JSON is read line by
    line, each bad line skipped with a warning."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(65536)
    first = head.split(b"\n", 1)[0].strip()
    ok = b"\0" not in head
    if ok and first and len(first) < len(head.rstrip()):  # a lone line without newline may be torn
        try:
            json.loads(first)
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
    if not ok:
        raise NotResultsError(f"{path} is not a results file (JSON Lines of records, e.g. "
                              f"results/<suite>/<fingerprint>/{RECORDS_FILE}): its first line is not JSON")


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every record of one records file. A torn last line (no newline) is ignored; any other line that does
    not parse, or parses to something that is not a record (:func:`not_a_record`), is reported with its
    line number and skipped."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    torn = lines[-1]  # after the last newline: b"" unless torn
    for i, raw in enumerate(lines[:-1], 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            warnings.warn(f"{path}:{i}: unreadable record skipped ({exc})", stacklevel=2)
            continue
        why = not_a_record(rec)
        if why:
            warnings.warn(f"{path}:{i}: not a result record ({why}); skipped", NotARecordWarning, stacklevel=2)
            continue
        yield rec
    if torn.strip():
        warnings.warn(f"{path}: ignoring a torn last line of {len(torn)} bytes", TornLineWarning, stacklevel=2)


def find_record_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """records.jsonl files named by ``paths``: files themselves, or folders searched recursively."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(p.rglob(RECORDS_FILE)))
        elif p.is_file():
            check_records_file(p)
            out.append(p)
        else:
            raise FileNotFoundError(f"no results at {p}")
    return out


def latest(path: str | Path) -> dict[str, dict[str, Any]]:
    """key -> the newest record of that key in the records file ``path`` (empty when there is none)."""
    out: dict[str, dict[str, Any]] = {}
    for rec in iter_records(path):
        out[rec["key"]] = rec
    return out


def done_keys(path: str | Path, include_failed: bool = True, device_type: str | None = None,
              stale: Callable[[dict[str, Any]], bool] | None = None) -> set[str]:
    """Keys whose newest record in ``path`` is finished (``ok``; also ``failed`` unless ``include_failed``
    is false; never ``lost`` or ``timeout``), with ``device_type`` only those measured on that kind of
    device (the fingerprint's ``device``: cpu, cuda), and never one that ``stale(record)`` says to measure
    again. Read only."""
    finished = FINISHED if include_failed else ("ok",)
    return {k for k, r in latest(path).items() if r.get("status") in finished
            and (device_type is None or str((r.get("fingerprint") or {}).get("device", "")) == device_type)
            and not (stale is not None and stale(r))}


# columns, in order, before the cell fields and metrics
BASE_COLUMNS = ("key", "suite", "status", "error", "label", "started", "finished", "duration_s", "command",
                "fingerprint")


def flatten_record(rec: dict[str, Any]) -> dict[str, Any]:
    """One record as one flat row (see :func:`load`)."""
    cell = dict(rec.get("cell") or {})
    params = cell.get("params") or {}
    row: dict[str, Any] = {
        "key": rec.get("key"),
        "suite": rec.get("suite"),
        "status": rec.get("status"),
        "error": rec.get("error"),
        "label": cell.get("label") or reducer_label(str(cell.get("reducer", "?")), params),
        "started": rec.get("started"),
        "finished": rec.get("finished"),
        "duration_s": rec.get("duration_s"),
        "command": rec.get("command"),
    }
    fp = dict(rec.get("fingerprint") or {})
    row["fingerprint"] = fp.pop("id", None)
    for field in CELL_FIELDS:
        row[field] = cell.get(field)
    row["params"] = canonical_json(params)
    for k, v in cell.items():
        if k in CELL_FIELDS or k == "label":
            continue
        row[k] = canonical_json(v) if isinstance(v, (dict, list)) else v
    for k, v in fp.items():
        row[f"fp_{k}"] = v
    metrics = dict(rec.get("metrics") or {})
    for m in METRICS:  # a cell field of the same name (``views``) stands when the metric is absent
        if m in metrics:
            row[m] = metrics.pop(m)
        else:
            row.setdefault(m, None)
    for k, v in metrics.items():  # metrics beyond the schema's list keep their own name
        row.setdefault(k, v)
    row["schema"] = rec.get("schema", SCHEMA_VERSION)
    return row


def load(paths: str | Path | Iterable[str | Path], latest: bool = True):
    """Load records into a pandas DataFrame, one row per record.

    ``paths``: a records.jsonl file, a results folder (searched recursively: ``results/``,
    ``results/default``, ``results/default/<fp>``), or a list of those. With ``latest`` (default) a key
    recorded more than once (a failed cell re-run with ``--retry-failed``) keeps only its newest record.

    Columns (the schema; harness/schema.py defines the record):

    * ``key`` (str, the cell's hash), ``suite``, ``status`` (``ok`` | ``failed``), ``error`` (str or
      None; names the file for a video that did not decode), ``label`` (``rlt τ=0.1``; the suite's own
      label when it gave one), ``started`` / ``finished`` (ISO-8601 UTC), ``duration_s``, ``command``;
    * ``fingerprint``: the hardware fingerprint id — never compare timings across two ids;
    * every field of ``schema.CELL_FIELDS``: ``model, num_frames, img_size, checkpoint, dataset, split,
      reducer, params, batch_size, mode, dtype, compile, attn_backend`` (``attn_backend`` is the one
      *asked for*; ``params`` is a canonical JSON string, e.g. ``{"threshold":0.1}``);
    * every other cell field the suite set (``views``, ``max_clips``, ``repeats``, ``warmup``, ``threads``,
      ``seed``, ``device``, ``dataset_options``, ``train`` …), dicts and lists as canonical JSON strings;
    * ``fp_<field>`` for every other fingerprint field: ``fp_device``, ``fp_device_name``, ``fp_threads``,
      ``fp_torch``, ``fp_git_commit`` …, and per cell ``fp_dtype``, ``fp_attn_backend`` (the backend that
      actually ran, e.g. ``sdpa``), ``fp_decoder``, ``fp_decoder_version``;
    * every metric of ``schema.METRICS`` (None when the cell did not measure it; ``tokens_per_layer``
      and ``tokens_per_clip`` are lists), then any further metric a record carries — the runner adds
      ``num_videos``, ``time_clips``, ``gflops_fvcore_analytic`` (the analytic count of the clips fvcore
      traced), ``gflops_reducer_overhead`` (a reducer's own in-block cost per clip, included in ``gflops``),
      ``reducer_params_used`` (dict: parameters after calibration, e.g. random's measured ``keep``),
      ``skipped_videos`` / ``skipped_errors`` (unreadable videos left out), ``load_avg_start`` /
      ``load_avg_end`` (the machine's 1-minute load average around the cell: timings beside other
      tenants), and for train cells ``train_clips`` and ``eval_reducer``;
    * ``schema`` (the record schema version).

    A torn last line is ignored here (opening a :class:`ResultStore` removes it).
    """
    import pandas as pd

    rows = []
    for f in find_record_files(paths):
        rows.extend(flatten_record(r) for r in iter_records(f))
    base = list(BASE_COLUMNS) + list(CELL_FIELDS) + list(METRICS)
    if not rows:
        return pd.DataFrame(columns=base)
    df = pd.DataFrame(rows)
    if latest and "key" in df:
        df = df.drop_duplicates(subset=["key", "fingerprint", "suite"], keep="last")
    cols = [c for c in base if c in df.columns]
    cols += [c for c in df.columns if c not in cols]
    return df[cols].reset_index(drop=True)
