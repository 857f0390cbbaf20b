"""Write one table three ways: CSV (data), Markdown (reading) and LaTeX (the paper)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from ilm.io import write_text

# Paper names of the variants (method-spec §1.1); the `_grad` ablations project the gradient alone.
VARIANT_NAMES = {
    "base": "Baseline",
    "identity": "Identity",
    "bert_like": "Bert-like",
    "inv_first": "Inv-First",
    "identity_grad": "Identity (grad only)",
    "bert_like_grad": "Bert-like (grad only)",
    "inv_first_grad": "Inv-First (grad only)",
}

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape the characters LaTeX treats specially."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def variant_name(variant: str) -> str:
    return VARIANT_NAMES.get(variant, variant)


def _fmt(value, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(_fmt(v, digits) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def to_latex(df: pd.DataFrame, digits: int = 4, caption: Optional[str] = None, label: Optional[str] = None) -> str:
    align = "l" + "r" * (len(df.columns) - 1)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(c) for c in df.columns) + r" \\")
    lines.append(r"\midrule")
    for row in df.itertuples(index=False):
        lines.append(" & ".join(latex_escape(_fmt(v, digits)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(
    df: pd.DataFrame,
    stem: Path | str,
    digits: int = 4,
    caption: Optional[str] = None,
    label: Optional[str] = None,
    formats: Sequence[str] = ("csv", "md", "tex"),
) -> None:
    """Write `stem.csv`, `stem.md` and `stem.tex`, each atomically."""
    stem = Path(stem)
    if "csv" in formats:
        write_text(stem.with_suffix(".csv"), df.to_csv(index=False))
    if "md" in formats:
        write_text(stem.with_suffix(".md"), to_markdown(df, digits))
    if "tex" in formats:
        write_text(stem.with_suffix(".tex"), to_latex(df, digits, caption, label))


def order_variants(rows: Mapping[str, object]) -> list[str]:
    """Variants in the paper's order, unknown names last (alphabetically)."""
    known = [v for v in VARIANT_NAMES if v in rows]
    return known + sorted(v for v in rows if v not in VARIANT_NAMES)
