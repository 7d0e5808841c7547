"""What a run did, whichever launcher ran it (:class:`RunSummary`), and the one way a cell is measured into a
store: claim it, run it, append its record (:func:`finish_cell`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..results import ResultStore, store_path
from ..schema import Cell


@dataclass
class RunSummary:
    """Counts of one run, whichever launcher; ``store`` is set when the records' folder is known (not for a
    Slurm launch), ``folder`` holds the job logs of a launch."""

    suite: str
    total: int
    store: Path | None = None
    skipped: int = 0
    ran: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    timed_out: int = 0  # of the failed: stopped at --timeout-min (run again next time)
    stale: int = 0        # recorded cells measured at another commit or in a dirty tree (kept unless rerun)
    rerun_stale: bool = False  # … and re-measured (--rerun-stale)
    noisy: int = 0        # recorded cells timed under interference (kept unless rerun)
    rerun_noisy: bool = False  # … and re-timed (--rerun-noisy)
    submitted: int = 0    # jobs (launchers local and slurm)
    job_ids: list[str] = field(default_factory=list)
    prepare_job: str | None = None
    folder: Path | None = None

    def ran_cell(self, status: str, failure: str) -> None:
        """A cell that ended with a record of ``status``; ``failure`` is its line among the failures."""
        self.ran += 1
        self.timed_out += status == "timeout"
        if status != "ok":
            self.failed += 1
            self.failures.append(failure)

    def lost(self, failure: str, timed_out: bool = False) -> None:
        """A cell that ended without a record of its own (its job died, or never started it)."""
        self.failed += 1
        self.timed_out += timed_out
        self.failures.append(failure)


@dataclass(frozen=True)
class Finished:
    """A cell through :func:`finish_cell`: its record and the store it went to, or why another run has it."""

    record: dict[str, Any]
    store: Path
    why_skipped: str = ""

    @property
    def skipped(self) -> bool:
        return bool(self.why_skipped)


def finish_cell(cell: Cell, store: ResultStore, out: str | Path, suite: str,
                run: Callable[[], dict[str, Any]], *, include_failed: bool = True,
                stale: Callable[[dict[str, Any]], bool] | None = None) -> Finished:
    """Claim ``cell`` in ``store``, measure it (``run()`` returns its record) and append the record to the
    store of the machine it ran on (``store``, or the suite's store of the record's fingerprint). A cell
    another run claimed or recorded meanwhile is skipped: each cell is measured once."""
    with store.claim(cell.key, include_failed=include_failed, stale=stale) as claim:
        if not claim.held:
            return Finished({}, store.path, claim.why)
        rec = run()
        path = store_path(out, suite, rec["fingerprint"]["id"])
        target = store if path == store.path else ResultStore(path)
        try:
            target.append(rec)
        except OSError as exc:
            raise OSError(f"cannot append to {target.path} ({exc}); the results folder must be on a "
                          "filesystem that supports flock") from exc
    return Finished(rec, target.path)
