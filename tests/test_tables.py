"""Every table and figure, built from hand-made metric files: each cell against the numbers it comes from."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from ilm.cli import main
from ilm.config import validate_config
from ilm.figures.gcg_success_rate import draw
from ilm.gcg_merge import summarise_shards
from ilm.names import SPECIAL_TOKENS
from ilm.stats import StatisticsConfig
from ilm.tables import gcg_examples, gcg_summary, inverse_accuracy, table_module
from ilm.tables.common import to_latex, to_markdown, write_table

STEPS = 4


def config(**gcg) -> dict:
    return validate_config({"gcg": {**dict(prefix_length=2, target_length=2, steps=STEPS, iterations=[1, 2, 4],
                                           examples=2), **gcg}})


STORIES = np.array([0, 0, 1, 1])  # four test windows from two stories


def write_eval_metrics(root: Path, variant: str, ce: float, acc: float) -> Path:
    """forward.json, inverse.json and eval_windows.csv of one variant (and root/test_stories.npy); the protocols get
    distinct numbers. Story 0's windows sit 0.1 nats (5 points) below the mean and story 1's as far above, so a
    story bootstrap's 95 % interval is exactly mean -/+ 0.1 (both drawn twice has probability 1/4 > 2.5 %)."""
    d = root / "metrics" / variant
    d.mkdir(parents=True)
    np.save(root / "test_stories.npy", STORIES)
    (d / "forward.json").write_text(json.dumps({"ce": ce, "perplexity": math.exp(ce), "top1": acc, "top3": acc + 0.1,
                                                "top5": acc + 0.2, "tokens": 1000, "meta": {}}))
    inverse = {p: {"top1": acc / (i + 2), "top3": acc / (i + 2) + 0.1, "top5": acc / (i + 2) + 0.2, "ce": 3.0 + i,
                   "rows": 10, "without_g": {"top1": acc / (i + 4), "top3": 0.5, "top5": 0.6, "ce": 4.0}}
               for i, p in enumerate(("identity", "bert_like", "inv_first"))}
    (d / "inverse.json").write_text(json.dumps({**inverse, "meta": {}}))
    shift = np.where(STORIES == 0, -1.0, 1.0)  # (4,)
    windows = {"window": np.arange(4), "forward_ce_sum": 10 * (ce + 0.1 * shift), "forward_rows": np.full(4, 10)}
    for i, p in enumerate(("identity", "bert_like", "inv_first")):
        windows.update({f"{p}_ce_sum": np.full(4, 10.0), f"{p}_rows": np.full(4, 10),
                        f"{p}_top1": 10 * (acc / (i + 2) + 0.05 * shift),
                        f"{p}_top1_without_g": np.full(4, 10 * acc / (i + 4))})
    pd.DataFrame(windows).to_csv(d / "eval_windows.csv", index=False)
    return d


def eval_inputs(root: Path, dirs: list[Path], name: str) -> list[Path]:
    """A table's inputs: each variant's `name` and eval_windows.csv, and the stories."""
    return [*(d / name for d in dirs), *(d / "eval_windows.csv" for d in dirs), root / "test_stories.npy"]


CONFIG = {"statistics": {"confidence": 0.95, "bootstrap_resamples": 1000, "seed": 0}}


class _Cells(HTMLParser):
    """The header and body cells of every <table> in an HTML page, as text (entities decoded)."""

    def __init__(self):
        super().__init__()
        self.tables, self.header, self.rows, self._cell = 0, [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = (tag, [])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1].append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            kind, parts = self._cell
            (self.header if kind == "th" else self.rows[-1]).append("".join(parts).strip())
            self._cell = None


def html_cells(path: Path) -> _Cells:
    cells = _Cells()
    cells.feed(path.read_text())
    cells.rows = [r for r in cells.rows if r]
    return cells


