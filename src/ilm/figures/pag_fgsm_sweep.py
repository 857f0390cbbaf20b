"""Figure `pag_fgsm_sweep` (rule plot_pag_fgsm_sweep; method-spec §6.7): the PAG pilot's accuracy under FGSM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from ilm.figures.common import line_style, palette, paper_style, save
from ilm.pilot.config import PILOT_NAMES, PILOT_VARIANTS
from ilm.stats import StatisticsConfig, level_label


def draw(metric_files: Sequence[Path], out_stem: Path, config: Mapping):
    """FGSM accuracy (%) against its step α, one line per variant with its Wilson band (statistics.confidence);
    writes out_stem.pdf and .png and returns the figure."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    confidence = StatisticsConfig.from_dict(config["statistics"]).confidence
    results = {}
    for p in metric_files:
        res = json.loads(Path(p).read_text())
        results[res["variant"]] = res
    variants = [v for v in PILOT_VARIANTS if v in results]
    with paper_style():
        colours = palette(len(variants))
        fig = Figure(figsize=(5.5, 3.8), layout="constrained")
        ax = fig.add_subplot()
        for i, variant in enumerate(variants):
            sweep = results[variant]["sweep"]
            alphas = [r["alpha"] for r in sweep]
            style = line_style(i, colours)
            ax.plot(alphas, [100.0 * r["accuracy"] for r in sweep],
                    label=f"{PILOT_NAMES[variant]} (n={sweep[0]['n']})",
                    **style, linewidth=1.4, markersize=3, markevery=max(1, len(alphas) // 10))
            ax.fill_between(alphas, [100 * r["low"] for r in sweep], [100 * r["high"] for r in sweep],
                            color=colours[i], alpha=0.12, linewidth=0)
        ax.set_xlabel("FGSM step α (L∞, embedding space)")
        ax.set_ylabel("Accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("PAG pilot: accuracy under FGSM")
        ax.legend(title=f"bands: {level_label(confidence)} Wilson CI", frameon=True, fontsize="small")
        save(fig, out_stem)
    return fig
