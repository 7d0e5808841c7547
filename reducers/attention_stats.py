"""Exact attention statistics from a block's :class:`~tokenbench.reducers.base.AttentionContext`, computed
without materialising the attention matrix of a whole sequence.

The block's attention stays on its fused kernel (SDPA, ``cpu_varlen``, flash / torch varlen), which never
forms the probabilities. A reducer that scores tokens by attention asks for the statistic it needs, at the
blocks it scores: per packed sequence and per chunk of ``chunk`` query rows, the logits
``scale·q·kᵀ (+ bias)`` of those rows against every key of the sequence are formed, softmaxed per head and
averaged over heads, and reduced to the statistic. A row's softmax needs all of its keys and nothing of
the other rows, so chunking rows is exact; memory is ``heads × chunk × n`` whatever the clip length.

* :func:`attention_entropy` — the entropy of each query's head-averaged attention row,
  ``H_i = −Σ_j p̄_ij log p̄_ij`` with ``p̄ = mean_h softmax_j(logits_h)`` (vid-TLDR's saliency is ``−H``,
  computed on the head-averaged row, as its ``get_objective_score`` does);
* :func:`attention_received` — the mean attention each token receives, ``(1/n) Σ_i p̄_ij`` (MCTF's and our
  CLS-free stand-in for the class token's attention row; it sums to 1 over a sequence like that row).

Both compute in float32 (float64 inputs stay float64) and under ``no_grad``: reducers use them to choose
and weight tokens, as the authors detach their attention maps.

FLOPs: the only multiply-adds are the logits, ``n² · heads · head_dim`` per sequence (a ``matmul`` per
chunk, which fvcore counts inside the reducer's hook); :func:`statistic_flops` is the analytic count the
tests check fvcore against. Softmax, logarithms and sums are elementwise (fvcore counts none).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import AttentionContext

CHUNK_ROWS = 256  # query rows per chunk: heads·256·n floats (12 heads, n = 1568: 19 MB in float32)


def _rows(ctx: AttentionContext, bias: bool, chunk: int):
    """Yields (sequence index, row slice, p̄ [rows, n]) chunk by chunk: the head-averaged attention."""
    if chunk < 1:
        raise ValueError(f"chunk must be ≥ 1, got {chunk}")
    q_all, k_all = ctx.queries, ctx.keys
    dtype = torch.float64 if q_all.dtype == torch.float64 else torch.float32
    lens = list(ctx.lens)
    biases = ctx.bias.split(lens)
    for s, (q, k, b) in enumerate(zip(q_all.split(lens), k_all.split(lens), biases)):
        n = q.shape[0]
        qh = q.transpose(0, 1).to(dtype)  # [h, n, d]
        kt = k.permute(1, 2, 0).to(dtype)  # [h, d, n]
        key_bias = b.to(dtype).view(1, 1, n)
        for r0 in range(0, n, chunk):
            r1 = min(n, r0 + chunk)
            logits = torch.matmul(qh[:, r0:r1], kt) * ctx.scale
            if bias:
                logits = logits + key_bias
            yield s, slice(r0, r1), logits.softmax(dim=-1).mean(dim=0)


def attention_entropy(ctx: AttentionContext, *, bias: bool = False, chunk: int = CHUNK_ROWS) -> Tensor:
    """[N_total]: entropy of each query's head-averaged attention row within its sequence. ``bias``: include
    the context's logit bias (proportional attention); vid-TLDR scores the attention *before* it."""
    out = []
    with torch.no_grad():
        for _, _, p in _rows(ctx, bias, chunk):
            out.append(-torch.special.xlogy(p, p).sum(dim=-1))  # 0·log 0 = 0
    return torch.cat(out) if out else ctx.queries.new_zeros(0)


def attention_received(ctx: AttentionContext, *, bias: bool = True, chunk: int = CHUNK_ROWS) -> Tensor:
    """[N_total]: mean over a sequence's queries of the head-averaged attention each token receives; sums to
    1 over each sequence. ``bias`` (default on): the attention the block computed, its bias included."""
    out = []
    with torch.no_grad():
        acc = None
        for s, rows, p in _rows(ctx, bias, chunk):
            col = p.sum(dim=0)
            acc = col if rows.start == 0 else acc + col
            if rows.stop == ctx.lens[s]:
                out.append(acc / ctx.lens[s])
    return torch.cat(out) if out else ctx.queries.new_zeros(0)


def statistic_flops(lens: list[int] | tuple[int, ...], heads: int, head_dim: int) -> int:
    """Multiply-adds of one statistic over sequences of ``lens`` tokens (fvcore's convention): the logits."""
    return sum(n * n for n in lens) * heads * head_dim
