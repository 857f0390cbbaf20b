"""Table `forward_quality` (rule tabulate_forward_quality): test CE, perplexity and next-token top-k per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.names import order_variants, variant_name
from ilm.tables.common import read_json_by_variant, write_table


def topk_keys(metrics: Mapping) -> list[str]:
    """The `top{k}` keys of a metrics dict, by increasing k."""
    return sorted((k for k in metrics if k.startswith("top") and k[3:].isdigit()), key=lambda k: int(k[3:]))


def build(paths: Sequence[Path]) -> pd.DataFrame:
    """One row per variant (paper order): test CE, perplexity, next-token top-k accuracy (%) and tokens scored."""
    by_variant = read_json_by_variant(paths)
    rows = []
    for variant in order_variants(by_variant):
        m = by_variant[variant]
        row = {"Model": variant_name(variant), "CE": m["ce"]}
        if "ce_low" not in m:
            raise ValueError(f"forward metrics of {variant} lack the CE interval (ce_low); rerun `ilm evaluate` for it")
        row.update({"CE low": m["ce_low"], "CE high": m["ce_high"], "PPL": m["perplexity"]})
        row.update({f"Top-{k[3:]} (%)": 100.0 * m[k] for k in topk_keys(m)})
        row["Tokens"] = int(m["tokens"])
        rows.append(row)
    return pd.DataFrame(rows)


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer=None) -> None:
    write_table(
        build(inputs),
        out_stem,
        digits=3,
        caption=(
            "Forward quality on the test split: next-token cross-entropy with its bootstrap interval over test "
            "windows (statistics.confidence), perplexity and top-k accuracy."
        ),
        label="tab:forward-quality",
    )
