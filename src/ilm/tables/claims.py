"""Table `claims` (rule tabulate_claims): each claim of the paper the workflow tests, its test and a verdict.

One row per (claim, model). Every verdict comes from a rule in code (ilm.robustness, documented
in docs/method.md §14), never by hand:

* **ILM keeps fluency**: the paired difference of forward CE per test window (variant minus
  Baseline, nats). Supported when its interval lies below `claims.fluency_margin`, contradicted
  when it lies above it, undetermined otherwise (non-inferiority).
* **g lets the model recover its input**: inverse top-1 with g minus without g, per window, under
  the variant's own protocol (points). `effect_verdict`; while g is still growing at the end of
  training (`g_still_growing`, from the validation g curves of train_log.csv) a verdict other than
  supported is "undetermined at this scale": the curves have not flattened.
* **ILM resists GCG**: the paired difference of restricted mean time to success (steps; > 0: the
  attack needs longer on the variant), with the exact McNemar test at the primary budget
  (the first of gcg.iterations where the Baseline reaches `claims.primary_rate`, chosen from the
  Baseline alone), Holm-adjusted across budgets and variants. `effect_verdict`.
* **... under uniform random candidates** (gradient-free), **... under the fluency-independent
  criterion** (steps to lower the loss a fixed number of nats from the start), **... against
  transfer**: the Baseline's attacks scored on the variant against the variant's own white-box
  attacks (> 0: white-box is stronger, as it should be without gradient masking).
* **ILM resists GCG, every check**: `robustness_verdict` of the above: gradient masking when the
  gradient-free search does not confirm the effect (or transfer beats white-box), moving bar when
  the fluency-independent criterion does not, "gradient masking or moving bar" when neither does.
* **Inversion recovers prompts better than the reverse bigram**: paired token F1 per sample.

Across seeds (`claims.seed_study`): each row is computed per seed; the effect and interval shown are
the first (main) seed's, p is the largest adjusted p over seeds, and a verdict stands only if every
seed gives it. Bootstrap intervals resample stories (windows of one story overlap); p-values of
the non-GCG rows come from a story-level sign-flip test. Statistics settings: `statistics:`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ilm import robustness as rb
from ilm.figures.common import read_train_log
from ilm.figures.g_curves import COLUMNS as G_CURVES
from ilm.names import BIGRAM, order_variants, parse_variant, variant_name
from ilm.stats import StatisticsConfig, bootstrap_interval, level_label, mcnemar_exact
from ilm.tables.common import write_table

log = logging.getLogger("ilm.tables.claims")

BASE = "base"
FLUENCY = "ILM keeps fluency"
RECOVERY = "g lets the model recover its input"
RESISTS = "ILM resists GCG"
UNIFORM = "... also under gradient-free (uniform) candidates"
FLUENCY_FREE = "... also under the fluency-independent criterion"
TRANSFER = "... white-box beats transfer from the Baseline"
OVERALL = "ILM resists GCG, every check"
GROUNDING = "Inversion beats the reverse bigram"
CLAIMS = (FLUENCY, RECOVERY, RESISTS, UNIFORM, FLUENCY_FREE, TRANSFER, OVERALL, GROUNDING)
COLUMNS = ("Claim", "Model", "Test", "Effect", "Low", "High", "p (Holm)", "n", "Stories", "Seeds",
           "Per seed", "Verdict")


# --- inputs ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """The result files of one trained replicate (the main run, or one seed of the seed study)."""

    root: str
    curves: dict[str, Path] = field(default_factory=dict)  # variant -> gcg_curves.npz
    uniform: dict[str, Path] = field(default_factory=dict)  # variant -> gcg_uniform_curves.npz
    windows: dict[str, Path] = field(default_factory=dict)  # variant -> eval_windows.csv
    transfer: Optional[Path] = None  # transfer.csv
    logs: dict[str, Path] = field(default_factory=dict)  # variant -> models/<variant>/train_log.csv


@dataclass
class Inputs:
    runs: list[Run]  # the main run first
    stories: np.ndarray  # (N_test,) story of every test window
    inversion: dict[str, Path]  # method -> inversion.csv (main run only)


def _root(path: Path) -> str:
    text = str(path)
    for folder in ("/metrics/", "/models/"):
        if folder in text:
            return text.split(folder)[0]
    return str(path.parent)


def gather(paths: Sequence[Path]) -> Inputs:
    """Sort the result files by run (the folder above metrics/) and kind; runs keep their first-seen order."""
    runs: dict[str, Run] = {}
    stories = None
    inversion: dict[str, Path] = {}
    for path in map(Path, paths):
        if path.name.endswith("_stories.npy"):
            stories = np.load(path)
            continue
        run = runs.setdefault(_root(path), Run(_root(path)))
        kind = {"gcg_curves.npz": run.curves, "gcg_uniform_curves.npz": run.uniform, "eval_windows.csv": run.windows}
        if path.name in kind:
            kind[path.name][path.parent.name] = path
        elif path.name == "transfer.csv":
            run.transfer = path
        elif path.name == "train_log.csv":
            run.logs[path.parent.name] = path
        elif path.name == "inversion.csv":
            inversion[path.parent.name] = path
        else:
            raise ValueError(
                f"table claims does not read {path}; "
                "pass curves, eval windows, transfer, training logs and inversion files"
            )
    if stories is None:
        raise ValueError("table claims needs test_stories.npy (results/data) to resample stories")
    return Inputs([r for r in runs.values() if r.curves], stories, inversion)


def read_curves(path: Path) -> tuple[np.ndarray, rb.AttackRecords, np.ndarray]:
    """(samples, records, rank correlations) of one gcg_curves.npz."""
    with np.load(path) as z:
        records = rb.AttackRecords(trajectory=z["trajectory"], orig_loss=z["orig_loss"], init_loss=z["init_loss"])
        return z["sample"].copy(), records, z["rank_correlation"].copy()


# --- tests of single claims ----------------------------------------------------------------------------------


@dataclass
class Result:
    """One row's numbers for one seed."""

    test: str
    effect: float
    low: float
    high: float
    p: float  # raw; Holm-adjusted within the claim afterwards
    n: int
    stories: int
    verdict_of: str = "effect"  # "effect" (effect_verdict) or "margin" (non-inferiority)
    p_holm: float = float("nan")
    verdict: str = ""


