"""95 % intervals for the numbers a report prints (docs/architecture.md §5).

* **top-1**: a video is one trial (its views are averaged before top-1 is read), so the interval is
  Wilson's score interval over videos — it stays inside [0, 100] and is sane at the ceiling, where the
  normal approximation collapses to a zero width.
* **Δtop-1**: the two arms scored the same videos, so the difference is bootstrapped *paired*: videos are
  resampled with replacement and both arms' correctness travel together. This is much narrower than
  two independent intervals when the arms agree on most videos, as reducers and their baseline do.
* **speedup**: the median of the per-repeat paired ratios, bootstrapped over repeats.

Bootstraps are seeded, so a report rebuilt from the same records prints the same interval.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
BOOTSTRAP_SAMPLES = 2000


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion, in percent."""
    if n <= 0:
        raise ValueError("no trials")
    if not 0 <= correct <= n:
        raise ValueError(f"{correct} correct of {n}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def paired_delta(baseline: Mapping[Any, bool], arm: Mapping[Any, bool], *, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = 0) -> tuple[float, float, float]:
    """(Δ, lo, hi) in points: arm's top-1 minus the baseline's on the videos both scored, with a
    percentile-bootstrap 95 % interval over those videos (resampled jointly for both arms)."""
    videos = sorted(set(baseline) & set(arm), key=str)
    if not videos:
        raise ValueError("the two arms share no video")
    diff = np.array([float(arm[v]) - float(baseline[v]) for v in videos])
    delta = 100.0 * float(diff.mean())
    if not diff.any():  # the arms agree on every video: no resample can differ
        return delta, delta, delta
    rng = np.random.default_rng(seed)
    # resamples in chunks: samples × videos indices at once would be 320 MB for Kinetics-400's 20k videos
    chunk = max(1, min(samples, 4_000_000 // len(videos)))
    boots = np.concatenate([100.0 * diff[rng.integers(0, len(videos), size=(min(chunk, samples - i), len(videos)))]
                            .mean(axis=1) for i in range(0, samples, chunk)])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return delta, float(lo), float(hi)


def median_interval(values: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95 % interval of the median of ``values`` (e.g. per-repeat speedup ratios)."""
    xs = np.asarray(values, dtype=float)
    if xs.size == 0:
        raise ValueError("no values")
    if xs.size == 1:
        return float(xs[0]), float(xs[0])
    rng = np.random.default_rng(seed)
    meds = np.median(xs[rng.integers(0, xs.size, size=(samples, xs.size))], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(lo), float(hi)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(q1, median, q3), linear interpolation (numpy's default)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return q(0.25), q(0.5), q(0.75)
