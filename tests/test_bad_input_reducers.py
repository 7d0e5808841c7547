"""Reducer parameters that cannot fit the model, and reducers that break the interface (issue 16, items 4 and 7):
refused at validation in a sentence, or failing with the conformance helper's named rule, never a bare torch
error."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import Raw, write_suite

from tokenbench.harness import model as backbone
from tokenbench.harness.cli import main
from tokenbench.harness.model import build_model
from tokenbench.harness.run import run_cell
from tokenbench.harness.suite import SuiteError, load_suite
from tokenbench.reducers import Reducer, ReducerParamError, Selection, get_reducer, register_reducer
from tokenbench.reducers.base import BACKBONE_TUBELET, grid_of
from tokenbench.reducers.contract import Checked, ReducerContractError, checked
from tokenbench.reducers.testing import check_reducer


def _suite(tmp_path, reducer: str, params: str):
    return write_suite(tmp_path, "geometry", {"name": reducer, "params": Raw(params)})


def test_the_reducers_tubelet_constant_is_the_backbones():
    assert BACKBONE_TUBELET == (backbone.TUBELET, backbone.PATCH)


@pytest.mark.parametrize("reducer,params,message", [
    # input-stage reducers are told the model's tubelet: restating it is an unknown parameter
    ("rlt", "{ patch = 8 }", "reducer 'rlt' has no parameter 'patch'"),
    ("rlt", "{ tubelet = 4 }", "reducer 'rlt' has no parameter 'tubelet'"),
    ("random", "{ patch = 32 }", "reducer 'random' has no parameter 'patch'"),
    ("rlt_random", "{ patch = 8 }", "reducer 'rlt_random' has no parameter 'patch'"),
    ("temporal", "{ stride = 2, scale = 0.5 }", "temporal: stride=2 and scale=0.5 exclude each other"),
    ("temporal", "{ scale = 0.5, strid = 2 }", "reducer 'temporal' has no parameter 'strid'"),
    ("compose", "{ stages = [\"tome\", \"sta\"] }", "compose: stages [0, 1] both act inside the blocks"),
    ("compose", "{ stages = [\"tome\", \"rlt\"] }", "compose: stages[1] selects at the input but comes after"),
    ("compose", "{ stages = [\"rlt\", { name = \"tome\", params = { r = 40 } }] }",
     "compose: stages[1] (tome): tome: r=40"),
    ("random", "{ count = 100 }", "random: count=100 exceeds the 64 tubelets of a clip of token grid (4, 4, 4)"),
    ("random", "{ keep = 0.3, match_rlt = 0.1 }", "random: keep=0.3 and match_rlt=0.1 exclude each other"),
    ("random", "{ keep = 0.3, count = 5 }", "random: keep=0.3 and count=5 exclude each other"),
])
def test_parameters_that_cannot_fit_are_refused_at_validation_in_a_sentence(tmp_path, capsys, reducer, params,
                                                                            message):
    suite = _suite(tmp_path, reducer, params)
    with pytest.raises(SuiteError, match="geometry.toml:") as err:
        load_suite(suite)
    assert message in str(err.value) and "tensor(" not in str(err.value)
    assert main(["run", "--suite", str(suite), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "tensor(" not in lines[0]


def test_flops_refuses_rlt_patch_8_in_one_line(capsys):
    assert main(["flops", "--model", "vit_t", "--frames", "8", "--size", "64", "--reducer", "rlt", "patch=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no parameter 'patch'" in err[0] and "tensor(" not in err[0]


@dataclass(repr=False)
class OwnTubelet(Reducer):
    """A plugin written before select() was told the geometry: restates its tubelet, select(video)."""

    patch: int = 8

    def select(self, video):
        t, h, w = grid_of(video, 2, self.patch)
        keep = torch.ones(video.shape[0], t, h, w, dtype=torch.bool)
        return Selection(keep=keep, lengths=keep.long())


def test_a_plugin_restating_another_tubelet_is_refused_and_one_restating_the_models_still_runs():
    model = build_model("vit_t", 5, num_frames=8, img_size=64).eval()
    with pytest.raises(ReducerParamError, match="patch=8 does not fit the model, whose tubelets are 2 frames"):
        model(torch.randn(1, 3, 8, 64, 64), OwnTubelet())
    with torch.no_grad():  # select(video) without the geometry is still called the model's one way
        assert model(torch.randn(1, 3, 8, 64, 64), OwnTubelet(patch=16)).shape == (1, 5)


def test_random_keep_with_match_rlt_is_refused_but_its_calibration_survives_fresh():
    with pytest.raises(ReducerParamError, match="exclude each other"):
        get_reducer("random", keep=0.3, match_rlt=0.1)
    r = get_reducer("random", match_rlt=0.1)
    r.calibrate([torch.randn(2, 3, 8, 64, 64)])  # noise: RLT keeps everything
    assert r.keep == 1.0 and r.fresh().keep == 1.0 and r.fresh().select(torch.zeros(1, 3, 8, 64, 64)).keep.all()
    assert get_reducer("random").fraction == 0.5  # nothing given: the default fraction


# --- reducers that break the contract -------------------------------------------------------------------
@dataclass(repr=False)
class ShortX(Reducer):
    """after_block drops a row of x but not of pos/size."""

    def after_block(self, tokens, keys, layer, depth):
        return tokens.replace(x=tokens.x[:-1]) if layer == 1 else tokens


@dataclass(repr=False)
class BadLengths(Reducer):
    """select returns lengths of the wrong shape."""

    def select(self, video):
        t, h, w = grid_of(video, 2, 16)
        keep = torch.ones(video.shape[0], t, h, w, dtype=torch.bool)
        return Selection(keep=keep, lengths=torch.ones(video.shape[0], t, dtype=torch.long))


VIOLATIONS = [(ShortX, "ShortX.after_block(layer=1): x has 255 tokens but pos has shape (256,)",
               r"ShortX\.after_block\(layer=1\): cu_seqlens ends at \d+ but x has \d+ tokens"),
              (BadLengths, "BadLengths.select(): lengths has shape (2, 8), expected (2, 8, 4, 4)",
               r"select\(\): lengths has shape \(3, 8\)")]


@pytest.mark.parametrize("cls,message,helper", VIOLATIONS)
def test_a_contract_violation_in_a_forward_pass_names_the_hook_and_the_rule(cls, message, helper):
    model = build_model("vit_t", 5, num_frames=16, img_size=64).eval()
    with torch.no_grad(), pytest.raises(ReducerContractError) as err:
        model(torch.randn(2, 3, 16, 64, 64), checked(cls()))
    assert message in str(err.value)
    with pytest.raises(AssertionError, match=helper):  # the conformance helper names it too
        check_reducer(cls())


def test_checked_reducers_look_like_themselves():
    assert checked(get_reducer("none")).identity and not isinstance(checked(get_reducer("none")), Checked)
    for name in ("rlt", "random", "tome", "sta", "rlt_random", "temporal", "spatial", "compose"):
        r = get_reducer(name, **({"stages": ["rlt", "tome"]} if name == "compose" else {}))
        c = checked(r)
        assert isinstance(c, Checked) and c.inner is r and type(r) is r.__class__ and repr(c) == repr(r)
        assert c.name == r.name and c.params() == r.params() and checked(c) is c
        assert isinstance(c.fresh(), Checked) and c.fresh().inner is not r and c.fresh().params() == r.params()
        caps = ("prop_attn", "length_embedding", "calibrates", "train_only", "identity", "acts_at_input",
                "acts_in_blocks")
        assert [getattr(c, k) for k in caps] == [getattr(r, k) for k in caps]  # declared capabilities unchanged
    video = torch.randn(2, 3, 16, 64, 64)
    model = build_model("vit_t", 5, num_frames=16, img_size=64).eval()
    with torch.no_grad():  # a checked reducer computes exactly what the reducer does
        for name in ("rlt", "tome", "sta"):
            assert torch.equal(model(video, get_reducer(name, **({"r": 4} if name != "rlt" else {}))),
                               model(video, checked(get_reducer(name, **({"r": 4} if name != "rlt" else {})))))


def test_the_runner_records_a_contract_violation_by_its_rule(tmp_path):
    register_reducer("test_short_x")(ShortX)
    suite = _suite(tmp_path, "test_short_x", "{}")
    rec = run_cell(load_suite(suite).cells()[0])
    assert rec["status"] == "failed"
    assert rec["error"].startswith("ReducerContractError: ShortX.after_block(layer=1): x has ")
