"""The workflow's configuration: one YAML validated by one JSON Schema that holds every default and range.

The same validation runs in the Snakefile (before any job starts) and in every `ilm` command,
so a bad value fails early and the message names the key and the fix. Validation, in order:

1. coerce strings to the schema's types (`snakemake --config 'train={lr: 0.001}'` passes
   every nested value as a string, and YAML 1.1 reads `1e-3` as a string);
2. fill the schema's defaults;
3. check types and ranges against the schema, and that every number is finite;
4. run the rules that span keys (a window longer than the model's positions, ...) on the
   merged config, defaults included.

Each workflow stage reads a slice of the config (`STAGES`): the Snakefile passes exactly that
slice to `ilm`, so a changed setting reruns only the stages that read it, and a stage's
validation runs the cross-key rules that lie inside its slice. Run-time settings (`RUNTIME_KEYS`:
devices, batch sizes of the search, logging and checkpoint cadence) shape no output: they stay
out of every slice and reach the jobs in one separate file (`write_runtime_config`), so changing
one reruns nothing. The component dataclasses
(`TrainConfig`, `GCGConfig`, ...) have no defaults of their own: `ConfigSection.from_dict`
builds them from a validated section.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping, NamedTuple, Optional, TypeVar

import yaml

from ilm.names import SPECIAL_TOKENS

if TYPE_CHECKING:
    import jsonschema


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The JSON Schema of config.yaml (shipped inside the package)."""
    text = resources.files("ilm").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def schema_defaults(section: str) -> dict:
    """The schema's default of every key of one config section."""
    properties = load_schema()["properties"][section]["properties"]
    return {key: copy.deepcopy(sub["default"]) for key, sub in properties.items()}


# --- what each stage reads ------------------------------------------------------------------------


class Scope(NamedTuple):
    """The config a workflow stage reads: sections or single keys, minus keys only later stages read."""

    items: tuple[str, ...]
    drop: tuple[str, ...] = ()


# Settings that change how a job runs but not what it writes. They are left out of every stage's
# slice (so changing one reruns nothing) and reach a job through its rule's --runtime file instead.
RUNTIME_KEYS: frozenset[str] = frozenset({
    "train.log_every", "train.checkpoint_every", "train.device",
    "evaluate.device", "evaluate.batch_size",
    "gcg.device", "gcg.batch_samples", "gcg.max_candidates_per_forward", "gcg.compile",
    "invert.device", "invert.batch_samples",
    "judge.device", "pilot.device",
})

# The pilot's stages each hold the settings of the stages before them, so that the attacks and the
# table rerun whenever the trained classifiers would change, even if a killed retrain left the old
# outputs behind (Snakemake does not rebuild a missing intermediate file on its own).
_PILOT_EMBED = (
    "pilot.dataset", "pilot.revision", "pilot.max_chars", "pilot.generated_examples", "pilot.generated_seed",
    "pilot.encoder", "pilot.encoder_revision", "pilot.max_tokens", "pilot.embed_batch_size", "pilot.device",
)
_PILOT_TRAIN = _PILOT_EMBED + (
    "pilot.hidden_sizes", "pilot.samples_per_class", "pilot.lambda_ce", "pilot.lambda_pag", "pilot.lr",
    "pilot.batch_size", "pilot.epochs", "pilot.validation_fraction", "pilot.seed",
)
_PILOT_ATTACK = _PILOT_TRAIN + (
    "pilot.apgd_eps", "pilot.apgd_iterations", "pilot.apgd_restarts", "pilot.square_eps", "pilot.square_queries",
    "pilot.square_samples",
    "pilot.fgsm_alphas", "pilot.sweep_start", "pilot.sweep_stop", "pilot.sweep_step", "pilot.attack_samples",
    "pilot.attack_batch_size", "statistics.confidence",
)

