"""The ``cpu_varlen`` attention backend: packed attention on CPU as one op per layer (issue 15).

The op (``csrc/packed_sdpa.cpp``) runs torch's own CPU flash kernel on pieces of the packed batch in one
parallel region, so the sequences of a batch share the threads instead of taking them in turn: the
per-call cost of a Python loop over short sequences is paid in parallel, and a long sequence whose heads
do not divide over the threads (vit_t's 3 heads on 2) has its backward cut by head and key chunk. The
arithmetic of each piece is the kernel's, so the result is the ``sdpa`` loop's (key-chunked backward:
within rounding); docs/performance.md has the measurements.

Contract::

    packed_sdpa(q, k, v, cu, scale) -> out      # q, k, v, out [N, heads, head_dim]; cu: list of B+1 ints

differentiable in q, k and v; float32, float64, bfloat16 and float16 on CPU; no additive bias (ToMe's
proportional attention stays on ``sdpa``).

The op is compiled from source with the C++ compiler torch was built for (``$CXX``, else ``c++``) the first
time it is needed, ~10 s, and kept in ``$TOKENBENCH_EXT_CACHE`` (default ``$TOKENBENCH_CACHE/ext``) under a
name keyed by the source, torch's version and the compiler, so a changed source or torch builds anew.
Without a compiler, or when the build fails, :func:`available` is False, :func:`unavailable_reason` says
why, ``auto`` falls back to ``sdpa`` (recorded per arm as always) saying so in one line, once a process,
and an explicit ``attn_backend = "cpu_varlen"`` is refused naming that reason (``--dry-run`` too).

A damaged cache cannot crash a run: a truncated library loaded into the process dies with SIGBUS, before
Python can say anything. So the build writes the library's size and SHA-256 beside it (``<lib>.sha256``)
and each process checks them before loading; a library without that file (built by an older version, or
copied in) is first loaded in a child process, whose crash is only a status code. A damaged library is
deleted and built again, saying so in one line. The build has a time limit (``$TOKENBENCH_EXT_BUILD_TIMEOUT_S``,
default 600 s: a compiler that hangs fails the build, and ``auto`` takes ``sdpa``), and writes to a hidden
temporary name the compiler itself creates, so a build killed from outside leaves no ``.so`` behind.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import signal
import subprocess
import sys
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
    from .paths import cache_root  # late: nothing beyond torch is imported until the op is asked for

    return cache_root() / "ext"


# -fopenmp: ATen's parallel_for is a header template, serial where OpenMP is off (the op's pieces would run in
# turn); the library then binds the libgomp torch has loaded, one runtime. Part of the cache key: a library
# built with other flags is another library.
FLAGS = ("-O3", "-std=c++20", "-fopenmp", "-shared", "-fPIC", "-w")


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def _command(cxx: str, out: Path) -> list[str]:
    from torch.utils import cpp_extension

    cmd = [cxx, *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    cmd += [f"-I{p}" for p in cpp_extension.include_paths()]
    cmd += [str(SOURCE), "-o", str(out)]
    for lib in cpp_extension.library_paths():
        cmd += [f"-L{lib}", f"-Wl,-rpath,{lib}"]
    return cmd + ["-lc10", "-ltorch_cpu"]


def _library_path(cxx: str) -> Path:
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(f"{torch.__version__}|{sys.platform}|{cxx}|{' '.join(FLAGS)}".encode())
    return ext_dir() / f"packed_sdpa-{key.hexdigest()[:16]}.so"


def build_timeout_s() -> float:
    """The op build's time limit: ``$TOKENBENCH_EXT_BUILD_TIMEOUT_S``, default 600 s (a cold build takes ~10 s)."""
    try:
        return float(os.environ.get("TOKENBENCH_EXT_BUILD_TIMEOUT_S", 600))
    except ValueError:
        return 600.0


