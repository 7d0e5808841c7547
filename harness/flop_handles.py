"""fvcore handles for every attention op the backbone may call (SDPA, torch varlen, flash-attn varlen):
``2·n²·d`` per sequence and head for QKᵀ and AV, from the shapes a jit trace shows (varlen ops: from the
``cu_seqlens`` constants of the trace, else :class:`FlopCountError`, never a silent 0)."""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from torch import Tensor

GIGA = 1e9

# ops every attention backend of the backbone may leave in a jit trace
SDPA_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
)
VARLEN_OPS = (
    "torch_attn::_varlen_attn",  # torch.nn.attention.varlen.varlen_attn
    "torch_attn::_varlen_attn_out",
    "flash_attn::_flash_attn_varlen_forward",  # flash-attn >= 2.6 registers its kernels as torch ops
    "prim::PythonOp.FlashAttnVarlenFunc",  # older flash-attn: an autograd.Function in the trace
    "prim::PythonOp.FlashAttnVarlenQKVPackedFunc",
    "prim::PythonOp.FlashAttnVarlenKVPackedFunc",
)
ATTENTION_OP = "attention"  # the name attention matmul FLOPs are reported under (by_operator)


class FlopCountError(RuntimeError):
    """FLOPs cannot be counted honestly (e.g. a varlen attention call whose lengths are not visible)."""


class FlopAgreementError(FlopCountError):
    """The analytic count and fvcore's disagree by more than the tolerance."""


# --- fvcore handles ----------------------------------------------------------------------------------
def _shape(val: Any) -> list[int] | None:
    return val.type().sizes() if val.isCompleteTensor() else None


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter:
    """fvcore handle for scaled-dot-product attention: q [..., L, E], k [..., S, E], v [..., S, Ev] →
    ``batch·L·S·E`` (QKᵀ) + ``batch·L·S·Ev`` (AV) multiply-adds, ``batch`` the product of q's leading dims
    (heads included). Softmax, scaling and masks are not counted (fvcore counts no elementwise op)."""
    q, k, v = (_shape(x) for x in inputs[:3])
    if q is None or k is None or v is None:
        raise FlopCountError("scaled_dot_product_attention with incomplete shapes in the trace")
    batch = math.prod(q[:-2])
    length_q, e = q[-2], q[-1]
    length_k, ev = k[-2], v[-1]
    return Counter({ATTENTION_OP: batch * length_q * length_k * (e + ev)})


def matmul_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::matmul`` following torch.matmul's rules, vectors included (fvcore's own
    handle asserts on a matrix-vector product, which reducers use, e.g. STA's accumulated attention mass):
    a 1-D operand is a row (left) or column (right) vector; batch dims broadcast. Counts
    ``batch·n·k·m`` multiply-adds."""
    a, b = (_shape(x) for x in inputs[:2])
    if a is None or b is None:
        raise FlopCountError("matmul with incomplete shapes in the trace")
    a = [1, *a] if len(a) == 1 else list(a)
    b = [*b, 1] if len(b) == 1 else list(b)
    if a[-1] != b[-2]:
        raise FlopCountError(f"matmul of incompatible shapes {a} and {b}")
    batch = math.prod(torch.broadcast_shapes(torch.Size(a[:-2]), torch.Size(b[:-2])))
    return batch * a[-2] * a[-1] * b[-1]


def _constant_value(val: Any) -> Tensor | None:
    """The value of a traced tensor when it is a constant of the trace (through copies/casts)."""
    passthrough = {"aten::to", "aten::detach", "aten::contiguous", "aten::clone", "aten::_to_copy",
                   "aten::lift_fresh", "aten::alias"}
    for _ in range(16):
        node = val.node()
        if node.kind() == "prim::Constant":
            try:
                out = val.toIValue()
            except RuntimeError:
                return None
            return out if isinstance(out, Tensor) else None
        if node.kind() not in passthrough:
            return None
        val = next(iter(node.inputs()))
    return None


def varlen_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter:
    """fvcore handle for packed varlen attention (q, k, v [N, heads, d] + cu_seqlens_q, cu_seqlens_k).

    Counts Σᵢ heads·nᵢ·mᵢ·(d + dv) exactly when both ``cu_seqlens`` are constants of the trace; raises
    :class:`FlopCountError` otherwise, because the shapes alone do not determine the count."""
    q, k, v = (_shape(x) for x in inputs[:3])
    if q is None or k is None or v is None:
        raise FlopCountError("varlen attention with incomplete shapes in the trace")
    cus = []
    for val in inputs[3:]:
        shape = _shape(val) if val.type().kind() == "TensorType" else None
        if shape is not None and len(shape) == 1 and val.type().scalarType() in ("Int", "Long"):
            cus.append(val)
        if len(cus) == 2:
            break
    values = [_constant_value(c) for c in cus]
    if len(values) != 2 or any(x is None for x in values):
        raise FlopCountError(
            "a packed varlen attention call hides its per-sequence lengths inside cu_seqlens, which are not "
            "constants of this trace; count through the per-sequence sdpa path instead "
            "(tokenbench.harness.flops.count_flops does so: it traces with model.attn_backend='sdpa')")
    lq = torch.diff(values[0].long()).tolist()
    lk = torch.diff(values[1].long()).tolist()
    heads, e, ev = q[-2], q[-1], v[-1]
    return Counter({ATTENTION_OP: sum(a * b for a, b in zip(lq, lk)) * heads * (e + ev)})


def attention_handles() -> dict[str, Any]:
    """Handles for every attention op the backbone may call (and a vector-safe ``aten::matmul``), ready
    for ``set_op_handle(**…)``."""
    handles: dict[str, Any] = {op: sdpa_flop_jit for op in SDPA_OPS}
    handles.update({op: varlen_flop_jit for op in VARLEN_OPS})
    handles["aten::matmul"] = matmul_flop_jit
    return handles


def flop_analysis(module: torch.nn.Module, inputs: tuple) -> Any:
    """A fvcore ``FlopCountAnalysis`` with the attention handles registered and warnings silenced
    (unsupported ops are reported in :class:`FlopReport` instead)."""
    fa = FlopCountAnalysis(module, inputs)
    fa.set_op_handle(**attention_handles())
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    return fa
