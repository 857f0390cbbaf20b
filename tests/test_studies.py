"""Studies: grids of settings, their points and configs, and the study table and figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ilm.config import load_config, validate_config
from ilm.studies import check_studies, manifest, manifest_files, point_config, point_root, study
from ilm.tables.study import summarise

REPO = Path(__file__).resolve().parents[1]


def with_grids(**grids) -> dict:
    """The paper config with only these studies declared."""
    cfg = load_config(REPO / "config.yaml")
    cfg["studies"] = {"run": [], "grids": grids}
    cfg["claims"]["seed_study"] = None  # only these studies
    cfg = validate_config(cfg)
    check_studies(cfg)
    return cfg


def test_grid_is_the_product_of_its_settings_with_readable_point_names():
    cfg = with_grids(s={"settings": {"objective.grad_scale_tokens": [65536, 1.0], "objective.double_backprop": [True, False]}})
    s = study(cfg, "s")
    assert [p.name for p in s.points] == [
        "grad_scale_tokens=65536__double_backprop=true",
        "grad_scale_tokens=65536__double_backprop=false",
        "grad_scale_tokens=1__double_backprop=true",
        "grad_scale_tokens=1__double_backprop=false",
    ]
    assert s.variants == ("identity", "bert_like", "inv_first")  # the schema's documented default
    point = point_config(cfg, "s", s.points[3])
    assert point["objective"]["grad_scale_tokens"] == 1.0 and point["objective"]["double_backprop"] is False
    assert point["objective"]["lambda_inv"] == cfg["objective"]["lambda_inv"]  # the rest is the main run's
    assert point["studies"] == {"run": [], "grids": {}}


def test_the_point_equal_to_the_main_run_reuses_its_results():
    cfg = with_grids(g={"variants": ["identity"], "settings": {"objective.grad_scale_tokens": [65536, 256]}})
    main, other = study(cfg, "g").points
    assert point_root(cfg, "g", main) == "results"
    assert point_root(cfg, "g", other) == "results/studies/g/grad_scale_tokens=256"
    m = manifest(cfg, "g")
    assert manifest_files(m) == [
        "results/metrics/identity/forward.json",
        "results/metrics/identity/inverse.json",
        "results/metrics/identity/gcg.csv",
        "results/metrics/identity/eval_windows.csv",
        "results/studies/g/grad_scale_tokens=256/metrics/identity/forward.json",
        "results/studies/g/grad_scale_tokens=256/metrics/identity/inverse.json",
        "results/studies/g/grad_scale_tokens=256/metrics/identity/gcg.csv",
        "results/studies/g/grad_scale_tokens=256/metrics/identity/eval_windows.csv",
        "results/data/test_stories.npy",
    ]


def test_a_bad_swept_value_names_the_study_point_and_key():
    cfg = load_config(REPO / "config.yaml")
    cfg["studies"] = {"grids": {"g": {"settings": {"objective.grad_scale_tokens": [1, 0]}}}}
    with pytest.raises(ValueError, match=r"(?s)study 'g', point 'grad_scale_tokens=0': .*objective\.grad_scale_tokens"):
        check_studies(validate_config(cfg))


def test_a_point_breaking_a_cross_key_rule_is_caught():
    cfg = load_config(REPO / "config.yaml")
    cfg["studies"] = {"grids": {"g": {"settings": {"train.micro_batch_size": [256, 300]}}}}
    with pytest.raises(ValueError, match=r"(?s)point 'micro_batch_size=300'.*micro_batch_size"):
        check_studies(validate_config(cfg))


@pytest.mark.parametrize("key", ["data.window", "objective.no_such_key", "corpus.stories"])
def test_only_known_model_objective_train_evaluate_gcg_keys_can_be_swept(key):
    cfg = load_config(REPO / "config.yaml")
    cfg["studies"] = {"grids": {"g": {"settings": {key: [1, 2]}}}}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_studies(validate_config(cfg))


def test_studies_run_must_name_declared_studies():
    cfg = load_config(REPO / "config.yaml")
    cfg["studies"] = {"run": ["nope"]}
    with pytest.raises(ValueError, match=r"studies.run names undeclared studies \['nope'\]"):
        check_studies(validate_config(cfg))


def test_the_paper_config_declares_valid_studies_and_runs_none():
    cfg = validate_config(load_config(REPO / "config.yaml"))
    check_studies(cfg)
    assert cfg["studies"]["run"] == []
    assert {"grad_scale", "double_backprop", "placeholder", "last_position"} <= set(cfg["studies"]["grids"])


# ---- the study table and figure ------------------------------------------------------------------


def _metrics(root: Path, variant: str, top1: float, without_g: float, ce: float, successes: list[bool]) -> None:
    d = root / "metrics" / variant
    d.mkdir(parents=True)
    (d / "forward.json").write_text(json.dumps({"ce": ce}))
    # two stories of two windows, 0.5 nats below and above the mean: a story bootstrap gives ce -/+ 0.5
    (root / "data").mkdir(parents=True, exist_ok=True)
    np.save(root / "data" / "test_stories.npy", np.array([0, 0, 1, 1]))
    pd.DataFrame({"window": range(4), "forward_ce_sum": [10 * (ce - 0.5)] * 2 + [10 * (ce + 0.5)] * 2,
                  "forward_rows": 10}).to_csv(d / "eval_windows.csv", index=False)
    protocol = {"base": "identity"}.get(variant, variant)
    (d / "inverse.json").write_text(json.dumps({protocol: {"top1": top1, "ce": 2.0, "rows": 9,
                                                           "without_g": {"top1": without_g, "ce": 3.0}}}))
    pd.DataFrame({"sample": range(len(successes)), "success": successes}).to_csv(d / "gcg.csv", index=False)


def test_study_table_rows_follow_the_points_and_hold_the_metrics(tmp_path, monkeypatch):
    """Per point and variant: the swept value, the own protocol's top-1 with and without g and their difference,
    the forward CE interval, and the GCG success with its Wilson interval (8/10 -> 49.02-94.33 %, by hand)."""
    monkeypatch.chdir(tmp_path)
    cfg = with_grids(g={"variants": ["bert_like"], "settings": {"objective.grad_scale_tokens": [65536, 1]}})
    m = manifest(cfg, "g")
    _metrics(tmp_path / "results", "bert_like", 0.25, 0.25, 4.0, [True] * 8 + [False] * 2)
    _metrics(tmp_path / "results/studies/g/grad_scale_tokens=1", "bert_like", 0.75, 0.25, 4.5, [True] * 3)
    (tmp_path / "m.json").write_text(json.dumps(m))
    table = summarise(tmp_path / "m.json", tmp_path / "out/study", tmp_path / "out/study", cfg)
    written = pd.read_csv(tmp_path / "out/study.csv")
    assert written["grad_scale_tokens"].tolist() == [65536, 1]
    assert written["Model"].tolist() == ["Bert-like"] * 2 and written["Protocol"].tolist() == ["Bert-like"] * 2
    assert written["Inverse top-1 (%)"].tolist() == pytest.approx([25.0, 75.0])
    assert written["Without g (%)"].tolist() == pytest.approx([25.0, 25.0])
    assert written["g adds (pts)"].tolist() == pytest.approx([0.0, 50.0])
    assert written["Forward CE"].tolist() == pytest.approx([4.0, 4.5])
    assert written["CE 95% low"].tolist() == pytest.approx([3.5, 4.0])  # stories resampled
    assert written["CE 95% high"].tolist() == pytest.approx([4.5, 5.0])
    assert written["GCG n"].tolist() == [10, 3]
    assert written["GCG success (%)"].tolist() == pytest.approx([80.0, 100.0])
    assert written["Success 95% low"][0] == pytest.approx(49.02, abs=0.01)
    assert written["Success 95% high"][0] == pytest.approx(94.33, abs=0.01)
    assert written["Results"].tolist() == ["results", "results/studies/g/grad_scale_tokens=1"]
    assert len(table) == 2
    assert r"Study g: objective.grad\_scale\_tokens in \{65536, 1\}" in (tmp_path / "out/study.tex").read_text()
    assert (tmp_path / "out/study.png").stat().st_size > 0 and (tmp_path / "out/study.pdf").stat().st_size > 0


def test_study_table_names_a_missing_point(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = with_grids(g={"variants": ["identity"], "settings": {"objective.grad_scale_tokens": [65536, 1]}})
    _metrics(tmp_path / "results", "identity", 0.5, 0.5, 4.0, [True])
    (tmp_path / "m.json").write_text(json.dumps(manifest(cfg, "g")))
    with pytest.raises(ValueError, match=r"grad_scale_tokens=1/metrics/identity/forward.json does not exist"):
        summarise(tmp_path / "m.json", tmp_path / "out/s", tmp_path / "out/s", cfg)


def _paper_config_with_grid(settings: dict) -> dict:
    """The paper config declaring one study `g` over `settings` (and no seed study)."""
    cfg = load_config(REPO / "config.yaml")
    cfg["studies"] = {"run": [], "grids": {"g": {"settings": settings}}}
    cfg["claims"]["seed_study"] = None
    return validate_config(cfg)


def test_point_written_as_a_float_reuses_the_main_run():
    """grad_scale_tokens: [65536.0, 1]: the 65536.0 point is the main run (no retraining), the other is not."""
    cfg = _paper_config_with_grid({"objective.grad_scale_tokens": [65536.0, 1]})
    s = study(cfg, "g")
    assert [point_root(cfg, "g", p) for p in s.points] == ["results", "results/studies/g/grad_scale_tokens=1"]


def test_runtime_settings_are_not_swept():
    """A study over a device or batch size would train identical points: it is refused naming the key."""
    cfg = _paper_config_with_grid({"train.log_every": [1, 10]})
    with pytest.raises(ValueError, match="studies.grids.g.settings: 'train.log_every' is a run-time setting"):
        study(cfg, "g")
