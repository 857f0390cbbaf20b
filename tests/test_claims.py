"""The claims table (docs/method.md §14) on hand-made result files: verdicts by the documented rules, numbers
against independent computations."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ilm.cli import main
from ilm.robustness import GRADIENT_MASKING, MOVING_BAR, SUPPORTED, UNDETERMINED
from ilm.tables.claims import sign_flip_p

N, STEPS = 48, 100
STORIES = np.repeat(np.arange(12), 4)  # (48,) four overlapping windows per story
BUDGETS = list(range(10, STEPS + 1, 10))
FLOOR = 2.0  # losses stop falling here: every Baseline attack ends 8 nats below its start


def curves(rng, rate: float, orig: float = 6.0, init: float = 10.0) -> dict:
    """Best-so-far losses falling `rate` nats a step (jittered per window) from `init` down to FLOOR."""
    init_loss = init + rng.uniform(-0.2, 0.2, N)
    rates = rate * rng.uniform(0.8, 1.2, N)
    losses = init_loss[:, None] - rates[:, None] * np.arange(1, STEPS + 1) + rng.normal(0, 0.05, (N, STEPS))
    return {
        "sample": np.arange(N), "trajectory": np.minimum.accumulate(np.maximum(losses, FLOOR), axis=1),
        "orig_loss": orig + rng.uniform(-0.2, 0.2, N), "init_loss": init_loss,
        "rank_correlation": rng.uniform(0.2, 0.6, N),
    }


# variant -> (gradient rate, uniform rate, original loss): one scenario of the issue each.
SCENARIOS = {
    "base": (0.2, 0.1, 6.0),
    "identity": (0.08, 0.05, 6.0),  # planted: slower under every attack and criterion
    "bert_like": (0.2, 0.1, 6.0),  # no effect
    "inv_first": (0.08, 0.1, 6.0),  # slower only when GCG follows the gradient
    "identity_grad": (0.2, 0.1, 3.0),  # same loss drop per step, a bar 3 nats lower
}
EXPECTED = {"identity": SUPPORTED, "bert_like": UNDETERMINED, "inv_first": GRADIENT_MASKING,
            "identity_grad": MOVING_BAR}


@pytest.fixture(scope="module")
def run_files(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("claims")
    rng = np.random.default_rng(7)
    inputs = []
    data = root / "results" / "data"
    data.mkdir(parents=True)
    np.save(data / "test_stories.npy", STORIES.astype(np.int64))
    inputs.append(data / "test_stories.npy")
    transfer = []
    for v, (gradient, uniform, orig) in SCENARIOS.items():
        folder = root / "results" / "metrics" / v
        folder.mkdir(parents=True)
        np.savez(folder / "gcg_curves.npz", **curves(rng, gradient, orig))
        np.savez(folder / "gcg_uniform_curves.npz", **curves(rng, uniform, orig))
        ce = rng.normal(4.0 + (0.5 if v == "bert_like" else 0.0), 0.1, N)  # Bert-like predicts 0.5 nats worse
        top1 = rng.integers(0, 5, N) if v != "identity" else rng.integers(5, 10, N)  # g adds hits for Identity only
        windows = {"window": np.arange(N), "forward_ce_sum": ce * 15, "forward_rows": np.full(N, 15)}
        for protocol in ("identity", "bert_like", "inv_first"):
            windows.update({f"{protocol}_ce_sum": np.ones(N), f"{protocol}_rows": np.full(N, 10),
                            f"{protocol}_top1": top1, f"{protocol}_top1_without_g": np.full(N, 2)})
        pd.DataFrame(windows).to_csv(folder / "eval_windows.csv", index=False)
        inputs += [folder / "gcg_curves.npz", folder / "gcg_uniform_curves.npz", folder / "eval_windows.csv"]
        for source in SCENARIOS:
            own = source == v
            transfer.append(pd.DataFrame({"source": source, "target": v, "sample": np.arange(N), "orig_loss": 5.0,
                                          "attack_loss": 4.0 if own else 6.0, "success": own}))
    for v in SCENARIOS:  # validation g curves: flat, except Inv-First's g^2/eps, which triples in the second half
        growth = 3.0 if v == "inv_first" else 1.0
        log = pd.DataFrame({"step": [10, 20, 30, 40], "val_loss": 1.0, "val_inv_ce": 6.0,
                            "val_inv_ce_without_g": 6.1, "val_g_sq_over_eps": [0.1, 0.1, 0.2, 0.1 * growth]})
        folder = root / "results" / "models" / v
        folder.mkdir(parents=True)
        log.to_csv(folder / "train_log.csv", index=False)
        inputs.append(folder / "train_log.csv")
    pd.concat(transfer).to_csv(root / "results" / "metrics" / "transfer.csv", index=False)
    inputs.append(root / "results" / "metrics" / "transfer.csv")
    for method, f1 in (("bigram", 0.2), ("identity", 0.5), ("bert_like", 0.2)):
        folder = root / "results" / "metrics" / method
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"sample": np.arange(0, N, 3), "f1": f1 + rng.normal(0, 0.01, N // 3)}).to_csv(
            folder / "inversion.csv", index=False)
        inputs.append(folder / "inversion.csv")
    return root, inputs


def claims_table(root: Path, inputs: list[Path], name: str = "claims") -> pd.DataFrame:
    cfg = {"variants": list(SCENARIOS), "gcg": {"steps": STEPS, "iterations": BUDGETS}}
    (root / "cfg.json").write_text(json.dumps(cfg))
    stem = root / "results" / "tables" / name
    assert main(["table", name, "--inputs", *map(str, inputs), "--out-stem", str(stem),
                 "--config", str(root / "cfg.json")]) == 0
    return pd.read_csv(stem.with_suffix(".csv"))


def verdict(table: pd.DataFrame, claim: str, model: str) -> str:
    rows = table[(table["Claim"] == claim) & (table["Model"] == model)]
    assert len(rows) == 1, (claim, model)
    return rows["Verdict"].iloc[0]


def test_four_planted_scenarios_get_their_verdicts(run_files):
    """Planted effect: supported; no effect: undetermined; effect only with gradient candidates: gradient masking;
    effect only against the model's own (lower) bar: moving bar."""
    root, inputs = run_files
    table = claims_table(root, inputs)
    names = {"identity": "Identity", "bert_like": "Bert-like", "inv_first": "Inv-First", "identity_grad": "Identity (grad only)"}
    got = {v: verdict(table, "ILM resists GCG, every check", names[v]) for v in EXPECTED}
    assert got == EXPECTED
    # The gradient rows alone: every delayed variant is "supported" there; the checks make the difference.
    assert verdict(table, "ILM resists GCG", "Inv-First") == SUPPORTED
    assert verdict(table, "... also under gradient-free (uniform) candidates", "Inv-First") == UNDETERMINED
    assert verdict(table, "... also under the fluency-independent criterion", "Identity (grad only)") == UNDETERMINED
    assert verdict(table, "ILM keeps fluency", "Bert-like") == "contradicted"  # 0.5 nats worse, margin 0.05
    assert verdict(table, "g lets the model recover its input", "Identity") == SUPPORTED
    assert verdict(table, "Inversion beats the reverse bigram", "Identity") == SUPPORTED
    assert (table["Seeds"] == 1).all() and set(table["Stories"]) <= {12, 16}


