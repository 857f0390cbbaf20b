"""ilm.stats against hand-computed cases: Wilson intervals, the exact McNemar test and the bootstrap."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

import ilm.stats
from ilm.stats import (
    StatisticsConfig,
    bootstrap_interval,
    bootstrap_totals,
    level_label,
    mcnemar_exact,
    percentile_bounds,
    wilson_interval,
)

Z95 = 1.959963984540054  # two-sided 95 % normal quantile, from tables


def boot(sums, counts=None, confidence=0.95, resamples=1000, seed=0):
    return bootstrap_interval(sums, counts, confidence=confidence, resamples=resamples, seed=seed)


# --- Wilson --------------------------------------------------------------------------------------


def test_wilson_matches_published_and_closed_form_cases():
    """8/10 at 95 % is (0.4902, 0.9433) (published tables); 0/n and n/n reduce to z²/(n+z²) and n/(n+z²)."""
    assert wilson_interval(8, 10, 0.95) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(3, 4, 0.95) == pytest.approx((0.3006, 0.9544), abs=1e-4)
    z2 = Z95**2  # 3.841459
    assert wilson_interval(0, 10, 0.95) == pytest.approx((0.0, 3.841459 / 13.841459), abs=1e-6)  # (0, 0.27753)
    assert wilson_interval(10, 10, 0.95) == pytest.approx((10 / (10 + z2), 1.0), abs=1e-9)  # (0.72247, 1)
    # 90 %: z = 1.644854, so 0/10 gives (0, 2.705543 / 12.705543) = (0, 0.21294).
    assert wilson_interval(0, 10, 0.90) == pytest.approx((0.0, 0.21294), abs=1e-5)


@pytest.mark.parametrize("successes, n", [(0, 5), (3, 4), (7, 7), (12, 40)])
def test_wilson_bounds_solve_the_score_equation(successes, n):
    """Each Wilson bound p solves (p_hat - p)^2 = z^2 p (1 - p) / n, the definition of the score interval."""
    p_hat = successes / n
    low, high = wilson_interval(successes, n, 0.95)
    assert 0 <= low <= p_hat <= high <= 1
    for p in (low, high):
        assert (p_hat - p) ** 2 == pytest.approx(Z95**2 * p * (1 - p) / n, rel=1e-9, abs=1e-12)


def test_wilson_without_samples_and_bad_input():
    """No samples gives (nan, nan); a level outside (0, 1) or successes beyond n raise ValueError."""
    assert all(math.isnan(v) for v in wilson_interval(0, 0, 0.95))
    with pytest.raises(ValueError, match="statistics.confidence"):
        wilson_interval(1, 2, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2, 0.95)


def test_level_label_names_the_percentage():
    """Column names carry the level: 0.95 -> 95%, 0.9 -> 90%, 0.999 -> 99.9%."""
    assert [level_label(c) for c in (0.95, 0.9, 0.999)] == ["95%", "90%", "99.9%"]


# --- McNemar --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "b, c, p",
    [
        (0, 5, 2 * 0.5**5),  # 0.0625
        (5, 0, 0.0625),
        (1, 9, 2 * (1 + 10) / 1024),  # 0.021484375
        (3, 7, 2 * (1 + 10 + 45 + 120) / 1024),  # C(10, 0..3): 0.34375
        (4, 4, 1.0),  # 2 * 163/256 > 1: capped
        (0, 0, 1.0),
        (0, 1, 1.0),  # 2 * 1/2
    ],
)
def test_mcnemar_exact_hand_computed(b, c, p):
    """The two-sided exact p-value equals min(1, 2 P(X <= min(b, c))), X ~ Bin(b + c, 1/2), summed by hand."""
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_large_counts():
    """Thousands of discordant pairs: no overflow, symmetric in b and c, close to the continuity-corrected normal."""
    p = mcnemar_exact(1500, 1600)
    z = (abs(1600 - 1500) - 1) / math.sqrt(3100)
    assert p == pytest.approx(2 * (1 - NormalDist().cdf(z)), rel=0.02)  # 0.0754
    assert mcnemar_exact(1600, 1500) == p
    assert mcnemar_exact(0, 3000) == 0.0  # 2^-2999 underflows to zero, without error
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact(-1, 3)


# --- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_of_a_constant_is_that_constant():
    """Every resample of a constant array has the same mean: a zero-width interval at the constant."""
    assert boot(np.full(20, 2.5)) == (2.5, 2.5)


def test_bootstrap_contains_the_mean_and_is_deterministic():
    """The interval contains the sample mean, the same seed gives the same interval, another seed another."""
    x = np.random.default_rng(7).exponential(size=200)
    low, high = boot(x, seed=3)
    assert low < x.mean() < high
    assert boot(x, seed=3) == (low, high)
    assert boot(x, seed=4) != (low, high)
    assert boot(x, np.ones_like(x), seed=3) == (low, high)  # counts of one: the plain mean


def test_bootstrap_width_matches_the_normal_theory():
    """For 2000 normal draws (sd 3) the 95 % interval is about 2 * 1.96 * sd / sqrt(n) = 0.263 wide (10 %)."""
    x = np.random.default_rng(0).normal(loc=1.0, scale=3.0, size=2000)
    low, high = boot(x, resamples=2000)
    assert high - low == pytest.approx(2 * Z95 * 3.0 / math.sqrt(2000), rel=0.10)
    assert (low + high) / 2 == pytest.approx(x.mean(), abs=0.03)


def test_bootstrap_ratio_of_sums_with_two_units():
    """Units (sum 1, count 1) and (sum 6, count 2): a resample's ratio is 2/2 = 1, 7/3 or 12/4 = 3
    with probabilities 1/4, 1/2, 1/4; the 95 % bounds are 1 and 3, the central 40 % both 7/3."""
    sums, counts = [1.0, 6.0], [1.0, 2.0]
    assert boot(sums, counts) == (1.0, 3.0)
    assert boot(sums, counts, confidence=0.4) == pytest.approx((7 / 3, 7 / 3), rel=1e-12)


def test_bootstrap_edge_cases_and_chunking(monkeypatch):
    """No units gives (nan, nan); mismatched lengths raise; drawing the indices in chunks changes nothing."""
    assert all(math.isnan(v) for v in boot([]))
    with pytest.raises(ValueError, match="same length"):
        boot([1.0, 2.0], [1.0])
    x = np.random.default_rng(1).normal(size=300)
    whole = boot(x, seed=5)
    monkeypatch.setattr(ilm.stats, "_BOOTSTRAP_CHUNK_ENTRIES", 1000)  # 3 resamples per chunk
    assert boot(x, seed=5) == whole


def test_bootstrap_refuses_non_finite_input():
    """A nan or inf among the sums or counts raises ValueError instead of being silently dropped."""
    nan, inf = float("nan"), float("inf")
    for sums, counts in (([1.0, nan, 2.0], None), ([1.0, inf], None), ([1.0, 2.0], [1.0, nan])):
        with pytest.raises(ValueError, match="nan or inf"):
            boot(sums, counts)


def test_bootstrap_bounds_are_the_exact_order_statistics():
    """1000 resamples at 95 %: the bounds are the 25th and 975th smallest resampled means (re-drawn independently)."""
    x = np.random.default_rng(11).normal(size=50)
    rng = np.random.default_rng(2)  # the same seed and the same single draw as bootstrap_interval
    means = np.sort(x[rng.integers(0, 50, size=(1000, 50))].sum(axis=1) / 50)  # (1000,)
    assert np.unique(means).size == 1000  # distinct, so the 25th and 26th differ
    assert boot(x, seed=2) == (means[24], means[974])
    # The floating-point level (1 - 0.95) / 2 = 0.025000000000000022 would have taken the 26th.
    assert np.quantile(means, (1 - 0.95) / 2, method="inverted_cdf") == means[25]


@pytest.mark.parametrize("confidence, n, low, high", [(0.95, 1000, 25, 975), (0.9, 1000, 50, 950), (0.95, 999, 25, 975),
                                                      (0.5, 4, 1, 3), (0.99, 10, 1, 10)])
def test_percentile_bounds_take_the_ceil_order_statistic(confidence, n, low, high):
    """Bounds are the ceil(n a)-th and ceil(n (1 - a))-th smallest values, a = (1 - confidence) / 2 (1-based)."""
    draws = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))  # value k is the k-th smallest
    assert percentile_bounds(draws, confidence) == (low, high)


def test_cluster_bootstrap_of_singletons_is_the_plain_bootstrap():
    """Every unit its own cluster (labels in unit order): the cluster bootstrap is bit-identical to the plain one."""
    x = np.random.default_rng(3).exponential(size=120)
    counts = np.random.default_rng(4).integers(1, 5, size=120).astype(float)
    assert bootstrap_interval(x, counts, confidence=0.9, resamples=500, seed=8, clusters=np.arange(120)) == \
        boot(x, counts, confidence=0.9, resamples=500, seed=8)


def test_cluster_bootstrap_with_shuffled_singleton_labels_has_the_same_distribution():
    """Singleton labels in another order draw other resamples, but of the same distribution: bounds agree to 5 %."""
    x = np.random.default_rng(0).normal(loc=1.0, scale=3.0, size=2000)
    shuffled = np.random.default_rng(1).permutation(2000)
    low, high = bootstrap_interval(x, confidence=0.95, resamples=2000, seed=0, clusters=shuffled)
    ref_low, ref_high = boot(x, resamples=2000, seed=0)
    assert (low, high) != (ref_low, ref_high)
    assert high - low == pytest.approx(ref_high - ref_low, rel=0.05)
    assert (low + high) / 2 == pytest.approx((ref_low + ref_high) / 2, abs=0.02)


def test_cluster_bootstrap_moves_whole_clusters():
    """Clusters a = [0] and b = [1, 1, 1]: a resample of 2 clusters is aa, ab or bb, with mean 0, 3/4 or 1
    (probabilities 1/4, 1/2, 1/4); the 95 % bounds are 0 and 1, the central 20 % both 3/4."""
    x, labels = [0.0, 1.0, 1.0, 1.0], ["a", "b", "b", "b"]
    totals = bootstrap_totals(np.stack([x, np.ones(4)], axis=1), clusters=labels, resamples=400, seed=0)  # (400, 2)
    assert set(map(tuple, totals)) == {(0.0, 2.0), (3.0, 4.0), (6.0, 6.0)}  # sizes 1+1, 1+3, 3+3
    assert bootstrap_interval(x, confidence=0.95, resamples=400, seed=0, clusters=labels) == (0.0, 1.0)
    assert bootstrap_interval(x, confidence=0.2, resamples=400, seed=0, clusters=labels) == (0.75, 0.75)


def test_cluster_bootstrap_is_wider_for_correlated_windows():
    """Overlapping windows (10 copies of each story's value) look like 500 units; clusters widen it ~sqrt(10)."""
    story = np.random.default_rng(5).normal(size=50)
    x, labels = np.repeat(story, 10), np.repeat(np.arange(50), 10)  # (500,)
    plain = boot(x, resamples=2000)
    clustered = bootstrap_interval(x, confidence=0.95, resamples=2000, seed=0, clusters=labels)
    ratio = (clustered[1] - clustered[0]) / (plain[1] - plain[0])
    assert ratio == pytest.approx(math.sqrt(10), rel=0.15)
    with pytest.raises(ValueError, match="one label per unit"):
        bootstrap_interval(x, confidence=0.95, resamples=10, seed=0, clusters=labels[:-1])


def test_statistics_config_from_the_schema():
    """StatisticsConfig takes the schema's defaults and refuses a level of 1 naming the key."""
    assert StatisticsConfig.from_dict({}) == StatisticsConfig(confidence=0.95, bootstrap_resamples=1000, seed=0)
    with pytest.raises(ValueError, match="statistics.confidence"):
        StatisticsConfig.from_dict({"confidence": 1.0})