def test_forward_table_cells_are_the_metrics_in_paper_order(tmp_path):
    """Rows follow the paper's order and names; CE, PPL and tokens are copied, accuracies become percentages."""
    dirs = [write_eval_metrics(tmp_path, v, ce, acc) for v, ce, acc in [("inv_first", 2.0, 0.5), ("base", 1.5, 0.3),
                                                                          ("identity", 1.7, 0.4)]]
    files = eval_inputs(tmp_path, dirs, "forward.json")
    assert main(["table", "forward_quality", "--inputs", *map(str, files), "--out-stem", str(tmp_path / "t" / "fq")]) == 0
    df = pd.read_csv(tmp_path / "t" / "fq.csv")
    assert list(df["Model"]) == ["Baseline", "Identity", "Inv-First"]
    assert df["CE"].tolist() == pytest.approx([1.5, 1.7, 2.0])
    # the interval resamples the two stories: mean -/+ 0.1 (a window bootstrap would give a narrower one)
    assert df["CE low"].tolist() == pytest.approx([1.4, 1.6, 1.9])
    assert df["CE high"].tolist() == pytest.approx([1.6, 1.8, 2.1])
    assert df["PPL"].tolist() == pytest.approx([math.exp(1.5), math.exp(1.7), math.exp(2.0)])
    assert df["Top-1 (%)"].tolist() == pytest.approx([30.0, 40.0, 50.0])
    assert df["Top-5 (%)"].tolist() == pytest.approx([50.0, 60.0, 70.0])
    assert df["Tokens"].tolist() == [1000] * 3
    md = (tmp_path / "t" / "fq.md").read_text().splitlines()
    assert len(md) == 2 + 3 and md[2].startswith("| Baseline | 1.500 | 1.400 | 1.600 | 4.482 | 30.000 |")
    tex = (tmp_path / "t" / "fq.tex").read_text()
    assert r"Model & CE & CE low & CE high & PPL & Top-1 (\%) & Top-3 (\%) & Top-5 (\%) & Tokens \\" in tex
    assert r"Inv-First & 2.000 & 1.900 & 2.100 & 7.389 & 50.000 & 60.000 & 70.000 & 1000 \\" in tex


def test_inverse_table_cells_follow_each_protocol(tmp_path):
    """Each row holds top-k accuracy (%) under every protocol, each from its own protocol's metrics."""
    dirs = [write_eval_metrics(tmp_path, v, 1.0, a) for v, a in [("bert_like", 0.6), ("base", 0.4)]]
    df = inverse_accuracy.build(eval_inputs(tmp_path, dirs, "inverse.json"), CONFIG)
    assert list(df["Model"]) == ["Baseline", "Bert-like"]
    for i, protocol in enumerate(["Identity", "Bert-like", "Inv-First"]):
        assert df[f"{protocol} top-1 (%)"].tolist() == pytest.approx([40.0 / (i + 2), 60.0 / (i + 2)])
        assert df[f"{protocol} top-5 (%)"].tolist() == pytest.approx([40.0 / (i + 2) + 20, 60.0 / (i + 2) + 20])
        assert df[f"{protocol} top-1 without g (%)"].tolist() == pytest.approx([40.0 / (i + 4), 60.0 / (i + 4)])
        gain = [40.0 / (i + 2) - 40.0 / (i + 4), 60.0 / (i + 2) - 60.0 / (i + 4)]
        assert df[f"{protocol} top-1 g adds (pts)"].tolist() == pytest.approx(gain)
        # story-bootstrap intervals: -/+ 5 points around top-1 and around what g adds (paired on the same rows)
        assert df[f"{protocol} top-1 low"].tolist() == pytest.approx([40.0 / (i + 2) - 5, 60.0 / (i + 2) - 5])
        assert df[f"{protocol} g adds high"].tolist() == pytest.approx([g + 5 for g in gain])


def test_inverse_table_refuses_metrics_without_the_no_g_accuracy(tmp_path):
    """inverse.json from before `without_g` existed: a clear error asking to rerun the evaluation."""
    d = write_eval_metrics(tmp_path, "base", 1.0, 0.4)
    path = d / "inverse.json"
    metrics = json.loads(path.read_text())
    del metrics["bert_like"]["without_g"]
    path.write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"base lack the 'bert_like' protocol or its accuracy without g; rerun"):
        inverse_accuracy.build(eval_inputs(tmp_path, [d], "inverse.json"), CONFIG)


def test_latex_escapes_headers_captions_and_cells():
    """Column names, the caption and cells are LaTeX-escaped; Markdown keeps them as they are."""
    df = pd.DataFrame({"Model": ["a_b & c"], "Success (%)": [12.5], "Loss #1": [0.25]})
    tex = to_latex(df, digits=1, caption="50% of x_y", label="tab:x")
    assert r"Model & Success (\%) & Loss \#1 \\" in tex
    assert r"a\_b \& c & 12.5 & 0.2 \\" in tex  # 0.25 rounds half to even
    assert r"\caption{50\% of x\_y}" in tex and r"\label{tab:x}" in tex
    assert "| a_b & c | 12.5 | 0.2 |" in to_markdown(df, digits=1)