def sign_flip_p(diffs: np.ndarray, clusters: np.ndarray, resamples: int, seed: int) -> float:
    """Two-sided story-level sign-flip test of mean(diffs) = 0: story totals get random signs (exchangeable under a
    symmetric null); p = (1 + #{|T*| >= |T|}) / (1 + resamples)."""
    _, inverse = np.unique(clusters, return_inverse=True)
    totals = np.bincount(inverse, weights=np.asarray(diffs, dtype=np.float64))  # (m,)
    observed = abs(totals.sum())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(resamples, totals.size))  # (R, m)
    flipped = np.abs(signs @ totals)  # (R,)
    return float((1 + np.sum(flipped >= observed - 1e-12 * max(1.0, observed))) / (1 + resamples))


def paired_mean(diffs: np.ndarray, clusters: np.ndarray, test: str, stats: StatisticsConfig,
                verdict_of: str = "effect") -> Result:
    """Mean of paired per-unit differences with a story bootstrap interval and a sign-flip p."""
    boot = {"confidence": stats.confidence, "resamples": stats.bootstrap_resamples, "seed": stats.seed}
    low, high = bootstrap_interval(diffs, clusters=clusters, **boot)
    p = sign_flip_p(diffs, clusters, stats.bootstrap_resamples, stats.seed)
    return Result(test, float(np.mean(diffs)), low, high, p, int(diffs.size), int(np.unique(clusters).size),
                  verdict_of)


def _windows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).sort_values("window").reset_index(drop=True)


