"""The built-in suites' fixed-schedule budgets land on their targets (issue 13, docs/architecture.md §6).

A budget is the mean tokens per block (entering each block's MLP) as a fraction of the un-reduced clip,
measured by running the real reducer in the real model (harness.suite.budgets). Every content-independent
inference setting of a suite must appear in TARGETS below, and land within ±0.04 of its target — or, where
the target is out of the reducer's reach on that geometry (FLOOR), be the most aggressive value the reducer
accepts there.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tokenbench.harness.model import build_model
from tokenbench.harness.suite import load_suite
from tokenbench.harness.suite.budgets import budget_fraction, fixed_budget, probe_clips
from tokenbench.reducers import ReducerParamError, get_reducer

TOLERANCE = 0.04

# (model, cell label) → target fraction of the baseline's mean tokens per block; the same in every suite that
# runs the model (default and full: vit_t 8×112², 196 tokens; paper-k400 / paper-ssv2: vit_b and vit_l 16×224²)
TARGETS = {
    "vit_t": {"none": 1.0,
              "random keep=0.9": 0.90, "random keep=0.75": 0.75, "random keep=0.5": 0.50, "random keep=0.3": 0.30,
              "tome r=3": 0.90, "tome r=8": 0.75, "tome r=15": 0.50, "tome inflection=-1.0 r=16": 0.30,
              "sta r=4": 0.90, "sta r=10": 0.75, "sta r=19": 0.50, "sta r=24": 0.30,
              # full only (issue 25): attention-reading reducers and feature-space pruning
              "vid_tldr r=[6, 6, 6, 3]": 0.90, "vid_tldr r=[16, 16, 16, 8]": 0.75,
              "vid_tldr r=[31, 31, 31, 16]": 0.50, "vid_tldr r=[44, 44, 44, 22]": 0.30,
              "attn_prune fuse=True keep_rate=0.92 layers=[3, 6, 9]": 0.90,
              "attn_prune fuse=True keep_rate=0.8 layers=[3, 6, 9]": 0.75,
              "attn_prune fuse=True keep_rate=0.53 layers=[3, 6, 9]": 0.50,
              "attn_prune fuse=True keep_rate=0.15 layers=[3, 6, 9]": 0.30,
              "feature_diff drop_rate=0.1": 0.90, "feature_diff drop_rate=0.25": 0.75,
              "feature_diff drop_rate=0.5": 0.50, "feature_diff drop_rate=0.7": 0.30,
              # downsampling on the 4×7×7 grid: 0.90 is out of reach of both (4 time steps; 7×7 is the next
              # grid up), and temporal's nearest to 0.30 is one step of four
              "temporal scale=0.75": 0.75, "temporal scale=0.5": 0.50, "temporal scale=0.25": 0.25,
              "spatial scale=0.86": 0.75, "spatial scale=0.71": 0.50, "spatial scale=0.57": 0.30},
    "vit_b": {"none": 1.0,
              "random keep=0.9": 0.90, "random keep=0.75": 0.75, "random keep=0.5": 0.50, "random keep=0.3": 0.30,
              "tome r=24": 0.90, "tome r=60": 0.75, "tome r=120": 0.50, "tome inflection=-1.0 r=127": 0.30,
              "sta r=15": 0.90, "sta r=39": 0.75, "sta r=77": 0.50, "sta r=98": 0.30},
    "vit_l": {"none": 1.0,
              "random keep=0.9": 0.90, "random keep=0.75": 0.75, "random keep=0.5": 0.50, "random keep=0.3": 0.30,
              "tome r=13": 0.90, "tome r=31": 0.75, "tome r=62": 0.50, "tome inflection=-1.0 r=65": 0.30,
              "sta r=15": 0.90, "sta r=36": 0.75, "sta r=73": 0.50, "sta r=98": 0.30},
}
# issue 24 (core), in `full` only: the merge-vs-drop family merges or drops ToMe's r, so ToMe's budgets;
# dtome's budget is its calibration target (budget_reducer(): ToMe at target_r)
CORE_FULL_ONLY = {
    "tome_drop r=3": 0.90,
    "tome_drop r=8": 0.75,
    "tome_drop r=15": 0.50,
    "tome_drop inflection=-1.0 r=16": 0.30,
    "random_merge r=3": 0.90,
    "random_merge r=8": 0.75,
    "random_merge r=15": 0.50,
    "random_merge inflection=-1.0 r=16": 0.30,
    "random_drop r=3": 0.90,
    "random_drop r=8": 0.75,
    "random_drop r=15": 0.50,
    "random_drop inflection=-1.0 r=16": 0.30,
    "tome_hybrid r=3 τ=0.8": 0.90,
    "tome_hybrid r=8 τ=0.8": 0.75,
    "tome_hybrid r=15 τ=0.8": 0.50,
    "tome_hybrid inflection=-1.0 r=16 τ=0.8": 0.30,
    "tome keys=concat r=3": 0.90,
    "tome keys=concat r=8": 0.75,
    "tome keys=concat r=15": 0.50,
    "tome inflection=-1.0 keys=concat r=16": 0.30,
    "dtome target_r=3": 0.90,
    "dtome target_r=8": 0.75,
    "dtome target_r=15": 0.50,
    "dtome inflection=-1.0 target_r=16": 0.30,
}
TARGETS["vit_t"].update(CORE_FULL_ONLY)
# issue 24 (pitome), in `full` only: PiToMe keeps a share `ratio` per block; ToFu prunes/merges ToMe's r
PITOME_FULL_ONLY = {
    "pitome ratio=0.98": 0.90,
    "pitome ratio=0.95": 0.75,
    "pitome ratio=0.88": 0.50,
    "pitome ratio=0.79": 0.30,
    "tofu r=3": 0.90,
    "tofu r=8": 0.75,
    "tofu r=15": 0.50,
    "tofu inflection=-1.0 r=16": 0.30,
}
TARGETS["vit_t"].update(PITOME_FULL_ONLY)
# Targets out of reach: STA drops at most half of a temporal group (r ≤ ⌊H'·W'/2⌋) and prunes only after
# blocks 0, depth//3 and 2·depth//3, so at 12 blocks it cannot go below ~0.37 of the tokens per block
FLOOR = {("vit_t", "sta r=24"), ("vit_b", "sta r=98")}


@pytest.fixture(autouse=True)
def _one_thread():
    # counting, not timing: one thread is ~30× faster than two on a machine shared with other work
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _paper(name: str, tmp_path) -> object:
    ckpt, manifest = tmp_path / "vit.pth", tmp_path / "val.txt"
    ckpt.write_bytes(b"")
    manifest.write_text("a.mp4 0\n")
    return load_suite(name, env={}, overrides=[f"models.checkpoint={ckpt}", f"datasets.manifest={manifest}"])


def _settings(suite) -> dict[tuple[str, str], tuple[str, dict, object]]:
    """(model id, label) → (reducer, params, model spec) of every inference cell."""
    models = {m.id: m for m in suite.models}
    return {(c.model_id or c.model, c.label): (c.reducer, dict(c.params), models[c.model_id or c.model])
            for c in suite.cells() if c.mode == "inference"}


def _check(settings, model_for) -> list[str]:
    """Every setting's measured budget against TARGETS; returns the failures, one line each."""
    bad, found = [], set()
    for (mid, label), (reducer, params, spec) in sorted(settings.items()):
        model = model_for(spec)
        key = (id(model), reducer, repr(sorted(params.items())))
        if key not in _MEASURED:
            _MEASURED[key] = fixed_budget(model, reducer, params)
        frac = _MEASURED[key]
        if frac is None:  # content-dependent: RLT, random matched to RLT
            assert label not in TARGETS[mid], f"{mid} {label}: expected a fixed budget"
            continue
        found.add((mid, label))
        assert label in TARGETS[mid], f"{mid} {label} ({frac:.3f}) has no target in TARGETS: add one"
        target = TARGETS[mid][label]
        if (mid, label) in FLOOR:
            r = params["r"]
            get_reducer(reducer, **params).check_geometry(model.grid, model.depth)
            with pytest.raises(ReducerParamError):  # nothing more aggressive is accepted
                get_reducer(reducer, **{**params, "r": r + 1}).check_geometry(model.grid, model.depth)
            if frac - target <= TOLERANCE:
                bad.append(f"{mid} {label}: {frac:.3f} reaches its target {target}: take it out of FLOOR")
        elif abs(frac - target) > TOLERANCE:
            bad.append(f"{mid} {label}: mean tokens per block {frac:.3f}, target {target} ± {TOLERANCE}")
    return bad


