"""Table `inversion` (rule tabulate_inversion): grounding per method (method-spec §5, E13; docs/method.md §12).

Methods: each variant's beam search, the reverse-bigram baseline, and the generic inverters on each variant.

One row per method, mean ± standard deviation (ddof 1) over the inverted samples of every
per-sample metric in results/metrics/<method>/inversion.csv and, when given, of the judge metrics
in results/metrics/<method>/inversion_judged.csv (matched by sample), and the sample count. The CSV holds
the means and standard deviations as numbers; the Markdown and LaTeX versions show "mean ± std".
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from ilm.io import write_text
from ilm.judges import judges_named
from ilm.names import BIGRAM, GENERIC_INVERTERS, GENERIC_NAMES, order_variants, parse_generic, variant_name
from ilm.tables.common import latex_escape, to_markdown, variant_of, write_html

JUDGED = "inversion_judged.csv"
# Reconstructions that have a judge perplexity (the rest decode to an empty text).
JUDGED_COUNT = ("judge_ppl_prefix_reconstruction", "Rec. judged")
# (column of the per-sample file, name in the table)
METRICS = (
    ("f1", "Token F1"),
    ("precision", "Token precision"),
    ("recall", "Token recall"),
    ("exact_match", "Exact match"),
    ("positional_accuracy", "Positional acc."),
    ("repeated_tokens", "Repeated tokens"),
    ("coherence_ce_reconstruction", "Suffix CE given rec."),
    ("coherence_ce_original", "Suffix CE given orig."),
    ("ppl_reconstruction", "Own PPL rec.+Y"),
    ("ppl_original", "Own PPL orig.+Y"),
)
# Judge metrics (results/metrics/<method>/inversion_judged.csv), shown when present.
TEXT_METRICS = (
    ("similarity_prefix", "Similarity prefix"),
    ("similarity_full", "Similarity full"),
    ("judge_ppl_prefix_reconstruction", "Judge PPL rec."),
    ("judge_ppl_prefix_original", "Judge PPL orig."),
    ("judge_ppl_full_reconstruction", "Judge PPL rec.+Y"),
    ("judge_ppl_full_original", "Judge PPL orig.+Y"),
)


def method_name(method: str) -> str:
    """The table's name of an inversion method: the variant, the reverse bigram, or "GCG inverter (Identity)"."""
    if method == BIGRAM:
        return "Reverse bigram (Baseline-scored)"
    generic = parse_generic(method)
    if generic is not None:
        return f"{GENERIC_NAMES[generic[1]]} ({variant_name(generic[0])})"
    return variant_name(method)


def order_methods(methods) -> list[str]:
    """The beam search of every variant in the paper's order, the reverse-bigram baseline, then the generic
    inverters grouped by variant (same order; GCG before relaxed)."""
    generic = {m: parse_generic(m) for m in methods if m != BIGRAM and "+" in m}
    search = [m for m in methods if m != BIGRAM and m not in generic]
    by_variant = order_variants({v for v, _ in generic.values()})
    ordered_generic = sorted(generic, key=lambda m: (by_variant.index(generic[m][0]),
                                                     GENERIC_INVERTERS.index(generic[m][1])))
    return order_variants(search) + ([BIGRAM] if BIGRAM in methods else []) + ordered_generic


