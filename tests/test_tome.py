"""ToMe (reducers/tome.py): merging rule, schedules, packed batches, proportional attention."""
from __future__ import annotations

import pytest
import torch
from conftest import noise_video, packed_tokens, seeded_model

from tokenbench.harness.attention import packed_attention
from tokenbench.reducers import PackedTokens, ReducerParamError, get_reducer
from tokenbench.reducers.testing import check_packed, check_reducer, per_clip_size
from tokenbench.reducers.tome import ToMe, bipartite_merge

GRID = (8, 4, 4)  # vit_t at 16×64²: 128 tokens per clip


@pytest.fixture(scope="module")
def model():
    return seeded_model("vit_t", 5, num_frames=16, img_size=64)



def _packed(lens, dim=8, heads=2, hd=4, seed=0):
    return packed_tokens(lens, GRID, seed, dim, heads, hd, unit_size=True)


# --- schedules ----------------------------------------------------------------------------------------

def test_schedules():
    assert ToMe(r=8).schedule(12) == [8] * 12
    decreasing = [16, 14, 13, 11, 10, 8, 7, 5, 4, 2, 1, 0]  # the reference parse_r((8, -1)) for 12 layers
    assert ToMe(r=(8, -1.0)).schedule(12) == decreasing
    assert ToMe(r=8, inflection=-1.0).schedule(12) == decreasing
    assert ToMe(r=8, inflection=1.0).schedule(12) == [0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16]
    assert ToMe(r=[5, 4, 3]).schedule(6) == [5, 4, 3, 0, 0, 0]
    with pytest.raises(ReducerParamError, match="r lists 3 layers"):
        ToMe(r=[1, 1, 1]).schedule(2)


def test_tokens_after_each_layer_are_n_minus_l_r(model):
    with torch.no_grad():
        model(noise_video(2, 16, 64), ToMe(r=5))
    assert model.last_stats.tokens_in == [128, 128]
    assert model.last_stats.tokens_per_layer == [[128 - 5 * (i + 1)] * 2 for i in range(12)]
    sched = ToMe(r=(6, -1.0)).schedule(12)
    with torch.no_grad():
        model(noise_video(2, 16, 64), ToMe(r=(6, -1.0)))
    assert [c[0] for c in model.last_stats.tokens_per_layer] == [128 - sum(sched[: i + 1]) for i in range(12)]


def test_sizes_sum_to_n_and_pool_is_size_weighted(model):
    red = ToMe(r=8)
    with torch.no_grad():
        out = model.forward_tokens(model.embed(noise_video(2, 16, 64)), red)
    assert out.seqlens() == [128 - 12 * 8] * 2
    assert per_clip_size(out).tolist() == [128.0, 128.0]
    assert float(out.size.max()) > 1.0
    ids = out.seq_ids()
    pooled = model.pool(out)
    for b in range(2):
        w = out.size[ids == b].unsqueeze(1)
        ref = (out.x[ids == b] * w).sum(0) / w.sum()
        assert torch.allclose(pooled[b], ref, atol=1e-6)


# --- the merge rule -------------------------------------------------------------------------------------

def test_merging_two_identical_tokens_gives_that_token():
    tok, keys = _packed([6])
    x, k = tok.x.clone(), keys.clone()
    x[0], k[0] = x[1], k[1]  # A token 0 is B token 1's twin: cosine 1, the best match of all
    tok = tok.replace(x=x, pos=torch.tensor([7, 3, 20, 21, 22, 23]))
    out = ToMe(r=1).after_attention(tok, k, 0, 12)
    assert out.seqlens() == [5]
    # reference order: the unmerged A tokens (2 and 4, most similar first), then the B tokens 1, 3, 5
    assert torch.equal(out.x[2:], torch.stack([x[1], x[3], x[5]]))  # exactly: (x + x) / 2 == x
    assert {tuple(r.tolist()) for r in out.x[:2]} == {tuple(x[2].tolist()), tuple(x[4].tolist())}
    assert out.size.tolist() == [1, 1, 2, 1, 1]
    assert out.pos[2:].tolist() == [3, 21, 23]  # the merged token's pos: the first (smallest) merged
    assert sorted(out.pos[:2].tolist()) == [20, 22]


