"""The results store: append-only JSON Lines, one file per suite and hardware fingerprint (DESIGN.md §6).

Layout::

    <root>/<suite>/<fingerprint id>/records.jsonl

Each finished (or failed) cell appends one complete record (harness/schema.py) as one line. The
guarantees, and how they are kept:

* **Written whole.** A record is serialised first, then written with ``os.write`` on an
  ``O_APPEND`` descriptor while holding an exclusive ``fcntl.flock`` on the file, then flushed to
  disk with ``os.fsync`` before the lock is released. Writers in other processes (parallel cells
  through submitit, two ``tokenbench run`` at once) never interleave their lines.
* **Torn lines are dropped.** A process killed in the middle of a write leaves a last line without
  its newline. Opening the store (and every append, under the lock) checks the file's last byte; a
  torn tail is cut off with a warning, so the next record starts on a line of its own. Only a
  crash can leave one: the lock dies with its holder.
* **Finished cells are skipped.** :meth:`ResultStore.done_keys` is the set of keys recorded; the
  runner skips a cell whose ``schema.cell_key`` is in it (``--retry-failed`` re-runs failed ones;
  the newer record then supersedes the older in :func:`load`).
* **A cell is measured once.** :meth:`ResultStore.claim` takes a per-cell ``flock`` while the cell
  runs, so a second run on the same folder skips it (and says so); the lock dies with its process.
* **Only records are read.** A line that parses but is not a record, or a record whose ``cell`` is
  not an object, is skipped with a :class:`NotARecordWarning` naming the file and line; a file that is
  not JSON Lines at all (a video given as results) is refused with :class:`NotResultsError`.
* **Paths stay inside the root.** The suite and fingerprint parts of a store's path go through
  :func:`tokenbench.harness.paths.safe_name` and :func:`~tokenbench.harness.paths.inside`.

:func:`load` reads one or many stores into a pandas DataFrame — its columns are documented there.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import inside, safe_name
from .schema import CELL_FIELDS, METRICS, SCHEMA_VERSION, canonical_json, reducer_label

RECORDS_FILE = "records.jsonl"


CLAIMS_DIR = ".claims"  # beside records.jsonl: one lock file per cell being measured


class TornLineWarning(UserWarning):
    """A records file ended in a partial line (a writer died mid-write); the partial line was dropped."""


class NotARecordWarning(UserWarning):
    """A line of a records file parses but is not a result record (not an object, no key/suite/status, or a
    ``cell`` that is not an object); it was skipped."""


class NotResultsError(ValueError):
    """A file named as results is not a records file (JSON Lines): e.g. a video given to ``report``."""


@dataclass(frozen=True)
class Claim:
    """The outcome of :meth:`ResultStore.claim`: ``held`` when this process may run the cell; otherwise
    ``why`` says who has it (another run measuring it, or a record written meanwhile)."""

    key: str
    held: bool
    why: str = ""




def store_path(root: str | Path, suite: str, fingerprint_id: str) -> Path:
    """``<root>/<suite>/<fingerprint id>/records.jsonl``, checked to lie inside ``root``."""
    return inside(root, safe_name(suite), safe_name(fingerprint_id), RECORDS_FILE)


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _drop_torn_tail(fd: int, path: Path) -> int:
    """With the lock held: cut a last line that lacks its newline. Returns the bytes dropped."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    if os.pread(fd, 1, size - 1) == b"\n":
        return 0
    # find the last newline: read backwards in chunks
    pos, chunk = size, 65536
    cut = 0
    while pos > 0:
        start = max(0, pos - chunk)
        data = os.pread(fd, pos - start, start)
        i = data.rfind(b"\n")
        if i >= 0:
            cut = start + i + 1
            break
        pos = start
    dropped = size - cut
    os.ftruncate(fd, cut)
    os.fsync(fd)
    warnings.warn(f"{path}: dropped a torn last line of {dropped} bytes (a run was killed mid-write); "
                  "that cell will run again", TornLineWarning, stacklevel=3)
    return dropped


def _fsync_dir(path: Path) -> None:
    try:
        dfd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON: store them as null so every line parses with any JSON reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return _json_safe(obj.item())
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return _json_safe(obj.tolist())
    return obj


