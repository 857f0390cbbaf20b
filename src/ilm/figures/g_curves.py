"""The g curves (rule plot_g_curves; issue 23): is g still growing when training stops?

Read from each ILM variant's results/models/{variant}/train_log.csv, at every validation point
(ilm.train.Validation, on the fixed validation windows): the inverse CE of the variant's own rows
with g and without g (from x alone), and the mean g^2 over those rows divided by the first RMSNorm's
eps. A gap between the two CE curves is what g carries; g^2 far below eps means Norm(x - g) is
Norm(x). The claims table reads the same columns to decide whether the curves still move
(ilm.tables.claims.g_still_growing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.figures.common import line_style, palette, paper_style, read_train_log, save
from ilm.names import order_variants, variant_name

COLUMNS = ("step", "val_inv_ce", "val_inv_ce_without_g", "val_g_sq_over_eps")


def series(log_csvs: Sequence[Path]) -> pd.DataFrame:
    """Columns variant, step and COLUMNS at the validation points of every variant that has g, paper order."""
    frames = {}
    for path in map(Path, log_csvs):
        frame = read_train_log(path, COLUMNS).dropna(subset=["val_g_sq_over_eps"])
        if len(frame):
            frames[path.parent.name] = frame.sort_values("step").assign(variant=path.parent.name)
    if not frames:
        raise ValueError("no training log with g curves given (the Baseline has none); train an ILM variant")
    return pd.concat([frames[v] for v in order_variants(frames)], ignore_index=True)


def draw(log_csvs: Sequence[Path], out_stem: Path, config: Mapping):
    """Two panels against the optimizer step, one colour per variant: validation inverse CE with g (solid) and
    without g (dotted), and mean g^2 / eps (log scale); writes out_stem.pdf and .png and returns the figure."""
    from matplotlib.figure import Figure

    data = series(log_csvs)
    variants = list(dict.fromkeys(data["variant"]))
    with paper_style():
        colours = palette(len(variants))
        fig = Figure(figsize=(9.0, 3.6), layout="constrained")
        ce_ax, g_ax = fig.subplots(1, 2)
        for i, variant in enumerate(variants):
            g = data[data["variant"] == variant]
            style = line_style(i, colours)
            name = variant_name(variant)
            ce_ax.plot(g["step"], g["val_inv_ce"], color=style["color"], marker=style["marker"],
                       label=f"{name}, with g")
            ce_ax.plot(g["step"], g["val_inv_ce_without_g"], color=style["color"], linestyle=":",
                       label=f"{name}, without g")
            g_ax.plot(g["step"], g["val_g_sq_over_eps"], color=style["color"], marker=style["marker"], label=name)
        ce_ax.set_title("Inverse CE on validation windows")
        ce_ax.set_ylabel("Cross-entropy (nats)")
        g_ax.set_title("Mean g² / eps of the first norm")
        g_ax.set_yscale("log")
        g_ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        for ax in (ce_ax, g_ax):
            ax.set_xlabel("Optimizer step")
            ax.legend(frameon=True, fontsize="small")
        save(fig, out_stem)
    return fig
