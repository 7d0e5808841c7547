"""attn_prune (EViT / Top-K / FastV without a class token) and feature_diff (EVEREST / DyCoke) on hand-built
tokens whose answer is known by construction, their parameters, and the conformance helper."""
from __future__ import annotations

import pytest
import torch

from tokenbench.reducers.attn_prune import AttnPrune, kept_count, prune_packed
from tokenbench.reducers.base import PackedTokens, ReducerParamError
from tokenbench.reducers.feature_diff import FeatureDiff, temporal_distance
from tokenbench.reducers.testing import check_reducer, per_clip_size


def _tokens(lens, dim=2, grid=(2, 2, 2)):
    n = sum(lens)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    x = torch.arange(n * dim, dtype=torch.float32).view(n, dim)
    pos = torch.cat([torch.arange(k) for k in lens])
    return PackedTokens(x=x, cu_seqlens=cu, pos=pos, size=torch.ones(n), grid=grid, lens=tuple(lens))


def test_prune_keeps_the_top_scores_in_score_order():
    tokens = _tokens([4, 3])
    score = torch.tensor([0.1, 0.4, 0.3, 0.2, 0.5, 0.2, 0.3])
    out = prune_packed(tokens, score, [2, 1], fuse=False)
    assert out.seqlens() == [2, 1]
    assert out.pos.tolist() == [1, 2, 0]  # clip 0: tokens 1, 2 (best first); clip 1: token 0
    assert torch.equal(out.x, tokens.x[[1, 2, 4]])
    # dropped tokens vanish; the kept sizes still count the clip's tokens, the weights are the kept ones'
    assert per_clip_size(out).tolist() == [4.0, 3.0]
    assert out.weight.tolist() == [1.0, 1.0, 1.0]


def test_prune_fuses_the_dropped_tokens_weighted_by_score():
    tokens = _tokens([4, 3])
    score = torch.tensor([0.1, 0.4, 0.3, 0.2, 0.5, 0.2, 0.3])
    out = prune_packed(tokens, score, [2, 3], fuse=True)  # clip 1 keeps everything: no fused token
    assert out.seqlens() == [3, 3]
    fused = 0.2 * tokens.x[3] + 0.1 * tokens.x[0]  # EViT's extra token: Σ score·x, not renormalised
    torch.testing.assert_close(out.x[2], fused)
    assert out.pos.tolist() == [1, 2, 0, 0, 2, 1]
    assert out.size.tolist() == [1.0, 1.0, 2.0, 1.0, 1.0, 1.0]  # an exact count
    assert out.weight.tolist() == [1.0] * 6  # one token in the sequence, as EViT's


def test_attn_prune_parameters():
    red = AttnPrune(layers=[1, 4], keep_rate=[0.5, 0.8])
    assert red.attention_layers(12) == frozenset({1, 4})
    assert red.rate_at(4) == 0.8 and red.rate_at(2) == 1.0
    assert kept_count(0.7, 1568) == 1098 and kept_count(0.01, 3) == 1
    for bad in (dict(layers=[]), dict(layers=[3, 1]), dict(keep_rate=0.0), dict(keep_rate=[0.5]),
                dict(layers=[1], keep_rate=1.5), dict(fuse="yes")):
        with pytest.raises(ReducerParamError):
            AttnPrune(**bad)
    with pytest.raises(ReducerParamError, match="blocks"):
        AttnPrune(layers=[12]).check_geometry((8, 4, 4), 12)


@pytest.mark.parametrize("fuse", [False, True])
def test_attn_prune_conformance_on_unequal_lengths(fuse):
    rep = check_reducer(AttnPrune(layers=[1, 3], keep_rate=[0.5, 0.7], fuse=fuse))
    assert all(o < i for o, i in zip(rep.tokens_out, rep.tokens_in))


# --- feature_diff ----------------------------------------------------------------------------------------
def _repeating(change: float) -> PackedTokens:
    """Grid (2, 1, 2): cell 0 repeats itself at t = 1, cell 1 moves by ``change``."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0 + change]])
    cu = torch.tensor([0, 4], dtype=torch.int32)
    return PackedTokens(x=x, cu_seqlens=cu, pos=torch.arange(4), size=torch.ones(4), grid=(2, 1, 2), lens=(4,))


def test_temporal_distance_pairs_each_cell_with_its_previous_time_step():
    d = temporal_distance(_repeating(3.0))
    assert d[:2].isinf().all()  # no previous time step
    torch.testing.assert_close(d[2:], torch.tensor([0.0, 3.0]))
    # a packed input whose previous cell was dropped: the token counts as changed
    t = _repeating(3.0)
    t = t.replace(x=t.x[[0, 3]], pos=t.pos[[0, 3]], size=t.size[[0, 3]],
                  cu_seqlens=torch.tensor([0, 2], dtype=torch.int32), lens=(2,))
    assert temporal_distance(t).isinf().tolist() == [True, True]


def test_feature_diff_threshold_drops_repeats():
    out = FeatureDiff(drop_rate=0.0, threshold=0.5).before_position(_repeating(3.0))
    assert out.pos.tolist() == [0, 1, 3] and out.seqlens() == [3]
    torch.testing.assert_close(per_clip_size(out), torch.tensor([4.0], dtype=torch.float64))


def test_feature_diff_rank_keeps_the_most_changed_as_everest():
    # importance: t = 1 by its distance, t = 0 by the step after it: cell 0 → 0, 0; cell 1 → 3, 3.
    # keep int(0.75·4) = 3: the tie between tokens 0 and 2 goes to the earlier one
    out = FeatureDiff(drop_rate=0.25).before_position(_repeating(3.0))
    assert out.pos.tolist() == [0, 1, 3]
    out = FeatureDiff(drop_rate=0.5).before_position(_repeating(3.0))
    assert out.pos.tolist() == [1, 3]  # the moving cell at both times, in original order


def test_feature_diff_parameters_and_conformance():
    for bad in (dict(drop_rate=1.0), dict(drop_rate=0.3, threshold=0.1), dict(distance="l1"), dict(threshold=-1)):
        with pytest.raises(ReducerParamError):
            FeatureDiff(**bad)
    rep = check_reducer(FeatureDiff(drop_rate=0.4))
    # the conformance batch keeps 128, 112, 96 tubelets; the first block sees int(0.6·n) of them
    assert rep.tokens_in == [76, 67, 57]