def _sidecar(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _digest(lib: Path) -> str:
    return f"{lib.stat().st_size} {hashlib.sha256(lib.read_bytes()).hexdigest()}"


def _write_sidecar(lib: Path) -> None:
    side = _sidecar(lib)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(_digest(lib) + "\n")
    os.replace(tmp, side)


def _loads_in_a_child(lib: Path) -> str | None:
    """Why ``lib`` cannot be loaded, found by loading it in a child process (None: it loads): a damaged
    library kills that process, not this one."""
    code = "import sys, torch; torch.ops.load_library(sys.argv[1])"
    try:
        done = subprocess.run([sys.executable, "-c", code, str(lib)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "loading it in a child process did not end in 300 s"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return f"loading it in a child process died of {name}"
    return f"loading it in a child process failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"


def damage(lib: Path) -> str | None:
    """Why the cached library ``lib`` is not the one its build wrote (None: it is): its size or hash differs
    from the ``.sha256`` file written beside it; without that file, a load in a child process decides (and
    writes the file when it loads)."""
    side = _sidecar(lib)
    try:
        want = side.read_text().strip()
    except OSError:
        want = None
    if want is not None:
        have = _digest(lib)
        if have == want:
            return None
        size, _, _ = want.partition(" ")
        if str(lib.stat().st_size) != size:
            return f"{lib.stat().st_size} bytes where its build wrote {size}"
        return "its SHA-256 differs from the one written at build time"
    why = _loads_in_a_child(lib)
    if why is None:
        with contextlib.suppress(OSError):  # a read-only shared cache: checked again by the next process
            _write_sidecar(lib)
    return why


def _sweep_temporaries(folder: Path) -> None:
    # builds killed from outside (SIGKILL: no finally) leave their hidden temporary; its pid says whose
    for tmp in folder.glob(".packed_sdpa-*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        alive = pid.isdigit() and Path(f"/proc/{pid}").exists()
        if not alive:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _build(cxx: str, lib: Path) -> None:
    lib.parent.mkdir(parents=True, exist_ok=True)
    _sweep_temporaries(lib.parent)
    limit = build_timeout_s()
    print(f"tokenbench: building the cpu_varlen attention op (once, ~10 s, at most {limit:g} s) into {lib.parent}",
          file=sys.stderr)
    # build beside the target under a hidden name the compiler creates (none exists until it writes one),
    # then rename: two processes building at once each install a whole file
    tmp = lib.with_name(f".{lib.stem}.{os.getpid()}.tmp")
    try:
        # its own session: on a timeout the whole compiler (driver, cc1plus, ld) is killed, not the driver only
        proc = subprocess.Popen(_command(cxx, tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError(f"{cxx} did not finish in {limit:g} s (a hung compiler?); the limit is "
                               "$TOKENBENCH_EXT_BUILD_TIMEOUT_S") from None
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed ({proc.returncode}): {err.strip()[-2000:]}")
        _write_sidecar(tmp)
        os.replace(_sidecar(tmp), _sidecar(lib))
        os.replace(tmp, lib)
    finally:
        for p in (tmp, _sidecar(tmp)):
            if p.exists():
                p.unlink()


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
        why = damage(lib) if lib.exists() else None
        if why:
            print(f"tokenbench: the cached cpu_varlen op {lib} is damaged ({why}); building it again",
                  file=sys.stderr)
            lib.unlink()
        if not lib.exists():
            _build(cxx, lib)
        torch.ops.load_library(str(lib))
        _register_fakes()
    except (OSError, RuntimeError) as err:
        # not printed here: attention.choose_backend says it once where auto falls back to sdpa, and an
        # explicit cpu_varlen is refused naming this reason
        _failure.append(f"could not build or load {SOURCE.name}: {err}")
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


def region_threads() -> int:
    """How many threads one of the op's parallel regions runs on: torch's thread count when the op was built
    with OpenMP, 1 when its pieces would run in turn (an op built without it; see ``_command``)."""
    if not available():
        raise RuntimeError(f"the cpu_varlen attention op is unavailable: {unavailable_reason()}")
    return int(torch.ops.tokenbench.region_threads())


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
