"""ilm.robustness against independent computations (scipy, statsmodels, plain loops) and planted effects."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from ilm.robustness import (
    CONTRADICTED,
    GRADIENT_MASKING,
    MOVING_BAR,
    NEITHER_CHECK,
    SUPPORTED,
    UNDETERMINED,
    AttackRecords,
    adjusted_difference,
    analyse_pair,
    combine_seeds,
    effect_verdict,
    holm,
    loss_drop_per_step,
    mcnemar_by_budget,
    paired_rmst_difference,
    primary_budget,
    restricted_mean,
    robustness_verdict,
    seed_consistent,
    spearman,
    steps_to_drop,
    success_by_budget,
    time_to_success,
)

BOOT = {"confidence": 0.95, "resamples": 1000, "seed": 0}
STORIES = np.repeat(np.arange(12), 4)  # (48,) four overlapping windows per story
STEPS, BUDGETS = 100, list(range(10, 101, 10))


def records(rng, rate, orig=6.0, init=10.0) -> AttackRecords:
    """Loss falling about `rate` nats a step from `init` (rates jittered +-20 % per window, step noise 0.1)."""
    n = STORIES.size
    init_loss = init + rng.uniform(-0.5, 0.5, n)
    orig_loss = orig + rng.uniform(-0.5, 0.5, n)
    rates = rate * rng.uniform(0.8, 1.2, n)
    losses = init_loss[:, None] - rates[:, None] * np.arange(1, STEPS + 1) + rng.normal(0, 0.1, (n, STEPS))
    return AttackRecords(np.minimum.accumulate(losses, axis=1), orig_loss, init_loss)  # best so far


def pair(variant, base, criterion="success", drop=None):
    return analyse_pair(variant, base, STORIES, criterion=criterion, drop=drop, budgets=BUDGETS, alpha=0.05, primary_rate=0.5, **BOOT)


def reference_cluster_bootstrap(values, clusters, resamples, seed, confidence):
    """Plain-loop story bootstrap of the mean: the same rng call as ilm.stats, then a list of units per resample."""
    labels = np.unique(clusters)
    idx = np.random.default_rng(seed).integers(0, labels.size, size=(resamples, labels.size))
    means = sorted(np.mean([v for k in row for v, c in zip(values, clusters) if c == labels[k]]) for row in idx)
    a = (1 - confidence) / 2
    return means[math.ceil(round(resamples * a, 9)) - 1], means[math.ceil(round(resamples * (1 - a), 9)) - 1]


# --- per-window times -----------------------------------------------------------------------------


def test_time_to_success_is_one_based_and_censored_at_the_budget():
    """3 steps: success at the first step whose loss is <= orig (equality counts), else time 3 with no event."""
    trajectory = [[5.0, 4.0, 3.0], [5.0, 5.0, 5.0], [2.0, 2.0, 2.0], [5.0, 3.0, 3.0]]
    times, events = time_to_success(trajectory, [3.5, 4.0, 2.0, 3.0])
    assert times.tolist() == [3, 3, 1, 2]
    assert events.tolist() == [True, False, True, True]


def test_steps_to_drop_ignores_the_original_loss():
    """Broken once the loss lies `drop` nats below the initial loss, whatever the bar; censored at 3 otherwise."""
    trajectory = [[5.0, 4.0, 3.0], [5.0, 5.0, 5.0], [9.0, 8.5, 8.0]]
    times, events = steps_to_drop(trajectory, [6.0, 6.0, 9.5], drop=1.5)
    assert times.tolist() == [2, 3, 3]  # 6 - 4 = 2 at step 2; never; 9.5 - 8 = 1.5 at step 3 (equality counts)
    assert events.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="drop must be a positive"):
        steps_to_drop(trajectory, [6.0, 6.0, 9.5], drop=0.0)


def test_loss_drop_per_step_by_hand():
    """(init - trajectory[:, budget-1]) / budget: (6 - 4) / 2 = 1 and (9.5 - 8.5) / 2 = 0.5."""
    trajectory = [[5.0, 4.0, 3.0], [9.0, 8.5, 8.0]]
    assert loss_drop_per_step(trajectory, [6.0, 9.5], budget=2).tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="budget must be an integer in 1..3"):
        loss_drop_per_step(trajectory, [6.0, 9.5], budget=4)


def test_records_refuse_an_increasing_trajectory_and_mismatched_windows():
    """A raw (not best-so-far) loss curve, nan, or one bar too few raise ValueError naming the fix."""
    with pytest.raises(ValueError, match="minimum.accumulate"):
        AttackRecords(np.array([[3.0, 4.0]]), np.array([1.0]), np.array([5.0]))
    with pytest.raises(ValueError, match="nan or inf"):
        time_to_success([[3.0, float("nan")]], [1.0])
    with pytest.raises(ValueError, match="orig_loss must hold one value per window"):
        AttackRecords(np.zeros((2, 3)), np.zeros(1), np.zeros(2))


def test_restricted_mean_is_the_area_above_the_success_curve():
    """mean(min(T, b)) equals sum over s < b of the fraction not yet broken by step s (a plain loop), b <= steps."""
    trajectory = np.minimum.accumulate(np.random.default_rng(0).normal(5.0, 1.0, size=(30, 20)), axis=1)
    times, events = time_to_success(trajectory, np.full(30, 4.0))
    assert 0 < events.sum() < 30  # some windows censored
    for budget in (1, 7, 20):
        area = sum(sum(1 for t, e in zip(times, events) if not (e and t <= s)) / 30 for s in range(budget))
        assert restricted_mean(times, budget) == pytest.approx(area, abs=1e-12)


def test_success_by_budget_needs_the_event():
    """A censored window (time = budget, no event) is never a success, even at the full budget."""
    success = success_by_budget([1, 3, 3], [True, True, False], [1, 2, 3])
    assert success.tolist() == [[True, True, True], [False, False, True], [False, False, False]]


# --- paired statistics ----------------------------------------------------------------------------


def test_paired_rmst_difference_against_a_plain_story_bootstrap():
    """Estimate = mean paired min(T, b) difference; bounds = the 25th/975th story-resampled means of a plain loop."""
    rng = np.random.default_rng(1)
    tv, tb = rng.integers(1, 60, size=48), rng.integers(1, 60, size=48)
    result = paired_rmst_difference(tv, tb, 50, STORIES, **BOOT)
    diffs = [min(v, 50) - min(b, 50) for v, b in zip(tv, tb)]
    assert result.estimate == pytest.approx(np.mean(diffs), abs=1e-12)
    low, high = reference_cluster_bootstrap(diffs, STORIES, 1000, 0, 0.95)
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-9)


def test_mcnemar_by_budget_against_scipy_binomtest():
    """b and c count discordant windows per budget; p equals scipy's exact two-sided binomial test of b in b + c."""
    rng = np.random.default_rng(2)
    sv, sb = rng.random((40, 3)) < [0.2, 0.5, 0.8], rng.random((40, 3)) < [0.4, 0.6, 0.7]
    b, c, p = mcnemar_by_budget(sv, sb)
    for j in range(3):
        assert b[j] == sum(1 for i in range(40) if sb[i, j] and not sv[i, j])
        assert c[j] == sum(1 for i in range(40) if sv[i, j] and not sb[i, j])
        assert p[j] == pytest.approx(scipy.stats.binomtest(int(b[j]), int(b[j] + c[j]), 0.5).pvalue, rel=1e-10)


