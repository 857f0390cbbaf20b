"""GCG merge, success-rate sweep, Figure 4 and the GCG tables (method-spec §4.4) on hand-made records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from ilm.config import validate_config
from ilm.gcg_report import figure_success_rate, summarise_shards, table_gcg_examples, table_gcg_summary
from ilm.model import SPECIAL_TOKENS

STEPS = 4


def config(**gcg) -> dict:
    base = dict(prefix_length=2, target_length=2, steps=STEPS, iterations=[1, 2, 4], examples=2)
    return validate_config({"gcg": {**base, **gcg}})


def record(sample: int, orig: float, trajectory: list[float], best_step: int, kl: float = 0.5) -> dict:
    return {
        "sample": sample,
        "prefix_ids": [6, 7],
        "target_ids": [8, 9],
        "attack_ids": [10, 11],
        "orig_loss": orig,
        "attack_loss": trajectory[-1],
        "best_step": best_step,
        "trajectory": trajectory,
        "kl": kl,
        "seconds": 1.0,
    }


# Hand-made trajectories: (orig, trajectory, best_step).
# s0 succeeds from step 2 on (best first reached at step index 3); s1 never succeeds;
# s2 succeeds at step 1 already (best at index 0); s3 ties the original exactly at index 1.
RECORDS = [
    record(0, 2.0, [3.0, 1.9, 1.8, 1.5], 3, kl=1.0),
    record(1, 1.0, [4.0, 3.0, 2.0, 1.5], 3, kl=0.2),
    record(2, 3.0, [2.5, 2.5, 2.5, 2.5], 0, kl=2.0),
    record(3, 2.0, [2.5, 2.0, 2.0, 2.0], 1, kl=0.4),
]


def write_shards(folder: Path, records: list[dict], n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"shard{k}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records[k::n]))
        paths.append(path)
    return paths


def summarise(tmp_path: Path, variant: str, records: list[dict]) -> tuple[Path, Path]:
    shards = write_shards(tmp_path / "gcg" / variant, records)
    per_sample = tmp_path / "metrics" / variant / "gcg.csv"
    sweep = tmp_path / "metrics" / variant / "gcg_sweep.csv"
    summarise_shards(shards, variant, per_sample, sweep, config())
    return per_sample, sweep


def test_sweep_arithmetic_both_definitions(tmp_path):
    """Success at s uses the best-so-far loss after s steps; the post-hoc rate needs best_step < s and final success."""
    per_sample_csv, sweep_csv = summarise(tmp_path, "base", RECORDS)
    sweep = pd.read_csv(sweep_csv).set_index("iterations")
    # s=1: s2 only. s=2: s0 (1.9 <= 2.0), s2, s3 (tie). s=4: same three.
    assert sweep.loc[1, "success_rate"] == pytest.approx(1 / 4)
    assert sweep.loc[2, "success_rate"] == pytest.approx(3 / 4)
    assert sweep.loc[4, "success_rate"] == pytest.approx(3 / 4)
    # Post hoc: s2 (best at 0) counts from s=1, s3 (best at 1) from s=2, s0 (best at 3) only at s=4.
    assert sweep.loc[1, "success_rate_posthoc"] == pytest.approx(1 / 4)
    assert sweep.loc[2, "success_rate_posthoc"] == pytest.approx(2 / 4)
    assert sweep.loc[4, "success_rate_posthoc"] == pytest.approx(3 / 4)
    assert (sweep["samples"] == 4).all() and (sweep["variant"] == "base").all()

    per_sample = pd.read_csv(per_sample_csv)
    assert per_sample["sample"].tolist() == [0, 1, 2, 3]
    assert per_sample["success"].tolist() == [True, False, True, True]
    assert per_sample["delta_loss"].tolist() == pytest.approx([0.5, -0.5, 0.5, 0.0])
    assert per_sample["best_loss_2"].tolist() == pytest.approx([1.9, 3.0, 2.5, 2.0])
    assert per_sample["attack_ids"].tolist() == ["10 11"] * 4


def test_merge_rejects_duplicates_and_wrong_lengths(tmp_path):
    """A sample in two shards, or a trajectory whose length differs from gcg.steps, raises ValueError."""
    shards = write_shards(tmp_path / "dup", RECORDS + [RECORDS[0]])
    with pytest.raises(ValueError, match="more than one"):
        summarise_shards(shards, "base", tmp_path / "a.csv", tmp_path / "b.csv", config())
    short = [record(0, 1.0, [1.0, 0.5], 1)]
    shards = write_shards(tmp_path / "short", short, n=1)
    with pytest.raises(ValueError, match="gcg.steps"):
        summarise_shards(shards, "base", tmp_path / "a.csv", tmp_path / "b.csv", config())
    assert not (tmp_path / "a.csv").exists()


def test_figure_has_one_line_per_variant(tmp_path):
    """Figure 4 is written as PDF and PNG with one line per variant, labelled with the paper names and sample counts."""
    sweeps = [summarise(tmp_path, v, RECORDS)[1] for v in ("identity", "base")]
    fig = figure_success_rate(sweeps, tmp_path / "figures" / "gcg_success_rate", config())
    assert (tmp_path / "figures" / "gcg_success_rate.pdf").stat().st_size > 0
    assert (tmp_path / "figures" / "gcg_success_rate.png").stat().st_size > 0
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["Baseline (n=4)", "Identity (n=4)"]  # paper order
    assert ax.lines[0].get_linestyle() != ax.lines[1].get_linestyle()
    assert ax.lines[0].get_marker() != ax.lines[1].get_marker()
    assert list(ax.lines[0].get_ydata()) == pytest.approx([25.0, 75.0, 75.0])


def test_summary_table_rows_and_subsets(tmp_path):
    """The summary has one row per variant with subset means, and NaN where a subset is empty."""
    base = summarise(tmp_path, "base", RECORDS)[0]
    all_fail = [record(i, 0.1, [1.0] * STEPS, 0) for i in range(3)]
    bert = summarise(tmp_path, "bert_like", all_fail)[0]
    stem = tmp_path / "tables" / "gcg_summary"
    table_gcg_summary([bert, base], stem, config())
    table = pd.read_csv(stem.with_suffix(".csv"))
    assert table["Model"].tolist() == ["Baseline", "Bert-like"]
    row = table.iloc[0]
    assert row["Samples"] == 4 and row["Success (%)"] == pytest.approx(75.0)
    assert row["Attack loss succ."] == pytest.approx((1.5 + 2.5 + 2.0) / 3)
    assert row["Delta loss fail"] == pytest.approx(-0.5)
    assert row["KL succ."] == pytest.approx((1.0 + 2.0 + 0.4) / 3) and row["KL fail"] == pytest.approx(0.2)
    assert math.isnan(table.iloc[1]["Attack loss succ."]) and table.iloc[1]["Success (%)"] == 0.0
    assert stem.with_suffix(".md").exists() and stem.with_suffix(".tex").exists()


def word_tokenizer(path: Path) -> Path:
    """A word-level tokenizer whose words need LaTeX escaping."""
    words = SPECIAL_TOKENS + ["a_b", "&", "50%", "cat", "dog", "runs", "far"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


def test_examples_table_decodes_escapes_and_ranks(tmp_path):
    """Examples are decoded, LaTeX-escaped, the lowest-loss successes, with a note for a variant without success."""
    tok = word_tokenizer(tmp_path / "tokenizer.json")
    records = [
        {**record(0, 2.0, [1.0] * STEPS, 0), "prefix_ids": [6, 7, 8], "attack_ids": [1, 9, 6], "target_ids": [10, 11]},
        {**record(1, 2.0, [0.5] * STEPS, 0), "prefix_ids": [9, 10], "attack_ids": [11, 12], "target_ids": [6, 8]},
        {**record(2, 2.0, [1.5] * STEPS, 0), "prefix_ids": [9, 9], "attack_ids": [9, 9], "target_ids": [9, 9]},
        record(3, 0.1, [3.0] * STEPS, 0),
    ]
    base = summarise(tmp_path, "base", records)[0]
    failing = summarise(tmp_path, "inv_first", [record(0, 0.1, [1.0] * STEPS, 0)])[0]
    stem = tmp_path / "tables" / "gcg_examples"
    table_gcg_examples([failing, base], stem, tok, config())
    tex = stem.with_suffix(".tex").read_text()
    assert not stem.with_suffix(".csv").exists()
    assert r"a\_b \& 50\%" in tex and "a_b" not in tex
    assert r"\textless{}s\textgreater{} cat a\_b" in tex  # attack of sample 0, special token visible
    # examples=2: samples 1 (0.5) then 0 (1.0); sample 2 (1.5) is left out.
    assert tex.index(r"\textbf{0.500}") < tex.index(r"\textbf{1.000}") and r"\textbf{1.500}" not in tex
    assert tex.index("Baseline") < tex.index("Inv-First")
    assert "No successful attack among 1 samples" in tex
    assert tex.count(r"\begin{tabular}") == 1 and r"\toprule" in tex
    assert tex.count("{") == tex.count("}")  # braces balance: the file compiles as far as grouping goes
