"""What every figure shares: a grayscale-safe line style per variant, the paper's look, and saving PDF and PNG."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from ilm.io import atomic_path

# Distinct marker and dash per variant so the figures read in grayscale.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DASHES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)))
# PNG resolution: sharp in the HTML report and on slides; the PDF is vector anyway.
DPI = 200


def line_style(i: int, palette) -> dict:
    """Colour, marker and dash of the i-th variant (paper order)."""
    return {"color": palette[i], "marker": MARKERS[i % len(MARKERS)], "linestyle": DASHES[i % len(DASHES)]}


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Seaborn's white grid at paper scale (no pyplot: no global figure state, no GUI backend)."""
    import seaborn as sns

    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.2):
        yield


def palette(n: int):
    import seaborn as sns

    return sns.color_palette("colorblind", n_colors=max(n, 1))


def save(fig, out_stem: Path | str) -> None:
    """Write out_stem.pdf and out_stem.png, each atomically."""
    out_stem = Path(out_stem)
    for suffix in ("pdf", "png"):
        with atomic_path(out_stem.with_suffix(f".{suffix}")) as tmp:
            fig.savefig(tmp, format=suffix, dpi=DPI)


def read_train_log(path: Path | str, columns) -> "pd.DataFrame":  # noqa: F821
    """The `columns` of one results/models/{variant}/train_log.csv as numbers (empty cells NaN); clear errors for a
    missing log or one written before a column existed."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"training log {path} does not exist; train that variant first (`ilm train`)")
    log = pd.read_csv(path)
    missing = [c for c in columns if c not in log.columns]
    if missing:
        raise ValueError(f"training log {path} lacks column(s) {missing}; retrain with this version of `ilm train`")
    return log[list(columns)].apply(pd.to_numeric, errors="coerce")
