"""Shared test configuration and builders.

Micro-benchmarks under tests/benchmarks/ only run with ``--benchmark-only`` (``tox -e bench``):
the default test run stays fast and never asserts on wall-clock.

Builders the test modules share (``from conftest import …``): a seeded model, a seeded noise video batch,
a file written under a test's folder, and a small suite's TOML text (``suite_toml``) with its parts.
"""
from __future__ import annotations

import json
import os
import re
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
