"""Is a model variant harder to attack than the Baseline? Paired GCG records on the same test windows.

The adversarial-robustness field asks a robustness claim to survive more than one attack
(Athalye et al. 2018, "Obfuscated gradients"; Carlini et al. 2019, "On evaluating adversarial
robustness"): a paired comparison on the same inputs with its uncertainty, a gradient-free search
(a model can look robust only because its gradients mislead GCG), and a success bar that does
not move with the model. numpy only; every level, resample count and seed comes from arguments.

Inputs are per-window arrays of one attack run (`AttackRecords`):

* `trajectory` (n, steps): best-so-far target loss after steps 1..steps (non-increasing);
* `orig_loss` (n,): target loss under the true prefix; success at budget s: trajectory[:, s-1] <= orig_loss;
* `init_loss` (n,): target loss under the attack's random initial prefix (before step 1);
* `clusters` (n,): story of each window; its windows overlap, so the bootstrap resamples stories.

Verdict rules (a positive effect means the attack needs more steps on the variant: the claim):

1. `effect_verdict`: "supported" if the effect's interval lies above 0 and its adjusted p < alpha;
   "contradicted" if the interval lies below 0 and adjusted p < alpha; else "undetermined at this scale".
2. `combine_seeds`: a verdict stands only if every training seed gives it; otherwise
   "undetermined at this scale" (`seed_consistent` checks the effect's sign the same way).
3. `robustness_verdict`: an effect "supported" under gradient GCG is "gradient masking" if the
   same search with uniform random candidates does not support it (or transfer from the Baseline
   beats the variant's own attacks), "moving bar" if the fluency-independent criterion
   (`steps_to_drop`) does not support it, "gradient masking or moving bar" if neither check
   supports it; otherwise the gradient verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import numpy.typing as npt

from ilm.stats import bootstrap_interval, bootstrap_totals, mcnemar_exact, percentile_bounds

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
UNDETERMINED = "undetermined at this scale"
GRADIENT_MASKING = "gradient masking"
MOVING_BAR = "moving bar"
NEITHER_CHECK = "gradient masking or moving bar"  # the delay survives neither check: the two cannot be told apart
VERDICTS = (SUPPORTED, CONTRADICTED, UNDETERMINED, GRADIENT_MASKING, MOVING_BAR, NEITHER_CHECK)

CRITERIA = ("success", "drop")  # time_to_success (the model's own bar), steps_to_drop (fluency-free)

# --- inputs ---------------------------------------------------------------------------------------


def _check_trajectory(trajectory: npt.ArrayLike) -> np.ndarray:
    """The trajectory as a finite, non-increasing (n, steps) float array with at least one step."""
    traj = np.asarray(trajectory, dtype=np.float64)
    if traj.ndim != 2 or traj.shape[1] < 1:
        raise ValueError(f"trajectory must be (windows, steps) with at least one step, not of shape {traj.shape}")
    if not np.all(np.isfinite(traj)):
        raise ValueError("trajectory holds nan or inf; drop those windows before the analysis")
    if np.any(np.diff(traj, axis=1) > 0):
        raise ValueError("trajectory must be the best-so-far loss (non-increasing); "
                         "pass np.minimum.accumulate(losses, axis=1)")
    return traj


def _per_window(values: npt.ArrayLike, n: int, name: str) -> np.ndarray:
    """`values` as a finite (n,) float array, one per window."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must hold one value per window ({n}), not an array of shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds nan or inf; drop those windows before the analysis")
    return arr


def _check_budget(budget: int, steps: Optional[int]) -> int:
    """A budget of 1..steps attack steps (any positive integer when steps is None)."""
    if int(budget) != budget or budget < 1 or (steps is not None and budget > steps):
        raise ValueError(f"budget must be an integer in 1..{steps if steps is not None else 'steps'}, not {budget}")
    return int(budget)


def _check_budgets(budgets: Sequence[int], steps: Optional[int]) -> np.ndarray:
    """Budgets as a strictly increasing (B,) int array within 1..steps."""
    arr = np.asarray(budgets)
    if arr.ndim != 1 or arr.size == 0 or np.any(np.diff(arr) <= 0):
        raise ValueError(f"budgets must be a non-empty, strictly increasing list of steps, not {budgets}")
    return np.array([_check_budget(b, steps) for b in arr.tolist()], dtype=np.int64)


