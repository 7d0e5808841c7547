"""One timing run at a time on a results folder: ``tokenbench run`` (``inprocess`` and ``local``) holds an
exclusive ``flock`` on ``<out>/.tokenbench-run.lock`` while it measures. A second run on the same ``--out``
says which run holds it and **waits** for it to end, then goes on with the cells still unrecorded: two runs
timing cells at the same moment on the same cores would each measure the other (the per-cell claims already
keep them from recording a cell twice; this keeps them from timing at once). Waiting rather than refusing:
the second run's cells are then measured on a quiet machine, and a run started twice does its work once.

The kernel releases the lock when its holder exits, however it dies; the file itself stays (empty of
meaning) and names the last holder.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_FILE = ".tokenbench-run.lock"


@contextlib.contextmanager
def timing_lock(out: str | Path, log: Callable[[str], None], command: str = "") -> Iterator[None]:
    """Hold ``<out>``'s run lock for the block, waiting (and saying so, once) while another run holds it."""
    path = Path(out) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 500, 0).decode("utf-8", "replace").strip() or "another process"
            log(f"another tokenbench run is timing cells into {out} ({holder}); waiting for it to end — two runs "
                "timing at once on one machine would measure each other")
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            log(f"the other run on {out} ended after {time.monotonic() - t0:.0f} s of waiting; going on with the "
                "cells it did not record")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
