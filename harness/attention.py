"""Attention over packed sequences (docs/architecture.md §2).

Backends, all taking q, k, v of shape [N_total, heads, head_dim] and ``cu_seqlens`` [B+1]:

* ``sdpa`` — loop ``F.scaled_dot_product_attention`` over the ``cu_seqlens`` slices: the fallback everywhere and
  the one path that takes a bias (the CPU's ``auto`` is ``cpu_varlen`` where a compiler builds it); faster on a
  CPU than one padded, masked batch or jagged nested tensors (docs/performance.md has the measurements). When every
  sequence has the same length it takes one dense batched call instead (``dense=True``), which gives the same result.
* ``cpu_varlen`` — one op a layer on CPU (tokenbench.harness.cpu_varlen): torch's flash kernel on pieces of
  the packed batch in one parallel region, built from source the first time (needs a C++ compiler; without
  one ``auto`` takes ``sdpa``). The CPU's ``auto`` when it builds.
* ``torch_varlen`` — ``torch.nn.attention.varlen.varlen_attn`` (CUDA only; torch ≥ 2.9; ``scale`` is a
  keyword from 2.10 on, and 2.9's fixed ``head_dim ** -0.5`` is the backbone's scale).
* ``flash_attn`` — ``flash_attn.flash_attn_varlen_func`` (CUDA, fp16/bf16, optional extra ``gpu``);
  imported only when chosen, never at module load.

With every kernel, equal lengths take one dense batched SDPA call (``dense=True``, the model's
``dense_fast_path``): it is the same attention, and on CUDA SDPA picks its own fastest kernel (flash, cuDNN or
memory-efficient). ``dense=False`` (a cell's ``attn_path = "packed"``) keeps every call on the chosen kernel,
equal lengths included, so that all arms of a cell run the same varlen path.

An additive bias (ToMe's proportional attention, ``log(size)`` on the logits) is not accepted by the
flash kernels, so a call with a bias always runs through ``sdpa``. Every call reports which backend
actually ran (:func:`packed_attention` returns it), and the model records it, with the *path*
(:func:`attention_call` returns both): ``dense`` (one batched call, equal lengths), ``packed`` (the
per-sequence loop) or ``varlen`` (one packed kernel call). Paths differ in speed for the same FLOPs, so a
timing that does not say which ran cannot separate a reducer's selection from its kernel shape.

FLOP counting (tokenbench.harness.flops) traces the per-sequence path, so each sequence's length is
visible to the counter; a single packed varlen call hides them inside ``cu_seqlens``.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenbench.reducers.base import lengths

from . import cpu_varlen  # torch only at import; the op is built when first asked for


@functools.cache
def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@functools.cache
def torch_varlen_available() -> bool:
    try:
        from torch.nn.attention import varlen  # noqa: F401
    except Exception:
        return False
    return hasattr(varlen, "varlen_attn")


HALF = (torch.float16, torch.bfloat16)  # the only dtypes the varlen flash kernels take


@functools.cache
def _varlen_takes_scale() -> bool:
    from torch.nn.attention.varlen import varlen_attn

    return "scale" in inspect.signature(varlen_attn).parameters


def _torch_varlen(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_len: int, scale: float | None) -> Tensor:
    from torch.nn.attention.varlen import varlen_attn

    if _varlen_takes_scale():  # keyword-only from torch 2.10 on, beside window_size and return_aux
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale)
    # torch 2.9's varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, is_causal, return_aux) has no scale: it
    # always scales by head_dim ** -0.5, which is what the backbone uses; any other scale is refused
    if scale is not None and not math.isclose(scale, q.shape[-1] ** -0.5, rel_tol=1e-6):
        raise ValueError(f"this torch's varlen_attn takes no scale (it uses head_dim ** -0.5); got {scale}")
    return varlen_attn(q, k, v, cu, cu, max_len, max_len)


def _flash_attn(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_len: int, scale: float | None) -> Tensor:
    from flash_attn import flash_attn_varlen_func  # optional extra "gpu": imported only when it runs

    return flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, softmax_scale=scale, causal=False)


def _cpu_varlen(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_len: int, scale: float | None) -> Tensor:
    return cpu_varlen.packed_sdpa(q, k, v, cu.tolist(), scale)


@dataclass(frozen=True)
class VarlenKernel:
    """A packed varlen attention kernel for one device type and the dtypes it takes; no additive bias."""

    name: str
    run: Callable[[Tensor, Tensor, Tensor, Tensor, int, float | None], Tensor]  # q, k, v, cu, max_len, scale
    installed: Callable[[], bool]
    device_type: str = "cuda"
    dtypes: tuple[torch.dtype, ...] = HALF
    why_not: Callable[[], str | None] = lambda: None  # why it is not installed here, when it can say

    def missing(self) -> str:
        """Why this kernel cannot run here, for a message (its own reason, else that it is not installed)."""
        return self.why_not() or f"{self.name} is not installed"


# The backend table, best first. ``sdpa`` (per-sequence, any device and dtype, takes a bias) is always
# last; a new kernel is one entry here (the suite validates ``attn_backend`` against BACKENDS).
KERNELS: tuple[VarlenKernel, ...] = (
    VarlenKernel("flash_attn", _flash_attn, lambda: flash_attn_installed()),
    VarlenKernel("torch_varlen", _torch_varlen, lambda: torch_varlen_available()),
    VarlenKernel("cpu_varlen", _cpu_varlen, cpu_varlen.available, "cpu", cpu_varlen.DTYPES,
                 cpu_varlen.unavailable_reason),
)
BACKENDS = ("sdpa",) + tuple(k.name for k in reversed(KERNELS))


def missing_kernels(device: torch.device | str) -> list[str]:
    """The varlen kernels of ``device``'s type that are not installed here: what a record says stood in
    (the next kernel in :data:`KERNELS`, else ``sdpa``), e.g. ``["flash_attn"]`` on a GPU without flash-attn."""
    dev_type = torch.device(device).type
    return [k.name for k in KERNELS if k.device_type == dev_type and not k.installed()]


def compute_dtype(device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype attention runs in: under ``torch.autocast`` for the device's type, float32 inputs are
    computed in the autocast dtype (the weights stay float32); otherwise ``dtype`` itself."""
    dev = torch.device(device)
    if dtype == torch.float32 and torch.is_autocast_enabled(dev.type):
        return torch.get_autocast_dtype(dev.type)
    return dtype


