"""Shared test configuration.

Micro-benchmarks under tests/benchmarks/ only run with ``--benchmark-only`` (``tox -e bench``):
the default test run stays fast and never asserts on wall-clock.
"""
from __future__ import annotations

from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).parent / "benchmarks"


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    kept, dropped = [], []
    for item in items:
        (dropped if BENCH_DIR in Path(str(item.fspath)).parents else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def _deterministic_threads():
    import torch

    torch.manual_seed(0)
    yield
