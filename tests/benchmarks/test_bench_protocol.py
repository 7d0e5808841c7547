"""Is the timing protocol right? The A/A control and the paired speedups of one tiny ``tokenbench run``
(issue 12). Run (only collected with ``--benchmark-only``)::

    python -m pytest tests/benchmarks/test_bench_protocol.py --benchmark-only -s

vit_t at 8×112² with random weights, the bundled real clips (``samples``: 4 videos × 2 windows, all 8
timed), batch 8; none, ToMe r=7, random keep=0.6, RLT τ=0.1; 20 paired repeats (``TOKENBENCH_BENCH_REPEATS``).
Two checks of the estimator, on a machine quiet enough to time:

* the none cell's A/A speedup (the baseline against itself) is within 2 % of 1;
* each reducer's paired speedup is within 5 % of the ratio of separately measured medians: the none
  cell's median time ÷ the reducer cell's median time (docs/architecture.md §5: "a row's paired speedup must
  agree with the ratio of separately measured medians").

``extra_info`` holds every number; on a loaded machine both can fail for reasons that are not the
protocol's (the machine's load average before and after each cell is in the records).
"""
from __future__ import annotations

import os

import pytest

from tokenbench.harness.run import RunCache, run_suite
from tokenbench.harness.suite import load_suite

REPEATS = int(os.environ.get("TOKENBENCH_BENCH_REPEATS", "20"))
SUITE = f"""\
[suite]
name = "protocol"

[defaults]
batch_sizes = [8]
repeats = {REPEATS}
warmup = 2
time_clips = 0
device = "cpu"

[[models]]
name = "vit_t"
num_frames = 8
img_size = 112
checkpoint = "none"

[[datasets]]
name = "samples"

[[reducers]]
name = "none"

[[reducers]]
name = "tome"
params = {{ r = 7 }}

[[reducers]]
name = "random"
params = {{ keep = 0.6 }}

[[reducers]]
name = "rlt"
params = {{ threshold = 0.1 }}
"""


def test_aa_control_and_paired_speedups_agree_with_separate_medians(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "protocol.toml").write_text(SUITE)
    suite = load_suite(tmp_path / "protocol.toml")
    summary = benchmark.pedantic(run_suite, args=(suite, tmp_path / "results"),
                                 kwargs={"show_progress": False, "cache": RunCache(cache_dir=tmp_path / "cache")},
                                 rounds=1, iterations=1)
    assert summary.failed == 0, summary.failures
    from tokenbench.harness.results import load

    df = load(tmp_path / "results")
    m = {row["reducer"]: row for row in df.to_dict("records")}
    base = m["none"]
    out = {"aa_speedup": base["speedup"], "aa_ci": (base["speedup_ci_lo"], base["speedup_ci_hi"]),
           "load_avg": (base["load_avg_start"], base["load_avg_end"])}
    for name in ("tome", "random", "rlt"):
        r = m[name]
        out[name] = {"paired": r["speedup"], "ci": (r["speedup_ci_lo"], r["speedup_ci_hi"]),
                     "medians_ratio": base["time_ms_median"] / r["time_ms_median"],
                     "path": (r["attn_path"], r["baseline_attn_path"]),
                     "load_avg": (r["load_avg_start"], r["load_avg_end"])}
    benchmark.extra_info.update(out)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in out.items()))
    assert abs(base["speedup"] - 1) <= 0.02, f"A/A speedup {base['speedup']:.3f} is off 1 by more than 2 %"
    for name in ("tome", "random", "rlt"):
        paired, ratio = out[name]["paired"], out[name]["medians_ratio"]
        assert paired == pytest.approx(ratio, rel=0.05), f"{name}: paired {paired:.3f} vs medians {ratio:.3f}"
