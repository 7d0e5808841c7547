"""The bipartite core (reducers/bipartite.py) and the merge-vs-drop family (reducers/merge_drop.py) on
hand-built inputs whose answer is known by construction, plus conformance on unequal packed batches."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokenbench.reducers import PackedTokens, ReducerParamError, get_reducer
from tokenbench.reducers.bipartite import (
    BatchRankCount,
    CosineScores,
    FixedCount,
    ThresholdCount,
    drop,
    match,
    merge_wavg,
    merge_weighted,
)
from tokenbench.reducers.merge_drop import RandomDrop, RandomMerge, ToMeDrop, ToMeHybrid
from tokenbench.reducers.testing import check_reducer, per_clip_size
from tokenbench.reducers.tome import ToMe

GRID = (8, 4, 4)
E = torch.eye(3)


def _six():
    """Six tokens of one clip, A = {0, 2, 4}, B = {1, 3, 5}, keys [6, 1 head, 3]. By construction
    A0→B1 scores 1.0, A2→B3 0.8, A4→B3 ≈ 0.29 (its best); so r = 2 takes A0 and A2."""
    k = torch.stack([E[0], E[0], torch.tensor([0.6, 0.8, 0.0]), E[1], torch.tensor([0.0, 0.3, -1.0]), E[2]])
    x = torch.arange(6, dtype=torch.float32).unsqueeze(1) * torch.tensor([[1.0, 10.0]])  # row i = (i, 10 i)
    tok = PackedTokens(x=x, cu_seqlens=torch.tensor([0, 6], dtype=torch.int32), pos=torch.tensor([9, 3, 7, 8, 1, 2]),
                       size=torch.ones(6), grid=GRID, lens=(6,))
    return tok, k.unsqueeze(1)


def test_plan_picks_the_best_edges_and_keeps_the_reference_order():
    tok, keys = _six()
    plan = match(tok, CosineScores(keys.mean(1)), FixedCount(2))
    assert plan.src.tolist() == [[0, 2]]
    assert plan.keep[:plan.n_out].tolist() == [4, 1, 3, 5]  # unmatched A, then B in order
    assert plan.dst_row.tolist() == [[1, 2]]
    assert torch.allclose(plan.score, torch.tensor([[1.0, 0.8]]))
    assert plan.lens == (4,) and plan.r == (2,)


def test_tome_merges_and_tome_drop_drops_the_same_sources():
    tok, keys = _six()
    merged = ToMe(r=[2]).after_attention(tok, keys, 0, 1)
    assert merged.x[:, 0].tolist() == [4.0, 0.5, 2.5, 5.0]  # A0+B1 and A2+B3 averaged
    assert merged.size.tolist() == [1.0, 2.0, 2.0, 1.0]
    assert merged.pos.tolist() == [1, 3, 7, 2]  # the smallest pos merged
    dropped = ToMeDrop(r=[2]).after_attention(tok, keys, 0, 1)
    assert dropped.x[:, 0].tolist() == [4.0, 1.0, 3.0, 5.0]  # A0 and A2 gone, the destinations untouched
    assert dropped.pos.tolist() == [1, 3, 8, 2]
    assert torch.allclose(dropped.size, torch.full((4,), 1.5))  # 6 tokens entered, 4 left: one factor
    assert dropped.cu_seqlens.tolist() == [0, 4] and dropped.lens == (4,)


def test_hybrid_replaces_a_weak_destination_by_its_sources():
    tok, keys = _six()
    out = ToMeHybrid(r=[2], threshold=0.9).after_attention(tok, keys, 0, 1)
    # A0→B1 (1.0 ≥ 0.9) merges as ToMe; A2→B3 (0.8 < 0.9): B3 gives up its own token, becomes A2
    assert out.x[:, 0].tolist() == [4.0, 0.5, 2.0, 5.0]
    assert torch.allclose(out.size, torch.tensor([1.0, 2.0, 1.0, 1.0]) * 6 / 5)
    # a threshold below every edge is ToMe
    same = ToMeHybrid(r=[2], threshold=0.1).after_attention(tok, keys, 0, 1)
    assert torch.equal(same.x, ToMe(r=[2]).after_attention(tok, keys, 0, 1).x)


def test_hybrid_any_weak_edge_into_a_destination_counts():
    tok, keys = _six()
    # r = 3: A4 (0.29) also goes into B3, beside A2 (0.8); threshold 0.5: B3 has one weak edge
    out = ToMeHybrid(r=[3], threshold=0.5).after_attention(tok, keys, 0, 1)
    assert out.x[:, 0].tolist() == [0.5, 3.0, 5.0]  # B3 = (x2 + x4) / 2, without x3
    assert torch.allclose(per_clip_size(out), torch.tensor([6.0], dtype=torch.float64))


def test_head_concat_and_head_mean_match_differently():
    # two heads: A0 = (e1, e2), B1 = (e2, e1), B3 = (e1, e3); A2 points away from all
    a0, b1, b3, a2 = (torch.stack(p) for p in ((E[0], E[1]), (E[1], E[0]), (E[0], E[2]), (-E[2], -E[2])))
    keys = torch.stack([a0, b1, a2, b3])
    tok = PackedTokens(x=torch.arange(4.0).unsqueeze(1), cu_seqlens=torch.tensor([0, 4], dtype=torch.int32),
                       pos=torch.arange(4), size=torch.ones(4), grid=GRID, lens=(4,))
    mean = ToMe(r=[1]).after_attention(tok, keys, 0, 1)  # head means of A0 and B1 coincide
    concat = ToMe(r=[1], keys="concat").after_attention(tok, keys, 0, 1)  # concat: A0 ⟂ B1, A0·B3 = 1/2
    assert mean.x[:, 0].tolist() == [2.0, 0.5, 3.0]
    assert concat.x[:, 0].tolist() == [2.0, 1.0, 1.5]


def test_random_matching_is_seeded_and_drops_only_a_tokens():
    g = torch.Generator().manual_seed(1)
    lens = [10, 7]
    tok = PackedTokens(x=torch.randn(17, 4, generator=g), cu_seqlens=torch.tensor([0, 10, 17], dtype=torch.int32),
                       pos=torch.arange(17) % 10, size=torch.ones(17), grid=GRID, lens=tuple(lens))
    keys = torch.randn(17, 2, 3, generator=g)
    outs = [RandomDrop(r=[3], seed=s).after_attention(tok, keys, 0, 1) for s in (0, 0, 1, 2, 3)]
    assert torch.equal(outs[0].x, outs[1].x)
    assert any(not torch.equal(outs[0].x, o.x) for o in outs[2:])
    for o in outs:
        assert o.lens == (7, 4)
        rows = [int((tok.x == r).all(1).nonzero()) for r in o.x]  # every output is an input row
        kept = set(rows)
        b_rows = {0 + j for j in range(1, 10, 2)} | {10 + j for j in range(1, 7, 2)}
        assert b_rows <= kept  # B tokens are never dropped
    merged = RandomMerge(r=[3], seed=0).after_attention(tok, keys, 0, 1)
    assert merged.lens == (7, 4) and per_clip_size(merged).tolist() == [10.0, 7.0]


def test_threshold_and_batch_rank_counts():
    tok, keys = _six()
    metric = CosineScores(keys.mean(1))
    assert match(tok, metric, ThresholdCount(0.5)).r == (2,)  # edges 1.0 and 0.8 are above 0.5
    assert match(tok, metric, ThresholdCount(0.9)).r == (1,)
    assert match(tok, metric, ThresholdCount(0.1, cap=1)).r == (1,)
    # two clips: the batch-level ranking of r·B = 2 edges takes both from the clip with the better edges
    two = PackedTokens(x=torch.cat([tok.x, tok.x]), cu_seqlens=torch.tensor([0, 6, 12], dtype=torch.int32),
                       pos=torch.cat([tok.pos, tok.pos]), size=torch.ones(12), grid=GRID, lens=(6, 6))
    k = keys.mean(1)
    other = k.clone()
    other[1], other[2] = torch.tensor([0.5, 0.5, 0.7]), torch.tensor([0.8, 0.6, 0.0])  # edges 0.50, 0.70, 0.29
    k2 = torch.cat([k, other])
    count = BatchRankCount(1)
    plan = match(two, CosineScores(k2), count)
    assert plan.r == (2, 0)
    assert count.threshold == pytest.approx(float(F.cosine_similarity(k2[8], k2[7], dim=0)))  # best left out


def test_merge_weighted_uses_the_extra_weights_but_sums_sizes():
    tok, keys = _six()
    plan = match(tok, CosineScores(keys.mean(1)), FixedCount(2))
    w = torch.tensor([3.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # A0 weighs 3 against B1's 1
    out = merge_weighted(plan, tok, w)
    assert out.x[:, 0].tolist() == [4.0, 0.25, 2.5, 5.0]
    assert out.size.tolist() == merge_wavg(plan, tok).size.tolist() == [1.0, 2.0, 2.0, 1.0]
    assert torch.equal(drop(plan, tok).x, ToMeDrop(r=[2]).after_attention(tok, keys, 0, 1).x)


@pytest.mark.parametrize("name,params", [("tome_drop", {"r": 8}), ("random_merge", {"r": 8, "seed": 3}),
                                         ("random_drop", {"r": 8}), ("tome_hybrid", {"r": 8, "threshold": 0.3}),
                                         ("tome", {"r": 8, "keys": "concat"})])
def test_conformance(name, params, one_thread):
    report = check_reducer(get_reducer(name, **params))
    assert len(set(report.tokens_out)) > 1


@pytest.mark.parametrize("cls,kw,param", [(ToMe, {"keys": "max"}, "keys"), (RandomMerge, {"seed": 1.5}, "seed"),
                                          (ToMeHybrid, {"threshold": 2.0}, "threshold")])
def test_bad_parameters_name_the_parameter(cls, kw, param):
    with pytest.raises(ReducerParamError, match=param):
        cls(**kw)


def test_protected_tokens_are_neither_sources_nor_destinations():
    tok, keys = _six()
    protected = torch.tensor([True, True, False, False, False, False])  # A0 and B1, the best pair
    plan = match(tok, CosineScores(keys.mean(1)), FixedCount(1), protected)
    assert plan.src.tolist() == [[2]] and plan.dst_row.tolist() == [[3]]  # A2 → B3, the best edge left
    assert plan.keep[:plan.n_out].tolist() == [4, 0, 1, 3, 5]  # unmatched A by best edge: protected last


@pytest.mark.parametrize("cls,kw", [(ToMe, {}), (ToMeDrop, {}), (ToMeHybrid, {"threshold": 0.9}),
                                    (ToMe, {"keys": "concat"})])
def test_a_packed_batch_of_unequal_clips_gives_each_clip_its_own_answer(cls, kw):
    g = torch.Generator().manual_seed(3)
    lens = [9, 4, 7]
    n = sum(lens)
    tok = PackedTokens(x=torch.randn(n, 5, generator=g), pos=torch.randperm(n, generator=g) % 128,
                       cu_seqlens=F.pad(torch.tensor(lens).cumsum(0), (1, 0)).int(),
                       size=torch.rand(n, generator=g) + 0.5, grid=GRID, lens=tuple(lens))
    keys = torch.randn(n, 2, 3, generator=g)
    red = cls(r=[3], **kw)
    out = red.after_attention(tok, keys, 0, 1)
    assert out.lens == (6, 2, 4)
    start, o = 0, 0
    for k, m in zip(lens, out.lens):
        one = PackedTokens(x=tok.x[start:start + k], pos=tok.pos[start:start + k], size=tok.size[start:start + k],
                           cu_seqlens=torch.tensor([0, k], dtype=torch.int32), grid=GRID, lens=(k,))
        alone = red.after_attention(one, keys[start:start + k], 0, 1)
        assert torch.allclose(out.x[o:o + m], alone.x, atol=1e-6) and torch.equal(out.pos[o:o + m], alone.pos)
        assert torch.allclose(out.size[o:o + m], alone.size, atol=1e-6)
        start, o = start + k, o + m


def test_random_scores_pick_sources_and_partners_uniformly_inside_each_clip(one_thread):
    from tokenbench.reducers.bipartite import RandomScores

    tok, _ = _six()
    two = PackedTokens(x=torch.cat([tok.x, tok.x[:4]]), cu_seqlens=torch.tensor([0, 6, 10], dtype=torch.int32),
                       pos=torch.cat([tok.pos, tok.pos[:4]]), size=torch.ones(10), grid=GRID, lens=(6, 4))
    gen = torch.Generator().manual_seed(0)
    src, dst = torch.zeros(3), torch.zeros(3)
    for _ in range(300):
        plan = match(two, RandomScores(gen), FixedCount(1))
        src[int(plan.src[0, 0]) // 2] += 1
        dst[int(plan.dst_row[0, 0]) - 2] += 1  # clip 0's output: 2 unmatched A tokens, then B1, B3, B5
        assert 0 <= int(plan.dst_row[1, 0]) - 5 - 1 < 2  # clip 1 (4 tokens) goes to one of its own 2 B tokens
    assert bool(((src / 300 - 1 / 3).abs() < 0.1).all()), src
    assert bool(((dst / 300 - 1 / 3).abs() < 0.1).all()), dst
