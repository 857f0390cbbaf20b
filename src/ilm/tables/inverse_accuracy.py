"""Table `inverse_accuracy` (rule tabulate_inverse_accuracy): inverse top-k under each protocol, per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.names import PROTOCOLS, order_variants, variant_name
from ilm.tables.common import read_json_by_variant, write_table
from ilm.tables.forward_quality import topk_keys


def build(paths: Sequence[Path]) -> pd.DataFrame:
    """One row per variant (paper order): inverse top-k accuracy (%) under each of the three protocols."""
    by_variant = read_json_by_variant(paths)
    rows = []
    for variant in order_variants(by_variant):
        m = by_variant[variant]
        row = {"Model": variant_name(variant)}
        for protocol in PROTOCOLS:
            if protocol not in m:
                raise ValueError(f"inverse metrics of {variant} lack the {protocol!r} protocol; rerun `ilm evaluate`")
            for k in topk_keys(m[protocol]):
                row[f"{variant_name(protocol)} top-{k[3:]} (%)"] = 100.0 * m[protocol][k]
        rows.append(row)
    return pd.DataFrame(rows)


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer=None) -> None:
    write_table(
        build(inputs),
        out_stem,
        digits=2,
        caption="Inverse top-k accuracy on the test split under the three inversion protocols.",
        label="tab:inverse-accuracy",
    )
