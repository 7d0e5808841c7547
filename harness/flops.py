"""FLOP counting that includes attention (docs/architecture.md §5).

Two counts, which must agree:

* :func:`count_flops` traces one forward pass with fvcore's ``FlopCountAnalysis`` (multiply-adds, fvcore's
  convention: one fused multiply-add = one FLOP, reported as GFLOPs the way VideoMAE and STA report them),
  with handles registered here for every attention op the backbone can call. Out of the box fvcore (and
  torch's ``FlopCounterMode``) count **0** for ``aten::scaled_dot_product_attention`` on CPU — a quarter of
  ViT-B's work at 1,568 tokens, and the part that shrinks quadratically under token reduction.
* :func:`analytic_flops` computes the same number from the per-layer token counts the model reports
  (``model.last_stats``): per block and clip ``12·n·D²`` (qkv, proj, MLP) ``+ 2·n²·D`` (QKᵀ and AV)
  ``+ 2·5·n·D`` (the two LayerNorms, which fvcore counts as 5 FLOPs per element), plus the tubelet
  embedding (tubelets embedded × 1536 × D: those selected, before ``reducer.before_position`` drops any),
  ``fc_norm`` (5·D) and the head (D × classes). Everything else (GELU, softmax, residual adds, pooling,
  position embedding) fvcore does not count, so neither do we.
  The runner uses this count for every clip (tracing each clip is too slow) after
  :func:`verify_analytic` has checked it against fvcore on a sample.

What the reducer itself costs: ``reducer.select`` runs eagerly before the trace (under jit tracing tensor
sizes become tensors, which breaks Python arithmetic on shapes in selection code); it holds no op fvcore
counts anyway (RLT: pixel differences and comparisons; random: a sort). The in-block hooks are traced:
the similarity matmuls of ToMe and STA, and the logits of the attention statistics a reducer reads at the
blocks it declares (:mod:`tokenbench.reducers.attention_stats`, ``n²·D`` a clip per scored block), appear as
:attr:`FlopReport.reducer_gflops` (ops a block runs outside its submodules). They are small and are not in the
analytic count, which models the backbone; the runner adds the per-clip overhead measured on the sample.

Which tokens enter which part of a block: attention and ``norm1`` see the tokens entering the block; the
MLP and ``norm2`` see the tokens left after ``reducer.after_attention`` (ToMe merges there). The model
records both counts (``last_stats.tokens_per_layer`` after each block, ``tokens_mlp_per_layer`` entering
each MLP), so the count holds for a reducer acting in either hook or both.

**Varlen ops.** fvcore's handles see shapes, not values, and one packed varlen call
(``torch.nn.attention.varlen.varlen_attn`` → ``torch_attn::_varlen_attn``, or flash-attn's
``flash_attn_varlen_func``) hides the per-sequence lengths inside ``cu_seqlens``. Their handles count
exactly when the ``cu_seqlens`` values are constants of the trace and raise :class:`FlopCountError`
otherwise — never a silent 0 or a guess. :func:`count_flops` therefore always traces the per-sequence
``sdpa`` path (it sets ``model.attn_backend = "sdpa"`` for the trace and restores it), in which every
sequence's length is a visible shape; the count does not depend on which backend runs the timing.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tokenbench.reducers.base import Reducer, Selection

from .flop_handles import (
    ATTENTION_OP,
    GIGA,
    FlopAgreementError,
    FlopCountError,
    attention_handles,
    flop_analysis,
)
from .model import BASELINE

__all__ = ["AnalyticFlops", "FlopReport", "FlopCountError", "FlopAgreementError", "analytic_flops", "attention_handles",
           "count_flops", "flop_analysis", "gflops_from_stats", "verify_analytic", "GIGA", "ATTENTION_OP"]


# --- analytic count ----------------------------------------------------------------------------------
@dataclass
class AnalyticFlops:
    """Analytic GFLOPs per clip (lists indexed by clip) and per layer."""

    per_clip: list[float]  # total GFLOPs of each clip
    attention_per_clip: list[float]  # attention matmuls (QKᵀ and AV) of each clip
    parts: dict[str, list[float]]  # embed / attention_linear / attention_matmul / mlp / norm / head per clip
    per_layer: list[dict[str, float]]  # per block, summed over the clips: the same parts and "total"
    tokens_in: list[int]
    tokens_per_layer: list[list[int]]  # [layer][clip], after each block
    tokens_mlp: list[list[int]]  # [layer][clip], tokens entering each block's MLP

    @property
    def mean(self) -> float:
        return sum(self.per_clip) / len(self.per_clip)

    @property
    def attention_mean(self) -> float:
        return sum(self.attention_per_clip) / len(self.attention_per_clip)


def _dims(model: torch.nn.Module) -> tuple[int, int, int, int]:
    dim = model.embed_dim
    hidden = model.blocks[0].mlp.fc1.out_features
    patch = model.patch_embed.proj.weight[0].numel()  # 3·tubelet·patch·patch
    classes = model.head.out_features
    return dim, hidden, patch, classes


def analytic_flops(model: torch.nn.Module, tokens_in_per_clip: list[int], tokens_per_layer: list[list[int]],
                   tokens_mlp_per_layer: list[list[int]] | None = None,
                   tokens_embedded: list[int] | None = None) -> AnalyticFlops:
    """Analytic multiply-adds from token counts, in fvcore's conventions.

    ``tokens_in_per_clip``: tokens entering the first block; ``tokens_per_layer[l][i]``: tokens of clip i
    after block l (``model.last_stats``); ``tokens_mlp_per_layer[l][i]``: tokens entering block l's MLP
    (default: those entering the block, i.e. no reduction between attention and MLP); ``tokens_embedded``:
    tubelets embedded per clip (default ``tokens_in_per_clip``; more when ``reducer.before_position``
    dropped embedded tokens)."""
    dim, hidden, patch, classes = _dims(model)
    depth = len(model.blocks)
    if len(tokens_per_layer) != depth:
        raise ValueError(f"tokens_per_layer has {len(tokens_per_layer)} layers, the model {depth}")
    b = len(tokens_in_per_clip)
    entering = [list(tokens_in_per_clip)] + [list(x) for x in tokens_per_layer[:-1]]
    mlp_tokens = [list(x) for x in tokens_mlp_per_layer] if tokens_mlp_per_layer is not None else entering
    names = ("embed", "attention_linear", "attention_matmul", "mlp", "norm", "head")
    parts = {k: [0.0] * b for k in names}
    per_layer = []
    for i in range(b):
        parts["embed"][i] = (tokens_embedded or tokens_in_per_clip)[i] * patch * dim
        parts["head"][i] = 5 * dim + dim * classes  # fc_norm + head
    for layer in range(depth):
        row = dict.fromkeys(names[1:5], 0.0)
        for i in range(b):
            n, m = entering[layer][i], mlp_tokens[layer][i]
            contrib = {
                "attention_linear": 4 * n * dim * dim,  # qkv (3·D²) + proj (D²)
                "attention_matmul": 2 * n * n * dim,  # QKᵀ and AV over all heads
                "mlp": 2 * m * dim * hidden,  # fc1 + fc2
                "norm": 5 * n * dim + 5 * m * dim,  # norm1, norm2
            }
            for k, val in contrib.items():
                parts[k][i] += val
                row[k] += val
        row = {k: v / GIGA for k, v in row.items()}
        row["total"] = sum(row.values())
        per_layer.append(row)
    per_clip = [sum(parts[k][i] for k in names) / GIGA for i in range(b)]
    return AnalyticFlops(
        per_clip=per_clip,
        attention_per_clip=[x / GIGA for x in parts["attention_matmul"]],
        parts={k: [x / GIGA for x in v] for k, v in parts.items()},
        per_layer=per_layer,
        tokens_in=list(tokens_in_per_clip),
        tokens_per_layer=[list(x) for x in tokens_per_layer],
        tokens_mlp=mlp_tokens,
    )


def gflops_from_stats(model: torch.nn.Module, stats: Any = None) -> AnalyticFlops:
    """Analytic GFLOPs of every clip of the model's last forward pass (``model.last_stats``, or ``stats``).

    This is what the runner records for every clip; check it once per cell with :func:`verify_analytic`."""
    stats = stats if stats is not None else model.last_stats
    if not stats.tokens_in or not stats.tokens_per_layer:
        raise ValueError("the model has not run a forward pass yet (model.last_stats is empty)")
    return analytic_flops(model, stats.tokens_in, stats.tokens_per_layer, stats.tokens_mlp_per_layer or None,
                          stats.tokens_embedded or None)


# --- fvcore count ------------------------------------------------------------------------------------
class _Traced(torch.nn.Module):
    """fvcore traces modules with tensor inputs only: bind the reducer and selection."""

    def __init__(self, model: torch.nn.Module, reducer: Reducer, selection: Selection | None):
        super().__init__()
        self.model = model
        self.reducer = reducer
        self.selection = selection

    def forward(self, video: Tensor) -> Tensor:
        return self.model(video, reducer=self.reducer, selection=self.selection)


@dataclass
class FlopReport:
    """One traced forward pass. GFLOPs are per clip (batch total / batch size) unless named ``_total``."""

    gflops: float  # fvcore with attention handles, per clip: backbone + ops inside the reducer's hooks
    gflops_total: float  # the same, whole batch
    batch_size: int
    backbone_gflops: float  # gflops without the reducer's hook ops (what the analytic count models)
    reducer_gflops: float  # ops fvcore counts inside reducer hooks (ToMe/STA similarity matmuls), per clip
    attention_gflops: float  # attention matmuls (QKᵀ, AV) per clip
    analytic: AnalyticFlops  # the analytic count from the same pass's token counts
    by_module: dict[str, float]  # every module (names as in model.named_modules(); "" = whole model)
    by_operator: dict[str, float]  # "attention" = QKᵀ+AV, "linear", "matmul", "layer_norm", …
    by_layer: list[dict[str, float]]  # per block: attention_matmul, attention_linear, mlp, norm, reducer, total
    unsupported_ops: dict[str, int]  # ops fvcore does not count (elementwise: add, gelu, softmax, …)
    fvcore_without_attention: float  # what fvcore reports out of the box, per clip (the undercount)
    backend: str  # attention path traced (always the per-sequence sdpa path)
    tokens_in: list[int] = field(default_factory=list)
    tokens_per_layer: list[list[int]] = field(default_factory=list)

    @property
    def analytic_gflops(self) -> float:
        return self.analytic.mean

    @property
    def attention_share(self) -> float:
        return self.attention_gflops / self.gflops if self.gflops else 0.0

    @property
    def relative_difference(self) -> float:
        """|fvcore − analytic| / fvcore, reducer hook ops included on fvcore's side."""
        return abs(self.gflops - self.analytic.mean) / self.gflops if self.gflops else 0.0

    @property
    def backbone_difference(self) -> float:
        """|fvcore backbone − analytic| / fvcore backbone: the analytic model's own error (≈ 0)."""
        return abs(self.backbone_gflops - self.analytic.mean) / self.backbone_gflops if self.backbone_gflops else 0.0

    def as_metrics(self) -> dict[str, float]:
        """Result-record metrics (harness.schema names) for the traced clips."""
        return {"gflops": self.analytic.mean + self.reducer_gflops, "gflops_fvcore": self.gflops,
                "gflops_attention": self.attention_gflops}


