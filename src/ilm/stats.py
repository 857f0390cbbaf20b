"""Uncertainty of the reported numbers: binomial intervals, the paired exact test and the bootstrap.

numpy only (no torch, no scipy). Every level, resample count and seed comes from the
`statistics:` config section (`StatisticsConfig`); nothing here has a default of its own.

* `wilson_interval`: the Wilson score interval of a success rate (GCG success, docs/method.md §4.4);
* `mcnemar_exact`: two-sided exact McNemar test of two models attacked on the same samples;
* `bootstrap_interval`: percentile bootstrap over units (samples, windows) of a mean or ratio of sums,
  optionally resampling whole clusters of units (the windows of one story);
* `bootstrap_totals` / `percentile_bounds`: its two halves, for statistics that are not a ratio of sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
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


def _cluster_totals(columns: np.ndarray, clusters: npt.ArrayLike) -> np.ndarray:
    """The rows of `columns` (n, k) summed within each cluster label, in sorted label order: (m, k)."""
    labels = np.asarray(clusters).reshape(-1)
    if labels.size != columns.shape[0]:
        raise ValueError(f"clusters ({labels.size} labels) must give one label per unit ({columns.shape[0]} units)")
    _, inverse = np.unique(labels, return_inverse=True)
    m = int(inverse.max()) + 1 if inverse.size else 0
    # bincount adds each row to 0.0, so singleton clusters keep their rows bit for bit.
    return np.stack([np.bincount(inverse, weights=col, minlength=m) for col in columns.T], axis=1)


def bootstrap_totals(
    columns: npt.ArrayLike,
    *,
    clusters: npt.ArrayLike | None,
    resamples: int,
    seed: int,
) -> np.ndarray:
    """Column totals of `resamples` bootstrap resamples of the rows (units) of `columns` (n, k): (R, k).

    Without clusters each resample draws n units with replacement. With `clusters` (one label per
    unit) it draws as many clusters as there are distinct labels, with replacement, and takes every
    unit of each drawn cluster (units of one cluster are dependent, so they move together).
    """
    table = np.asarray(columns, dtype=np.float64)
    table = table.reshape(-1, 1) if table.ndim == 1 else table  # (n, k)
    if table.ndim != 2:
        raise ValueError(f"columns must be 1-D or 2-D (units, columns), not of shape {table.shape}")
    if not np.all(np.isfinite(table)):
        raise ValueError("bootstrap input holds nan or inf; drop or fix those units before resampling")
    if resamples < 1:
        raise ValueError(f"statistics.bootstrap_resamples must be at least 1, not {resamples}")
    units = table if clusters is None else _cluster_totals(table, clusters)  # (m, k)
    m = units.shape[0]
    if m == 0:
        return np.empty((0, table.shape[1]))
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOTSTRAP_CHUNK_ENTRIES // m)
    totals = np.empty((resamples, units.shape[1]))  # (R, k)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        idx = rng.integers(0, m, size=(stop - start, m))  # (r, m)
        for j in range(units.shape[1]):
            # One contiguous column at a time: the same pairwise sums as summing a 1-D array.
            totals[start:stop, j] = np.ascontiguousarray(units[:, j])[idx].sum(axis=1)
    return totals


def _order_statistic(p: Fraction, n: int) -> int:
    """0-based index of the inverted-CDF p-quantile of n sorted values: the ceil(n p)-th smallest."""
    return max(1, math.ceil(n * p)) - 1


def percentile_bounds(draws: npt.ArrayLike, confidence: float) -> tuple[float, float]:
    """The (1 -/+ confidence) / 2 inverted-CDF quantiles of the finite bootstrap `draws`; (nan, nan) if none.

    The order statistics are found in exact rational arithmetic: in floating point (1 - 0.95) / 2
    is 0.025000000000000022, which would pick the 26th of 1000 values instead of the 25th.
    """
    normal_quantile(confidence)  # checks the level
    values = np.asarray(draws, dtype=np.float64).reshape(-1)
    values = np.sort(values[np.isfinite(values)])  # (R,)
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - Fraction(str(float(confidence)))) / 2  # 0.95 -> 1/40 exactly
    low = values[_order_statistic(alpha, values.size)]
    high = values[_order_statistic(1 - alpha, values.size)]
    return float(low), float(high)


def bootstrap_interval(
    sums: npt.ArrayLike,
    counts: npt.ArrayLike | None = None,
    *,
    confidence: float,
    resamples: int,
    seed: int,
    clusters: npt.ArrayLike | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(sums) / sum(counts) over units resampled with replacement.

    `sums[i]` and `counts[i]` belong to unit i (a sample, a window); `counts=None` means one per
    unit, i.e. the plain mean of `sums`. Each of `resamples` resamples draws n units with
    replacement, or, with `clusters` (one label per unit, e.g. the story of a window), draws whole
    clusters (`bootstrap_totals`). The bounds are the empirical (1 -/+ confidence) / 2 quantiles
    (inverted CDF, so each bound is one of the resampled statistics; `percentile_bounds`). A
    resample whose counts sum to zero has no statistic and is left out. (nan, nan) without units.
    The same seed gives the same interval; nan or inf among the inputs raise ValueError.

    Paired bootstrap: pass the per-unit paired differences (variant minus base on the same window)
    as `sums`; each resample then keeps both members of every pair, and `clusters` keeps the
    windows of one story together.
    """
    values = np.asarray(sums, dtype=np.float64).reshape(-1)  # (n,)
    weights = np.ones_like(values) if counts is None else np.asarray(counts, dtype=np.float64).reshape(-1)
    if weights.shape != values.shape:
        raise ValueError(f"sums ({values.size} units) and counts ({weights.size} units) must have the same length")
    if np.any(weights < 0):
        raise ValueError("counts must be non-negative")
    normal_quantile(confidence)  # checks the level before any work
    totals = bootstrap_totals(np.stack([values, weights], axis=1), clusters=clusters, resamples=resamples, seed=seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = totals[:, 0] / totals[:, 1]  # (R,)
    return percentile_bounds(ratios, confidence)
