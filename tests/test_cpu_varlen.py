"""The cpu_varlen backend (harness.cpu_varlen): forward and gradients equal the float64 padded reference on
packed batches of unequal lengths, through each way the op cuts a batch, and the harness falls back to
sdpa, saying why, where the op cannot be built."""
from __future__ import annotations

import pytest
import torch

from tokenbench.harness import cpu_varlen
from tokenbench.harness.attention import attention_call, choose_backend, padded_reference
from tokenbench.harness.timing import fixed_threads

pytestmark = pytest.mark.skipif(cpu_varlen._compiler() is None, reason="no C++ compiler to build the op")

# short sequences share the threads as one piece each; long ones (>= 512) run whole, or cut by head and
# key chunk in the backward when the heads do not divide over the threads
CASES = {
    "short": [37, 5, 64, 1, 23, 200],
    "long and short": [700, 3, 515, 90],
    "one long": [900],
    "with an empty one": [40, 0, 600, 17],
}


def _qkv(lengths, heads, dim=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(sum(lengths), 3, heads, dim, generator=g, dtype=dtype).requires_grad_(True)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return qkv, cu


def test_the_build_flags_are_part_of_the_cached_library_name(monkeypatch):
    # a library built without -fopenmp (before the flag was added) must not be loaded for one built with it
    cxx = cpu_varlen._compiler()
    with_flags = cpu_varlen._library_path(cxx)
    monkeypatch.setattr(cpu_varlen, "FLAGS", tuple(f for f in cpu_varlen.FLAGS if f != "-fopenmp"))
    assert cpu_varlen._library_path(cxx) != with_flags


@pytest.mark.parametrize("threads", [1, 2])
def test_the_pieces_share_the_threads(threads):
    # ATen's parallel_for is a header template: an op built without OpenMP ran every piece in turn
    with fixed_threads(threads):
        assert cpu_varlen.region_threads() == threads


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("heads", [3, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_gradients_equal_float64_reference(case, heads, threads):
    qkv, cu = _qkv(CASES[case], heads)
    grad = torch.randn(qkv.shape[0], heads, qkv.shape[-1], generator=torch.Generator().manual_seed(1),
                       dtype=qkv.dtype)
    with fixed_threads(threads):
        out = cpu_varlen.packed_sdpa(*qkv.unbind(1), cu)  # strided views, as the model's fused projection
        (got,) = torch.autograd.grad(out, qkv, grad)
    ref = padded_reference(*qkv.unbind(1), cu)
    (want,) = torch.autograd.grad(ref, qkv, grad)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-12, rtol=0), float((out - ref).abs().max())
    assert torch.allclose(got, want, atol=1e-12, rtol=0), float((got - want).abs().max())


def test_float32_and_bfloat16_close_to_reference():
    qkv, cu = _qkv(CASES["long and short"], 3)
    ref = padded_reference(*qkv.detach().unbind(1), cu)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        out = cpu_varlen.packed_sdpa(*qkv.detach().to(dtype).unbind(1), cu)
        assert out.dtype == dtype
        assert float((out.double() - ref).norm() / ref.norm()) < tol


def test_gradcheck_on_short_sequences():
    qkv, cu = _qkv([3, 5, 1], heads=2, dim=4)
    assert torch.autograd.gradcheck(lambda x: cpu_varlen.packed_sdpa(*x.unbind(1), cu), (qkv,))


def test_harness_runs_it_and_names_it():
    qkv, cu = _qkv(CASES["short"], 3, dtype=torch.float32)
    q, k, v = qkv.detach().unbind(1)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    out, ran, path = attention_call(q, k, v, cu_t, backend="cpu_varlen")
    assert (ran, path) == ("cpu_varlen", "varlen")
    loop, ran_loop, path_loop = attention_call(q, k, v, cu_t, backend="sdpa")
    assert (ran_loop, path_loop) == ("sdpa", "packed")
    assert torch.allclose(out, loop, atol=1e-6)
    # equal lengths take the one dense batched call, and say so
    q2, k2, v2 = (t[:60] for t in (q, k, v))
    assert attention_call(q2, k2, v2, torch.tensor([0, 30, 60], dtype=torch.int32), backend="cpu_varlen")[1:] == (
        "sdpa", "dense")
    # a key bias (ToMe's proportional attention) stays on sdpa
    assert attention_call(q, k, v, cu_t, backend="cpu_varlen", bias=torch.zeros(q.shape[0]))[1] == "sdpa"


def test_model_output_equals_the_sdpa_loop():
    from conftest import noise_video, seeded_model

    from tokenbench.reducers.rlt import RLT

    video = noise_video(3, 16, 64)
    video[0] = video[0, :, :1]  # static: RLT keeps its first tubelets only
    video[1, :, 8:] = video[1, :, 7:8]  # static from frame 8 on
    outs = {}
    for backend in ("sdpa", "cpu_varlen"):
        model = seeded_model(attn_backend=backend)
        with torch.no_grad():
            outs[backend] = model(video, RLT(threshold=0.1))
        assert len(set(model.last_stats.tokens_in)) == 3  # unequal lengths: the packed path, not the dense one
        assert (model.last_stats.backend, model.last_stats.attn_path) == (
            (backend, "varlen") if backend == "cpu_varlen" else (backend, "packed"))
    assert torch.allclose(outs["sdpa"], outs["cpu_varlen"], atol=1e-5)


@pytest.mark.parametrize("cxx,reason", [("no-such-compiler", "no C++ compiler"), ("false", "failed")])
def test_without_a_build_auto_falls_back_to_sdpa(monkeypatch, tmp_path, cxx, reason):
    monkeypatch.setenv("CXX", cxx)
    monkeypatch.setenv("TOKENBENCH_EXT_CACHE", str(tmp_path / "ext"))
    cpu_varlen.available.cache_clear()
    try:
        assert not cpu_varlen.available()
        assert reason in cpu_varlen.unavailable_reason()
        assert choose_backend("cpu") == "sdpa"
        with pytest.raises(ValueError, match="cpu_varlen.*cannot run on cpu"):
            choose_backend("cpu", requested="cpu_varlen")
        assert not list((tmp_path / "ext").glob("*.so"))  # a failed build leaves nothing behind
    finally:
        cpu_varlen.available.cache_clear()
        monkeypatch.undo()
        cpu_varlen._failure.clear()
        assert cpu_varlen.available()
