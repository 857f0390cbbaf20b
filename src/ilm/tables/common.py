"""What every table shares: reading metric files, and writing one table as CSV, Markdown, LaTeX and HTML.

The HTML version is the one `snakemake --report` shows inline. It is rounded for a reader, column by
column: rates and points (%) to 0.1, p-values to 2 significant digits, a value with an interval to the
digits the interval's half-width justifies (2 significant digits of it), a mean ± std pair to 2
significant digits of the std, and any other number to 3 significant digits of the column's largest
value. A value's interval (the `<name> low`, `<name> high` columns right after it) shares its cell.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from ilm.gcg_merge import ID_COLUMNS
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


def split_inputs(paths: Sequence[Path], json_name: str) -> tuple[list[Path], dict[str, pd.DataFrame], np.ndarray]:
    """(the per-variant `json_name` files, {variant: eval_windows.csv sorted by window}, story of every test window)
    of a table built from `ilm evaluate`'s outputs and results/data/test_stories.npy."""
    metrics, windows, stories = [], {}, None
    for path in map(Path, paths):
        if path.name == json_name:
            metrics.append(path)
        elif path.name == "eval_windows.csv":
            windows[variant_of(path)] = pd.read_csv(path).sort_values("window").reset_index(drop=True)
        elif path.name.endswith("_stories.npy"):
            stories = np.load(path)
        else:
            raise ValueError(f"{path} is not a {json_name}, eval_windows.csv or test_stories.npy file")
    if stories is None:
        raise ValueError("the table needs results/data/test_stories.npy: its intervals resample stories")
    missing = sorted({variant_of(p) for p in metrics} - set(windows))
    if missing:
        raise ValueError(f"no eval_windows.csv for {missing}; run `ilm evaluate` for them with --windows-out")
    return metrics, windows, stories


def story_interval(sums, rows, windows: pd.DataFrame, stories: np.ndarray, config) -> tuple[float, float]:
    """Bootstrap interval of sum(sums) / sum(rows) over test windows, resampling stories (their windows overlap)."""
    from ilm.stats import StatisticsConfig, bootstrap_interval

    stats = StatisticsConfig.from_dict(config["statistics"])
    clusters = stories[windows["window"].to_numpy()]
    return bootstrap_interval(np.asarray(sums, dtype=float), np.asarray(rows, dtype=float), clusters=clusters,
                              confidence=stats.confidence, resamples=stats.bootstrap_resamples, seed=stats.seed)


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


_MISSING = "–"  # a cell with no value (NaN, or a test that does not apply)
# An interval column: "CE low", "Success 95% high".
_INTERVAL = re.compile(r"^(?P<base>.+?)(?: (?P<level>\d+(?:\.\d+)?%))? (?P<end>low|high)$")
_HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;font-size:14px;margin:8px}"
    "p.caption{max-width:70em;color:#333}"
    "table{border-collapse:collapse}"
    "th,td{padding:3px 9px;text-align:right;white-space:nowrap}"
    "thead th{border-bottom:1px solid #444;vertical-align:bottom}"
    "tbody tr:nth-child(even){background:#f4f4f4}"
)


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and value != value)


def _is_rate(column: str) -> bool:
    return "(%)" in column or "(pts)" in column


def _is_p_value(column: str) -> bool:
    return column == "p" or column.endswith((" p", "p-value"))


def _decimals(scale: float, significant: int) -> int:
    """Decimals that show `significant` digits of `scale`, within 0..3."""
    return int(min(max(significant - 1 - math.floor(math.log10(scale)), 0), 3))


def _smallest_positive(values) -> Optional[float]:
    finite = [float(v) for v in values if not _missing(v) and math.isfinite(float(v)) and float(v) > 0]
    return min(finite) if finite else None


def _number(value, decimals: int) -> str:
    if _missing(value):
        return _MISSING
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{decimals}f}"
    return str(value)


def _intervals(df: pd.DataFrame) -> dict[str, tuple[str, str, str]]:
    """{value column: (low column, high column, level)} for each `<x> low`, `<x> high` pair right after its value."""
    columns = [str(c) for c in df.columns]
    found = {}
    for value, low, high in zip(columns, columns[1:], columns[2:]):
        lo, hi = _INTERVAL.match(low), _INTERVAL.match(high)
        if (lo and hi and (lo["end"], hi["end"]) == ("low", "high") and lo["base"] == hi["base"]
                and not _INTERVAL.match(value) and lo["base"].lower() in value.lower()):
            found[value] = (low, high, lo["level"] or "")
    return found


