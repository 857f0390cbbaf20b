"""The figures beside Figure 4, drawn from hand-made result files: the plotted data against the files' numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ilm.cli import main
from ilm.figures import figure_module
from ilm.figures.inverse_by_position import series as by_position_series
from ilm.figures.training_curves import series as curve_series
from ilm.names import PROTOCOLS

LOG_HEADER = "step,epoch,tokens,lr,loss,ce,inv_ce,val_loss,val_ce,tokens_per_s\n"


def _cell(value) -> str:
    return "" if value is None else str(value)


def write_log(root: Path, variant: str, rows: list[tuple]) -> Path:
    """train_log.csv as `ilm train` writes it: (step, ce, inv_ce, val_ce), None written as an empty cell."""
    d = root / "models" / variant
    d.mkdir(parents=True)
    lines = [f"{s},0.1,{16 * s},0.001,{ce},{ce},{_cell(inv)},,{_cell(val)},100.0" for s, ce, inv, val in rows]
    (d / "train_log.csv").write_text(LOG_HEADER + "\n".join(lines) + "\n")
    return d / "train_log.csv"


def test_training_curves_plot_the_logged_ce(tmp_path):
    """series() holds the log's ce, val_ce and inv_ce per step; each panel's lines are those numbers, paper order."""
    logs = [
        write_log(tmp_path, "identity", [(2, 4.0, 6.0, 3.9), (1, 5.0, 7.0, None)]),
        write_log(tmp_path, "base", [(1, 5.5, None, None), (2, 4.5, None, 4.4)]),
    ]
    data = curve_series(logs)
    assert data["variant"].tolist() == ["base", "base", "identity", "identity"]
    assert data["step"].tolist() == [1, 2, 1, 2]
    assert data["ce"].tolist() == [5.5, 4.5, 5.0, 4.0]
    assert data["inv_ce"].isna().tolist() == [True, True, False, False]
    fig = figure_module("training_curves").draw(logs, tmp_path / "figures" / "training_curves", {})
    assert (tmp_path / "figures" / "training_curves.pdf").stat().st_size > 0
    assert (tmp_path / "figures" / "training_curves.png").stat().st_size > 0
    forward, inverse = fig.axes[:2]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in forward.lines}
    assert lines == {"Baseline train": ([1, 2], [5.5, 4.5]), "Baseline validation": ([2], [4.4]),
                     "Identity train": ([1, 2], [5.0, 4.0]), "Identity validation": ([2], [3.9])}
    assert [(line.get_label(), list(line.get_ydata())) for line in inverse.lines] == [("Identity", [7.0, 6.0])]


def write_inverse(root: Path, variant: str, by_position: dict | None) -> Path:
    """inverse.json with top-k keys, `without_g` (ignored by the figure) and `by_position` under each protocol."""
    d = root / "metrics" / variant
    d.mkdir(parents=True)
    metrics = {}
    for i, protocol in enumerate(PROTOCOLS):
        metrics[protocol] = {"top1": 0.5, "top3": 0.6, "ce": 1.0, "rows": 9, "without_g": {"top1": 0.1}}
        if by_position is not None:
            metrics[protocol]["by_position"] = by_position[protocol]
    (d / "inverse.json").write_text(json.dumps({**metrics, "meta": {}}))
    return d / "inverse.json"


def positions(top1: list) -> dict:
    return {"rows": [0 if a is None else 3 for a in top1], "top1": top1}


def test_inverse_by_position_plots_top1_per_position_skipping_nulls(tmp_path):
    """One panel per protocol; each variant's line is 100 x top1 at the positions with rows, nulls left out."""
    files = [
        write_inverse(tmp_path, "inv_first", {"identity": positions([0.1, 0.2, 0.3]),
                                              "bert_like": positions([None, 0.5, 0.25]),
                                              "inv_first": positions([0.9, None, None])}),
        write_inverse(tmp_path, "base", {p: positions([0.0, 1.0, None]) for p in PROTOCOLS}),
    ]
    data = by_position_series(files)
    bert = data[(data["protocol"] == "bert_like") & (data["variant"] == "inv_first")]
    assert bert["position"].tolist() == [1, 2] and bert["top1"].tolist() == [0.5, 0.25]
    fig = figure_module("inverse_by_position").draw(files, tmp_path / "figures" / "inverse_by_position", {})
    assert (tmp_path / "figures" / "inverse_by_position.png").stat().st_size > 0
    assert [ax.get_title() for ax in fig.axes] == ["Identity", "Bert-like", "Inv-First"]
    identity, bert_like, inv_first = fig.axes
    assert [line.get_label() for line in identity.lines] == ["Baseline", "Inv-First"]
    assert list(identity.lines[1].get_ydata()) == pytest.approx([10.0, 20.0, 30.0])
    assert list(bert_like.lines[1].get_xdata()) == [1, 2]
    assert list(bert_like.lines[1].get_ydata()) == pytest.approx([50.0, 25.0])
    assert list(inv_first.lines[0].get_ydata()) == pytest.approx([0.0, 100.0])