def gcg_record(sample: int, orig: float, trajectory: list[float], best_step: int, kl: float = 0.5, **ids) -> dict:
    return {"sample": sample, "model_sha256": "a" * 64, "prefix_ids": [6, 7], "target_ids": [8, 9],
            "attack_ids": [10, 11], "orig_loss": orig, "attack_loss": trajectory[-1], "best_step": best_step,
            "trajectory": trajectory, "init_loss": trajectory[0] + 1.0, "rank_correlation": 0.5, "kl": kl,
            "seconds": 1.0, **ids}


RECORDS = [
    gcg_record(0, 2.0, [3.0, 1.9, 1.8, 1.5], 3, kl=1.0),
    gcg_record(1, 1.0, [4.0, 3.0, 2.0, 1.5], 3, kl=0.2),
    gcg_record(2, 3.0, [2.5, 2.5, 2.5, 2.5], 0, kl=2.0),
    gcg_record(3, 2.0, [2.5, 2.0, 2.0, 2.0], 1, kl=0.4),
]


def summarise(tmp_path: Path, variant: str, records: list[dict]) -> tuple[Path, Path]:
    folder = tmp_path / "gcg" / variant
    folder.mkdir(parents=True)
    shard = folder / "shard0.jsonl"
    shard.write_text("".join(json.dumps(r) + "\n" for r in records))
    per_sample, sweep = tmp_path / "metrics" / variant / "gcg.csv", tmp_path / "metrics" / variant / "gcg_sweep.csv"
    summarise_shards([shard], variant, per_sample, sweep, config())
    return per_sample, sweep


def test_gcg_summary_table_against_the_records(tmp_path):
    """Success, its interval, and subset means of losses and KL equal sums over the hand-made records."""
    base = summarise(tmp_path, "base", RECORDS)[0]
    bert = summarise(tmp_path, "bert_like", [gcg_record(i, 0.1, [1.0] * STEPS, 0) for i in range(3)])[0]
    stem = tmp_path / "tables" / "gcg_summary"
    table_module("gcg_summary").write([bert, base], stem, config())
    table = pd.read_csv(stem.with_suffix(".csv"))
    assert table["Model"].tolist() == ["Baseline", "Bert-like"]
    row = table.iloc[0]  # successes: samples 0, 2, 3 (3 of 4); failure: sample 1
    assert row["Samples"] == 4 and row["Success (%)"] == pytest.approx(75.0)
    assert (row["Success 95% low"], row["Success 95% high"]) == pytest.approx((30.06, 95.44), abs=0.01)
    assert row["Orig. loss"] == pytest.approx((2.0 + 1.0 + 3.0 + 2.0) / 4)
    assert row["Attack loss"] == pytest.approx((1.5 + 1.5 + 2.5 + 2.0) / 4)
    assert row["Attack loss succ."] == pytest.approx((1.5 + 2.5 + 2.0) / 3)
    assert row["Delta loss succ."] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert row["Delta loss fail"] == pytest.approx(-0.5)
    assert row["KL"] == pytest.approx((1.0 + 0.2 + 2.0 + 0.4) / 4)
    assert row["KL succ."] == pytest.approx((1.0 + 2.0 + 0.4) / 3) and row["KL fail"] == pytest.approx(0.2)
    assert math.isnan(table.iloc[1]["Attack loss succ."]) and table.iloc[1]["Success (%)"] == 0.0
    assert table.iloc[1]["Success 95% low"] == pytest.approx(0.0, abs=1e-9)
    tex = stem.with_suffix(".tex").read_text()
    assert r"Success (\%)" in tex and r"Success 95\% low" in tex and "after 4 iterations" in tex
    assert list(gcg_summary.build(pd.read_csv(base), StatisticsConfig.from_dict({})).columns) == list(table.columns)
    assert "on 4 attacked samples per variant" not in tex  # Bert-like has 3 samples, the Baseline 4
    assert "Wilson interval" in tex and "bootstrap" in tex and "McNemar" in tex


def per_sample_frame(variant: str, successes: list[bool], samples: list[int], attack_loss: list[float]) -> pd.DataFrame:
    """A per-sample GCG frame as gcg.csv holds it: original loss 2.0, success as given."""
    return pd.DataFrame({"variant": variant, "sample": samples, "orig_loss": 2.0, "attack_loss": attack_loss,
                         "delta_loss": [2.0 - a for a in attack_loss], "success": successes, "kl": 0.5})


