"""Checkpoint files as they lie on disk: which files a path names, and the tensors in each.

A safetensors file is told from a torch file by its first bytes, never by its name. Torch files load with
``weights_only=True`` only (``argparse.Namespace``, which VideoMAE's ``.pth`` files pickle beside the
weights, is the one class allowed), so a checkpoint can never run code. The names the tensors carry are
left as they are: harness/checkpoint_layout.py maps them onto tokenbench's.
"""
from __future__ import annotations

import argparse
import json
import re
import struct
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, in no known layout, or does not fit the model."""


_CONTAINER_KEYS = ("model", "module", "state_dict", "model_state")
# What a torch checkpoint may hold besides tensors and plain containers: VideoMAE's own .pth files pickle
# an argparse.Namespace of their training arguments beside the weights. Nothing else is unpickled.
_SAFE_GLOBALS = (argparse.Namespace,)
# A transformers model directory's weight files, in the order transformers itself prefers them.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
CONFIG_FILE = "config.json"


def _torch_reason(exc: Exception) -> str:
    """The one line of torch's weights-only message that says what is wrong (the rest is boilerplate)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation",
                                                    "Please file an issue"))]
    reason = keep[-1] if keep else lines[0] if lines else type(exc).__name__
    return reason.removeprefix("WeightsUnpickler error: ")


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its JSON header's length (u64, little-endian), then ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n < 100 * 2**20


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
                       "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _read_safetensors(path: Path, meta: bool = False) -> dict[str, Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            if meta:  # shapes and dtypes from the header; no weight is read
                slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
                return {k: torch.empty(s.get_shape(), device="meta",
                                       dtype=_SAFETENSORS_DTYPES.get(s.get_dtype(), torch.float32))
                        for k, s in slices.items()}
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except Exception as exc:  # safetensors raises its own error type (and OSError) for damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: not a safetensors file, or a truncated or "
                              f"damaged one ({reason})") from None


def _torch_load(path: Path, meta: bool) -> Any:
    with torch.serialization.safe_globals(list(_SAFE_GLOBALS)):
        if meta:
            try:  # memory-mapped: only what is touched is read (zip-format files, torch >= 1.6)
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                pass  # a legacy-format file cannot be mapped: read it
        return torch.load(path, map_location="cpu", weights_only=True)


def _read_torch(path: Path, meta: bool = False) -> dict[str, Tensor]:
    try:
        obj = _torch_load(path, meta)
    except Exception as exc:
        unsafe = re.search(r"GLOBAL (\S+)", str(exc))
        if unsafe:
            raise CheckpointError(
                f"refusing to load {path}: it pickles {unsafe.group(1)}, which tokenbench never unpickles "
                "(a checkpoint may hold tensors, plain containers and argparse.Namespace; re-save its "
                "state_dict alone)") from None
        raise CheckpointError(f"cannot read checkpoint {path}: not a torch or safetensors checkpoint, or a "
                              f"damaged one ({_torch_reason(exc)})") from None
    for key in _CONTAINER_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict (looked for keys {', '.join(_CONTAINER_KEYS)})")
    return {k: v.to("meta") for k, v in obj.items()} if meta else obj


def read_weights_file(path: Path, meta: bool = False) -> dict[str, Tensor]:
    """The tensors of one file: safetensors (by its header, or a ``.safetensors`` name) or a torch file.
    ``meta``: shapes and dtypes only (meta tensors), read cheaply."""
    if _is_safetensors(path) or path.suffix == ".safetensors":
        return _read_safetensors(path, meta)
    return _read_torch(path, meta)


def read_index(index: Path, meta: bool = False) -> tuple[dict[str, Tensor], list[Path]]:
    """A sharded checkpoint: ``{"weight_map": {name: shard file}}`` and the shards beside it."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read shard index {index}: expected JSON with a \"weight_map\" "
                              f"object ({type(exc).__name__}: {exc})") from None
    shards = [index.parent / name for name in dict.fromkeys(weight_map.values())]
    state: dict[str, Tensor] = {}
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(f"shard {shard} listed in {index} is missing")
        state.update(read_weights_file(shard, meta))
    absent = sorted(set(weight_map) - set(state))
    if absent:
        raise CheckpointError(f"{index} lists {len(absent)} weights its shards lack: {', '.join(absent[:4])}")
    return state, shards


def locate(path: str | Path) -> tuple[list[Path], Path | None]:
    """(weight files or one index, config.json or None) for a file or a transformers model directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                cfg = path / CONFIG_FILE
                return [path / name], cfg if cfg.is_file() else None
        raise CheckpointError(f"{path} is a directory without weights: expected a transformers model "
                              f"directory ({CONFIG_FILE} with {', '.join(WEIGHT_FILES)})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    cfg = path.parent / CONFIG_FILE
    return [path], cfg if cfg.is_file() else None
