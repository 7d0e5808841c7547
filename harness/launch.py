"""Fan a suite out as jobs through submitit (DESIGN.md §7): ``tokenbench run --launcher local|slurm``.

One job per pending cell. Every job calls :func:`tokenbench.harness.runner.run_cell` and appends its record
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
* A ``local`` job that dies without writing its record (timeout, killed) gets a ``failed`` record written
  by the launcher naming what happened, so the sweep's records account for every cell.
* Slurm's faults — a job killed mid-cell, over its time limit, requeued, or whose Python cannot run
  tokenbench — are handled in ``slurm_job.py`` (inside each job) and ``slurm_poll.py`` (``--wait``).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import socket
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

LAUNCHERS = ("inprocess", "local", "slurm")
MAX_ARRAY_SIZE = 1000  # Slurm's default MaxArraySize is 1001 (indices 0…1000)
DEFAULT_TIMEOUT_MIN = 240


@dataclass
class LaunchOptions:
    launcher: str = "local"
    folder: Path | None = None  # submitit's logs and pickles; default <out>/_submitit/<suite>
    partition: str | None = None
    gpus_per_job: int | None = None  # default: 1 on slurm; local: 1 for CUDA cells, else 0
    array_parallelism: int | None = None  # default: slurm 256 (submitit's), local 1
    timeout_min: int = DEFAULT_TIMEOUT_MIN
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    slurm_params: dict[str, Any] = field(default_factory=dict)  # more sbatch settings: account, qos, …
    wait: bool = False  # slurm: block until the array ends
    retry_failed: bool = False
    poll_s: float = 1.0


@dataclass
class LaunchSummary:
    """What a launch did; ``store`` is set when the records' folder is known (local launcher)."""

    suite: str
    total: int
    skipped: int = 0
    submitted: int = 0
    ran: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    prepare_job: str | None = None
    store: Path | None = None
    folder: Path | None = None
    wall_s: float = 0.0


# ----------------------------------------------------------------------------------------------
# what runs inside a job
# ----------------------------------------------------------------------------------------------
def _job_info(launcher: str) -> dict[str, Any]:
    info: dict[str, Any] = {"name": launcher, "hostname": socket.gethostname()}
    with contextlib.suppress(Exception):
        import submitit

        info["job_id"] = submitit.JobEnvironment().job_id
    return info


