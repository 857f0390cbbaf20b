"""The paper's figures, one module each, drawn from small metric files only (no model, no GPU).

Figure `<name>` is made by rule `plot_<name>`, command `ilm figure <name>`, module `ilm.figures.<name>`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Mapping, Sequence

FIGURES = ("gcg_success_rate",)


def make_figure(name: str, inputs: Sequence[Path], out_stem: Path, config: Mapping) -> None:
    """Draw figure `name` from one metric file per variant (out_stem.pdf and out_stem.png)."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; choose one of: {', '.join(FIGURES)}")
    importlib.import_module(f"ilm.figures.{name}").draw(inputs, out_stem, config)
