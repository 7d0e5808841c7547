"""STA (reducers/sta.py): stages, grouping, the two pruning rules, order, geometry errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import noise_video, seeded_model

from tokenbench.harness.model import build_model
from tokenbench.reducers import PackedTokens, ReducerParamError, Selection, get_reducer
from tokenbench.reducers.sta import STA, first_group_keep, later_group_keep, stage_layers
from tokenbench.reducers.testing import check_packed, check_reducer, per_clip_size

VIT_L = (8, 14, 14)


def _tokens(grid, batch=1, dim=16, heads=2, hd=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    tok = PackedTokens(x=torch.randn(batch * n, dim, generator=g),
                       cu_seqlens=torch.arange(batch + 1, dtype=torch.int32) * n,
                       pos=torch.arange(n).repeat(batch), size=torch.ones(batch * n), grid=grid)
    return tok, torch.randn(batch * n, heads, hd, generator=g)


def _run_hooks(red, tok, keys, depth):
    """Every after_block of a ``depth``-block model. Each token keeps its own key throughout (the model
    would recompute keys per block; the counts do not depend on them). Returns the final tokens and the
    token counts per clip after each block."""
    n = tok.grid[0] * tok.grid[1] * tok.grid[2]
    counts = []
    for layer in range(depth):
        before = per_clip_size(tok)
        tok = red.after_block(tok, keys[tok.seq_ids() * n + tok.pos], layer, depth)
        check_packed(tok, f"sta block {layer}", grid=tok.grid, size_per_clip=before)
        counts.append(tok.seqlens())
    return tok, counts


def test_vit_l_geometry_r64_gives_1568_1056_800_672():
    red = STA(r=64)
    red.check_geometry(VIT_L, 24)
    assert stage_layers(24) == (0, 8, 16)
    tok, keys = _tokens(VIT_L, batch=2)
    out, counts = _run_hooks(red, tok, keys, 24)
    per_layer = [c[0] for c in counts]
    assert per_layer[0] == 1056 and per_layer[7] == 1056
    assert per_layer[8] == 800 and per_layer[15] == 800
    assert per_layer[16] == 672 and per_layer[23] == 672
    assert counts[-1] == [672, 672]


@pytest.mark.slow
def test_vit_l_model_r64_token_counts():
    torch.manual_seed(0)
    model = build_model("vit_l", num_classes=3).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 16, 224, 224), STA(r=64))
    per_layer = [c[0] for c in model.last_stats.tokens_per_layer]
    assert model.last_stats.tokens_in == [1568]
    assert per_layer[0] == 1056 and per_layer[8] == 800 and per_layer[16] == 672 and per_layer[-1] == 672


@pytest.fixture(scope="module")
def model():
    return seeded_model("vit_t", 5, num_frames=16, img_size=64)



def test_vit_t_token_counts_through_the_model(model):
    # grid (8, 4, 4), depth 12: 8 groups of 16 → 8·12 = 96; 4 groups of 24 → 4·20 = 80; 2 of 40 → 72
    with torch.no_grad():
        model(noise_video(2, 16, 64), STA(r=4))
    per_layer = [c[0] for c in model.last_stats.tokens_per_layer]
    assert per_layer == [96] * 4 + [80] * 4 + [72] * 4


def test_r0_is_the_baseline(model):
    v = noise_video(2, 16, 64)
    with torch.no_grad():
        assert torch.equal(model(v), model(v, STA(r=0)))


def test_output_in_original_temporal_order_and_pool_is_plain_mean(model):
    red = STA(r=4)
    with torch.no_grad():
        out = model.forward_tokens(model.embed(noise_video(2, 16, 64)), red)
    ids = out.seq_ids()
    for b in range(2):
        p = out.pos[ids == b]
        assert bool((p[1:] > p[:-1]).all())
        # every group of the last stage (time steps 0-3 and 4-7) kept 40 − 4 tokens
        assert [(p // 16 < 4).sum().item(), (p // 16 >= 4).sum().item()] == [36, 36]
    assert per_clip_size(out).tolist() == pytest.approx([128.0, 128.0])  # sizes scaled to conserve the total
    pooled = model.pool(out)
    for b in range(2):
        assert torch.allclose(pooled[b], out.x[ids == b].mean(0), atol=1e-6)


# --- the rules -----------------------------------------------------------------------------------------

def test_first_group_drops_the_even_tokens_most_similar_to_the_odd_set():
    g = torch.Generator().manual_seed(0)
    m = F.normalize(torch.randn(10, 6, generator=g), dim=-1)
    m[4] = m[7]  # even 4 duplicates odd 7
    m[8] = F.normalize(m[1] + 0.01 * m[3], dim=0)  # even 8 almost duplicates odd 1
    assert first_group_keep(m, 2).tolist() == [0, 1, 2, 3, 5, 6, 7, 9]
    assert first_group_keep(m, 0).tolist() == list(range(10))


def test_later_group_drops_redundant_low_activation_tokens():
    e = torch.eye(4)
    prev, mass = e[:1], torch.ones(1)
    flat = torch.ones(4)  # equal activations: score is the accumulated redundancy alone
    keys = torch.stack([e[0], e[0], e[1], e[2]])  # tokens 0 and 1 repeat the previous group's token
    kept, new_mass = later_group_keep(keys, flat, prev, mass, 2)
    assert kept.tolist() == [2, 3]
    assert float(new_mass.sum()) == pytest.approx(1.0)
    # softmax over the current tokens: each previous token spreads one unit of mass
    full, _ = later_group_keep(keys, flat, prev, mass, 0)
    assert full.tolist() == [0, 1, 2, 3]
    # equal redundancy: the highest activations survive (score · (1 − normalised L1 activation))
    same = torch.stack([e[0]] * 4)
    act = torch.tensor([1.0, 4.0, 2.0, 3.0])
    kept, _ = later_group_keep(same, act, prev, mass, 2)
    assert kept.tolist() == [1, 3]
    # the most active token has score 0 and survives even when it is the most redundant
    keys = torch.stack([e[0], e[1], e[2], e[3]])
    act = torch.tensor([5.0, 1.0, 1.5, 2.0])
    kept, _ = later_group_keep(keys, act, prev, mass, 3)
    assert kept.tolist() == [0]


def test_mass_accumulates_along_time():
    # previous group: two kept tokens, nearly all mass on the second; current tokens match one each
    e = torch.eye(3)
    prev = torch.stack([e[0], e[1]])
    flat = torch.ones(2)
    keys = torch.stack([e[0], e[1]])
    kept, _ = later_group_keep(keys, flat, prev, torch.tensor([0.9, 0.1]), 1)
    assert kept.tolist() == [1]  # the token inheriting the larger mass is the redundant one
    kept, _ = later_group_keep(keys, flat, prev, torch.tensor([0.1, 0.9]), 1)
    assert kept.tolist() == [0]


def _kept_pos(red, tok, keys, layer, depth):
    return set(red.after_block(tok, keys, layer, depth).pos.tolist())


def test_stage_walks_forward_then_backwards_then_forward():
    # The walk's first group is pruned by its own keys alone; every later group inherits mass from the
    # groups before it. With equal activations the mass alone decides, so: changing the keys of all
    # other groups leaves the first group's choice alone, and changing the first group's keys changes
    # the last group's choice. First groups: time 0 (stage 0), time 6-7 (stage 1, walked backwards),
    # time 0-3 (stage 2).
    red = STA(r=16)
    tok, keys = _tokens(VIT_L, seed=1)
    tok = tok.replace(x=torch.ones_like(tok.x))
    t = tok.pos // 196
    g = torch.Generator().manual_seed(9)
    for layer, first, last in [(0, t == 0, t == 7), (8, t >= 6, t <= 1), (16, t <= 3, t >= 4)]:
        base = _kept_pos(red, tok, keys, layer, 24)
        in_first, in_last = set(tok.pos[first].tolist()), set(tok.pos[last].tolist())
        others = keys.clone()
        others[~first] = torch.randn(int((~first).sum()), 2, 8, generator=g)
        assert _kept_pos(red, tok, others, layer, 24) & in_first == base & in_first, \
            f"block {layer}: the walk's first group must not depend on the other groups"
        own = keys.clone()
        own[first] = torch.randn(int(first.sum()), 2, 8, generator=g)
        assert _kept_pos(red, tok, own, layer, 24) & in_last != base & in_last, \
            f"block {layer}: the walk's last group must depend on its first"


def test_groups_follow_time_on_unequal_clips():
    # clip 1 lacks time steps 6-7: at stage 1 its group {6, 7} is empty and the walk starts at {4, 5}
    tok, keys = _tokens((8, 4, 4), batch=2, seed=3)
    keep = torch.ones(2 * 128, dtype=torch.bool)
    keep[128 + 96 :] = False
    tok = PackedTokens(x=tok.x[keep], cu_seqlens=torch.tensor([0, 128, 224], dtype=torch.int32),
                       pos=tok.pos[keep], size=tok.size[keep], grid=(8, 4, 4))
    out = STA(r=4).after_block(tok, keys[keep], 0, 12)
    assert out.seqlens() == [8 * 12, 6 * 12]
    check_packed(out, "sta", grid=(8, 4, 4), size_per_clip=torch.tensor([128.0, 96.0]))
    out2 = STA(r=4).after_block(out, torch.randn(out.x.shape[0], 2, 8), 4, 12)
    assert out2.seqlens() == [4 * 20, 3 * 20]
    # a short group (fewer tokens than the full geometry) loses at most half
    tiny = PackedTokens(x=torch.randn(3, 4), cu_seqlens=torch.tensor([0, 3], dtype=torch.int32),
                        pos=torch.tensor([0, 16, 40]), size=torch.ones(3), grid=(8, 4, 4))
    assert STA(r=4).after_block(tiny, torch.randn(3, 1, 2), 0, 12).seqlens() == [3]


def test_conformance():
    report = check_reducer(STA(r=4))
    assert report.tokens_out == [72, 60, 52]


# --- parameters and geometry ---------------------------------------------------------------------------

def test_ungroupable_t_is_rejected_before_work():
    with pytest.raises(ReducerParamError, match=r"sta: cannot group T'=6"):
        STA(r=4).check_geometry((6, 14, 14), 24)
    with pytest.raises(ReducerParamError, match=r"sta: cannot group T'=2"):
        STA(r=0).check_geometry((2, 4, 4), 12)
    STA(r=4).check_geometry((4, 14, 14), 24)  # 4, 2, 1 groups
    STA(r=4).check_geometry((16, 14, 14), 24)  # 16, 8, 4 groups
    m = build_model("vit_t", num_classes=2, num_frames=12, img_size=32)
    with pytest.raises(ReducerParamError, match="T'=6"):
        m(torch.zeros(1, 3, 12, 32, 32), STA(r=1))


def test_r_too_large_for_a_group():
    STA(r=98).check_geometry(VIT_L, 24)  # half of 196, and 2·(196 − 98) = 196 at the next stages
    with pytest.raises(ReducerParamError, match=r"sta: r=99 is too large.*stage 0.*196 tokens"):
        STA(r=99).check_geometry(VIT_L, 24)
    STA(r=8).check_geometry((8, 4, 4), 12)
    with pytest.raises(ReducerParamError, match=r"sta: r=9 is too large"):
        STA(r=9).check_geometry((8, 4, 4), 12)
    with pytest.raises(ReducerParamError, match="at least 3 blocks"):
        STA(r=1).check_geometry((8, 4, 4), 2)


@pytest.mark.parametrize("value", [-1, 1.5, True, "64", None])
def test_bad_r_names_the_parameter(value):
    with pytest.raises(ReducerParamError, match="sta: r must be"):
        get_reducer("sta", r=value)


def test_uses_the_selection_of_an_input_reducer(model):
    keep = torch.zeros(2, 8, 4, 4, dtype=torch.bool)
    keep[0] = True
    keep[1, :, :2] = True  # half of every time step
    with torch.no_grad():
        model(noise_video(2, 16, 64), STA(r=2), selection=Selection(keep=keep, lengths=keep.long()))
    per_layer = model.last_stats.tokens_per_layer
    assert per_layer[0] == [8 * 14, 8 * 6] and per_layer[4] == [4 * 26, 4 * 10] and per_layer[8] == [2 * 50, 2 * 18]


# --- the authors' linking and the paper's geometry ---------------------------------------------------------

def test_second_group_is_linked_to_all_of_the_first_groups_keys():
    # The authors' code (Mark12Ding/STA, model_vit.py, ``merge``) links group 1 to m_0, the first group
    # before its r tokens are cut. Constructed so that linking to the kept keys only would choose differently:
    # group 0 (time 0) holds e0 twice (tokens 0 and 1: token 0 is dropped as odd token 1's twin), e1, e2;
    # group 1 (time 1) holds e0, ≈e1, e3, e3. Equal activations: the accumulated mass alone decides.
    e = torch.eye(4)
    c1 = F.normalize(e[1] + 0.3 * e[2], dim=0)
    keys = torch.stack([e[0], e[0], e[1], e[2], e[0], c1, e[3], e[3]]).unsqueeze(1)  # [8, 1 head, 4]
    tok = PackedTokens(x=torch.ones(8, 4), cu_seqlens=torch.tensor([0, 8], dtype=torch.int32),
                       pos=torch.arange(8), size=torch.ones(8), grid=(2, 1, 4))
    out = STA(r=1).after_block(tok, keys, 0, 12)
    # all four keys of group 0: e0 carries half the mass, so group 1's e0 token (pos 4) is the redundant one
    assert out.pos.tolist() == [1, 2, 3, 5, 6, 7]
    # the kept keys alone (e0, e1, e2 at a third each) would have dropped the ≈e1 token (pos 5) instead
    g0, g1 = keys[:4, 0], keys[4:, 0]
    kept_only, _ = later_group_keep(g1, torch.ones(4), g0[1:], torch.full((3,), 1 / 3), 1)
    assert kept_only.tolist() == [0, 2, 3]
    all_keys, _ = later_group_keep(g1, torch.ones(4), g0, torch.full((4,), 1 / 4), 1)
    assert all_keys.tolist() == [1, 2, 3]


@pytest.mark.parametrize("grid,note", [((8, 14, 14), None), ((8, 4, 4), None),
                                       ((4, 14, 14), "T'=4 (groups 4/2/1)"),
                                       ((16, 14, 14), "T'=16 (groups 16/8/4)")])
def test_geometry_outside_the_paper_is_labelled(grid, note):
    got = STA(r=4).geometry_note(grid)
    if note is None:
        assert got is None
    else:
        assert note in got and "T'=8" in got
    assert get_reducer("tome", r=2).geometry_note(grid) is None  # the base class: nothing to label


def test_a_whole_clip_with_a_repeated_position_is_refused():
    # full clips skip reading their group sizes; that rests on each clip's positions being distinct
    tok, keys = _tokens((8, 4, 4))
    pos = tok.pos.clone()
    pos[5] = pos[100]
    with pytest.raises(RuntimeError, match="sta: a whole clip repeats a token position"):
        STA(r=2).after_block(tok.replace(pos=pos), keys, 0, 12)


def test_gradients_reach_exactly_the_kept_tokens():
    tok, keys = _tokens((8, 4, 4), batch=2, seed=4)
    x = tok.x.clone().requires_grad_(True)
    out = STA(r=4).after_block(tok.replace(x=x), keys, 0, 12)
    w = torch.randn(out.x.shape, generator=torch.Generator().manual_seed(5))
    (out.x * w).sum().backward()
    rows = tok.seq_ids() * 128 + tok.pos  # each input token's (clip, slot)
    kept = {(int(c), int(p)) for c, p in zip(out.seq_ids(), out.pos)}
    for i in range(x.shape[0]):
        key = (int(rows[i]) // 128, int(tok.pos[i]))
        assert bool(x.grad[i].abs().sum() > 0) == (key in kept)
    ocu = out.cu_seqlens.tolist()
    for c in range(2):  # the kept tokens' gradients are their output rows' weights, in temporal order
        mine = x.grad[128 * c: 128 * (c + 1)][out.pos[ocu[c]:ocu[c + 1]]]
        assert torch.equal(mine, w[ocu[c]:ocu[c + 1]])
