"""Table `inverse_accuracy` (rule tabulate_inverse_accuracy): inverse top-k under each protocol, per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.names import PROTOCOLS, order_variants, variant_name
from ilm.stats import StatisticsConfig, level_label
from ilm.tables.common import read_json_by_variant, split_inputs, story_interval, write_table
from ilm.tables.forward_quality import topk_keys


def build(paths: Sequence[Path], config: Mapping) -> pd.DataFrame:
    """One row per variant (paper order): under each of the three protocols, inverse top-k accuracy (%), the
    top-1 accuracy without g (x alone, or 0 for `*_grad`), and what g adds to it (points); top-1 and what g
    adds carry story-bootstrap intervals (paired: with and without g on the same rows)."""
    metrics, windows, stories = split_inputs(paths, "inverse.json")
    by_variant = read_json_by_variant(metrics)
    rows = []
    for variant in order_variants(by_variant):
        m, w = by_variant[variant], windows[variant]
        row = {"Model": variant_name(variant)}
        for protocol in PROTOCOLS:
            if protocol not in m or "without_g" not in m[protocol]:
                raise ValueError(
                    f"inverse metrics of {variant} lack the {protocol!r} protocol or its accuracy without g; "
                    "rerun `ilm evaluate` for it"
                )
            name = variant_name(protocol)
            n = w[f"{protocol}_rows"]
            for k in topk_keys(m[protocol]):
                row[f"{name} top-{k[3:]} (%)"] = 100.0 * m[protocol][k]
                if k == "top1":
                    low, high = story_interval(w[f"{protocol}_top1"], n, w, stories, config)
                    row.update({f"{name} top-1 low": 100.0 * low, f"{name} top-1 high": 100.0 * high})
            row[f"{name} top-1 without g (%)"] = 100.0 * m[protocol]["without_g"]["top1"]
            row[f"{name} top-1 g adds (pts)"] = 100.0 * (m[protocol]["top1"] - m[protocol]["without_g"]["top1"])
            gain = w[f"{protocol}_top1"] - w[f"{protocol}_top1_without_g"]
            low, high = story_interval(gain, n, w, stories, config)
            row.update({f"{name} g adds low": 100.0 * low, f"{name} g adds high": 100.0 * high})
        rows.append(row)
    return pd.DataFrame(rows)


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer=None) -> None:
    level = level_label(StatisticsConfig.from_dict(config["statistics"]).confidence)
    write_table(
        build(inputs, config),
        out_stem,
        digits=2,
        caption=(
            "Inverse top-k accuracy on the test split under the three inversion protocols, the top-1 accuracy "
            "of the same rows without g (v = x, or 0 for the gradient-only variants), and what g adds; top-1 "
            f"and what g adds with {level} bootstrap intervals that resample stories."
        ),
        label="tab:inverse-accuracy",
    )
