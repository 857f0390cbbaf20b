"""What every table shares: reading metric files, and writing one table as CSV, Markdown and LaTeX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ilm.gcg_summary import ID_COLUMNS
from ilm.io import write_text

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


def variant_of(metric_file: Path) -> str:
    """Metric files live at results/metrics/{variant}/<name>."""
    return Path(metric_file).parent.name


def read_json_by_variant(paths: Sequence[Path]) -> dict[str, dict]:
    """{variant: contents} of one JSON metric file per variant."""
    out = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ValueError(f"metric file {path} does not exist; run `ilm evaluate` for that variant first")
        out[variant_of(path)] = json.loads(path.read_text())
    return out


def read_csvs(paths: Sequence[Path], what: str) -> pd.DataFrame:
    """The per-variant GCG CSV files concatenated (token ids kept as strings)."""
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{what} {path} does not exist; run `ilm gcg-summary` for that variant first")
        frames.append(
            pd.read_csv(path, dtype={c: str for c in ID_COLUMNS}, keep_default_na=False, na_values=["", "nan", "NaN"])
        )
    if not frames:
        raise ValueError(f"no {what} given")
    return pd.concat(frames, ignore_index=True)


def _fmt(value, digits: int) -> str:
    if value is pd.NA:  # a cell that does not apply (nullable dtypes), e.g. the Baseline's test against itself
        return ""
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
) -> None:
    """Write `stem.csv` (full precision), `stem.md` and `stem.tex` (rounded to `digits`), each atomically."""
    stem = Path(stem)
    write_text(stem.with_suffix(".csv"), df.to_csv(index=False))
    write_text(stem.with_suffix(".md"), to_markdown(df, digits))
    write_text(stem.with_suffix(".tex"), to_latex(df, digits, caption, label))
