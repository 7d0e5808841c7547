"""vid_tldr: the saliency and the merge on hand-built inputs, a comparison with the authors' rule (our own
transcription of mlvlab/vid-TLDR's published formulas), schedules and the conformance helper."""
from __future__ import annotations

import pytest
import torch

from tokenbench.reducers.base import AttentionContext, PackedTokens, ReducerParamError
from tokenbench.reducers.testing import check_reducer, per_clip_size
from tokenbench.reducers.vid_tldr import VidTLDR, merge_step, objective_score


def test_objective_score_zeroes_the_background_and_sharpens_the_foreground():
    s = objective_score(torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
    # min-max → [0, 1/3, 2/3, 1], mean 1/2: tokens 0, 1 background; (s − ½)/½ for the rest
    torch.testing.assert_close(s, torch.tensor([[0.0, 0.0, 1 / 3, 1.0]]))
    assert torch.equal(objective_score(torch.full((1, 4), 2.0)), torch.zeros(1, 4))  # constant: no NaN


def _hand_built(weight, size, pos) -> PackedTokens:
    """One clip; A = tokens 0, 2, 4; B = 1, 3, 5. Best matches: 0→1 (cos ≈ 1), 4→5 (≈ 0.99997), 2→3 (0.894)."""
    x = torch.tensor([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0], [0.5, 1.0], [1.0, -0.99], [1.0, -1.0]])
    return PackedTokens(x=x, cu_seqlens=torch.tensor([0, 6], dtype=torch.int32), pos=torch.tensor(pos),
                        size=torch.tensor(size), grid=(1, 2, 8), lens=(6,), weight=torch.tensor(weight))


def test_merge_on_hand_built_tokens():
    tokens = _hand_built([1.0, 1.0, 1.0, 2.0, 1.0, 1.0], [1.0, 1.0, 1.0, 3.0, 1.0, 1.0], [7, 3, 9, 1, 5, 0])
    x = tokens.x
    saliency = torch.tensor([0.5, 0.9, 0.0, 1.0, 0.0, 0.2])
    out = merge_step(tokens, saliency, [2])
    # sources 0 → 1 (weight 0.5) and 4 → 5 (background: weight 0, it vanishes from the average and the
    # weight, not from the count); out: token 2 (unmerged A), then the B tokens 1, 3, 5
    torch.testing.assert_close(out.x, torch.stack([x[2], (x[1] + 0.5 * x[0]) / 1.5, x[3], x[5]]))
    torch.testing.assert_close(out.weight, torch.tensor([1.0, 1.5, 2.0, 1.0]))
    torch.testing.assert_close(out.size, torch.tensor([1.0, 2.0, 3.0, 2.0]))
    assert out.pos.tolist() == [9, 3, 1, 0] and out.seqlens() == [4]
    # one merge: the unmerged A tokens 2 and 4 stay in their original order (ToMe puts 4, the better
    # matched, first)
    out = merge_step(tokens, saliency, [1])
    assert out.pos.tolist() == [9, 5, 3, 1, 0]
    torch.testing.assert_close(out.x[:2], x[[2, 4]])


def test_merge_is_per_clip_on_an_unequal_packed_batch():
    """Two clips of 6 and 5 tokens merge as each would alone, the second with its own count."""
    one = _hand_built([1.0] * 6, [1.0] * 6, list(range(6)))
    cu = torch.tensor([0, 6, 11], dtype=torch.int32)
    x2 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    both = PackedTokens(x=torch.cat([one.x, x2]), cu_seqlens=cu, pos=torch.cat([one.pos, torch.arange(5)]),
                        size=torch.ones(11), grid=(1, 2, 8), lens=(6, 5))
    sal = torch.rand(11, generator=torch.Generator().manual_seed(1))
    out = merge_step(both, sal, [2, 1])
    alone = [merge_step(one, sal[:6], [2]),
             merge_step(PackedTokens(x=x2, cu_seqlens=torch.tensor([0, 5], dtype=torch.int32), pos=torch.arange(5),
                                     size=torch.ones(5), grid=(1, 2, 8), lens=(5,)), sal[6:], [1])]
    assert out.seqlens() == [4, 4]
    for name in ("x", "weight", "size", "pos"):
        torch.testing.assert_close(getattr(out, name), torch.cat([getattr(a, name) for a in alone]))


