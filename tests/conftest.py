"""Shared test configuration and builders.

Micro-benchmarks under tests/benchmarks/ only run with ``--benchmark-only`` (``tox -e bench``):
the default test run stays fast and never asserts on wall-clock.

Builders the test modules share (``from conftest import …``): a seeded model, a seeded noise video batch,
a file written under a test's folder, and a small suite's TOML text (``suite_toml``) with its parts.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# Every test process (and the runs and jobs they start, which inherit it) shares one build of the
# cpu_varlen op, whatever TOKENBENCH_CACHE a test points at: it is built once, ~10 s, not once a test.
os.environ.setdefault("TOKENBENCH_EXT_CACHE", str(Path(tempfile.gettempdir()) / f"tokenbench-test-ext-{os.getuid()}"))

from tokenbench.harness.interference import usable_cpus
from tokenbench.harness.model import build_model
from tokenbench.reducers import PackedTokens

BENCH_DIR = Path(__file__).parent / "benchmarks"


def seeded_model(name: str = "vit_t", num_classes: int = 5, num_frames: int = 16, img_size: int = 64, **kwargs):
    """``build_model`` under ``torch.manual_seed(0)``, in eval mode: the same weights in every test."""
    torch.manual_seed(0)
    return build_model(name, num_classes, num_frames=num_frames, img_size=img_size, **kwargs).eval()


def noise_video(b: int = 1, t: int = 16, s: int = 224, seed: int = 0):
    """A seeded noise batch [b, 3, t, s, s] (noise is never static: RLT keeps every token of it)."""
    return torch.randn(b, 3, t, s, s, generator=torch.Generator().manual_seed(seed))


def packed_tokens(lens: list[int], grid: tuple[int, int, int], seed: int = 0, dim: int = 8, heads: int = 2,
                  hd: int = 4, unit_size: bool = False) -> tuple[PackedTokens, torch.Tensor]:
    """Seeded packed tokens of clips ``lens`` long at random grid cells, and their keys [n, heads, hd]; sizes
    in [0.5, 1.5) (tokens merged before), or all 1 with ``unit_size``."""
    g = torch.Generator().manual_seed(seed)
    n = sum(lens)
    cu = F.pad(torch.tensor(lens, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    pos = torch.cat([torch.randperm(math.prod(grid), generator=g)[:k] for k in lens])
    x = torch.randn(n, dim, generator=g)
    size = torch.ones(n) if unit_size else torch.rand(n, generator=g) + 0.5
    keys = torch.randn(n, heads, hd, generator=g)
    return PackedTokens(x=x, cu_seqlens=cu, pos=pos, size=size, grid=grid), keys


@pytest.fixture
def one_thread():
    """One torch thread: counting, not timing, is far faster so on a machine shared with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_file(folder: Path, name: str, text: str) -> Path:
    p = Path(folder) / name
    p.write_text(text)
    return p


# The parts of the small suites the tests run: one untrained vit_t at 8×64², one window of one sample video,
# one batch of 2 timed once on one thread. A test names only what its subject needs to differ.
TINY_DEFAULTS = {"modes": ["inference"], "batch_sizes": [2], "repeats": 1, "warmup": 0, "threads": 1,
                 "time_clips": 2, "device": "cpu"}
TINY_MODEL = {"name": "vit_t", "num_frames": 8, "img_size": 64, "checkpoint": "none"}
BIKES = {"name": "samples", "options": {"windows": 1, "videos": ["bikes"]}}
# A model pretrained by the run itself on 8 synthetic clips for one epoch (the prepare step's smallest job).
PRETRAINED = {"checkpoint": None, "pretrain": {
    "dataset": "synthetic", "options": {"num_clips": 8}, "epochs": 1, "batch_size": 8, "warmup_epochs": 0}}


class Raw(str):
    """TOML text written as it is (a value a test wants malformed, or spelled its own way)."""


def _toml(value) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    return "[" + ", ".join(_toml(v) for v in value) + "]"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _table(header: str, entries: dict) -> str:
    lines = [f"{_key(k)} = {_toml(v)}" for k, v in entries.items() if v is not None]
    return "\n".join([header, *lines]) + "\n"


def suite_toml(name: str = "tiny", *reducers: str | dict, defaults: dict | None = None,
               model: dict | None = None, datasets: tuple[dict, ...] = (BIKES,), train: dict | None = None,
               tables: str = "") -> str:
    """A small suite's TOML text: ``TINY_DEFAULTS`` updated by ``defaults``, one ``TINY_MODEL`` updated by
    ``model`` (a key set to None is left out), ``datasets``, then ``reducers`` (a name, or an entry's table
    as a dict; ``"none"`` when none is given). ``tables`` is TOML text added at the end as it is."""
    parts = [_table("[suite]", {"name": name}), _table("[defaults]", {**TINY_DEFAULTS, **(defaults or {})})]
    if train is not None:
        parts.append(_table("[train]", train))
    parts.append(_table("[[models]]", {**TINY_MODEL, **(model or {})}))
    parts += [_table("[[datasets]]", d) for d in datasets]
    parts += [_table("[[reducers]]", {"name": r} if isinstance(r, str) else r) for r in reducers or ("none",)]
    return "\n".join(parts) + tables


def write_suite(folder: Path, name: str = "tiny", *reducers: str | dict, **parts) -> Path:
    """``suite_toml(name, *reducers, **parts)`` written to ``folder/<name>.toml``."""
    return write_file(folder, f"{name}.toml", suite_toml(name, *reducers, **parts))




def pytest_xdist_auto_num_workers(config):
    """``-n auto``: a worker a core, at most 4 (each holds a torch, its models and clips)."""
    return max(1, min(4, usable_cpus()))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # micro-benchmarks time in one process (pytest-benchmark turns itself off under xdist)
    if config.getoption("benchmark_only", default=False) and getattr(config.option, "numprocesses", None):
        config.option.numprocesses, config.option.dist = 0, "no"
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        # each worker's torch (and the runs a test starts, through OMP_NUM_THREADS) takes its share of the
        # cores: workers × a thread each core keeps OpenMP from spin-waiting on a core another worker holds
        share = str(max(1, usable_cpus() // int(workers)))
        os.environ["OMP_NUM_THREADS"] = share
        torch.set_num_threads(int(share))


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
