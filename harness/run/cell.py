"""One cell, one record: :func:`run_cell` never raises for a failing cell (a video that does not decode,
out of memory, non-finite logits, any exception): the record says ``failed`` with the error, or ``timeout``
when the cell ran past its time limit (``time_limit_s``, harness/run/time_limit.py; also submitit's
"timed-out" error, raised in a local job at its limit). Every record carries the hardware fingerprint and the
machine's 1-minute load average before and after the cell."""
from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import CellError
from ..fingerprint import load_average
from ..schema import Cell, make_record
from .common import describe_error, hardware_fingerprint, torch_threads, utc_now
from .measure import inference_cell, train_cell
from .models import RunCache
from .time_limit import CellTimeout, cell_time_limit


def run_cell(cell: Cell | Mapping[str, Any], *, suite: str = "adhoc", command: str = "",
             cache: RunCache | None = None, progress: Callable[[str], None] | None = None,
             log: Callable[[str], None] | None = None, time_limit_s: float | None = None) -> dict[str, Any]:
    """Measure one cell and return its record (harness/schema.py). Never raises for a failing cell; a cell
    still running after ``time_limit_s`` is stopped and recorded as ``timeout``.
    A cell given in its JSON shape keeps the ``key`` it carries."""
    cache = cache or RunCache()
    key = cell.get("key")
    cell = cell if isinstance(cell, Cell) else Cell.from_dict(cell)
    started, t0 = utc_now(), time.perf_counter()
    load_start = load_average()
    error, tb, metrics, env, status = None, None, {}, {}, None
    threads_in_force = torch.get_num_threads()
    try:
        with cell_time_limit(time_limit_s), torch_threads(int(cell.threads or 0)) as threads_in_force:
            torch.manual_seed(int(cell.seed))
            if cell.mode == "inference":
                metrics, env = inference_cell(cell, cache, progress, log)
            elif cell.mode == "train":
                metrics, env = train_cell(cell, cache, progress, log)
            else:
                raise CellError(f"unknown mode {cell.mode!r}")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, the suite goes on
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, CellTimeout) or _submitit_timeout(exc):
            status, metrics = "timeout", {}
            why = str(exc) if isinstance(exc, CellTimeout) else f"stopped at the job's time limit (submitit: {exc})"
            error = f"{why}; not measured, the next `tokenbench run` runs it again (give a longer --timeout-min)"
        else:
            error = describe_error(exc)
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
        if cell.device.startswith("cuda"):
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    if metrics and load_start is not None:
        # other work on the machine while this cell was timed (1-minute load average; compare with the
        # fingerprint's cpu_count): timings taken beside other tenants are slower and noisier
        metrics["load_avg_start"], metrics["load_avg_end"] = load_start, load_average()
    fp = hardware_fingerprint(cell.device, cell.dtype, threads_in_force,
                              attn_backend=env.pop("attn_backend", None))
    said = ("decoder", "decoder_version", "timer", "timing_allocator")  # how the clips were read and timed
    fp.update({k: v for k, v in env.items() if k in said})
    return make_record(cell, key=key, suite=suite, fingerprint=fp, metrics=metrics, error=error, traceback=tb,
                       started=started, finished=utc_now(), duration_s=round(time.perf_counter() - t0, 3),
                       command=command, weights=env.get("checkpoint"), status=status)


def _submitit_timeout(exc: BaseException) -> bool:
    """submitit's own handler of the time-limit signal raises this in a job that cannot be checkpointed."""
    try:
        from submitit.core.utils import UncompletedJobError
    except ImportError:
        return False
    return isinstance(exc, UncompletedJobError) and "timed-out" in str(exc)