def test_gcg_summary_paired_test_against_the_baseline():
    """On 6 shared samples the Baseline succeeds on 0-3, Identity on 3-4: Base only b = 3 (samples 0, 1, 2),
    Variant only c = 1 (sample 4), exact McNemar p = 2 * (C(4,0) + C(4,1)) / 2^4 = 0.625; the Baseline's cells are empty."""
    base = per_sample_frame("base", [True, True, True, True, False, False], list(range(6)), [1.0] * 6)
    identity = per_sample_frame("identity", [False, False, False, True, True, False], list(range(6)),
                                [3.0, 3.0, 3.0, 1.0, 1.0, 3.0])
    stats = StatisticsConfig.from_dict({})
    table = gcg_summary.build(pd.concat([identity, base]), stats).set_index("Model")
    assert table.loc["Identity", "Paired n"] == 6
    assert table.loc["Identity", "Base only"] == 3 and table.loc["Identity", "Variant only"] == 1
    assert table.loc["Identity", "McNemar p"] == pytest.approx(0.625, rel=1e-12)
    assert table.loc["Baseline", ["Paired n", "Base only", "Variant only", "McNemar p"]].isna().all()
    # Bootstrap over samples: a constant loss gives a zero-width interval; Identity's attack losses are
    # 1.0 or 3.0, so its interval lies within [1, 3] around the mean 7/3.
    assert (table.loc["Baseline", "Attack loss 95% low"], table.loc["Baseline", "Attack loss 95% high"]) == (1.0, 1.0)
    low, high = table.loc["Identity", "Attack loss 95% low"], table.loc["Identity", "Attack loss 95% high"]
    assert 1.0 <= low < 7 / 3 < high <= 3.0
    assert table.loc["Identity", "Delta loss 95% low"] == pytest.approx(2.0 - high)  # delta = 2 - attack, same draws

    # Partly shared samples are paired on the shared ones: Bert-like holds samples 4..9, shares 4 and 5.
    bert = per_sample_frame("bert_like", [True] * 6, list(range(4, 10)), [1.0] * 6)
    row = gcg_summary.build(pd.concat([base, bert]), stats).set_index("Model").loc["Bert-like"]
    assert (row["Paired n"], row["Base only"], row["Variant only"]) == (2, 0, 2)
    assert row["McNemar p"] == pytest.approx(2 * 0.5**2)
    caption = gcg_summary._caption(pd.concat([base, bert]), 4, stats)
    assert "Bert-like and the Baseline were attacked on different samples" in caption
    assert "on 6 attacked samples per variant" in caption

    # No shared sample is refused; without the Baseline the paired columns are left out.
    disjoint = per_sample_frame("inv_first", [True] * 2, [20, 21], [1.0] * 2)
    with pytest.raises(ValueError, match="share no attacked sample"):
        gcg_summary.build(pd.concat([base, disjoint]), stats)
    alone = gcg_summary.build(pd.concat([identity, disjoint]), stats)
    assert not set(gcg_summary.PAIRED_COLUMNS) & set(alone.columns)


def test_gcg_summary_columns_name_the_configured_level(tmp_path):
    """statistics.confidence 0.9 names the interval columns "90%" and the Wilson bounds are the 90 % ones."""
    base = summarise(tmp_path, "base", RECORDS)[0]
    stem = tmp_path / "tables" / "gcg_summary"
    gcg_summary.write([base], stem, validate_config({**config(), "statistics": {"confidence": 0.9}}))
    table = pd.read_csv(stem.with_suffix(".csv"))
    assert "Success 90% low" in table and "Attack loss 90% high" in table and "Success 95% low" not in table
    # 90 % Wilson interval of 3/4, by hand with z = 1.6449: (0.3562, 0.9421).
    assert (table.loc[0, "Success 90% low"], table.loc[0, "Success 90% high"]) == pytest.approx((35.62, 94.21), abs=0.01)
    assert r"90\% Wilson interval" in stem.with_suffix(".tex").read_text()


