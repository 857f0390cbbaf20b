"""The paper's tables, one module each, built from small metric files only (no model, no GPU).

Table `<name>` is made by rule `tabulate_<name>`, command `ilm table <name>`, module `ilm.tables.<name>`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Mapping, Optional, Sequence

TABLES = ("forward_quality", "inverse_accuracy", "gcg_summary", "gcg_examples")


def make_table(
    name: str, inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer: Optional[Path] = None
) -> None:
    """Build table `name` from one metric file per variant."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose one of: {', '.join(TABLES)}")
    importlib.import_module(f"ilm.tables.{name}").write(inputs, out_stem, config, tokenizer=tokenizer)