def _column_decimals(name: str, values) -> int:
    """Decimals of a plain number column: 0.1 for rates, else 3 significant digits of its largest value."""
    if _is_rate(name):
        return 1
    biggest = max((abs(float(v)) for v in values if not _missing(v) and math.isfinite(float(v))), default=0.0)
    return _decimals(biggest, 3) if biggest > 0 else 2


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """The table as the strings a reader sees: rounded column by column (module docstring), each interval
    joined to its value as "v [low, high]" and each `<x> mean`, `<x> std` pair as "m ± s"."""
    df = df.rename(columns=str)
    intervals = _intervals(df)
    joined = {c for low, high, _ in intervals.values() for c in (low, high)}
    out: dict[str, list[str]] = {}
    for name in df.columns:
        values = df[name].tolist()
        if name in joined or (name.endswith(" std") and f"{name[:-4]} mean" in df.columns):
            continue
        if name.endswith(" mean") and f"{name[:-5]} std" in df.columns:
            stds = df[f"{name[:-5]} std"].tolist()
            spread = _smallest_positive(stds)
            d = _decimals(spread, 2) if spread else _column_decimals(name, values)
            out[name[:-5]] = [_number(m, d) if _missing(s) or _missing(m) else f"{_number(m, d)} ± {_number(s, d)}"
                              for m, s in zip(values, stds)]
        elif _is_p_value(name):
            out[name] = [_MISSING if _missing(v) else f"{float(v):.2g}" for v in values]
        elif name in intervals:
            low, high, level = intervals[name]
            lows, highs = df[low].tolist(), df[high].tolist()
            halves = [(h - lo) / 2 for lo, h in zip(lows, highs) if not (_missing(lo) or _missing(h))]
            spread = _smallest_positive(halves)
            d = 1 if _is_rate(name) else (_decimals(spread, 2) if spread else _column_decimals(name, values))
            out[f"{name} [{level} interval]".replace(" [ ", " [")] = [
                _number(v, d) if _missing(v) or _missing(lo) or _missing(h) else
                f"{_number(v, d)} [{_number(lo, d)}, {_number(h, d)}]"
                for v, lo, h in zip(values, lows, highs)
            ]
        elif pd.api.types.is_float_dtype(df[name]):
            d = _column_decimals(name, values)
            out[name] = [_number(v, d) for v in values]
        else:
            out[name] = [_number(v, 0) for v in values]
    return pd.DataFrame(out)


def to_html(df: pd.DataFrame, caption: Optional[str] = None, title: str = "table", wrap: Sequence[str] = ()) -> str:
    """A self-contained HTML page holding `readable(df)` as one <table> (what the report shows inline).

    Text columns (object dtype) are left-aligned, numbers right-aligned; the columns in `wrap` (long
    texts) wrap, keeping their line breaks.
    """
    shown = readable(df)
    text_columns = {str(c) for c in df.columns if df[c].dtype == object}
    aligned = "".join(
        f"td:nth-child({i + 1}),th:nth-child({i + 1}){{text-align:left}}"
        for i, column in enumerate(shown.columns) if column in text_columns
    ) + "".join(
        f"td:nth-child({i + 1}){{white-space:pre-wrap;min-width:30em;max-width:60em}}"
        for i, column in enumerate(shown.columns) if column in set(wrap)
    )
    body = shown.to_html(index=False, escape=True, border=0, na_rep=_MISSING, classes="ilm-table")
    head = f'<p class="caption">{html.escape(caption)}</p>\n' if caption else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{_HTML_STYLE}{aligned}</style>\n</head>\n<body>\n{head}{body}\n</body>\n</html>\n"
    )


def write_html(df: pd.DataFrame, stem: Path | str, caption: Optional[str] = None, wrap: Sequence[str] = ()) -> None:
    """Write `stem.html` (see to_html), atomically."""
    stem = Path(stem)
    write_text(stem.with_suffix(".html"), to_html(df, caption, title=stem.name, wrap=wrap))


def write_table(
    df: pd.DataFrame,
    stem: Path | str,
    digits: int = 4,
    caption: Optional[str] = None,
    label: Optional[str] = None,
) -> None:
    """Write `stem.csv` (full precision), `stem.md` and `stem.tex` (rounded to `digits`) and `stem.html`
    (rounded for a reader, see the module docstring), each atomically."""
    stem = Path(stem)
    write_text(stem.with_suffix(".csv"), df.to_csv(index=False))
    write_text(stem.with_suffix(".md"), to_markdown(df, digits))
    write_text(stem.with_suffix(".tex"), to_latex(df, digits, caption, label))
    write_html(df, stem, caption)