def _fingerprint_for(cell: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint :func:`runner.run_cell` will record for ``cell`` on this machine."""
    from .runner import hardware_fingerprint, torch_threads

    with torch_threads(int(cell.get("threads") or 0)) as threads:
        return hardware_fingerprint(cell.get("device", "cpu"), cell.get("dtype", "float32"), threads)


def run_job(cell: dict[str, Any], suite: str, out: str, command: str = "", launcher: str = "local",
            retry_failed: bool = False) -> dict[str, Any]:
    """One cell in a job: skip it when this machine's store already has it, else measure it and append its
    record. Returns a short summary (the record itself is in the store)."""
    from .results import ResultStore, store_path
    from .runner import run_cell
    from .suite import cell_label

    def log(msg: str) -> None:
        print(msg, flush=True)

    label = cell_label(cell)
    fp = _fingerprint_for(cell)
    store = ResultStore(store_path(out, suite, fp["id"]))
    if cell["key"] in recorded_keys(out, suite, fingerprint_id=fp["id"], include_failed=not retry_failed):
        log(f"{label}: already recorded in {store.path}; nothing to do")
        return {"key": cell["key"], "status": "skipped", "error": None, "store": str(store.path)}
    with store.claim(cell["key"], include_failed=not retry_failed) as claim:
        if not claim.held:  # another run on this results folder has it: measure each cell once
            log(f"{label}: {claim.why}; nothing to do")
            return {"key": cell["key"], "status": "skipped", "error": None, "store": str(store.path)}
        log(f"{label}: {cell['mode']} {cell['model']}/{cell['dataset']} b{cell['batch_size']} → {store.path}")
        rec = run_cell(cell, suite=suite, command=command, log=log, progress=None)
        rec["launcher"] = _job_info(launcher)
        if rec["fingerprint"]["id"] != fp["id"]:
            store = ResultStore(store_path(out, suite, rec["fingerprint"]["id"]))
        try:
            store.append(rec)
        except OSError as exc:
            raise OSError(f"cannot append to {store.path} ({exc}); the results folder must be on a filesystem "
                          "that supports flock") from exc
    log(f"{label}: {rec['status']}{' — ' + rec['error'] if rec['error'] else ''} in {rec['duration_s']:.1f} s")
    return {"key": cell["key"], "status": rec["status"], "error": rec["error"], "store": str(store.path),
            "duration_s": rec["duration_s"]}


def prepare_job(pretrains: list[dict[str, Any]], device: str, threads: int = 0) -> list[str]:
    """Train (once, cached under a file lock) every self-trained model the cells need."""
    from .runner import RunCache, ensure_pretrained, torch_threads

    cache = RunCache()
    out = []
    with torch_threads(threads):
        for pre in pretrains:
            out.append(str(ensure_pretrained(pre, cache.cache_dir, device, lambda m: print(m, flush=True))))
    return out


# ----------------------------------------------------------------------------------------------
# before submission
# ----------------------------------------------------------------------------------------------
def requested_device(suite: str, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """``defaults.device`` as the suite file (or a ``--set``) gives it, before ``auto`` is resolved on this
    machine — a login node without a GPU resolves ``auto`` to cpu, its compute nodes would not."""
    from .suite import suite_source

    text, _, _ = suite_source(suite)
    value = str(tomllib.loads(text).get("defaults", {}).get("device", "auto"))
    for item in overrides:
        k, _, v = item.partition("=")
        if k.strip() == "defaults.device":
            value = v.strip().strip("\"'")
    return value


def _latest(path: Path) -> dict[str, dict[str, Any]]:
    from .results import iter_records

    out: dict[str, dict[str, Any]] = {}
    for rec in iter_records(path):
        if "key" in rec:
            out[rec["key"]] = rec
    return out


def recorded_keys(out: str | Path, suite: str, fingerprint_id: str | None = None, device_type: str | None = None,
                  include_failed: bool = True) -> set[str]:
    """Keys recorded for ``suite`` under ``out``: in the store of ``fingerprint_id`` when given, else in
    every store of the suite whose records ran on ``device_type`` (cpu, cuda). Read only."""
    from .results import RECORDS_FILE, safe_component, store_path

    if fingerprint_id is not None:
        files = [store_path(out, suite, fingerprint_id)]
    else:
        files = sorted((Path(out) / safe_component(suite)).glob(f"*/{RECORDS_FILE}"))
    done = set()
    for f in files:
        for key, rec in _latest(f).items():
            dev = str((rec.get("fingerprint") or {}).get("device", ""))
            if device_type is not None and fingerprint_id is None and dev != device_type:
                continue
            if rec.get("status") == "ok" or (include_failed and rec.get("status") == "failed"):
                done.add(key)
    return done


def pending_pretrains(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct self-trained models ``cells`` need whose checkpoint is not cached yet."""
    from .runner import cache_root, pretrained_path

    seen, out = set(), []
    for c in cells:
        pre = c.get("pretrain")
        if pre and str(c.get("checkpoint", "")).startswith("trained:") and c["checkpoint"] not in seen:
            seen.add(c["checkpoint"])
            if not pretrained_path(pre, cache_root()).is_file():
                out.append(pre)
    return out


def visible_gpus() -> list[str]:
    """The GPUs this process may hand to local jobs, as ``CUDA_VISIBLE_DEVICES`` names them (indices or
    UUIDs): that variable's entries when set, else every device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [x.strip() for x in env.split(",") if x.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:
        return []


def pin_gpu(ex, gpu: str | None) -> None:
    """The next local job sees only ``gpu`` (None: no GPU at all)."""
    if gpu is None:
        ex.update_parameters(gpus_per_node=0, visible_gpus=(), setup=[])
    elif gpu.isdigit():  # submitit's own mechanism: CUDA_VISIBLE_DEVICES=<gpu> for the job
        ex.update_parameters(gpus_per_node=1, visible_gpus=(int(gpu),), setup=[])
    else:  # a GPU UUID / MIG name: exported before the job starts
        ex.update_parameters(gpus_per_node=0, visible_gpus=(), setup=[f"export CUDA_VISIBLE_DEVICES={shlex.quote(gpu)}"])


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
def default_folder(out: str | Path, suite: str) -> Path:
    from .results import safe_component

    return Path(out) / "_submitit" / safe_component(suite)


def slurm_executor(folder: str | Path, opts: LaunchOptions, job_name: str):
    """submitit's ``SlurmExecutor`` set up for tokenbench cells (needs ``srun`` on PATH)."""
    import submitit

    try:  # --slurm-param python=PATH: the interpreter the jobs run (default: this one)
        ex = submitit.SlurmExecutor(folder=str(Path(folder) / "%j"), python=opts.slurm_params.get("python"))
    except RuntimeError as exc:
        from .cli import UserError

        raise UserError(f"--launcher slurm: {exc} (run it on a Slurm login node)") from None
    gpus = 1 if opts.gpus_per_job is None else int(opts.gpus_per_job)
    from .slurm_job import warning_delay_s

    params: dict[str, Any] = {"job_name": job_name, "time": int(opts.timeout_min), "ntasks_per_node": 1, "nodes": 1,
                              "signal_delay_s": warning_delay_s(opts.timeout_min)}
    if gpus:
        params["gpus_per_node"] = gpus
    if opts.partition:
        params["partition"] = opts.partition
    if opts.array_parallelism:
        params["array_parallelism"] = int(opts.array_parallelism)
    if opts.cpus_per_job:
        params["cpus_per_task"] = int(opts.cpus_per_job)
    if opts.mem_gb:
        params["mem"] = f"{int(round(opts.mem_gb * 1024))}MB"
    params.update({k: v for k, v in opts.slurm_params.items() if k != "python"})
    ex.update_parameters(**params)
    return ex


def local_executor(folder: str | Path, opts: LaunchOptions):
    import submitit

    ex = submitit.LocalExecutor(folder=str(Path(folder) / "%j"))
    ex.update_parameters(timeout_min=int(opts.timeout_min))
    return ex


# ----------------------------------------------------------------------------------------------
# launching
# ----------------------------------------------------------------------------------------------
def launch(suite, out: str | Path, opts: LaunchOptions, *, cells: list[dict[str, Any]] | None = None,
           command: str = "", log: Callable[[str], None] | None = None) -> LaunchSummary:
    """Run (local) or submit (slurm) every pending cell of ``suite`` as its own job."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if opts.launcher not in ("local", "slurm"):
        raise ValueError(f"launch() takes launcher local or slurm, got {opts.launcher!r}")
    t0 = time.perf_counter()
    cells = suite.cells() if cells is None else cells
    out = Path(out).resolve()  # jobs may start in another directory
    folder = Path(opts.folder) if opts.folder else default_folder(out, suite.name)
    summary = LaunchSummary(suite.name, len(cells), folder=folder)
    device = suite.defaults.get("device", "cpu")
    cuda = device.startswith("cuda")
    if opts.gpus_per_job is None:
        opts = replace(opts, gpus_per_job=1 if cuda else 0)
    if cuda and opts.gpus_per_job < 1:
        from .cli import UserError

        raise UserError(f"the cells run on {device}: each job needs a GPU (--gpus-per-job ≥ 1)")
    if opts.launcher == "local":
        fp = _fingerprint_for({"device": device, "dtype": suite.defaults.get("dtype", "float32"),
                               "threads": suite.defaults.get("threads", 0)})
        done = recorded_keys(out, suite.name, fingerprint_id=fp["id"], include_failed=not opts.retry_failed)
        from .results import store_path

        summary.store = store_path(out, suite.name, fp["id"])
    else:
        done = recorded_keys(out, suite.name, device_type=device.split(":")[0], include_failed=not opts.retry_failed)
    pending = [c for c in cells if c["key"] not in done]
    summary.skipped = len(cells) - len(pending)
    if not pending:
        log(f"{suite.name}: all {len(cells)} cells are recorded under {out / suite.name}; nothing to submit")
        return summary
    log(f"{suite.name}: {len(pending)} of {len(cells)} cells to run ({summary.skipped} recorded) through "
        f"{opts.launcher}; job logs in {folder}")
    pretrains = pending_pretrains(pending)
    if opts.launcher == "local":
        _launch_local(pending, pretrains, suite, out, folder, opts, command, summary, log)
    else:
        from .slurm_poll import sbatch_refusals

        with sbatch_refusals():  # an unknown partition, say: one line, not a traceback
            _launch_slurm(pending, pretrains, suite, out, folder, opts, command, summary, log)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _launch_slurm(pending, pretrains, suite, out: Path, folder: Path, opts: LaunchOptions, command: str,
                  summary: LaunchSummary, log) -> None:
    from .slurm_job import run_slurm_cell
    from .slurm_poll import wait_for_cells

    name, job = f"tokenbench-{suite.name}", None
    if pretrains:
        prep = slurm_executor(folder, opts, f"{name}-prepare")
        job = prep.submit(prepare_job, pretrains, suite.defaults.get("device", "cpu"),
                          int(suite.defaults.get("threads") or 0))
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
                             [opts.retry_failed] * n, [opts.timeout_min] * n)
    summary.job_ids = [str(j.job_id) for j in jobs]
    summary.submitted = len(jobs)
    arrays = sorted({j.split("_")[0] for j in summary.job_ids})
    log(f"submitted {len(jobs)} cells as Slurm array job(s) {', '.join(arrays)}"
        f" (at most {ex.parameters.get('array_parallelism', 256)} at once, "
        f"{ex.parameters.get('gpus_per_node', 0)} GPU(s) each); follow with: squeue -j {','.join(arrays)}")
    if not opts.wait:
        return
    wait_for_cells(pending, jobs, summary, log, suite=suite.name, command=command, python=ex.python, prepare=job,
                   poll_s=opts.poll_s)


def _launch_local(pending, pretrains, suite, out: Path, folder: Path, opts: LaunchOptions, command: str,
                  summary: LaunchSummary, log) -> None:
    from .suite import cell_label

    device = suite.defaults.get("device", "cpu")
    ex = local_executor(folder, opts)
    gpus = visible_gpus() if device.startswith("cuda") else []
    width, note = local_parallelism(device, opts.array_parallelism, gpus)
    if note:
        log(note)
    want_gpus = 1 if device.startswith("cuda") else 0  # a cell runs on one device; each job gets its own
    if opts.gpus_per_job not in (None, want_gpus):
        log(f"--gpus-per-job {opts.gpus_per_job} ignored by the local launcher: {want_gpus} GPU per job")
    if want_gpus and not gpus:
        from .cli import UserError

        raise UserError(f"the cells run on {device} but no GPU is visible here (CUDA_VISIBLE_DEVICES, torch.cuda)")
    if pretrains:
        pin_gpu(ex, gpus[0] if want_gpus else None)
        job = ex.submit(prepare_job, pretrains, device, int(suite.defaults.get("threads") or 0))
        summary.prepare_job = str(job.job_id)
        log(f"prepare job {job.job_id}: training {len(pretrains)} model(s) before the cells (once, cached)")
        try:
            job.result()
        except Exception as exc:  # its cells are recorded as failed with the error, not retrained one by one
            why = f"training the suite's model failed in prepare job {job.job_id}: {job_error(exc)}"
            log(why)
            for cell in [c for c in pending if pending_pretrains([c])]:
                _record_lost(cell, suite.name, out, why, job.paths.stderr)
                summary.failed += 1
                summary.failures.append(f"{cell_label(cell)}: {why}")
            pending = [c for c in pending if not pending_pretrains([c])]
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
                job = ex.submit(run_job, cell, suite.name, str(out), command, "local", opts.retry_failed)
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


def _collect(cell, job, summary: LaunchSummary, log, counter: str | None, out: Path | None = None,
             suite: str | None = None) -> None:
    from .suite import cell_label

    label = cell_label(cell)
    prefix = f"cell {counter} " if counter else "cell "
    try:
        res = job.result()
    except Exception as exc:  # the job died without returning: timeout, killed, cannot import …
        why = job_error(exc)
        summary.failed += 1
        summary.failures.append(f"{label}: job {job.job_id} died: {why}")
        log(f"{prefix}{label}: job {job.job_id} died without a record: {why}")
        if out is not None and suite is not None:
            _record_lost(cell, suite, out, f"job {job.job_id} died without writing its record: {why}",
                         job.paths.stderr)
        return
    if res["status"] == "skipped":
        summary.skipped += 1
        log(f"{prefix}{label}: already recorded (another run got there first)")
        return
    summary.ran += 1
    if res["status"] != "ok":
        summary.failed += 1
        summary.failures.append(f"{label} ({cell['mode']}): {res['error']}")
    log(f"{prefix}{label}: {res['status']}{' — ' + res['error'] if res['error'] else ''}"
        f" ({res.get('duration_s', 0):.1f} s, job {job.job_id})")


def job_error(exc: BaseException) -> str:
    """The error a submitit job died of: the last line of the job's own traceback when submitit's message
    carries one (between its ``-----`` rules), else the message's last line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines()]
    rules = [i for i, ln in enumerate(lines) if ln and set(ln) == {"-"}]
    body = lines[rules[0] + 1:rules[1]] if len(rules) >= 2 else lines
    body = [ln for ln in body if ln]
    return body[-1] if body else type(exc).__name__


def _record_lost(cell: dict[str, Any], suite: str, out: Path, error: str, log_path: Path) -> None:
    """A failed record for a cell whose job died before appending one (local launcher: same machine)."""
    from .results import ResultStore, store_path
    from .runner import utc_now
    from .schema import SCHEMA_VERSION
    from .suite import cell_label

    fp = _fingerprint_for(cell)
    c = {k: v for k, v in cell.items() if k != "key"}
    rec = {"schema": SCHEMA_VERSION, "key": cell["key"], "suite": suite, "status": "failed", "error": error,
           "cell": {**c, "label": cell_label(cell)}, "fingerprint": fp, "metrics": {}, "started": utc_now(),
           "finished": utc_now(), "duration_s": 0.0, "command": "", "launcher": {"name": "local", "log": str(log_path)}}
    ResultStore(store_path(out, suite, fp["id"])).append(rec)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def add_launch_args(p: argparse.ArgumentParser) -> None:
    """``tokenbench run``'s launcher flags."""
    g = p.add_argument_group("launching jobs (submitit)")
    g.add_argument("--launcher", choices=LAUNCHERS, default="inprocess",
                   help="inprocess: every cell in this process (default); local: one process per cell on this "
                        "machine, one at a time (one per GPU with several GPUs); slurm: one Slurm job per cell, "
                        "submitted as a job array")
    g.add_argument("--partition", metavar="P", help="Slurm partition (--launcher slurm)")
    g.add_argument("--gpus-per-job", type=int, metavar="N",
                   help="GPUs per job (default: 1 on slurm; local: 1 for CUDA cells, 0 for CPU cells)")
    g.add_argument("--array-parallelism", type=int, metavar="N",
                   help="jobs running at once (slurm: the array's %%N, default 256; local: default 1, at most "
                        "one per visible GPU, always 1 for CPU cells)")
    g.add_argument("--timeout-min", type=int, default=DEFAULT_TIMEOUT_MIN, metavar="M",
                   help="time limit of each job in minutes (default: %(default)s)")
    g.add_argument("--cpus-per-job", type=int, metavar="N", help="Slurm --cpus-per-task")
    g.add_argument("--mem-gb", type=float, metavar="G", help="Slurm memory per job")
    g.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting of submitit's SlurmExecutor, e.g. account=proj, qos=high, "
                        "constraint=h100, exclude=node12 (repeatable)")
    g.add_argument("--submitit-dir", metavar="DIR",
                   help="submitit's job folder: logs and pickles (default: OUT/_submitit/<suite>); on a "
                        "cluster it must be on a filesystem the compute nodes share")
    g.add_argument("--wait", action="store_true", help="slurm: wait for every job to end, then report")


