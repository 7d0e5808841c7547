"""Training step time, RLT against random masking at RLT's budget (issue 15, deliverable 4).

Run (only collected with ``--benchmark-only``)::

    python -m pytest tests/benchmarks/test_bench_train_step.py --benchmark-only -s

The default suite's training comparison in one step: vit_t at 8×112², batch 32 clips of the synthetic
benchmark's train split, float32, AdamW. RLT (τ = 0.1, selection inside the step) and random masking at
the keep ratio RLT has on the same batch are timed alternately, the order flipped every round
(perf_counter, the threads torch has), each a whole step: forward, loss, backward, optimiser step. Random's
clips all keep the same count, so its attention is one dense batched call; RLT's are unequal, so it runs
the packed path — both backends of it, as separate arms of the same run:

    speed_ratio[backend] = median over rounds of (random's step time / RLT's step time)   (goal ≥ 0.97)

``TOKENBENCH_BENCH_ROUNDS`` (default 20) sets the rounds. The goal is on the CPU's ``auto`` backend.
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from tokenbench.harness import cpu_varlen
from tokenbench.harness.attention import choose_backend
from tokenbench.harness.model import build_model
from tokenbench.reducers.random import RandomMasking
from tokenbench.reducers.rlt import RLT

GOAL = 0.97
ROUNDS = int(os.environ.get("TOKENBENCH_BENCH_ROUNDS", "20"))
BATCH = 32


@pytest.fixture(scope="module")
def batch():
    from tokenbench.datasets import get_dataset, load_clips
    from tokenbench.harness.timing import to_model_input

    loaded = load_clips(get_dataset("synthetic", split="train", num_frames=8, img_size=112), BATCH)
    return to_model_input(loaded.clips), torch.as_tensor(loaded.labels)


def test_rlt_train_step_vs_random_at_its_budget(benchmark, batch):
    video, labels = batch
    rlt = RLT(threshold=0.1)
    keep = rlt.select(video).keep
    random = RandomMasking(keep=float(keep.float().mean()))
    torch.manual_seed(0)
    model = build_model("vit_t", int(labels.max()) + 1, num_frames=8, img_size=112).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    backends = ["sdpa"] + (["cpu_varlen"] if cpu_varlen.available() else [])

    def step(reducer, backend):
        model.attn_backend = backend
        loss = F.cross_entropy(model(video, reducer), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    arms = {"random": lambda: step(random, "auto")}
    arms.update({f"rlt_{b}": (lambda b=b: step(rlt, b)) for b in backends})
    benchmark.pedantic(arms[f"rlt_{choose_backend('cpu')}"], rounds=3, warmup_rounds=1)
    for arm in arms.values():
        arm()
    times: dict[str, list[float]] = {name: [] for name in arms}
    order = list(arms)
    for i in range(ROUNDS):
        for name in order[:: 1 if i % 2 else -1]:
            t0 = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - t0)
    ratio = {b: statistics.median(r / t for r, t in zip(times["random"], times[f"rlt_{b}"])) for b in backends}
    benchmark.extra_info.update(
        keep=float(keep.float().mean()), tokens=keep.flatten(1).sum(1).tolist(), threads=torch.get_num_threads(),
        rounds=ROUNDS, goal=GOAL, **{f"{n}_ms_median": statistics.median(t) * 1e3 for n, t in times.items()},
        **{f"speed_ratio_{b}": r for b, r in ratio.items()})
    print(f"\nvit_t 8×112², batch {BATCH}, RLT keeps {float(keep.float().mean()):.3f}: step random "
          f"{statistics.median(times['random']) * 1e3:.0f} ms; " + "; ".join(
              f"RLT on {b} {statistics.median(times[f'rlt_{b}']) * 1e3:.0f} ms ({ratio[b]:.3f}× random's speed)"
              for b in backends))
    auto = choose_backend("cpu")
    assert ratio[auto] >= GOAL, f"RLT's step on {auto} runs at {ratio[auto]:.3f}× random's speed (goal ≥ {GOAL})"