def word_tokenizer(path: Path) -> Path:
    """A word-level tokenizer whose words need LaTeX escaping."""
    words = list(SPECIAL_TOKENS) + ["a_b", "&", "50%", "cat", "dog", "runs", "far"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


def test_examples_table_decodes_escapes_and_ranks(tmp_path):
    """Examples are decoded, LaTeX-escaped, the lowest-loss successes, with a note for a variant without success."""
    tok = word_tokenizer(tmp_path / "tokenizer.json")
    records = [
        gcg_record(0, 2.0, [1.0] * STEPS, 0, prefix_ids=[6, 7, 8], attack_ids=[1, 9, 6], target_ids=[10, 11]),
        gcg_record(1, 2.0, [0.5] * STEPS, 0, prefix_ids=[9, 10], attack_ids=[11, 12], target_ids=[6, 8]),
        gcg_record(2, 2.0, [1.5] * STEPS, 0, prefix_ids=[9, 9], attack_ids=[9, 9], target_ids=[9, 9]),
        gcg_record(3, 0.1, [3.0] * STEPS, 0),
    ]
    base = summarise(tmp_path, "base", records)[0]
    failing = summarise(tmp_path, "inv_first", [gcg_record(0, 0.1, [1.0] * STEPS, 0)])[0]
    stem = tmp_path / "tables" / "gcg_examples"
    gcg_examples.write([failing, base], stem, config(), tokenizer=tok)
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
    rows = html_cells(stem.with_suffix(".html")).rows  # the report's view: plain decoded text, escaped only as HTML
    assert rows[3:6] == [["Baseline", "x", "a_b & 50%", "2.00"], ["Baseline", "x*", "<s> cat a_b", "1.00"],
                         ["Baseline", "y", "dog runs", "–"]]  # sample 0, after sample 1 (loss 0.50)
    assert rows[1][3] == "0.50" and rows[-1] == ["Inv-First", "", "No successful attack among 1 samples.", "–"]
    assert rows[-1] == ["Inv-First", "", "No successful attack among 1 samples.", "–"]


def test_figure_has_one_line_and_band_per_variant(tmp_path):
    """Figure 4: PDF and PNG, one line per variant (paper names, sample counts) at the sweep's rates, with CI bands."""
    sweeps = [summarise(tmp_path, v, RECORDS)[1] for v in ("identity", "base")]
    fig = draw(sweeps, tmp_path / "figures" / "gcg_success_rate", config())
    assert (tmp_path / "figures" / "gcg_success_rate.pdf").stat().st_size > 0
    assert (tmp_path / "figures" / "gcg_success_rate.png").stat().st_size > 0
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["Baseline (n=4)", "Identity (n=4)"]  # paper order
    assert ax.lines[0].get_linestyle() != ax.lines[1].get_linestyle()
    assert ax.lines[0].get_marker() != ax.lines[1].get_marker()
    assert list(ax.lines[0].get_ydata()) == pytest.approx([25.0, 75.0, 75.0])
    assert len(ax.collections) == 2  # one 95 % band per variant
    assert ax.get_legend().get_title().get_text().endswith("bands: 95% Wilson CI")
    with pytest.raises(ValueError, match="intervals at confidence 0.95 but statistics.confidence is 0.9"):
        draw(sweeps, tmp_path / "figures" / "other", validate_config({**config(), "statistics": {"confidence": 0.9}}))


def test_missing_metric_file_and_unknown_table_are_clear_errors(tmp_path, capsys):
    """The CLI reports a missing metric file or an unknown table name and exits with status 2."""
    d = write_eval_metrics(tmp_path, "base", 1.5, 0.3)
    (d / "forward.json").unlink()
    assert main(["table", "forward_quality", "--inputs", *map(str, eval_inputs(tmp_path, [d], "forward.json")),
                 "--out-stem", str(tmp_path / "fq")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["table", "forward_quality", "--inputs", str(d / "eval_windows.csv"), str(d / "forward.json"),
                 "--out-stem", str(tmp_path / "fq")]) == 2
    assert "needs results/data/test_stories.npy" in capsys.readouterr().err
    assert main(["table", "nope", "--inputs", str(tmp_path), "--out-stem", str(tmp_path / "fq")]) == 2
    assert "unknown table 'nope'" in capsys.readouterr().err
    assert main(["figure", "nope", "--inputs", str(tmp_path), "--out-stem", str(tmp_path / "fq")]) == 2
    assert "unknown figure 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "fq.csv").exists()


def write_run(models: Path, variant: str, steps: int, cfg: dict, **record) -> tuple[Path, int]:
    """A tiny saved model with the run_config.json `ilm train` writes beside it; returns (folder, its sum of numel)."""
    from tiny import save_tiny_model, tiny_model

    folder = save_tiny_model(models / variant, seed=steps)
    n_params = sum(p.numel() for p in tiny_model(seed=steps).parameters())  # the tied head is one Parameter
    run = {"config": {k: cfg[k] for k in ("data", "model", "objective", "train")}, "variant": variant,
           "steps": steps, "epochs_completed": steps / 2, "best_step": steps, **record}
    (folder / "run_config.json").write_text(json.dumps(run))
    return folder, n_params


def setup_inputs(tmp_path: Path, **record) -> tuple[list[Path], int, dict]:
    from tiny import tiny_config

    cfg = tiny_config()
    stats = {"source": "resources/x", "dataset": {"id": "roneneldan/TinyStories", "revision": "abc", "commit": "c0"},
             "vocab_size": 60, "splits": {s: {"windows": w, "tokens": 16 * w, "stories": 1}
                                          for s, w in (("train", 80), ("validation", 10), ("test", 12))}}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "stats.json").write_text(json.dumps(stats))
    inputs = [tmp_path / "data" / "stats.json"]
    for variant, steps in (("identity", 6), ("base", 4)):
        folder, n_params = write_run(tmp_path / "models", variant, steps, cfg, **record)
        inputs += [folder / name for name in ("run_config.json", "config.json", "model.safetensors")]
    return inputs, n_params, cfg


def test_setup_table_holds_counts_sizes_and_settings(tmp_path):
    """Parameters equal the model's sum of numel (tied head once); split counts come from stats.json; a value
    that differs between variants is listed per variant, in paper order; GCG samples follow gcg.count."""
    inputs, n_params, cfg = setup_inputs(tmp_path)
    main(["table", "setup", "--inputs", *map(str, inputs), "--out-stem", str(tmp_path / "t" / "setup"),
          "--config-json", json.dumps({"gcg": {"count": 5, "top_k": 4, "steps": 3, "search_width": 8}})])
    df = pd.read_csv(tmp_path / "t" / "setup.csv", dtype=str)
    value = dict(zip(df["Setting"], df["Value"]))
    assert n_params == 3376 and value["Parameters"] == str(n_params)  # 64*16 + 1 layer + norm
    assert value["Train windows"] == "80" and value["Test tokens"] == str(16 * 12)
    assert value["Tokenizer vocabulary"] == "60" and value["Window (tokens)"] == str(cfg["data"]["window"])
    assert value["Dataset"] == "roneneldan/TinyStories" and value["Dataset revision"] == "abc"
    assert value["Hidden size"] == "16" and value["Layers"] == "1" and value["Tied embeddings"] == "yes"
    assert value["lambda inverse"] == f"{cfg['objective']['lambda_inv']:g}"
    assert value["Learning rate"] == "0.01" and value["Batch (windows per step)"] == "8"
    assert value["Steps trained"] == "Baseline 4; Identity 6"
    assert value["Attacked test windows"] == "5" and value["Top-k (token candidates)"] == "4"
    assert (tmp_path / "t" / "setup.tex").read_text().count(r"\\") == len(df) + 1


def test_setup_table_refuses_a_parameter_count_training_did_not_record(tmp_path):
    """A run_config.json whose parameter count disagrees with the saved tensors is an error naming both."""
    inputs, _, _ = setup_inputs(tmp_path, parameters=3375)
    with pytest.raises(ValueError, match="holds 3376 parameters but .* records 3375"):
        table_module("setup").build(inputs, validate_config({}))


def test_token_entropy_equals_the_hand_computed_entropy(tmp_path, monkeypatch):
    """Per-position entropy (bits) of hand-made windows, and of random ones against a Counter, chunked or not."""
    from collections import Counter

    from ilm.tables import token_entropy

    windows = np.array([[7, 1, 2], [7, 1, 3], [7, 2, 3], [7, 2, 3]], dtype=np.uint16)
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "train.npy", windows)
    main(["table", "token_entropy", "--inputs", str(tmp_path / "data" / "train.npy"),
          "--out-stem", str(tmp_path / "t" / "token_entropy")])
    df = pd.read_csv(tmp_path / "t" / "token_entropy.csv")
    assert df["position"].tolist() == [0, 1, 2]
    h2 = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))  # {2: 1, 3: 3}
    assert df["entropy_bits"].tolist() == pytest.approx([0.0, 1.0, h2], abs=1e-12)
    assert df["distinct_tokens"].tolist() == [1, 2, 2] and (df["windows"] == 4).all()

    rng = np.random.default_rng(0)
    windows = rng.integers(0, 50, (37, 5)).astype(np.uint16)
    expected = []
    for t in range(5):
        counts = np.array(list(Counter(windows[:, t].tolist()).values())) / 37
        expected.append(float(-(counts * np.log2(counts)).sum()))
    monkeypatch.setattr(token_entropy, "CHUNK_WINDOWS", 4)  # several bincount passes
    entropy, _ = token_entropy.position_entropy(windows)
    assert entropy.tolist() == pytest.approx(expected, abs=1e-12)


