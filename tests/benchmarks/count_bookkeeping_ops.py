"""Per-forward bookkeeping at batch 1, counted rather than timed (load-independent): aten ops, aten-level host
reads (``_local_scalar_dense``, ``nonzero``) and ``Tensor.tolist`` calls of one vit_t 16×224² forward of one
clip (random weights, seeded noise) without a reducer, with ToMe r = 50 and STA r = 64 (the packing suite's).

    python tests/benchmarks/count_bookkeeping_ops.py

The logits' sum is printed so that a change that cuts operations can be checked not to change the output.
"""
from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tokenbench.harness.model import build_model
from tokenbench.reducers.registry import get_reducer

READS = (torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero)


class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        self.reads += func.overloadpacket in READS
        return func(*args, **(kwargs or {}))


def main() -> None:
    torch.manual_seed(0)
    model = build_model("vit_t", 400).eval()
    video = torch.randn(1, 3, 16, 224, 224)
    tolist = torch.Tensor.tolist
    calls = collections.Counter()

    def counted(self):
        calls["tolist"] += 1
        return tolist(self)

    torch.Tensor.tolist = counted
    try:
        for name, params in (("none", {}), ("tome", {"r": 50}), ("sta", {"r": 64})):
            reducer = get_reducer(name, **params)
            with torch.inference_mode():
                model(video, reducer.fresh())  # warm: lazily built state is not counted
                calls.clear()
                with OpCount() as count:
                    logits = model(video, reducer.fresh())
            print(f"{name:5s} aten ops {sum(count.ops.values()):5d}  host reads {count.reads}  "
                  f"tolist {calls['tolist']:3d}  logits sum {logits.double().sum().item():.10f}")
    finally:
        torch.Tensor.tolist = tolist


if __name__ == "__main__":
    main()
