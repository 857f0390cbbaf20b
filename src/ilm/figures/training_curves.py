"""Training curves (rule plot_training_curves; docs/method.md §8 E15): forward and inverse CE against the step.

Read from each variant's results/models/{variant}/train_log.csv (ilm.train.LOG_COLUMNS): `ce` and
`inv_ce` are the batch means of the logged optimizer step, `val_ce` the validation CE where the
step validated (empty otherwise); `inv_ce` is empty for the Baseline, which has no inverse loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.figures.common import line_style, palette, paper_style, read_train_log, save
from ilm.names import order_variants, variant_name

COLUMNS = ("step", "ce", "val_ce", "inv_ce")


def series(log_csvs: Sequence[Path]) -> pd.DataFrame:
    """The plotted data: columns variant, step, ce, val_ce, inv_ce (NaN where not logged), paper order, by step."""
    frames: dict[str, pd.DataFrame] = {}
    for path in map(Path, log_csvs):
        frame = read_train_log(path, COLUMNS)
        if frame.empty:
            raise ValueError(f"training log {path} has no rows; retrain that variant")
        variant = path.parent.name  # results/models/{variant}/train_log.csv
        frame.insert(0, "variant", variant)
        frames[variant] = frame.sort_values("step")
    if not frames:
        raise ValueError("no training log given")
    return pd.concat([frames[v] for v in order_variants(frames)], ignore_index=True)


def draw(log_csvs: Sequence[Path], out_stem: Path, config: Mapping):
    """Two panels against the optimizer step, one colour per variant: forward CE (train line, validation
    markers) and inverse CE (train); writes out_stem.pdf and .png and returns the figure."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    data = series(log_csvs)
    variants = list(dict.fromkeys(data["variant"]))
    with paper_style():
        colours = palette(len(variants))
        fig = Figure(figsize=(9.0, 3.6), layout="constrained")  # two single-column panels side by side
        forward, inverse = fig.subplots(1, 2)
        for i, variant in enumerate(variants):
            g = data[data["variant"] == variant]
            style = line_style(i, colours)
            name = variant_name(variant)
            forward.plot(g["step"], g["ce"], color=style["color"], linestyle=style["linestyle"], label=f"{name} train")
            val = g.dropna(subset=["val_ce"])
            if len(val):
                forward.plot(val["step"], val["val_ce"], color=style["color"], marker=style["marker"], linestyle="none",
                             markersize=4, label=f"{name} validation")
            inv = g.dropna(subset=["inv_ce"])
            if len(inv):
                inverse.plot(inv["step"], inv["inv_ce"], color=style["color"], linestyle=style["linestyle"], label=name)
        forward.set_title("Forward CE")
        inverse.set_title("Inverse CE (train)")
        for ax in (forward, inverse):
            ax.set_xlabel("Optimizer step")
            ax.set_ylabel("Cross-entropy (nats)")
            if ax.lines:
                ax.legend(frameon=True, fontsize="small")
        save(fig, out_stem)
    return fig
