"""The paper's figures, one module each, drawn from small result files only (no model, no GPU).

Figure `<name>` is made by rule `plot_<name>`, command `ilm figure <name>`, module `ilm.figures.<name>`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FIGURES = ("token_entropy", "training_curves", "g_curves", "inverse_by_position", "gcg_success_rate", "pag_fgsm_sweep")


def figure_module(name: str) -> ModuleType:
    """The module that draws figure `name`; ValueError naming the figures for an unknown name."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; choose one of: {', '.join(FIGURES)}")
    return importlib.import_module(f"ilm.figures.{name}")

