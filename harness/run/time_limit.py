"""A per-cell time limit inside the process running the cell (``tokenbench run --timeout-min``): the in-process
runner's, and a local job's ahead of submitit's own signal, so that a cell that runs too long — a plugin that
never returns — is recorded as ``timeout`` (not measured; the next run runs it again), as Slurm's are.

The limit is a ``SIGALRM`` that raises :class:`CellTimeout` wherever Python is running: it stops Python code
(a busy loop, a sleep), not a native call that never returns to the interpreter. It is a ``BaseException``
so that a plugin's ``except Exception`` cannot swallow it. Signals reach the main thread only: elsewhere the
limit is off (:func:`cell_time_limit` says nothing and does nothing).
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator


class CellTimeout(BaseException):  # noqa: N818 - it is the limit, not an error of the cell's code
    """Raised in the cell when its time limit passes."""


def limit_text(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


@contextlib.contextmanager
def cell_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CellTimeout` in this block after ``seconds`` (None or ≤ 0: no limit)."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    t0 = time.monotonic()

    def fire(signum, frame):
        raise CellTimeout(f"stopped at the cell's time limit ({limit_text(seconds)}, --timeout-min) after "
                          f"{time.monotonic() - t0:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
