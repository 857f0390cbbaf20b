"""The configuration: the schema documents every key, and bad values fail early naming the key."""

from pathlib import Path

import pytest
import yaml

from ilm.config import load_config, load_schema, validate_config

REPO = Path(__file__).resolve().parents[1]


def _walk(schema, path="config"):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")


def test_every_schema_key_has_type_description_and_default():
    """Each key of the schema states its type, a description and a default (STYLE 3)."""
    missing = []
    for path, node in _walk(load_schema()):
        if path == "config":
            continue
        for field in ("type", "description", "default"):
            if field not in node:
                missing.append(f"{path}: {field}")
    assert not missing, missing


def test_paper_config_is_valid_and_holds_the_paper_numbers():
    """config.yaml validates and keeps the paper's settings (method-spec §10)."""
    cfg = load_config(REPO / "config.yaml")
    assert cfg["variants"] == ["base", "identity", "bert_like", "inv_first"]
    assert cfg["data"]["vocab_size"] == 2048 and cfg["data"]["window"] == 256 and cfg["data"]["stride"] == 192
    assert cfg["model"]["hidden_size"] == 256 and cfg["model"]["num_hidden_layers"] == 3
    assert cfg["train"]["lr"] == 0.004 and cfg["train"]["batch_size"] == 4096 and cfg["train"]["seed"] == 444
    assert cfg["objective"]["lambda_inv"] == 0.5 and cfg["objective"]["grad_scale_tokens"] == 65536
    assert cfg["gcg"]["steps"] == 500 and cfg["gcg"]["search_width"] == 4096 and cfg["gcg"]["top_k"] == 256


def test_schema_defaults_equal_the_paper_config():
    """An empty config is the paper's config: the schema's defaults and config.yaml agree."""
    from_file = load_config(REPO / "config.yaml")
    from_defaults = validate_config({})
    assert from_defaults == from_file


@pytest.mark.parametrize("preset", ["profiles/demo/demo.yaml", "tests/smoke.yaml"])
def test_presets_are_valid_over_the_paper_config(preset):
    """Each preset layered over config.yaml validates."""
    load_config(REPO / "config.yaml", yaml.safe_load((REPO / preset).read_text()))


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"train": {"lr": -1}}, "train.lr"),
        ({"variants": ["base", "bogus"]}, "variants[1]"),
        ({"train": {"learning_rate": 1e-3}}, "learning_rate"),
        ({"data": {"window": 512}}, "data.window (512) is longer than model.max_position_embeddings"),
        ({"model": {"vocab_size": 1000}}, "model.vocab_size (1000) is smaller than data.vocab_size"),
        ({"train": {"batch_size": 100}}, "train.batch_size (100) must be a multiple of train.micro_batch_size"),
        ({"data": {"split_fractions": {"train": 0.5, "validation": 0.1, "test": 0.1}}}, "sum to 1"),
        ({"gcg": {"steps": 100}}, "gcg.iterations goes up to 500 but gcg.steps is 100"),
    ],
)
def test_bad_values_fail_naming_the_key(override, fragment):
    """A bad value raises ValueError whose message names the offending key."""
    with pytest.raises(ValueError) as err:
        load_config(REPO / "config.yaml", override)
    assert fragment in str(err.value)


def test_slices_are_not_judged_on_defaults_they_never_set():
    """A rule's config slice (gcg without iterations) validates although the defaults alone would clash."""
    cfg = validate_config({"gcg": {"steps": 3}})
    assert cfg["gcg"]["steps"] == 3


def test_missing_config_file_is_a_clear_error(tmp_path):
    """A config path that does not exist is named in the error."""
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