def count_flops(model: torch.nn.Module, video: Tensor, reducer: Reducer = BASELINE,
                selection: Selection | None = None) -> FlopReport:
    """Trace one forward pass of ``model`` on ``video`` [B,3,T,H,W] with fvcore and the attention handles.

    ``reducer.select(video)`` runs eagerly before the trace unless ``selection`` is given: under jit
    tracing tensor sizes become tensors, which breaks Python arithmetic on shapes in selection code, and
    selection (pixel differences, comparisons, sorting) holds no op fvcore counts. The reducer's block
    hooks run inside the trace; what they cost (similarity matmuls) is reported as ``reducer_gflops``.
    The trace runs in eval mode under ``torch.no_grad`` through the per-sequence ``sdpa`` attention path
    (the model's backend setting is restored afterwards)."""
    was_training, backend = model.training, model.attn_backend
    model.eval()
    model.attn_backend = "sdpa"
    try:
        reducer.check_geometry(model.grid, model.depth)
        if selection is None:
            with torch.no_grad():
                selection = reducer.select(video, model.geometry)
        fa = flop_analysis(_Traced(model, reducer, selection), (video,))
        with torch.no_grad():
            total = fa.total()
        stats = model.last_stats  # the traced pass's token counts
        by_mod_op = fa.by_module_and_operator()
        unsupported = dict(fa.unsupported_ops())
    finally:
        model.train(was_training)
        model.attn_backend = backend
    b = video.shape[0]

    def per_clip(x: float) -> float:
        return x / b / GIGA

    def strip(name: str) -> str:
        return name[len("model."):] if name.startswith("model.") else ("" if name == "model" else name)

    mods = {strip(k): v for k, v in by_mod_op.items() if k != ""}
    by_module = {k: per_clip(sum(c.values())) for k, c in mods.items()}
    by_operator = {k: per_clip(v) for k, v in mods[""].items()}
    attention = by_operator.get(ATTENTION_OP, 0.0)
    by_layer = [_layer_row(mods, by_module, f"blocks.{i}", per_clip) for i in range(len(model.blocks))]
    reducer_total = sum(r["reducer"] for r in by_layer)
    return FlopReport(
        gflops=per_clip(total),
        gflops_total=total / GIGA,
        batch_size=b,
        backbone_gflops=per_clip(total) - reducer_total,
        reducer_gflops=reducer_total,
        attention_gflops=attention,
        analytic=gflops_from_stats(model, stats),
        by_module=by_module,
        by_operator=by_operator,
        by_layer=by_layer,
        unsupported_ops=unsupported,
        fvcore_without_attention=per_clip(total) - attention,
        backend="sdpa",
        tokens_in=list(stats.tokens_in),
        tokens_per_layer=[list(x) for x in stats.tokens_per_layer],
    )


