"""PiToMe (reducers/pitome.py): energy score, the energy rule and the energy-ordered bipartite rule, on
hand-built tokens whose answer is known by construction; packed batches; the model's token counts."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import noise_video, packed_tokens, seeded_model

from tokenbench.reducers import PackedTokens, ReducerParamError, get_reducer
from tokenbench.reducers.pitome import PiToMe, energy_scores, merged_per_block
from tokenbench.reducers.testing import check_packed, check_reducer, per_clip_size

GRID = (8, 4, 4)


def _f(x: float, m: float) -> float:
    """The energy's per-pair term, written out: x − m above the margin, exp(x − m) − 1 below (α = 1)."""
    return x - m if x > m else math.exp(x - m) - 1.0


def test_energy_of_a_five_token_example():
    # three copies of e1, one e2 (orthogonal), one −e1 (opposite)
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    m = torch.stack([e1, e2, e1, e1, -e1]).unsqueeze(0)
    got = energy_scores(m, margin=0.5)[0]
    want = [(3 * _f(1, .5) + _f(0, .5) + _f(-1, .5)) / 5,
            (_f(1, .5) + 4 * _f(0, .5)) / 5,
            (3 * _f(1, .5) + _f(0, .5) + _f(-1, .5)) / 5,
            (3 * _f(1, .5) + _f(0, .5) + _f(-1, .5)) / 5,
            (_f(1, .5) + 3 * _f(-1, .5) + _f(0, .5)) / 5]
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    # alpha scales only the below-margin terms
    got2 = energy_scores(m, margin=0.5, alpha=2.0)[0]
    assert torch.allclose(got2[1], torch.tensor((_f(1, .5) + 2 * 4 * _f(0, .5)) / 5), atol=1e-6)


# Six tokens: a pair P = {0, 2} at u, a pair Q = {3, 5} at v (cos(u, v) = 0.8), token 1 at w ⊥ both, token 4 at
# z with cos(u, z) = 0, cos(v, z) = −0.6. Energies: P > Q > w > z at the margins used (0.5 and 0.25), so the
# energy order is 0, 2, 3, 5, 1, 4 (ties by index).
U, V, W, Z = [0.0, 1.0, 0.0], [0.0, 0.8, 0.6], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]
METRIC = torch.tensor([U, W, U, V, Z, V])


def _tokens(sizes=(1.0, 1.0, 3.0, 2.0, 1.0, 1.0)):
    n = METRIC.shape[0]
    x = torch.arange(n * 4, dtype=torch.float32).view(n, 4) ** 1.5  # distinct rows
    pos = torch.tensor([7, 3, 5, 2, 9, 4])
    tok = PackedTokens(x=x, cu_seqlens=torch.tensor([0, n], dtype=torch.int32), pos=pos,
                       size=torch.tensor(sizes), grid=GRID)
    keys = METRIC.unsqueeze(1).expand(n, 2, 3).clone()  # two identical heads: their mean is METRIC
    return tok, keys


def test_energy_order_of_the_six_token_example():
    for margin in (0.5, 0.25):
        e = energy_scores(F.normalize(METRIC, dim=-1).unsqueeze(0), margin)[0]
        assert e.argsort(descending=True, stable=True).tolist() == [0, 2, 3, 5, 1, 4]


def test_energy_rule_merges_the_highest_energy_tokens_and_protects_the_rest():
    tok, keys = _tokens()
    red = PiToMe(ratio=0.6, margin=0.5)  # r = ⌊6 − 3.6⌋ = 2: the 4 highest-energy tokens are mergeable
    assert merged_per_block(6, 0.6) == 2
    out = red.after_attention(tok, keys, layer=0, depth=2)  # block 0 of 2: the energy rule, margin 0.5
    # A = ranks 0, 2 = tokens 0, 3; B = ranks 1, 3 = tokens 2, 5; 0 → 2 (cos 1), 3 → 5 (cos 1);
    # output: protected 1, 4 (energy order), then B 2, 5
    x = tok.x
    want = torch.stack([x[1], x[4], (1 * x[0] + 3 * x[2]) / 4, (2 * x[3] + 1 * x[5]) / 3])
    assert torch.allclose(out.x, want)
    assert out.size.tolist() == [1.0, 1.0, 4.0, 3.0]
    assert out.pos.tolist() == [3, 9, 5, 2]  # merged: the smaller pos
    assert out.cu_seqlens.tolist() == [0, 4] and out.lens == (4,)
    assert torch.equal(out.x[:2], tok.x[[1, 4]])  # protected tokens copied exactly


