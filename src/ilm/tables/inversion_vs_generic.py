"""Table `inversion_vs_generic` (rule tabulate_inversion_vs_generic): does the beam search beat generic inverters?

Per variant, generic inverter (ilm.generic_invert) and metric (token F1, judge similarity of the
prefixes): the samples both methods inverted, each method's mean, the mean paired difference
beam search minus generic inverter, its percentile bootstrap interval resampling stories (the test
windows of one story overlap; ilm.stats.bootstrap_interval), and a verdict: "beam search better"
when the interval lies above 0, "generic better" below 0, "no difference shown" when it holds 0.
The caption states the forward budget both searched within (ilm.forward_budget).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ilm.forward_budget import beam_search_forwards, generic_budget, steps_and_forwards
from ilm.io import write_text
from ilm.names import GENERIC_INVERTERS, GENERIC_NAMES, generic_method, order_variants, variant_name
from ilm.stats import StatisticsConfig, bootstrap_interval, level_label
from ilm.tables.common import to_markdown, write_html
from ilm.tables.inversion import read_frames

# (column of the per-sample files, name in the table)
METRICS = (("f1", "Token F1"), ("similarity_prefix", "Similarity prefix"))
BEAM_BETTER, GENERIC_BETTER, NO_DIFFERENCE = "beam search better", "generic better", "no difference shown"


def verdict(low: float, high: float) -> str:
    """The verdict of a paired interval of beam search minus generic inverter."""
    if low > 0:
        return BEAM_BETTER
    if high < 0:
        return GENERIC_BETTER
    return NO_DIFFERENCE


def compare(beam: pd.DataFrame, generic: pd.DataFrame, column: str, stories: np.ndarray,
            stats: StatisticsConfig) -> dict:
    """Paired comparison of `column` on the samples both frames hold (pairs with a missing value left out)."""
    both = beam[["sample", column]].merge(generic[["sample", column]], on="sample", suffixes=("_beam", "_generic"))
    both = both[np.isfinite(both[f"{column}_beam"]) & np.isfinite(both[f"{column}_generic"])]
    diffs = (both[f"{column}_beam"] - both[f"{column}_generic"]).to_numpy(dtype=float)  # (n,)
    clusters = stories[both["sample"].to_numpy()]
    low, high = bootstrap_interval(diffs, clusters=clusters, confidence=stats.confidence,
                                   resamples=stats.bootstrap_resamples, seed=stats.seed)
    return {
        "Samples": int(diffs.size),
        "Stories": int(np.unique(clusters).size),
        "Beam mean": float(both[f"{column}_beam"].mean()),
        "Generic mean": float(both[f"{column}_generic"].mean()),
        "Difference": float(diffs.mean()) if diffs.size else float("nan"),
        "Low": low,
        "High": high,
        "Verdict": verdict(low, high),
    }


def build(frames: Mapping[str, pd.DataFrame], stories: np.ndarray, config: Mapping) -> pd.DataFrame:
    """One row per (variant, generic inverter, metric) where both the beam search and the inverter have results."""
    stats = StatisticsConfig.from_dict(config["statistics"])
    rows = []
    for variant in order_variants([m for m in frames if "+" not in m]):
        for inverter in GENERIC_INVERTERS:
            method = generic_method(variant, inverter)
            if method not in frames:
                continue
            beam, generic = frames[variant], frames[method]
            if set(beam["sample"]) != set(generic["sample"]):
                raise ValueError(f"{method} and {variant} inverted different test windows; rerun both inversions")
            for column, name in METRICS:
                if column not in beam or column not in generic:
                    raise ValueError(f"{column} is missing for {variant} or {method}; pass inversion_judged.csv of both")
                rows.append({"Variant": variant_name(variant), "Inverter": GENERIC_NAMES[inverter], "Metric": name,
                             **compare(beam, generic, column, stories, stats)})
    if not rows:
        raise ValueError("no variant has both a beam-search and a generic-inverter inversion among the inputs")
    return pd.DataFrame(rows)


def caption(config: Mapping) -> str:
    inv = config["invert"]
    search = beam_search_forwards(inv["prefix_length"], inv["beam"], inv["top_k"])
    gen = inv["generic"]
    gcg_steps, gcg_spent = steps_and_forwards("gcg", inv)
    relaxed_steps, relaxed_spent = steps_and_forwards("relaxed", inv)
    stats = StatisticsConfig.from_dict(config["statistics"])
    return (
        f"Beam search against generic inverters on the same test windows, suffix and model. Forward budget per "
        f"sample in forward-equivalents (a sequence forward 1, its backward 2 more): the beam search spends {search} "
        f"(prefix {inv['prefix_length']}, beam {inv['beam']}, top-k {inv['top_k']}); each generic inverter gets "
        f"{generic_budget(inv)} ({gen['budget_ratio']:g} x that) and spends whole steps of it: GCG {gcg_steps} steps "
        f"of 3 + {gen['gcg_search_width']} ({gcg_spent}), relaxed {relaxed_steps} steps of 4 x "
        f"{gen['relaxed_restarts']} restarts ({relaxed_spent}). Difference = beam search minus generic inverter, "
        f"mean over paired samples, with a {level_label(stats.confidence)} percentile bootstrap interval that "
        f"resamples stories ({stats.bootstrap_resamples} resamples); verdict from the interval: above 0 "
        f"\"{BEAM_BETTER}\", below 0 \"{GENERIC_BETTER}\", containing 0 \"{NO_DIFFERENCE}\"."
    )


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer=None) -> None:
    """results/tables/inversion_vs_generic.{csv,md,html} from inversion(_judged).csv files and test_stories.npy."""
    paths = [Path(p) for p in inputs]
    stories = [p for p in paths if p.name.endswith("_stories.npy")]
    if len(stories) != 1:
        raise ValueError("table inversion_vs_generic needs results/data/test_stories.npy once: its intervals resample stories")
    table = build(read_frames([p for p in paths if p.suffix == ".csv"]), np.load(stories[0]), config)
    stem = Path(out_stem)
    text = caption(config)
    write_text(stem.with_suffix(".csv"), table.to_csv(index=False))
    write_text(stem.with_suffix(".md"), to_markdown(table) + "\n" + text + "\n")
    write_html(table, stem, text)