# Keyed by rule name. The rule passes stage_slice(config, rule) to `ilm`, so Snakemake reruns a
# stage exactly when a setting it reads changes (changing gcg.examples reruns only that table).
STAGES: dict[str, Scope] = {
    "make_corpus": Scope(("corpus",)),
    "download_data": Scope(("data.source", "data.revision")),
    "prepare_data": Scope(("data",)),
    "train_model": Scope(("data", "model", "objective", "train")),
    "evaluate_model": Scope(("data", "model", "objective", "evaluate")),
    "select_gcg_samples": Scope(
        ("data.window", "gcg.prefix_length", "gcg.target_length", "gcg.fraction", "gcg.count", "gcg.sample_seed",
         "gcg.shards")
    ),
    "attack_gcg_shard": Scope(("data", "model", "gcg"), drop=("gcg.iterations", "gcg.examples")),
    "summarise_gcg": Scope(("gcg", "statistics"), drop=("gcg.examples",)),
    "transfer_gcg": Scope(("gcg.max_candidates_per_forward", "gcg.device")),
    "tabulate_claims": Scope(("gcg.iterations", "statistics", "claims")),
    "tabulate_seed_claims": Scope(("gcg.iterations", "statistics", "claims")),
    "tabulate_gcg_robustness": Scope(("gcg.iterations", "statistics", "claims")),
    "tabulate_setup": Scope(
        ("gcg.prefix_length", "gcg.target_length", "gcg.steps", "gcg.search_width", "gcg.top_k", "gcg.fraction",
         "gcg.count")
    ),
    "tabulate_token_entropy": Scope(()),
    "plot_token_entropy": Scope(()),
    "plot_training_curves": Scope(()),
    "plot_g_curves": Scope(()),
    "tabulate_forward_quality": Scope(("statistics",)),
    "tabulate_inverse_accuracy": Scope(("statistics",)),
    "tabulate_gcg_summary": Scope(("gcg.iterations", "gcg.steps", "statistics")),
    "tabulate_gcg_examples": Scope(("gcg.examples",)),
    "plot_inverse_by_position": Scope(()),
    "plot_gcg_success_rate": Scope(("gcg.iterations", "gcg.steps", "statistics")),
    "summarise_study": Scope(("statistics",)),
    # the PAG pilot (workflow/rules/pilot.smk)
    "download_pilot_data": Scope(("pilot.dataset", "pilot.revision")),
    "download_pilot_encoder": Scope(("pilot.encoder", "pilot.encoder_revision")),
    "embed_pilot": Scope(_PILOT_EMBED),
    "train_pilot": Scope(_PILOT_TRAIN),
    "attack_pilot": Scope(_PILOT_ATTACK),
    "tabulate_pag_pilot": Scope(_PILOT_ATTACK),
    "plot_pag_fgsm_sweep": Scope(_PILOT_ATTACK),
    # grounding (workflow/rules/invert.smk)
    "count_bigrams": Scope(()),
    "select_invert_samples": Scope(
        ("data.window", "invert.skip_tokens", "invert.prefix_length", "invert.suffix_length", "invert.fraction",
         "invert.count", "invert.sample_seed", "invert.shards")
    ),
    # The beam search and the bigram never read invert.generic: a generic setting reruns only the generic inverters.
    "invert_shard": Scope(
        ("data", "model", "objective", "invert"), drop=("invert.examples", "invert.example_words", "invert.generic")
    ),
    "invert_generic_shard": Scope(
        ("data", "model", "objective", "invert"), drop=("invert.examples", "invert.example_words")
    ),
    "summarise_inversion": Scope(("invert",), drop=("invert.examples", "invert.example_words", "invert.generic")),
    "fetch_judges": Scope(("judge.similarity_model", "judge.perplexity_model")),
    "judge_inversion": Scope(("judge",)),
    "judge_attacks": Scope(("judge",), drop=("judge.ppl_words", "judge.ppl_bos")),
    "tabulate_inversion": Scope(("judge.similarity_model", "judge.perplexity_model", "judge.ppl_words")),
    "tabulate_inversion_vs_generic": Scope(
        ("invert.prefix_length", "invert.beam", "invert.top_k", "invert.generic", "statistics")
    ),
    "tabulate_inversion_examples": Scope(
        ("invert.examples", "invert.example_words", "judge.similarity_model", "judge.perplexity_model")
    ),
    "tabulate_gcg_naturalness": Scope(("judge.similarity_model", "judge.perplexity_model")),
}


def _stage(stage: str) -> Scope:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are: {', '.join(STAGES)}")
    return STAGES[stage]