@dataclass(frozen=True)
class AttackRecords:
    """One GCG run on n windows: best-so-far losses and the two reference losses of each window."""

    trajectory: np.ndarray  # (n, steps) best-so-far target loss after steps 1..steps
    orig_loss: np.ndarray  # (n,) target loss under the true prefix: the success bar
    init_loss: np.ndarray  # (n,) target loss under the random initial prefix

    def __post_init__(self):
        traj = _check_trajectory(self.trajectory)
        object.__setattr__(self, "trajectory", traj)
        object.__setattr__(self, "orig_loss", _per_window(self.orig_loss, traj.shape[0], "orig_loss"))
        object.__setattr__(self, "init_loss", _per_window(self.init_loss, traj.shape[0], "init_loss"))

    @property
    def steps(self) -> int:
        return self.trajectory.shape[1]


# --- per-window times -----------------------------------------------------------------------------


def _first_reached(reached: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based first step at which `reached` (n, steps) holds; `steps` with event False if never."""
    events = reached.any(axis=1)  # (n,)
    times = np.where(events, reached.argmax(axis=1) + 1, reached.shape[1])  # argmax: the first True
    return times.astype(np.int64), events


def time_to_success(trajectory: npt.ArrayLike, orig_loss: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(times, events), each (n,): the first step s with trajectory[:, s-1] <= orig_loss, censored at `steps`."""
    traj = _check_trajectory(trajectory)
    orig = _per_window(orig_loss, traj.shape[0], "orig_loss")
    return _first_reached(traj <= orig[:, None])


def steps_to_drop(trajectory: npt.ArrayLike, init_loss: npt.ArrayLike, drop: float) -> tuple[np.ndarray, np.ndarray]:
    """(times, events): the first step at which the loss lies `drop` nats or more below the initial loss.

    The fluency-independent criterion: unlike `time_to_success` it does not depend on the model's
    own original loss, so a variant cannot look robust just because its bar lies lower.
    """
    if not (math.isfinite(drop) and drop > 0):
        raise ValueError(f"drop must be a positive number of nats, not {drop}")
    traj = _check_trajectory(trajectory)
    init = _per_window(init_loss, traj.shape[0], "init_loss")
    return _first_reached(init[:, None] - traj >= drop)


def loss_drop_per_step(trajectory: npt.ArrayLike, init_loss: npt.ArrayLike, budget: int) -> np.ndarray:
    """(n,) mean loss decrease per step over the first `budget` steps: (init - trajectory[:, budget-1]) / budget."""
    traj = _check_trajectory(trajectory)
    init = _per_window(init_loss, traj.shape[0], "init_loss")
    budget = _check_budget(budget, traj.shape[1])
    return (init - traj[:, budget - 1]) / budget


def success_by_budget(times: npt.ArrayLike, events: npt.ArrayLike, budgets: Sequence[int]) -> np.ndarray:
    """(n, B) bool: window i broken within budgets[j], i.e. event and time <= budgets[j]."""
    t, e = np.asarray(times), np.asarray(events, dtype=bool)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"times {t.shape} and events {e.shape} must be (n,) arrays of the same windows")
    b = _check_budgets(budgets, None)
    return e[:, None] & (t[:, None] <= b[None, :])


def restricted_mean(times: npt.ArrayLike, budget: int) -> float:
    """Restricted mean time to success up to `budget`: the mean of min(T, budget) over windows.

    It equals the area above the success curve F(s) = P(T <= s) from 0 to `budget`, since
    E[min(T, b)] = integral_0^b P(T > t) dt. Estimating P(T > t) needs no survival model here:
    every censored window is censored at the attack's full step budget (>= `budget`, which must
    not exceed it), so the empirical curve is exact up to `budget` and the area is the plain mean.
    """
    t = np.asarray(times)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"times must be a non-empty (n,) array, not of shape {t.shape}")
    return float(np.minimum(t, _check_budget(budget, None)).mean())


# --- paired comparisons ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float


def paired_rmst_difference(times_variant: npt.ArrayLike, times_base: npt.ArrayLike, budget: int,
                           clusters: npt.ArrayLike, *, confidence: float, resamples: int, seed: int) -> Estimate:
    """Mean paired difference of min(T, budget), variant minus base (> 0: the attack takes longer on the
    variant), with a story (cluster) bootstrap interval of the per-window differences."""
    tv, tb = np.asarray(times_variant), np.asarray(times_base)
    if tv.shape != tb.shape or tv.ndim != 1:
        raise ValueError(f"times_variant {tv.shape} and times_base {tb.shape} must be (n,) on the same windows")
    budget = _check_budget(budget, None)
    diffs = (np.minimum(tv, budget) - np.minimum(tb, budget)).astype(np.float64)  # (n,)
    low, high = bootstrap_interval(diffs, confidence=confidence, resamples=resamples, seed=seed, clusters=clusters)
    return Estimate(float(diffs.mean()), low, high)


