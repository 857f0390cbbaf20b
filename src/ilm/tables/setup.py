"""Table `setup` (rule tabulate_setup; docs/method.md §8 E5): the settings and sizes that define the run.

Inputs: results/data/stats.json (vocabulary, windows and tokens per split, dataset id and
revision) and, for each variant, results/models/{variant}/run_config.json (the config the model
was trained with, steps and epochs trained), config.json and model.safetensors (the parameter
count, read from the saved tensors: the tied LM head is stored once and counted once). The
GCG settings come from the rule's config slice. A value that differs between variants is
listed per variant.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ilm.names import order_variants, variant_name
from ilm.tables.common import write_table

# (section, label, dotted key in run_config.json's `config`): the trained-with settings shown.
TRAINED_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("Data", "Window (tokens)", "data.window"),
    ("Data", "Stride (tokens)", "data.stride"),
    ("Data", "Split unit", "data.split_unit"),
    ("Model", "Hidden size", "model.hidden_size"),
    ("Model", "MLP size", "model.intermediate_size"),
    ("Model", "Layers", "model.num_hidden_layers"),
    ("Model", "Attention heads", "model.num_attention_heads"),
    ("Model", "KV heads", "model.num_key_value_heads"),
    ("Model", "Vocabulary (embedding rows)", "model.vocab_size"),
    ("Model", "Max positions", "model.max_position_embeddings"),
    ("Model", "Tied embeddings", "model.tie_word_embeddings"),
    ("Objective", "lambda CE", "objective.lambda_ce"),
    ("Objective", "lambda inverse", "objective.lambda_inv"),
    ("Objective", "Gradient scale tokens", "objective.grad_scale_tokens"),
    ("Objective", "Mask fraction (Bert-like)", "objective.mask_fraction"),
    ("Objective", "Double backprop through g", "objective.double_backprop"),
    ("Objective", "Bert-like placeholder", "objective.mask_placeholder"),
    ("Objective", "Last position excluded", "objective.exclude_last_position"),
    ("Objective", "Last position target", "objective.last_target"),
    ("Training", "Batch (windows per step)", "train.batch_size"),
    ("Training", "Micro-batch", "train.micro_batch_size"),
    ("Training", "Learning rate", "train.lr"),
    ("Training", "Weight decay", "train.weight_decay"),
    ("Training", "Warm-up steps", "train.warmup_steps"),
    ("Training", "Gradient clip", "train.grad_clip"),
    ("Training", "Epochs (configured)", "train.epochs"),
    ("Training", "Max steps (configured)", "train.max_steps"),
    ("Training", "Precision", "train.precision"),
    ("Training", "Seed", "train.seed"),
)

# (label, key of run_config.json): what training did.
TRAINED_FACTS: tuple[tuple[str, str], ...] = (
    ("Steps trained", "steps"),
    ("Epochs trained", "epochs_completed"),
    ("Best step (kept model)", "best_step"),
)

GCG_SETTINGS: tuple[tuple[str, str], ...] = (
    ("Prefix length (tokens)", "prefix_length"),
    ("Target length (tokens)", "target_length"),
    ("Steps", "steps"),
    ("Search width (candidates per step)", "search_width"),
    ("Top-k (token candidates)", "top_k"),
)

SPLITS = ("train", "validation", "test")


def parameter_count(model_dir: Path) -> int:
    """Elements of every tensor in model_dir/model.safetensors; a stored tied LM head is counted once."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    tied = json.loads((model_dir / "config.json").read_text()).get("tie_word_embeddings", False)
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as f:
        shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    if tied:
        shapes.pop("lm_head.weight", None)  # the embedding matrix itself, if a writer stored it twice
    return sum(math.prod(shape) for shape in shapes.values())


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _per_variant(values: Mapping[str, Any]) -> str:
    """One value when every variant has it, else `Name value` per variant (paper order)."""
    shown = {v: _value(values[v]) for v in order_variants(values)}
    if len(set(shown.values())) == 1:
        return next(iter(shown.values()))
    return "; ".join(f"{variant_name(v)} {s}" for v, s in shown.items())