def judged_attacks(root: Path, variant: str, success: list[bool], ppl: list[float]) -> Path:
    n = len(success)
    frame = pd.DataFrame({
        "variant": variant, "sample": range(n), "success": success, "judge_ppl_attack": ppl,
        "judge_ppl_original": [10.0] * n, "repeated_tokens_attack": list(range(n)), "repeated_tokens_original": 0,
        "similarity_attack_original": 0.5, "nonalnum_attack": 0.25, "nonalnum_original": 0.0,
        "prefix_text": "x", "attack_text": "y",
    })
    path = root / variant / "gcg_judged.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def test_gcg_naturalness_splits_by_success(tmp_path):
    """Each variant has all/success/failure rows with n and the mean and std (ddof 1) of that subset only."""
    from ilm.tables import gcg_naturalness

    inputs = [judged_attacks(tmp_path, "identity", [True, False, True, False], [100.0, 20.0, 300.0, 40.0]),
              judged_attacks(tmp_path, "base", [False, False], [5.0, 7.0])]
    cfg = validate_config({"judge": {"perplexity_model": "results/models/base"}})
    gcg_naturalness.write(inputs, tmp_path / "gcg_naturalness", cfg)
    table = pd.read_csv(tmp_path / "gcg_naturalness.csv")
    assert table[["Variant", "Subset", "n"]].values.tolist() == [
        ["Baseline", "all", 2], ["Baseline", "success", 0], ["Baseline", "failure", 2],
        ["Identity", "all", 4], ["Identity", "success", 2], ["Identity", "failure", 2]]
    ident = table[table["Variant"] == "Identity"].set_index("Subset")
    assert ident.loc["success", "Judge PPL attack mean"] == 200.0
    assert ident.loc["success", "Judge PPL attack std"] == pytest.approx(np.std([100, 300], ddof=1))
    assert ident.loc["failure", "Repeats attack mean"] == 2.0  # samples 1 and 3
    assert ident.loc["all", "Judge PPL attack mean"] == 115.0
    base = table[table["Variant"] == "Baseline"].set_index("Subset")
    assert math.isnan(base.loc["success", "Judge PPL attack mean"])
    md = (tmp_path / "gcg_naturalness.md").read_text()
    assert "| Identity | success | 2 | 200.000 ± 141.421 |" in md and "| Baseline | success | 0 | – |" in md
    tex = (tmp_path / "gcg_naturalness.tex").read_text()
    assert r"200.000 $\pm$ 141.421" in tex and "Baseline model stands in as perplexity judge" in tex


