"""Memory while a forward is timed: the garbage collector paused, the host heap kept (docs/performance.md,
"At batch 32").

A collection pause would land in whichever arm happened to allocate last: :func:`collector_paused`.

glibc's malloc serves a request at or above its mmap threshold with a fresh ``mmap`` and hands it back with
``munmap`` when freed. The threshold starts at 128 KiB and rises with each freed mapping, but never above
32 MiB (64-bit), so at large batches every activation (vit_t, batch 32 × 1,568 tokens × 192 × 4 B ≈ 38 MB)
is mapped and unmapped once per use: the kernel zeroes every page again and takes a page fault on its first
touch, about 2.1 million faults (≈ 8 GB of zeroed pages) and a fifth of the CPU time of each batch-32
forward on the 2-core AMD EPYC. That kernel work is what varies between the arms of a pair (page zeroing,
the two threads' faults contending for the address space, TLB shootdowns at every unmap), not the
arithmetic timed.

:func:`heap_kept` raises both the mmap and the trim threshold for the timed runs, so the warm-up round grows
the heap to the larger arm's peak and every timed arm reuses those pages: no faults while timed (a test
counts them). glibc's thresholds cannot be read back, and setting one turns its dynamic rule off for the
process; on exit they are set to the values that rule reaches in any process that has freed a large tensor
(32 MiB mmap, 64 MiB trim) and the kept heap is handed back (``malloc_trim``). Elsewhere (not glibc) nothing
is changed and the record says so (the null :class:`AllocatorPolicy`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
KEPT_MMAP = 1 << 30  # above any single tensor a CPU cell allocates; glibc ≥ 2.26 accepts it (older: 32 MiB)
KEPT_TRIM = 2**31 - 1  # mallopt takes an int: the largest it can be told
DYNAMIC_MAX_MMAP = 32 << 20  # where glibc's dynamic rule stops on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
DYNAMIC_MAX_TRIM = 2 * DYNAMIC_MAX_MMAP  # the rule keeps the trim threshold at twice the mmap threshold


@dataclass(frozen=True)
class AllocatorPolicy:
    """What the timing did to the host allocator, as the record says it (``timing_allocator``)."""

    description: str = "allocator as found (not glibc: left alone)"
    keeps_heap: bool = False


def minor_faults() -> int:
    """Minor page faults of this process so far (every thread): the kernel handing it fresh pages."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@contextmanager
def collector_paused() -> Iterator[None]:
    """Collect now, then keep the collector out of the timed runs."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@functools.cache  # once a process: find_library runs ldconfig, a subprocess, before every timing otherwise
def _glibc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    try:
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt, libc.malloc_trim  # noqa: B018  (both exist on every glibc)
    except AttributeError:
        return None
    return libc


def _set(libc: ctypes.CDLL, param: int, *values: int) -> int:
    """The first of ``values`` glibc accepts for ``param`` (0: none)."""
    return next((v for v in values if libc.mallopt(param, ctypes.c_int(v))), 0)


@contextmanager
def as_found() -> Iterator[AllocatorPolicy]:
    """The null policy: the allocator left as it is (what timing did before; tests compare with it)."""
    yield AllocatorPolicy("allocator as found (timing changed nothing)")


@contextmanager
def heap_kept() -> Iterator[AllocatorPolicy]:
    """Timed runs with glibc's heap kept between forwards (no mmap/munmap of large tensors, no trimming)."""
    libc = _glibc()
    if libc is None:
        yield AllocatorPolicy()
        return
    version = libc.gnu_get_libc_version().decode()
    mmap_at = _set(libc, M_MMAP_THRESHOLD, KEPT_MMAP, DYNAMIC_MAX_MMAP)
    trim_at = _set(libc, M_TRIM_THRESHOLD, KEPT_TRIM)
    try:
        said = [f"{what} threshold {f'{at >> 20} MiB' if at else 'refused'}"
                for what, at in (("mmap", mmap_at), ("trim", trim_at))]
        yield AllocatorPolicy(f"glibc {version}: {', '.join(said)} while timed (heap kept between arms)",
                              keeps_heap=mmap_at == KEPT_MMAP and bool(trim_at))
    finally:
        _set(libc, M_MMAP_THRESHOLD, DYNAMIC_MAX_MMAP)
        _set(libc, M_TRIM_THRESHOLD, DYNAMIC_MAX_TRIM)
        libc.malloc_trim(ctypes.c_size_t(0))