def encode_record(record: dict[str, Any]) -> bytes:
    """One record as one line of JSON (UTF-8, no embedded newline, ends in ``\\n``)."""
    line = json.dumps(_json_safe(record), ensure_ascii=False, allow_nan=False, default=str)
    return (line + "\n").encode("utf-8")


class ResultStore:
    """The records of one suite on one hardware fingerprint: ``<root>/<suite>/<fp>/records.jsonl``.

    Opening it creates the folder, and repairs a torn last line left by a crash.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        new_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            with _locked(fd):
                _drop_torn_tail(fd, self.path)
        finally:
            os.close(fd)
        if new_dir:
            _fsync_dir(self.path.parent)

    @classmethod
    def for_suite(cls, root: str | Path, suite: str, fingerprint_id: str) -> ResultStore:
        return cls(store_path(root, suite, fingerprint_id))

    # --- writing ------------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        """Append one record as one line: locked, written whole, flushed and fsynced."""
        data = encode_record(record)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            with _locked(fd):
                _drop_torn_tail(fd, self.path)  # a writer may have died since we opened
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
        finally:
            os.close(fd)

    # --- claiming a cell ------------------------------------------------------------------------
    def claim_path(self, key: str) -> Path:
        return inside(self.path.parent, CLAIMS_DIR, safe_name(key) + ".lock")

    @contextlib.contextmanager
    def claim(self, key: str, include_failed: bool = True,
              stale: Callable[[dict[str, Any]], bool] | None = None) -> Iterator[Claim]:
        """Claim cell ``key`` for the block: yields a :class:`Claim`, ``held`` unless another process holds
        the cell's claim or the store recorded the key meanwhile (``include_failed`` as in
        :meth:`done_keys`). Two runs on one results folder so measure each cell once.

        The claim is an exclusive ``flock`` on ``.claims/<key>.lock`` beside the records file, taken without
        waiting. The kernel releases it when its holder exits, however it dies, so a killed run never
        leaves a cell claimed: its empty lock file is simply locked by the next claimant. The holder writes
        its pid and host into the file (shown to a run that finds the cell claimed) and removes the file
        before releasing the lock."""
        path = self.claim_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                yield Claim(key, False, f"claimed by another run ({holder})")
                return
            # the previous holder may have removed the file between our open and our lock: then we hold a
            # lock on a file nobody else can see; try again on the file at that path now
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode(), 0)
            if key in self.done_keys(include_failed=include_failed, stale=stale):
                yield Claim(key, False, "recorded meanwhile by another run")
            else:
                yield Claim(key, True)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # still under our lock: a waiting claimant retries on a fresh file
            os.close(fd)  # releases the lock

    # --- reading ------------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        return list(iter_records(self.path))

    def latest(self) -> dict[str, dict[str, Any]]:
        """key -> the newest record of that key."""
        out: dict[str, dict[str, Any]] = {}
        for rec in iter_records(self.path):
            if "key" in rec:
                out[rec["key"]] = rec
        return out

    def done_keys(self, include_failed: bool = True,
                  stale: Callable[[dict[str, Any]], bool] | None = None) -> set[str]:
        """Keys whose newest record is finished (``ok``; also ``failed`` unless ``include_failed`` is false).
        A ``lost`` or ``timeout`` cell is not finished: its job died or ran out of time, so it runs again;
        nor is one whose newest record ``stale(record)`` says to measure again (``--rerun-stale``)."""
        finished = {"ok", "failed"} if include_failed else {"ok"}
        return {k for k, r in self.latest().items()
                if r.get("status") in finished and not (stale is not None and stale(r))}

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"


def not_a_record(rec: Any) -> str:
    """Why a parsed JSON line is not a result record (harness/schema.py), or ``""`` when it is one."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    for name in ("key", "status"):
        if not isinstance(rec.get(name), str):
            return f"no {name!r} string"
    if rec.get("suite") is not None and not isinstance(rec["suite"], str):
        return f"its 'suite' is a {type(rec['suite']).__name__}, not a string"
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