def test_inversion_examples_rank_by_judge_perplexity_and_escape(tmp_path):
    """The most fluent reconstructions first, texts LaTeX-escaped, the suffix cut to invert.example_words words."""
    from ilm.tables import inversion_examples

    frame = pd.DataFrame({
        "method": "identity", "sample": [0, 1, 2],
        "similarity_prefix": 0.5, "similarity_full": 0.5,
        "judge_ppl_prefix_reconstruction": [50.0, 3.0, float("nan")], "judge_ppl_prefix_original": [8.0, 9.0, 7.0],
        "judge_ppl_full_reconstruction": 1.0, "judge_ppl_full_original": 1.0,
        "prefix_text": ["orig zero", "50% of <s> & $5_a", "orig two"],
        "reconstruction_text": ["rec zero", "rec #one {x}", "rec two"],
        "suffix_text": ["s0", " one two three four five", "s2"],
    })
    path = tmp_path / "identity" / "inversion_judged.csv"
    path.parent.mkdir()
    frame.to_csv(path, index=False)
    cfg = validate_config({"invert": {"examples": 2, "example_words": 3}})
    inversion_examples.write([path], tmp_path / "inversion_examples", cfg)
    tex = (tmp_path / "inversion_examples.tex").read_text()
    assert tex.index("rec \\#one \\{x\\}") < tex.index("rec zero") and "rec two" not in tex
    assert r"50\% of \textless{}s\textgreater{} \& \$5\_a" in tex
    assert r"one two three \dots" in tex and "four" not in tex
    assert r"\textbf{3.0}" in tex and r"\textbf{Identity}" in tex
    rows = html_cells(tmp_path / "inversion_examples.html").rows
    assert [r[1:] for r in rows[:3]] == [["x", "50% of <s> & $5_a", "9.0"], ["x̂", "rec #one {x}", "3.0"],
                                         ["y", "one two three …", "–"]]