def fluency(base: pd.DataFrame, variant: pd.DataFrame, stories: np.ndarray, stats: StatisticsConfig) -> Result:
    """Forward CE per window, variant minus Baseline (nats): > 0 means the variant predicts worse."""
    if len(base) != len(variant):
        raise ValueError("eval_windows.csv of the Baseline and the variant cover different test windows; "
                         "rerun evaluate_model with one evaluate.max_sequences")
    diffs = (variant["forward_ce_sum"] / variant["forward_rows"] - base["forward_ce_sum"] / base["forward_rows"])
    return paired_mean(diffs.to_numpy(), stories[base["window"].to_numpy()],
                       "paired forward CE per window, variant - Baseline (nats)", stats, verdict_of="margin")


def g_still_growing(log: pd.DataFrame, ratio: float) -> Optional[str]:
    """Why g is still growing at the end of training, or None if its curves have flattened (or cannot tell).

    From the validation rows of a train_log.csv: between the validation nearest the middle of training
    and the last one, the mean g^2 / eps, or the gap between the inverse CE without and with g (what g
    carries), grew by more than `ratio` (claims.growth_ratio).
    """
    val = log.dropna(subset=["val_g_sq_over_eps"]).sort_values("step")
    if len(val) < 2:
        return None
    last = val.iloc[-1]
    middle = val.iloc[int(np.argmin(np.abs(val["step"].to_numpy() - last["step"] / 2)))]
    if middle["step"] == last["step"]:
        return None
    g_growth = last["val_g_sq_over_eps"] / middle["val_g_sq_over_eps"] if middle["val_g_sq_over_eps"] > 0 else np.inf
    gap = lambda r: r["val_inv_ce_without_g"] - r["val_inv_ce"]  # noqa: E731
    gap_growth = gap(last) / gap(middle) if gap(middle) > 0 else (np.inf if gap(last) > 0 else 0.0)
    reasons = []
    if g_growth > ratio:
        reasons.append(f"g^2/eps x{g_growth:.3g}")
    if gap_growth > ratio:
        reasons.append(f"CE gap x{gap_growth:.3g}")
    if not reasons:
        return None
    return f"g still growing from step {int(middle['step'])} to {int(last['step'])} ({', '.join(reasons)})"


def recovery(variant: str, frame: pd.DataFrame, stories: np.ndarray, stats: StatisticsConfig) -> Optional[Result]:
    """Inverse top-1 with g minus without g under the variant's own protocol, per window (points)."""
    protocol, _ = parse_variant(variant)
    if protocol is None:
        return None
    rows = frame[f"{protocol}_rows"].to_numpy(dtype=float)
    diffs = 100 * (frame[f"{protocol}_top1"] - frame[f"{protocol}_top1_without_g"]).to_numpy(dtype=float) / rows
    return paired_mean(diffs, stories[frame["window"].to_numpy()],
                       f"inverse top-1 with g - without g, {protocol} protocol (points)", stats)


def transfer_test(table: pd.DataFrame, variant: str, stories_of: Mapping[int, int], stats: StatisticsConfig) -> Result:
    """White-box success on the variant minus success of the Baseline's attacks on it, per window (points)."""
    own = table[(table.source == variant) & (table.target == variant)].set_index("sample")["success"]
    moved = table[(table.source == BASE) & (table.target == variant)].set_index("sample")["success"]
    both = pd.concat([own.rename("own"), moved.rename("moved")], axis=1, join="inner")
    own_b, moved_b = both["own"].astype(bool).to_numpy(), both["moved"].astype(bool).to_numpy()
    diffs = 100.0 * (own_b.astype(float) - moved_b.astype(float))
    clusters = np.array([stories_of[int(s)] for s in both.index])
    boot = {"confidence": stats.confidence, "resamples": stats.bootstrap_resamples, "seed": stats.seed}
    low, high = bootstrap_interval(diffs, clusters=clusters, **boot)
    p = mcnemar_exact(int((moved_b & ~own_b).sum()), int((own_b & ~moved_b).sum()))
    return Result("white-box success - transfer success from the Baseline, final budget (points; exact McNemar)",
                  float(diffs.mean()), low, high, p, int(diffs.size), int(np.unique(clusters).size))


