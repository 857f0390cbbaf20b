"""The paper's tables and figures, built from small metric files only (no model, no GPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ilm.tables import order_variants, variant_name, write_table

INVERSE_PROTOCOLS = ("identity", "bert_like", "inv_first")


def _variant_of(metric_file: Path) -> str:
    """Metric files live at results/metrics/{variant}/<name>."""
    return Path(metric_file).parent.name


def _read_json_by_variant(paths: Sequence[Path]) -> dict[str, dict]:
    out = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ValueError(f"metric file {path} does not exist; run `ilm evaluate` for that variant first")
        out[_variant_of(path)] = json.loads(path.read_text())
    return out


def _topk_keys(metrics: dict) -> list[str]:
    return sorted((k for k in metrics if k.startswith("top") and k[3:].isdigit()), key=lambda k: int(k[3:]))


def forward_quality_table(paths: Sequence[Path]) -> pd.DataFrame:
    """One row per variant: test CE, perplexity and next-token top-k accuracy (%)."""
    by_variant = _read_json_by_variant(paths)
    rows = []
    for variant in order_variants(by_variant):
        m = by_variant[variant]
        row = {"Model": variant_name(variant), "CE": m["ce"], "PPL": m["perplexity"]}
        row.update({f"Top-{k[3:]} (%)": 100.0 * m[k] for k in _topk_keys(m)})
        row["Tokens"] = int(m["tokens"])
        rows.append(row)
    return pd.DataFrame(rows)


def inverse_accuracy_table(paths: Sequence[Path]) -> pd.DataFrame:
    """One row per variant: inverse top-k accuracy (%) under each protocol."""
    by_variant = _read_json_by_variant(paths)
    rows = []
    for variant in order_variants(by_variant):
        m = by_variant[variant]
        row = {"Model": variant_name(variant)}
        for protocol in INVERSE_PROTOCOLS:
            if protocol not in m:
                raise ValueError(f"inverse metrics of {variant} lack the {protocol!r} protocol; rerun `ilm evaluate`")
            for k in _topk_keys(m[protocol]):
                row[f"{variant_name(protocol)} top-{k[3:]} (%)"] = 100.0 * m[protocol][k]
        rows.append(row)
    return pd.DataFrame(rows)


def make_table(
    name: str,
    inputs: Sequence[Path],
    out_stem: Path,
    config: dict,
    tokenizer: Optional[Path] = None,
) -> None:
    """Build the table `name` from one metric file per variant."""
    if name == "forward_quality":
        write_table(
            forward_quality_table(inputs),
            out_stem,
            digits=3,
            caption="Forward quality on the test split: next-token cross-entropy, perplexity and top-k accuracy.",
            label="tab:forward-quality",
        )
    elif name == "inverse_accuracy":
        write_table(
            inverse_accuracy_table(inputs),
            out_stem,
            digits=2,
            caption="Inverse top-k accuracy on the test split under the three inversion protocols.",
            label="tab:inverse-accuracy",
        )
    elif name == "gcg_summary":
        from ilm.gcg_report import table_gcg_summary

        table_gcg_summary(inputs, out_stem, config)
    elif name == "gcg_examples":
        from ilm.gcg_report import table_gcg_examples

        if tokenizer is None:
            raise ValueError("the gcg_examples table decodes token ids: pass --tokenizer results/data/tokenizer.json")
        table_gcg_examples(inputs, out_stem, tokenizer, config)
    else:
        raise ValueError(
            f"unknown table {name!r}; choose forward_quality, inverse_accuracy, gcg_summary or gcg_examples"
        )


def make_figure(name: str, inputs: Sequence[Path], out_stem: Path, config: dict) -> None:
    """Draw the figure `name` from one metric file per variant."""
    if name == "gcg_success_rate":
        from ilm.gcg_report import figure_success_rate

        figure_success_rate(inputs, out_stem, config)
    else:
        raise ValueError(f"unknown figure {name!r}; choose gcg_success_rate")
