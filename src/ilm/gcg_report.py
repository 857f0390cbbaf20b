"""GCG results: shards merged per variant, the success-rate sweep, Figure 4 and the GCG tables (method-spec §4.4).

Success at budget s (DESIGN fidelity decisions): the best-so-far attack after s steps has
target CE <= the original prefix's, i.e. trajectory[s-1] <= orig_loss. The paper's post-hoc
definition (final best attack first reached within s steps, and finally successful) is
reported beside it as `success_rate_posthoc`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ilm.io import atomic_path, write_text
from ilm.tables import latex_escape, order_variants, variant_name, write_table

log = logging.getLogger("ilm.gcg_report")

_ID_COLUMNS = ("prefix_ids", "target_ids", "attack_ids")


def budget_column(iterations: int) -> str:
    """Per-sample column holding the best-so-far loss after `iterations` steps."""
    return f"best_loss_{iterations}"


def read_shard(path: Path) -> list[dict]:
    """The records of one finished shard file (one JSON object per line)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"GCG shard {path} does not exist; run `ilm gcg-attack` for it first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _validate(records: list[dict], steps: int, sources: dict[int, Path]) -> None:
    seen: dict[int, int] = {}
    for rec in records:
        seen[rec["sample"]] = seen.get(rec["sample"], 0) + 1
    duplicates = sorted(s for s, n in seen.items() if n > 1)
    if duplicates:
        raise ValueError(
            f"samples {duplicates[:10]} appear in more than one GCG record; pass each shard once and "
            "make sure all shards come from the same gcg.shards setting"
        )
    for rec in records:
        if len(rec["trajectory"]) != steps:
            raise ValueError(
                f"{sources[rec['sample']]}: sample {rec['sample']} has a trajectory of {len(rec['trajectory'])} "
                f"steps but gcg.steps is {steps}; rerun `ilm gcg-attack` with the current config"
            )
        if not 0 <= rec["best_step"] < steps:
            raise ValueError(f"{sources[rec['sample']]}: sample {rec['sample']} has best_step {rec['best_step']}")


def per_sample_table(records: list[dict], variant: str, iterations: Sequence[int]) -> pd.DataFrame:
    """One row per attacked sample, ids as space-separated strings, best-so-far loss at every budget."""
    rows = []
    for rec in sorted(records, key=lambda r: r["sample"]):
        row = {
            "variant": variant,
            "sample": int(rec["sample"]),
            "orig_loss": rec["orig_loss"],
            "attack_loss": rec["attack_loss"],
            "delta_loss": rec["orig_loss"] - rec["attack_loss"],
            "success": bool(rec["attack_loss"] <= rec["orig_loss"]),
            "best_step": int(rec["best_step"]),
            "kl": rec["kl"],
            "seconds": rec.get("seconds", float("nan")),
        }
        row.update({key: " ".join(str(int(t)) for t in rec[key]) for key in _ID_COLUMNS})
        row.update({budget_column(s): rec["trajectory"][s - 1] for s in iterations})
        rows.append(row)
    columns = [
        "variant",
        "sample",
        "orig_loss",
        "attack_loss",
        "delta_loss",
        "success",
        "best_step",
        "kl",
        "seconds",
        *_ID_COLUMNS,
        *(budget_column(s) for s in iterations),
    ]
    return pd.DataFrame(rows, columns=columns)


def sweep_table(per_sample: pd.DataFrame, variant: str, iterations: Sequence[int]) -> pd.DataFrame:
    """Success rate at each iteration budget s (Figure 4), both definitions, over all attacked samples."""
    n = len(per_sample)
    rows = []
    for s in iterations:
        best = per_sample[budget_column(s)].to_numpy(dtype=float)
        orig = per_sample["orig_loss"].to_numpy(dtype=float)
        reached = per_sample["best_step"].to_numpy() < s  # 0-based step index: reached within s steps
        final = per_sample["success"].to_numpy(dtype=bool)
        rows.append(
            {
                "variant": variant,
                "iterations": int(s),
                "samples": n,
                "success_rate": float(np.mean(best <= orig)) if n else float("nan"),
                "success_rate_posthoc": float(np.mean(reached & final)) if n else float("nan"),
                "mean_best_loss": float(np.mean(best)) if n else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def summarise_shards(shards: Sequence[Path], variant: str, per_sample_out: Path, sweep_out: Path, config: dict) -> None:
    """Merge one variant's shard files into gcg.csv (per sample) and gcg_sweep.csv (per budget)."""
    gcg = config["gcg"]
    iterations = sorted(int(s) for s in gcg["iterations"])
    records, sources = [], {}
    for shard in shards:
        for rec in read_shard(Path(shard)):
            records.append(rec)
            sources.setdefault(rec["sample"], Path(shard))
    _validate(records, int(gcg["steps"]), sources)
    per_sample = per_sample_table(records, variant, iterations)
    sweep = sweep_table(per_sample, variant, iterations)
    write_text(per_sample_out, per_sample.to_csv(index=False))
    write_text(sweep_out, sweep.to_csv(index=False))
    log.info(
        "%s: %d samples from %d shards, success %s",
        variant,
        len(per_sample),
        len(shards),
        f"{per_sample['success'].mean():.3f}" if len(per_sample) else "n/a",
    )


def _read_csvs(paths: Sequence[Path], what: str) -> pd.DataFrame:
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{what} {path} does not exist; run `ilm gcg-summary` for that variant first")
        frames.append(
            pd.read_csv(path, dtype={c: str for c in _ID_COLUMNS}, keep_default_na=False, na_values=["", "nan", "NaN"])
        )
    if not frames:
        raise ValueError(f"no {what} given")
    return pd.concat(frames, ignore_index=True)


# Distinct marker and dash per variant so the figure reads in grayscale.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DASHES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)))


def figure_success_rate(sweep_csvs: Sequence[Path], out_stem: Path, config: dict):
    """Figure 4: GCG success rate (%) vs. iterations, one line per variant; writes out_stem.pdf and .png."""
    import seaborn as sns
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    sweep = _read_csvs(sweep_csvs, "sweep file")
    by_variant = {v: g.sort_values("iterations") for v, g in sweep.groupby("variant")}
    out_stem = Path(out_stem)
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.2):
        palette = sns.color_palette("colorblind", n_colors=len(by_variant))
        fig = Figure(figsize=(5.5, 3.8), layout="constrained")
        ax = fig.add_subplot()
        for i, variant in enumerate(order_variants(by_variant)):
            g = by_variant[variant]
            ax.plot(
                g["iterations"],
                100.0 * g["success_rate"],
                label=f"{variant_name(variant)} (n={int(g['samples'].iloc[0])})",
                color=palette[i],
                marker=_MARKERS[i % len(_MARKERS)],
                linestyle=_DASHES[i % len(_DASHES)],
                linewidth=1.6,
                markersize=5,
            )
        ax.set_xlabel("GCG iterations")
        ax.set_ylabel("Success rate (%)")
        ax.set_xticks(sorted(sweep["iterations"].unique()))
        ax.set_ylim(bottom=0)
        ax.set_title("GCG attack success rate vs. iterations")
        ax.legend(title="Model (attacked samples)", frameon=True)
        for suffix in ("pdf", "png"):
            with atomic_path(out_stem.with_suffix(f".{suffix}")) as tmp:
                fig.savefig(tmp, format=suffix, dpi=200)
    return fig


def _subset_mean(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].mean()) if len(frame) else float("nan")


