"""Hardware and software fingerprint recorded with every result (docs/architecture.md §5).

:func:`fingerprint` returns a flat dict; its ``id`` (e.g.
``cpu-intel-xeon-processor-2.10ghz-avx512-amx-2t-torch2.13.0-float32``) names the results folder
``results/<suite>/<id>/``. Timings from different ids are never put in one comparison column: the id changes
with the device model, the CPU's instruction set (CPU), the thread count (CPU), the torch version, the CUDA
version (GPU) and the dtype. The attention backend is recorded (``attn_backend``) but is not part of
the id — comparing backends on one machine is a legitimate measurement.
"""
from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

SOURCE_DIR = Path(__file__).resolve().parent


def slug(text: str, max_len: int = 48) -> str:
    """Lower-case, trademarks dropped, runs of anything but [a-z0-9.] turned into one '-'."""
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    text = re.sub(r"[^a-z0-9.]+", "-", text).strip("-.")
    return text[:max_len].rstrip("-.") or "unknown"


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform.processor())."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def cpu_isa() -> str:
    """The vector instruction set torch's CPU kernels dispatch to (``avx2``, ``avx512``, …), with ``-amx``
    where the CPU has AMX tiles (oneDNN's bfloat16 matmuls). A VM may report only ``AMD EPYC`` as its
    model, and two such machines of different generations (AVX2 only, or AVX-512 with bf16) time the same
    model far apart: the model name alone would put them in one column."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:
        cap = "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return slug(cap + ("-amx" if "amx_tile" in flags else ""))


def git_commit(path: str | Path = SOURCE_DIR) -> str:
    """``git rev-parse HEAD`` in ``path`` (the package's source folder), else ``'unknown'``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else "unknown"


def git_dirty(path: str | Path = SOURCE_DIR) -> bool | None:
    """Whether tracked files differ from the commit (None when not a git checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


@functools.cache
def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def load_average() -> float | None:
    """The machine's 1-minute load average (2 decimals), None where the OS has none: how busy the machine
    was around a measurement (compare with ``cpu_count``)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def pyav_version() -> str | None:
    try:
        import av
    except Exception:
        return None
    return av.__version__


def dtype_name(dtype: torch.dtype | str) -> str:
    return str(dtype).removeprefix("torch.")


def fingerprint(device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32,
                threads: int | None = None, attn_backend: str | None = None) -> dict[str, Any]:
    """Where and with what a measurement runs. ``threads`` defaults to ``torch.get_num_threads()``."""
    device = torch.device(device)
    threads = torch.get_num_threads() if threads is None else int(threads)
    dt = dtype_name(dtype)
    fp: dict[str, Any] = {
        "device": device.type,
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__.split("+")[0],
        "torch_build": torch.__version__,
        "cuda": None,
        "driver": None,
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "dtype": dt,
        "attn_backend": attn_backend,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "pyav": pyav_version(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        fp.update(device_name=props.name, cuda=torch.version.cuda, driver=nvidia_driver(),
                  gpu_memory_mb=props.total_memory // 2**20, gpu_capability=f"{props.major}.{props.minor}")
        fp["id"] = f"cuda-{slug(props.name)}-torch{fp['torch']}-cu{fp['cuda']}-{dt}"
    else:
        fp["device_name"] = fp["cpu_model"]
        fp["id"] = f"{device.type}-{slug(fp['cpu_model'])}-{fp['cpu_isa']}-{threads}t-torch{fp['torch']}-{dt}"
    return fp


def comparable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether timings under fingerprints ``a`` and ``b`` may share a comparison column."""
    return a.get("id") == b.get("id")