def scope_keys(scope: Scope) -> frozenset[str]:
    """The dotted keys of a scope ("data" expands to every data.* key of the schema)."""
    properties = load_schema()["properties"]
    keys: set[str] = set()
    for item in scope.items:
        section, _, key = item.partition(".")
        if key or properties[section].get("type") != "object":
            keys.add(item)
        else:
            keys.update(f"{section}.{k}" for k in properties[section]["properties"])
    return frozenset(keys - set(scope.drop))


def _nested(config: Mapping, dotted_keys: Iterable[str]) -> dict:
    """The values of `dotted_keys` in `config`, nested by section, numbers in canonical form."""
    sliced: dict = {}
    for dotted in sorted(dotted_keys):
        section, _, key = dotted.partition(".")
        if key:
            sliced.setdefault(section, {})[key] = canonical_numbers(config[section][key])
        else:
            sliced[section] = canonical_numbers(config[section])
    return sliced


def stage_slice(config: Mapping, stage: str) -> dict:
    """The settings of a validated `config` that shape `stage`'s outputs, nested by section (no run-time keys)."""
    return _nested(config, scope_keys(_stage(stage)) - RUNTIME_KEYS)


def runtime_slice(config: Mapping) -> dict:
    """The run-time settings of a validated `config` (RUNTIME_KEYS), nested by section."""
    return _nested(config, RUNTIME_KEYS)


def shaping_config(config: Mapping) -> dict:
    """A validated `config` without its run-time settings and studies, numbers canonical: what results depend on."""
    out = canonical_numbers({k: v for k, v in config.items() if k != "studies"})
    for dotted in RUNTIME_KEYS:
        section, key = dotted.split(".", 1)
        out.get(section, {}).pop(key, None)
    return out