def test_inverse_by_position_without_the_field_names_the_file_and_the_fix(tmp_path, capsys):
    """inverse.json from an `ilm evaluate` that wrote no by_position: exit 2, the message names the file and the fix."""
    path = write_inverse(tmp_path, "base", None)
    assert main(["figure", "inverse_by_position", "--inputs", str(path), "--out-stem", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "by_position" in err and "rerun `ilm evaluate`" in err
    assert not (tmp_path / "f.png").exists()


def test_token_entropy_figure_plots_the_csv(tmp_path):
    """The line is the table's entropy per position; the title gives the number of windows."""
    csv = tmp_path / "token_entropy.csv"
    pd.DataFrame({"position": [0, 1, 2], "entropy_bits": [0.0, 1.0, math.log2(3)], "distinct_tokens": [1, 2, 3],
                  "windows": 12}).to_csv(csv, index=False)
    fig = figure_module("token_entropy").draw([csv], tmp_path / "figures" / "token_entropy", {})
    assert (tmp_path / "figures" / "token_entropy.pdf").stat().st_size > 0
    (line,) = fig.axes[0].lines
    assert list(line.get_ydata()) == pytest.approx([0.0, 1.0, math.log2(3)])
    assert "12 training windows" in fig.axes[0].get_title()


def test_g_curves_plot_the_validation_rows_of_ilm_variants(tmp_path):
    """g_curves: per ILM variant, the validation inverse CE with and without g and g^2/eps at the validated steps;
    the Baseline (no g) and steps without validation are left out."""
    import pandas as pd

    for variant, rows in (("base", [(10, None, None, None)]),
                          ("inv_first", [(5, None, None, None), (10, 6.0, 6.2, 0.01), (20, 5.5, 6.1, 0.05)])):
        d = tmp_path / "models" / variant
        d.mkdir(parents=True)
        pd.DataFrame(rows, columns=["step", "val_inv_ce", "val_inv_ce_without_g", "val_g_sq_over_eps"]).to_csv(
            d / "train_log.csv", index=False)
    logs = [tmp_path / "models" / v / "train_log.csv" for v in ("base", "inv_first")]
    fig = figure_module("g_curves").draw(logs, tmp_path / "figures" / "g_curves", {})
    assert (tmp_path / "figures" / "g_curves.png").stat().st_size > 0
    ce_ax, g_ax = fig.axes[:2]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ce_ax.lines}
    assert lines == {"Inv-First, with g": ([10, 20], [6.0, 5.5]), "Inv-First, without g": ([10, 20], [6.2, 6.1])}
    assert [list(line.get_ydata()) for line in g_ax.lines if line.get_label() == "Inv-First"] == [[0.01, 0.05]]
    assert g_ax.get_yscale() == "log"
