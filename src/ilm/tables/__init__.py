"""The paper's tables, one module each, built from small result files only (no GPU).

Table `<name>` is made by rule `tabulate_<name>`, command `ilm table <name>`, module `ilm.tables.<name>`.
`ilm.tables.study` is the one apart: a study's table and figure from its manifest (rule summarise_study,
command `ilm summarise-study`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

TABLES = (
    "setup",
    "token_entropy",
    "forward_quality",
    "inverse_accuracy",
    "gcg_summary",
    "gcg_examples",
    "inversion",
    "inversion_examples",
    "inversion_vs_generic",
    "gcg_naturalness",
    "claims",
    "gcg_robustness",
    "pag_pilot",
)


def table_module(name: str) -> ModuleType:
    """The module that builds table `name`; ValueError naming the tables for an unknown name."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose one of: {', '.join(TABLES)}")
    return importlib.import_module(f"ilm.tables.{name}")