def summary_table(per_sample: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: success rate and mean losses / KL overall, on successes and on failures (§4.4)."""
    rows = []
    groups = {v: g for v, g in per_sample.groupby("variant")}
    for variant in order_variants(groups):
        g = groups[variant]
        success = g["success"].astype(bool)
        row = {"Model": variant_name(variant), "Samples": len(g), "Success (%)": 100.0 * float(success.mean())}
        for subset, frame in (("", g), (" succ.", g[success]), (" fail", g[~success])):
            row[f"Orig. loss{subset}"] = _subset_mean(frame, "orig_loss")
            row[f"Attack loss{subset}"] = _subset_mean(frame, "attack_loss")
            row[f"Delta loss{subset}"] = _subset_mean(frame, "delta_loss")
        for subset, frame in (("", g), (" succ.", g[success]), (" fail", g[~success])):
            row[f"KL{subset}"] = _subset_mean(frame, "kl")
        rows.append(row)
    return pd.DataFrame(rows)


def table_gcg_summary(per_sample_csvs: Sequence[Path], out_stem: Path, config: dict) -> None:
    """The main robustness table: out_stem.{csv,md,tex}, one row per variant."""
    steps = int(config["gcg"]["steps"])
    write_table(
        summary_table(_read_csvs(per_sample_csvs, "per-sample GCG file")),
        out_stem,
        digits=3,
        caption=(
            f"GCG prefix attacks after {steps} iterations: success rate (attack CE <= original CE on the target), "
            "mean target CE of the original and attack prefixes and their difference, and KL(original || attack), "
            "overall and on successful and failed attacks."
        ),
        label="tab:gcg-summary",
    )


def _tex_text(text: str) -> str:
    """Decoded text made safe for LaTeX, special tokens and line breaks kept visible."""
    out = latex_escape(text).replace("<", r"\textless{}").replace(">", r"\textgreater{}")
    return out.replace("\n", r"\P{}")


def _ids(text: str) -> list[int]:
    return [int(t) for t in str(text).split()]


def table_gcg_examples(per_sample_csvs: Sequence[Path], out_stem: Path, tokenizer_path: Path, config: dict) -> None:
    """The lowest-loss successful attacks per variant, decoded (the paper's "evil twins"); writes out_stem.tex."""
    from ilm.data import load_tokenizer

    n_examples = int(config["gcg"]["examples"])
    tokenizer = load_tokenizer(Path(tokenizer_path))
    per_sample = _read_csvs(per_sample_csvs, "per-sample GCG file")
    groups = {v: g for v, g in per_sample.groupby("variant")}

    def decode(ids: str) -> str:
        return _tex_text(tokenizer.decode(_ids(ids), skip_special_tokens=False))

    lines = [
        r"\begin{table*}[t]",
        r"\centering",
        rf"\caption{{The {n_examples} successful GCG attacks with the lowest target CE per model: original prefix "
        r"$x$, attack prefix $x^*$ and target $y$, with the target CE after each prefix.}",
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
            continue
        for i, row in enumerate(best.itertuples(index=False)):
            if i:
                lines.append(r"\addlinespace")
            lines += [
                rf"$x$ & {decode(row.prefix_ids)} & {row.orig_loss:.3f} \\",
                rf"$x^*$ & {decode(row.attack_ids)} & \textbf{{{row.attack_loss:.3f}}} \\",
                rf"$y$ & {decode(row.target_ids)} & \\",
            ]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table*}"]
    write_text(Path(out_stem).with_suffix(".tex"), "\n".join(lines) + "\n")