def options_from_args(args) -> LaunchOptions:
    from .cli import UserError

    extra: dict[str, Any] = {}
    for item in args.slurm_param:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise UserError(f"--slurm-param {item!r}: expected KEY=VALUE, e.g. account=myproject")
        try:
            value: Any = tomllib.loads(f"v = {v}")["v"]
        except tomllib.TOMLDecodeError:
            value = v
        extra[k.strip()] = value
    for flag, v in (("--gpus-per-job", args.gpus_per_job), ("--array-parallelism", args.array_parallelism),
                    ("--timeout-min", args.timeout_min), ("--cpus-per-job", args.cpus_per_job)):
        if v is not None and v < (0 if flag == "--gpus-per-job" else 1):
            raise UserError(f"{flag} must be ≥ {0 if flag == '--gpus-per-job' else 1}, got {v}")
    if args.launcher == "slurm" and not args.partition and "partition" not in extra:
        print("note: no --partition given; Slurm uses its default partition", file=sys.stderr)
    return LaunchOptions(launcher=args.launcher, folder=Path(args.submitit_dir) if args.submitit_dir else None,
                         partition=args.partition, gpus_per_job=args.gpus_per_job,
                         array_parallelism=args.array_parallelism, timeout_min=args.timeout_min,
                         cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb, slurm_params=extra, wait=args.wait,
                         retry_failed=args.retry_failed)


