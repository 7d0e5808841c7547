"""95 % intervals: Wilson for top-1, paired bootstrap for Δtop-1, bootstrap of a median."""
from __future__ import annotations

import numpy as np
import pytest

from tokenbench.harness.intervals import median_interval, paired_delta, wilson


def test_wilson_matches_the_closed_form_and_stays_inside_0_100():
    # 81 of 100: the textbook Wilson interval is (72.2, 87.5) %
    lo, hi = wilson(81, 100)
    assert lo == pytest.approx(72.23, abs=0.05) and hi == pytest.approx(87.49, abs=0.05)
    lo, hi = wilson(240, 240)  # at the ceiling the interval still has a width
    assert hi == pytest.approx(100.0) and 98.0 < lo < 100.0
    with pytest.raises(ValueError):
        wilson(3, 0)


def test_wilson_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    p, n = 0.9, 300
    hits = 0
    for _ in range(2000):
        lo, hi = wilson(int(rng.binomial(n, p)), n)
        hits += lo <= 100 * p <= hi
    assert 0.93 <= hits / 2000 <= 0.97


def test_paired_delta_is_the_difference_on_shared_videos_and_narrower_than_unpaired():
    rng = np.random.default_rng(0)
    base = {i: bool(rng.random() < 0.85) for i in range(1000)}
    # the arm flips 1 % of the videos: strongly paired with the baseline
    arm = {i: (not c) if rng.random() < 0.01 else c for i, c in base.items()}
    arm[5000] = True  # a video only one arm scored is ignored
    d, lo, hi = paired_delta(base, arm)
    expect = 100 * (np.mean([arm[i] for i in base]) - np.mean(list(base.values())))
    assert d == pytest.approx(expect)
    assert lo <= d <= hi and hi - lo < 2.0
    # two independent Wilson intervals at n=1000 are ~±2.2 pt each
    w = wilson(sum(base.values()), 1000)
    assert hi - lo < (w[1] - w[0]) / 2
    assert paired_delta(base, base) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="share no video"):
        paired_delta({1: True}, {2: True})


def test_median_interval_brackets_the_median_and_is_seeded():
    xs = [1.00, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97, 1.00]
    lo, hi = median_interval(xs)
    assert lo <= float(np.median(xs)) <= hi and (lo, hi) == median_interval(xs)
    assert median_interval([1.5]) == (1.5, 1.5)
