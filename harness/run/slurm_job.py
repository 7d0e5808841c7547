"""What runs inside one Slurm job of ``tokenbench run --launcher slurm``: one cell, with the scheduler's
faults turned into records that the next run understands (issue 17).

* **A start marker.** Before the cell starts, the job writes ``<job folder>/<job id>_cell.json``: the node,
  its hardware fingerprint and the store the cell's record goes to. A job that dies without a record
  (SIGKILL: out of memory, node failure, ``kill -9``) leaves only that marker, and the launcher
  (``harness/run/slurm_poll.py``) uses it to write a ``lost`` record in the store of the node the cell ran on.
  No marker means the job never got as far as the cell (an interpreter that cannot run tokenbench).
* **The time limit.** Slurm warns a job before its limit (submitit asks for SIGUSR2 90 s ahead), then at
  the limit sends SIGTERM and, ``KillWait`` seconds later, SIGKILL. submitit's own handler answers the
  warning, for a function it cannot checkpoint, by raising an error wherever the cell is — which
  :func:`runner.run_cell` records as a *failed* cell with a traceback, and a failed cell is not run again.
  Here the warning is only noted (the cell may still finish in the time left); the SIGTERM at the limit
  stops the cell and a ``timeout`` record is written. A timed-out cell is **re-run by the next**
  ``tokenbench run`` (give it a longer ``--timeout-min``), not requeued: a cell is measured from its
  start, there is nothing to resume, and requeuing it with the same limit would time out again.
* **Preemption and requeue.** A warning well before the limit is a preemption: submitit's handler
  requeues the job, as for any submitit job. A requeued job (``scontrol requeue``, preemption) starts the
  cell again from the beginning; no record was written by the run that was stopped, and a job that finds
  its cell recorded does nothing, so a cell is never recorded twice by one job.

Statuses ``lost`` and ``timeout`` (:data:`UNFINISHED`) mean "not measured": ``launch.recorded_keys``
counts only ``ok`` and ``failed`` as done, so the next run submits these cells again.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..results import ResultStore, store_path
from ..schema import Cell, make_record
from .common import utc_now
from .job import fingerprint_for, run_job
from .plan import CodeVersion

UNFINISHED = ("lost", "timeout")
MARKER_SUFFIX = "_cell.json"
# SIGTERM this close to the time limit (as the job measures it, from a few seconds after Slurm's start)
# is the limit; earlier it is scancel, a requeue or a node going down.
LIMIT_SLACK_S = 30.0


def marker_path(job_folder: str | Path, job_id: str) -> Path:
    return Path(job_folder) / f"{job_id}{MARKER_SUFFIX}"


@dataclass
class CellStart:
    """What a job writes before its cell starts (see the module docstring)."""

    job_id: str
    host: str
    fingerprint: dict[str, Any]
    store: str
    started: str  # UTC, the records' format
    restarts: int  # SLURM_RESTART_COUNT: 0, or how many times Slurm requeued the job
    pid: int  # the process running the cell

    def write(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> CellStart | None:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError):
            return None


class CellTimedOut(SystemExit):
    """Raised by the SIGTERM at the job's time limit. A SystemExit, so that :func:`runner.run_cell` lets it
    through instead of recording a failed cell."""


class TimeLimit:
    """Slurm's time-limit signals for the duration of one cell (installed over submitit's handlers)."""

    def __init__(self, limit_min: float, log, warning: int = signal.SIGUSR2):
        self.warning = warning  # the signal submitit asks Slurm to send ahead of the limit
        self.limit_s = float(limit_min) * 60
        self.log = log
        self.t0 = time.monotonic()
        self.warned = False
        self.fired = False
        self._previous: dict[int, Any] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _near_limit(self) -> bool:
        # submitit's own rule for "this warning is the time limit, not a preemption"
        return self.elapsed() >= min(0.8 * self.limit_s, self.limit_s - 600)

    def _on_warning(self, signum, frame) -> None:
        if not self._near_limit():  # a preemption: submitit requeues the job
            prev = self._previous.get(signum)
            if callable(prev):
                prev(signum, frame)
            return
        if not self.warned:
            self.warned = True
            self.log(f"Slurm warns of the time limit ({self.limit_s / 60:g} min) after {self.elapsed():.0f} s; "
                     "the cell goes on, and is recorded as timed out if the limit stops it")

    def _on_term(self, signum, frame) -> None:
        if self.fired:  # Slurm signals every process of the step; one is enough
            return
        if self.elapsed() >= self.limit_s - LIMIT_SLACK_S:
            self.fired = True
            raise CellTimedOut(f"stopped by Slurm at the job's time limit (--timeout-min {self.limit_s / 60:g}) "
                               f"after {self.elapsed():.0f} s")
        prev = self._previous.get(signum)
        if callable(prev):
            prev(signum, frame)

    def __enter__(self) -> TimeLimit:
        for sig, handler in ((self.warning, self._on_warning), (signal.SIGTERM, self._on_term)):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, handler)


def unfinished_record(cell: Cell, suite: str, status: str, error: str, start: CellStart,
                      log_path: str | Path, command: str = "") -> dict[str, Any]:
    """The record of a cell whose job started it and did not finish it (``lost`` or ``timeout``)."""
    assert status in UNFINISHED, status
    return make_record(cell, suite=suite, fingerprint=start.fingerprint, error=error, status=status,
                       started=start.started, finished=utc_now(), duration_s=0.0, command=command,
                       launcher={"name": "slurm", "job_id": start.job_id, "hostname": start.host,
                                 "log": str(log_path)})


def record_unfinished(cell: Cell, suite: str, status: str, error: str, start: CellStart,
                      log_path: str | Path, command: str = "") -> dict[str, Any]:
    """Append an unfinished record unless the cell's newest record in that store is ``ok`` or was written
    by this very job (it stopped after recording). Returns the cell's newest record after that."""
    store = ResultStore(start.store)
    latest = store.latest().get(cell.key)
    if latest is not None and (latest.get("status") == "ok"
                               or (latest.get("launcher") or {}).get("job_id") == start.job_id):
        return latest
    rec = unfinished_record(cell, suite, status, error, start, log_path, command)
    store.append(rec)
    return rec