def backends_for(device_type: str, dtype: torch.dtype, *, cuda: bool, **installed: bool) -> list[str]:
    """Backends for a device type and compute dtype given which kernels are installed (``flash_attn=True``
    …), best first (pure logic: :func:`available_backends` probes the machine and calls this)."""
    usable = {"cuda": cuda, "cpu": True}
    out = [k.name for k in KERNELS if k.device_type == device_type and usable.get(device_type)
           and dtype in k.dtypes and installed.get(k.name)]
    out.append("sdpa")
    return out


def available_backends(device: torch.device | str, dtype: torch.dtype = torch.float32) -> list[str]:
    """Backends that can run on ``device`` with ``dtype`` (the autocast dtype when autocast is on for the
    device, see :func:`compute_dtype`), best first."""
    device = torch.device(device)
    dtype = compute_dtype(device, dtype)
    # probe only the kernels that could run here (probing cpu_varlen builds it)
    probed = {k.name: k.installed() for k in KERNELS if k.device_type == device.type and dtype in k.dtypes}
    return backends_for(device.type, dtype, cuda=torch.cuda.is_available(), **probed)


def choose_backend(device: torch.device | str, dtype: torch.dtype = torch.float32,
                   requested: str | None = None) -> str:
    """The backend to use: ``requested`` when given (checked), else the best available."""
    avail = available_backends(device, dtype)
    if requested in (None, "auto"):
        _say_fallbacks(device, dtype, avail)
        return avail[0]
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose from auto, {', '.join(BACKENDS)}")
    if requested not in avail:
        kernel = kernel_named(requested)
        why = ""
        if kernel is not None and kernel.device_type == torch.device(device).type and \
                compute_dtype(device, dtype) in kernel.dtypes:  # it would run here, were it installed
            why = f" ({kernel.missing()})"
        raise ValueError(
            f"attention backend {requested!r} cannot run on {torch.device(device)} with "
            f"{compute_dtype(device, dtype)}{why}; "
            f"available here: {', '.join(avail)}"
        )
    return requested


def _say_fallbacks(device: torch.device | str, dtype: torch.dtype, avail: list[str]) -> None:
    """A kernel that would run here but could not be made (no compiler …) and can say why: one line saying
    what ``auto`` takes instead (once a process)."""
    dev = torch.device(device)
    for k in KERNELS:
        if k.device_type == dev.type and compute_dtype(dev, dtype) in k.dtypes and k.name not in avail:
            why = k.why_not()
            if why:
                _say_once(k.name, why, avail[0])


@functools.cache
def _say_once(name: str, why: str, instead: str) -> None:
    print(f"tokenbench: {name} attention unavailable ({why}); auto uses {instead}", file=sys.stderr)


def kernel_named(name: str) -> VarlenKernel | None:
    """The varlen kernel called ``name`` (None for ``sdpa``, ``auto`` or an unknown name)."""
    return next((k for k in KERNELS if k.name == name), None)


