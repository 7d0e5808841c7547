"""The run-time contract check: a reducer wrapped so that each of its calls is checked, cheaply, against
the interface, and a broken reducer fails with :class:`ReducerContractError` naming the hook and the rule
instead of a bare torch error deep in the model. The runner wraps every reducer it builds this way.

The check is a wrapper by composition (:class:`Checked`): it holds the reducer and forwards every
attribute it does not check — parameters, declared capabilities (present and future), ``calibrate`` — to
it, so the wrapped reducer behaves exactly as itself and its class is never touched.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import NO_ATTENTION, VIDEOMAE, AttentionContext, Geometry, PackedTokens, Reducer, Selection


class ReducerContractError(RuntimeError):
    """A reducer returned something the interface does not allow (the message names the hook and the rule)."""


def contract_violation(out: object, before: PackedTokens, where: str) -> str:
    """The first rule a hook's output breaks, checked on shapes only (no device sync: cheap enough to run
    after every hook of every forward pass), or ``""``. The same rules as
    :func:`tokenbench.reducers.testing.check_packed`, in its words."""
    if not isinstance(out, PackedTokens):
        return f"{where} must return PackedTokens, got {type(out).__name__}"
    n = out.x.shape[0]
    if out.x.dim() != 2 or out.x.shape[1:] != before.x.shape[1:]:
        return f"{where}: x has shape {tuple(out.x.shape)}, expected [N, {before.x.shape[1]}]"
    for name in ("pos", "size", "weight"):
        shape = tuple(getattr(out, name).shape)
        if shape != (n,):
            return f"{where}: x has {n} tokens but {name} has shape {shape} (x, pos, size and weight must agree)"
    if out.cu_seqlens.shape != before.cu_seqlens.shape:
        return f"{where}: cu_seqlens has shape {tuple(out.cu_seqlens.shape)}, expected {tuple(before.cu_seqlens.shape)}"
    if tuple(out.grid) != tuple(before.grid):
        return f"{where}: grid changed from {before.grid} to {out.grid}"
    if out.cu_seqlens.device.type == "cpu" and int(out.cu_seqlens[-1]) != n:  # a sync elsewhere: CPU only
        return f"{where}: cu_seqlens ends at {int(out.cu_seqlens[-1])} but x has {n} tokens"
    return ""


def selection_violation(sel: object, video: Tensor, where: str, geometry: Geometry = VIDEOMAE) -> str:
    """The first rule a ``select`` result breaks, on shapes and dtypes only, or ``""``."""
    if sel is None:
        return ""
    if not isinstance(sel, Selection):
        return f"{where} must return a Selection or None, got {type(sel).__name__}"
    shape = (video.shape[0], *geometry.grid(video))
    if tuple(sel.keep.shape) != shape:
        return f"{where}: keep has shape {tuple(sel.keep.shape)}, expected {shape}"
    if tuple(sel.lengths.shape) != shape:
        return f"{where}: lengths has shape {tuple(sel.lengths.shape)}, expected {shape}"
    if sel.keep.dtype != torch.bool:
        return f"{where}: keep must be bool, got {sel.keep.dtype}"
    if sel.lengths.dtype != torch.long:
        return f"{where}: lengths must be long, got {sel.lengths.dtype}"
    return ""


class Checked:
    """``inner`` with a contract check after each of its hooks; everything else is ``inner``'s own."""

    def __init__(self, inner: Reducer):
        self.inner = inner
        self._who = type(inner).__name__

    def __getattr__(self, name: str) -> Any:  # only for what this class does not define
        if name == "inner":  # not yet set (copy, pickle): never recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    def select(self, video: Tensor, geometry: Geometry = VIDEOMAE) -> Selection | None:
        sel = self.inner.select(video, geometry)
        why = selection_violation(sel, video, f"{self._who}.select()", geometry)
        if why:
            raise ReducerContractError(why)
        return sel

    def _checked(self, kind: str, tokens: PackedTokens, keys: Tensor | None, layer: int, depth: int,
                 **attn: AttentionContext):
        out = getattr(self.inner, kind)(tokens, keys, layer, depth, **attn)
        if out is not tokens:
            why = contract_violation(out, tokens, f"{self._who}.{kind}(layer={layer})")
            if why:
                raise ReducerContractError(why)
        return out

    def before_position(self, tokens: PackedTokens) -> PackedTokens:
        out = self.inner.before_position(tokens)
        if out is not tokens:
            why = contract_violation(out, tokens, f"{self._who}.before_position()")
            if why:
                raise ReducerContractError(why)
        return out

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int,
                        attn: AttentionContext = NO_ATTENTION) -> PackedTokens:
        # the context only where the reducer declared it: a hook written without the keyword keeps working
        return self._checked("after_attention", tokens, keys, layer, depth,
                             **({} if attn is NO_ATTENTION else {"attn": attn}))

    def after_block(self, tokens: PackedTokens, keys: Tensor | None, layer: int, depth: int) -> PackedTokens:
        return self._checked("after_block", tokens, keys, layer, depth)

    def fresh(self) -> Checked:
        return Checked(self.inner.fresh())

    def for_eval(self) -> Checked:
        return checked(self.inner.for_eval())

    def __repr__(self) -> str:
        return repr(self.inner)


def checked(reducer: Reducer | Checked) -> Reducer | Checked:
    """``reducer`` wrapped in the contract check (once: a checked reducer is returned as it is). The baseline
    (``identity``) is returned as it is too: it changes nothing, and the A/A control times it against
    itself, so its two arms must run the same calls."""
    return reducer if isinstance(reducer, Checked) or reducer.identity else Checked(reducer)