def mcnemar_by_budget(success_variant: npt.ArrayLike,
                      success_base: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(b, c, p), each (B,): per budget, base-only successes b, variant-only successes c and the exact
    two-sided McNemar p, from (n, B) bool success matrices of the same windows (`success_by_budget`)."""
    sv, sb = np.asarray(success_variant, dtype=bool), np.asarray(success_base, dtype=bool)
    if sv.shape != sb.shape or sv.ndim != 2:
        raise ValueError(f"success matrices must be (windows, budgets) of one shape, not {sv.shape} and {sb.shape}")
    b = (sb & ~sv).sum(axis=0)  # (B,) only the Baseline broken: the variant held
    c = (sv & ~sb).sum(axis=0)  # (B,)
    p = np.array([mcnemar_exact(int(bj), int(cj)) for bj, cj in zip(b, c)])
    return b, c, p


def holm(pvalues: npt.ArrayLike) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values of an array of any shape (one family: all entries).

    The k-th smallest of m p-values becomes max over j <= k of (m - j + 1) p_(j), capped at 1
    (Holm 1979), so the adjusted values keep the order of the raw ones.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.reshape(-1)  # (m,)
    if not np.all((flat >= 0) & (flat <= 1)):
        raise ValueError("p-values must lie in [0, 1] (nan is not a p-value; leave such tests out of the family)")
    m = flat.size
    order = np.argsort(flat, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * flat[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted.reshape(p.shape)


def primary_budget(success_rate_base: npt.ArrayLike, budgets: Sequence[int], rate: float) -> int:
    """The first budget at which the Baseline's success rate reaches `rate` (claims.primary_rate; 0.5: its
    median time to success), else the last budget. Chosen from the Baseline alone, so it never looks at a variant."""
    rates = np.asarray(success_rate_base, dtype=np.float64)
    b = _check_budgets(budgets, None)
    if rates.shape != b.shape:
        raise ValueError(f"success_rate_base {rates.shape} must give one rate per budget {b.shape}")
    if not 0 < rate < 1:
        raise ValueError(f"claims.primary_rate must lie strictly between 0 and 1, not {rate}")
    reached = np.flatnonzero(rates >= rate)
    return int(b[reached[0]] if reached.size else b[-1])


def _ols_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, 5) per-unit terms of the normal equations: 1, x, y, x², xy (sums resample exactly)."""
    return np.stack([np.ones_like(x), x, y, x * x, x * y], axis=1)


def _ols_fit(totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intercept, slope) of y = a + b x from the summed terms (..., 5) of `_ols_columns`; nan/inf if x is constant."""
    s0, sx, sy, sxx, sxy = np.moveaxis(totals, -1, 0)
    slope = (s0 * sxy - sx * sy) / (s0 * sxx - sx * sx)
    return (sy - slope * sx) / s0, slope


def adjusted_difference(diff: npt.ArrayLike, covariate_diff: npt.ArrayLike, clusters: npt.ArrayLike, *,
                        confidence: float, resamples: int, seed: int) -> Estimate:
    """The paired difference at equal original loss: the intercept of the OLS fit d_i = a + b x_i,
    x_i = orig_variant - orig_base, with a story-bootstrap interval (resamples with constant x are left out)."""
    d = _per_window(diff, np.size(diff), "diff")
    x = _per_window(covariate_diff, d.size, "covariate_diff")
    if d.size < 2 or np.ptp(x) == 0:
        raise ValueError("covariate_diff is constant, so the intercept is not identified; "
                         "report the unadjusted difference")
    # Centring keeps the normal equations well conditioned; the intercept is then moved back to x = 0.
    xc, yc = x.mean(), d.mean()
    columns = _ols_columns(x - xc, d - yc)  # (n, 5)
    totals = bootstrap_totals(columns, clusters=clusters, resamples=resamples, seed=seed)  # (R, 5)
    with np.errstate(invalid="ignore", divide="ignore"):
        centred, slope = _ols_fit(np.vstack([columns.sum(axis=0), totals]))  # (1 + R,) each: the sample, then draws
    at_zero = yc + centred - slope * xc  # (1 + R,)
    low, high = percentile_bounds(at_zero[1:], confidence)
    return Estimate(float(at_zero[0]), low, high)


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks of `v` (n,), ties sharing the mean of their ranks."""
    order = np.argsort(v, kind="stable")
    s = v[order]
    starts_group = np.r_[True, s[1:] != s[:-1]]  # (n,) first element of a run of ties
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], v.size]  # exclusive
    ranks = np.empty(v.size)
    ranks[order] = ((starts + 1 + ends) / 2)[np.cumsum(starts_group) - 1]
    return ranks


