"""Where and how a training run runs: data-parallel under torchrun (gloo on CPU, NCCL on CUDA), the device
of each rank, and whether bfloat16 autocast pays off on this hardware."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    started_here: bool = False

    @property
    def on(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    started = False
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        started = True
    return Dist(world_size=dist.get_world_size(), rank=dist.get_rank(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")), started_here=started)


def all_reduce(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if not d.on:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matmuls natively (CUDA with bf16; a CPU with AMX or AVX512-BF16),
    so that autocast speeds training up rather than emulating bf16 slowly."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_amp(amp: bool | str, device: torch.device) -> bool:
    """``amp``: True / False, or ``"auto"`` = bfloat16 autocast where :func:`native_bf16`."""
    if amp == "auto":
        return native_bf16(device)
    if isinstance(amp, bool):
        return amp
    raise ValueError(f"amp must be True, False or 'auto', got {amp!r}")


def rank_device(device: str | torch.device | None, d: Dist) -> torch.device:
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", d.local_rank if d.on else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev
