"""Table `forward_quality` (rule tabulate_forward_quality): test CE, perplexity and next-token top-k per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.names import order_variants, variant_name
from ilm.stats import StatisticsConfig, level_label
from ilm.tables.common import read_json_by_variant, split_inputs, story_interval, write_table


def topk_keys(metrics: Mapping) -> list[str]:
    """The `top{k}` keys of a metrics dict, by increasing k."""
    return sorted((k for k in metrics if k.startswith("top") and k[3:].isdigit()), key=lambda k: int(k[3:]))


def build(paths: Sequence[Path], config: Mapping) -> pd.DataFrame:
    """One row per variant (paper order): test CE with its story-bootstrap interval, perplexity, next-token top-k
    accuracy (%) and tokens scored."""
    metrics, windows, stories = split_inputs(paths, "forward.json")
    by_variant = read_json_by_variant(metrics)
    rows = []
    for variant in order_variants(by_variant):
        m, w = by_variant[variant], windows[variant]
        row = {"Model": variant_name(variant), "CE": m["ce"]}
        low, high = story_interval(w["forward_ce_sum"], w["forward_rows"], w, stories, config)
        row.update({"CE low": low, "CE high": high, "PPL": m["perplexity"]})
        row.update({f"Top-{k[3:]} (%)": 100.0 * m[k] for k in topk_keys(m)})
        row["Tokens"] = int(m["tokens"])
        rows.append(row)
    return pd.DataFrame(rows)


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer=None) -> None:
    level = level_label(StatisticsConfig.from_dict(config["statistics"]).confidence)
    write_table(
        build(inputs, config),
        out_stem,
        digits=3,
        caption=(
            f"Forward quality on the test split: next-token cross-entropy with its {level} bootstrap interval "
            "(stories resampled: their windows overlap), perplexity and top-k accuracy."
        ),
        label="tab:forward-quality",
    )