def test_energy_bipartite_rule_in_the_second_half():
    tok, keys = _tokens()
    red = PiToMe(ratio=0.6, margin=0.5)
    assert red.energy_blocks(2) == 1 and red.margin_at(1, 2) == 0.25
    out = red.after_attention(tok, keys, layer=1, depth=2)  # block 1 of 2: energy-ordered bipartite
    # all tokens alternate by energy rank: A = 0, 3, 1; B = 2, 5, 4. Best partners: 0 → 2 (1), 3 → 5 (1),
    # 1 → 2 (0). The two best (0 and 3) merge; out: unmerged A (1), then B in rank order (2, 5, 4)
    x = tok.x
    want = torch.stack([x[1], (x[0] + 3 * x[2]) / 4, (2 * x[3] + x[5]) / 3, x[4]])
    assert torch.allclose(out.x, want)
    assert out.size.tolist() == [1.0, 4.0, 3.0, 1.0]
    assert out.pos.tolist() == [3, 5, 2, 9]


def test_ratio_one_is_the_identity_and_small_clips_merge_nothing():
    tok, keys = _tokens()
    assert PiToMe(ratio=1.0).after_attention(tok, keys, 0, 12) is tok
    assert merged_per_block(1, 0.5) == 0 and merged_per_block(6, 0.9) == 0  # ⌊6 − 5.4⌋ = 0


def test_parameters_are_checked():
    for bad in ({"ratio": 0.4}, {"ratio": 1.1}, {"ratio": True}, {"margin": 1.0}, {"margin": -0.1},
                {"alpha": 0.0}, {"prop_attn": 1}):
        with pytest.raises(ReducerParamError, match="pitome: " + next(iter(bad))):
            PiToMe(**bad)


def _packed(lens, seed=0, **kw):
    return packed_tokens(lens, GRID, seed, **kw)


def _clip(tok, keys, i):
    a, b = tok.cu_seqlens[i].item(), tok.cu_seqlens[i + 1].item()
    return (PackedTokens(x=tok.x[a:b], cu_seqlens=torch.tensor([0, b - a], dtype=torch.int32),
                         pos=tok.pos[a:b], size=tok.size[a:b], grid=tok.grid), keys[a:b])


@pytest.mark.parametrize("layer", [0, 11])  # the energy rule, the energy-ordered bipartite rule
@pytest.mark.parametrize("lens", [[20, 20, 20], [20, 13, 20, 7, 2]])
def test_batched_equals_per_clip(layer, lens):
    tok, keys = _packed(lens)
    red = PiToMe(ratio=0.7)
    out = red.after_attention(tok, keys, layer, 12)
    check_packed(out, "pitome", grid=GRID, size_per_clip=per_clip_size(tok))
    for i in range(len(lens)):
        one = red.after_attention(*_clip(tok, keys, i), layer, 12)
        got = _clip(out, keys, i)[0]
        assert torch.equal(got.x, one.x) and torch.equal(got.size, one.size) and torch.equal(got.pos, one.pos)
    assert list(out.lens) == [n - merged_per_block(n, 0.7) for n in lens]


def test_tokens_per_layer_follow_the_ratio():
    model = seeded_model("vit_t", 5, num_frames=16, img_size=64)
    with torch.no_grad():
        model(noise_video(2, 16, 64), get_reducer("pitome", ratio=0.8))
    n, want = 128, []
    for _ in range(12):
        n -= merged_per_block(n, 0.8)
        want.append([n, n])
    assert model.last_stats.tokens_per_layer == want


def test_conformance_on_unequal_lengths():
    check_reducer(PiToMe(ratio=0.75))


@pytest.mark.slow
def test_flops_are_counted_with_the_energy_matmul():
    """fvcore traces the hooks (jit): the count runs, agrees with the analytic model, and holds the n×n energy
    similarity among the reducer's own ops (more than ToMe's n/2 × n/2 at a similar budget)."""
    from tokenbench.harness.flops import count_flops, verify_analytic

    model = seeded_model("vit_t", 5, num_frames=16, img_size=64)
    video = noise_video(2, 16, 64)
    pitome = count_flops(model, video, PiToMe(ratio=0.9))
    tome = count_flops(model, video, get_reducer("tome", r=8))
    assert pitome.reducer_gflops > tome.reducer_gflops > 0
    verify_analytic(model, video, PiToMe(ratio=0.9))


@pytest.mark.parametrize("selected", [False, True], ids=["full", "selected"])
def test_reads_nothing_back_from_the_device(selected):
    """The device-read spy of test_batched_reducers: no count read back, on full clips or after a selection."""
    from test_batched_reducers import device_reads

    reads = device_reads(PiToMe, selected, ratio=0.8)
    assert len(reads) == 2 * 12 and all(calls == [] for calls in reads), reads
