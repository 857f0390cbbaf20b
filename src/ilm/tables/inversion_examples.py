"""Table `inversion_examples` (rule tabulate_inversion_examples): the most fluent reconstructions, decoded (§5, E14).

Per method (each variant and the reverse-bigram baseline), the `invert.examples` reconstructions of
lowest judge perplexity (first `judge.ppl_words` words of the reconstructed prefix): the original
prefix x, the reconstruction x̂ and the first `invert.example_words` words of the true suffix y.
Read from results/metrics/<method>/inversion_judged.csv alone, which holds the decoded texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from ilm.io import write_text
from ilm.judge_runs import INVERSION_TEXTS
from ilm.judges import first_words, judges_named
from ilm.tables.common import latex_escape, variant_of, write_html
from ilm.tables.gcg_examples import _tex_text
from ilm.tables.inversion import method_name, order_methods

RANK = "judge_ppl_prefix_reconstruction"


def read_judged(inputs: Sequence[Path]) -> dict[str, pd.DataFrame]:
    frames = {}
    for path in map(Path, inputs):
        if not path.is_file():
            raise ValueError(f"judged inversions {path} do not exist; run `ilm judge-inversion` for it first")
        frame = pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"])
        frames[variant_of(path)] = frame.fillna({c: "" for c in INVERSION_TEXTS})  # an empty decode stays ""
    return frames


def most_fluent(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """The n rows of lowest judge perplexity of the reconstruction (ties by sample; NaN last)."""
    return frame.sort_values([RANK, "sample"], na_position="last").head(n)


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer: Optional[Path] = None) -> None:
    """results/tables/inversion_examples.tex and .html."""
    frames = read_judged(inputs)
    n, words = int(config["invert"]["examples"]), int(config["invert"]["example_words"])
    caption = (
        f"The {n} most fluent reconstructions per method, by judge perplexity of the reconstructed prefix "
        f"({judges_named(config)}): original prefix $x$, reconstruction $\\hat{{x}}$ and the first {words} "
        "words of the true suffix $y$, with the judge perplexity of each prefix."
    )
    shown = []  # the HTML version's rows
    lines = [r"\begin{table*}[t]", r"\centering", rf"\caption{{{caption}}}", r"\label{tab:inversion-examples}",
             r"\small", r"\begin{tabular}{@{}l p{0.75\linewidth} r@{}}", r"\toprule", r" & Text & Judge PPL \\"]
    for method in order_methods(frames):
        f = frames[method]
        lines += [r"\midrule", rf"\multicolumn{{3}}{{@{{}}l}}{{\textbf{{{latex_escape(method_name(method))}}}}} \\"]
        for i, row in enumerate(most_fluent(f, n).itertuples(index=False)):
            if i:
                lines.append(r"\addlinespace")
            lines += [
                rf"$x$ & {_tex_text(str(row.prefix_text))} & {row.judge_ppl_prefix_original:.1f} \\",
                rf"$\hat{{x}}$ & {_tex_text(str(row.reconstruction_text))} & "
                rf"\textbf{{{row.judge_ppl_prefix_reconstruction:.1f}}} \\",
                rf"$y$ & {_tex_text(first_words(str(row.suffix_text), words))} \dots & \\",
            ]
            shown += [(method_name(method), "x", str(row.prefix_text), row.judge_ppl_prefix_original),
                      (method_name(method), "x̂", str(row.reconstruction_text), row.judge_ppl_prefix_reconstruction),
                      (method_name(method), "y", first_words(str(row.suffix_text), words) + " …", float("nan"))]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table*}"]
    write_text(Path(out_stem).with_suffix(".tex"), "\n".join(lines) + "\n")
    html_caption = caption.replace("$\\hat{x}$", "x̂").replace("$", "")
    write_html(pd.DataFrame(shown, columns=["Method", "", "Text", "Judge PPL"]), out_stem, html_caption, wrap=["Text"])
