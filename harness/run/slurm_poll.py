"""Waiting for a Slurm array (``tokenbench run --launcher slurm --wait``): each cell's job followed to its
end through the scheduler's own commands, so that a job dying without a result is reported instead of
waited on for ever, and the output stays one line per cell (issue 17).

submitit's wait asks ``sacct`` for job states. With accounting off (common on small clusters) every poll
prints a warning, and a job that ends without its result file (SIGKILL, out of memory, a node failure, an
interpreter that cannot start) is never seen to end. Here:

* A job is over when its result file exists (the normal end), or when the scheduler says it ended:
  ``squeue --states=all`` while slurmctld remembers the job (``MinJobAge``, 5 min by default), then
  ``sacct`` where accounting is on. ``sacct`` is probed once; when it is unavailable that is said once.
* A job that ended without a result after starting its cell (its start marker, ``harness/run/slurm_job.py``)
  gets a ``lost`` record (``timeout`` when Slurm stopped it at its limit) in the store of the node it ran
  on, naming the job, how it ended and its log. The next ``tokenbench run`` runs that cell again.
* A job that ended before its cell started (its interpreter cannot run tokenbench, say) is reported with
  the last line of its error log and the interpreter the jobs run. No record: the cell was never
  measured, so nothing knows the node's fingerprint; the next run submits it again.
* A requeued job (preemption, ``scontrol requeue``) is followed through its restart.
* Cells waiting on a prepare job that failed (a dependency Slurm can never satisfy) are cancelled and
  reported with the prepare job's log.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .executors import job_error
from .slurm_job import UNFINISHED, CellStart, marker_path, record_unfinished

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "SPECIAL_EXIT", "REVOKED"}
GONE = "GONE"  # neither squeue nor sacct knows the job any more
# after a job is seen ended, how long its result file may take to appear (shared filesystems lag), or
# a preempted job or one whose node failed may take to be requeued
GRACE_S = {"COMPLETED": 15.0, "PREEMPTED": 30.0, "NODE_FAIL": 30.0}
GRACE_OTHER_S = 3.0
HEARTBEAT_S = 600.0


def ask_every_s(waited_s: float) -> float:
    """How often the scheduler is asked (result files are looked for every poll): every 2 s at first, backing
    off to every 30 s after ten minutes, so a long sweep costs slurmctld little."""
    return min(30.0, max(2.0, waited_s / 20))


@dataclass
class JobState:
    state: str  # Slurm's job state (PENDING, RUNNING, COMPLETING, FAILED, …) or GONE
    reason: str = ""
    exit_code: str = ""  # Slurm's "code:signal", when known

    @property
    def ended(self) -> bool:
        return self.state in ENDED or self.state == GONE


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


class Scheduler:
    """Job states from squeue / scontrol / sacct (submitit's watcher is never asked, so it never warns)."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self._sacct: bool | None = None
        self._said_unreachable = False

    def sacct_available(self) -> bool:
        if self._sacct is None:
            p = _run(["sacct", "--noheader", "--allocations", "--format=JobID", "--starttime=now"])
            self._sacct = p is not None and p.returncode == 0
            if not self._sacct:
                why = ((p.stderr or p.stdout).strip().splitlines() or ["no output"])[-1] if p else "not found"
                self.log(f"note: sacct is unavailable on this cluster ({why}); job states come from squeue and "
                         "scontrol, which forget a job some minutes after it ends (MinJobAge)")
        return self._sacct

    def states(self, job_ids: Iterable[str]) -> dict[str, JobState] | None:
        """``job id -> state`` for array tasks (``12_3``) and plain jobs; None when squeue did not answer."""
        job_ids = list(job_ids)
        arrays = sorted({j.split("_")[0] for j in job_ids})
        p = _run(["squeue", "--noheader", "--array", "--states=all", "--jobs=" + ",".join(arrays),
                  "--format=%i|%T|%r"])
        if p is None or (p.returncode != 0 and "Invalid job id" not in p.stderr):
            if not self._said_unreachable:
                self._said_unreachable = True
                self.log(f"note: squeue did not answer ({(p.stderr.strip() if p else 'not found') or p.returncode});"
                         " still waiting")
            return None
        out: dict[str, JobState] = {}
        for line in (p.stdout if p.returncode == 0 else "").splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                out[parts[0]] = JobState(parts[1].split()[0], parts[2])
        missing = [j for j in job_ids if j not in out]
        if missing and self.sacct_available():
            out.update(self._sacct_states(missing))
        # an array's tasks that never started are listed as the array itself ("12") until they do
        return {j: out.get(j) or out.get(j.split("_")[0]) or JobState(GONE) for j in job_ids}

    def _sacct_states(self, job_ids: list[str]) -> dict[str, JobState]:
        p = _run(["sacct", "--noheader", "--parsable2", "--allocations", "--jobs=" + ",".join(job_ids),
                  "--format=JobID,State,ExitCode"])
        out = {}
        for line in (p.stdout if p and p.returncode == 0 else "").splitlines():
            parts = line.split("|")
            if len(parts) == 3:
                out[parts[0]] = JobState(parts[1].split()[0] if parts[1] else GONE, "", parts[2])
        return out

    def details(self, job_id: str, state: JobState) -> JobState:
        """The state with its exit code (scontrol while slurmctld remembers the job, else sacct)."""
        p = _run(["scontrol", "--oneliner", "show", "job", job_id])
        if p is not None and p.returncode == 0:
            fields = dict(f.split("=", 1) for f in p.stdout.split() if "=" in f)
            if fields.get("JobState"):
                return JobState(fields["JobState"], fields.get("Reason", ""), fields.get("ExitCode", ""))
        if self.sacct_available():
            got = self._sacct_states([job_id]).get(job_id)
            if got is not None:
                return got
        return state

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            _run(["scancel", *job_ids])


def describe_end(st: JobState) -> str:
    """How a job ended, in words a user can act on."""
    what = {"FAILED": "FAILED", "CANCELLED": "CANCELLED (scancel, or its node went down)",
            "TIMEOUT": "at its time limit (TIMEOUT)", "NODE_FAIL": "with a node failure (NODE_FAIL)",
            "OUT_OF_MEMORY": "OUT_OF_MEMORY (over its --mem-gb)", "PREEMPTED": "PREEMPTED",
            GONE: "(the scheduler no longer knows it)"}.get(st.state, st.state)
    code, _, sig = st.exit_code.partition(":")
    with contextlib.suppress(ValueError):
        code_i, sig_i = int(code), int(sig or 0)
        if sig_i:
            what += f", killed by {_signal_name(sig_i)}"
        elif code_i > 128:
            what += f", exit code {code_i}: a process killed by {_signal_name(code_i - 128)}"
            if code_i - 128 == signal.SIGKILL:
                what += " (out of memory, a node failure, kill -9)"
        elif code_i:
            what += f", exit code {code_i}"
    return what


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def last_line(path: Path) -> str:
    """The last line of a job's log that says what went wrong: not submitit's bookkeeping, not srun's
    summary of it (``srun: error: node: task 0: Exited with exit code 1``)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln and not ln.startswith(("submitit ", "srun: "))]
    return lines[-1] if lines else ""


def _has_result(job) -> bool:
    p = job.paths.folder
    with contextlib.suppress(OSError):
        p.chmod(p.stat().st_mode)  # refresh a shared filesystem's cache, as submitit does
    return job.paths.result_pickle.exists()


def wait_for_cells(cells: list, jobs: list, summary, log: Callable[[str], None], *, collect, suite: str,
                   command: str = "", python: str = "python", prepare=None, poll_s: float = 1.0) -> None:
    """Follow every cell's job to its end, one line per cell; fills ``summary`` (a ``summary.RunSummary``).
    ``collect(cell, job, summary, log, counter)`` takes in a job that returned."""
    open_jobs = {str(job.job_id): (cell, job) for cell, job in zip(cells, jobs)}
    n, finished = len(cells), 0

    def close(jid: str) -> str:
        nonlocal finished
        del open_jobs[jid]
        finished += 1
        return f"{finished}/{n}"

    try:  # from here a Ctrl-C says the jobs go on (the sacct probe can take seconds on a busy controller)
        sched = Scheduler(log)
        sched.sacct_available()  # probed once, said once
        _follow(open_jobs, sched, summary, log, close, collect=collect, suite=suite, command=command, python=python,
                prepare=prepare, poll_s=poll_s)
    except KeyboardInterrupt:
        arrays = ",".join(sorted({j.split("_")[0] for j in open_jobs}))
        log(f"stopped waiting: {len(open_jobs)} job(s) go on running on the cluster (squeue -j {arrays}); "
            "their records still land in the results folder, and the next `tokenbench run` skips them")
        raise


def _follow(open_jobs, sched: Scheduler, summary, log, close, *, suite: str, command: str, python: str, prepare,
            poll_s: float, collect) -> None:
    n = len(open_jobs)
    ended_since: dict[str, float] = {}
    last: dict[str, JobState] = {}
    t_start = heartbeat = time.monotonic()
    asked = t_start - ask_every_s(0)
    while open_jobs:
        for jid, (cell, job) in list(open_jobs.items()):
            if _has_result(job):
                collect(cell, job, summary, log, close(jid))
        if not open_jobs:
            break
        now = time.monotonic()
        if now - asked >= ask_every_s(now - t_start):
            asked = now
            states = sched.states(open_jobs) or {}
            for jid, st in states.items():
                prev = last.get(jid)
                last[jid] = st
                cell, job = open_jobs[jid]
                if prev is not None and prev.state in ("RUNNING", "COMPLETING") and st.state in ("PENDING",
                                                                                               "REQUEUED"):
                    log(f"job {jid} ({cell.label}) was requeued: it runs the cell again from the start "
                        f"when Slurm restarts it ({st.reason or 'pending'})")
                if st.state == "PENDING" and "DependencyNeverSatisfied" in st.reason:
                    sched.cancel([jid])
                    why = "never started: the prepare job that trains the suite's model failed"
                    if prepare is not None:
                        why += f" (job {prepare.job_id}: {_prepare_error(prepare)}; log: {prepare.paths.stderr})"
                    _not_run(cell, jid, why, summary, log, close(jid))
                    continue
                if st.ended:
                    ended_since.setdefault(jid, now)
                else:
                    ended_since.pop(jid, None)
        for jid, t_end in list(ended_since.items()):
            if jid not in open_jobs:
                ended_since.pop(jid)
                continue
            cell, job = open_jobs[jid]
            if _has_result(job):
                continue  # collected on the next pass
            if now - t_end >= GRACE_S.get(last[jid].state, GRACE_OTHER_S):
                ended_since.pop(jid)
                _ended_without_result(cell, job, sched.details(jid, last[jid]), summary, log, close(jid),
                                      suite=suite, command=command, python=python)
        if open_jobs and now - heartbeat >= HEARTBEAT_S:
            heartbeat = now
            running = sum(1 for j in open_jobs if last.get(j, JobState("")).state == "RUNNING")
            log(f"{n - len(open_jobs)}/{n} cells done; {running} running, {len(open_jobs) - running} waiting")
        if open_jobs:
            time.sleep(poll_s)


def _prepare_error(job) -> str:
    """What the prepare job died of: its own exception when it wrote a result, else its log's last word."""
    if _has_result(job):
        with contextlib.suppress(Exception):
            exc = job.exception()
            if exc is not None:
                return job_error(exc)
    return last_line(job.paths.stderr) or "no log written"


def _not_run(cell, jid: str, why: str, summary, log, counter: str) -> None:
    label = cell.label
    summary.lost(f"{label}: job {jid} {why}")
    log(f"cell {counter} {label}: NOT RUN — job {jid} {why}")


def _ended_without_result(cell, job, st: JobState, summary, log, counter: str, *, suite: str, command: str,
                          python: str) -> None:
    jid, label = str(job.job_id), cell.label
    how = describe_end(st)
    start = CellStart.read(marker_path(job.paths.folder, jid))
    if start is None:  # the job never reached the cell: its Python could not run tokenbench's job code
        said = last_line(job.paths.stderr) or last_line(job.paths.stdout) or "no log written"
        _not_run(cell, jid, f"ended {how}, before its cell started: {said} — the jobs run {python}; it must "
                            "exist on the compute nodes and import tokenbench (--slurm-param python=PATH sets it); "
                            f"log: {job.paths.stderr}", summary, log, counter)
        return
    status = "timeout" if st.state == "TIMEOUT" else "lost"
    why = (f"job {jid} on {start.host} ended mid-cell without writing its record: {how}; log: "
           f"{job.paths.stdout} (and .err); the next `tokenbench run` runs it again"
           + (" (give a longer --timeout-min)" if status == "timeout" else ""))
    rec = record_unfinished(cell, suite, status, why, start, job.paths.stdout, command)
    if rec["status"] not in UNFINISHED:  # it died after writing its record: that record stands
        summary.ran_cell(rec["status"], f"{label}: {rec['error']}")
        log(f"cell {counter} {label}: {rec['status']} (recorded before job {jid} ended {how})")
        return
    summary.lost(f"{label}: {status}: {why}")
    log(f"cell {counter} {label}: {status.upper()} — {why}")


@contextlib.contextmanager
def sbatch_refusals() -> Iterator[None]:
    """sbatch refusing a submission (an unknown partition, an account over its limits, …) becomes one line
    naming Slurm's reason instead of a traceback (the CLI's exit status 2)."""
    from submitit.core.utils import FailedJobError

    try:
        yield
    except FailedJobError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        said = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines or [type(exc).__name__]
        raise UserError(f"--launcher slurm: sbatch refused the jobs: {'; '.join(said)}") from None
