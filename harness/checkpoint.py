"""Checkpoints as people hold them, read into tokenbench's VideoMAE-layout backbone (DESIGN.md §2).

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
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .model import MODEL_SIZES, NORM_EPS, PATCH, TUBELET, VideoViT


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, in no known layout, or does not fit the model."""


# --------------------------------------------------------------------------------------------------
# reading files
# --------------------------------------------------------------------------------------------------
_PREFIXES = ("module.", "encoder.", "backbone.")
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


def _read_index(index: Path, meta: bool = False) -> tuple[dict[str, Tensor], list[Path]]:
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


def normalise_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrapper prefixes (``module.``, ``encoder.``, ``backbone.``, in any order and number)."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------------
ORIGINAL, TRANSFORMERS = "videomae", "transformers"
_ORIGINAL_KEY = re.compile(r"(^|\.)(blocks\.\d+\.attn\.qkv\.weight|patch_embed\.proj\.weight)$")
_HF_KEY = re.compile(r"(^|\.)(encoder\.layer\.\d+\.attention\.attention\.query\.weight|"
                     r"embeddings\.patch_embeddings\.projection\.weight)$")
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_RENAMES = {  # transformers name inside a layer -> tokenbench name inside a block
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_HF_TOP = {"embeddings.patch_embeddings.projection": "patch_embed.proj", "fc_norm": "fc_norm",
           "classifier": "head"}
_HF_BIAS = {"q_bias": ("attention.attention.q_bias", "attention.attention.query.bias"),
            "v_bias": ("attention.attention.v_bias", "attention.attention.value.bias")}


def detect_layout(keys: Iterable[str]) -> str | None:
    """``"videomae"`` (original), ``"transformers"``, or None, from the weight names alone."""
    keys = list(keys)
    hf = any(_HF_KEY.search(k) for k in keys)
    orig = any(_ORIGINAL_KEY.search(k) for k in keys)
    if hf and orig:
        return "both"
    return TRANSFORMERS if hf else ORIGINAL if orig else None


def _strip_hf(key: str) -> str:
    for p in ("module.", "videomae."):
        key = key.removeprefix(p)
    return key


def from_transformers(state: dict[str, Tensor], where: Path, qv_bias: bool = True) -> dict[str, Tensor]:
    """transformers' VideoMAE names → tokenbench's (query/key/value concatenated into ``qkv``). Names it
    does not know (a pretraining decoder, ``videomae.layernorm``) pass through, to be reported unexpected."""
    state = {_strip_hf(k): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    layers: dict[int, dict[str, Tensor]] = {}
    for k, v in state.items():
        m = _HF_LAYER.match(k)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = v
            continue
        mod, _, leaf = k.rpartition(".")
        out[f"{_HF_TOP[mod]}.{leaf}" if mod in _HF_TOP else k] = v
    for n, parts in sorted(layers.items()):
        blk = f"blocks.{n}."
        qkv = [parts.pop(f"attention.attention.{p}.weight", None) for p in ("query", "key", "value")]
        if any(w is None for w in qkv):
            if all(w is None for w in qkv):
                continue
            lacking = [p for p, w in zip(("query", "key", "value"), qkv) if w is None]
            raise CheckpointError(f"{where}: layer {n} has no attention {', '.join(lacking)} weight")
        out[blk + "attn.qkv.weight"] = torch.cat(qkv, 0)
        for ours, spellings in _HF_BIAS.items():
            found = [s for s in spellings if s in parts]
            if len(found) > 1:
                raise CheckpointError(f"{where}: layer {n} holds both {found[0]} and {found[1]}")
            if found:
                out[blk + f"attn.{ours}"] = parts.pop(found[0])
            elif not qv_bias:  # the config says the model has no q/v bias: it is zero
                out[blk + f"attn.{ours}"] = torch.zeros(qkv[0].shape[0], dtype=qkv[0].dtype)
        kb = parts.pop("attention.attention.key.bias", None)
        if kb is not None and not kb.is_meta and bool(kb.any()):
            raise CheckpointError(f"{where}: layer {n} has a non-zero key bias (VideoMAE's attention has "
                                  "none)")
        for k, v in parts.items():
            mod, _, leaf = k.rpartition(".")
            # a name it does not know goes back as it was, to be reported unexpected
            out[(blk + f"{_HF_RENAMES[mod]}.{leaf}") if mod in _HF_RENAMES else f"encoder.layer.{n}.{k}"] = v
    return out


# --------------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointConfig:
    """What a transformers ``config.json`` says about the network."""

    source: Path
    num_frames: int
    img_size: int
    width: int
    depth: int
    heads: int
    mlp: int
    patch: int = PATCH
    tubelet: int = TUBELET
    num_classes: int | None = None  # None: no classification head (``VideoMAEModel``)
    norm_eps: float = 1e-12  # transformers' block LayerNorms (``layer_norm_eps``)
    fc_norm_eps: float = 1e-5  # transformers' fc_norm is a default nn.LayerNorm
    qv_bias: bool = True
    id2label: dict[int, str] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str] | None:
        """Class names in id order, when ``id2label`` names every class."""
        n = self.num_classes
        if not n or sorted(self.id2label) != list(range(n)):
            return None
        return [self.id2label[i] for i in range(n)]


def _square(value: Any, name: str, where: Path) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise CheckpointError(f"{where}: {name} = {value} is not square (tokenbench's backbone is)")
        value = value[0]
    return int(value)


def read_config(path: Path) -> CheckpointConfig:
    """Parse a transformers VideoMAE ``config.json``; refuses what tokenbench's backbone cannot be."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if cfg.get("model_type", "videomae") != "videomae":
        raise CheckpointError(f"{path}: model_type is {cfg['model_type']!r}, expected 'videomae'")
    if not cfg.get("use_mean_pooling", True):
        raise CheckpointError(f"{path}: use_mean_pooling = false (the first token through a last LayerNorm); "
                              "tokenbench's backbone pools by mean through fc_norm, as VideoMAE's fine-tuned "
                              "models do")
    for key, want in (("hidden_act", "gelu"), ("num_channels", 3)):
        if cfg.get(key, want) != want:
            raise CheckpointError(f"{path}: {key} = {cfg[key]!r}, tokenbench's backbone has {want!r}")
    try:
        width = int(cfg.get("hidden_size", 768))
        id2label = {int(k): str(v) for k, v in (cfg.get("id2label") or {}).items()}
        archs = cfg.get("architectures") or []
        classifier = any("Classification" in a for a in archs) or (not archs and bool(id2label))
        n = int(cfg["num_labels"]) if "num_labels" in cfg else len(id2label)
        return CheckpointConfig(
            source=path, num_frames=int(cfg.get("num_frames", 16)),
            img_size=_square(cfg.get("image_size", 224), "image_size", path),
            width=width, depth=int(cfg.get("num_hidden_layers", 12)),
            heads=int(cfg.get("num_attention_heads", 12)),
            mlp=int(cfg.get("intermediate_size", 4 * width)),
            patch=_square(cfg.get("patch_size", PATCH), "patch_size", path),
            tubelet=int(cfg.get("tubelet_size", TUBELET)),
            num_classes=n if classifier and n else None,
            norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            qv_bias=bool(cfg.get("qv_bias", cfg.get("qkv_bias", True))), id2label=id2label)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unexpected value ({exc})") from None


def config_mismatches(config: CheckpointConfig, name: str, num_frames: int, img_size: int,
                      num_classes: int | None) -> list[str]:
    """Each field of ``config`` that does not fit model ``name`` at ``num_frames``×``img_size``² with
    ``num_classes`` (0/None: any), as ``"field: checkpoint X, model Y"``."""
    size = MODEL_SIZES[name]
    pairs = [("num_frames", config.num_frames, num_frames), ("image_size", config.img_size, img_size),
             ("hidden_size (width)", config.width, size.dim),
             ("num_hidden_layers (depth)", config.depth, size.depth),
             ("num_attention_heads", config.heads, size.heads),
             ("intermediate_size (MLP)", config.mlp, size.mlp),
             ("patch_size", config.patch, PATCH), ("tubelet_size", config.tubelet, TUBELET)]
    if num_classes and config.num_classes:
        pairs.append(("num_labels (classes)", config.num_classes, num_classes))
    return [f"{what}: checkpoint {have}, model {want}" for what, have, want in pairs if have != want]


# --------------------------------------------------------------------------------------------------
# the checkpoint
# --------------------------------------------------------------------------------------------------
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


def read_checkpoint(path: str | Path, meta: bool = False) -> Checkpoint:
    """Read any accepted form (module docstring) into a :class:`Checkpoint`, or raise CheckpointError
    naming the file and what was expected. ``meta``: shapes only (meta tensors, no sha256), read cheaply."""
    given = Path(path).expanduser()
    (file,), cfg_path = locate(given)
    if file.name.endswith(".index.json"):
        raw, files = _read_index(file, meta)
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
