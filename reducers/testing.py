"""Conformance checks any reducer must pass — tokenbench's own and yours.

Use it in your plugin's tests::

    from tokenbench.reducers.testing import check_reducer
    check_reducer(MyReducer(ratio=0.5))

:func:`check_reducer` raises ``AssertionError`` with a message saying which rule broke. It checks, on a
small video ViT and on batches whose clips have *unequal* token counts:

* ``select`` (if the reducer has one) returns bool ``keep`` / long ``lengths`` of shape [B, T', H', W'],
  lengths 0 exactly where dropped, at least one token per clip;
* after every hook: ``cu_seqlens`` int32, starts at 0, monotone, ends at the number of tokens;
  ``x``, ``pos``, ``size`` and ``weight`` agree in length; ``pos`` lies in the grid; no clip is emptied; the
  grid is unchanged; per clip, ``size`` sums to the tokens that entered the reducer (nothing created or lost;
  ``weight``, the pooling weight, may differ); at the blocks the reducer scores, the attention context lines
  up with the tokens;
* determinism: a second reducer built with the same parameters gives identical outputs;
* a full forward pass through the model on a packed batch of unequal lengths gives finite logits of
  the right shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

# The one import of harness from reducers: a conformance check runs the reducer through the real backbone.
from tokenbench.harness.model import build_model

from .base import PackedTokens, Reducer, Selection, lengths
from .contract import (  # noqa: F401 - the contract check lives in contract.py; re-exported for plugins' tests
    Checked,
    ReducerContractError,
    checked,
    contract_violation,
    selection_violation,
)


@dataclass
class ConformanceReport:
    reducer: str
    tokens_in: list[int] = field(default_factory=list)
    tokens_out: list[int] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)


def check_packed(tokens: PackedTokens, where: str, grid: tuple[int, int, int] | None = None,
                 size_per_clip: Tensor | None = None) -> None:
    """Assert the invariants of a PackedTokens; ``where`` names the hook in messages."""
    cu = tokens.cu_seqlens
    assert cu.dtype == torch.int32, f"{where}: cu_seqlens must be int32, got {cu.dtype}"
    assert cu.dim() == 1 and cu.numel() >= 2, f"{where}: cu_seqlens must be [B+1], got {tuple(cu.shape)}"
    assert int(cu[0]) == 0, f"{where}: cu_seqlens must start at 0, got {int(cu[0])}"
    d = lengths(cu)
    assert bool((d > 0).all()), f"{where}: cu_seqlens must increase strictly (no empty clip), got {cu.tolist()}"
    n = tokens.x.shape[0]
    assert int(cu[-1]) == n, f"{where}: cu_seqlens ends at {int(cu[-1])} but x has {n} tokens"
    assert tokens.pos.shape == (n,), f"{where}: pos has shape {tuple(tokens.pos.shape)}, expected ({n},)"
    assert tokens.size.shape == (n,), f"{where}: size has shape {tuple(tokens.size.shape)}, expected ({n},)"
    assert tokens.weight.shape == (n,), f"{where}: weight has shape {tuple(tokens.weight.shape)}, expected ({n},)"
    assert tokens.pos.dtype == torch.long, f"{where}: pos must be long, got {tokens.pos.dtype}"
    if grid is not None:
        assert tuple(tokens.grid) == tuple(grid), f"{where}: grid changed from {grid} to {tokens.grid}"
    total = tokens.grid[0] * tokens.grid[1] * tokens.grid[2]
    assert bool(((tokens.pos >= 0) & (tokens.pos < total)).all()), f"{where}: pos outside the {total}-slot grid"
    assert bool((tokens.size > 0).all()), f"{where}: every size must be positive"
    assert bool((tokens.weight > 0).all()), f"{where}: every weight must be positive"
    if size_per_clip is not None:
        got = per_clip_size(tokens)
        assert torch.allclose(got, size_per_clip.to(got.dtype), rtol=1e-4, atol=1e-3), (
            f"{where}: sizes per clip sum to {got.tolist()}, but {size_per_clip.tolist()} tokens entered")


def per_clip_size(tokens: PackedTokens) -> Tensor:
    ids = tokens.seq_ids()
    return torch.zeros(tokens.batch_size, dtype=torch.float64).index_add_(0, ids.cpu(), tokens.size.double().cpu())


def check_selection(sel: Selection | None, shape: tuple[int, ...]) -> None:
    if sel is None:
        return
    assert isinstance(sel, Selection), f"select() must return a Selection or None, got {type(sel).__name__}"
    assert tuple(sel.keep.shape) == shape, f"select(): keep has shape {tuple(sel.keep.shape)}, expected {shape}"
    assert sel.keep.dtype == torch.bool, f"select(): keep must be bool, got {sel.keep.dtype}"
    assert tuple(sel.lengths.shape) == shape, f"select(): lengths has shape {tuple(sel.lengths.shape)}"
    assert sel.lengths.dtype == torch.long, f"select(): lengths must be long, got {sel.lengths.dtype}"
    assert bool(((sel.lengths > 0) == sel.keep).all()), "select(): lengths must be > 0 exactly where kept"
    kept = sel.keep.flatten(1).sum(1)
    assert bool((kept > 0).all()), f"select(): a clip keeps no token ({kept.tolist()})"


class _Recorder(Reducer):
    """Wraps the reducer under test: applies a fixed unequal-length selection first, then checks the
    reducer's in-block hooks at every layer and records what they return."""

    def __init__(self, inner: Reducer, selection: Selection | None):
        self.inner, self.selection, self.outputs = inner, selection, []
        self.prop_attn = bool(getattr(inner, "prop_attn", False))

    def select(self, video, geometry=None):
        return self.selection

    def attention_layers(self, depth):
        return self.inner.attention_layers(depth)

    def before_position(self, tokens):
        before = per_clip_size(tokens)
        out = self.inner.before_position(tokens)
        assert isinstance(out, PackedTokens), f"before_position must return PackedTokens, got {type(out).__name__}"
        check_packed(out, f"{type(self.inner).__name__}.before_position", grid=tokens.grid, size_per_clip=before)
        return out

    def _hook(self, kind, tokens, keys, layer, depth, **attn):
        if kind == "after_attention" or keys is not None:
            assert keys is not None and keys.shape[0] == tokens.x.shape[0], f"{kind}: keys and tokens disagree"
        if attn:
            ctx = attn["attn"]
            assert ctx.queries.shape == ctx.keys.shape and ctx.queries.shape[0] == tokens.x.shape[0], \
                f"{kind}: the attention context and the tokens disagree"
            assert list(ctx.lens) == tokens.seqlens(), f"{kind}: the attention context's lens are not the tokens'"
        before = per_clip_size(tokens)
        out = getattr(self.inner, kind)(tokens, keys, layer, depth, **attn)
        assert isinstance(out, PackedTokens), f"{kind} must return PackedTokens, got {type(out).__name__}"
        where = f"{type(self.inner).__name__}.{kind}(layer={layer})"
        check_packed(out, where, grid=tokens.grid, size_per_clip=before)
        assert out.batch_size == tokens.batch_size, f"{where}: batch size changed"
        self.outputs.append((out.x.detach().clone(), out.pos.clone(), out.cu_seqlens.clone()))
        return out

    def after_attention(self, tokens, keys, layer, depth, **attn):
        return self._hook("after_attention", tokens, keys, layer, depth, **attn)

    def after_block(self, tokens, keys, layer, depth):
        return self._hook("after_block", tokens, keys, layer, depth)