def grounding(variant: pd.DataFrame, bigram: pd.DataFrame, stories: np.ndarray, stats: StatisticsConfig) -> Result:
    """Token F1 of the variant's inversion minus the reverse bigram's, per sample."""
    both = variant[["sample", "f1"]].merge(bigram[["sample", "f1"]], on="sample", suffixes=("", "_bigram"))
    diffs = (both["f1"] - both["f1_bigram"]).to_numpy(dtype=float)
    return paired_mean(diffs, stories[both["sample"].to_numpy()], "paired token F1, inversion - reverse bigram", stats)


# --- GCG on one run --------------------------------------------------------------------------------------------


@dataclass
class RunAttacks:
    """The robustness analyses of one run: per variant, each attack/criterion's PairAnalysis."""

    gradient: dict[str, rb.PairAnalysis]
    drop: dict[str, rb.PairAnalysis]
    uniform: dict[str, rb.PairAnalysis]
    rank_correlation: dict[str, tuple[float, int]]  # model -> (mean over windows, finite windows), uniform search
    rank_correlation_difference: dict[str, rb.Estimate]  # variant -> paired difference with the Baseline
    drop_nats: Optional[float]  # None: the Baseline's attacks never fell below their start
    stories_of: dict[int, int]


def fixed_drop(base: rb.AttackRecords, quantile: float) -> Optional[float]:
    """The fluency-free criterion's drop (nats): a quantile of the drop the Baseline's attacks reach by their
    last step (initial minus final loss). None when that is not positive (the attacks never got below their start)."""
    value = float(np.quantile(base.init_loss - base.trajectory[:, -1], quantile))
    if not value > 0:
        log.warning("the Baseline's attacks end at or above their initial loss (quantile %.3g nats): "
                    "no fluency-independent criterion", value)
        return None
    return value


def analyse_run(run: Run, stories: np.ndarray, config: Mapping, drop_nats: Optional[float]) -> RunAttacks:
    """Gradient GCG under both criteria and the uniform search, every variant against the Baseline."""
    stats = StatisticsConfig.from_dict(config["statistics"])
    claims = config["claims"]
    budgets = sorted(int(s) for s in config["gcg"]["iterations"])
    boot = {"confidence": stats.confidence, "resamples": stats.bootstrap_resamples, "seed": stats.seed,
            "alpha": claims["alpha"], "primary_rate": claims["primary_rate"]}
    curves = {v: read_curves(p) for v, p in run.curves.items()}
    uniform = {v: read_curves(p) for v, p in run.uniform.items()}
    if BASE not in curves:
        raise ValueError(f"{run.root}: the claims need the Baseline's GCG records (metrics/base/gcg_curves.npz)")
    samples = curves[BASE][0]
    for name, (s, _, _) in [*curves.items(), *uniform.items()]:
        if not np.array_equal(s, samples):
            raise ValueError(f"{run.root}: {name}'s GCG records cover other windows than the Baseline's; rerun with "
                             "one samples.json")
    clusters = stories[samples]
    if drop_nats is None:
        drop_nats = fixed_drop(curves[BASE][1], claims["drop_quantile"])
    out = RunAttacks({}, {}, {}, {}, {}, drop_nats, {int(s): int(c) for s, c in zip(samples, clusters)})
    for v in curves:
        if v == BASE:
            continue
        out.gradient[v] = rb.analyse_pair(curves[v][1], curves[BASE][1], clusters, criterion="success", drop=None,
                                          budgets=budgets, **boot)
        if drop_nats is not None:
            out.drop[v] = rb.analyse_pair(curves[v][1], curves[BASE][1], clusters, criterion="drop",
                                          drop=drop_nats, budgets=budgets, **boot)
        if v in uniform and BASE in uniform:
            out.uniform[v] = rb.analyse_pair(uniform[v][1], uniform[BASE][1], clusters, criterion="success",
                                             drop=None, budgets=budgets, **boot)
    for v, (_, _, corr) in uniform.items():
        finite = corr[np.isfinite(corr)]
        out.rank_correlation[v] = (float(finite.mean()) if finite.size else float("nan"), int(finite.size))
        if v != BASE and BASE in uniform:
            diffs = corr - uniform[BASE][2]  # (n,) paired on the windows
            keep = np.isfinite(diffs)
            if keep.any():
                low, high = bootstrap_interval(diffs[keep], clusters=clusters[keep], confidence=stats.confidence,
                                               resamples=stats.bootstrap_resamples, seed=stats.seed)
                out.rank_correlation_difference[v] = rb.Estimate(float(diffs[keep].mean()), low, high)
    return out


