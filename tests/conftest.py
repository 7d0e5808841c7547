"""Shared test configuration and builders.

Micro-benchmarks under tests/benchmarks/ only run with ``--benchmark-only`` (``tox -e bench``):
the default test run stays fast and never asserts on wall-clock.

Builders the test modules share (``from conftest import …``): a seeded model, a seeded noise video batch,
a file written under a test's folder.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Every test process (and the runs and jobs they start, which inherit it) shares one build of the
# cpu_varlen op, whatever TOKENBENCH_CACHE a test points at: it is built once, ~10 s, not once a test.
os.environ.setdefault("TOKENBENCH_EXT_CACHE", str(Path(tempfile.gettempdir()) / f"tokenbench-test-ext-{os.getuid()}"))

from tokenbench.harness.model import build_model

BENCH_DIR = Path(__file__).parent / "benchmarks"


def seeded_model(name: str = "vit_t", num_classes: int = 5, num_frames: int = 16, img_size: int = 64, **kwargs):
    """``build_model`` under ``torch.manual_seed(0)``, in eval mode: the same weights in every test."""
    torch.manual_seed(0)
    return build_model(name, num_classes, num_frames=num_frames, img_size=img_size, **kwargs).eval()


def noise_video(b: int = 1, t: int = 16, s: int = 224, seed: int = 0):
    """A seeded noise batch [b, 3, t, s, s] (noise is never static: RLT keeps every token of it)."""
    return torch.randn(b, 3, t, s, s, generator=torch.Generator().manual_seed(seed))


def write_file(folder: Path, name: str, text: str) -> Path:
    p = Path(folder) / name
    p.write_text(text)
    return p


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
    torch.manual_seed(0)
    yield