_MODELS: dict[tuple, torch.nn.Module] = {}  # one random-weight model per geometry, kept for the module
_MEASURED: dict[tuple, float | None] = {}  # (model, reducer, params) → fixed_budget: both paper suites share


def _model_for(spec) -> torch.nn.Module:
    key = (spec.name, spec.num_frames, spec.img_size)
    if key not in _MODELS:
        _MODELS[key] = build_model(spec.name, 2, num_frames=spec.num_frames, img_size=spec.img_size).eval()
    return _MODELS[key]


@pytest.mark.parametrize("name", ["default", "full"])
def test_default_and_full_budgets_land_on_their_targets(name):
    settings = _settings(load_suite(name, env={}))
    assert _check(settings, _model_for) == []
    fixed = {label for mid, label in settings if label in TARGETS[mid]}
    # every target is run; default leaves whole families to `full`: random at fixed keep ratios (random matched
    # to RLT is its curve), spatial downsampling, the ToMe family and the attention-reading reducers
    full_only = {label for label in TARGETS["vit_t"]
                 if label.split()[0] in ("vid_tldr", "attn_prune", "feature_diff", "spatial")}
    skipped = ({"random keep=0.9", "random keep=0.75", "random keep=0.5", "random keep=0.3", *CORE_FULL_ONLY,
                *PITOME_FULL_ONLY} | full_only if name == "default" else set())
    assert fixed == set(TARGETS["vit_t"]) - skipped