def test_holm_against_statsmodels():
    """Holm adjustment of a 2-D table, shape kept: by hand, and equal to statsmodels' multipletests(method="holm")."""
    p = np.array([[0.01, 0.04, 0.03], [0.005, 0.5, 0.04]])
    # Sorted 0.005, 0.01, 0.03, 0.04, 0.04, 0.5 times 6..1: 0.03, 0.05, 0.12, 0.12, 0.08 -> 0.12 (running max), 0.5.
    np.testing.assert_allclose(holm(p), [[0.05, 0.12, 0.12], [0.03, 0.5, 0.12]], atol=1e-15)
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    expected = multitest.multipletests(p.ravel(), method="holm")[1].reshape(2, 3)
    np.testing.assert_allclose(holm(p), expected, rtol=0, atol=1e-15)


def test_holm_is_monotone_capped_and_never_below_the_raw_p():
    """Adjusted p's keep the raw order, lie in [raw p, 1], and a single test is left as it is."""
    p = np.random.default_rng(3).random(50) ** 3
    adjusted = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= p) and np.all(adjusted <= 1.0) and adjusted.max() == 1.0
    assert holm([0.03]).tolist() == [0.03]
    with pytest.raises(ValueError, match="nan is not a p-value"):
        holm([0.1, float("nan")])


def test_primary_budget_is_the_baselines_median_time():
    """The first budget where the Baseline's success rate reaches 1/2; the last budget if it never does."""
    assert primary_budget([0.1, 0.49, 0.5, 0.9], [5, 10, 20, 40], 0.5) == 20
    assert primary_budget([0.0, 0.2, 0.3], [5, 10, 20], 0.5) == 20
    assert primary_budget([0.1, 0.49, 0.5, 0.9], [5, 10, 20, 40], 0.25) == 10  # claims.primary_rate


def test_primary_budget_does_not_look_at_the_variant():
    """Two very different variants against one Baseline get the same primary budget (the Baseline's, 20)."""
    rng = np.random.default_rng(4)
    base = records(rng, 0.2)
    slow, fast = pair(records(rng, 0.05), base), pair(records(rng, 1.0), base)
    assert slow.primary_budget == fast.primary_budget == 20
    assert slow.success_rate_base[1] >= 0.5 > slow.success_rate_base[0]


