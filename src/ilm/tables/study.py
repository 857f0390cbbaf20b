"""A study's table and figure (rule summarise_study): each point's results against the swept settings.

Per point and variant: the inverse top-1 accuracy under the variant's own protocol with g and
without g (what g carries), the forward CE with its bootstrap interval, and the GCG success
rate at the final budget with its Wilson interval and sample count (docs/method.md §11.3).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ilm.io import atomic_path
from ilm.names import parse_variant, variant_name
from ilm.stats import StatisticsConfig, level_label, wilson_interval
from ilm.studies import format_value, read_manifest
from ilm.tables.common import read_csvs, story_interval, write_table

log = logging.getLogger("ilm.tables.study")


def own_protocol(variant: str) -> str:
    """The protocol a variant is trained on; the Baseline is read with Identity's (its label-leak control)."""
    protocol, _ = parse_variant(variant)
    return protocol or "identity"


def _read_json(path: str, what: str) -> dict:
    if not Path(path).is_file():
        raise ValueError(f"{what} {path} does not exist; build the study's points first (snakemake study_<name>)")
    return json.loads(Path(path).read_text())


def build(manifest: Mapping, config: Mapping) -> pd.DataFrame:
    """One row per (point, variant), in grid order: the swept values, then the point's results."""
    confidence = StatisticsConfig.from_dict(config["statistics"]).confidence
    level = level_label(confidence)
    stories = np.load(manifest["stories"])
    rows = []
    for point in manifest["points"]:
        for variant in manifest["variants"]:
            files = point["files"][variant]
            forward = _read_json(files["forward"], "forward metrics")
            inverse = _read_json(files["inverse"], "inverse metrics")
            protocol = own_protocol(variant)
            if "without_g" not in inverse.get(protocol, {}):
                raise ValueError(f"{files['inverse']} lacks the accuracy without g; rerun `ilm evaluate` for it")
            gcg = read_csvs([Path(files["gcg"])], "per-sample GCG file")
            windows = pd.read_csv(files["windows"]).sort_values("window")
            ce_low, ce_high = story_interval(windows["forward_ce_sum"], windows["forward_rows"], windows, stories, config)
            successes, n = int(gcg["success"].astype(bool).sum()), len(gcg)
            low, high = wilson_interval(successes, n, confidence)
            row = {key.split(".", 1)[1]: format_value(point["overrides"][key]) for key in manifest["settings"]}
            row.update(
                {
                    "Model": variant_name(variant),
                    "Protocol": variant_name(protocol),
                    "Inverse top-1 (%)": 100.0 * inverse[protocol]["top1"],
                    "Without g (%)": 100.0 * inverse[protocol]["without_g"]["top1"],
                    "g adds (pts)": 100.0 * (inverse[protocol]["top1"] - inverse[protocol]["without_g"]["top1"]),
                    "Inverse CE": inverse[protocol]["ce"],
                    "Forward CE": forward["ce"],
                    f"CE {level} low": ce_low,
                    f"CE {level} high": ce_high,
                    "GCG n": n,
                    "GCG success (%)": 100.0 * successes / n if n else np.nan,
                    f"Success {level} low": 100.0 * low,
                    f"Success {level} high": 100.0 * high,
                    "Results": point["root"],
                }
            )
            rows.append(row)
    return pd.DataFrame(rows)


def _caption(manifest: Mapping, table: pd.DataFrame, level: str) -> str:
    swept = "; ".join(f"{k} in {{{', '.join(format_value(v) for v in vs)}}}" for k, vs in manifest["settings"].items())
    n = sorted(set(int(x) for x in table["GCG n"]))
    what = f" {manifest['description'].strip()}" if manifest.get("description") else ""
    return (
        f"Study {manifest['study']}: {swept}.{what} Inverse top-1 accuracy under each variant's own protocol "
        "(the Baseline under Identity's) with g and without g (v = x, or 0 for the gradient-only variants); "
        f"forward test CE with its {level} bootstrap interval (stories resampled); GCG success at the final "
        f"budget (the point's gcg.steps) with its {level} Wilson interval, on {', '.join(map(str, n))} "
        "samples per point. Every other setting is the main run's; a point equal to it reuses results/."
    )


def draw(table: pd.DataFrame, manifest: Mapping, out_stem: Path, level: str):
    """Three panels against the points: inverse top-1 with g (solid) and without g (dotted), forward CE,
    GCG success; interval bars on the last two. Writes out_stem.pdf and .png and returns the figure."""
    import seaborn as sns
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    keys = [key.split(".", 1)[1] for key in manifest["settings"]]
    labels = [" ".join(str(v) for v in values) for values in table[keys].drop_duplicates().itertuples(index=False)]
    x_of = {label: i for i, label in enumerate(labels)}
    x = np.array([x_of[" ".join(str(v) for v in r)] for r in table[keys].itertuples(index=False)])
    colors = sns.color_palette("colorblind", n_colors=max(len(manifest["variants"]), 3))
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for i, variant in enumerate(manifest["variants"]):
        mine = (table["Model"] == variant_name(variant)).to_numpy()
        dodge = 0.04 * (i - (len(manifest["variants"]) - 1) / 2)  # side by side, so equal values stay visible
        xs, t, c = x[mine] + dodge, table[mine], colors[i]
        name = variant_name(variant)
        axes[0].plot(xs, t["Inverse top-1 (%)"], "o-", color=c, label=f"{name} with g")
        axes[0].plot(xs, t["Without g (%)"], "x:", color=c, label=f"{name} without g")
        ce_err = np.vstack([t["Forward CE"] - t[f"CE {level} low"], t[f"CE {level} high"] - t["Forward CE"]])
        axes[1].errorbar(xs, t["Forward CE"], yerr=ce_err, fmt="o-", color=c, capsize=3, label=name)
        rate = t["GCG success (%)"]
        succ_err = np.vstack([rate - t[f"Success {level} low"], t[f"Success {level} high"] - rate])
        axes[2].errorbar(xs, rate, yerr=succ_err, fmt="o-", color=c, capsize=3, label=name)
    titles = ("Inverse top-1 (%), own protocol", f"Forward test CE ({level} bootstrap)",
              f"GCG success (%) ({level} Wilson)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(", ".join(keys))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].set_ylim(-5, 105)
    fig.suptitle(f"Study {manifest['study']}", fontsize=11)
    for suffix in (".pdf", ".png"):
        with atomic_path(Path(f"{out_stem}{suffix}")) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=150)
    return fig


def summarise(manifest_path: Path, table_stem: Path, figure_stem: Path, config: Mapping) -> pd.DataFrame:
    """Write the study's table (table_stem.{csv,md,tex}) and figure (figure_stem.{pdf,png})."""
    manifest = read_manifest(manifest_path)
    confidence = StatisticsConfig.from_dict(config["statistics"]).confidence
    level = level_label(confidence)
    table = build(manifest, config)
    write_table(table, table_stem, digits=3, caption=_caption(manifest, table, level),
                label=f"tab:study-{manifest['study']}")
    draw(table, manifest, figure_stem, level)
    log.info("study %s: %d points x %d variants", manifest["study"], len(manifest["points"]),
             len(manifest["variants"]))
    return table
