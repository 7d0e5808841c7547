"""``--launcher inprocess``: every pending cell in this process, one after another, under a progress bar."""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..schema import Cell
from ..suite import Suite
from .cell import run_cell
from .clips import data_key
from .common import describe_error, torch_threads
from .models import RunCache
from .plan import CodeVersion, local_store, make_plan, noisy_keys, stale_keys, timed_noisy
from .run_lock import timing_lock
from .summary import RunSummary, finish_cell


def run_suite(suite: Suite, out: str | Path = "results", *, command: str = "", retry_failed: bool = False,
              cells: list[Cell] | None = None, show_progress: bool = True,
              cache: RunCache | None = None, stream=None, rerun_stale: bool = False,
              code: CodeVersion | None = None, rerun_noisy: bool = False,
              timeout_min: float | None = None) -> RunSummary:
    """Run every unrecorded cell of ``suite``, appending each record to the suite's store as it finishes.
    With ``rerun_stale``, cells whose record was measured at another commit than ``code`` (default: this
    checkout) or in a dirty tree run again too; the new record supersedes the old. A cell still running
    after ``timeout_min`` minutes is stopped and recorded as ``timeout`` (run again next time). Another run
    timing into ``out`` is waited for first (harness/run/run_lock.py)."""
    stream = stream if stream is not None else sys.stderr
    t_start = time.perf_counter()
    with timing_lock(out, lambda msg: tqdm.write(msg, file=stream), command):
        return _run_suite(suite, out, command=command, retry_failed=retry_failed, cells=cells,
                          show_progress=show_progress, cache=cache, stream=stream, rerun_stale=rerun_stale,
                          code=code, rerun_noisy=rerun_noisy, timeout_min=timeout_min, t_start=t_start)


def _run_suite(suite: Suite, out: str | Path, *, command: str, retry_failed: bool, cells: list[Cell] | None,
               show_progress: bool, cache: RunCache | None, stream, rerun_stale: bool, code: CodeVersion | None,
               rerun_noisy: bool, timeout_min: float | None, t_start: float) -> RunSummary:
    cells = suite.cells() if cells is None else cells
    _, store = local_store(out, suite)
    cache = cache or RunCache()
    code = code or CodeVersion.here()
    done = store.done_keys(include_failed=not retry_failed)
    stale = stale_keys(store, cells, code) & done
    noisy = noisy_keys(store, cells) & done
    if rerun_stale:
        done -= stale
    if rerun_noisy:
        done -= noisy
    plan = make_plan(cells, done, cache.cache_dir)
    pending = plan.pending
    summary = RunSummary(suite.name, len(cells), store.path, skipped=plan.skipped, stale=len(stale),
                         rerun_stale=rerun_stale, noisy=len(noisy), rerun_noisy=rerun_noisy)
    rules = [f for f, on in ((code.measured_elsewhere, rerun_stale), (timed_noisy, rerun_noisy)) if on]
    redo = (lambda rec: any(f(rec) for f in rules)) if rules else None

    def log(msg: str) -> None:
        tqdm.write(msg, file=stream)

    if not pending:
        log(f"{suite.name}: all {len(cells)} cells are recorded in {store.path}; nothing to run")
        return summary
    log(f"{suite.name}: {len(pending)} of {len(cells)} cells to run ({summary.skipped} recorded) → {store.path}")
    prepare(plan.prepare, cache, suite.device, suite.defaults.threads, log)
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    bar = tqdm(total=len(cells), initial=summary.skipped, unit="cell", file=stream, dynamic_ncols=True,
               mininterval=0.5 if interactive else 30.0,
               disable=not show_progress, bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} cells "
                                                     "[{elapsed}<{remaining}]{postfix}")
    data_in_use = None
    try:
        for i, cell in enumerate(pending, summary.skipped + 1):
            label = cell.label
            where = cell.where
            # the last cell's postfix goes before the new description is drawn (drawing it refreshes the bar)
            bar.set_postfix_str("", refresh=False)
            bar.set_description_str(f"cell {i}/{len(cells)} {cell.mode} {where} b{cell.batch_size} {label}",
                                    refresh=True)
            dk = data_key(cell)
            if data_in_use is not None and dk != data_in_use:
                cache.drop_clips_except(dk)  # keep memory to one dataset's clips at a time
            data_in_use = dk

            def progress(msg: str) -> None:
                bar.set_postfix_str(msg, refresh=interactive)

            measure = functools.partial(run_cell, cell, suite=suite.name, command=command, cache=cache,
                                        progress=progress, log=log,
                                        time_limit_s=timeout_min * 60 if timeout_min else None)
            done = finish_cell(cell, store, out, suite.name, measure, include_failed=not retry_failed,
                               stale=redo)
            if done.skipped:  # another run on this results folder has it: measure each cell once
                log(f"cell {i}/{len(cells)} {label} skipped: {done.why_skipped}")
                summary.skipped += 1
                bar.update(1)
                continue
            rec = done.record
            summary.ran_cell(rec["status"], f"{label} ({where}, {cell.mode}): {rec['error']}")
            if rec["status"] != "ok":
                what = "TIMED OUT" if rec["status"] == "timeout" else "FAILED"
                log(f"cell {i}/{len(cells)} {label} {what}: {rec['error']}")
            bar.update(1)
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - t_start
    return summary


def prepare(pretrains: list[dict[str, Any]], cache: RunCache, device: str, threads: int, log) -> None:
    """Train the self-trained models first, once each (cached on disk); a model that fails to train fails
    its cells one by one with this error, the run goes on."""
    for pre in pretrains:
        t0 = time.perf_counter()
        try:
            with torch_threads(threads):
                path = cache.pretrained(pre, device, log)
            log(f"trained {pre['model']} in {time.perf_counter() - t0:.0f} s → {path}")
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            log(f"training {pre['model']} failed: {describe_error(exc)}")