def test_adjusted_difference_is_the_ols_intercept():
    """The point estimate equals scipy's linregress and numpy's lstsq intercept on hand-made data."""
    rng = np.random.default_rng(5)
    x = rng.normal(-2.0, 1.0, 48)
    d = 3.0 - 4.0 * x + rng.normal(0, 2.0, 48)  # intercept 3 at equal original loss
    result = adjusted_difference(d, x, STORIES, **BOOT)
    assert result.estimate == pytest.approx(scipy.stats.linregress(x, d).intercept, abs=1e-10)
    lstsq = np.linalg.lstsq(np.stack([np.ones(48), x], axis=1), d, rcond=None)[0]
    assert result.estimate == pytest.approx(lstsq[0], abs=1e-10)
    assert result.low < 3.0 < result.high and result.low < result.estimate < result.high


def test_adjusted_difference_interval_against_a_plain_refit_loop():
    """Bounds equal the order statistics of lstsq intercepts refitted on each story resample (same rng call)."""
    rng = np.random.default_rng(6)
    x, d = rng.normal(size=48), rng.normal(size=48)
    result = adjusted_difference(d, x, STORIES, confidence=0.9, resamples=200, seed=7)
    idx = np.random.default_rng(7).integers(0, 12, size=(200, 12))
    intercepts = []
    for row in idx:
        units = np.concatenate([np.flatnonzero(STORIES == k) for k in row])
        design = np.stack([np.ones(units.size), x[units]], axis=1)
        intercepts.append(np.linalg.lstsq(design, d[units], rcond=None)[0][0])
    intercepts = np.sort(intercepts)
    assert (result.low, result.high) == pytest.approx((intercepts[9], intercepts[189]), abs=1e-9)  # ceil(10), ceil(190)
    with pytest.raises(ValueError, match="covariate_diff is constant"):
        adjusted_difference(d, np.full(48, -3.0), STORIES, **BOOT)


def test_spearman_against_scipy_with_ties():
    """Average-rank Spearman correlation equals scipy.stats.spearmanr, ties included; constant input gives nan."""
    rng = np.random.default_rng(8)
    x, y = rng.integers(0, 6, 40).astype(float), rng.normal(size=40)
    y[:10] = y[10:20]  # ties in y too
    for a, b in ((x, y), (y, x), (x, x), (y, -y)):
        assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


# --- verdict rules --------------------------------------------------------------------------------


def test_effect_verdict_needs_both_the_interval_and_the_p():
    """Supported/contradicted need an interval excluding 0 on that side AND adjusted p < alpha; else undetermined."""
    assert effect_verdict(0.5, 2.0, 0.01, 0.05) == SUPPORTED
    assert effect_verdict(-2.0, -0.5, 0.01, 0.05) == CONTRADICTED
    assert effect_verdict(0.5, 2.0, 0.05, 0.05) == UNDETERMINED  # p not below alpha
    assert effect_verdict(-0.1, 2.0, 0.001, 0.05) == UNDETERMINED  # interval holds 0
    assert effect_verdict(0.0, 2.0, 0.001, 0.05) == UNDETERMINED  # touching 0 is not excluding it
    assert effect_verdict(float("nan"), float("nan"), 0.001, 0.05) == UNDETERMINED