def _sdpa_one(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    # q, k, v [n, h, d] -> [1, h, n, d]
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    mask = None if bias is None else bias.to(q.dtype).view(1, 1, 1, -1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.squeeze(0).transpose(0, 1)


PATHS = ("dense", "packed", "varlen")


def takes_dense(lens: list[int], dense: bool) -> bool:
    """Whether :func:`sdpa_packed` runs one dense batched call (several sequences, all one length)."""
    return dense and len(lens) > 1 and len(set(lens)) == 1


def sdpa_packed(q: Tensor, k: Tensor, v: Tensor, cu: list[int], bias: Tensor | None = None,
                scale: float | None = None, dense: bool = True) -> Tensor:
    """Per-sequence SDPA over packed q, k, v [N, h, d]; ``bias`` [N] is added to every query's logits
    for the key at that position (key-side bias, as ToMe's ``log(size)``)."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    lens = lengths(cu)
    if takes_dense(lens, dense):
        bsz, n = len(lens), lens[0]
        qb, kb, vb = (t.reshape(bsz, n, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
        mask = None if bias is None else bias.to(q.dtype).view(bsz, 1, 1, n)
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)
        return out.transpose(1, 2).reshape(q.shape)
    # split (not q[a:b] slicing): in training, the backward of each slice allocates and zero-fills a
    # full-size gradient per sequence, ~40% of an RLT training step on CPU; split's backward is one cat.
    biases = [None] * len(lens) if bias is None else bias.split(lens)
    outs = [_sdpa_one(qi, ki, vi, bi, scale)
            for qi, ki, vi, bi in zip(q.split(lens), k.split(lens), v.split(lens), biases)]
    return torch.cat(outs, dim=0)


def packed_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, *, backend: str = "sdpa",
                     bias: Tensor | None = None, scale: float | None = None,
                     dense: bool = True, lens: Sequence[int] | None = None) -> tuple[Tensor, str]:
    """Attention within each packed sequence. Returns (output [N, h, d], backend that ran)."""
    out, ran, _ = attention_call(q, k, v, cu_seqlens, backend=backend, bias=bias, scale=scale, dense=dense,
                                 lens=lens)
    return out, ran


def _offsets(lens: Sequence[int]) -> list[int]:
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + int(n))
    return cu


def attention_call(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, *, backend: str = "sdpa",
                   bias: Tensor | None = None, scale: float | None = None,
                   dense: bool = True, lens: Sequence[int] | None = None) -> tuple[Tensor, str, str]:
    """:func:`packed_attention`, also returning the path that ran (one of :data:`PATHS`).

    ``lens``: the sequence lengths as host integers when the caller has them (``PackedTokens.lens``); without
    them they are read back from ``cu_seqlens``, a host sync on a GPU in every layer."""
    lens = [int(n) for n in lens] if lens is not None else lengths(cu_seqlens).tolist()
    cu = _offsets(lens)
    if bias is not None or backend == "sdpa":
        path = "dense" if takes_dense(lens, dense) else "packed"
        return sdpa_packed(q, k, v, cu, bias=bias, scale=scale, dense=dense), "sdpa", path
    kernel = kernel_named(backend)
    if kernel is None:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if takes_dense(lens, dense):  # equal lengths: one dense batched call (on CUDA, SDPA picks flash/cuDNN)
        return sdpa_packed(q, k, v, cu, scale=scale), "sdpa", "dense"
    want = compute_dtype(q.device, q.dtype)  # float32 activations under autocast: the autocast dtype
    if want not in kernel.dtypes:
        names = "/".join(str(d).removeprefix("torch.") for d in kernel.dtypes)
        raise ValueError(f"attention backend {backend!r} needs {names} q, k, v, got {q.dtype}")
    if q.dtype != want:
        q, k, v = q.to(want), k.to(want), v.to(want)
    cu_dev = cu_seqlens.to(device=q.device, dtype=torch.int32)  # the flash kernels take int32 offsets only
    return kernel.run(q, k, v, cu_dev, max(lens), scale), kernel.name, "varlen"


def padded_reference(q: Tensor, k: Tensor, v: Tensor, cu: list[int], bias: Tensor | None = None,
                     scale: float | None = None) -> Tensor:
    """Explicit softmax(QKᵀ·scale + bias)V on a zero-padded batch with a key mask — the reference the
    packed backends are tested against, and the padded arm of the packing benchmark."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    lens = lengths(cu)
    bsz, n, h, d = len(lens), max(lens), q.shape[1], q.shape[2]

    def pad(t: Tensor) -> Tensor:
        out = t.new_zeros(bsz, n, h, d)
        for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
            out[i, : b - a] = t[a:b]
        return out.transpose(1, 2)  # [B, h, n, d]

    qp, kp, vp = pad(q), pad(k), pad(v)
    logits = (qp @ kp.transpose(-1, -2)) * scale
    key_ok = torch.zeros(bsz, n, dtype=torch.bool, device=q.device)
    for i, ln in enumerate(lens):
        key_ok[i, :ln] = True
    if bias is not None:
        bp = q.new_zeros(bsz, n)
        for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
            bp[i, : b - a] = bias[a:b]
        logits = logits + bp.view(bsz, 1, 1, n)
    logits = logits.masked_fill(~key_ok.view(bsz, 1, 1, n), float("-inf"))
    out = logits.softmax(-1) @ vp  # [B, h, n, d]
    out = out.transpose(1, 2)
    return torch.cat([out[i, :ln] for i, ln in enumerate(lens)], dim=0)