def _attack_result(a: rb.PairAnalysis, what: str) -> Result:
    return Result(
        f"{what}: restricted mean steps to success, variant - Baseline, paired (steps); "
        f"McNemar at the primary budget {a.primary_budget}",
        a.rmst_difference.estimate, a.rmst_difference.low, a.rmst_difference.high,
        float(a.p[list(a.budgets).index(a.primary_budget)]), a.n, a.stories,
    )


# --- verdicts and the table ------------------------------------------------------------------------------------


def _adjust(results: dict[str, Result], claims: Mapping) -> None:
    """Holm across the models of one claim (and one seed); then each row's verdict from its rule."""
    named = [name for name, r in results.items() if np.isfinite(r.p)]
    adjusted = rb.holm([results[n].p for n in named]) if named else []
    for name, p in zip(named, adjusted):
        results[name].p_holm = float(p)
    for r in results.values():
        if r.verdict_of == "margin":
            margin = claims["fluency_margin"]
            r.verdict = rb.SUPPORTED if r.high < margin else rb.CONTRADICTED if r.low > margin else rb.UNDETERMINED
        else:
            r.verdict = rb.effect_verdict(r.low, r.high, r.p_holm, claims["alpha"])


def _gcg_family(analyses: dict[str, rb.PairAnalysis], what: str, claims: Mapping) -> dict[str, Result]:
    """Rows of one attack/criterion: p at the primary budget, Holm-adjusted across budgets and variants together."""
    if not analyses:
        return {}
    names = list(analyses)
    adjusted = rb.holm(np.stack([analyses[n].p for n in names]))  # (V, B)
    out = {}
    for i, n in enumerate(names):
        a = analyses[n]
        r = _attack_result(a, what)
        r.p_holm = float(adjusted[i, list(a.budgets).index(a.primary_budget)])
        r.verdict = rb.effect_verdict(r.low, r.high, r.p_holm, claims["alpha"])
        out[n] = r
    return out


def seed_results(run: Run, inputs: Inputs, config: Mapping, drop_nats: Optional[float], main: bool
                 ) -> tuple[dict[tuple[str, str], Result], RunAttacks]:
    """Every row's Result for one run (seed), keyed by (claim, model)."""
    stats = StatisticsConfig.from_dict(config["statistics"])
    claims = config["claims"]
    attacks = analyse_run(run, inputs.stories, config, drop_nats)
    families: dict[str, dict[str, Result]] = {c: {} for c in CLAIMS}
    if BASE in run.windows:
        base_w = _windows(run.windows[BASE])
        for v, path in run.windows.items():
            frame = _windows(path)
            if v != BASE:
                families[FLUENCY][v] = fluency(base_w, frame, inputs.stories, stats)
            rec = recovery(v, frame, inputs.stories, stats)
            if rec is not None and v != BASE:
                families[RECOVERY][v] = rec
    families[RESISTS] = _gcg_family(attacks.gradient, "gradient GCG", claims)
    families[UNIFORM] = _gcg_family(attacks.uniform, "uniform random search", claims)
    families[FLUENCY_FREE] = _gcg_family(attacks.drop, f"GCG, broken = {attacks.drop_nats or 0:.3g} nats below the "
                                         "start", claims)
    if run.transfer is not None:
        table = pd.read_csv(run.transfer)
        families[TRANSFER] = {v: transfer_test(table, v, attacks.stories_of, stats)
                              for v in attacks.gradient if v in set(table.target)}
    if main and BIGRAM in inputs.inversion:
        bigram = pd.read_csv(inputs.inversion[BIGRAM])
        families[GROUNDING] = {m: grounding(pd.read_csv(p), bigram, inputs.stories, stats)
                               for m, p in inputs.inversion.items() if m not in (BIGRAM,)}
    for claim in (FLUENCY, RECOVERY, TRANSFER, GROUNDING):
        _adjust(families[claim], claims)
    for v, r in families[RECOVERY].items():
        log = read_train_log(run.logs[v], G_CURVES) if v in run.logs else None
        growing = g_still_growing(log, claims["growth_ratio"]) if log is not None else None
        if growing is not None:
            r.test += f"; {growing}"
            if r.verdict != rb.SUPPORTED:
                r.verdict = rb.UNDETERMINED
    for v, g in families[RESISTS].items():
        transfer_verdict = families[TRANSFER].get(v)
        uniform = families[UNIFORM].get(v)
        overall = rb.robustness_verdict(
            g.verdict,
            uniform.verdict if uniform is not None else rb.UNDETERMINED,
            families[FLUENCY_FREE][v].verdict if v in families[FLUENCY_FREE] else rb.UNDETERMINED,
            transfer_verdict.verdict if transfer_verdict is not None else None,
        )
        families[OVERALL][v] = Result("the rows above, by the robustness rule (docs/method.md §14)", g.effect, g.low,
                                      g.high, g.p, g.n, g.stories, p_holm=g.p_holm, verdict=overall)
    return {(c, m): r for c, rows in families.items() for m, r in rows.items()}, attacks


