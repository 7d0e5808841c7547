"""vid_tldr: the saliency and the merge on hand-built inputs, a comparison with the authors' rule (our own
transcription of mlvlab/vid-TLDR's published formulas), schedules and the conformance helper."""
from __future__ import annotations

import pytest
import torch

from tokenbench.reducers.base import AttentionContext, PackedTokens, ReducerParamError
from tokenbench.reducers.testing import check_reducer, per_clip_size
from tokenbench.reducers.vid_tldr import VidTLDR, apply_weighted, match_clips, objective_score


def test_objective_score_zeroes_the_background_and_sharpens_the_foreground():
    s = objective_score(torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
    # min-max → [0, 1/3, 2/3, 1], mean 1/2: tokens 0, 1 background; (s − ½)/½ for the rest
    torch.testing.assert_close(s, torch.tensor([[0.0, 0.0, 1 / 3, 1.0]]))
    assert torch.equal(objective_score(torch.full((1, 4), 2.0)), torch.zeros(1, 4))  # constant: no NaN


def test_merge_on_hand_built_tokens():
    """A = tokens 0, 2, 4; B = 1, 3, 5. Best matches: 0→1 (cos ≈ 1), 4→5 (≈ 0.99997), 2→3 (0.894)."""
    x = torch.tensor([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0], [0.5, 1.0], [1.0, -0.99], [1.0, -1.0]]).unsqueeze(0)
    plan = match_clips(x, 2)
    assert plan.src.tolist() == [[0, 2]] and plan.dst.tolist() == [[0, 2]]  # A-index 0→B 0, A 2 (token 4)→B 2
    assert plan.unmerged.tolist() == [[1]]  # token 2
    plan = match_clips(x, 1)
    assert plan.unmerged.tolist() == [[1, 2]]  # tokens 2, 4 in original order (ToMe would put 4 first)
    weight = torch.tensor([[1.0, 1.0, 1.0, 2.0, 1.0, 1.0]])
    size = torch.tensor([[1.0, 1.0, 1.0, 3.0, 1.0, 1.0]])
    pos = torch.tensor([[7, 3, 9, 1, 5, 0]])
    saliency = torch.tensor([[0.5, 0.9, 0.0, 1.0, 0.0, 0.2]])
    ox, ow, os_, op = apply_weighted(match_clips(x, 2), x, weight, size, pos, saliency)
    # out: token 2 (unmerged A), then B tokens 1, 3, 5; token 0 merged into 1 with weight 0.5, token 4 into 5
    # with weight 0 (background: it vanishes from the average and the weight, not from the count)
    torch.testing.assert_close(ox[0], torch.stack([x[0, 2], (x[0, 1] + 0.5 * x[0, 0]) / 1.5, x[0, 3], x[0, 5]]))
    torch.testing.assert_close(ow[0], torch.tensor([1.0, 1.5, 2.0, 1.0]))
    torch.testing.assert_close(os_[0], torch.tensor([1.0, 2.0, 3.0, 2.0]))
    assert op[0].tolist() == [9, 3, 1, 0]


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