def _dotted(config: Mapping, dotted: str, where: Path) -> Any:
    section, key = dotted.split(".")
    try:
        return config[section][key]
    except KeyError:
        raise ValueError(f"{where} records no {dotted}; retrain that variant with this version of `ilm train`") from None


def _split_inputs(paths: Sequence[Path]) -> tuple[Path, dict[str, Path]]:
    """stats.json and {variant: model directory} from the input files."""
    paths = [Path(p) for p in paths]
    stats = [p for p in paths if p.name == "stats.json"]
    if len(stats) != 1:
        raise ValueError(f"table setup needs exactly one results/data/stats.json among its inputs, got {len(stats)}")
    model_dirs = {p.parent.name: p.parent for p in paths if p.name == "run_config.json"}
    if not model_dirs:
        raise ValueError("table setup needs each variant's results/models/{variant}/run_config.json")
    for variant, d in model_dirs.items():
        for name in ("run_config.json", "config.json", "model.safetensors"):
            if not (d / name).is_file():
                raise ValueError(f"{d / name} does not exist; train {variant} first (`ilm train`)")
    return stats[0], model_dirs


def _parameters(model_dirs: Mapping[str, Path], runs: Mapping[str, Mapping]) -> dict[str, int]:
    """{variant: parameter count} from the saved tensors, checked against what training recorded."""
    counts = {}
    for variant, d in model_dirs.items():
        counts[variant] = parameter_count(d)
        recorded = runs[variant].get("parameters")
        if recorded is not None and int(recorded) != counts[variant]:
            raise ValueError(
                f"{d / 'model.safetensors'} holds {counts[variant]} parameters but {d / 'run_config.json'} records "
                f"{recorded}; the model folder is inconsistent, retrain {variant}"
            )
    return counts


def build(paths: Sequence[Path], config: Mapping) -> pd.DataFrame:
    """Rows Section, Setting, Value: data counts, model sizes and parameters, objective, training and GCG settings."""
    stats_path, model_dirs = _split_inputs(paths)
    stats = json.loads(stats_path.read_text())
    runs = {v: json.loads((d / "run_config.json").read_text()) for v, d in model_dirs.items()}
    rows: list[tuple[str, str, str]] = []

    dataset = stats.get("dataset") or {}
    rows.append(("Data", "Dataset", str(dataset.get("id") or stats["source"])))
    rows.append(("Data", "Dataset revision", _value(dataset.get("revision"))))
    if dataset.get("commit"):
        rows.append(("Data", "Dataset commit", str(dataset["commit"])))
    rows.append(("Data", "Tokenizer vocabulary", _value(stats["vocab_size"])))
    for section, label, dotted in TRAINED_SETTINGS:
        values = {v: _dotted(run["config"], dotted, model_dirs[v] / "run_config.json") for v, run in runs.items()}
        rows.append((section, label, _per_variant(values)))
        if dotted == "data.split_unit":
            for split in SPLITS:
                rows.append(("Data", f"{split.capitalize()} windows", _value(stats["splits"][split]["windows"])))
                rows.append(("Data", f"{split.capitalize()} tokens", _value(stats["splits"][split]["tokens"])))
        if dotted == "model.tie_word_embeddings":
            rows.append(("Model", "Parameters", _per_variant(_parameters(model_dirs, runs))))
    for label, key in TRAINED_FACTS:
        rows.append(("Training", label, _per_variant({v: run.get(key) for v, run in runs.items()})))

    from ilm.shards import sample_count  # numpy only

    gcg = config["gcg"]
    for label, key in GCG_SETTINGS:
        rows.append(("GCG", label, _value(gcg[key])))
    samples = sample_count(int(stats["splits"]["test"]["windows"]), gcg["fraction"], gcg["count"], "gcg")
    rows.append(("GCG", "Attacked test windows", _value(samples)))
    return pd.DataFrame(rows, columns=["Section", "Setting", "Value"])


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer=None) -> None:
    write_table(
        build(inputs, config),
        out_stem,
        caption="Experimental setup: data, model, objective, training and GCG settings of this run.",
        label="tab:setup",
    )
