"""One cell, one record: :func:`run_cell` never raises for a failing cell (a video that does not decode,
out of memory, non-finite logits, any exception): the record says ``failed`` with the error. Every record
carries the hardware fingerprint and the machine's 1-minute load average before and after the cell."""
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


def run_cell(cell: Cell | Mapping[str, Any], *, suite: str = "adhoc", command: str = "",
             cache: RunCache | None = None, progress: Callable[[str], None] | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure one cell and return its record (harness/schema.py). Never raises for a failing cell.
    A cell given in its JSON shape keeps the ``key`` it carries."""
    cache = cache or RunCache()
    key = cell.get("key")
    cell = cell if isinstance(cell, Cell) else Cell.from_dict(cell)
    started, t0 = utc_now(), time.perf_counter()
    load_start = load_average()
    error, tb, metrics, env = None, None, {}, {}
    threads_in_force = torch.get_num_threads()
    try:
        with torch_threads(int(cell.threads or 0)) as threads_in_force:
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
    fp.update({k: v for k, v in env.items() if k in ("decoder", "decoder_version", "timer")})
    return make_record(cell, key=key, suite=suite, fingerprint=fp, metrics=metrics, error=error, traceback=tb,
                       started=started, finished=utc_now(), duration_s=round(time.perf_counter() - t0, 3),
                       command=command, weights=env.get("checkpoint"))
