"""Table `pag_pilot` (rule tabulate_pag_pilot; method-spec §6.7): the PAG pilot's accuracy, clean and attacked.

One row per pilot variant: accuracy (%) on clean test embeddings and under each attack of
`ilm pilot attack`, with its sample count and Wilson interval at `statistics.confidence`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from ilm.pilot.config import PILOT_NAMES, PILOT_VARIANTS
from ilm.stats import StatisticsConfig, level_label
from ilm.tables.common import write_table


def _pct(r: Mapping) -> float:
    return 100.0 * r["accuracy"]


def _ci(r: Mapping) -> str:
    return f"[{100 * r['low']:.1f}, {100 * r['high']:.1f}]"


def attack_label(row: Mapping) -> str:
    """The column name of one attack: its norm and budget (FGSM's step is α, the others' radius ε)."""
    name = "α" if row["attack"] == "FGSM" else "ε"
    return f"{row['attack']} {row['norm']} {name}={row['eps']:g}"


def build(metric_files: Sequence[Path], confidence: float) -> pd.DataFrame:
    """A row per variant, in PILOT_VARIANTS order; ValueError if a file holds intervals at another level."""
    results = {}
    for p in metric_files:
        res = json.loads(Path(p).read_text())
        results[res["variant"]] = res
    rows = []
    for variant in [v for v in PILOT_VARIANTS if v in results]:
        res = results[variant]
        if abs(res["confidence"] - confidence) > 1e-12:
            raise ValueError(f"{variant}'s metrics hold {res['confidence']:g} intervals but statistics.confidence "
                             f"is {confidence:g}; rerun attack_pilot")
        row = {"Model": PILOT_NAMES[variant], "n": res["clean"]["n"], "Clean (%)": _pct(res["clean"]),
               f"Clean {level_label(confidence)} CI": _ci(res["clean"])}
        for a in res["attacks"]:
            label = attack_label(a)
            row[f"{label} (%)"] = _pct(a)
            row[f"{label} CI"] = _ci(a)
            if a["n"] != res["clean"]["n"]:
                row[f"{label} n"] = a["n"]
        rows.append(row)
    return pd.DataFrame(rows)


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer: Optional[Path] = None) -> pd.DataFrame:
    """results/tables/pag_pilot.{csv,md,tex,html} from each variant's metrics JSON."""
    df = build(inputs, StatisticsConfig.from_dict(config["statistics"]).confidence)
    write_table(df, out_stem, digits=1,
                caption="PAG pilot: accuracy (%) of each classifier on clean and attacked test embeddings",
                label="tab:pag_pilot")
    return df
