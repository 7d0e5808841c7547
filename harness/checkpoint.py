"""Checkpoints as people hold them, read into tokenbench's VideoMAE-layout backbone (docs/architecture.md §2).

What :func:`read_checkpoint` accepts (a local path; nothing is ever downloaded):

* the **original layout** of VideoMAE / VideoMAE-2 (``blocks.N.attn.qkv.weight``, ``q_bias``, ``v_bias``,
  ``patch_embed.proj``, ``fc_norm``, ``head``), as a torch file (``.pth`` / ``.bin``; ``{"model": …}``
  containers unwrapped, ``module.``/``encoder.``/``backbone.`` prefixes stripped) or as ``.safetensors``;
* the **transformers layout** (``videomae.encoder.layer.N.attention.attention.query.weight`` …,
  ``fc_norm``, ``classifier``): a model directory (``config.json`` beside ``model.safetensors``,
  ``pytorch_model.bin`` or a sharded ``*.index.json``), an index file, or a bare ``.safetensors`` /
  ``.bin``. The q/v biases may be spelled as the hub's files do (``q_bias`` / ``v_bias``) or as
  transformers' ``state_dict`` does (``query.bias`` / ``value.bias``).

The file format is read from the file's first bytes and the layout from the keys, never from a name.
Torch files load with ``weights_only=True`` only (``argparse.Namespace``, which VideoMAE's ``.pth`` files
pickle beside the weights, is the one class allowed), so a checkpoint can never run code.

A ``config.json`` gives the network's shape (checked against the model it is loaded into, naming the
field and both values), its LayerNorm eps (applied to the model: transformers uses 1e-12 in the blocks
and 1e-5 in ``fc_norm``, the original VideoMAE 1e-6) and its class names (``id2label``).

A checkpoint is identified by :attr:`Checkpoint.sha256`, a hash of its weights in tokenbench's layout
(names, dtypes, shapes and bytes, in name order), so one set of weights has one identity whatever file
format, layout or sharding holds it.

The steps are modules of their own: checkpoint_files (which files, and their tensors), checkpoint_layout
(whose names, mapped onto tokenbench's), checkpoint_config (what config.json says); this module reads a
checkpoint through them and loads it into a model.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint_config import CheckpointConfig, config_mismatches, read_config
from .checkpoint_files import WEIGHT_FILES, CheckpointError, locate, read_index, read_weights_file
from .checkpoint_layout import TRANSFORMERS, detect_layout, from_transformers, normalise_keys
from .model import NORM_EPS, VideoViT


def weights_sha256(state: dict[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: the weights' identity."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0".encode())
        if t.numel():  # the bytes as they lie in memory (hashlib reads the buffer; no copy)
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def short_hash(sha256: str) -> str:
    """How reports name a checkpoint: the first 12 hex digits of its weights' sha256."""
    return sha256[:12]


@dataclass
class Checkpoint:
    """A checkpoint read from disk, its weights already in tokenbench's layout."""

    path: Path  # as given: a file or a transformers model directory
    files: list[Path]  # the weight files read
    layout: str  # "videomae" (original) or "transformers"
    state: dict[str, Tensor]
    config: CheckpointConfig | None = None
    sha256: str = ""

    @property
    def num_classes(self) -> int | None:
        w = self.state.get("head.weight")
        return int(w.shape[0]) if w is not None else None

    @property
    def norm_eps(self) -> tuple[float, float]:
        """(blocks, fc_norm) LayerNorm eps the weights were trained with."""
        if self.layout == TRANSFORMERS:
            return (self.config.norm_eps, self.config.fc_norm_eps) if self.config else (1e-12, 1e-5)
        return NORM_EPS, NORM_EPS

    @property
    def class_names(self) -> list[str] | None:
        return self.config.class_names if self.config else None



def read_checkpoint(path: str | Path, meta: bool = False) -> Checkpoint:
    """Read any accepted form (module docstring) into a :class:`Checkpoint`, or raise CheckpointError
    naming the file and what was expected. ``meta``: shapes only (meta tensors, no sha256), read cheaply."""
    given = Path(path).expanduser()
    (file,), cfg_path = locate(given)
    if file.name.endswith(".index.json"):
        raw, files = read_index(file, meta)
    else:
        raw, files = read_weights_file(file, meta), [file]
    layout = detect_layout(raw)  # before stripping prefixes: transformers' encoder-only keys start "encoder."
    if layout is None:
        sample = ", ".join(sorted(raw)[:3]) or "no tensors"
        raise CheckpointError(
            f"{file} is in no layout tokenbench reads: expected VideoMAE's (blocks.N.attn.qkv.weight, "
            f"patch_embed.proj.weight, …) or transformers' (videomae.encoder.layer.N.attention.attention."
            f"query.weight, …); it holds {sample}")
    if layout == "both":
        raise CheckpointError(f"{file} mixes VideoMAE's and transformers' weight names; re-save one layout")
    config = read_config(cfg_path) if cfg_path is not None and layout == TRANSFORMERS else None
    if layout == TRANSFORMERS:
        state = from_transformers(raw, file, qv_bias=config.qv_bias if config else True)
    else:
        state = normalise_keys(raw)
    return Checkpoint(path=given, files=files, layout=layout, state=state, config=config,
                      sha256="" if meta else weights_sha256(state))


