"""The workflow's configuration: one YAML validated by one JSON Schema that holds the defaults.

The same validation runs in the Snakefile (before any job starts) and in every `ilm`
command, so a bad value fails early and the message names the key and the fix.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional

import jsonschema
import yaml


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The JSON Schema of config.yaml (shipped inside the package)."""
    text = resources.files("ilm").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _fill_defaults(instance: Any, schema: Mapping) -> None:
    """Insert schema defaults into `instance`, depth first, without overwriting given values."""
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate_config(config: Mapping, partial: bool = False) -> dict:
    """Return a validated copy of `config` with every default filled in.

    With `partial`, only the sections present are checked against each other (an `ilm`
    command receives the slices it uses). Raises ValueError naming the offending key.
    """
    cfg = copy.deepcopy(dict(config))
    schema = load_schema()
    _fill_defaults(cfg, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {_key_path(e)}: {e.message}" for e in errors]
        raise ValueError(
            "invalid configuration (fix these keys in config.yaml or the preset that overrides it):\n"
            + "\n".join(lines)
        )
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: dict) -> None:
    """Rules across keys that a JSON Schema cannot state."""
    data, model, train, gcg = cfg["data"], cfg["model"], cfg["train"], cfg["gcg"]
    total = sum(data["split_fractions"].values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"data.split_fractions must sum to 1 (they sum to {total:g})")
    if data["stride"] > data["window"]:
        raise ValueError(
            f"data.stride ({data['stride']}) is larger than data.window ({data['window']}): "
            "windows would skip tokens; use a stride of at most the window"
        )
    if data["window"] > model["max_position_embeddings"]:
        raise ValueError(
            f"data.window ({data['window']}) is longer than model.max_position_embeddings "
            f"({model['max_position_embeddings']}); raise max_position_embeddings or shorten the window"
        )
    if model["vocab_size"] < data["vocab_size"]:
        raise ValueError(
            f"model.vocab_size ({model['vocab_size']}) is smaller than data.vocab_size "
            f"({data['vocab_size']}); the embedding needs a row for every token id"
        )
    if model["hidden_size"] % model["num_attention_heads"]:
        raise ValueError("model.hidden_size must be a multiple of model.num_attention_heads")
    if model["num_attention_heads"] % model["num_key_value_heads"]:
        raise ValueError("model.num_attention_heads must be a multiple of model.num_key_value_heads")
    if train["batch_size"] % train["micro_batch_size"]:
        raise ValueError(
            f"train.batch_size ({train['batch_size']}) must be a multiple of train.micro_batch_size "
            f"({train['micro_batch_size']})"
        )
    if gcg["prefix_length"] + gcg["target_length"] > data["window"]:
        raise ValueError("gcg.prefix_length + gcg.target_length must fit in data.window")
    if max(gcg["iterations"]) > gcg["steps"]:
        raise ValueError(
            f"gcg.iterations goes up to {max(gcg['iterations'])} but gcg.steps is {gcg['steps']}"
        )


def load_config(path: Optional[Path] = None, overrides: Optional[Mapping] = None) -> dict:
    """Read a YAML/JSON config file (or none), deep-merge `overrides` and validate."""
    cfg: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ValueError(f"config file {path} does not exist")
        cfg = yaml.safe_load(path.read_text()) or {}
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate_config(cfg)


def deep_merge(base: Mapping, update: Mapping) -> dict:
    """A copy of `base` with `update` merged in, recursively for nested mappings."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_config_json(text: Optional[str]) -> dict:
    """Parse the JSON config slice a Snakemake rule passes on the command line."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--config-json is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError("--config-json must be a JSON object")
    return value
