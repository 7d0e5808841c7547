"""Packed attention equals a padded, masked float64 reference on batches of unequal lengths."""
from __future__ import annotations

import pytest
import torch

from tokenbench.harness.attention import (
    attention_call,
    available_backends,
    choose_backend,
    packed_attention,
    padded_reference,
)

LENGTHS = [37, 5, 64, 1, 23]


def _qkv(lengths, heads=4, dim=16, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    q, k, v = (torch.randn(n, heads, dim, generator=g, dtype=torch.float64) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


def _rel_err(out, ref):
    return float((out.double() - ref).norm() / ref.norm())


def _backends_here():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = []
    for dev in devices:
        for dtype in (torch.float32, torch.float16, torch.bfloat16) if dev == "cuda" else (torch.float32,):
            out += [(dev, dtype, b) for b in available_backends(dev, dtype)]
    return out


@pytest.mark.parametrize("device,dtype,backend", _backends_here())
def test_packed_equals_padded_float64_reference(device, dtype, backend):
    q, k, v, cu = _qkv(LENGTHS)
    ref = padded_reference(q, k, v, cu.tolist())
    out, ran = packed_attention(*(t.to(device, dtype) for t in (q, k, v)), cu.to(device), backend=backend)
    assert ran == backend
    assert out.shape == q.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # the bound is for float32
    assert _rel_err(out.cpu(), ref) < tol


def test_padded_reference_is_exact_softmax_attention():
    # The reference itself, checked against a direct per-sequence formula in float64.
    q, k, v, cu = _qkv([3, 7])
    ref = padded_reference(q, k, v, cu.tolist())
    a, b = 3, 10
    qi, ki, vi = (t[a:b].transpose(0, 1) for t in (q, k, v))
    direct = ((qi @ ki.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1) @ vi
    assert torch.allclose(ref[a:b], direct.transpose(0, 1), atol=1e-12)


def test_key_bias_matches_reference():
    q, k, v, cu = _qkv(LENGTHS, seed=1)
    bias = torch.rand(q.shape[0], dtype=torch.float64).log1p()
    ref = padded_reference(q, k, v, cu.tolist(), bias=bias)
    out, ran = packed_attention(q.float(), k.float(), v.float(), cu, backend="sdpa", bias=bias.float())
    assert ran == "sdpa"
    assert _rel_err(out, ref) < 1e-5


def test_dense_fast_path_identical_for_equal_lengths():
    q, k, v, cu = _qkv([16, 16, 16])
    q, k, v = q.float(), k.float(), v.float()
    dense, _ = packed_attention(q, k, v, cu, dense=True)
    loop, _ = packed_attention(q, k, v, cu, dense=False)
    assert torch.allclose(dense, loop, atol=1e-6)
    assert _rel_err(dense, padded_reference(q.double(), k.double(), v.double(), cu.tolist())) < 1e-5


def test_attention_never_crosses_sequences():
    # Changing clip 1's values must not change clip 0's output.
    q, k, v, cu = _qkv([8, 8, 9])
    out1, _ = packed_attention(q.float(), k.float(), v.float(), cu)
    v2 = v.clone()
    v2[8:] += 100.0
    out2, _ = packed_attention(q.float(), k.float(), v2.float(), cu)
    assert torch.equal(out1[:8], out2[:8])
    assert not torch.allclose(out1[8:16], out2[8:16])


def test_backend_choice_on_cpu_and_errors():
    from tokenbench.harness import cpu_varlen

    assert choose_backend("cpu") == ("cpu_varlen" if cpu_varlen.available() else "sdpa")
    assert choose_backend("cpu", requested="sdpa") == "sdpa"
    with pytest.raises(ValueError, match="cannot run on cpu"):
        choose_backend("cpu", requested="flash_attn")
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        choose_backend("cpu", requested="nope")


def test_attention_call_names_the_path_that_ran():
    q, k, v, cu = _qkv([6, 6, 6])
    out, ran, path = attention_call(q, k, v, cu)
    assert (ran, path) == ("sdpa", "dense")
    loop, _, path_off = attention_call(q, k, v, cu, dense=False)
    assert path_off == "packed"
    assert torch.allclose(out, loop)  # the same attention either way
    q, k, v, cu = _qkv(LENGTHS)
    assert attention_call(q, k, v, cu)[2] == "packed"  # unequal lengths: per sequence
    q, k, v, cu = _qkv([6, 6])
    assert attention_call(q, k, v, cu, bias=torch.zeros(12, dtype=q.dtype))[2] == "dense"
