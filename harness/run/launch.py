"""Fan a suite out as jobs through submitit (docs/architecture.md §7): ``tokenbench run --launcher local|slurm``.

One job per pending cell. Every job calls :func:`tokenbench.harness.run.cell.run_cell` and appends its record
to ``<out>/<suite>/<fingerprint of the machine it ran on>/records.jsonl`` through the same
:class:`~tokenbench.harness.results.ResultStore` the in-process runner uses, so the results folder looks
the same whichever launcher filled it.

Launchers
---------
* ``inprocess`` (default): :func:`runner.run_suite`, one cell after another in this process (decoded
  clips, models and baseline predictions shared between cells).
* ``local``: submitit's ``LocalExecutor``, one fresh process per cell on this machine (a cell that crashes
  or runs out of memory takes down its own process only). Jobs run **one at a time** unless the cells run
  on CUDA and several GPUs are visible: then up to ``--array-parallelism`` jobs run at once, each pinned to
  a GPU of its own (``CUDA_VISIBLE_DEVICES`` of one device). On a machine with one GPU or none, timing
  cells never overlap: two cells timed at once on one GPU, or on the same CPU cores, would measure each
  other. This call waits for every job.
* ``slurm``: submitit's ``SlurmExecutor``, the pending cells as one Slurm job array (``sbatch --array=
  0-N%P``), ``--gpus-per-node`` GPUs per job (default 1; Slurm's GPU allocation gives each array task its
  own device, so two timing cells never share a GPU), ``--partition``, ``--time``, ``--cpus-per-task``.
  Submits and returns (``--wait`` to block until the array ends). Arrays longer than
  ``MAX_ARRAY_SIZE`` are split.

Safety
------
* **Concurrent appends.** A record is written whole under an exclusive ``flock`` on the records file
  and fsynced before the lock is released (results.py), so parallel jobs never interleave or lose lines.
  On a cluster the results folder (``--out``) must be on a shared filesystem that supports ``flock``
  (NFS with locking, Lustre mounted with ``flock``, GPFS).
* **Finished cells are skipped before submission**: ``local`` reads the store of this machine's
  fingerprint; ``slurm`` cannot fingerprint a compute node from the login node, so it counts a cell as
  done when any store of the suite with the cell's device type (cpu, cuda) has it — a partition of
  identical GPUs is the intended use; to measure a second GPU model, give another ``--out``. Each job checks
  again, against its own node's fingerprint, before it starts (a suite submitted twice runs each cell once
  per fingerprint).
* **Shared prerequisites first.** A suite's self-trained model (``pretrain``, cached by
  :func:`runner.ensure_pretrained` in ``$TOKENBENCH_CACHE``) is trained by one *prepare* job before the
  cells fan out: ``local`` waits for it; ``slurm`` makes the array depend on it (``afterok``). The cache's
  file lock would also keep concurrent cells from training it twice, but they would wait idle on their GPUs.
* A ``local`` job that dies without writing its record (timeout, killed) gets a ``lost`` record written
  by the launcher naming what happened, so the sweep's records account for every cell; like Slurm's lost
  cells it is not finished, and the next run runs it again.
* Slurm's faults — a job killed mid-cell, over its time limit, requeued, or whose Python cannot run
  tokenbench — are handled in ``slurm_job.py`` (inside each job) and ``slurm_poll.py`` (``--wait``).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..paths import cache_root, safe_name
from ..results import RECORDS_FILE, ResultStore, done_keys, store_path
from ..schema import Cell, make_record
from .common import utc_now
from .executors import (
    LaunchOptions,
    default_folder,
    job_error,
    local_executor,
    pin_gpu,
    slurm_executor,
)
from .job import fingerprint_for, prepare_job, run_job
from .plan import CodeVersion, make_plan, pending_pretrains
from .run_lock import timing_lock
from .slurm_job import run_slurm_cell
from .slurm_poll import sbatch_refusals, wait_for_cells
from .summary import RunSummary

LAUNCHERS = ("inprocess", "local", "slurm")
MAX_ARRAY_SIZE = 1000  # Slurm's default MaxArraySize is 1001 (indices 0…1000)
LOCAL_SIGNAL_DELAY_S = 30  # submitit's LocalExecutor default: its USR2 this long before the job's limit


# ----------------------------------------------------------------------------------------------
# before submission
# ----------------------------------------------------------------------------------------------
def recorded_keys(out: str | Path, suite: str, fingerprint_id: str | None = None, device_type: str | None = None,
                  include_failed: bool = True, stale: Callable[[dict[str, Any]], bool] | None = None) -> set[str]:
    """Keys recorded for ``suite`` under ``out``: in the store of ``fingerprint_id`` when given, else in
    every store of the suite whose records ran on ``device_type`` (cpu, cuda); less those whose newest
    record ``stale(record)`` says to measure again. Read only."""
    if fingerprint_id is not None:
        files = [store_path(out, suite, fingerprint_id)]
    else:
        files = sorted((Path(out) / safe_name(suite)).glob(f"*/{RECORDS_FILE}"))
    on = device_type if fingerprint_id is None else None
    return set().union(*(done_keys(f, include_failed, device_type=on, stale=stale) for f in files))


def visible_gpus() -> list[str]:
    """The GPUs this process may hand to local jobs, as ``CUDA_VISIBLE_DEVICES`` names them (indices or
    UUIDs): that variable's entries when set, else every device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [x.strip() for x in env.split(",") if x.strip()]
    try:
        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:
        return []


