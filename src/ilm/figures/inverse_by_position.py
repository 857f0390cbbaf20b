"""Inverse accuracy by position (rule plot_inverse_by_position; docs/method.md §8 E7): top-1 against t.

Reads each variant's results/metrics/{variant}/inverse.json, where every protocol key
("identity", "bert_like", "inv_first") holds `"by_position": {"rows": [int, ...], "top1": [float | null, ...]}`,
one entry per position 0..T-1: the number of inverse rows scored at that position and the
top-1 accuracy over them (null where no row falls there, e.g. positions a protocol never inverts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.figures.common import line_style, palette, paper_style, save
from ilm.names import PROTOCOLS, order_variants, variant_name
from ilm.tables.common import read_json_by_variant


def series(inverse_jsons: Sequence[Path]) -> pd.DataFrame:
    """The plotted points: columns protocol, variant, position, rows, top1 (a fraction), positions without
    rows left out; protocols and variants in the paper's order."""
    paths = [Path(p) for p in inverse_jsons]
    by_variant = read_json_by_variant(paths)
    file_of = {p.parent.name: p for p in paths}
    records = []
    for protocol in PROTOCOLS:
        for variant in order_variants(by_variant):
            metrics = by_variant[variant].get(protocol)
            if metrics is None:
                raise ValueError(f"{file_of[variant]} lacks the {protocol!r} protocol; rerun `ilm evaluate`")
            by_position = metrics.get("by_position")
            if by_position is None:
                raise ValueError(
                    f"{file_of[variant]} has no per-position accuracy ({protocol}.by_position); "
                    "rerun `ilm evaluate` with a version that writes it"
                )
            rows, top1 = by_position["rows"], by_position["top1"]
            if len(rows) != len(top1):
                raise ValueError(f"{file_of[variant]}: {protocol}.by_position has {len(rows)} rows but {len(top1)} "
                                 "top1 entries; rerun `ilm evaluate`")
            for t, (n, acc) in enumerate(zip(rows, top1)):
                if n and acc is not None:
                    records.append({"protocol": protocol, "variant": variant, "position": t, "rows": int(n),
                                    "top1": float(acc)})
    return pd.DataFrame(records, columns=["protocol", "variant", "position", "rows", "top1"])


def draw(inverse_jsons: Sequence[Path], out_stem: Path, config: Mapping):
    """One panel per protocol, one line per variant: inverse top-1 accuracy (%) against the position;
    writes out_stem.pdf and .png and returns the figure."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    data = series(inverse_jsons)
    variants = order_variants({Path(p).parent.name for p in inverse_jsons})
    with paper_style():
        colours = palette(len(variants))
        # One single-column-wide panel per protocol, sharing the accuracy axis.
        fig = Figure(figsize=(4.0 * len(PROTOCOLS), 3.6), layout="constrained")
        axes = fig.subplots(1, len(PROTOCOLS), sharey=True)
        for ax, protocol in zip(axes, PROTOCOLS):
            for i, variant in enumerate(variants):
                g = data[(data["protocol"] == protocol) & (data["variant"] == variant)]
                if len(g):
                    # About a dozen markers per line: enough to tell variants apart in grayscale at T=256.
                    ax.plot(g["position"], 100.0 * g["top1"], label=variant_name(variant), **line_style(i, colours),
                            linewidth=1.4, markersize=3, markevery=max(1, len(g) // 12))
            ax.set_title(variant_name(protocol))
            ax.set_xlabel("Position t")
        axes[0].set_ylabel("Inverse top-1 accuracy (%)")
        axes[0].set_ylim(bottom=0)
        if axes[0].lines:
            axes[0].legend(frameon=True, fontsize="small")
        save(fig, out_stem)
    return fig
