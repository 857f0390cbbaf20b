"""Table `gcg_summary` (rule tabulate_gcg_summary): GCG success and losses per variant (docs/method.md §4.4)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.gcg_summary import wilson_interval
from ilm.names import order_variants, variant_name
from ilm.tables.common import read_csvs, write_table


def _subset_mean(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].mean()) if len(frame) else float("nan")


def build(per_sample: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: success rate with its 95 % Wilson interval, and mean losses / KL overall,
    on successes and on failures (§4.4)."""
    rows = []
    groups = {v: g for v, g in per_sample.groupby("variant")}
    for variant in order_variants(groups):
        g = groups[variant]
        success = g["success"].astype(bool)
        low, high = wilson_interval(int(success.sum()), len(g))
        row = {
            "Model": variant_name(variant),
            "Samples": len(g),
            "Success (%)": 100.0 * float(success.mean()),
            "Success 95% low": 100.0 * low,
            "Success 95% high": 100.0 * high,
        }
        for subset, frame in (("", g), (" succ.", g[success]), (" fail", g[~success])):
            row[f"Orig. loss{subset}"] = _subset_mean(frame, "orig_loss")
            row[f"Attack loss{subset}"] = _subset_mean(frame, "attack_loss")
            row[f"Delta loss{subset}"] = _subset_mean(frame, "delta_loss")
        for subset, frame in (("", g), (" succ.", g[success]), (" fail", g[~success])):
            row[f"KL{subset}"] = _subset_mean(frame, "kl")
        rows.append(row)
    return pd.DataFrame(rows)


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer=None) -> None:
    """The main robustness table: out_stem.{csv,md,tex}, one row per variant."""
    steps = int(config["gcg"]["steps"])
    write_table(
        build(read_csvs(inputs, "per-sample GCG file")),
        out_stem,
        digits=3,
        caption=(
            f"GCG prefix attacks after {steps} iterations: success rate (attack CE <= original CE on the target) "
            "with its 95% Wilson interval, mean target CE of the original and attack prefixes and their difference, "
            "and KL(original || attack), overall and on successful and failed attacks."
        ),
        label="tab:gcg-summary",
    )