def test_inversion_table_joins_the_judged_file_by_sample(tmp_path):
    """Judge columns come from inversion_judged.csv matched on sample; a file judging other samples is refused."""
    from ilm.tables import inversion

    d = tmp_path / "identity"
    d.mkdir()
    pd.DataFrame({"method": "identity", "sample": [4, 9], "f1": [0.5, 1.0]}).to_csv(d / "inversion.csv", index=False)
    judged = pd.DataFrame({"sample": [9, 4], "similarity_prefix": [0.9, 0.1], "similarity_full": 0.5,
                           "judge_ppl_prefix_reconstruction": [float("nan"), 3.0], "judge_ppl_prefix_original": 1.0,
                           "judge_ppl_full_reconstruction": 1.0, "judge_ppl_full_original": 1.0})
    judged.to_csv(d / "inversion_judged.csv", index=False)
    cfg = validate_config({})
    inversion.write([d / "inversion.csv", d / "inversion_judged.csv"], tmp_path / "inversion", cfg)
    table = pd.read_csv(tmp_path / "inversion.csv")
    assert table["Similarity prefix mean"][0] == pytest.approx(0.5)
    assert table["Rec. judged"][0] == 1 and table["Judge PPL rec. mean"][0] == 3.0  # the empty reconstruction left out
    assert "| Identity | 2 | 1 | 0.750 ± 0.354 |" in (tmp_path / "inversion.md").read_text()
    assert "all-MiniLM-L6-v2" in (tmp_path / "inversion.tex").read_text()
    judged.assign(sample=[9, 5]).to_csv(d / "inversion_judged.csv", index=False)
    with pytest.raises(ValueError, match="does not judge exactly the samples"):
        inversion.write([d / "inversion.csv", d / "inversion_judged.csv"], tmp_path / "inversion", cfg)


def test_html_table_rounds_each_column_for_a_reader(tmp_path):
    """stem.html holds one <table>: rates to 0.1, a value and its interval to 2 significant digits of the half-width,
    p-values to 2 significant digits, other numbers to 3; text escaped, an empty cell shown as –."""
    df = pd.DataFrame({
        "Model": ["<Base> & co", "Identity"],
        "CE": [2.31042, 2.40311], "CE low": [2.2811, 2.3712], "CE high": [2.3399, 2.4391],  # half-widths 0.029, 0.034
        "PPL": [10.0812, 11.0593],
        "Success (%)": [75.0, 25.0], "Success 95% low": [30.06, 4.55], "Success 95% high": [95.44, 69.94],
        "McNemar p": pd.array([pd.NA, 0.000123456], dtype="Float64"),
        "KL": [0.0123456, 0.456789],
        "Tokens": [1000000, 999],
    })
    write_table(df, tmp_path / "t", digits=3, caption="A caption with <angle> brackets")
    text = (tmp_path / "t.html").read_text()
    assert text.count("<table") == 1 and "&lt;angle&gt;" in text and "&lt;Base&gt; &amp; co" in text
    cells = html_cells(tmp_path / "t.html")
    assert cells.header == ["Model", "CE [interval]", "PPL", "Success (%) [95% interval]", "McNemar p", "KL", "Tokens"]
    assert cells.rows == [
        ["<Base> & co", "2.310 [2.281, 2.340]", "10.1", "75.0 [30.1, 95.4]", "–", "0.012", "1000000"],
        ["Identity", "2.403 [2.371, 2.439]", "11.1", "25.0 [4.5, 69.9]", "0.00012", "0.457", "999"],
    ]
    assert pd.read_csv(tmp_path / "t.csv")["CE"].tolist() == [2.31042, 2.40311]  # the CSV keeps full precision


def test_every_table_writer_also_writes_html(tmp_path):
    """forward_quality through the CLI, and the mean ± std tables, each write a .html table with rounded cells."""
    files = eval_inputs(tmp_path, [write_eval_metrics(tmp_path, "base", 1.5, 0.3)], "forward.json")
    main(["table", "forward_quality", "--inputs", *map(str, files), "--out-stem", str(tmp_path / "fq")])
    cells = html_cells(tmp_path / "fq.html")
    assert cells.tables == 1 and cells.header[:3] == ["Model", "CE [interval]", "PPL"]
    # CE 1.5 in [1.4, 1.7]: half-width 0.15 gives 2 decimals; PPL e^1.5 = 4.48 to 3 digits; top-1 30 %.
    assert cells.rows[0][:4] == ["Baseline", "1.50 [1.40, 1.60]", "4.48", "30.0"]

    from ilm.tables import gcg_naturalness

    inputs = [judged_attacks(tmp_path, "identity", [True, False, True, False], [100.0, 20.0, 300.0, 40.0])]
    gcg_naturalness.write(inputs, tmp_path / "gcg_naturalness",
                          validate_config({"judge": {"perplexity_model": "results/models/base"}}))
    rows = html_cells(tmp_path / "gcg_naturalness.html").rows
    assert rows[1][:4] == ["Identity", "success", "2", "200 ± 141"]  # std 141.4: 2 significant digits
