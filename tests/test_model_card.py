"""The model card: its metadata, read back by huggingface_hub, holds license, datasets, metrics and eval results,
and its body the limitations."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from huggingface_hub import ModelCard

from ilm.config import validate_config
from ilm.model_card import LICENSE, build_model_card

REPO = Path(__file__).resolve().parents[1]


@dataclass
class FakeProgress:
    """The fields of ilm.train.Progress the card reads."""

    best_step: Optional[int] = 40
    best_val_loss: Optional[float] = 2.5
    log_rows: list[dict] = field(default_factory=lambda: [{"step": 20, "val_ce": 2.9}, {"step": 40, "val_ce": 2.3}])


def run_config(source: str, variant: str = "inv_first") -> dict:
    """run_config.json as ilm.train.write_model writes it, for a finished run."""
    cfg = validate_config({"data": {"source": source}})
    return {"config": {k: cfg[k] for k in ("data", "model", "objective", "train")}, "variant": variant,
            "parameters": 1234567, "steps": 80, "epochs_completed": 2, "batch_size": 64,
            "ilm_version": "0.1.0", "git_commit": "abc123", "inputs_sha256": {"train.npy": "f" * 64}}


def test_card_metadata_names_license_dataset_metrics_and_validation_results(tmp_path):
    """Parsed back from README.md text, the card's YAML holds the license, the Hub dataset, the metrics and the
    selected step's validation CE and perplexity (exp CE) as eval results."""
    card = build_model_card(run_config("fhswf/TinyStoriesV2_cleaned"), FakeProgress(), tmp_path / "model")
    card.save(tmp_path / "README.md")
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.license == LICENSE and data.language == "en"
    assert data.datasets == ["fhswf/TinyStoriesV2_cleaned"]
    assert data.metrics == ["perplexity", "accuracy"]
    assert (data.library_name, data.pipeline_tag) == ("transformers", "text-generation")
    results = {r.metric_type: r for r in data.eval_results}
    assert results["cross_entropy"].metric_value == pytest.approx(2.3)  # step 40, the selected one
    assert results["perplexity"].metric_value == pytest.approx(math.exp(2.3), abs=1e-3)
    assert {r.dataset_name for r in data.eval_results} == {"fhswf/TinyStoriesV2_cleaned"}
    assert {r.dataset_split for r in data.eval_results} == {"validation"}
    assert data.model_name == "ILM Inv-First"


def test_card_body_says_what_the_model_is_and_its_limitations(tmp_path):
    """The body names the variant, the selected step, how to load the folder, and a Limitations section
    with the window and the data; a local corpus is named in the text but not listed as a Hub dataset."""
    card = build_model_card(run_config("generated", variant="base"), FakeProgress(), tmp_path / "model")
    text = str(card)
    assert card.data.datasets is None
    assert "# ILM Baseline" in text and "step 40" in text and 'pipeline("text-generation"' in text
    limitations = text[text.index("## Limitations"):]
    assert "Context of 256 tokens" in limitations and "synthetic stories" in limitations
    assert "none (forward next-token CE only)" in text and "1,234,567" in text


def test_card_without_validation_ce_has_no_eval_results(tmp_path):
    """A run whose selected step logged no validation CE gets no model-index rather than an invented value."""
    progress = FakeProgress(log_rows=[{"step": 40, "val_ce": None}])
    card = build_model_card(run_config("fhswf/TinyStoriesV2_cleaned"), progress, tmp_path / "model")
    assert not card.data.eval_results and "model-index" not in str(card)


def test_card_license_is_the_projects():
    """The card's license is pyproject.toml's, in the Hub's lower-case identifier."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert LICENSE == project["license"]["text"].lower()
