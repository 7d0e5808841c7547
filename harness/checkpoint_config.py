"""What a transformers ``config.json`` says about the network: its shape (checked against the model a
checkpoint is loaded into, naming the field and both values), its LayerNorm eps (transformers uses 1e-12
in the blocks and 1e-5 in ``fc_norm``, the original VideoMAE 1e-6) and its class names (``id2label``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint_files import CheckpointError
from .model import MODEL_SIZES, PATCH, TUBELET


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
    labels = cfg.get("id2label") or {}
    if not isinstance(labels, dict):  # transformers reads it as an object too
        raise CheckpointError(f"{path}: id2label must be an object like {{\"0\": \"abseiling\", …}}, got a "
                              f"{type(labels).__name__}")
    try:
        width = int(cfg.get("hidden_size", 768))
        id2label = {int(k): str(v) for k, v in labels.items()}
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
    except (TypeError, ValueError, AttributeError) as exc:  # a value of another JSON kind than transformers'
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
