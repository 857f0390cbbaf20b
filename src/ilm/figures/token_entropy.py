"""Token entropy per position (rule plot_token_entropy; docs/method.md §8 E4), from table `token_entropy`.

How predictable the token at each position of a training window is on its own (the position's
marginal distribution, no context): where windows start matters to the inverse protocols.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.figures.common import line_style, palette, paper_style, save


def series(entropy_csvs: Sequence[Path]) -> pd.DataFrame:
    """The plotted data: table token_entropy's CSV (position, entropy_bits, distinct_tokens, windows)."""
    if len(entropy_csvs) != 1:
        raise ValueError(f"figure token_entropy reads one CSV (results/tables/token_entropy.csv), got {len(entropy_csvs)}")
    path = Path(entropy_csvs[0])
    if not path.is_file():
        raise ValueError(f"{path} does not exist; build it first with `ilm table token_entropy`")
    return pd.read_csv(path).sort_values("position")


def draw(entropy_csvs: Sequence[Path], out_stem: Path, config: Mapping):
    """Entropy (bits) against the position in the window; writes out_stem.pdf and .png and returns the figure."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    data = series(entropy_csvs)
    with paper_style():
        fig = Figure(figsize=(5.5, 3.4), layout="constrained")  # one column, as Figure 4
        ax = fig.add_subplot()
        style = line_style(0, palette(1))
        ax.plot(data["position"], data["entropy_bits"], color=style["color"], linewidth=1.6)
        ax.set_xlabel("Position t in the window")
        ax.set_ylabel("Entropy of the token at t (bits)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"Token entropy per position ({int(data['windows'].iloc[0]):,} training windows)")
        save(fig, out_stem)
    return fig
