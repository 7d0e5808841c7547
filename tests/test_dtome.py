"""Threshold merging (reducers/dtome.py): the rule on hand-built tokens, calibration with the model in the
loop on train clips (target mean r met on held-out train clips), conformance."""
from __future__ import annotations

import statistics

import pytest
import torch
from conftest import suite_toml
from test_merge_drop import _six

from tokenbench.datasets import get_dataset
from tokenbench.harness.evaluate import model_input
from tokenbench.harness.model import build_model
from tokenbench.reducers import PackedTokens, ReducerParamError, get_reducer
from tokenbench.reducers.dtome import ThresholdMerge
from tokenbench.reducers.testing import check_reducer, per_clip_size
from tokenbench.reducers.tome import ToMe


def test_every_edge_above_the_threshold_merges():
    tok, keys = _six()  # best edges: A0→B1 1.0, A2→B3 0.8, A4→B3 0.29
    for thr, r in ((0.5, 2), (0.9, 1), (0.1, 3), (1.0, 0)):
        out = ThresholdMerge(thresholds=[thr]).after_attention(tok, keys, 0, 1)
        assert out.lens == (6 - r,), thr
        if r:
            ref = ToMe(r=[r]).after_attention(tok, keys, 0, 1)
            assert torch.equal(out.x, ref.x) and torch.equal(out.size, ref.size) and torch.equal(out.pos, ref.pos)


def test_the_count_follows_each_clips_content():
    tok, keys = _six()
    flat = keys.clone()
    flat[:] = keys[0]  # a clip of one repeated token: every edge scores 1
    two = PackedTokens(x=torch.cat([tok.x, tok.x]), cu_seqlens=torch.tensor([0, 6, 12], dtype=torch.int32),
                       pos=torch.cat([tok.pos, tok.pos]), size=torch.ones(12), grid=tok.grid, lens=(6, 6))
    out = ThresholdMerge(thresholds=[0.9]).after_attention(two, torch.cat([keys, flat]), 0, 1)
    assert out.lens == (5, 3)  # one edge above 0.9 in the first clip, ⌊6/2⌋ = 3 in the second
    assert per_clip_size(out).tolist() == [6.0, 6.0]


def test_without_thresholds_it_says_to_calibrate():
    tok, keys = _six()
    with pytest.raises(ReducerParamError, match="calibrate"):
        ThresholdMerge().after_attention(tok, keys, 0, 1)
    with pytest.raises(ReducerParamError, match="target_r"):
        ThresholdMerge(target_r=-1)
    with pytest.raises(ReducerParamError, match="target_r"):
        ThresholdMerge(target_r=40).check_geometry((4, 4, 4), 12)


def _train_clips(n: int) -> torch.Tensor:
    ds = get_dataset("synthetic", "train", num_frames=8, img_size=64, num_clips=n, cache=False)
    return torch.stack([torch.as_tensor(ds[i][0]) for i in range(n)])


def test_calibrated_thresholds_meet_the_target_on_held_out_train_clips(one_thread):
    """Calibrate on 32 train clips (batch ranking, 4 batches), score on 32 other train clips: the mean
    tokens merged per block is the target within ±10 %, and clips differ in how many they merged."""
    torch.manual_seed(0)
    model = build_model("vit_t", num_classes=2, num_frames=8, img_size=64).eval()  # 64 tokens a clip
    clips = _train_clips(64)
    target = 2
    red = ThresholdMerge(target_r=target, calibration_batch=8)
    cal = red.calibrate_model(model, (model_input(clips[i:i + 8], "cpu", torch.float32) for i in range(0, 32, 8)))
    assert cal.clips == 32 and cal.batches == 4 and len(cal.thresholds) == 12
    assert cal.merged_per_layer == [2.0] * 12  # the batch ranking merges r·B per block
    with torch.no_grad():
        model(model_input(clips[32:], "cpu", torch.float32), reducer=red.fresh())
    tokens_in, last = model.last_stats.tokens_in, model.last_stats.tokens_per_layer[-1]
    per_clip = [(a - b) / 12 for a, b in zip(tokens_in, last)]  # mean tokens merged per block, each clip
    assert abs(statistics.fmean(per_clip) - target) <= 0.1 * target, per_clip
    assert max(per_clip) - min(per_clip) >= 1.0, per_clip  # the count follows the content


def test_budget_is_the_target_schedule():
    red = ThresholdMerge(target_r=5, inflection=-1.0, keys="concat")
    assert red.budget_reducer().params() == ToMe(r=5, inflection=-1.0, keys="concat").params()
    assert red.schedule(12) == ToMe(r=(5, -1.0)).schedule(12)


def test_conformance(one_thread):
    report = check_reducer(get_reducer("dtome", thresholds=[0.6] * 12))
    assert len(set(report.tokens_out)) > 1


SUITE = suite_toml(  # both splits: 16 train clips to calibrate on, the first 8 val clips scored
    "dtome-tiny",
    {"name": "dtome", "params": {"calibration_clips": 16, "calibration_batch": 8},
     "sweep": {"target_r": [2, 3]}},
    defaults={"batch_sizes": [4], "time_clips": 4},
    datasets=({"name": "synthetic", "split": "val", "max_clips": 8, "options": {"num_clips": 16}},))


@pytest.mark.slow
def test_the_runner_calibrates_on_train_clips_and_records_it(tmp_path, monkeypatch, one_thread):
    from conftest import write_file

    from tokenbench.harness.run import RunCache, run_suite
    from tokenbench.harness.suite import load_suite

    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path / "cache"))
    suite = load_suite(write_file(tmp_path, "dtome.toml", SUITE))
    cache = RunCache(cache_dir=tmp_path / "cache")
    summary = run_suite(suite, tmp_path / "results", command="pytest", cache=cache, show_progress=False)
    assert summary.failed == 0, summary.failures
    import json
    recs = [json.loads(line) for line in summary.store.read_text().splitlines()]
    assert sorted(r["cell"]["params"]["target_r"] for r in recs) == [2, 3]
    for r in recs:
        m = r["metrics"]
        cal = m["calibration"]
        assert cal["source"]["split"] == "train" and cal["source"]["clips"] == 16 and cal["clips"] == 16
        assert cal["source"]["seed"] == 0 and cal["source"]["chosen"] == "the split's first 16 clips"
        assert cal["batches"] == 2 and len(cal["thresholds"]) == 12
        assert m["reducer_params_used"]["thresholds"] == cal["thresholds"]  # what the cell ran with
        assert m["tokens_out_min"] <= m["tokens_out_max"]
    assert len(cache.calibrated) == 2  # one per configuration, reused by later cells of the same one