def build(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per method: Samples, then `<metric> mean` and `<metric> std` of every metric present."""
    methods = order_methods(frames)
    rows = []
    for method in methods:
        f = frames[method]
        row: dict = {"Method": method_name(method), "Samples": len(f)}
        for column, name in METRICS + TEXT_METRICS:
            if column in f:
                row[f"{name} mean"] = float(f[column].mean())
                row[f"{name} std"] = float(f[column].std(ddof=1)) if len(f) > 1 else float("nan")
        if JUDGED_COUNT[0] in f:  # an empty decoded reconstruction (special tokens only) has no judge perplexity
            row[JUDGED_COUNT[1]] = int(f[JUDGED_COUNT[0]].notna().sum())
        rows.append(row)
    return pd.DataFrame(rows)


def pm(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The table with each mean/std pair joined into one "mean ± std" column."""
    out = table[["Method", "Samples", *([JUDGED_COUNT[1]] if JUDGED_COUNT[1] in table else [])]].copy()
    for column in table.columns:
        if column.endswith(" mean"):
            name = column[: -len(" mean")]
            std = table[f"{name} std"]
            out[name] = [f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(table[column], std)]
    return out


def caption(table: pd.DataFrame, config: Optional[Mapping] = None) -> str:
    counts = sorted(set(table["Samples"]))
    n = f"{counts[0]} test prefixes" if len(counts) == 1 else "the inverted test prefixes (column Samples)"
    return (
        f"Inversion of {n}, the same for every method: mean ± std (ddof 1) per sample. Token precision, recall "
        "and F1 on the sets of ids of the reconstructed and original prefix; exact match and positional accuracy "
        "on the 20 positions; repeated tokens in the reconstruction; the evaluated model's CE of the true suffix "
        "given the reconstruction or the original prefix, and its perplexity of either followed by the suffix. "
        "The reverse-bigram baseline is scored by the Baseline model. Generic inverters (GCG from the variant's "
        "placeholder, a relaxed one-hot inverter) search the same windows with the variant's model within the beam "
        "search's forward budget; inversion_vs_generic compares them with the beam search, paired."
        + (judged(config) if config is not None and any(c.startswith("Similarity") for c in table.columns) else "")
    )


def judged(config: Mapping) -> str:
    return (
        " Judge columns: cosine similarity of the reconstructed and original prefix (primary) and of the full "
        f"texts, and judge perplexity of the first {config['judge']['ppl_words']} words of each prefix, alone "
        f"and followed by the suffix ({judges_named(config)}). A reconstruction of special tokens only decodes to "
        f"an empty text, which has no perplexity: the judge perplexity means are over the {JUDGED_COUNT[1]} "
        "samples of each row."
    )


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"inversion metrics {path} do not exist; run `ilm invert-summary` (or `ilm judge-inversion`) first")
    return pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"])


def read_frames(inputs: Sequence[Path]) -> dict[str, pd.DataFrame]:
    """{method: per-sample metrics}: inversion.csv, joined by sample with inversion_judged.csv when that is given."""
    paths = [Path(p) for p in inputs]
    frames = {variant_of(p): _read(p) for p in paths if p.name != JUDGED and p.suffix == ".csv"}
    for path in (p for p in paths if p.name == JUDGED):
        method = variant_of(path)
        if method not in frames:
            raise ValueError(f"{path} is given without its method's inversion.csv")
        judged_frame = _read(path)[["sample", *(c for c, _ in TEXT_METRICS)]]
        merged = frames[method].merge(judged_frame, on="sample", how="left", validate="one_to_one")
        if merged[TEXT_METRICS[0][0]].isna().any() or len(judged_frame) != len(frames[method]):
            raise ValueError(f"{path} does not judge exactly the samples of {method}'s inversion.csv; rerun judge_inversion")
        frames[method] = merged
    return frames


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer=None) -> None:
    """results/tables/inversion.{csv,md,tex,html}."""
    table = build(read_frames(inputs))
    stem = Path(out_stem)
    shown = pm(table)
    write_text(stem.with_suffix(".csv"), table.to_csv(index=False))
    write_text(stem.with_suffix(".md"), to_markdown(shown))
    text = caption(table, config)
    cols = "l" + "r" * (len(shown.columns) - 1)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(text)}}}",
             r"\label{tab:inversion}", r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in shown.columns) + r" \\", r"\midrule"]
    for row in shown.itertuples(index=False):
        lines.append(" & ".join(latex_escape(str(v)).replace("±", r"$\pm$") for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    write_text(stem.with_suffix(".tex"), "\n".join(lines) + "\n")
    write_html(table, stem, text)
