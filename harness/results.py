"""The results store: append-only JSON Lines, one file per suite and hardware fingerprint (docs/architecture.md §6).

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

Reading records (which lines are records, the newest per key, which cells are done, :func:`load` into a
pandas DataFrame) is harness/record_files.py; its names are re-exported here.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import inside, safe_name

# Reading lives in record_files; its names stay importable from here, where the store's users look.
from .record_files import (
    BASE_COLUMNS,
    RECORDS_FILE,
    NotARecordWarning,
    NotResultsError,
    TornLineWarning,
    check_records_file,
    done_keys,
    find_record_files,
    flatten_record,
    iter_records,
    latest,
    load,
    not_a_record,
)

CLAIMS_DIR = ".claims"  # beside records.jsonl: one lock file per cell being measured


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
        return latest(self.path)

    def done_keys(self, include_failed: bool = True,
                  stale: Callable[[dict[str, Any]], bool] | None = None) -> set[str]:
        """Keys whose newest record is finished (:func:`~tokenbench.harness.record_files.done_keys`), less
        those whose newest record ``stale(record)`` says to measure again (``--rerun-stale``)."""
        return done_keys(self.path, include_failed, stale=stale)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"


__all__ = ["BASE_COLUMNS", "CLAIMS_DIR", "RECORDS_FILE", "Claim", "NotARecordWarning", "NotResultsError",
           "ResultStore", "TornLineWarning", "check_records_file", "done_keys", "encode_record",
           "find_record_files", "flatten_record", "iter_records", "latest", "load", "not_a_record",
           "store_path"]