def claims_frame(inputs: Inputs, config: Mapping) -> tuple[pd.DataFrame, list[RunAttacks]]:
    """The claims table over every run (seed) given; the first run is the main one."""
    per_seed, analyses = [], []
    drop_nats = None
    for i, run in enumerate(inputs.runs):
        results, attacks = seed_results(run, inputs, config, drop_nats, main=(i == 0))
        drop_nats = attacks.drop_nats  # the main run's Baseline fixes the drop for every seed
        per_seed.append(results)
        analyses.append(attacks)
    rows = []
    models = order_variants({m for _, m in per_seed[0]})
    for claim in CLAIMS:
        for model in models:
            if (claim, model) not in per_seed[0]:
                continue
            first = per_seed[0][(claim, model)]
            seeds = [s[(claim, model)] for s in per_seed if (claim, model) in s]
            verdict = rb.combine_seeds([r.verdict for r in seeds])
            if len(seeds) > 1 and not rb.seed_consistent([np.sign(r.effect) for r in seeds]):
                verdict = rb.UNDETERMINED
            rows.append({
                "Claim": claim, "Model": variant_name(model), "Test": first.test,
                "Effect": first.effect, "Low": first.low, "High": first.high,
                "p (Holm)": max(r.p_holm for r in seeds), "n": first.n, "Stories": first.stories,
                "Seeds": len(seeds), "Per seed": "; ".join(f"{r.effect:.3g}" for r in seeds), "Verdict": verdict,
            })
    return pd.DataFrame(rows, columns=list(COLUMNS)), analyses


def _drop_sentence(drop_nats: Optional[float]) -> str:
    if drop_nats is None:
        return "The Baseline's attacks never fell below their start, so there is no fluency-independent criterion."
    return f"The fluency-independent criterion counts a window as broken {drop_nats:.3g} nats below the attack's start."


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer: Optional[Path] = None) -> pd.DataFrame:
    """claims.{csv,md,tex} from the runs' curves, evaluation windows, transfer matrix and inversion metrics."""
    gathered = gather(inputs)
    frame, analyses = claims_frame(gathered, config)
    stats = StatisticsConfig.from_dict(config["statistics"])
    caption = (
        f"Claims of the paper and the workflow's verdicts ({len(gathered.runs)} training seed(s)). Effects are paired "
        f"differences on the same windows, variant minus Baseline unless stated, with {level_label(stats.confidence)} "
        f"story-bootstrap intervals; p is Holm-adjusted within each claim (GCG: across budgets and variants, at the "
        f"primary budget), the largest over seeds. {_drop_sentence(analyses[0].drop_nats)} "
        "Verdict rules: docs/method.md §14."
    )
    write_table(frame, out_stem, digits=3, caption=caption, label="tab:claims")
    log.info("%d claim rows over %d seed(s) -> %s", len(frame), len(gathered.runs), out_stem)
    return frame
