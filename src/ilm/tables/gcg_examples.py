"""Table `gcg_examples` (rule tabulate_gcg_examples): the lowest-loss successful attacks, decoded ("evil twins")."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from ilm.io import write_text
from ilm.names import order_variants, variant_name
from ilm.tables.common import latex_escape, read_csvs, write_html


def _tex_text(text: str) -> str:
    """Decoded text made safe for LaTeX, special tokens and line breaks kept visible."""
    out = latex_escape(text).replace("<", r"\textless{}").replace(">", r"\textgreater{}")
    return out.replace("\n", r"\P{}")


def _ids(text: str) -> list[int]:
    return [int(t) for t in str(text).split()]


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer: Optional[Path] = None) -> None:
    """The `gcg.examples` lowest-loss successful attacks per variant, decoded; writes out_stem.tex and .html."""
    from ilm.data import load_tokenizer

    if tokenizer is None:
        raise ValueError("the gcg_examples table decodes token ids: pass --tokenizer results/data/tokenizer.json")
    n_examples = int(config["gcg"]["examples"])
    tok = load_tokenizer(Path(tokenizer))
    per_sample = read_csvs(inputs, "per-sample GCG file")
    groups = {v: g for v, g in per_sample.groupby("variant")}

    def text(ids: str) -> str:
        return tok.decode(_ids(ids), skip_special_tokens=False)

    def decode(ids: str) -> str:
        return _tex_text(text(ids))

    caption = (
        f"The {n_examples} successful GCG attacks with the lowest target CE per model: original prefix "
        "$x$, attack prefix $x^*$ and target $y$, with the target CE after each prefix."
    )
    shown = []  # the HTML version's rows
    lines = [
        r"\begin{table*}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        r"\label{tab:gcg-examples}",
        r"\small",
        r"\begin{tabular}{@{}l p{0.75\linewidth} r@{}}",
        r"\toprule",
        r" & Text & Target CE \\",
    ]
    for variant in order_variants(groups):
        g = groups[variant]
        best = g[g["success"].astype(bool)].sort_values(["attack_loss", "sample"]).head(n_examples)
        lines += [r"\midrule", rf"\multicolumn{{3}}{{@{{}}l}}{{\textbf{{{latex_escape(variant_name(variant))}}}}} \\"]
        if best.empty:
            lines.append(rf"\multicolumn{{3}}{{@{{}}l}}{{\emph{{No successful attack among {len(g)} samples.}}}} \\")
            shown.append((variant_name(variant), "", f"No successful attack among {len(g)} samples.", float("nan")))
            continue
        for i, row in enumerate(best.itertuples(index=False)):
            if i:
                lines.append(r"\addlinespace")
            lines += [
                rf"$x$ & {decode(row.prefix_ids)} & {row.orig_loss:.3f} \\",
                rf"$x^*$ & {decode(row.attack_ids)} & \textbf{{{row.attack_loss:.3f}}} \\",
                rf"$y$ & {decode(row.target_ids)} & \\",
            ]
            shown += [(variant_name(variant), "x", text(row.prefix_ids), row.orig_loss),
                      (variant_name(variant), "x*", text(row.attack_ids), row.attack_loss),
                      (variant_name(variant), "y", text(row.target_ids), float("nan"))]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table*}"]
    write_text(Path(out_stem).with_suffix(".tex"), "\n".join(lines) + "\n")
    html_caption = caption.replace("$x^*$", "x*").replace("$", "")
    write_html(pd.DataFrame(shown, columns=["Model", "", "Text", "Target CE"]), out_stem, html_caption, wrap=["Text"])