def test_size_weighted_average_and_many_into_one():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g)
    k = torch.randn(6, 1, 3, generator=g)
    k[0] = k[1]
    k[2] = k[1] * 3.0  # same direction: cosine 1 with B token 1 too
    tok = PackedTokens(x=x, cu_seqlens=torch.tensor([0, 6], dtype=torch.int32), pos=torch.arange(6),
                       size=torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0, 1.0]), grid=GRID)
    out = ToMe(r=2).after_attention(tok, k, 0, 12)
    merged = out.x[out.size == 6.0]
    assert merged.shape == (1, 4)
    assert torch.allclose(merged[0], (3 * x[0] + 1 * x[1] + 2 * x[2]) / 6, atol=1e-6)
    assert float(out.size.sum()) == 9.0


def test_matches_the_reference_merge_wavg_formulation():
    # The reference: x·size and size scatter-summed into the B tokens, output [unmerged A, B], x / size.
    g = torch.Generator().manual_seed(5)
    b, n, d, r = 3, 37, 6, 15
    x, metric = torch.randn(b, n, d, generator=g), torch.randn(b, n, 4, generator=g)
    metric[:, 0:12:2] = metric[:, 1:2]  # several A tokens share one partner: many-into-one merges
    size = torch.randint(1, 5, (b, n), generator=g).float()
    pos = torch.randperm(b * n, generator=g).view(b, n)
    got_x, got_size, got_pos = bipartite_merge(x, metric, size, pos, r)
    m = metric / metric.norm(dim=-1, keepdim=True)
    best, partner = (m[:, ::2] @ m[:, 1::2].transpose(1, 2)).max(-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    src, unm = order[:, :r], order[:, r:]
    dst = partner.gather(1, src)

    def merge(v, how):
        a, bb = v[:, ::2], v[:, 1::2]
        c = v.shape[-1]
        kept = a.gather(1, unm[..., None].expand(-1, -1, c))
        bb = bb.scatter_reduce(1, dst[..., None].expand(-1, -1, c), a.gather(1, src[..., None].expand(-1, -1, c)),
                               reduce=how)
        return torch.cat([kept, bb], 1)

    ref_size = merge(size[..., None], "sum")[..., 0]
    ref_x = merge(x * size[..., None], "sum") / ref_size[..., None]
    assert torch.equal(got_size, ref_size)
    assert torch.allclose(got_x, ref_x, atol=1e-6)
    assert torch.equal(got_pos, merge(pos[..., None], "amin")[..., 0])
    assert int((got_size > size.max()).sum()) > 0  # some token did absorb several


def test_matching_uses_head_averaged_cosine_of_keys():
    # A token 0 matches B token 1 perfectly only after averaging over heads; per head it does not
    k = torch.zeros(4, 2, 2)
    k[0, 0], k[0, 1] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    k[1, 0], k[1, 1] = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])  # same mean, heads swapped
    k[2], k[3] = torch.tensor([[1.0, -1.0], [1.0, -1.0]]), torch.tensor([[-1.0, 0.2], [-1.0, 0.2]])
    x = torch.arange(16.0).view(4, 4)
    tok = PackedTokens(x=x, cu_seqlens=torch.tensor([0, 4], dtype=torch.int32), pos=torch.arange(4),
                       size=torch.ones(4), grid=GRID)
    out = ToMe(r=1).after_attention(tok, k * 5.0, 0, 12)  # scale must not matter (cosine)
    assert out.size.tolist() == [1.0, 2.0, 1.0]
    assert torch.equal(out.x[1], (x[0] + x[1]) / 2)


