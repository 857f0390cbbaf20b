"""Table `gcg_naturalness` (rule tabulate_gcg_naturalness): how natural the GCG attacks read (method-spec §4.4).

From results/metrics/<variant>/gcg_judged.csv: per variant, over all attacked samples and over the
successful and the failed ones, the sample count n and mean ± standard deviation (ddof 1, as in the
inversion table) of the judge perplexity of the attack and of the original prefix, their repeated
tokens, the similarity of attack to original, and their share of non-alphanumeric characters.
The CSV holds means and standard deviations as numbers; Markdown and LaTeX show "mean ± std".
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from ilm.io import write_text
from ilm.judges import judges_named
from ilm.names import order_variants, variant_name
from ilm.tables.common import latex_escape, to_markdown, write_html

# (column of gcg_judged.csv, name in the table)
METRICS = (
    ("judge_ppl_attack", "Judge PPL attack"),
    ("judge_ppl_original", "Judge PPL orig."),
    ("repeated_tokens_attack", "Repeats attack"),
    ("repeated_tokens_original", "Repeats orig."),
    ("similarity_attack_original", "Similarity attack-orig."),
    ("nonalnum_attack", "Non-alnum attack"),
    ("nonalnum_original", "Non-alnum orig."),
)
SUBSETS = ("all", "success", "failure")


def read_judged(inputs: Sequence[Path]) -> pd.DataFrame:
    frames = []
    for path in map(Path, inputs):
        if not path.is_file():
            raise ValueError(f"judged GCG metrics {path} do not exist; run `ilm judge-attacks` for it first")
        frames.append(pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"]))
    return pd.concat(frames, ignore_index=True)


def build(judged: pd.DataFrame) -> pd.DataFrame:
    """Rows (variant, subset): n, then `<metric> mean` and `<metric> std` (NaN where n is too small)."""
    rows = []
    success = judged["success"].astype(str).str.lower().eq("true")
    for variant in order_variants(judged["variant"].unique()):
        mine = judged["variant"] == variant
        for subset, keep in zip(SUBSETS, (mine, mine & success, mine & ~success)):
            f = judged[keep]
            row: dict = {"Variant": variant_name(variant), "Subset": subset, "n": len(f)}
            for column, name in METRICS:
                row[f"{name} mean"] = float(f[column].mean()) if len(f) else float("nan")
                row[f"{name} std"] = float(f[column].std(ddof=1)) if len(f) > 1 else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def pm(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Each mean/std pair as one "mean ± std" column ("–" when undefined)."""
    out = table[["Variant", "Subset", "n"]].copy()
    for _, name in METRICS:
        out[name] = [
            "–" if m != m else (f"{m:.{digits}f}" if s != s else f"{m:.{digits}f} ± {s:.{digits}f}")
            for m, s in zip(table[f"{name} mean"], table[f"{name} std"])
        ]
    return out


def caption(table: pd.DataFrame, config: Mapping) -> str:
    total = table[table["Subset"] == "all"]["n"]
    n = f"{int(total.iloc[0])} attacked samples per variant" if total.nunique() == 1 else "the attacked samples"
    return (
        f"Naturalness of the GCG attack prefixes and of the original prefixes they replace, over {n} (all) and "
        "over the successful and failed attacks (n each): mean ± std (ddof 1) of the judge perplexity, repeated "
        "tokens (sum over token types of count - 1, on the model's tokens), cosine similarity of attack to "
        f"original, and the share of non-alphanumeric characters among non-space ones ({judges_named(config)})."
    )


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer: Optional[Path] = None) -> None:
    """results/tables/gcg_naturalness.{csv,md,tex,html}."""
    table = build(read_judged(inputs))
    shown = pm(table)
    stem = Path(out_stem)
    write_text(stem.with_suffix(".csv"), table.to_csv(index=False))
    write_text(stem.with_suffix(".md"), to_markdown(shown))
    cols = "ll" + "r" * (len(shown.columns) - 2)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption(table, config))}}}",
             r"\label{tab:gcg-naturalness}", r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{cols}}}",
             r"\toprule", " & ".join(latex_escape(c) for c in shown.columns) + r" \\"]
    for i, row in enumerate(shown.itertuples(index=False)):
        if i % len(SUBSETS) == 0:
            lines.append(r"\midrule")
        lines.append(" & ".join(latex_escape(str(v)).replace("±", r"$\pm$") for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    write_text(stem.with_suffix(".tex"), "\n".join(lines) + "\n")
    write_html(table, stem, caption(table, config))