def spearman(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either input is constant."""
    a, b = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if a.size != b.size or a.size < 2:
        raise ValueError(f"x ({a.size}) and y ({b.size}) must pair at least two values")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("x and y must be finite; drop the pairs holding nan or inf")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


# --- verdicts -------------------------------------------------------------------------------------


def _check_verdict(verdict: str) -> str:
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, not {verdict!r}")
    return verdict


def effect_verdict(low: float, high: float, p_adjusted: float, alpha: float) -> str:
    """Rule 1: the sign of an interval that excludes 0, when the adjusted p is below alpha too."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, not {alpha}")
    if low > 0 and p_adjusted < alpha:
        return SUPPORTED
    if high < 0 and p_adjusted < alpha:
        return CONTRADICTED
    return UNDETERMINED  # also when a bound or p is nan


def seed_consistent(signs: Sequence[float]) -> bool:
    """True when the effect has the same non-zero sign in every seed."""
    s = np.sign(np.asarray(signs, dtype=np.float64).reshape(-1))
    if s.size == 0:
        raise ValueError("signs must hold one effect sign per seed, not none")
    return bool(s[0] != 0 and np.all(s == s[0]))


def combine_seeds(per_seed_verdicts: Sequence[str]) -> str:
    """Rule 2: the verdict every seed gives, else "undetermined at this scale"."""
    verdicts = [_check_verdict(v) for v in per_seed_verdicts]
    if not verdicts:
        raise ValueError("per_seed_verdicts must hold one verdict per seed, not none")
    return verdicts[0] if all(v == verdicts[0] for v in verdicts) else UNDETERMINED


def robustness_verdict(gradient: str, uniform: str, fluency_free: str, transfer: Optional[str] = None) -> str:
    """Rule 3: a gradient-GCG "supported" that the gradient-free search does not reproduce (or that transfer
    contradicts: the Baseline's attacks beat the variant's own) is "gradient masking"; one that the fluency-free
    criterion does not reproduce is "moving bar"; one that survives neither check is "gradient masking or moving
    bar". Any other gradient verdict stands."""
    gradient, uniform, fluency_free = (_check_verdict(v) for v in (gradient, uniform, fluency_free))
    if gradient != SUPPORTED:
        return gradient
    masked = uniform != SUPPORTED or (transfer is not None and _check_verdict(transfer) == CONTRADICTED)
    moving = fluency_free != SUPPORTED
    if masked and moving:
        return NEITHER_CHECK
    return GRADIENT_MASKING if masked else MOVING_BAR if moving else SUPPORTED


# --- one call -------------------------------------------------------------------------------------


def criterion_times(records: AttackRecords, criterion: str, drop: Optional[float]) -> tuple[np.ndarray, np.ndarray]:
    """(times, events) of the records under `criterion`: "success" (own bar) or "drop" (`drop` nats, fluency-free)."""
    if criterion == "success":
        return time_to_success(records.trajectory, records.orig_loss)
    if criterion == "drop":
        if drop is None:
            raise ValueError("criterion 'drop' needs drop: the nats below the initial loss that count as broken")
        return steps_to_drop(records.trajectory, records.init_loss, drop)
    raise ValueError(f"criterion must be one of {CRITERIA}, not {criterion!r}")