def test_paper_budgets_on_vit_b_geometry_land_on_their_targets(tmp_path):
    """ViT-B's budgets on a vit_t of ViT-B's token grid and depth (8×14×14, 12 blocks): the counts of these
    reducers follow the grid and the depth, not the width (checked below). The real ViT-B and ViT-L: the slow
    test."""
    twin = _model_for(SimpleNamespace(name="vit_t", num_frames=16, img_size=224))
    assert (twin.name, twin.grid, twin.depth) == ("vit_t", (8, 14, 14), 12)
    k400, ssv2 = ({k: v for k, v in _settings(_paper(name, tmp_path)).items() if k[0] == "vit_b"}
                  for name in ("paper-k400", "paper-ssv2"))
    assert set(k400) == set(ssv2)  # one budget table for both datasets: the counts do not follow content
    assert _check(k400, lambda spec: twin) == []
    assert {label for _, label in k400 if label in TARGETS["vit_b"]} == set(TARGETS["vit_b"])


def test_budgets_follow_the_geometry_not_the_width():
    small, wide = (build_model(n, 2, num_frames=8, img_size=112).eval() for n in ("vit_t", "vit_s"))
    for reducer, params in (("tome", {"r": 8}), ("tome", {"r": 16, "inflection": -1.0}), ("sta", {"r": 10}),
                            ("random", {"keep": 0.3})):
        assert fixed_budget(small, reducer, params) == fixed_budget(wide, reducer, params)


def test_fixed_budgets_are_content_independent_and_rlt_is_not():
    model = build_model("vit_t", 2, num_frames=8, img_size=112).eval()
    clips = probe_clips(model)
    # STA's counts: the same on noise, on a still clip and on a batch of two different clips
    mixed = torch.cat([clips["noise"], clips["static"]])
    for reducer, params in (("sta", {"r": 10}), ("tome", {"r": 8}), ("random", {"keep": 0.5})):
        fracs = {budget_fraction(model, reducer, params, v) for v in (*clips.values(), mixed)}
        assert len(fracs) == 1, (reducer, fracs)
    # RLT keeps every token of noise and one time step (1/T' = 1/4) of a still clip: no fixed budget
    assert budget_fraction(model, "rlt", {"threshold": 0.1}, clips["noise"]) == 1.0
    assert budget_fraction(model, "rlt", {"threshold": 0.1}, clips["static"]) == 0.25
    assert fixed_budget(model, "rlt", {"threshold": 0.1}) is None
    assert fixed_budget(model, "random", {"match_rlt": 0.1}) is None  # calibrated on each clip in turn
    assert fixed_budget(model, "none", {}) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["paper-k400", "paper-ssv2"])
def test_paper_budgets_on_the_real_vit_b_and_vit_l_land_on_their_targets(name, tmp_path):
    settings = _settings(_paper(name, tmp_path))
    assert {m for m, _ in settings} == {"vit_b", "vit_l"}
    assert _check(settings, _model_for) == []
    for mid in ("vit_b", "vit_l"):
        assert {label for m, label in settings if m == mid and label in TARGETS[mid]} == set(TARGETS[mid])


def test_the_budgets_command_prints_each_fixed_setting_of_a_suite(capsys):
    from tokenbench.harness.suite.budgets import main

    main(["full"])
    rows = {" ".join(ln.split()[1:-1]): float(ln.split()[-1]) for ln in capsys.readouterr().out.splitlines()}
    assert set(rows) == set(TARGETS["vit_t"])  # RLT and random at RLT's budget follow content: not listed
    assert rows["tome r=3"] == pytest.approx(0.901, abs=5e-4) and rows["none"] == 1.0
