"""RLT followed by random masking (reducers/compose.py, reducer ``rlt_random``)."""
from __future__ import annotations

import pytest
import torch
from conftest import suite_toml

from tokenbench.reducers import ReducerParamError, get_reducer
from tokenbench.reducers.compose import RLTRandom
from tokenbench.reducers.rlt import RLT
from tokenbench.reducers.testing import check_reducer


def _video(b=3, s=64, seed=0):
    """Clips with a static part and a changing part of different sizes, so RLT keeps unequal counts."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, 3, 1, s, s, generator=g).expand(b, 3, 16, s, s).contiguous()
    for i in range(b):
        img[i, :, :, :, : 16 * (i + 1)] += (0.5 * torch.arange(16.0)).view(1, 16, 1, 1)
    return img


def test_masks_a_fraction_of_rlt_tokens_and_keeps_their_run_lengths():
    v = _video()
    rlt = RLT(threshold=0.1).select(v)
    sel = RLTRandom(threshold=0.1, keep=0.5, seed=0).select(v)
    n_rlt = rlt.keep.flatten(1).sum(1).tolist()
    assert n_rlt == [16 + 7 * 4, 16 + 7 * 8, 16 + 7 * 12]
    assert bool((sel.keep <= rlt.keep).all()), "random masking only removes RLT tokens"
    assert sel.keep.flatten(1).sum(1).tolist() == [round(0.5 * n) for n in n_rlt]
    assert torch.equal(sel.lengths, rlt.lengths * sel.keep)  # survivors keep RLT's run length
    assert bool((sel.lengths[sel.keep] > 0).all())


def test_seeded_and_deterministic():
    v = _video()
    a = RLTRandom(seed=4).select(v).keep
    assert torch.equal(a, RLTRandom(seed=4).select(v).keep)
    assert not torch.equal(a, RLTRandom(seed=5).select(v).keep)


def test_keep_one_is_plain_rlt_and_for_eval_drops_the_random_stage():
    v = _video()
    red = RLTRandom(threshold=0.2, keep=1.0, length_embedding=True)
    plain = RLT(threshold=0.2).select(v)
    sel = red.select(v)
    assert torch.equal(sel.keep, plain.keep) and torch.equal(sel.lengths, plain.lengths)
    ev = RLTRandom(threshold=0.2, keep=0.3, length_embedding=True).for_eval()
    assert isinstance(ev, RLT) and ev.params() == {"threshold": 0.2,
                                                  "length_embedding": True}


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ReducerParamError, match="rlt_random: threshold"):
        get_reducer("rlt_random", threshold=-1.0)
    with pytest.raises(ReducerParamError, match="rlt_random: keep"):
        get_reducer("rlt_random", keep=0.0)
    with pytest.raises(ReducerParamError, match="rlt_random: seed"):
        get_reducer("rlt_random", seed="x")


def test_conformance():
    report = check_reducer(RLTRandom(threshold=0.1, keep=0.6), video=_video())
    assert "select" in report.checks


# --- compose: any input stage(s), then one in-block stage ----------------------------------------------
from tokenbench.harness.flops import count_flops  # noqa: E402
from tokenbench.harness.model import build_model  # noqa: E402
from tokenbench.harness.suite import load_suite  # noqa: E402
from tokenbench.reducers.compose import Compose  # noqa: E402
from tokenbench.reducers.random import RandomMasking  # noqa: E402
from tokenbench.reducers.tome import ToMe  # noqa: E402

RLT_TOME = [{"name": "rlt", "params": {"threshold": 0.1}}, {"name": "tome", "params": {"r": 4}}]


def test_rlt_then_tome_is_tome_run_on_rlts_tokens():
    model = build_model("vit_t", 5, num_frames=16, img_size=64).eval()
    v = _video()
    comp = get_reducer("compose", stages=RLT_TOME)
    sel = RLT(threshold=0.1).select(v)
    with torch.no_grad():
        got = model(v, comp)
        counts = model.last_stats.tokens_per_layer
        want = model(v, ToMe(r=4), selection=sel)
    assert torch.equal(got, want) and counts == model.last_stats.tokens_per_layer
    assert model.last_stats.tokens_in == sel.keep.flatten(1).sum(1).tolist()
    assert len(set(model.last_stats.tokens_in)) == 3  # unequal lengths, each merged by ToMe


def test_a_compositions_flops_are_its_in_block_stage_counted_on_its_input_stages_tokens():
    model = build_model("vit_t", 5, num_frames=16, img_size=64).eval()
    v = _video(b=2)
    comp = count_flops(model, v, get_reducer("compose", stages=RLT_TOME))
    sel = RLT(threshold=0.1).select(v)
    parts = count_flops(model, v, ToMe(r=4), selection=sel)
    assert comp.gflops == pytest.approx(parts.gflops) and comp.analytic.mean == pytest.approx(parts.analytic.mean)
    assert comp.reducer_gflops == pytest.approx(parts.reducer_gflops) and comp.reducer_gflops > 0  # similarity
    assert comp.backbone_difference < 0.01  # the analytic cross-check holds for a composition
    assert comp.tokens_in == sel.keep.flatten(1).sum(1).tolist() == parts.tokens_in
    assert comp.tokens_per_layer == parts.tokens_per_layer and comp.tokens_per_layer[-1][1] == 24  # 72 − 4·12


def test_temporal_then_tome_and_its_params_list_every_stage():
    comp = get_reducer("compose", stages=["temporal", {"name": "tome", "params": {"r": 2}}])
    assert comp.params()["stages"][0] == {"name": "temporal", "params": {"stride": 2, "scale": None}}
    assert comp.params()["stages"][1]["name"] == "tome" and comp.params()["stages"][1]["params"]["r"] == 2
    assert get_reducer("compose", **comp.params()).params() == comp.params()  # the record rebuilds it
    model = build_model("vit_t", 5, num_frames=16, img_size=64).eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 64, 64), comp)
    assert model.last_stats.tokens_in == [64, 64] and model.last_stats.tokens_per_layer[0] == [62, 62]


def test_capabilities_combine_over_the_stages():
    rlt_tome = get_reducer("compose", stages=[{"name": "rlt", "params": {"length_embedding": True}},
                                              {"name": "tome", "params": {"prop_attn": True}}])
    assert rlt_tome.prop_attn and rlt_tome.length_embedding and not rlt_tome.calibrates
    assert rlt_tome.acts_at_input and rlt_tome.acts_in_blocks and not rlt_tome.train_only
    assert rlt_tome.for_eval().params() == rlt_tome.params()  # nothing train-only: evaluated as trained
    no_prop = get_reducer("compose", stages=["rlt", "tome"])
    assert not no_prop.prop_attn and not no_prop.length_embedding
    masked = get_reducer("compose", stages=["temporal", {"name": "random", "params": {"match_rlt": 0.1}}])
    assert masked.calibrates and not masked.train_only and not masked.acts_in_blocks
    assert isinstance(masked.for_eval(), type(get_reducer("temporal")))  # the train-only stage drops out
    assert get_reducer("compose", stages=["random"]).for_eval().identity
    assert get_reducer("compose", stages=["none"]).identity


def test_calibration_of_any_stage_is_delegated_and_survives_fresh():
    comp = Compose.of(RLT(threshold=0.1), RandomMasking(match_rlt=0.1, seed=3))
    with pytest.raises(RuntimeError, match="needs calibrate"):
        comp.select(_video())
    out = comp.calibrate(iter([_video()]))  # a generator, as the runner passes: read by every stage
    assert out[0] is None and 0 < out[1] <= 1
    twin = comp.fresh()
    assert twin.params()["stages"][1]["params"]["keep"] == out[1]
    assert torch.equal(twin.select(_video()).keep, comp.fresh().select(_video()).keep)


def test_rlt_random_is_the_composition_of_rlt_and_random():
    v = _video()
    a = RLTRandom(threshold=0.1, keep=0.5, seed=2).select(v)
    b = Compose.of(RLT(threshold=0.1), RandomMasking(keep=0.5, seed=2)).select(v)
    assert torch.equal(a.keep, b.keep) and torch.equal(a.lengths, b.lengths)


def test_composition_conformance_on_unequal_lengths_after_rlt():
    report = check_reducer(get_reducer("compose", stages=RLT_TOME), video=_video())
    assert "select" in report.checks and len(set(report.tokens_in)) > 1


SUITE = suite_toml("comp", {
    "name": "compose", "params": {"stages": [{"name": "rlt", "params": {"threshold": 0.1}}, "tome"]},
    "sweep": {"stages.tome.params.r": [2, 4]}})


def test_a_suite_sweeps_a_stages_parameter(tmp_path):
    p = tmp_path / "comp.toml"
    p.write_text(SUITE)
    cells = load_suite(str(p), env={}).cells()
    assert [c.label for c in cells] == ["compose rlt τ=0.1 → tome r=2", "compose rlt τ=0.1 → tome r=4"]
    assert cells[1].params["stages"][1] == {"name": "tome", "params": {"r": 4}}
    for bad, where in (('"stages.sta.params.r"', "no entry named 'sta'"),
                       ('"stages.5.params.r"', "index 5 past the 2 entries")):
        p.write_text(SUITE.replace('"stages.tome.params.r"', bad))
        with pytest.raises(Exception, match=where):
            load_suite(str(p), env={})


class _SeesTokens(ToMe):
    """An in-block stage that calibrates with the model in the loop: notes the tokens its model pass saw."""

    calibrates_with_model = True

    def calibrate_model(self, model, batches):
        for video in batches:
            model(video, reducer=self)
        return list(model.last_stats.tokens_in)


def test_model_in_the_loop_calibration_runs_after_the_input_stages():
    model = build_model("vit_t", 5, num_frames=16, img_size=64).eval()
    comp = Compose.of(get_reducer("temporal"), _SeesTokens(r=2))
    assert comp.calibrates_with_model and not comp.calibrates
    with torch.no_grad():
        assert comp.calibrate_model(model, iter([torch.randn(2, 3, 16, 64, 64)])) == [64, 64]  # half of 128
    assert comp.budget_reducer().params() == comp.params()


def test_a_suite_refuses_the_same_composition_written_two_ways(tmp_path):
    p = tmp_path / "comp.toml"
    p.write_text(SUITE.replace('sweep = { "stages.tome.params.r" = [2, 4] }', "").replace('"tome"', '{ name = "tome", '
                                                                                       'params = { r = 2 } }')
                 + """
[[reducers]]
name = "compose"
id = "again"
params = { stages = ["rlt", { name = "tome", params = { r = 2, inflection = 0.0 } }] }
""")
    with pytest.raises(Exception, match="repeats"):
        load_suite(str(p), env={})
