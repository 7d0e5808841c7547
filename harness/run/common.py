"""What every step of a run shares: config hashes, thread pinning, the hardware
fingerprint, and one-line error descriptions."""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
from typing import Any

import torch

from tokenbench.datasets import VideoDecodeError

from ..fingerprint import fingerprint
from ..schema import canonical_json
from ..timing import fixed_threads

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def torch_threads(threads: int | None) -> contextlib.AbstractContextManager[int]:
    """A suite's ``threads`` setting for the block (0 = torch's default): ``timing.fixed_threads``, which
    yields the count in force and restores the previous one."""
    return fixed_threads(int(threads) if threads and threads > 0 else None)


_FP_CACHE: dict[tuple, dict[str, Any]] = {}


def hardware_fingerprint(device: str = "cpu", dtype: str = "float32", threads: int | None = None,
                         attn_backend: str | None = None) -> dict[str, Any]:
    """``harness.fingerprint.fingerprint`` (cached per process: git and /proc are read once)."""
    threads = threads or torch.get_num_threads()
    key = (device, dtype, threads)
    if key not in _FP_CACHE:
        _FP_CACHE[key] = fingerprint(device, dtype, threads)
    fp = dict(_FP_CACHE[key])
    fp["attn_backend"] = attn_backend
    return fp


def describe_error(exc: BaseException) -> str:
    """One line naming what failed; for a video, the file (and manifest line)."""
    if isinstance(exc, VideoDecodeError):
        return str(exc)
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if (oom is not None and isinstance(exc, oom)) or isinstance(exc, MemoryError):
        return f"out of memory: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
