"""What reading attention costs a reducer (issue 25): the exact chunked statistics at one scored block of a
vit_b on 16×224² clips (1,568 tokens), the block's own attention left on its fused kernel, as on every other
block.

Run (only collected with ``--benchmark-only``)::

    python -m pytest tests/benchmarks/test_bench_attention_hooks.py --benchmark-only

For each statistic (vid-TLDR's row entropy, the mean attention received of attn_prune), ``extra_info`` holds:

* ``extra_gflops_per_clip_per_layer`` — the statistic's multiply-adds (the logits, n²·D a clip), from the
  analytic count, and ``fvcore_gflops_per_clip_per_layer`` — what fvcore counts in the hook of a traced
  forward (they must agree);
* ``share_of_forward_per_layer`` — the statistic's time at one scored block over a whole forward pass
  without a reducer (median of paired runs), and ``forward_share_measured`` — the same from timing the
  forward with and without the scoring hook (noisier: the difference of two forwards);
* ``backend`` — the attention backend every block ran, the same with and without the hook.

The benchmark itself times the statistic alone on the context recorded from the real forward.
All numbers are provisional until re-timed on a quiet machine.
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from tokenbench.harness.flops import count_flops
from tokenbench.harness.model import BASELINE, build_model
from tokenbench.reducers.attention_stats import attention_entropy, attention_received, statistic_flops
from tokenbench.reducers.base import NO_ATTENTION, Reducer

BATCH = 2  # a vit_b forward at 2 × 1568 tokens takes seconds on the 2-core CPU machine
LAYER = 0
STATS = {"entropy": lambda ctx: attention_entropy(ctx, bias=False),
         "received": lambda ctx: attention_received(ctx, bias=True)}


class _Score(Reducer):
    """Computes one statistic at one block and changes nothing; keeps the last context it was handed."""

    def __init__(self, stat, layer=LAYER):
        self.stat, self.layer, self.context = stat, layer, None

    def attention_layers(self, depth):
        return frozenset({self.layer})

    def after_attention(self, tokens, keys, layer, depth, attn=NO_ATTENTION):
        if layer == self.layer:
            score = self.stat(attn)
            self.context = attn
            # use the score (adds nothing), or a jit trace drops it as dead code and fvcore counts nothing
            return tokens.replace(x=tokens.x + 0.0 * score.sum())
        return tokens


@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return build_model("vit_b", num_classes=400).eval()


@pytest.fixture(scope="module")
def video():
    return torch.randn(BATCH, 3, 16, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def baseline(vit_b, video):
    """(median seconds, backend) of the forward without a reducer, shared by both statistics."""
    with torch.no_grad():
        vit_b(video)  # warm-up
    return _median_forward(vit_b, video, BASELINE, 3)


def _median_forward(model, video, reducer, rounds):
    times = []
    with torch.no_grad():
        for _ in range(rounds):
            t0 = time.perf_counter()
            model(video, reducer)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), model.last_stats.backend


@pytest.mark.parametrize("name", sorted(STATS))
def test_statistic_cost_at_one_scored_block(benchmark, vit_b, video, baseline, name):
    stat = STATS[name]
    probe = _Score(stat)
    with torch.no_grad():
        vit_b(video, probe)  # warm-up, and the context of a real forward
    ctx = probe.context
    base_s, base_backend = baseline
    hook_s, hook_backend = _median_forward(vit_b, video, _Score(stat), 3)
    result = benchmark.pedantic(stat, args=(ctx,), rounds=5, warmup_rounds=1)
    stat_s = benchmark.stats.stats.median
    heads, head_dim = vit_b.heads, vit_b.embed_dim // vit_b.heads
    analytic = statistic_flops(ctx.lens, heads, head_dim) / BATCH / 1e9
    traced = count_flops(vit_b, video[:1], _Score(stat)).by_layer[LAYER]["reducer"]
    benchmark.extra_info.update(
        model="vit_b", clip="16x224x224", batch=BATCH, threads=torch.get_num_threads(), statistic=name,
        tokens_per_clip=list(ctx.lens), extra_gflops_per_clip_per_layer=analytic,
        fvcore_gflops_per_clip_per_layer=traced, forward_ms_median=1000 * base_s,
        statistic_ms_median=1000 * stat_s, share_of_forward_per_layer=stat_s / base_s,
        forward_share_measured=(hook_s - base_s) / base_s, backend=base_backend)
    print(f"\n{name}: +{analytic:.3f} GFLOPs a clip per scored block (fvcore {traced:.3f}); "
          f"{1000 * stat_s:.0f} ms = {100 * stat_s / base_s:.1f}% of a vit_b forward ({1000 * base_s:.0f} ms, "
          f"batch {BATCH}); with the hook in the forward {100 * (hook_s - base_s) / base_s:+.1f}%; "
          f"backend {base_backend}")
    assert traced == pytest.approx(analytic, rel=1e-9)
    assert hook_backend == base_backend  # the block's attention path is unchanged
    assert result.shape == (sum(ctx.lens),) and bool(torch.isfinite(result).all())