def suite_overrides_for(args) -> list[str]:
    """``--set`` items, plus ``defaults.device=cuda`` when Slurm jobs get GPUs and the suite asked for
    ``auto`` (this login node may have none; its compute nodes do)."""
    overrides = list(args.overrides)
    gpus = 1 if args.gpus_per_job is None else args.gpus_per_job
    if args.launcher == "slurm" and gpus > 0 and requested_device(args.suite, overrides) == "auto":
        overrides.append("defaults.device=cuda")
    return overrides


def run_launched(args) -> int:
    """``tokenbench run --launcher local|slurm``."""
    from .cli_run import report_and_headline
    from .results import safe_component
    from .runner import command_line
    from .suite import cell_label, describe, load_suite

    opts = options_from_args(args)
    suite = load_suite(args.suite, overrides=suite_overrides_for(args), only=args.only)
    print(describe(suite), file=sys.stderr)
    if args.dry_run:
        for i, c in enumerate(suite.cells(), 1):
            print(f"{i:4d}  {c['key']}  {c['mode']:<9} {c['device']:<6} b{c['batch_size']:<3} {cell_label(c)}")
        return 0
    summary = launch(suite, args.out, opts, command=command_line())
    if summary.failures:
        print("failed cells:\n  " + "\n  ".join(summary.failures), file=sys.stderr)
    suite_dir = Path(args.out) / safe_component(suite.name)
    if opts.launcher == "slurm" and not opts.wait:
        if summary.job_ids:
            print(f"{suite.name}: {summary.submitted} jobs submitted ({summary.skipped} cells already recorded); "
                  f"records go to {suite_dir}/<fingerprint>/records.jsonl; when they end: "
                  f"tokenbench report {shlex.quote(str(suite_dir))}", file=sys.stderr)
        return 0
    print(f"{suite.name}: {summary.ran} cells run ({summary.failed} failed), {summary.skipped} already recorded, "
          f"{summary.wall_s:.1f} s", file=sys.stderr)
    if not args.no_report and suite_dir.is_dir():
        report_and_headline(suite_dir, Path(args.report_dir))
    return 1 if summary.failed else 0