def test_clips_are_matched_jointly_and_never_mixed():
    tok, keys = _packed([40, 40, 40], seed=2)
    red = ToMe(r=7)
    together = red.after_attention(tok, keys, 0, 12)  # batched path (equal lengths)
    cu = tok.cu_seqlens.tolist()
    for i in range(3):
        a, b = cu[i], cu[i + 1]
        one = PackedTokens(x=tok.x[a:b], cu_seqlens=torch.tensor([0, b - a], dtype=torch.int32),
                           pos=tok.pos[a:b], size=tok.size[a:b], grid=GRID)
        alone = red.after_attention(one, keys[a:b], 0, 12)
        s = slice(33 * i, 33 * (i + 1))
        assert torch.equal(together.x[s], alone.x) and torch.equal(together.pos[s], alone.pos)
    # the same clip inside an unequal batch (the per-clip loop) gives the same tokens
    tok2 = PackedTokens(x=tok.x[:65], cu_seqlens=torch.tensor([0, 40, 65], dtype=torch.int32),
                        pos=tok.pos[:65], size=tok.size[:65], grid=GRID)
    mixed = red.after_attention(tok2, keys[:65], 0, 12)
    assert mixed.seqlens() == [33, 18]
    assert torch.equal(mixed.x[:33], together.x[:33])
    check_packed(mixed, "tome", grid=GRID, size_per_clip=torch.tensor([40.0, 25.0]))


def test_short_clips_merge_at_most_half():
    tok, keys = _packed([10, 3], seed=4)
    out = ToMe(r=8).after_attention(tok, keys, 0, 12)
    assert out.seqlens() == [5, 2]
    check_packed(out, "tome", grid=GRID, size_per_clip=torch.tensor([10.0, 3.0]))
    x, size, pos = bipartite_merge(torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.ones(1, 2),
                                   torch.arange(2).view(1, 2), 1)
    assert size.tolist() == [[2.0]]


def test_unequal_packed_batch_through_the_model(model):
    # the conformance invariants, checked after every ToMe step on clips of 128, 112 and 96 tokens
    class Checked(ToMe):
        def after_attention(self, tokens, keys, layer, depth):
            before = per_clip_size(tokens)
            out = super().after_attention(tokens, keys, layer, depth)
            check_packed(out, f"tome layer {layer}", grid=tokens.grid, size_per_clip=before)
            return out

    from tokenbench.reducers import Selection

    keep = torch.zeros(3, *GRID, dtype=torch.bool)
    for i in range(3):
        keep[i, : 8 - i] = True
    with torch.no_grad():
        logits = model(noise_video(3, 16, 64), Checked(r=4), selection=Selection(keep=keep, lengths=keep.long()))
    assert torch.isfinite(logits).all()
    assert model.last_stats.tokens_per_layer[-1] == [128 - 48, 112 - 48, 96 - 48]


def test_conformance():
    """The shared conformance helper, on packed batches of unequal lengths. (after_block gets keys=None
    once after_attention has merged: the pre-merge keys no longer line up with the tokens.)"""
    rep = check_reducer(ToMe(r=4))
    assert all(a - b == 4 * 12 for a, b in zip(rep.tokens_in, rep.tokens_out))


# --- proportional attention -----------------------------------------------------------------------------

def test_prop_attn_is_log_size_on_the_logits():
    # A token of size s attends exactly like s identical copies of it: the definition of +log(size).
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 2, 4, generator=g) for _ in range(3))
    size = torch.tensor([1.0, 3.0, 1.0, 2.0, 1.0])
    rep = torch.tensor([0, 1, 1, 1, 2, 3, 3, 4])
    kk, vv = k[rep], v[rep]
    merged, _ = packed_attention(q, k, v, torch.tensor([0, 5], dtype=torch.int32), bias=size.log())
    # explicit: each query over the expanded keys
    logits = torch.einsum("qhd,khd->hqk", q, kk) * 4 ** -0.5
    ref = torch.einsum("hqk,khd->qhd", logits.softmax(-1), vv)
    assert torch.allclose(merged, ref, atol=1e-6)
    plain, _ = packed_attention(q, k, v, torch.tensor([0, 5], dtype=torch.int32))
    assert not torch.allclose(plain, ref, atol=1e-3)


def test_prop_attn_changes_nothing_while_sizes_are_one(model):
    v = noise_video(2, 16, 64)
    with torch.no_grad():
        a = model(v, ToMe(r=0, prop_attn=True))
        b = model(v, ToMe(r=0, prop_attn=False))
        c = model(v, ToMe(r=8, prop_attn=True))
        d = model(v, ToMe(r=8, prop_attn=False))
    # without merging every size is 1 and log(1) = 0: proportional attention is the identity
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(c, d, atol=1e-4)
    assert ToMe(prop_attn=True).prop_attn is True and ToMe().prop_attn is False


# --- parameters ---------------------------------------------------------------------------------------

