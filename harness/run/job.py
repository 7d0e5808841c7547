"""What runs inside a submitit job (local or Slurm): one cell measured and appended to the store of the
machine it ran on, under the cell's claim (two sweeps on one results folder measure it once), or the
suite's self-trained models prepared before the cells that need them."""
from __future__ import annotations

from typing import Any

from ..results import ResultStore, store_path
from ..schema import Cell
from .cell import run_cell
from .common import hardware_fingerprint, torch_threads
from .executors import job_info
from .models import RunCache, ensure_pretrained
from .plan import CodeVersion
from .summary import finish_cell


def fingerprint_for(device: str, dtype: str, threads: int) -> dict[str, Any]:
    """The fingerprint :func:`runner.run_cell` will record for a cell on this machine."""
    with torch_threads(int(threads or 0)) as in_force:
        return hardware_fingerprint(device, dtype, in_force)


def run_job(cell: Cell, suite: str, out: str, command: str = "", launcher: str = "local",
            retry_failed: bool = False, rerun_stale: CodeVersion | None = None,
            time_limit_s: float | None = None) -> dict[str, Any]:
    """One cell in a job: skip it when this machine's store already has it (measured by ``rerun_stale``'s
    code, when given: the submitting checkout's), else measure it and append its record (``timeout`` when
    it runs past ``time_limit_s``). Returns a short summary (the record itself is in the store)."""
    def log(msg: str) -> None:
        print(msg, flush=True)

    label = cell.label
    fp = fingerprint_for(cell.device, cell.dtype, cell.threads)
    store = ResultStore(store_path(out, suite, fp["id"]))
    stale = rerun_stale.measured_elsewhere if rerun_stale is not None else None
    if cell.key in store.done_keys(include_failed=not retry_failed, stale=stale):
        log(f"{label}: already recorded in {store.path}; nothing to do")
        return {"key": cell.key, "status": "skipped", "error": None, "store": str(store.path)}

    def measure() -> dict[str, Any]:
        log(f"{label}: {cell.mode} {cell.model}/{cell.dataset} b{cell.batch_size} → {store.path}")
        rec = run_cell(cell, suite=suite, command=command, log=log, progress=None, time_limit_s=time_limit_s)
        rec["launcher"] = job_info(launcher)
        return rec

    done = finish_cell(cell, store, out, suite, measure, include_failed=not retry_failed, stale=stale)
    if done.skipped:  # another run on this results folder has it: measure each cell once
        log(f"{label}: {done.why_skipped}; nothing to do")
        return {"key": cell.key, "status": "skipped", "error": None, "store": str(store.path)}
    rec = done.record
    log(f"{label}: {rec['status']}{' — ' + rec['error'] if rec['error'] else ''} in {rec['duration_s']:.1f} s")
    return {"key": cell.key, "status": rec["status"], "error": rec["error"], "store": str(done.store),
            "duration_s": rec["duration_s"]}


def prepare_job(pretrains: list[dict[str, Any]], device: str, threads: int = 0) -> list[str]:
    """Train (once, cached under a file lock) every self-trained model the cells need."""
    cache = RunCache()
    out = []
    with torch_threads(threads):
        for pre in pretrains:
            out.append(str(ensure_pretrained(pre, cache.cache_dir, device, lambda m: print(m, flush=True))))
    return out
