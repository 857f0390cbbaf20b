"""Figure 4 (rule plot_gcg_success_rate): GCG success rate against the iteration budget (docs/method.md §4.4)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ilm.figures.common import line_style, palette, paper_style, save
from ilm.names import order_variants, variant_name
from ilm.stats import StatisticsConfig, level_label
from ilm.tables.common import read_csvs


def draw(sweep_csvs: Sequence[Path], out_stem: Path, config: Mapping):
    """Success rate (%) vs. iterations, one line per variant with its Wilson interval (statistics.confidence)
    as a band; writes out_stem.pdf and .png and returns the figure."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    sweep = read_csvs(sweep_csvs, "sweep file")
    confidence = StatisticsConfig.from_dict(config["statistics"]).confidence
    if "confidence" in sweep and not np.allclose(sweep["confidence"], confidence):
        levels = ", ".join(f"{c:g}" for c in sorted(sweep["confidence"].unique()))
        raise ValueError(
            f"the sweep files hold intervals at confidence {levels} but statistics.confidence is {confidence:g}; "
            "rerun `ilm gcg-summary` with this config"
        )
    by_variant = {v: g.sort_values("iterations") for v, g in sweep.groupby("variant")}
    with paper_style():
        colours = palette(len(by_variant))
        fig = Figure(figsize=(5.5, 3.8), layout="constrained")
        ax = fig.add_subplot()
        for i, variant in enumerate(order_variants(by_variant)):
            g = by_variant[variant]
            ax.plot(
                g["iterations"],
                100.0 * g["success_rate"],
                label=f"{variant_name(variant)} (n={int(g['samples'].iloc[0])})",
                **line_style(i, colours),
                linewidth=1.6,
                markersize=5,
            )
            ax.fill_between(
                g["iterations"], 100.0 * g["success_low"], 100.0 * g["success_high"], color=colours[i], alpha=0.12,
                linewidth=0,
            )
        ax.set_xlabel("GCG iterations")
        ax.set_ylabel("Success rate (%)")
        ax.set_xticks(sorted(sweep["iterations"].unique()))
        ax.set_ylim(bottom=0)
        ax.set_title("GCG attack success rate vs. iterations")
        ax.legend(title=f"Model (attacked samples); bands: {level_label(confidence)} Wilson CI", frameon=True)
        save(fig, out_stem)
    return fig
