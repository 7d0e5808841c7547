"""What the host did while a cell's arms were timed (docs/architecture.md §5: interference is part of the record).

:class:`HostProbe` reads ``/proc/stat`` (runnable tasks, CPU steal) at the start and end of every timed arm
run, not around the whole cell; :class:`Interference` turns those samples and the spread of the paired
ratios into the rules that mark a cell timed under interference. ``harness.timing`` takes the samples.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .intervals import quartiles


@dataclass(frozen=True)
class HostSample:
    """One read of ``/proc/stat``: runnable tasks on the host now, and the aggregate CPU jiffies."""

    procs_running: int
    steal: int  # jiffies the hypervisor ran another guest while this one wanted a CPU
    total: int  # all jiffies of the aggregate cpu line
    own_running: int = 1  # of procs_running, this process's own threads (the reader, and spinning workers)


def read_proc_stat(text: str) -> HostSample | None:
    """Parse ``/proc/stat``; None when it has neither line (not Linux)."""
    running, cpu = None, None
    for line in text.splitlines():
        if line.startswith("procs_running "):
            running = int(line.split()[1])
        elif line.startswith("cpu "):
            cpu = [int(x) for x in line.split()[1:]]
    if running is None or cpu is None:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already in user/nice
    fields = cpu[:8]
    steal = fields[7] if len(fields) > 7 else 0
    return HostSample(running, steal, sum(fields))


class HostProbe:
    """Samples ``/proc/stat`` around the timed runs. On a host without it every read is empty and the
    result says nothing (:meth:`Interference.unknown`)."""

    def __init__(self, path: str = "/proc/stat", tasks: str = "/proc/self/task"):
        self.path, self.tasks = path, tasks
        self.samples: list[HostSample] = []

    def sample(self) -> None:
        try:
            with open(self.path) as f:
                got = read_proc_stat(f.read())
        except OSError:
            return
        if got is not None:
            self.samples.append(dataclasses.replace(got, own_running=own_running_threads(self.tasks)))


def own_running_threads(tasks: str = "/proc/self/task") -> int:
    """This process's threads in state R now (at least 1: the one reading). torch's OpenMP workers spin a
    while after each parallel region, so at the instants the probe reads they are often running: they are
    the cell's own load, not interference."""
    n = 0
    try:
        for tid in os.listdir(tasks):
            try:
                with open(f"{tasks}/{tid}/stat") as f:
                    stat = f.read()
            except OSError:  # the thread ended
                continue
            n += stat[stat.rfind(")") + 2:stat.rfind(")") + 3] == "R"  # the state follows the (name)
    except OSError:
        return 1
    return max(1, n)


# The rules that mark a cell timed under interference (constants, so a report can say which fired):
# * runqueue: other tasks were runnable beside the cell's own (procs_running, read at each timed arm's start and
#   end, less this process's own running threads: the reader and torch's spinning workers) — more of them
#   on average than the CPUs the cell's threads leave free, plus RUNQUEUE_SLACK: someone waited for a CPU;
# * steal: the hypervisor took more than STEAL_PCT % of the CPU time during the timed runs;
# * spread: the paired ratios' interquartile range is above SPREAD_REL of their median: the arms did not see the
#   same machine. Quiet, a short arm's own jitter widens it (145 quiet cells of seven default-suite runs on the
#   2-core EPYC: median 0.05, 99th percentile 0.15, largest 0.17, at 0.10 one cell in eleven was flagged, six
#   of the seven runs had a flag); an on-off CPU burner beside the timing gave 0.42-0.56 (docs/measurement.md).
RUNQUEUE_SLACK = 0.5
STEAL_PCT = 5.0
SPREAD_REL = 0.20
MIN_REPEATS_FOR_SPREAD = 4


@dataclass(frozen=True)
class Interference:
    """What the host did while a cell's arms were timed, and which rules say it was disturbed."""

    runnable_others: float | None  # mean runnable tasks besides this process's timing thread
    steal_pct: float | None  # CPU steal over the timed runs, % of all CPU time
    ratio_spread: float | None  # (q3 − q1) / median of the paired ratios
    threads: int
    cpus: int  # CPUs this process may run on

    @classmethod
    def unknown(cls, threads: int, cpus: int) -> Interference:
        return cls(None, None, None, threads, cpus)

    @classmethod
    def measure(cls, samples: Sequence[HostSample], ratios: Sequence[float], threads: int,
                cpus: int) -> Interference:
        runnable = statistics.fmean(max(0, s.procs_running - s.own_running) for s in samples) if samples else None
        steal = None
        if len(samples) >= 2:
            d_total = samples[-1].total - samples[0].total
            d_steal = samples[-1].steal - samples[0].steal
            steal = 100.0 * d_steal / d_total if d_total > 0 else 0.0
        spread = None
        if len(ratios) >= MIN_REPEATS_FOR_SPREAD:
            q1, med, q3 = quartiles(ratios)
            spread = (q3 - q1) / med if med > 0 else None
        return cls(runnable, steal, spread, threads, cpus)

    @property
    def reasons(self) -> list[str]:
        """The rules that fired, in a fixed order: ``runqueue``, ``steal``, ``spread`` (empty: a clean cell)."""
        out = []
        free = max(0, self.cpus - self.threads)
        if self.runnable_others is not None and self.runnable_others > free + RUNQUEUE_SLACK:
            out.append("runqueue")
        if self.steal_pct is not None and self.steal_pct > STEAL_PCT:
            out.append("steal")
        if self.ratio_spread is not None and self.ratio_spread > SPREAD_REL:
            out.append("spread")
        return out

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    def as_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"interference": "+".join(self.reasons)}
        if self.runnable_others is not None:
            out["host_runnable_others"] = self.runnable_others
        if self.steal_pct is not None:
            out["host_steal_pct"] = self.steal_pct
        if self.ratio_spread is not None:
            out["speedup_rel_iqr"] = self.ratio_spread
        return out


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
