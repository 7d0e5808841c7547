"""The single-node Slurm cluster the Slurm tests run on (``.ci/slurm-up``).

:func:`running_cluster` brings it up for a block (tests/test_slurm.py: its module fixture) and stops it at
the end (left running only when it was up before). With ``CI`` set the tests need it: a cluster that
cannot start fails them, and Slurm is installed from the OS packages when missing (``.ci/run`` runs as root on a
fresh machine). Elsewhere nothing is installed and the tests skip, saying why, when there is no Slurm or no root.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_UP = REPO / ".ci" / "slurm-up"
CANNOT_RUN_HERE = 3  # slurm-up's exit status: not root / Slurm missing and not installable


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@dataclass
class SlurmCluster:
    conf: Path  # its slurm.conf: SLURM_CONF for every Slurm command and every launcher

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def run(self, *cmd: str) -> str:
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), timeout=60)
        assert p.returncode == 0, f"{' '.join(cmd)}: {p.stderr or p.stdout}"
        return p.stdout

    def state(self, job_id: str) -> str:
        """``STATE|REASON`` of one job or array task, from squeue (accounting is off on this cluster)."""
        return self.run("squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T|%r").strip()


def _slurm_up(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if not in_ci():
        env["TOKENBENCH_SLURM_NO_INSTALL"] = "1"  # never install packages on a user's machine from pytest
    return subprocess.run(["bash", str(SLURM_UP), *args], capture_output=True, text=True, env=env, timeout=600)


@contextlib.contextmanager
def running_cluster() -> Iterator[SlurmCluster]:
    """Bring the cluster up (or fail / skip, see above) for the duration of the block."""
    was_up = _slurm_up("status").returncode == 0
    t0 = time.monotonic()
    p = _slurm_up("up")
    if p.returncode != 0:
        why = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])
        msg = f".ci/slurm-up could not start a Slurm cluster: {' / '.join(why[-6:])}"
        if in_ci():
            pytest.fail(msg + " (CI is set: the Slurm tests must run)", pytrace=False)
        pytest.skip(msg if p.returncode != CANNOT_RUN_HERE else f"no single-node Slurm here: {' / '.join(why)}")
    conf = next(line.split("=", 1)[1] for line in p.stdout.splitlines() if line.startswith("export SLURM_CONF="))
    print(f"\nSlurm cluster up in {time.monotonic() - t0:.1f} s ({conf})")
    try:
        yield SlurmCluster(Path(conf))
    finally:
        if not was_up:
            _slurm_up("down")


def wait_for(what: str, check: Callable[[], object], timeout: float = 120, every: float = 0.1):
    """Poll ``check`` until it returns something true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
