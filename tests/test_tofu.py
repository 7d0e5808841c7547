"""ToFu (reducers/tofu.py): MLERP on hand-built tokens and on a bipartite plan with several sources per
destination, pruning, the first-half/second-half split, packed batches."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import noise_video, packed_tokens, seeded_model

from tokenbench.reducers import PackedTokens, get_reducer
from tokenbench.reducers.bipartite import CosineScores, FixedCount, match
from tokenbench.reducers.testing import check_packed, check_reducer, per_clip_size
from tokenbench.reducers.tofu import ToFu, merge_mlerp
from tokenbench.reducers.tome import ToMe

GRID = (8, 4, 4)


def _one_clip(x, size, pos):
    return PackedTokens(x=torch.tensor(x), cu_seqlens=torch.tensor([0, len(x)], dtype=torch.int32),
                        pos=torch.tensor(pos), size=torch.tensor(size), grid=GRID)


def _keys(*rows):
    return torch.tensor(rows).unsqueeze(1)  # one head: the metric is the rows themselves


def test_mlerp_keeps_the_largest_norm_along_the_weighted_mean():
    # A = {0, 2}, B = {1}: token 0's key equals token 1's (cos 1), token 2's is orthogonal (cos 0), so with
    # r = 1 token 0 = (3, 0) (norm 3) merges into token 1 = (0, 4) (norm 4); token 2 stays
    keys = _keys([1.0, 0.0], [1.0, 0.0], [0.0, 1.0])
    tok = _one_clip([[3.0, 0.0], [0.0, 4.0], [1.0, 1.0]], [1.0, 1.0, 2.0], [6, 4, 1])
    out = ToFu(r=1).after_attention(tok, keys, layer=11, depth=12)
    # out: unmerged A (2), then B (1); mean (1.5, 2) has norm 2.5, MLERP scales it to 4: (2.4, 3.2)
    assert torch.equal(out.x[0], tok.x[2])
    assert torch.allclose(out.x[1], torch.tensor([2.4, 3.2]))
    assert out.size.tolist() == [2.0, 2.0] and out.pos.tolist() == [1, 4]
    # size-weighted: token 0 standing for 3 inputs pulls the direction towards (1, 0): mean (2.25, 1)
    tok = _one_clip([[3.0, 0.0], [0.0, 4.0]], [3.0, 1.0], [6, 4])
    out = ToFu(r=1).after_attention(tok, keys[:2], layer=11, depth=12)
    want = torch.tensor([2.25, 1.0]) / math.hypot(2.25, 1.0) * 4.0
    assert torch.allclose(out.x[0], want) and out.size.tolist() == [4.0]
    # the plain weighted average (ToMe's merge) shrinks the norm; MLERP does not
    avg = ToMe(r=1).after_attention(tok, keys[:2], layer=11, depth=12)
    assert avg.x[0].norm() < 4.0 and math.isclose(out.x[0].norm().item(), 4.0, rel_tol=1e-6)


def test_mlerp_several_sources_take_the_maximum_norm():
    tok, keys = _packed([12, 9])
    metric = keys.mean(1)
    plan = match(tok, CosineScores(metric), FixedCount(5))
    out = merge_mlerp(plan, tok)
    members: dict[int, list[int]] = {}
    for s, d, a in zip(plan.src.flatten().tolist(), plan.dst_row.flatten().tolist(), plan.active.flatten().tolist()):
        if a:
            members.setdefault(d, [plan.keep[d].item()]).append(s)
    assert any(len(m) > 2 for m in members.values())  # some destination takes several sources
    for row in range(plan.n_out):
        if row not in members:
            assert torch.equal(out.x[row], tok.x[plan.keep[row]])
            continue
        x, w = tok.x[members[row]], tok.size[members[row]]
        mean = (x * w.unsqueeze(1)).sum(0) / w.sum()
        assert math.isclose(out.x[row].norm().item(), x.norm(dim=1).max().item(), rel_tol=1e-5)
        assert torch.allclose(F.normalize(out.x[row], dim=0), F.normalize(mean, dim=0), atol=1e-5)
        assert math.isclose(out.size[row].item(), w.sum().item(), rel_tol=1e-6)


def _packed(lens, seed=0, **kw):
    return packed_tokens(lens, GRID, seed, **kw)


def test_first_half_prunes_second_half_merges_with_mlerp():
    # clip of 4: A = 0, 2; B = 1, 3. Token 0's key equals token 1's (cos 1), token 2's is orthogonal to both
    # B keys (best 0): with r = 1, token 0 is the source, token 1 its destination
    keys = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).unsqueeze(1)
    tok = _one_clip([[3.0, 0.0], [0.0, 4.0], [5.0, 5.0], [1.0, 2.0]], [1.0] * 4, [8, 5, 2, 0])
    red = ToFu(r=1)
    assert [red.prunes(i, 12) for i in range(12)] == [True] * 6 + [False] * 6
    pruned = red.after_attention(tok, keys, layer=5, depth=12)
    # out: unmerged A (2), then B (1, 3); token 0 dropped, sizes × 4/3
    assert pruned.x.tolist() == [[5.0, 5.0], [0.0, 4.0], [1.0, 2.0]]
    assert pruned.pos.tolist() == [2, 5, 0] and torch.allclose(pruned.size, torch.full((3,), 4 / 3))
    merged = red.after_attention(tok, keys, layer=6, depth=12)
    assert torch.allclose(merged.x, torch.tensor([[5.0, 5.0], [2.4, 3.2], [1.0, 2.0]]))
    assert merged.size.tolist() == [1.0, 2.0, 1.0] and merged.pos.tolist() == [2, 5, 0]


@pytest.mark.parametrize("layer", [0, 11])  # prune, MLERP
@pytest.mark.parametrize("lens", [[20, 20, 20], [20, 13, 20, 7, 2]])
def test_batched_equals_per_clip(layer, lens):
    tok, keys = _packed(lens)
    red = ToFu(r=4)
    out = red.after_attention(tok, keys, layer, 12)
    check_packed(out, "tofu", grid=GRID, size_per_clip=per_clip_size(tok))
    for i in range(len(lens)):
        a, b = tok.cu_seqlens[i].item(), tok.cu_seqlens[i + 1].item()
        one_tok = PackedTokens(x=tok.x[a:b], cu_seqlens=torch.tensor([0, b - a], dtype=torch.int32),
                               pos=tok.pos[a:b], size=tok.size[a:b], grid=GRID)
        one = red.after_attention(one_tok, keys[a:b], layer, 12)
        c, d = out.cu_seqlens[i].item(), out.cu_seqlens[i + 1].item()
        assert torch.equal(out.x[c:d], one.x) and torch.equal(out.pos[c:d], one.pos)
        assert torch.allclose(out.size[c:d], one.size, rtol=1e-6)
    assert list(out.lens) == [n - min(4, n // 2) for n in lens]


def test_tokens_per_layer_are_tomes():
    model = seeded_model("vit_t", 5, num_frames=16, img_size=64)
    with torch.no_grad():
        model(noise_video(2, 16, 64), get_reducer("tofu", r=5))
    assert model.last_stats.tokens_per_layer == [[128 - 5 * (i + 1)] * 2 for i in range(12)]


def test_conformance_on_unequal_lengths():
    check_reducer(ToFu(r=4))


@pytest.mark.slow
def test_flops_are_counted():
    """fvcore traces the hooks (jit) through both the pruning and the MLERP blocks."""
    from tokenbench.harness.flops import count_flops, verify_analytic

    model = seeded_model("vit_t", 5, num_frames=16, img_size=64)
    video = noise_video(2, 16, 64)
    assert count_flops(model, video, ToFu(r=8)).reducer_gflops > 0
    verify_analytic(model, video, ToFu(r=8))


@pytest.mark.parametrize("selected", [False, True], ids=["full", "selected"])
def test_reads_nothing_back_from_the_device(selected):
    """The device-read spy of test_batched_reducers: no count read back, on full clips or after a selection."""
    from test_batched_reducers import device_reads

    reads = device_reads(ToFu, selected, r=(6, -1.0))
    assert len(reads) == 2 * 12 and all(calls == [] for calls in reads), reads