def test_seed_rules():
    """A verdict or sign counts only when every seed agrees."""
    assert combine_seeds([SUPPORTED, SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine_seeds([SUPPORTED, UNDETERMINED, SUPPORTED]) == UNDETERMINED
    assert combine_seeds([CONTRADICTED]) == CONTRADICTED
    assert seed_consistent([1.5, 0.2, 3.0]) and seed_consistent([-1.0, -2.0])
    assert not seed_consistent([1.5, -0.2, 3.0]) and not seed_consistent([0.0, 0.0])
    with pytest.raises(ValueError, match="verdict must be one of"):
        combine_seeds(["yes"])


def test_robustness_verdict_rule_table():
    """Gradient-only support is masking, support lost without the model's bar is a moving bar, else gradient's."""
    assert robustness_verdict(SUPPORTED, SUPPORTED, SUPPORTED) == SUPPORTED
    assert robustness_verdict(SUPPORTED, UNDETERMINED, SUPPORTED) == GRADIENT_MASKING
    assert robustness_verdict(SUPPORTED, SUPPORTED, SUPPORTED, CONTRADICTED) == GRADIENT_MASKING  # transfer wins
    assert robustness_verdict(SUPPORTED, SUPPORTED, SUPPORTED, UNDETERMINED) == SUPPORTED
    assert robustness_verdict(SUPPORTED, UNDETERMINED, CONTRADICTED) == NEITHER_CHECK
    assert robustness_verdict(SUPPORTED, SUPPORTED, UNDETERMINED) == MOVING_BAR
    assert robustness_verdict(CONTRADICTED, SUPPORTED, SUPPORTED) == CONTRADICTED
    assert robustness_verdict(UNDETERMINED, SUPPORTED, SUPPORTED) == UNDETERMINED


# --- the four scenarios ---------------------------------------------------------------------------


def scenario(seed, gradient_rates, uniform_rates, orig=(6.0, 6.0)):
    """Verdicts (gradient, uniform, fluency-free, combined) of variant vs Baseline; rates, bars as (base, variant)."""
    rng = np.random.default_rng(seed)
    g_base, g_var = records(rng, gradient_rates[0], orig[0]), records(rng, gradient_rates[1], orig[1])
    u_base, u_var = records(rng, uniform_rates[0], orig[0]), records(rng, uniform_rates[1], orig[1])
    verdicts = (pair(g_var, g_base).verdict, pair(u_var, u_base).verdict,
                pair(g_var, g_base, criterion="drop", drop=3.0).verdict)
    return (*verdicts, robustness_verdict(*verdicts))


def test_planted_effect_is_supported():
    """The variant falls 2.5 (gradient) or 2 (uniform) times slower on every window: supported everywhere."""
    assert scenario(0, (0.2, 0.08), (0.1, 0.05)) == (SUPPORTED, SUPPORTED, SUPPORTED, SUPPORTED)


def test_no_effect_is_undetermined():
    """Variant and Baseline drawn from the same process (only noise differs): undetermined at this scale."""
    assert scenario(1, (0.2, 0.2), (0.1, 0.1))[3] == UNDETERMINED


def test_effect_only_under_gradient_candidates_is_gradient_masking():
    """Slower only when GCG follows the gradient, equal under uniform candidates: gradient masking."""
    assert scenario(2, (0.2, 0.08), (0.1, 0.1)) == (SUPPORTED, UNDETERMINED, SUPPORTED, GRADIENT_MASKING)


def test_effect_from_a_lower_bar_is_a_moving_bar():
    """Same loss drop per step but a bar 3 nats lower: slower to 'succeed', not slower to drop 3 nats: moving bar."""
    assert scenario(3, (0.2, 0.2), (0.1, 0.1), orig=(6.0, 3.0)) == (SUPPORTED, SUPPORTED, UNDETERMINED, MOVING_BAR)


def test_analyse_pair_reports_the_planted_numbers():
    """Planted: success near step 20 vs 50, so RMST diff ~ 30 steps; at the primary budget (the Baseline's
    median, 20 or 30) the Baseline alone breaks windows (c = 0); a lower bar's effect vanishes once adjusted."""
    rng = np.random.default_rng(9)
    base, variant = records(rng, 0.2), records(rng, 0.08)
    result = pair(variant, base)
    assert (result.n, result.stories, result.budget) == (48, 12, 100) and result.primary_budget in (20, 30)
    assert 25 < result.rmst_difference.low < result.rmst_difference.estimate < result.rmst_difference.high < 35
    k = BUDGETS.index(result.primary_budget)
    assert result.variant_only[k] == 0 and result.base_only[k] >= 20
    np.testing.assert_array_equal(result.p_holm, holm(result.p))
    assert result.primary_p_holm == result.p_holm[k] < 1e-5  # Holm-adjusted across the 10 budgets
    assert result.drop_rate_difference.high < 0  # the variant's loss falls more slowly
    bar = pair(records(rng, 0.2, orig=3.0), records(rng, 0.2))
    assert bar.rmst_difference.low > 0 and bar.adjusted_difference.low < 0 < bar.adjusted_difference.high


def test_delay_by_budget_is_the_restricted_mean_up_to_each_budget():
    """rmst_by_budget[j] = mean over windows of min(T_v, s_j) - min(T_b, s_j) (plain loop); the last equals the
    whole-run difference when the last budget is the attack's length; a planted delay grows with the budget."""
    rng = np.random.default_rng(5)
    base, variant = records(rng, 0.2), records(rng, 0.08)
    result = pair(variant, base)
    tv, _ = time_to_success(variant.trajectory, variant.orig_loss)
    tb, _ = time_to_success(base.trajectory, base.orig_loss)
    for s, est in zip(BUDGETS, result.rmst_by_budget):
        expected = sum(min(a, s) - min(b, s) for a, b in zip(tv.tolist(), tb.tolist())) / len(tv)
        assert est.estimate == pytest.approx(expected, abs=1e-12) and est.low <= est.estimate <= est.high
    assert result.rmst_by_budget[-1] == result.rmst_difference
    estimates = [e.estimate for e in result.rmst_by_budget]
    assert estimates[0] < estimates[-1] and estimates == sorted(estimates)
