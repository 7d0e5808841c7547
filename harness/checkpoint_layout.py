"""The two key layouts a VideoMAE checkpoint comes in, told apart by the names alone, and the mapping of
transformers' names onto tokenbench's (which are the original VideoMAE layout's).

* the **original layout** of VideoMAE / VideoMAE-2: ``blocks.N.attn.qkv.weight``, ``q_bias``, ``v_bias``,
  ``patch_embed.proj``, ``fc_norm``, ``head``, possibly under ``module.``/``encoder.``/``backbone.``;
* the **transformers layout**: ``videomae.encoder.layer.N.attention.attention.query.weight`` …,
  ``fc_norm``, ``classifier``; the q/v biases spelled as the hub's files do (``q_bias`` / ``v_bias``) or
  as transformers' ``state_dict`` does (``query.bias`` / ``value.bias``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint_files import CheckpointError

_PREFIXES = ("module.", "encoder.", "backbone.")


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