def test_r_above_half_the_tokens_is_rejected_before_work(model):
    with pytest.raises(ReducerParamError, match=r"tome: r=65 merges 65 tokens in block 0.*at most half \(64\)"):
        ToMe(r=65).check_geometry(GRID, 12)
    with pytest.raises(ReducerParamError, match=r"r=\[60, 60\] merges 60 tokens in block 1.*68 tokens"):
        ToMe(r=[60, 60]).check_geometry(GRID, 12)
    ToMe(r=[64, 32, 16, 8, 4, 2, 1]).check_geometry(GRID, 12)  # exactly half each time is allowed
    with pytest.raises(ReducerParamError, match="tome: r="):
        model(noise_video(1, 16, 64), ToMe(r=11))  # 12·11 > 128: at block 11 only 7 tokens are left


@pytest.mark.parametrize("kw,name", [({"r": -1}, "r"), ({"r": "8"}, "r"), ({"r": 2.5}, "r"),
                                     ({"r": True}, "r"), ({"r": [1, -2]}, "r"), ({"r": (8, 2.0)}, "inflection"),
                                     ({"r": (8,)}, "r"), ({"inflection": 1.5}, "inflection"),
                                     ({"r": [1, 2], "inflection": 0.5}, "inflection"),
                                     ({"prop_attn": "yes"}, "prop_attn")])
def test_bad_parameters_name_the_parameter(kw, name):
    with pytest.raises(ReducerParamError, match=f"tome: .*{name}"):
        get_reducer("tome", **kw)


# --- one batched pass over clips ------------------------------------------------------------------------

def _reference_merge(x, metric, size, r):
    """The reference's merge_wavg on one clip, with autograd: x·size and size scatter-summed into B."""
    m = metric / metric.norm(dim=-1, keepdim=True)
    best, partner = (m[::2] @ m[1::2].T).max(-1)
    order = best.argsort(descending=True, stable=True)
    src, unm = order[:r], order[r:]
    xs = x * size[:, None]
    a, b = xs[::2], xs[1::2]
    b = b.index_add(0, partner[src], a[src])
    s = size[1::2].index_add(0, partner[src], size[::2][src])
    return torch.cat([a[unm] / size[::2][unm, None], b / s[:, None]])


def test_gradients_through_an_unequal_batch_equal_the_reference_per_clip():
    # many-into-one merges included: each receiving row's gradient must be counted once
    tok, keys = _packed([40, 23, 3], seed=6)
    keys[0:20:2, 0] = keys[1, 0]
    size = torch.randint(1, 4, (tok.x.shape[0],), generator=torch.Generator().manual_seed(2)).float()
    x = tok.x.clone().requires_grad_(True)
    out = ToMe(r=9).after_attention(tok.replace(x=x, size=size), keys, 0, 12)
    w = torch.randn(out.x.shape, generator=torch.Generator().manual_seed(3))
    (out.x * w).sum().backward()
    cu, ocu = tok.cu_seqlens.tolist(), out.cu_seqlens.tolist()
    for i in range(3):
        xi = tok.x[cu[i]:cu[i + 1]].clone().requires_grad_(True)
        ref = _reference_merge(xi, keys[cu[i]:cu[i + 1]].mean(1), size[cu[i]:cu[i + 1]],
                               min(9, (cu[i + 1] - cu[i]) // 2))
        torch.testing.assert_close(out.x[ocu[i]:ocu[i + 1]], ref, rtol=1e-5, atol=1e-6)
        (ref * w[ocu[i]:ocu[i + 1]]).sum().backward()
        torch.testing.assert_close(x.grad[cu[i]:cu[i + 1]], xi.grad, rtol=1e-5, atol=1e-6)
    assert float(out.size.max()) >= 4.0  # a row did absorb several tokens


def test_output_counts_come_from_the_host_lengths():
    tok, keys = _packed([40, 25, 3], seed=7)
    out = ToMe(r=7).after_attention(tok, keys, 0, 12)
    assert out.lens == (33, 18, 2) and torch.diff(out.cu_seqlens).tolist() == [33, 18, 2]
    # a stale host copy is never carried: replacing cu_seqlens alone drops it
    assert out.replace(cu_seqlens=tok.cu_seqlens).lens is None