def _unequal_selection(batch: int, grid: tuple[int, int, int]) -> Selection:
    """Clip i keeps a different share of tubelets: whole time steps dropped from the end, so
    lengths differ across the batch and remain valid run lengths."""
    t, h, w = grid
    keep = torch.zeros(batch, t, h, w, dtype=torch.bool)
    for i in range(batch):
        keep[i, : max(1, t - i)] = True
    lengths = keep.long()
    return Selection(keep=keep, lengths=lengths)


def check_reducer(reducer: Reducer, *, model_name: str = "vit_t", num_frames: int = 16, img_size: int = 64,
                  batch: int = 3, seed: int = 0, video: Tensor | None = None) -> ConformanceReport:
    """Run the conformance checks on ``reducer``; raises AssertionError naming the broken rule.

    ``video`` [B,3,T,H,W] may be given (e.g. a real clip, for content-dependent reducers); by default a
    seeded random batch is used. ``num_frames`` 16 gives T'=8, which every built-in reducer accepts.
    """
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=5, num_frames=num_frames, img_size=img_size).eval()
    if video is None:
        video = torch.randn(batch, 3, num_frames, img_size, img_size, generator=torch.Generator().manual_seed(seed))
    batch = video.shape[0]
    grid = model.grid
    report = ConformanceReport(reducer=repr(reducer))

    # 1. select(): shape/type/contents, determinism.
    sel = reducer.select(video, model.geometry)
    check_selection(sel, (batch, *grid))
    twin = reducer.fresh()
    sel2 = twin.select(video, model.geometry)
    if sel is not None:
        assert torch.equal(sel.keep, sel2.keep) and torch.equal(sel.lengths, sel2.lengths), \
            "select() is not deterministic: two reducers with the same parameters chose differently"
        report.checks.append("select")

    # 2. The in-block hooks on a packed batch of unequal lengths (and the full forward pass).
    base_sel = _unequal_selection(batch, grid)
    runs = []
    for r in (reducer.fresh(), reducer.fresh()):
        rec = _Recorder(r, base_sel)
        with torch.no_grad():
            logits = model(video, rec)
        assert logits.shape == (batch, 5), f"logits have shape {tuple(logits.shape)}"
        assert bool(torch.isfinite(logits).all()), "logits are not finite"
        runs.append((logits, rec.outputs))
    report.tokens_in = model.last_stats.tokens_in
    report.tokens_out = model.last_stats.tokens_per_layer[-1]
    assert len(set(report.tokens_in)) > 1, "internal: the test batch should have unequal lengths"
    (l1, o1), (l2, o2) = runs
    assert torch.equal(l1, l2), "forward pass is not deterministic under the same parameters"
    assert len(o1) == len(o2) and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(o1, o2)
    ), "hooks are not deterministic under the same parameters"
    report.checks.append("hooks on unequal lengths")

    # 3. The reducer's own selection end to end.
    with torch.no_grad():
        try:
            logits = model(video, checked(reducer))
        except ReducerContractError as exc:
            raise AssertionError(str(exc)) from None
    assert logits.shape == (batch, 5) and bool(torch.isfinite(logits).all()), "own forward pass failed"
    report.checks.append("forward")
    return report
