"""Table `inverse_accuracy` (rule tabulate_inverse_accuracy): inverse top-k under each protocol, per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.names import PROTOCOLS, order_variants, variant_name
from ilm.tables.common import read_json_by_variant, write_table
from ilm.tables.forward_quality import topk_keys


def build(paths: Sequence[Path]) -> pd.DataFrame:
    """One row per variant (paper order): under each of the three protocols, inverse top-k accuracy (%),
    the top-1 accuracy without g (x alone, or 0 for `*_grad`), and what g adds to it (points)."""
    by_variant = read_json_by_variant(paths)
    rows = []
    for variant in order_variants(by_variant):
        m = by_variant[variant]
        row = {"Model": variant_name(variant)}
        for protocol in PROTOCOLS:
            if protocol not in m or "without_g" not in m[protocol]:
                raise ValueError(
                    f"inverse metrics of {variant} lack the {protocol!r} protocol or its accuracy without g; "
                    "rerun `ilm evaluate` for it"
                )
            name = variant_name(protocol)
            for k in topk_keys(m[protocol]):
                row[f"{name} top-{k[3:]} (%)"] = 100.0 * m[protocol][k]
            row[f"{name} top-1 without g (%)"] = 100.0 * m[protocol]["without_g"]["top1"]
            row[f"{name} top-1 g adds (pts)"] = 100.0 * (m[protocol]["top1"] - m[protocol]["without_g"]["top1"])
        rows.append(row)
    return pd.DataFrame(rows)


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer=None) -> None:
    write_table(
        build(inputs),
        out_stem,
        digits=2,
        caption=(
            "Inverse top-k accuracy on the test split under the three inversion protocols, the top-1 accuracy "
            "of the same rows without g (v = x, or 0 for the gradient-only variants), and what g adds."
        ),
        label="tab:inverse-accuracy",
    )