def canonical_numbers(value: Any) -> Any:
    """A deep copy of `value` with every integral float as an int, so 65536.0 and 65536 hash alike."""
    if isinstance(value, Mapping):
        return {k: canonical_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return copy.deepcopy(value)


def write_stage_config(config: Mapping, stage: str, directory: Path | str) -> Path:
    """Write `stage`'s config slice to directory/<stage>-<content hash>.json (once) and return the path.

    The name changes exactly when the slice does, so a rule that passes this path as a param is
    rerun by Snakemake when, and only when, a setting that shapes its outputs changes, while its
    shell line and Snakemake's "params have changed" message stay one short path long.
    """
    from ilm.io import write_named_by_content

    text = json.dumps(stage_slice(config, stage), sort_keys=True, indent=1) + "\n"
    return write_named_by_content(directory, stage, ".json", text)


def write_runtime_config(config: Mapping, directory: Path | str) -> Path:
    """Write the run-time settings to directory/runtime-<content hash>.json (once) and return the path.

    Rules pass it in their shell line (`--runtime`), never as a param: Snakemake compares params,
    not the formatted command, so a changed device or batch size reaches the next job without
    rerunning a finished one.
    """
    from ilm.io import write_named_by_content

    text = json.dumps(runtime_slice(config), sort_keys=True, indent=1) + "\n"
    return write_named_by_content(directory, "runtime", ".json", text)



# --- validation -----------------------------------------------------------------------------------


def _types(schema: Mapping) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


# YAML's spellings of the non-finite floats, so they reach the finite-number check as numbers.
_YAML_FLOATS = {".inf": "inf", "+.inf": "inf", "-.inf": "-inf", ".nan": "nan"}


def _coerce_scalar(value: str, types: list[str]) -> Any:
    """A string as the first schema type it parses as; unchanged where none fits (validation names it)."""
    text = value.strip()
    low = text.lower()
    if "null" in types and low in ("null", "~", "none"):
        return None
    if "boolean" in types and low in ("true", "false", "yes", "no", "on", "off"):
        return low in ("true", "yes", "on")
    if "integer" in types:
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is not None and math.isfinite(number) and number.is_integer():
                return int(number)
    if "number" in types:
        try:
            return float(_YAML_FLOATS.get(low, text))
        except ValueError:
            pass
    return value


def coerce_types(value: Any, schema: Mapping) -> Any:
    """A copy of `value` with strings (and integral floats) turned into the types `schema` asks for."""
    if isinstance(value, Mapping):
        properties = schema.get("properties", {})
        return {k: coerce_types(v, properties[k]) if k in properties else v for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items")
        return [coerce_types(v, items) for v in value] if isinstance(items, Mapping) else list(value)
    types = _types(schema)
    if isinstance(value, str) and "string" not in types:
        return _coerce_scalar(value, types)
    if (
        isinstance(value, float)
        and "integer" in types
        and "number" not in types
        and math.isfinite(value)
        and value.is_integer()
    ):
        return int(value)
    return value


def _fill_defaults(instance: Any, schema: Mapping) -> None:
    """Insert schema defaults into `instance`, depth first, without overwriting given values."""
    if not isinstance(instance, dict) or "object" not in _types(schema):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub)


def _path(parts: Iterable) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "<top level>"


def _error_lines(error: jsonschema.ValidationError) -> list[str]:
    """One line per problem, naming the dotted key; an unknown key is named itself, with the valid ones."""
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = error.schema.get("properties", {})
        prefix = _path(error.absolute_path)
        prefix = "" if prefix == "<top level>" else prefix + "."
        return [
            f"  {prefix}{key}: unknown key (valid keys: {', '.join(known)})"
            for key in error.instance
            if key not in known
        ]
    return [f"  {_path(error.absolute_path)}: {error.message}"]


def _non_finite(value: Any, parts: tuple = ()) -> Iterable[str]:
    """Paths of the inf and NaN numbers in `value`."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _non_finite(v, parts + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, parts + (i,))
    elif isinstance(value, float) and not math.isfinite(value):
        yield f"  {_path(parts)}: {value} is not a finite number"


def validate_config(
    config: Mapping, stage: Optional[str] = None, scope: Optional[Iterable[str]] = None
) -> dict:
    """A validated copy of `config`: types coerced, defaults filled, ranges and cross-key rules checked.

    Without `stage` or `scope` every cross-key rule runs (the Snakefile, a whole config file).
    With one, only the rules whose keys all lie in that stage's slice (or in the dotted keys of
    `scope`) run: a stage is judged on what it reads. Raises ValueError naming each bad key.
    """
    import jsonschema  # imported here: only validation needs it (load_config_unchecked runs without it)

    schema = load_schema()
    cfg = coerce_types(copy.deepcopy(dict(config)), schema)
    _fill_defaults(cfg, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    lines = [line for e in errors for line in _error_lines(e)]
    lines += sorted(_non_finite(cfg))
    if lines:
        raise ValueError(
            "invalid configuration (fix these keys in config.yaml, the preset or --config that sets them):\n"
            + "\n".join(lines)
        )
    if stage is not None:
        scope = scope_keys(_stage(stage))
    in_scope = None if scope is None else frozenset(scope)
    for keys, check in _CROSS_KEY_RULES:
        if in_scope is None or set(keys) <= in_scope:
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
    gcg, window = cfg["gcg"], cfg["data"]["window"]
    if gcg["prefix_length"] + gcg["target_length"] > window:
        _fail(
            f"gcg.prefix_length + gcg.target_length ({gcg['prefix_length']} + {gcg['target_length']}) "
            f"must fit in data.window ({window})"
        )


def _budgets_within_steps(cfg: dict) -> None:
    gcg = cfg["gcg"]
    if max(gcg["iterations"]) > gcg["steps"]:
        _fail(f"gcg.iterations goes up to {max(gcg['iterations'])} but gcg.steps is {gcg['steps']}")


def _gcg_top_k_fits_vocab(cfg: dict) -> None:
    gcg, vocab = cfg["gcg"], cfg["model"]["vocab_size"]
    usable = vocab if gcg["allow_special_tokens"] else vocab - len(SPECIAL_TOKENS)
    if gcg["top_k"] > usable:
        _fail(
            f"gcg.top_k ({gcg['top_k']}) is larger than the {usable} tokens a candidate may use "
            f"(model.vocab_size {vocab}{'' if gcg['allow_special_tokens'] else ' minus the special tokens'}); "
            "lower gcg.top_k"
        )


def _inversion_fits_window(cfg: dict) -> None:
    inv, window = cfg["invert"], cfg["data"]["window"]
    need = inv["skip_tokens"] + inv["prefix_length"] + (inv["suffix_length"] or 1)
    if need > window:
        _fail(
            f"invert.skip_tokens + invert.prefix_length + invert.suffix_length (or 1) = {need} is more than "
            f"data.window ({window}); shorten them"
        )


def _invert_top_k_fits(cfg: dict) -> None:
    inv, vocab = cfg["invert"], cfg["model"]["vocab_size"]
    if not inv["beam"] <= inv["top_k"] <= vocab:
        _fail(
            f"invert.top_k ({inv['top_k']}) must be at least invert.beam ({inv['beam']}) and at most "
            f"model.vocab_size ({vocab}); change invert.top_k"
        )


def _generic_inverters_fit(cfg: dict) -> None:
    from ilm.forward_budget import check_budget

    inv, vocab = cfg["invert"], cfg["model"]["vocab_size"]
    gen = inv["generic"]
    usable = vocab if gen["allow_special_tokens"] else vocab - len(SPECIAL_TOKENS)
    if "gcg" in gen["inverters"] and gen["gcg_top_k"] > usable:
        _fail(
            f"invert.generic.gcg_top_k ({gen['gcg_top_k']}) is larger than the {usable} tokens a candidate may use "
            f"(model.vocab_size {vocab}); lower invert.generic.gcg_top_k"
        )
    check_budget(inv)


def _evaluate_top_k_fits_vocab(cfg: dict) -> None:
    largest, vocab = max(cfg["evaluate"]["top_k"]), cfg["model"]["vocab_size"]
    if largest > vocab:
        _fail(f"evaluate.top_k holds {largest}, more than model.vocab_size ({vocab}); every k must be at most it")


def _sweep_bounds(cfg: dict) -> None:
    pilot = cfg["pilot"]
    if pilot["sweep_start"] >= pilot["sweep_stop"]:
        _fail(
            f"pilot.sweep_start ({pilot['sweep_start']:g}) must be below pilot.sweep_stop ({pilot['sweep_stop']:g}): "
            "the FGSM sweep runs from start up to stop; swap them or raise pilot.sweep_stop"
        )


def _check_name(key: str, value: str, what: str) -> None:
    """A name passed on to a command line: not empty, and not taken for an option."""
    if not value.strip():
        _fail(f"{key} is empty; give {what}")
    if value.startswith("-"):
        _fail(f"{key} ({value!r}) starts with '-', which a command would take for an option; "
              f"give {what} (a local path as ./{value})")


def _data_source_named(cfg: dict) -> None:
    _check_name("data.source", cfg["data"]["source"],
                'a Hub dataset id, a local file or folder, or "generated"')


def _judges_named(cfg: dict) -> None:
    for role in ("similarity", "perplexity"):
        _check_name(f"judge.{role}_model", cfg["judge"][f"{role}_model"],
                    "a Hub id, packaged:<name> or a local model folder")


def _pilot_sources_named(cfg: dict) -> None:
    _check_name("pilot.dataset", cfg["pilot"]["dataset"], 'a Hub dataset id or "generated"')
    _check_name("pilot.encoder", cfg["pilot"]["encoder"], "a Hub id or packaged:<name>")


# (keys the rule reads, check): rules across keys that a JSON Schema cannot state. Studies are
# checked by ilm.studies.check_studies (it validates each point with this module), which the
# Snakefile calls after validate_config.
_CROSS_KEY_RULES: list[tuple[tuple[str, ...], Callable[[dict], None]]] = [
    (("data.split_fractions",), _split_fractions_sum),
    (("data.stride", "data.window"), _stride_fits_window),
    (("data.window", "model.max_position_embeddings"), _window_fits_model),
    (("data.vocab_size", "model.vocab_size"), _vocab_fits_model),
    (("model.hidden_size", "model.num_attention_heads", "model.num_key_value_heads"), _heads_divide),
    (("train.batch_size", "train.micro_batch_size"), _micro_batch_divides),
    (("gcg.prefix_length", "gcg.target_length", "data.window"), _attack_fits_window),
    (("gcg.iterations", "gcg.steps"), _budgets_within_steps),
    (("gcg.top_k", "gcg.allow_special_tokens", "model.vocab_size"), _gcg_top_k_fits_vocab),
    (("evaluate.top_k", "model.vocab_size"), _evaluate_top_k_fits_vocab),
    (("invert.skip_tokens", "invert.prefix_length", "invert.suffix_length", "data.window"), _inversion_fits_window),
    (("invert.beam", "invert.top_k", "model.vocab_size"), _invert_top_k_fits),
    (("invert.generic", "invert.prefix_length", "invert.beam", "invert.top_k", "model.vocab_size"),
     _generic_inverters_fit),
    (("pilot.sweep_start", "pilot.sweep_stop"), _sweep_bounds),
    (("data.source",), _data_source_named),
    (("judge.similarity_model", "judge.perplexity_model"), _judges_named),
    (("pilot.dataset", "pilot.encoder"), _pilot_sources_named),
]


# --- checks that need the prepared data ----------------------------------------------------------------


def check_against_data(config: Mapping, stats: Mapping) -> None:
    """Checks that need the prepared data (stats.json): made before any GPU job.

    The Snakefile runs them when it starts, whenever results/data/stats.json is current, and
    the select_gcg_samples rule runs them right after prepare_data.
    """
    from ilm.shards import check_shard_count, sample_count  # numpy only

    n_test = int(stats["splits"]["test"]["windows"])
    for section in ("gcg", "invert"):
        settings = config[section]
        n = sample_count(n_test, settings["fraction"], settings["count"], section)
        check_shard_count(n, settings["shards"], section)


def check_data_stats(config: Mapping, stats_path: Path | str) -> None:
    """check_against_data on `stats_path` when it exists and describes data made with config["data"]."""
    stats_path = Path(stats_path)
    if not stats_path.is_file():
        return
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, json.JSONDecodeError):
        return  # prepare_data will rewrite it; its own checks run then
    if stats.get("data_config") != config["data"]:
        return  # the data will be prepared anew: select_gcg_samples checks it then
    check_against_data(config, stats)


# --- files and overrides ---------------------------------------------------------------------------------


def load_config(
    path: Optional[Path] = None, overrides: Optional[Mapping] = None, stage: Optional[str] = None
) -> dict:
    """Read a YAML/JSON config file (or none), deep-merge `overrides` and validate (for `stage`, if given)."""
    cfg: dict = {}
    if path is not None:
        cfg = read_yaml(path)
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate_config(cfg, stage=stage)


def read_yaml(path: Path | str) -> dict:
    """A YAML (or JSON) config file as a mapping; a syntax error names the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"config file {path}{where}: not valid YAML ({problem}); fix that line") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections, not {type(cfg).__name__}")
    return cfg