@dataclass(frozen=True)
class PairAnalysis:
    """One variant against the Baseline on the same windows under one criterion (see `analyse_pair`)."""

    criterion: str
    n: int  # windows
    stories: int  # distinct clusters: the bootstrap's resampling units
    budget: int  # the attack's steps: horizon of the restricted mean
    rmst_difference: Estimate  # mean paired min(T, budget), variant - base; > 0: harder to attack
    rmst_by_budget: tuple[Estimate, ...]  # (B,) the same difference restricted to each budget: does a delay saturate?
    adjusted_difference: Optional[Estimate]  # the same at equal original loss; None if that difference is constant
    drop_rate_difference: Estimate  # paired loss drop per step over the budget, variant - base
    budgets: np.ndarray  # (B,) budgets of the success comparison
    success_rate_variant: np.ndarray  # (B,)
    success_rate_base: np.ndarray  # (B,)
    base_only: np.ndarray  # (B,) McNemar b: broken on the Baseline only
    variant_only: np.ndarray  # (B,) McNemar c
    p: np.ndarray  # (B,) exact McNemar p per budget
    p_holm: np.ndarray  # (B,) Holm-adjusted across the budgets
    primary_budget: int  # `primary_budget`, from the Baseline alone
    primary_p_holm: float  # p_holm at the primary budget: the p of the verdict
    verdict: str  # `effect_verdict` of rmst_difference and primary_p_holm


def _same_windows(variant: AttackRecords, base: AttackRecords, clusters: npt.ArrayLike) -> np.ndarray:
    """The cluster labels (n,) after checking that both runs cover the same n windows with the same steps."""
    if variant.trajectory.shape != base.trajectory.shape:
        raise ValueError(f"variant {variant.trajectory.shape} and base {base.trajectory.shape} records must "
                         "cover the same windows with the same steps")
    labels = np.asarray(clusters).reshape(-1)
    if labels.size != variant.trajectory.shape[0]:
        raise ValueError(f"clusters ({labels.size}) must give one story per window ({variant.trajectory.shape[0]})")
    return labels


def _optional_adjusted(diff: np.ndarray, covariate: np.ndarray, labels: np.ndarray, boot: dict) -> Optional[Estimate]:
    """`adjusted_difference`, or None when the original losses differ by the same amount on every window."""
    return None if np.ptp(covariate) == 0 else adjusted_difference(diff, covariate, labels, **boot)


def analyse_pair(variant: AttackRecords, base: AttackRecords, clusters: npt.ArrayLike, *, criterion: str,
                 drop: Optional[float], budgets: Sequence[int], confidence: float, resamples: int, seed: int,
                 alpha: float, primary_rate: float) -> PairAnalysis:
    """Every statistic of one variant against the Baseline under one criterion, and its `effect_verdict`.

    The verdict's p is the primary budget's McNemar p, Holm-adjusted across `budgets`; to adjust
    across variants as well, pass a table of `p` to `holm` and call `effect_verdict` again.
    """
    labels = _same_windows(variant, base, clusters)
    steps, b = variant.steps, _check_budgets(budgets, variant.steps)
    boot = {"confidence": confidence, "resamples": resamples, "seed": seed}
    (tv, ev), (tb, eb) = criterion_times(variant, criterion, drop), criterion_times(base, criterion, drop)
    rmst = paired_rmst_difference(tv, tb, steps, labels, **boot)
    by_budget = tuple(paired_rmst_difference(tv, tb, int(s), labels, **boot) for s in b)
    diff = (np.minimum(tv, steps) - np.minimum(tb, steps)).astype(np.float64)  # (n,) as in rmst
    adjusted = _optional_adjusted(diff, variant.orig_loss - base.orig_loss, labels, boot)
    rates = loss_drop_per_step(variant.trajectory, variant.init_loss, steps) - \
        loss_drop_per_step(base.trajectory, base.init_loss, steps)  # (n,)
    drop_rate = Estimate(float(rates.mean()), *bootstrap_interval(rates, clusters=labels, **boot))
    sv, sb = success_by_budget(tv, ev, b), success_by_budget(tb, eb, b)  # (n, B)
    base_only, variant_only, p = mcnemar_by_budget(sv, sb)
    p_holm = holm(p)
    primary = primary_budget(sb.mean(axis=0), b, primary_rate)
    primary_p = float(p_holm[np.searchsorted(b, primary)])
    return PairAnalysis(
        criterion=criterion, n=int(labels.size), stories=int(np.unique(labels).size), budget=steps,
        rmst_difference=rmst, rmst_by_budget=by_budget, adjusted_difference=adjusted, drop_rate_difference=drop_rate, budgets=b,
        success_rate_variant=sv.mean(axis=0), success_rate_base=sb.mean(axis=0), base_only=base_only,
        variant_only=variant_only, p=p, p_holm=p_holm, primary_budget=primary, primary_p_holm=primary_p,
        verdict=effect_verdict(rmst.low, rmst.high, primary_p, alpha),
    )
