"""Uncertainty of the reported numbers: binomial intervals, the paired exact test and the bootstrap.

numpy only (no torch, no scipy). Every level, resample count and seed comes from the
`statistics:` config section (`StatisticsConfig`); nothing here has a default of its own.

* `wilson_interval`: the Wilson score interval of a success rate (GCG success, docs/method.md §4.4);
* `mcnemar_exact`: two-sided exact McNemar test of two models attacked on the same samples;
* `bootstrap_interval`: percentile bootstrap over units (samples, windows) of a mean or ratio of sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from ilm.config import ConfigSection

# Bootstrap index matrices are drawn in chunks of at most this many entries (int64: 64 MiB).
_BOOTSTRAP_CHUNK_ENTRIES = 1 << 23


@dataclass(frozen=True)
class StatisticsConfig(ConfigSection):
    """The `statistics:` section (defaults and ranges: the schema)."""

    SECTION = "statistics"
    confidence: float  # two-sided level of every interval, in (0, 1)
    bootstrap_resamples: int  # resamples of each bootstrap interval
    seed: int  # seed of the bootstrap resampling


def level_label(confidence: float) -> str:
    """The confidence as a percentage for column names and captions: 0.95 -> "95%", 0.999 -> "99.9%"."""
    return f"{100 * confidence:g}%"


def normal_quantile(confidence: float) -> float:
    """z with P(|Z| <= z) = confidence for a standard normal Z (1.95996... at 0.95)."""
    if not 0 < confidence < 1:
        raise ValueError(f"statistics.confidence must lie strictly between 0 and 1, not {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """The Wilson score interval of the binomial proportion successes / n; (nan, nan) without samples.

    Its bounds are the p solving (p_hat - p)^2 = z^2 p (1 - p) / n, with z the two-sided normal
    quantile of `confidence` (Wilson 1927).
    """
    if not 0 <= successes <= n:
        raise ValueError(f"successes ({successes}) must lie between 0 and n ({n})")
    z = normal_quantile(confidence)
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 and n successes the bound is exactly 0 (1); rounding would leave it off by ~1e-17.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of the discordant pair counts b and c.

    Under the null each of the n = b + c discordant pairs falls either way with probability 1/2,
    so p = min(1, 2 P(X <= min(b, c))) for X ~ Binomial(n, 1/2); 1.0 without discordant pairs.
    The tail is summed in exact integers (no overflow, no rounding before the one division).
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, not b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))  # 2^n P(X <= min(b, c))
    return min(1.0, 2 * tail / 2**n)


def bootstrap_interval(
    sums: npt.ArrayLike,
    counts: npt.ArrayLike | None = None,
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(sums) / sum(counts) over units resampled with replacement.

    `sums[i]` and `counts[i]` belong to unit i (a sample, a window); `counts=None` means one per
    unit, i.e. the plain mean of `sums`. Each of `resamples` resamples draws n units with
    replacement; the bounds are the empirical (1 -/+ confidence) / 2 quantiles (inverted CDF, so
    each bound is one of the resampled statistics). A resample whose counts sum to zero has no
    statistic and is left out. (nan, nan) without units. The same seed gives the same interval.
    """
    values = np.asarray(sums, dtype=np.float64).reshape(-1)  # (n,)
    weights = np.ones_like(values) if counts is None else np.asarray(counts, dtype=np.float64).reshape(-1)
    if weights.shape != values.shape:
        raise ValueError(f"sums ({values.size} units) and counts ({weights.size} units) must have the same length")
    if np.any(weights < 0):
        raise ValueError("counts must be non-negative")
    if resamples < 1:
        raise ValueError(f"statistics.bootstrap_resamples must be at least 1, not {resamples}")
    normal_quantile(confidence)  # checks the level
    n = values.size
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOTSTRAP_CHUNK_ENTRIES // n)
    stats = np.empty(resamples)  # (R,)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))  # (r, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats[start:stop] = values[idx].sum(axis=1) / weights[idx].sum(axis=1)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha], method="inverted_cdf")
    return float(low), float(high)