def load_config_unchecked(path: Path, overrides: Optional[Mapping] = None) -> dict:
    """A config file with `overrides` merged, strings coerced and the schema's defaults filled, NOT validated.

    Only for benchmarks/gpu_suite.py, which runs on a GPU machine without jsonschema: it reads
    config.yaml, which the tests validate. Every workflow step uses `load_config`.
    """
    cfg = yaml.safe_load(Path(path).read_text()) or {}
    if overrides:
        cfg = deep_merge(cfg, overrides)
    schema = load_schema()
    cfg = coerce_types(cfg, schema)
    _fill_defaults(cfg, schema)
    return cfg


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


# --- component dataclasses ------------------------------------------------------------------------------

C = TypeVar("C", bound="ConfigSection")


class ConfigSection:
    """Base of the component dataclasses: fields without defaults, built from one config section.

    A subclass sets SECTION (its config section); its fields are keys of that section.
    `from_dict` validates the given values against the schema, fills the schema's defaults
    and builds the dataclass (lists become tuples), so no default lives anywhere but the schema.
    """

    SECTION: ClassVar[str]

    @classmethod
    def from_dict(cls: type[C], values: Optional[Mapping] = None) -> C:
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        scope = {f"{cls.SECTION}.{name}" for name in names}
        return cls.from_section(validate_config({cls.SECTION: dict(values or {})}, scope=scope)[cls.SECTION])

    @classmethod
    def from_section(cls: type[C], section: Mapping) -> C:
        """The dataclass of a section that is already complete (validated, or defaults filled), not checked again."""
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        return cls(**{name: _frozen(section[name]) for name in names})


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value
