"""The ``cpu_varlen`` attention backend: packed attention on CPU as one op per layer (issue 15).

The op (``csrc/packed_sdpa.cpp``) runs torch's own CPU flash kernel on pieces of the packed batch in one
parallel region, so the sequences of a batch share the threads instead of taking them in turn: the
per-call cost of a Python loop over short sequences is paid in parallel, and a long sequence whose heads
do not divide over the threads (vit_t's 3 heads on 2) has its backward cut by head and key chunk. The
arithmetic of each piece is the kernel's, so the result is the ``sdpa`` loop's (key-chunked backward:
within rounding); the README's Performance section has the measurements.

Contract::

    packed_sdpa(q, k, v, cu, scale) -> out      # q, k, v, out [N, heads, head_dim]; cu: list of B+1 ints

differentiable in q, k and v; float32, float64, bfloat16 and float16 on CPU; no additive bias (ToMe's
proportional attention stays on ``sdpa``).

The op is compiled from source with the C++ compiler torch was built for (``$CXX``, else ``c++``) the first
time it is needed, ~10 s, and kept in ``$TOKENBENCH_EXT_CACHE`` (default ``$TOKENBENCH_CACHE/ext``) under a
name keyed by the source, torch's version and the compiler, so a changed source or torch builds anew.
Without a compiler, or when the build fails, :func:`available` is False, :func:`unavailable_reason` says
why, and ``auto`` falls back to ``sdpa`` (recorded per arm as always).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "packed_sdpa.cpp"
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

_failure: list[str] = []  # why the op could not be built or loaded (empty: it loaded, or nobody asked yet)


def ext_dir() -> Path:
    """Where built ops are kept: ``$TOKENBENCH_EXT_CACHE``, else ``$TOKENBENCH_CACHE/ext``."""
    if os.environ.get("TOKENBENCH_EXT_CACHE"):
        return Path(os.environ["TOKENBENCH_EXT_CACHE"]).expanduser()
    from .run.common import cache_root  # late: the run package is not needed to use the op

    return cache_root() / "ext"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def _command(cxx: str, out: Path) -> list[str]:
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [cxx, "-O3", "-std=c++20", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w"]
    cmd += [f"-I{p}" for p in cpp_extension.include_paths()]
    cmd += [str(SOURCE), "-o", str(out)]
    for lib in cpp_extension.library_paths():
        cmd += [f"-L{lib}", f"-Wl,-rpath,{lib}"]
    return cmd + ["-lc10", "-ltorch_cpu"]


def _library_path(cxx: str) -> Path:
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(f"{torch.__version__}|{sys.platform}|{cxx}".encode())
    return ext_dir() / f"packed_sdpa-{key.hexdigest()[:16]}.so"


def _build(cxx: str, lib: Path) -> None:
    lib.parent.mkdir(parents=True, exist_ok=True)
    print(f"tokenbench: building the cpu_varlen attention op (once, ~10 s) into {lib.parent}", file=sys.stderr)
    # build beside the target and rename: two processes building at once each install a whole file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    os.close(fd)
    try:
        done = subprocess.run(_command(cxx, Path(tmp)), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cxx} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def available() -> bool:
    """Whether the op is loaded, building it first if needed (once a process)."""
    if sys.platform != "linux":
        _failure.append(f"the op is built for Linux only (this is {sys.platform})")
        return False
    cxx = _compiler()
    if cxx is None:
        _failure.append(f"no C++ compiler ({os.environ.get('CXX', 'c++')!r} is not on PATH)")
        return False
    try:
        lib = _library_path(cxx)
        if not lib.exists():
            _build(cxx, lib)
        torch.ops.load_library(str(lib))
        _register_fakes()
    except (OSError, RuntimeError) as err:
        _failure.append(f"could not build or load {SOURCE.name}: {err}")
        print(f"tokenbench: cpu_varlen attention unavailable, using sdpa ({_failure[-1]})", file=sys.stderr)
        return False
    return True


def _register_fakes() -> None:
    # shapes without data, for torch.compile's tracing (a compiled cell on a CPU)
    @torch.library.register_fake("tokenbench::packed_sdpa")
    def _(q, k, v, cu_seqlens, scale):
        lse_dtype = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype
        return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=lse_dtype)

    @torch.library.register_fake("tokenbench::packed_sdpa_backward")
    def _(grad_out, q, k, v, out, lse, cu_seqlens, scale):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def unavailable_reason() -> str | None:
    """Why :func:`available` returned False (None when it did not)."""
    return _failure[-1] if _failure else None


class _PackedSDPA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, cu: list[int], scale: float) -> Tensor:
        out, lse = torch.ops.tokenbench.packed_sdpa(q, k, v, cu, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.cu, ctx.scale = cu, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.tokenbench.packed_sdpa_backward(grad_out, q, k, v, out, lse, ctx.cu, ctx.scale)
        return dq, dk, dv, None, None


def packed_sdpa(q: Tensor, k: Tensor, v: Tensor, cu: list[int], scale: float | None = None) -> Tensor:
    """Attention within each packed sequence ``cu[i]:cu[i+1]`` of q, k, v [N, heads, head_dim]."""
    if not available():
        raise RuntimeError(f"the cpu_varlen attention op is unavailable: {unavailable_reason()}")
    return _PackedSDPA.apply(q, k, v, [int(c) for c in cu], float(scale if scale is not None else q.shape[-1] ** -0.5))