def test_fluency_and_recovery_numbers_match_a_direct_computation(run_files):
    """The fluency effect is the mean per-window CE difference; recovery the mean per-window top-1 gain in points;
    both intervals resample the 12 stories (checked by re-drawing them)."""
    root, inputs = run_files
    table = claims_table(root, inputs)
    base = pd.read_csv(root / "results" / "metrics" / "base" / "eval_windows.csv")
    ident = pd.read_csv(root / "results" / "metrics" / "identity" / "eval_windows.csv")
    diffs = (ident.forward_ce_sum / ident.forward_rows - base.forward_ce_sum / base.forward_rows).to_numpy()
    row = table[(table.Claim == "ILM keeps fluency") & (table.Model == "Identity")].iloc[0]
    assert row["Effect"] == pytest.approx(diffs.mean(), rel=1e-12)
    # independent story bootstrap: the same generator calls as ilm.stats (integers over stories, then totals)
    totals = np.bincount(STORIES, weights=diffs)
    idx = np.random.default_rng(0).integers(0, 12, size=(1000, 12))
    means = np.sort(totals[idx].sum(1) / np.bincount(STORIES)[idx].sum(1))
    assert (row["Low"], row["High"]) == pytest.approx((means[24], means[974]), rel=1e-12)
    gain = 100 * (ident.identity_top1 - ident.identity_top1_without_g) / ident.identity_rows
    rec = table[(table.Claim == "g lets the model recover its input") & (table.Model == "Identity")].iloc[0]
    assert rec["Effect"] == pytest.approx(gain.mean(), rel=1e-12)


