"""The attention context and its statistics: exact against a float64 reference that materialises the full
attention, on packed batches of unequal lengths (one clip longer than a chunk); handed only where declared;
counted in the reducer's FLOPs."""
from __future__ import annotations

import pytest
import torch
from conftest import noise_video, seeded_model

from tokenbench.harness.flops import count_flops
from tokenbench.reducers.attention_stats import (
    CHUNK_ROWS,
    attention_entropy,
    attention_received,
    statistic_flops,
)
from tokenbench.reducers.base import NO_ATTENTION, AttentionContext, Reducer


def _context(lens, heads=3, dim=8, dtype=torch.float64, seed=0, bias=False) -> AttentionContext:
    g = torch.Generator().manual_seed(seed)
    n = sum(lens)
    q = torch.randn(n, heads, dim, generator=g, dtype=torch.float64) * 2
    k = torch.randn(n, heads, dim, generator=g, dtype=torch.float64) * 2
    b = (torch.rand(n, generator=g, dtype=torch.float64).mul(3).add(0.5).log() if bias
         else torch.zeros(n, dtype=torch.float64))
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    return AttentionContext(queries=q.to(dtype), keys=k.to(dtype), scale=dim ** -0.5, cu_seqlens=cu,
                            lens=tuple(lens), bias=b.to(dtype))


def _reference(ctx: AttentionContext, with_bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Full softmax of the logits per sequence in float64, head-averaged: (row entropy, mean received)."""
    ent, rec = [], []
    q, k, b = ctx.queries.double(), ctx.keys.double(), ctx.bias.double()
    start = 0
    for n in ctx.lens:
        qs, ks = q[start:start + n].transpose(0, 1), k[start:start + n].transpose(0, 1)
        logits = qs @ ks.transpose(1, 2) * ctx.scale
        if with_bias:
            logits = logits + b[start:start + n].view(1, 1, n)
        p = logits.softmax(-1).mean(0)  # [n, n]
        ent.append(-(p * p.log()).sum(-1))
        rec.append(p.mean(0))
        start += n
    return torch.cat(ent), torch.cat(rec)


@pytest.mark.parametrize("with_bias", [False, True])
def test_statistics_equal_the_materialised_float64_reference(with_bias):
    lens = [5, 70, 1, 33]  # unequal, one clip longer than a chunk of 16 rows, a one-token clip
    ctx = _context(lens, bias=with_bias)
    ref_ent, ref_rec = _reference(ctx, with_bias)
    ent = attention_entropy(ctx, bias=with_bias, chunk=16)
    rec = attention_received(ctx, bias=with_bias, chunk=16)
    assert ent.dtype == torch.float64
    torch.testing.assert_close(ent, ref_ent, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rec, ref_rec, rtol=1e-12, atol=1e-12)
    # each sequence's received attention is a distribution, like a class token's row
    sums = torch.stack([s.sum() for s in rec.split(lens)])
    torch.testing.assert_close(sums, torch.ones(len(lens), dtype=torch.float64))
    # the chunk size changes nothing but memory
    torch.testing.assert_close(attention_entropy(ctx, bias=with_bias, chunk=7), ent, rtol=1e-12, atol=1e-12)


def test_statistics_in_float32_at_the_default_chunk():
    lens = [CHUNK_ROWS + 40, 9]  # one clip over the default chunk
    ctx64 = _context(lens, heads=2, dim=4, seed=3)
    ref_ent, ref_rec = _reference(ctx64, False)
    ctx32 = AttentionContext(queries=ctx64.queries.float(), keys=ctx64.keys.float(), scale=ctx64.scale,
                             cu_seqlens=ctx64.cu_seqlens, lens=ctx64.lens, bias=ctx64.bias.float())
    torch.testing.assert_close(attention_entropy(ctx32).double(), ref_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention_received(ctx32).double(), ref_rec, rtol=1e-5, atol=1e-6)


class _Probe(Reducer):
    """Records what the model hands after_attention at each block."""

    def __init__(self, layers):
        self.layers, self.seen = frozenset(layers), {}

    def attention_layers(self, depth):
        return self.layers

    def after_attention(self, tokens, keys, layer, depth, attn=NO_ATTENTION):
        self.seen[layer] = None if attn is NO_ATTENTION else (attn, tokens)
        return tokens


def test_model_hands_the_context_only_at_declared_blocks():
    model = seeded_model().eval()
    probe = _Probe({1, 3})
    with torch.no_grad():
        model(noise_video(2, 16, 64), probe)
    assert sorted(k for k, v in probe.seen.items() if v is not None) == [1, 3]
    assert all(v is None for k, v in probe.seen.items() if k not in (1, 3))
    ctx, tokens = probe.seen[1]
    assert ctx.queries.shape == ctx.keys.shape == (tokens.x.shape[0], model.heads, model.embed_dim // model.heads)
    assert ctx.lens == tuple(tokens.seqlens()) and ctx.scale == model.blocks[1].attn.scale
    assert torch.equal(ctx.bias, torch.zeros_like(ctx.bias))  # no proportional attention: no bias
    with pytest.raises(AttributeError, match="attention_layers"):
        NO_ATTENTION.queries  # noqa: B018


def test_hook_cost_counts_the_statistic_flops():
    """fvcore counts the statistic's logits inside the reducer's hook, as the analytic count says."""
    from tokenbench.reducers.attn_prune import AttnPrune

    model = seeded_model().eval()
    video = noise_video(2, 16, 64)
    red = AttnPrune(layers=[2], keep_rate=0.5)
    rep = count_flops(model, video, red)
    lens = [128, 128]  # entering block 2 (no reduction before it)
    heads, head_dim = model.heads, model.embed_dim // model.heads
    expect = statistic_flops(lens, heads, head_dim) / 2 / 1e9
    assert rep.by_layer[2]["reducer"] == pytest.approx(expect, rel=1e-9)
    assert all(row["reducer"] == 0 for i, row in enumerate(rep.by_layer) if i != 2)
    assert rep.backbone_difference < 1e-6  # the block's own attention is still counted as before


def test_vid_tldr_hook_cost_is_the_statistic_plus_its_matching():
    from tokenbench.reducers.vid_tldr import VidTLDR

    model = seeded_model().eval()
    rep = count_flops(model, noise_video(2, 16, 64), VidTLDR(r=[30, 10]))
    dim, heads = model.embed_dim, model.heads
    for layer, n, r in ((0, 128, 30), (1, 98, 10)):  # tokens entering each scored block, merged there
        expect = statistic_flops([n], heads, dim // heads) + (n // 2) ** 2 * dim  # logits + A·Bᵀ similarity
        got = rep.by_layer[layer]["reducer"] * 1e9
        # + the core's weighted apply: one-hot [r, r] products over the sources' rows, weights and sizes
        assert expect < got <= expect + r * r * (dim + 3)
    assert rep.backbone_difference < 1e-9


def test_embedding_flops_count_the_tubelets_embedded_before_before_position():
    from tokenbench.reducers.feature_diff import FeatureDiff

    model = seeded_model().eval()
    rep = count_flops(model, noise_video(2, 16, 64), FeatureDiff(drop_rate=0.5))
    assert rep.tokens_in == [64, 64] and model.last_stats.tokens_embedded == [128, 128]
    assert rep.backbone_difference < 1e-9  # fvcore saw all 128 embedded; the analytic count does too
