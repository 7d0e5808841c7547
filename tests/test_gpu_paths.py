"""The GPU path, checked on a CPU (issue 7): backend choice for (device, dtype, autocast) combinations,
what the packed attention hands the varlen kernels (flash_attn and torch's varlen_attn replaced by
recording stand-ins: they are third-party kernels that need a GPU), cu_seqlens construction, autocast
cells end to end, torch.compile cells (slow), and imports that never need CUDA."""
from __future__ import annotations

import importlib.machinery
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import seeded_model, suite_toml

from tokenbench.harness import attention, cpu_varlen
from tokenbench.harness.attention import (
    backends_for,
    choose_backend,
    compute_dtype,
    packed_attention,
    padded_reference,
)
from tokenbench.harness.model import BASELINE
from tokenbench.harness.run import RunCache, autocast_for, run_cell
from tokenbench.harness.suite import load_suite
from tokenbench.harness.timing import _timer
from tokenbench.reducers.base import Selection

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
CPU_AUTO = "cpu_varlen" if cpu_varlen.available() else "sdpa"  # the CPU's auto backend on this machine
LENGTHS = [37, 5, 64, 1, 23]


@pytest.mark.parametrize("device,dtype,cuda,flash,varlen,cpu_op,expected", [
    ("cuda", BF16, True, True, True, True, ["flash_attn", "torch_varlen", "sdpa"]),
    ("cuda", F16, True, True, False, False, ["flash_attn", "sdpa"]),
    ("cuda", BF16, True, False, True, False, ["torch_varlen", "sdpa"]),
    ("cuda", F32, True, True, True, True, ["sdpa"]),  # the flash kernels take half precision only
    ("cuda", BF16, False, True, True, False, ["sdpa"]),  # no CUDA runtime
    ("cpu", BF16, True, True, True, False, ["sdpa"]),
    ("cpu", F32, False, False, False, False, ["sdpa"]),
    ("cpu", F32, False, False, False, True, ["cpu_varlen", "sdpa"]),  # the CPU op, where it built
    ("cpu", BF16, True, True, True, True, ["cpu_varlen", "sdpa"]),
])
def test_backend_candidates_per_device_and_dtype(device, dtype, cuda, flash, varlen, cpu_op, expected):
    assert backends_for(device, dtype, cuda=cuda, flash_attn=flash, torch_varlen=varlen, cpu_varlen=cpu_op) == expected


def test_choose_backend_with_device_strings_on_this_machine():
    for dtype in (F32, F16, BF16):
        assert choose_backend("cpu", dtype) == CPU_AUTO
    if not torch.cuda.is_available():
        assert choose_backend("cuda", BF16) == "sdpa" and choose_backend("cuda:1", F16) == "sdpa"
    with pytest.raises(ValueError, match="flash_attn.*cpu.*available here: (cpu_varlen, )?sdpa"):
        choose_backend("cpu", BF16, "flash_attn")


def test_compute_dtype_is_the_autocast_dtype_of_the_device_type():
    assert compute_dtype("cpu", F32) == F32
    for amp in (BF16, F16):
        with torch.autocast("cpu", dtype=amp):
            assert compute_dtype("cpu", F32) == amp  # float32 weights, computed in the autocast dtype
            assert compute_dtype(torch.device("cpu"), F16) == F16  # already half: unchanged
            assert compute_dtype("cuda", F32) == F32  # autocast is per device type
    with torch.autocast("cpu", dtype=BF16), pytest.raises(ValueError, match="bfloat16"):
        choose_backend("cpu", F32, "torch_varlen")  # the error names the dtype that would run


# --- stand-ins for the third-party kernels -------------------------------------------------------------
def _reference(q, k, v, cu, scale):
    """Per-sequence attention in float32, returned in q's dtype (what a varlen kernel computes)."""
    cu = cu.tolist()
    outs = []
    for a, b in zip(cu[:-1], cu[1:]):
        qi, ki, vi = (t[a:b].float().transpose(0, 1) for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qi, ki, vi, scale=scale).transpose(0, 1))
    return torch.cat(outs).to(q.dtype)


@pytest.fixture()
def flash_standin(monkeypatch):
    """An importable ``flash_attn`` module whose ``flash_attn_varlen_func`` records its arguments."""
    calls = []

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, **kw):
        calls.append(dict(q=q, k=k, v=v, cu_q=cu_seqlens_q, cu_k=cu_seqlens_k, max_q=max_seqlen_q,
                          max_k=max_seqlen_k, scale=softmax_scale, causal=causal, kw=kw))
        return _reference(q, k, v, cu_seqlens_q, softmax_scale)

    mod = types.ModuleType("flash_attn")
    mod.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    mod.flash_attn_varlen_func = flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn", mod)
    attention.flash_attn_installed.cache_clear()
    yield calls
    attention.flash_attn_installed.cache_clear()