# --- the authors' rule, transcribed from vid_TLDR.py (get_objective_score, merging, merge_wavg) ------------
def _authors(x, attn, size, r):
    score_attn = attn.mean(dim=1)
    scores = (score_attn * torch.log(score_attn)).sum(dim=2).unsqueeze(-1)
    scores = scores - scores.amin(dim=1, keepdim=True)
    scores = scores / scores.amax(dim=1, keepdim=True)
    mask = scores < scores.mean(dim=1, keepdim=True)
    scores = scores - scores.mean(dim=1, keepdim=True)
    scores = scores / scores.amax(dim=1, keepdim=True)
    scores[mask] = 0.0
    metric = x / x.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    sim = (a @ b.transpose(-1, -2) + 1) / 2
    node_max, node_idx = sim.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edge_idx[..., r:, :].sort(dim=1)[0], edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
    src_so = scores[..., ::2, :].gather(dim=-2, index=src_idx)

    def merge(t):
        t = t.to(torch.float32)
        src, dst = t[..., ::2, :], t[..., 1::2, :]
        c = t.shape[-1]
        unm = src.gather(dim=-2, index=unm_idx.expand(-1, -1, c))
        src = src.gather(dim=-2, index=src_idx.expand(-1, -1, c)) * src_so.to(torch.float32)
        dst = dst.scatter_reduce(-2, dst_idx.expand(-1, -1, c), src, reduce="sum")
        return torch.cat([unm, dst], dim=-2).to(torch.float64)

    size_max = size.amax(dim=-2, keepdim=True)
    out = merge(x * (size / size_max))
    new_size = merge(size)
    return out / (new_size / size_max), new_size


def test_matches_the_authors_rule_on_equal_length_clips():
    g = torch.Generator().manual_seed(1)
    b, n, heads, hd, dim, r = 3, 40, 2, 8, 16, 7
    q = torch.randn(b * n, heads, hd, generator=g, dtype=torch.float64)
    k = torch.randn(b * n, heads, hd, generator=g, dtype=torch.float64)
    x = torch.randn(b * n, dim, generator=g, dtype=torch.float64)
    weight = torch.rand(b * n, generator=g, dtype=torch.float64) + 0.5  # the authors' size, after earlier merges
    scale = hd ** -0.5
    cu = torch.arange(b + 1, dtype=torch.int32) * n
    ctx = AttentionContext(queries=q, keys=k, scale=scale, cu_seqlens=cu, lens=(n,) * b,
                           bias=weight.log())  # the block's bias, which the saliency must not see
    tokens = PackedTokens(x=x, cu_seqlens=cu, pos=torch.arange(b * n) % n, size=torch.ones(b * n, dtype=torch.float64),
                          grid=(1, 5, 8), lens=(n,) * b, weight=weight)
    out = VidTLDR(r=[r]).after_attention(tokens, k, 0, 1, attn=ctx)
    qb, kb = (t.view(b, n, heads, hd).transpose(1, 2) for t in (q, k))
    attn = (qb @ kb.transpose(-1, -2) * scale).softmax(-1)  # before any size bias, as the authors score
    ref_x, ref_size = _authors(x.view(b, n, dim), attn, weight.view(b, n, 1), r)
    torch.testing.assert_close(out.x.view(b, n - r, dim), ref_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.weight.view(b, n - r), ref_size.squeeze(-1), rtol=1e-5, atol=1e-5)
    # the exact count: every token that entered is still counted once
    assert per_clip_size(out).tolist() == [float(n)] * b
    assert out.seqlens() == [n - r] * b


def test_schedule_and_geometry():
    red = VidTLDR(r=[10, 0.25])
    assert red.attention_layers(4) == frozenset({0, 1})
    assert [red.merged(r, n) for r, n in ((10, 64), (0.25, 54), (10, 12))] == [10, 13, 6]
    with pytest.raises(ReducerParamError, match="at most half"):
        VidTLDR(r=[40]).check_geometry((2, 4, 4), 4)
    with pytest.raises(ReducerParamError, match="r must be"):
        VidTLDR(r=[-1])
    with pytest.raises(ReducerParamError, match="blocks"):
        VidTLDR(r=[1] * 5).schedule(4)


def test_conformance_on_unequal_lengths():
    rep = check_reducer(VidTLDR(r=[30, 10, 0.1]))
    assert rep.tokens_out != rep.tokens_in


def test_saliency_is_computed_within_each_clip_of_a_packed_batch():
    from tokenbench.reducers.vid_tldr import clip_saliency

    ne = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0, -1.0, 4.0])
    tokens = PackedTokens(x=torch.zeros(7, 2), cu_seqlens=torch.tensor([0, 4, 7], dtype=torch.int32),
                          pos=torch.arange(7), size=torch.ones(7), grid=(1, 1, 8), lens=(4, 3))
    expect = torch.cat([objective_score(ne[:4].unsqueeze(0))[0], objective_score(ne[4:].unsqueeze(0))[0]])
    torch.testing.assert_close(clip_saliency(tokens, ne), expect)