def local_parallelism(device: str, requested: int | None, gpus: list[str]) -> tuple[int, str]:
    """(jobs at once, why): one at a time unless CUDA cells and several GPUs, each job on its own GPU."""
    want = max(1, int(requested or 1))
    if not device.startswith("cuda"):
        note = "" if want == 1 else (f"--array-parallelism {want} ignored: CPU cells run one at a time (cells "
                                     "timed at once would share the cores they are timed on)")
        return 1, note
    if want > max(1, len(gpus)):
        return max(1, len(gpus)), (f"--array-parallelism {want} lowered to {max(1, len(gpus))}: one job per GPU, "
                                   f"{len(gpus)} visible")
    return want, ""


# ----------------------------------------------------------------------------------------------
# executors
# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------
# launching
# ----------------------------------------------------------------------------------------------
def launch(suite, out: str | Path, opts: LaunchOptions, *, cells: list[Cell] | None = None,
           command: str = "", log: Callable[[str], None] | None = None) -> RunSummary:
    """Run (local) or submit (slurm) every pending cell of ``suite`` as its own job."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if opts.launcher not in ("local", "slurm"):
        raise ValueError(f"launch() takes launcher local or slurm, got {opts.launcher!r}")
    if opts.launcher == "local":  # its jobs time cells on this machine: one run on --out at a time
        with timing_lock(Path(out), log, command):
            return _launch(suite, out, opts, cells, command, log)
    return _launch(suite, out, opts, cells, command, log)


def _launch(suite, out: str | Path, opts: LaunchOptions, cells: list[Cell] | None, command: str,
            log: Callable[[str], None]) -> RunSummary:
    t0 = time.perf_counter()
    cells = suite.cells() if cells is None else cells
    out = Path(out).resolve()  # jobs may start in another directory
    folder = Path(opts.folder) if opts.folder else default_folder(out, suite.name)
    summary = RunSummary(suite.name, len(cells), folder=folder)
    device = suite.device
    cuda = device.startswith("cuda")
    if opts.gpus_per_job is None:
        opts = replace(opts, gpus_per_job=1 if cuda else 0)
    if cuda and opts.gpus_per_job < 1:
        raise UserError(f"the cells run on {device}: each job needs a GPU (--gpus-per-job ≥ 1)")
    if opts.launcher == "local":
        fp = fingerprint_for(device, suite.dtype, suite.defaults.threads)
        where: dict[str, Any] = {"fingerprint_id": fp["id"]}
        summary.store = store_path(out, suite.name, fp["id"])
    else:
        where = {"device_type": device.split(":")[0]}
    done = recorded_keys(out, suite.name, include_failed=not opts.retry_failed, **where)
    # recorded at another commit or in a dirty tree: counted always, measured again with --rerun-stale
    code = opts.rerun_stale or CodeVersion.here()
    fresh = recorded_keys(out, suite.name, include_failed=not opts.retry_failed, stale=code.measured_elsewhere,
                          **where)
    summary.stale = len((done - fresh) & {c.key for c in cells})
    summary.rerun_stale = opts.rerun_stale is not None
    if summary.rerun_stale:
        done = fresh
    plan = make_plan(cells, done, cache_root())
    pending, pretrains = plan.pending, plan.prepare
    summary.skipped = plan.skipped
    if not pending:
        log(f"{suite.name}: all {len(cells)} cells are recorded under {out / suite.name}; nothing to submit")
        return summary
    log(f"{suite.name}: {len(pending)} of {len(cells)} cells to run ({summary.skipped} recorded) through "
        f"{opts.launcher}; job logs in {folder}")
    if opts.launcher == "local":
        _launch_local(pending, pretrains, suite, out, folder, opts, command, summary, log)
    else:
        with sbatch_refusals():  # an unknown partition, say: one line, not a traceback
            _launch_slurm(pending, pretrains, suite, out, folder, opts, command, summary, log)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _launch_slurm(pending, pretrains, suite, out: Path, folder: Path, opts: LaunchOptions, command: str,
                  summary: RunSummary, log) -> None:
    name, job = f"tokenbench-{suite.name}", None
    if pretrains:
        prep = slurm_executor(folder, opts, f"{name}-prepare")
        job = prep.submit(prepare_job, pretrains, suite.device, suite.defaults.threads)
        summary.prepare_job = str(job.job_id)
        log(f"prepare job {job.job_id}: trains {len(pretrains)} model(s) once; the cells start after it succeeds")
    ex = slurm_executor(folder, opts, name)
    if summary.prepare_job:
        ex.update_parameters(dependency=f"afterok:{summary.prepare_job}")
    jobs = []
    for i in range(0, len(pending), MAX_ARRAY_SIZE):
        chunk = pending[i:i + MAX_ARRAY_SIZE]
        n = len(chunk)
        jobs += ex.map_array(run_slurm_cell, chunk, [suite.name] * n, [str(out)] * n, [command] * n,
                             [opts.retry_failed] * n, [opts.timeout_min] * n, [opts.rerun_stale] * n)
    summary.job_ids = [str(j.job_id) for j in jobs]
    summary.submitted = len(jobs)
    arrays = sorted({j.split("_")[0] for j in summary.job_ids})
    log(f"submitted {len(jobs)} cells as Slurm array job(s) {', '.join(arrays)}"
        f" (at most {ex.parameters.get('array_parallelism', 256)} at once, "
        f"{ex.parameters.get('gpus_per_node', 0)} GPU(s) each); follow with: squeue -j {','.join(arrays)}")
    if not opts.wait:
        return
    wait_for_cells(pending, jobs, summary, log, collect=_collect, suite=suite.name, command=command,
                   python=ex.python, prepare=job, poll_s=opts.poll_s)


def _launch_local(pending, pretrains, suite, out: Path, folder: Path, opts: LaunchOptions, command: str,
                  summary: RunSummary, log) -> None:
    device = suite.device
    ex = local_executor(folder, opts)
    gpus = visible_gpus() if device.startswith("cuda") else []
    width, note = local_parallelism(device, opts.array_parallelism, gpus)
    if note:
        log(note)
    want_gpus = 1 if device.startswith("cuda") else 0  # a cell runs on one device; each job gets its own
    if opts.gpus_per_job not in (None, want_gpus):
        log(f"--gpus-per-job {opts.gpus_per_job} ignored by the local launcher: {want_gpus} GPU per job")
    if want_gpus and not gpus:
        raise UserError(f"the cells run on {device} but no GPU is visible here (CUDA_VISIBLE_DEVICES, torch.cuda)")
    if pretrains:
        pin_gpu(ex, gpus[0] if want_gpus else None)
        job = ex.submit(prepare_job, pretrains, device, suite.defaults.threads)
        summary.prepare_job = str(job.job_id)
        log(f"prepare job {job.job_id}: training {len(pretrains)} model(s) before the cells (once, cached)")
        try:
            job.result()
        except Exception as exc:  # its cells are recorded as failed with the error, not retrained one by one
            why = f"training the suite's model failed in prepare job {job.job_id}: {job_error(exc)}"
            log(why)
            for cell in [c for c in pending if pending_pretrains([c], cache_root())]:
                _record_lost(cell, suite.name, out, why, job.paths.stderr)
                summary.lost(f"{cell.label}: {why}")
            pending = [c for c in pending if not pending_pretrains([c], cache_root())]
    free = list(gpus[:width]) if want_gpus else [None] * width
    running: list[tuple[Any, dict[str, Any], Any]] = []  # (job, cell, gpu slot)
    queue = list(pending)
    n_done = 0
    try:
        while queue or running:
            while queue and free:
                slot = free.pop(0)
                pin_gpu(ex, slot)
                cell = queue.pop(0)
                job = ex.submit(run_job, cell, suite.name, str(out), command, "local", opts.retry_failed,
                                opts.rerun_stale, local_cell_limit_s(opts.timeout_min))
                summary.job_ids.append(str(job.job_id))
                summary.submitted += 1
                running.append((job, cell, slot))
            still = []
            for job, cell, slot in running:
                if job.done():
                    n_done += 1
                    _collect(cell, job, summary, log, f"{n_done}/{len(pending)}", out, suite.name)
                    free.append(slot)
                else:
                    still.append((job, cell, slot))
            running = still
            if running and (not queue or not free):
                time.sleep(opts.poll_s)
    except KeyboardInterrupt:
        for job, _, _ in running:
            with contextlib.suppress(Exception):
                job.cancel()
        raise


def local_cell_limit_s(timeout_min: float) -> float:
    """The cell's own limit inside a local job: ahead of the signal submitit sends the job
    ``LOCAL_SIGNAL_DELAY_S`` before its limit (whose handler would fail the cell), so the cell is recorded
    as ``timeout`` (a minute of slack for the job's start); never under a quarter of the job's time (were
    submitit's signal first, its error is recorded as ``timeout`` too)."""
    limit = float(timeout_min) * 60
    return max(limit / 4, limit - LOCAL_SIGNAL_DELAY_S - 60)


def _collect(cell, job, summary: RunSummary, log, counter: str | None, out: Path | None = None,
             suite: str | None = None) -> None:
    label = cell.label
    prefix = f"cell {counter} " if counter else "cell "
    try:
        res = job.result()
    except Exception as exc:  # the job died without returning: timeout, killed, cannot import …
        why = job_error(exc)
        if out is None or suite is None:  # Slurm: slurm_poll records the cell from the node's own store
            summary.lost(f"{label}: job {job.job_id} died: {why}")
            log(f"{prefix}{label}: job {job.job_id} died without a record: {why}")
            return
        status = "timeout" if _timed_out(exc) else "lost"
        summary.lost(f"{label}: {status}: job {job.job_id} died: {why}", timed_out=status == "timeout")
        log(f"{prefix}{label}: {status.upper()} — job {job.job_id} died without a record: {why}; the next run runs "
            "it again")
        _record_lost(cell, suite, out, f"job {job.job_id} died without writing its record: {why}; the next "
                     "`tokenbench run` runs it again", job.paths.stderr, status=status)
        return
    if res["status"] == "skipped":
        summary.skipped += 1
        log(f"{prefix}{label}: already recorded (another run got there first)")
        return
    summary.ran_cell(res["status"], f"{label} ({cell.mode}): {res['error']}")
    log(f"{prefix}{label}: {res['status']}{' — ' + res['error'] if res['error'] else ''}"
        f" ({res.get('duration_s', 0):.1f} s, job {job.job_id})")


def _timed_out(exc: BaseException) -> bool:
    """submitit's error for a job stopped at its time limit (its words: "timed-out", state TIMEOUT)."""
    text = str(exc)
    return "timed-out" in text or "timed out" in text or "state: TIMEOUT" in text


def _record_lost(cell: Cell, suite: str, out: Path, error: str, log_path: Path, status: str = "failed") -> None:
    """The record of a cell whose job ended before appending one (local launcher: same machine): ``lost``
    when the job died (run again next time), ``failed`` when what it needed failed (its model's training)."""
    fp = fingerprint_for(cell.device, cell.dtype, cell.threads)
    now = utc_now()
    rec = make_record(cell, suite=suite, fingerprint=fp, error=error, started=now, finished=now, duration_s=0.0,
                      launcher={"name": "local", "log": str(log_path)}, status=status)
    ResultStore(store_path(out, suite, fp["id"])).append(rec)