def _qkv(lengths, heads=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    q, k, v = (torch.randn(n, heads, dim, generator=g) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)  # not int32 yet
    return q, k, v, cu


def _check_packing(call_cu, call_max, q, lengths):
    assert call_cu.dtype == torch.int32 and call_cu.device == q.device
    assert call_cu.tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert bool((torch.diff(call_cu) > 0).all())  # monotone: every sequence has a token
    assert isinstance(call_max, int) and call_max == max(lengths)


def test_flash_attn_gets_half_precision_packed_tensors_under_autocast(flash_standin):
    q, k, v, cu = _qkv(LENGTHS)
    with torch.autocast("cpu", dtype=BF16):  # float32 activations, bf16 autocast: what the GPU path does
        out, ran = packed_attention(q, k, v, cu, backend="flash_attn", scale=0.2)
    assert ran == "flash_attn" and len(flash_standin) == 1
    c = flash_standin[0]
    for t in (c["q"], c["k"], c["v"]):
        assert t.dtype == BF16 and tuple(t.shape) == (sum(LENGTHS), 4, 16)  # [N_total, heads, head_dim]
    _check_packing(c["cu_q"], c["max_q"], q, LENGTHS)
    assert c["cu_k"] is c["cu_q"] and c["max_k"] == c["max_q"]
    assert c["scale"] == 0.2 and c["causal"] is False
    ref = padded_reference(q.double(), k.double(), v.double(), cu.tolist(), scale=0.2)
    assert out.dtype == BF16 and float((out.double() - ref).norm() / ref.norm()) < 2e-2


def test_flash_attn_takes_half_inputs_as_they_are_and_refuses_float32(flash_standin):
    q, k, v, cu = _qkv(LENGTHS, seed=1)
    packed_attention(q.half(), k.half(), v.half(), cu, backend="flash_attn")
    assert flash_standin[-1]["q"].dtype == F16 and flash_standin[-1]["scale"] is None
    with pytest.raises(ValueError, match="float16/bfloat16"):
        packed_attention(q, k, v, cu, backend="flash_attn")  # never float32 into a half-only kernel
    assert len(flash_standin) == 1


def test_a_key_bias_never_reaches_the_flash_kernel(flash_standin):
    q, k, v, cu = _qkv(LENGTHS, seed=2)
    out, ran = packed_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu, backend="flash_attn",
                                bias=torch.zeros(sum(LENGTHS)))
    assert ran == "sdpa" and not flash_standin  # ToMe's proportional attention: SDPA with a float mask


def test_torch_varlen_gets_the_same_packing(monkeypatch):
    from torch.nn.attention import varlen

    calls = []

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, **kw):
        calls.append((query, cu_seq_q, cu_seq_k, max_q, max_k, scale, kw))
        return _reference(query, key, value, cu_seq_q, scale)

    monkeypatch.setattr(varlen, "varlen_attn", varlen_attn)
    q, k, v, cu = _qkv(LENGTHS, seed=3)
    with torch.autocast("cpu", dtype=F16):
        out, ran = packed_attention(q, k, v, cu, backend="torch_varlen", scale=0.25)
    assert ran == "torch_varlen" and len(calls) == 1
    query, cu_q, cu_k, max_q, max_k, scale, kw = calls[0]
    assert query.dtype == F16 and tuple(query.shape) == tuple(q.shape) and scale == 0.25 and not kw
    _check_packing(cu_q, max_q, q, LENGTHS)
    assert cu_k is cu_q and max_k == max_q and out.dtype == F16


