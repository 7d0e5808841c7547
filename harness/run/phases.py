"""Where a run's seconds go: a clock the cells of one process charge their phases to (clip preparation,
model preparation, calibration, the FLOP trace, the accuracy pass and its baseline, the paired timing,
training), and ``python -m tokenbench.harness.run.phases`` to measure one cell of each kind of a suite.

The clock costs two ``perf_counter`` calls a phase; a run reads it from its :class:`RunCache` (``cache.phases``).
Phases nest (model preparation inside a cell, pretraining inside it): a phase's time excludes the phases
opened inside it, so the shares add up to the whole.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class PhaseClock:
    """Seconds per phase, each phase's own (nested phases subtracted)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _stack: list[list[float]] = field(default_factory=list)  # per open phase: [start, seconds in children]

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self._stack.append([time.perf_counter(), 0.0])
        try:
            yield
        finally:
            start, inner = self._stack.pop()
            spent = time.perf_counter() - start
            self.seconds[phase] += spent - inner
            if self._stack:
                self._stack[-1][1] += spent

    def shares(self) -> dict[str, float]:
        total = sum(self.seconds.values()) or 1.0
        return {k: v / total for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])}


def kind(cell) -> tuple[str, str, str]:
    """A cell's kind for the measurement: its mode, data and reducer family (a sweep's points are one kind)."""
    return (cell.mode, cell.dataset_id or cell.dataset, cell.reducer)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile
    from pathlib import Path

    from ..report import write_report
    from ..results import ResultStore
    from ..suite import load_suite
    from .cell import run_cell
    from .models import RunCache

    ap = argparse.ArgumentParser(prog="python -m tokenbench.harness.run.phases",
                                 description="Run the first cell of each kind (mode, data, reducer) of a suite in "
                                             "one process, as a run would, and print where each cell's seconds went.")
    ap.add_argument("--suite", default="default")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a suite override, as in run")
    ap.add_argument("--all", action="store_true", help="every cell, not one of each kind")
    args = ap.parse_args(argv)
    suite = load_suite(args.suite, args.set)
    cells, seen = [], set()
    for c in suite.cells():
        if args.all or kind(c) not in seen:
            seen.add(kind(c))
            cells.append(c)
    cache = RunCache()
    out = Path(tempfile.mkdtemp(prefix="tokenbench-phases-"))
    store = ResultStore(out / suite.name / "local" / "records.jsonl")
    totals = PhaseClock()
    print(f"{'cell':<44} {'wall s':>7}  phases (s)")
    for c in cells:
        cache.phases = PhaseClock()
        t0 = time.perf_counter()
        rec = run_cell(c, suite=suite.name, cache=cache)
        wall = time.perf_counter() - t0
        store.append(rec)
        cache.phases.seconds["other"] += wall - sum(cache.phases.seconds.values())
        for k, v in cache.phases.seconds.items():
            totals.seconds[f"{c.mode}: {k}"] += v
        name = f"{c.mode} {c.dataset_id or c.dataset} {c.label}"[:44]
        text = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cache.phases.seconds.items(), key=lambda kv: -kv[1]))
        print(f"{name:<44} {wall:7.1f}  {text}" + ("" if rec["status"] == "ok" else f"  FAILED: {rec['error']}"),
              flush=True)
    t0 = time.perf_counter()
    write_report(out, out / "report")
    totals.seconds["report"] += time.perf_counter() - t0
    print("\nshares of the measured cells' time:")
    for k, v in totals.shares().items():
        print(f"  {k:<34} {100 * v:5.1f} %   ({totals.seconds[k]:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
