"""Figure 4 (rule plot_gcg_success_rate): GCG success rate against the iteration budget (docs/method.md §4.4)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ilm.figures.common import line_style, palette, paper_style, save
from ilm.names import order_variants, variant_name
from ilm.tables.common import read_csvs


def draw(sweep_csvs: Sequence[Path], out_stem: Path, config: Mapping):
    """Success rate (%) vs. iterations, one line per variant with its 95 % interval as a band;
    writes out_stem.pdf and .png and returns the figure."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    sweep = read_csvs(sweep_csvs, "sweep file")
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
        ax.legend(title="Model (attacked samples); bands: 95% CI", frameon=True)
        save(fig, out_stem)
    return fig
