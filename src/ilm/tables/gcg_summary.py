"""Table `gcg_summary` (rule tabulate_gcg_summary): GCG success and losses per variant (docs/method.md §4.4).

Uncertainty (ilm.stats, levels from the `statistics:` config section): a Wilson interval on each
success rate, percentile bootstrap intervals over samples on the mean attack and delta losses,
and, since every variant is attacked on the same samples (results/gcg/samples.json), an exact
McNemar test of each variant's successes against the Baseline's on the samples both were attacked on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.names import order_variants, variant_name
from ilm.stats import (
    StatisticsConfig,
    bootstrap_interval,
    level_label,
    mcnemar_exact,
    wilson_interval,
)
from ilm.tables.common import read_csvs, write_table

log = logging.getLogger("ilm.tables.gcg_summary")

BASE = "base"  # the reference of the paired test
PAIRED_COLUMNS = ("Paired n", "Base only", "Variant only", "McNemar p")


def _subset_mean(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].mean()) if len(frame) else float("nan")


def _by_variant(per_sample: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{variant: its rows}; a sample listed twice for one variant is refused (the pairing needs one row each)."""
    groups = {}
    for variant, g in per_sample.groupby("variant"):
        again = sorted(g.loc[g["sample"].duplicated(), "sample"].unique().tolist())
        if again:
            raise ValueError(
                f"the per-sample GCG file of {variant} lists sample(s) {again[:10]} more than once; "
                "run `ilm gcg-summary` for that variant again"
            )
        groups[variant] = g
    return groups


def paired_test(base: pd.DataFrame, variant: pd.DataFrame) -> dict[str, float | int]:
    """Exact McNemar test of the attack successes of `variant` against `base` on the samples both hold.

    "Base only" (b): samples where the attack on the Baseline succeeded and the attack on the
    variant failed; "Variant only" (c): the reverse. Raises ValueError when no sample is shared.
    """
    both = base[["sample", "success"]].merge(variant[["sample", "success"]], on="sample", suffixes=("_base", "_var"))
    if both.empty:
        raise ValueError(
            f"the Baseline and {variant_name(str(variant['variant'].iloc[0]))} share no attacked sample; "
            "attack both with the same gcg.fraction/gcg.count/gcg.sample_seed (results/gcg/samples.json)"
        )
    on_base, on_variant = both["success_base"].astype(bool), both["success_var"].astype(bool)
    b, c = int((on_base & ~on_variant).sum()), int((~on_base & on_variant).sum())
    return {"Paired n": len(both), "Base only": b, "Variant only": c, "McNemar p": mcnemar_exact(b, c)}


def build(per_sample: pd.DataFrame, statistics: StatisticsConfig) -> pd.DataFrame:
    """One row per variant: success rate with its Wilson interval, the paired test against the Baseline
    (when the Baseline is among the inputs), and mean losses / KL overall, on successes and on failures
    (§4.4), the overall attack and delta loss with bootstrap intervals over samples."""
    level = level_label(statistics.confidence)
    boot = {"confidence": statistics.confidence, "resamples": statistics.bootstrap_resamples, "seed": statistics.seed}
    groups = _by_variant(per_sample)
    rows = []
    for variant in order_variants(groups):
        g = groups[variant]
        success = g["success"].astype(bool)
        low, high = wilson_interval(int(success.sum()), len(g), statistics.confidence)
        row: dict = {
            "Model": variant_name(variant),
            "Samples": len(g),
            "Success (%)": 100.0 * float(success.mean()),
            f"Success {level} low": 100.0 * low,
            f"Success {level} high": 100.0 * high,
        }
        if BASE in groups:
            row.update(dict.fromkeys(PAIRED_COLUMNS, pd.NA) if variant == BASE else paired_test(groups[BASE], g))
        for subset, frame in (("", g), (" succ.", g[success]), (" fail", g[~success])):
            row[f"Orig. loss{subset}"] = _subset_mean(frame, "orig_loss")
            for name, column in (("Attack loss", "attack_loss"), ("Delta loss", "delta_loss")):
                row[f"{name}{subset}"] = _subset_mean(frame, column)
                if not subset:
                    interval = bootstrap_interval(frame[column].to_numpy(dtype=float), **boot)
                    row[f"{name} {level} low"], row[f"{name} {level} high"] = interval
        for subset, frame in (("", g), (" succ.", g[success]), (" fail", g[~success])):
            row[f"KL{subset}"] = _subset_mean(frame, "kl")
        rows.append(row)
    table = pd.DataFrame(rows)
    if BASE in groups:  # nullable dtypes: the Baseline's own cells stay empty, the counts stay integers
        table = table.astype({"Paired n": "Int64", "Base only": "Int64", "Variant only": "Int64", "McNemar p": "Float64"})
    return table


def _caption(per_sample: pd.DataFrame, steps: int, statistics: StatisticsConfig) -> str:
    """The caption: sample count, interval methods and the paired test, with any pairing on fewer samples."""
    groups = _by_variant(per_sample)
    level = level_label(statistics.confidence)
    counts = sorted({len(g) for g in groups.values()})
    samples = f"{counts[0]} attacked samples per variant" if len(counts) == 1 else "the attacked samples (column Samples)"
    text = (
        f"GCG prefix attacks after {steps} iterations on {samples}: success rate (attack CE <= original CE on the "
        f"target) with its {level} Wilson interval; mean target CE of the original and attack prefixes and their "
        "difference (delta), the attack and delta means with "
        f"{level} percentile bootstrap intervals over samples ({statistics.bootstrap_resamples} resamples, "
        f"seed {statistics.seed}); and KL(original || attack), overall and on successful and failed attacks."
    )
    if BASE in groups:
        text += (
            " Paired test against the Baseline on the samples both were attacked on (Paired n): attacks that "
            "succeeded only on the Baseline (Base only) or only on the variant (Variant only), and the two-sided "
            "exact McNemar p-value."
        )
        base_samples = set(groups[BASE]["sample"])
        unequal = [variant_name(v) for v, g in groups.items() if set(g["sample"]) != base_samples]
        if unequal:
            text += f" {', '.join(unequal)} and the Baseline were attacked on different samples: paired on the shared ones."
            log.warning("attacked samples differ from the Baseline's for %s: paired on the shared samples", unequal)
    return text


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer=None) -> None:
    """The main robustness table: out_stem.{csv,md,tex}, one row per variant."""
    steps = int(config["gcg"]["steps"])
    statistics = StatisticsConfig.from_dict(config["statistics"])
    per_sample = read_csvs(inputs, "per-sample GCG file")
    write_table(
        build(per_sample, statistics),
        out_stem,
        digits=3,
        caption=_caption(per_sample, steps, statistics),
        label="tab:gcg-summary",
    )