def checkpoint_classes(path: str | Path) -> int | None:
    """The number of classes of a checkpoint's head (its config's, else its head's rows), None when it has
    none or cannot be read. Cheap: no weight is read."""
    try:
        ck = read_checkpoint(path, meta=True)
    except CheckpointError:
        return None
    return ck.config.num_classes if ck.config and ck.config.num_classes else ck.num_classes


def checkpoint_problem(path: str | Path, name: str, num_frames: int, img_size: int,
                       num_classes: int | None) -> str | None:
    """Why the checkpoint at ``path`` cannot be model ``name`` at ``num_frames``×``img_size``² with
    ``num_classes`` (0: any), judged from its transformers config.json alone, so a suite can refuse it
    before any work without reading a weight; None when nothing says it cannot. (A bare file's weight
    shapes are checked when it loads.)"""
    try:
        (file,), cfg_path = locate(path)
        if cfg_path is None or not (Path(path).is_dir() or file.name in WEIGHT_FILES):
            return None
        bad = config_mismatches(read_config(cfg_path), name, num_frames, img_size, num_classes)
    except CheckpointError as exc:
        return str(exc)
    what = f"{name} ({num_frames}×{img_size}²" + (f", {num_classes} classes)" if num_classes else ")")
    return f"{cfg_path} does not fit {what}: " + "; ".join(bad) if bad else None


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did."""

    checkpoint: Checkpoint
    missing: list[str]  # weights of the model the checkpoint lacks (left as initialised)
    unexpected: list[str]  # weights of the checkpoint the model has no place for (ignored)

    @property
    def sha256(self) -> str:
        return self.checkpoint.sha256


def load_checkpoint(model: VideoViT, path: str | Path | Checkpoint, strict: bool = True) -> LoadReport:
    """Load a checkpoint (any form :func:`read_checkpoint` accepts) into ``model`` and apply its LayerNorm
    eps. Raises :class:`CheckpointError` naming the file and what does not fit: a config field (both values),
    every mismatched shape, or (``strict``) the weights it lacks; with ``strict=False`` missing weights
    (e.g. a new ``head``) are allowed and reported. Weights the model has no place for are reported."""
    ck = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    if not ck.sha256:
        raise ValueError(f"{ck.path} was read for its shapes only (meta=True); it has no weights to load")
    missing, unexpected = check_fits(ck, model, strict)
    model.load_state_dict({k: v for k, v in ck.state.items() if k not in unexpected}, strict=False)
    model.set_norm_eps(*ck.norm_eps)
    return LoadReport(ck, missing, unexpected)


def check_fits(ck: Checkpoint, model: VideoViT, strict: bool = True) -> tuple[list[str], list[str]]:
    """(missing, unexpected) weight names of ``ck`` for ``model``; raises :class:`CheckpointError` naming what
    does not fit: config fields (both values), shapes, or (``strict``) missing weights."""
    what = f"{model.name} ({model.num_frames}×{model.img_size}², {model.num_classes} classes)"
    if ck.config is not None:
        bad = config_mismatches(ck.config, model.name, model.num_frames, model.img_size, model.num_classes)
        if bad:
            raise CheckpointError(f"{ck.config.source} does not fit {what}: " + "; ".join(bad))
    own = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in ck.state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        more = f" (and {len(mismatched) - 6} more)" if len(mismatched) > 6 else ""
        raise CheckpointError(f"{ck.path} does not fit {what}, grid {model.grid}; mismatched shapes: "
                              + "; ".join(mismatched[:6]) + more)
    missing = sorted(set(own) - set(ck.state))
    unexpected = sorted(set(ck.state) - set(own))
    if strict and missing:
        raise CheckpointError(f"{ck.path} lacks {len(missing)} weights of {model.name}: "
                              f"{', '.join(missing[:8])}" + (" …" if len(missing) > 8 else ""))
    return missing, unexpected


def save_checkpoint(model: VideoViT, path: str | Path, **extra) -> Path:
    """Save in VideoMAE's original layout (``{"model": state_dict, ...}``), which :func:`load_checkpoint`
    reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), **extra}, path)
    return path


__all__ = ["Checkpoint", "CheckpointConfig", "CheckpointError", "LoadReport", "check_fits",
           "checkpoint_classes", "checkpoint_problem",
           "config_mismatches", "detect_layout", "from_transformers", "load_checkpoint", "locate",
           "normalise_keys", "read_checkpoint", "read_config", "save_checkpoint", "short_hash",
           "weights_sha256"]
