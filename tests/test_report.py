"""The forward-quality and inverse-accuracy tables, built from hand-made metric files."""

import json

import pandas as pd
import pytest

from ilm import report
from ilm.cli import main


def _write_metrics(root, variant, ce, acc):
    d = root / "metrics" / variant
    d.mkdir(parents=True)
    (d / "forward.json").write_text(
        json.dumps({"ce": ce, "perplexity": 2.718281828 ** ce, "top1": acc, "top3": acc + 0.1, "top5": acc + 0.2,
                    "tokens": 1000, "meta": {}})
    )
    proto = {"top1": acc / 2, "top3": acc / 2 + 0.1, "top5": acc / 2 + 0.2, "ce": 3.0, "rows": 10}
    (d / "inverse.json").write_text(
        json.dumps({"identity": proto, "bert_like": proto, "inv_first": proto, "meta": {}})
    )
    return d


def test_forward_table_has_one_row_per_variant_in_paper_order(tmp_path):
    """Rows follow the paper's order and names; accuracies become percentages."""
    files = [_write_metrics(tmp_path, v, ce, 0.3) / "forward.json"
             for v, ce in [("inv_first", 2.0), ("base", 1.5), ("identity", 1.7)]]
    main(["table", "forward_quality", "--inputs", *map(str, files), "--out-stem", str(tmp_path / "t" / "fq")])
    df = pd.read_csv(tmp_path / "t" / "fq.csv")
    assert list(df["Model"]) == ["Baseline", "Identity", "Inv-First"]
    assert df.loc[0, "CE"] == pytest.approx(1.5)
    assert df.loc[0, "Top-1 (%)"] == pytest.approx(30.0)
    assert (tmp_path / "t" / "fq.md").read_text().count("\n") == 2 + 3
    tex = (tmp_path / "t" / "fq.tex").read_text()
    assert r"\begin{tabular}" in tex and "Inv-First" in tex


def test_inverse_table_has_every_protocol(tmp_path):
    """Each variant's row holds top-k accuracy under all three protocols."""
    files = [_write_metrics(tmp_path, v, 1.0, 0.4) / "inverse.json" for v in ["base", "bert_like"]]
    df = report.inverse_accuracy_table(files)
    assert list(df["Model"]) == ["Baseline", "Bert-like"]
    for protocol in ["Identity", "Bert-like", "Inv-First"]:
        assert df.loc[0, f"{protocol} top-1 (%)"] == pytest.approx(20.0)


def test_missing_metric_file_and_unknown_table_are_clear_errors(tmp_path, capsys):
    """The CLI reports a missing metric file or an unknown table name and exits with status 2."""
    assert main(["table", "forward_quality", "--inputs", str(tmp_path / "x" / "forward.json"),
                 "--out-stem", str(tmp_path / "fq")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["table", "nope", "--inputs", str(tmp_path), "--out-stem", str(tmp_path / "fq")]) == 2
    assert "unknown table 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "fq.csv").exists()
