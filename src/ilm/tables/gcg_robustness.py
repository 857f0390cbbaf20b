"""Table `gcg_robustness` (rule tabulate_gcg_robustness): the whole GCG curve, paired, under every attack.

For each variant against the Baseline on the same windows, and for each attack (gradient GCG,
the uniform random search, and gradient GCG under the fluency-independent criterion), one row per
budget of gcg.iterations: both success rates, the discordant pairs (Baseline only, variant only),
the exact McNemar p and its Holm adjustment across budgets and variants, and the delay: the paired
difference of restricted mean time to success up to that budget (steps; a delay that stops growing
with the budget has saturated). Rows of the primary budget are marked. Then, per model: the gradient diagnostic (mean rank correlation between the
actual loss change of uniformly drawn candidates and its first-order prediction from the
gradient) and the transfer success matrix (rows: the model attacked to find the prefix; columns:
the model scored). The numbers come from ilm.tables.claims' analysis, so the two tables agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ilm import robustness as rb
from ilm.names import order_variants, variant_name
from ilm.tables.claims import BASE, _drop_sentence, analyse_run, gather
from ilm.tables.common import write_table
from ilm.transfer import success_matrix

ATTACKS = (("gradient", "gradient GCG"), ("uniform", "uniform random search"), ("drop", "GCG, fluency-free"))


def budget_rows(analyses: Mapping[str, Mapping[str, rb.PairAnalysis]]) -> list[dict]:
    """One row per (attack, variant, budget); Holm across budgets and variants within each attack."""
    rows = []
    for key, label in ATTACKS:
        family = analyses[key]
        if not family:
            continue
        names = order_variants(family)
        adjusted = rb.holm(np.stack([family[n].p for n in names]))  # (V, B)
        for i, name in enumerate(names):
            a = family[name]
            for j, budget in enumerate(a.budgets):
                rows.append({
                    "Attack": label, "Variant": variant_name(name), "Budget": int(budget),
                    "Primary": "yes" if budget == a.primary_budget else "",
                    "Baseline success (%)": 100 * float(a.success_rate_base[j]),
                    "Variant success (%)": 100 * float(a.success_rate_variant[j]),
                    "Baseline only": int(a.base_only[j]), "Variant only": int(a.variant_only[j]),
                    "p": float(a.p[j]), "p (Holm)": float(adjusted[i, j]),
                    "Delay up to budget (steps)": a.rmst_by_budget[j].estimate,
                    "Delay low": a.rmst_by_budget[j].low, "Delay high": a.rmst_by_budget[j].high, "n": a.n,
                })
    return rows


def model_rows(attacks, transfer: Optional[pd.DataFrame], models: Sequence[str]) -> list[dict]:
    """Per model: the gradient diagnostic and its transfer row (success of its attacks on every model)."""
    matrix = success_matrix(transfer, models) if transfer is not None else None
    rows = []
    for m in models:
        corr, n = attacks.rank_correlation.get(m, (float("nan"), 0))
        diff = attacks.rank_correlation_difference.get(m)
        row = {"Model": variant_name(m), "Gradient rank correlation (uniform candidates)": corr, "Windows": n,
               "vs Baseline": diff.estimate if diff else float("nan"),
               "vs Baseline low": diff.low if diff else float("nan"),
               "vs Baseline high": diff.high if diff else float("nan")}
        if matrix is not None:
            row.update({f"Transfer to {variant_name(t)} (%)": 100 * float(matrix.loc[m, t]) for t in models})
        rows.append(row)
    return rows


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer: Optional[Path] = None) -> pd.DataFrame:
    """gcg_robustness.{csv,md,tex} (per budget) and gcg_robustness_models.{csv,md,tex} (per model) of the main run."""
    gathered = gather(inputs)
    run = gathered.runs[0]
    attacks = analyse_run(run, gathered.stories, config, None)
    frame = pd.DataFrame(budget_rows({"gradient": attacks.gradient, "uniform": attacks.uniform,
                                      "drop": attacks.drop}))
    write_table(
        frame, out_stem, digits=3, label="tab:gcg_robustness",
        caption=(f"GCG success at every budget, each variant against the Baseline on the same windows, exact McNemar "
                 f"p Holm-adjusted across budgets and variants per attack. {_drop_sentence(attacks.drop_nats)} "
                 f"Primary: the first budget where the "
                 f"Baseline reaches {100 * config['claims']['primary_rate']:g} % success."),
    )
    models = order_variants(set(run.curves) | {BASE})
    transfer = pd.read_csv(run.transfer) if run.transfer is not None else None
    stem = Path(out_stem)
    write_table(
        pd.DataFrame(model_rows(attacks, transfer, models)), stem.with_name(f"{stem.name}_models"), digits=3,
        label="tab:gcg_robustness_models",
        caption=("Per model: Spearman correlation between the actual loss change of uniformly drawn GCG candidates and "
                 "its first-order prediction from the gradient (low: an uninformative gradient), its paired "
                 "difference with the Baseline on the same windows (story bootstrap), and the success of "
                 "the model's own GCG attacks (rows) scored on every model (columns)."),
    )
    return frame
