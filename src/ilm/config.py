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
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "<top level>"


def _given_keys(config: Mapping) -> set[str]:
    """Dotted names of the keys present before defaults are filled (`train.lr`, `variants`)."""
    keys = set()
    for section, value in config.items():
        keys.add(section)
        if isinstance(value, Mapping):
            keys.update(f"{section}.{key}" for key in value)
    return keys


def validate_config(config: Mapping) -> dict:
    """Return a validated copy of `config` with every default filled in.

    Rules across keys run only where every key involved was given: a rule that passes
    an `ilm` command a slice of the config is not judged on defaults it never set.
    Raises ValueError naming the offending key.
    """
    cfg = copy.deepcopy(dict(config))
    given = _given_keys(cfg)
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
    for keys, check in _CONSISTENCY_RULES:
        if all(k in given for k in keys):
            check(cfg)
    return cfg


def _fail(message: str) -> None:
    raise ValueError(message)


def _split_fractions_sum(cfg: dict) -> None:
    total = sum(cfg["data"]["split_fractions"].values())
    if abs(total - 1.0) > 1e-6:
        _fail(f"data.split_fractions must sum to 1 (they sum to {total:g})")


def _stride_fits_window(cfg: dict) -> None:
    data = cfg["data"]
    if data["stride"] > data["window"]:
        _fail(
            f"data.stride ({data['stride']}) is larger than data.window ({data['window']}): "
            "windows would skip tokens; use a stride of at most the window"
        )


def _window_fits_model(cfg: dict) -> None:
    window, positions = cfg["data"]["window"], cfg["model"]["max_position_embeddings"]
    if window > positions:
        _fail(
            f"data.window ({window}) is longer than model.max_position_embeddings ({positions}); "
            "raise max_position_embeddings or shorten the window"
        )


def _vocab_fits_model(cfg: dict) -> None:
    model_vocab, data_vocab = cfg["model"]["vocab_size"], cfg["data"]["vocab_size"]
    if model_vocab < data_vocab:
        _fail(
            f"model.vocab_size ({model_vocab}) is smaller than data.vocab_size ({data_vocab}); "
            "the embedding needs a row for every token id"
        )


def _heads_divide(cfg: dict) -> None:
    model = cfg["model"]
    if model["hidden_size"] % model["num_attention_heads"]:
        _fail("model.hidden_size must be a multiple of model.num_attention_heads")
    if model["num_attention_heads"] % model["num_key_value_heads"]:
        _fail("model.num_attention_heads must be a multiple of model.num_key_value_heads")


def _micro_batch_divides(cfg: dict) -> None:
    train = cfg["train"]
    if train["batch_size"] % train["micro_batch_size"]:
        _fail(
            f"train.batch_size ({train['batch_size']}) must be a multiple of "
            f"train.micro_batch_size ({train['micro_batch_size']})"
        )


def _attack_fits_window(cfg: dict) -> None:
    gcg = cfg["gcg"]
    if gcg["prefix_length"] + gcg["target_length"] > cfg["data"]["window"]:
        _fail("gcg.prefix_length + gcg.target_length must fit in data.window")


def _budgets_within_steps(cfg: dict) -> None:
    gcg = cfg["gcg"]
    if max(gcg["iterations"]) > gcg["steps"]:
        _fail(f"gcg.iterations goes up to {max(gcg['iterations'])} but gcg.steps is {gcg['steps']}")


# (keys that must all be given, check): rules across keys that a JSON Schema cannot state.
_CONSISTENCY_RULES = [
    (("data.split_fractions",), _split_fractions_sum),
    (("data.stride", "data.window"), _stride_fits_window),
    (("data.window", "model.max_position_embeddings"), _window_fits_model),
    (("data.vocab_size", "model.vocab_size"), _vocab_fits_model),
    (("model.hidden_size", "model.num_attention_heads", "model.num_key_value_heads"), _heads_divide),
    (("train.batch_size", "train.micro_batch_size"), _micro_batch_divides),
    (("gcg.prefix_length", "gcg.target_length", "data.window"), _attack_fits_window),
    (("gcg.iterations", "gcg.steps"), _budgets_within_steps),
]


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