def run_slurm_cell(cell: Cell, suite: str, out: str, command: str = "", retry_failed: bool = False,
                   timeout_min: float = 240, rerun_stale: CodeVersion | None = None) -> dict[str, Any]:
    """The function each Slurm array task runs: :func:`job.run_job` behind a start marker and the
    time-limit handling above. Returns run_job's summary (status ``timeout`` when the limit stopped it)."""
    import submitit  # loaded already: it is running this function

    def log(msg: str) -> None:
        print(msg, flush=True)

    # first of all, before the slow imports: a time-limit warning must never reach submitit's handler, which
    # would fail the cell
    with TimeLimit(timeout_min, log, getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG, signal.SIGUSR2)) as limit:

        env = submitit.JobEnvironment()
        fp = fingerprint_for(cell.device, cell.dtype, cell.threads)
        start = CellStart(job_id=str(env.job_id), host=socket.gethostname(), fingerprint=fp,
                          store=str(store_path(out, suite, fp["id"])), started=utc_now(),
                          restarts=int(os.environ.get("SLURM_RESTART_COUNT") or 0), pid=os.getpid())
        start.write(marker_path(env.paths.folder, start.job_id))
        if start.restarts:
            log(f"job {start.job_id}: restart {start.restarts} (requeued); the cell starts again from the beginning")
        try:
            return run_job(cell, suite, out, command, "slurm", retry_failed, rerun_stale)
        except CellTimedOut as exc:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the record be written whole before SIGKILL
            why = f"{exc.code}; job {start.job_id} on {start.host}; the next `tokenbench run` runs it again " \
                  "(give a longer --timeout-min)"
            rec = record_unfinished(cell, suite, "timeout", why, start, env.paths.stdout, command)
            if rec["status"] == "timeout":
                log(f"timed out: {why}")
            # else the limit came just after the cell's record was written: that record stands
            return {"key": cell.key, "status": rec["status"], "error": rec["error"], "store": start.store,
                    "duration_s": limit.elapsed()}