def test_seeds_must_all_agree(run_files, tmp_path):
    """A second seed whose Identity shows no delay turns Identity's verdict to undetermined; others keep theirs."""
    root, inputs = run_files
    rng = np.random.default_rng(11)
    other = []
    for path in inputs:
        rel = path.relative_to(root / "results")
        if rel.parts[0] != "metrics" or path.name == "inversion.csv":
            continue
        target = tmp_path / "results" / "studies" / "seeds" / "seed=2" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.name == "identity" and path.name == "gcg_curves.npz":
            np.savez(target, **curves(rng, 0.2))  # seed 2: no delay
        else:
            target.write_bytes(path.read_bytes())
        other.append(target)
    table = claims_table(tmp_path, inputs + other, "claims")
    resist = table[table.Claim == "ILM resists GCG"].set_index("Model")
    assert (resist["Seeds"] == 2).all()
    assert resist.loc["Identity", "Verdict"] == UNDETERMINED
    assert resist.loc["Inv-First", "Verdict"] == SUPPORTED
    assert len(resist.loc["Identity", "Per seed"].split(";")) == 2


def test_sign_flip_p_matches_exact_enumeration():
    """With 6 stories the Monte-Carlo sign-flip p is within 0.01 of the exact p over all 64 sign patterns."""
    clusters = np.repeat(np.arange(6), 2)
    diffs = np.array([0.5, 0.1, 0.3, -0.2, 0.4, 0.4, -0.1, 0.0, 0.6, 0.2, 0.3, 0.1])
    totals = np.bincount(clusters, weights=diffs)
    observed = abs(totals.sum())
    exact = np.mean([abs(np.dot(s, totals)) >= observed - 1e-12 for s in itertools.product([-1, 1], repeat=6)])
    assert sign_flip_p(diffs, clusters, 20000, 0) == pytest.approx(exact, abs=0.01)
    assert sign_flip_p(np.zeros(12), clusters, 100, 0) == 1.0


def test_gradient_diagnostic_difference_is_paired_on_windows(run_files):
    """gcg_robustness_models: each variant's rank correlation minus the Baseline's, window by window, averaged."""
    root, inputs = run_files
    claims_table(root, inputs, "gcg_robustness")
    models = pd.read_csv(root / "results" / "tables" / "gcg_robustness_models.csv").set_index("Model")
    with np.load(root / "results" / "metrics" / "base" / "gcg_uniform_curves.npz") as b, \
            np.load(root / "results" / "metrics" / "inv_first" / "gcg_uniform_curves.npz") as v:
        expected = float(np.mean(v["rank_correlation"] - b["rank_correlation"]))
        mean = float(np.mean(v["rank_correlation"]))
    row = models.loc["Inv-First"]
    assert row["vs Baseline"] == pytest.approx(expected, rel=1e-12)
    assert row["Gradient rank correlation (uniform candidates)"] == pytest.approx(mean, rel=1e-12)
    assert row["vs Baseline low"] <= row["vs Baseline"] <= row["vs Baseline high"]
    assert np.isnan(models.loc["Baseline", "vs Baseline"])
    assert models.loc["Baseline", "Transfer to Baseline (%)"] == 100.0  # its own attacks (the fixture's transfer rows)
    assert models.loc["Baseline", "Transfer to Identity (%)"] == 0.0


def test_g_still_growing_rule():
    """g^2/eps or the CE gap growing more than the ratio between mid-training and the end: still growing, with why."""
    from ilm.tables.claims import g_still_growing

    def log(g2, gap):
        return pd.DataFrame({"step": [0, 10, 20, 30, 40], "val_inv_ce": 6.0, "val_inv_ce_without_g": [6.0 + x for x in gap],
                             "val_g_sq_over_eps": g2})

    assert g_still_growing(log([1, 1, 1, 1, 1.2], [0.1] * 5), 1.5) is None  # flat: x1.2
    assert g_still_growing(log([1, 1, 1, 1, 2.0], [0.1] * 5), 1.5) == "g still growing from step 20 to 40 (g^2/eps x2)"
    assert "CE gap x3" in g_still_growing(log([1] * 5, [0.1, 0.1, 0.1, 0.2, 0.3]), 1.5)
    assert g_still_growing(log([1, 1, 1, 1, 2.0], [0.1] * 5), 2.5) is None  # the ratio is the setting
    assert g_still_growing(log([1, 1, 1, 1, 2.0], [0.1] * 5).iloc[:1], 1.5) is None  # one validation: cannot tell


def test_recovery_row_says_when_g_is_still_growing(run_files):
    """Inv-First's g curves still grow: its recovery row says so and cannot be 'contradicted'; flat ones say nothing."""
    root, inputs = run_files
    table = claims_table(root, inputs)
    rec = table[table.Claim == "g lets the model recover its input"].set_index("Model")
    assert "g still growing from step 20 to 40 (g^2/eps x3)" in rec.loc["Inv-First", "Test"]
    assert "still growing" not in rec.loc["Identity", "Test"] and rec.loc["Identity", "Verdict"] == SUPPORTED
    assert rec.loc["Inv-First", "Verdict"] == UNDETERMINED