def _layer_row(mods: dict[str, Counter], by_module: dict[str, float], p: str, per_clip) -> dict[str, float]:
    """One block's GFLOPs per clip by part, from fvcore's per-module, per-operator counts."""
    attn = mods.get(f"{p}.attn", Counter())
    row = {
        "attention_matmul": per_clip(attn.get(ATTENTION_OP, 0)),
        "attention_linear": per_clip(sum(v for k, v in attn.items() if k != ATTENTION_OP)),
        "mlp": by_module.get(f"{p}.mlp", 0.0),
        "norm": by_module.get(f"{p}.norm1", 0.0) + by_module.get(f"{p}.norm2", 0.0),
    }
    # ops the block runs itself, outside its submodules, are the reducer's hooks
    # (Block.forward's own ops — residual adds, log(size) — are not counted by fvcore)
    block_self = sum(mods.get(p, Counter()).values()) - sum(
        sum(mods.get(f"{p}.{c}", Counter()).values()) for c in ("norm1", "attn", "norm2", "mlp"))
    row["reducer"] = per_clip(block_self)
    row["total"] = by_module.get(p, 0.0)
    return row


def verify_analytic(model: torch.nn.Module, video: Tensor, reducer: Reducer = BASELINE,
                    selection: Selection | None = None, tol: float = 0.01) -> FlopReport:
    """Trace ``video`` (a sample of a cell's clips) with fvcore and check the analytic count the runner
    uses for every clip: it must match fvcore's count of the backbone within ``tol`` (relative), else
    :class:`FlopAgreementError`. What fvcore counts inside the reducer's hooks (ToMe/STA similarity
    matmuls, not modelled analytically) is reported as ``report.reducer_gflops`` and in
    ``report.relative_difference`` (total vs analytic) — it is not an error of the analytic model, and it
    can pass 1% for a narrow model on many tokens (ToMe on vit_t at 16×224²).

    The runner then records, for every clip, the analytic count (``gflops_from_stats``) plus
    ``report.reducer_gflops``."""
    report = count_flops(model, video, reducer, selection)
    if report.backbone_difference > tol:
        name = reducer.name
        raise FlopAgreementError(
            f"analytic FLOPs {report.analytic.mean:.3f} GFLOPs per clip vs fvcore's backbone "
            f"{report.backbone_gflops:.3f} ({100 * report.backbone_difference:.2f}%; fvcore total "
            f"{report.gflops:.3f} with {report.reducer_gflops:.3f} inside reducer hooks): more than "
            f"{100 * tol:g}% apart for {model.name} with reducer {name}.")
    return report