def test_choose_backend_reads_the_autocast_dtype_not_the_float32_weights(monkeypatch, flash_standin):
    """A CUDA machine with flash-attn, simulated: torch.cuda.is_available (third party) says yes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_backend("cuda", F32) == "sdpa"  # float32 weights, no autocast
    was_on, was_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)  # the state torch.autocast("cuda", bfloat16) sets on a GPU
    torch.set_autocast_dtype("cuda", BF16)
    try:
        assert choose_backend("cuda", F32) == "flash_attn"
        assert choose_backend("cuda:0", F32, "torch_varlen") == "torch_varlen"
        assert choose_backend("cpu", F32) == CPU_AUTO  # autocast on CUDA says nothing about the CPU
        monkeypatch.delitem(sys.modules, "flash_attn")
        attention.flash_attn_installed.cache_clear()
        if not attention.flash_attn_installed():  # the real package is not installed here
            assert choose_backend("cuda", F32) == "torch_varlen"
    finally:
        torch.set_autocast_enabled("cuda", was_on)
        torch.set_autocast_dtype("cuda", was_dtype)


# --- the backbone's packing -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_t():
    return seeded_model("vit_t", 5, num_frames=8, img_size=64)


def _selection(b, grid, counts):
    keep = torch.zeros(b, *grid, dtype=torch.bool)
    flat = keep.view(b, -1)
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate(counts):
        flat[i, torch.randperm(flat.shape[1], generator=g)[:n]] = True
    return Selection(keep=keep, lengths=keep.long())


def test_cu_seqlens_built_by_the_backbone_are_int32_on_the_device_and_monotone(vit_t):
    counts = [64, 1, 30, 17]
    video = torch.randn(len(counts), 3, 8, 64, 64)
    tokens = vit_t.embed(video, _selection(len(counts), vit_t.grid, counts))
    cu = tokens.cu_seqlens
    assert cu.dtype == torch.int32 and cu.device == video.device and cu.shape == (len(counts) + 1,)
    assert cu[0] == 0 and cu[-1] == tokens.x.shape[0] == sum(counts)
    assert torch.diff(cu).tolist() == counts and bool((torch.diff(cu) > 0).all())


def test_every_block_hands_the_kernel_the_packed_batch_in_the_autocast_dtype(vit_t, flash_standin):
    counts = [64, 9, 40]
    video = torch.randn(len(counts), 3, 8, 64, 64)
    sel = _selection(len(counts), vit_t.grid, counts)
    with torch.inference_mode(), torch.autocast("cpu", dtype=BF16):
        tokens = vit_t.embed(video, sel)
        ref = tokens
        for i, blk in enumerate(vit_t.blocks):
            tokens, ran, _, _ = blk(tokens, BASELINE, i, vit_t.depth, "flash_attn", False, True)
            assert ran == ("flash_attn", "varlen")  # (backend, path): one packed kernel call
            ref, _, _, _ = blk(ref, BASELINE, i, vit_t.depth, "sdpa", False, True)
    assert len(flash_standin) == vit_t.depth == 12
    for c in flash_standin:
        assert c["q"].dtype == BF16 and tuple(c["q"].shape) == (sum(counts), vit_t.heads, 64)
        _check_packing(c["cu_q"], c["max_q"], c["q"], counts)
        assert c["scale"] == pytest.approx(64 ** -0.5)
    assert torch.allclose(tokens.x.float(), ref.x.float(), rtol=0.05, atol=0.05)


# --- cells ----------------------------------------------------------------------------------------------
AMP = suite_toml(
    "amp", {"name": "rlt", "params": {"threshold": 0.1}},
    defaults={"modes": None, "repeats": 2, "autocast": ["none", "bfloat16"]},
    datasets=({"name": "samples", "max_clips": 2, "options": {"windows": 1}},))


def test_autocast_is_a_suite_dimension_and_cells_run_under_it(tmp_path, vit_t):
    f = tmp_path / "amp.toml"
    f.write_text(AMP)
    cells = load_suite(f).cells()
    assert [c.get("autocast") for c in cells] == [None, "bfloat16"] and {c["dtype"] for c in cells} == {"float32"}
    plain = load_suite(f, overrides=['defaults.autocast="none"']).cells()
    assert plain[0]["key"] == cells[0]["key"] != cells[1]["key"]  # cells without autocast keep their keys

    x = torch.randn(1, 3, 8, 64, 64)
    with torch.inference_mode():
        with autocast_for(cells[1]):
            assert vit_t(x).dtype == BF16
        with autocast_for(cells[0]):
            assert vit_t(x).dtype == F32

    rec = run_cell(cells[1], suite="amp", cache=RunCache(cache_dir=tmp_path / "cache"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["cell"]["autocast"] == "bfloat16" and rec["cell"]["label"].endswith("[bfloat16 autocast]")
    assert rec["fingerprint"]["dtype"] == "float32" and rec["fingerprint"]["attn_backend"] == CPU_AUTO
    assert rec["fingerprint"]["timer"] == "perf_counter" and rec["metrics"]["time_ms_median"] > 0
    assert "peak_mem_mb" not in rec["metrics"]  # measured on CUDA only; never a made-up number


def test_autocast_with_half_weights_is_refused(tmp_path):
    f = tmp_path / "amp.toml"
    f.write_text(AMP.replace('device = "cpu"', 'device = "cpu"\ndtype = "bfloat16"'))
    from tokenbench.harness.suite import SuiteError

    with pytest.raises(SuiteError, match="amp.toml:.*dtype"):
        load_suite(f)


def test_cuda_devices_are_timed_with_cuda_events():
    assert _timer(torch.device("cuda"))[0] == "cuda_event"  # built lazily: no CUDA call here
    assert _timer(torch.device("cpu"))[0] == "perf_counter"


@pytest.mark.slow
def test_a_compiled_cell_runs_and_says_so(tmp_path):
    """torch.compile on a CPU: about a minute of compilation on the 2-core machine."""
    f = tmp_path / "amp.toml"
    f.write_text(AMP.replace('autocast = ["none", "bfloat16"]', "compile = true").replace("warmup = 0", "warmup = 1"))
    cell = load_suite(f).cells()[0]
    rec = run_cell(cell, suite="amp", cache=RunCache(cache_dir=tmp_path / "cache"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["cell"]["compile"] is True and rec["metrics"]["time_ms_median"] > 0


def test_importing_the_harness_needs_neither_cuda_nor_the_optional_extras():
    code = ("import sys; import tokenbench.harness.cli as c; c.build_parser(); "
            "import tokenbench.harness.model, tokenbench.harness.timing, tokenbench.harness.run.launch; "
            "bad = [m for m in ('flash_attn', 'submitit') if m in sys.modules]; "
            "assert not bad, bad; import torch; print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --- the static review's fixes (issue 27) -----------------------------------------------------------------
def test_torch_varlen_without_a_scale_keyword_is_called_without_one(monkeypatch):
    """torch 2.9's varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, is_causal, return_aux) has no scale; 2.10 on
    take it as a keyword. The backbone's scale is head_dim ** -0.5, 2.9's fixed one; any other is refused."""
    from torch.nn.attention import varlen

    calls = []

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        calls.append((max_q, is_causal))
        return _reference(query, key, value, cu_seq_q, None)

    monkeypatch.setattr(varlen, "varlen_attn", varlen_attn)
    attention._varlen_takes_scale.cache_clear()
    try:
        q, k, v, cu = _qkv(LENGTHS, dim=16, seed=4)
        with torch.autocast("cpu", dtype=BF16):
            out, ran = packed_attention(q, k, v, cu, backend="torch_varlen", scale=16 ** -0.5)
            assert ran == "torch_varlen" and calls == [(max(LENGTHS), False)]
            with pytest.raises(ValueError, match="no scale"):
                packed_attention(q, k, v, cu, backend="torch_varlen", scale=0.3)
    finally:
        attention._varlen_takes_scale.cache_clear()


def test_equal_lengths_take_the_dense_call_on_every_kernel_unless_the_cell_packs(flash_standin):
    q, k, v, cu = _qkv([16, 16, 16], seed=5)
    with torch.autocast("cpu", dtype=BF16):
        out, ran, path = attention.attention_call(q, k, v, cu, backend="flash_attn")
        assert (ran, path) == ("sdpa", "dense") and not flash_standin  # one batched SDPA call
        _, ran, path = attention.attention_call(q, k, v, cu, backend="flash_attn", dense=False)
    assert (ran, path) == ("flash_attn", "varlen") and len(flash_standin) == 1  # attn_path "packed": the kernel
    ref = padded_reference(q.double(), k.double(), v.double(), cu.tolist())
    assert float((out.double() - ref).norm() / ref.norm()) < 2e-2


def test_host_lengths_spare_the_device_read_of_cu_seqlens(flash_standin):
    """On a GPU every read of cu_seqlens is a host sync, once a layer; the backbone hands its host lengths."""
    q, k, v, _ = _qkv(LENGTHS, seed=6)
    on_meta = torch.empty(len(LENGTHS) + 1, dtype=torch.int32, device="meta")  # reading it would raise
    out, ran, path = attention.attention_call(q, k, v, on_meta, backend="sdpa", lens=LENGTHS)
    assert (ran, path) == ("sdpa", "packed") and out.shape == q.shape
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    with torch.autocast("cpu", dtype=BF16):
        attention.attention_call(q, k, v, cu, backend="flash_attn", lens=LENGTHS)
    assert flash_standin[-1]["max_q"] == max(LENGTHS) and isinstance(flash_standin[-1]["max_q"], int)


def test_a_record_can_say_which_varlen_kernels_are_missing(flash_standin):
    assert "flash_attn" not in attention.missing_kernels("cuda")  # the stand-in module imports
    assert attention.missing_kernels("cpu") == ([] if cpu_varlen.available() else ["cpu_varlen"])
    sys.modules.pop("flash_attn")
    attention.flash_attn_installed.cache_clear()
    if not attention.flash_attn_installed():
        assert "flash_attn" in attention.missing_kernels("cuda:0")
