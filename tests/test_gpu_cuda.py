"""The CUDA paths on a real GPU (marker ``gpu``; every test skips without CUDA): the varlen kernels
(torch's ``varlen_attn``, ``flash_attn`` where installed) against the padded reference, the dense SDPA path
with and without a bias, CUDA-event timing against a host clock, peak memory net of the resident clips, an
autocast cell end to end, and a training step's backward through the varlen kernel. ``.ci/gpu-run`` runs
them (``pytest -m gpu``) before the GPU suite. On a CPU they are collected and skipped, so a broken import
or fixture still shows in the default run."""
from __future__ import annotations

import time

import pytest
import torch
from conftest import seeded_model, suite_toml

from tokenbench.harness.attention import (
    attention_call,
    flash_attn_installed,
    padded_reference,
    torch_varlen_available,
)
from tokenbench.harness.model import BASELINE
from tokenbench.harness.timing import _timer, time_forward

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BF16 = torch.bfloat16
LENGTHS = [37, 5, 64, 1, 23]


def _qkv(lengths, heads=4, dim=64, dtype=BF16, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    # q, k, v as the backbone hands them over: strided views of one [N, 3, heads, dim] projection
    q, k, v = torch.randn(n, 3, heads, dim, generator=g).to("cuda", dtype).unbind(1)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    return q, k, v, cu


def _rel_err(out, q, k, v, lengths, bias=None, scale=None):
    cu = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    ref = padded_reference(q.double(), k.double(), v.double(), cu,
                           None if bias is None else bias.double(), scale=scale)
    return float((out.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("backend", ["torch_varlen", "flash_attn"])
def test_varlen_kernel_matches_the_padded_reference(backend):
    if backend == "torch_varlen" and not torch_varlen_available():
        pytest.skip("this torch has no torch.nn.attention.varlen")
    if backend == "flash_attn" and not flash_attn_installed():
        pytest.skip("flash-attn is not installed (the torch varlen kernel stands in)")
    q, k, v, cu = _qkv(LENGTHS)
    out, ran, path = attention_call(q, k, v, cu, backend=backend, scale=64 ** -0.5, lens=LENGTHS)
    assert (ran, path) == (backend, "varlen") and out.dtype == BF16 and out.shape == q.shape
    assert _rel_err(out, q, k, v, LENGTHS, scale=64 ** -0.5) < 2e-2
    # the same without host lengths (read back from cu_seqlens), and equal lengths kept on the kernel
    out2, _, _ = attention_call(q, k, v, cu, backend=backend, scale=64 ** -0.5)
    assert torch.equal(out, out2)
    q, k, v, cu = _qkv([16] * 4, seed=1)
    out, ran, path = attention_call(q, k, v, cu, backend=backend, dense=False)
    assert path == "varlen" and _rel_err(out, q, k, v, [16] * 4) < 2e-2


def test_dense_sdpa_path_on_cuda_with_and_without_a_bias():
    q, k, v, cu = _qkv([32] * 3, seed=2)
    out, ran, path = attention_call(q, k, v, cu, backend="torch_varlen" if torch_varlen_available() else "sdpa")
    assert (ran, path) == ("sdpa", "dense") and _rel_err(out, q, k, v, [32] * 3) < 2e-2
    bias = torch.rand(q.shape[0], device="cuda").log1p()  # ToMe's log(size), positive sizes
    out, ran, path = attention_call(q, k, v, cu, backend="sdpa", bias=bias)
    assert path == "dense" and _rel_err(out, q, k, v, [32] * 3, bias=bias.float()) < 2e-2
    q, k, v, cu = _qkv(LENGTHS, seed=3)
    out, _, path = attention_call(q, k, v, cu, backend="sdpa", bias=bias.new_zeros(q.shape[0]), lens=LENGTHS)
    assert path == "packed" and _rel_err(out, q, k, v, LENGTHS) < 2e-2


def test_cuda_event_timer_agrees_with_a_synchronised_host_clock():
    name, timed = _timer(torch.device("cuda"))
    a = torch.randn(2048, 2048, device="cuda", dtype=BF16)

    def work():
        for _ in range(50):
            a @ a

    work()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    ms = timed(work)  # returns after the end event completed
    host_ms = (time.perf_counter() - t0) * 1000
    assert name == "cuda_event" and 0 < ms <= host_ms * 1.05 + 0.5
    assert ms > 0.3 * host_ms  # the events bracket the work, not only its launch


def test_peak_memory_counts_the_arm_not_the_resident_clips():
    model = seeded_model("vit_t", 5, num_frames=8, img_size=64).cuda()
    clips = torch.randn(4, 3, 8, 64, 64, device="cuda")
    ballast = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # 256 MB resident beside the clips
    res = time_forward(model, clips, BASELINE, warmup=1, repeats=2, batch_size=2)
    del ballast
    assert res.timer == "cuda_event" and res.peak_mem_mb is not None and res.baseline_peak_mem_mb is not None
    assert 0 < res.peak_mem_mb < 256 and 0 < res.baseline_peak_mem_mb < 256
    assert res.speedup is not None and 0.5 < res.speedup < 2.0


def test_an_autocast_cell_runs_end_to_end_on_cuda(tmp_path):
    from tokenbench.harness.run import RunCache, run_cell
    from tokenbench.harness.suite import load_suite

    f = tmp_path / "g.toml"
    f.write_text(suite_toml(
        "g", {"name": "rlt", "params": {"threshold": 0.1}}, datasets=({"name": "synthetic", "max_clips": 4},),
        defaults={"modes": None, "threads": None, "batch_sizes": [4], "repeats": 3, "warmup": 1,
                  "device": "cuda", "autocast": "bfloat16", "time_clips": 4}))
    cell = load_suite(f).cells()[0]
    rec = run_cell(cell, suite="g", cache=RunCache(cache_dir=tmp_path / "cache"))
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert rec["fingerprint"]["timer"] == "cuda_event" and m["peak_mem_mb"] > 0 and m["time_ms_median"] > 0
    want = "flash_attn" if flash_attn_installed() else "torch_varlen" if torch_varlen_available() else "sdpa"
    assert rec["fingerprint"]["attn_backend"] in (want, "sdpa")  # equal-length batches take the dense call


def test_a_training_step_backpropagates_through_the_varlen_kernel():
    if not torch_varlen_available() and not flash_attn_installed():
        pytest.skip("no varlen kernel")
    from tokenbench.reducers import get_reducer

    backend = "flash_attn" if flash_attn_installed() else "torch_varlen"
    model = seeded_model("vit_t", 5, num_frames=8, img_size=64, attn_backend=backend).cuda().train()
    video = torch.randn(3, 3, 8, 64, 64, device="cuda")
    video[0, :, :4] = video[0, :, :1]  # one clip half static: unequal lengths under RLT
    with torch.autocast("cuda", dtype=BF16):
        loss = model(video, get_reducer("rlt", threshold=0.1)).float().logsumexp(1).mean()
    loss.backward()
    assert model.last_stats.attn_path == "varlen" and model.last_stats.backend == backend
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
