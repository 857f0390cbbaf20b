"""The configuration: the schema documents every key, and bad values fail early naming the key."""

import json
from pathlib import Path

import pytest
import yaml

from ilm.config import (
    STAGES,
    check_against_data,
    check_data_stats,
    load_config,
    load_config_unchecked,
    load_schema,
    schema_defaults,
    stage_slice,
    validate_config,
)
from ilm.evaluate import EvaluateConfig
from ilm.gcg import GCGConfig
from ilm.objectives import ObjectiveConfig
from ilm.stats import StatisticsConfig
from ilm.train import TrainConfig

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
    """config.yaml validates and keeps the paper's settings (docs/method.md §10)."""
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


def test_cross_key_rules_run_on_defaults_too():
    """A rule spanning keys fires when one of its keys takes its default (window 512 > default 256 positions)."""
    with pytest.raises(ValueError, match=r"data.window \(512\) is longer than model.max_position_embeddings \(256\)"):
        validate_config({"data": {"window": 512}})
    with pytest.raises(ValueError, match="gcg.iterations goes up to 500 but gcg.steps is 3"):
        validate_config({"gcg": {"steps": 3}})


def test_a_stage_is_judged_on_the_keys_it_reads():
    """The attack stage's slice (no gcg.iterations) validates with 3 steps; the summary stage's does not."""
    cfg = load_config(REPO / "config.yaml", {"gcg": {"steps": 3, "iterations": [1, 3]}})
    attack = stage_slice(cfg, "attack_gcg_shard")
    assert "iterations" not in attack["gcg"] and "examples" not in attack["gcg"]
    assert validate_config(attack, stage="attack_gcg_shard")["gcg"]["steps"] == 3
    summary = stage_slice(cfg, "summarise_gcg")
    assert summary["gcg"]["iterations"] == [1, 3]
    with pytest.raises(ValueError, match="gcg.iterations goes up to 500"):
        validate_config({"gcg": {"steps": 3}}, stage="summarise_gcg")


def test_every_rule_has_a_stage_and_every_stage_slice_validates():
    """Each Snakefile rule that calls `ilm` names its slice in ilm.config.STAGES, and each slice validates alone."""
    import re

    rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        rules.update(re.findall(r"^\s*rule (\w+):", smk.read_text(), flags=re.M))
    assert rules == set(STAGES)
    for preset in (None, "profiles/demo/demo.yaml", "tests/smoke.yaml"):
        overrides = yaml.safe_load((REPO / preset).read_text()) if preset else None
        cfg = load_config(REPO / "config.yaml", overrides)
        for stage in STAGES:
            validate_config(stage_slice(cfg, stage), stage=stage)


@pytest.mark.parametrize(
    "config, expected",
    [
        # `snakemake --config 'train={lr: 0.001, max_steps: 10}'`: Snakemake's YAML BaseLoader gives strings.
        ({"train": {"lr": "0.001", "max_steps": "10", "allow_tf32": "false", "betas": ["0.8", "0.9"]}},
         {"train": {"lr": 0.001, "max_steps": 10, "allow_tf32": False, "betas": [0.8, 0.9]}}),
        ({"train": {"lr": "1e-3", "max_steps": "null"}}, {"train": {"lr": 0.001, "max_steps": None}}),  # YAML 1.1
        ({"gcg": {"count": "1e2", "iterations": ["50", "100"], "steps": "100"}},
         {"gcg": {"count": 100, "iterations": [50, 100], "steps": 100}}),
        ({"data": {"source": "123", "seed": 7.0}}, {"data": {"source": "123", "seed": 7}}),
    ],
)
def test_strings_are_coerced_to_the_schema_types(config, expected):
    """Nested --config overrides and YAML-1.1 scientific notation become the schema's numbers, booleans and nulls."""
    cfg = validate_config(config)
    for section, values in expected.items():
        for key, value in values.items():
            assert cfg[section][key] == value and type(cfg[section][key]) is type(value), (section, key)


def test_snakemake_nested_config_override_reaches_the_config(tmp_path):
    """`--config 'train={lr: 0.001}'` as Snakemake parses it validates to lr 0.001 (it was refused as a string)."""
    from snakemake.cli import parse_config

    override = parse_config(["train={lr: 0.001, micro_batch_size: 128}"])
    assert override == {"train": {"lr": "0.001", "micro_batch_size": "128"}}  # what Snakemake hands over
    cfg = load_config(REPO / "config.yaml", override)
    assert cfg["train"]["lr"] == 0.001 and cfg["train"]["micro_batch_size"] == 128


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), ".inf", "nan"])
def test_non_finite_numbers_are_refused(value):
    """inf and NaN, given as floats or as the strings YAML and --config produce, fail naming the key."""
    with pytest.raises(ValueError, match=r"train.lr: (inf|-inf|nan) is not a finite number"):
        validate_config({"train": {"lr": value}})
    cfg = yaml.safe_load("train:\n  lr: .inf\n")
    with pytest.raises(ValueError, match="train.lr: inf is not a finite number"):
        validate_config(cfg)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"evaluate": {"top_k": [1, 100000]}}, "evaluate.top_k holds 100000, more than model.vocab_size (2048)"),
        ({"gcg": {"top_k": 4096}}, "gcg.top_k (4096) is larger than the 2048 tokens a candidate may use"),
        ({"gcg": {"top_k": 2045, "allow_special_tokens": False}}, "larger than the 2042 tokens"),
        ({"gcg": {"fraction": 0.0}}, "gcg.fraction"),
        ({"data": {"vocab_size": 70000}, "model": {"vocab_size": 70000}}, "data.vocab_size"),
    ],
)
def test_bounds_that_need_no_data_fail_at_validation(override, fragment):
    """Top-k beyond the vocabulary, an empty fraction and a vocabulary beyond uint16 fail before any job."""
    with pytest.raises(ValueError) as err:
        load_config(REPO / "config.yaml", override)
    assert fragment in str(err.value)


def test_checks_against_the_data_use_current_stats_only(tmp_path):
    """gcg.count beyond the test split, or a fraction selecting no window, fail from stats.json, if it is current."""
    cfg = load_config(REPO / "config.yaml", {"gcg": {"count": 500}})
    stats = {"data_config": cfg["data"], "splits": {"test": {"windows": 100}}}
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"gcg.count \(500\) is larger than the test split \(100 windows\)"):
        check_data_stats(cfg, path)
    few = load_config(REPO / "config.yaml", {"gcg": {"fraction": 0.001}})
    with pytest.raises(ValueError, match=r"gcg.fraction \(0.001\) of the 100 test windows selects no window"):
        check_against_data(few, stats)
    # stats.json of other data settings (about to be remade) or no stats.json at all: nothing to judge yet.
    path.write_text(json.dumps({**stats, "data_config": {**cfg["data"], "seed": 43}}))
    check_data_stats(cfg, path)
    check_data_stats(cfg, tmp_path / "absent.json")


def test_dataclasses_take_every_default_from_the_schema():
    """Each component dataclass has no default of its own; built from {} it holds exactly the schema's defaults."""
    import dataclasses

    for cls in (ObjectiveConfig, TrainConfig, EvaluateConfig, GCGConfig, StatisticsConfig):
        fields = dataclasses.fields(cls)
        assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)
        defaults = schema_defaults(cls.SECTION)
        built = cls.from_dict({})
        for f in fields:
            expected = defaults[f.name]
            expected = tuple(expected) if isinstance(expected, list) else expected
            assert getattr(built, f.name) == expected, (cls.__name__, f.name)
    assert GCGConfig.from_dict({"steps": 7, "fraction": 0.5}).steps == 7  # other stages' keys are accepted
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="train.batch_size \\(100\\) must be a multiple"):
        TrainConfig.from_dict({"batch_size": 100})


def test_unchecked_config_equals_the_validated_one_for_the_paper_config():
    """load_config_unchecked (the GPU suite, no jsonschema) gives config.yaml exactly as load_config does,
    and from_section builds the same dataclasses as from_dict from it."""
    checked = load_config(REPO / "config.yaml")
    unchecked = load_config_unchecked(REPO / "config.yaml", {"train": {"lr": "0.001"}})
    assert unchecked["train"]["lr"] == 0.001  # strings coerced as in load_config
    assert unchecked == load_config(REPO / "config.yaml", {"train": {"lr": 0.001}})
    assert load_config_unchecked(REPO / "config.yaml") == checked
    for cls in (ObjectiveConfig, TrainConfig, EvaluateConfig, GCGConfig, StatisticsConfig):
        assert cls.from_section(checked[cls.SECTION]) == cls.from_dict(checked[cls.SECTION])


def test_statistics_defaults_and_ranges():
    """The statistics section fills its defaults; a level of 0 or 1, or too few resamples, fail naming the key."""
    assert validate_config({})["statistics"] == {"confidence": 0.95, "bootstrap_resamples": 1000, "seed": 0}
    assert "statistics" not in stage_slice(validate_config({}), "evaluate_model")  # no statistics in the GPU job
    for confidence in (0, 1.0, 1.5):
        with pytest.raises(ValueError, match="statistics.confidence"):
            validate_config({"statistics": {"confidence": confidence}})
    with pytest.raises(ValueError, match="statistics.bootstrap_resamples"):
        validate_config({"statistics": {"bootstrap_resamples": 50}})
    with pytest.raises(ValueError, match="statistics.seed"):
        validate_config({"statistics": {"seed": -1}})
    for stage in ("summarise_gcg", "tabulate_gcg_summary", "plot_gcg_success_rate", "tabulate_forward_quality"):
        assert stage_slice(validate_config({}), stage)["statistics"]["confidence"] == 0.95, stage


def test_missing_config_file_is_a_clear_error(tmp_path):
    """A config path that does not exist is named in the error."""
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


# --- rerun only what changed (issue 22 §3) ------------------------------------------------------------------

RUNTIME_CHANGES = [
    ("train", "log_every", 7), ("train", "checkpoint_every", 9), ("train", "device", "cpu"),
    ("evaluate", "device", "cpu"), ("evaluate", "batch_size", 3), ("gcg", "device", "cpu"),
    ("gcg", "batch_samples", 3), ("gcg", "max_candidates_per_forward", 99), ("gcg", "compile", False),
    ("invert", "batch_samples", 3), ("invert", "device", "cpu"), ("judge", "device", "cpu"),
    ("pilot", "device", "cpu"),
]


@pytest.mark.parametrize("section, key, value", RUNTIME_CHANGES)
def test_runtime_setting_keeps_every_stage_config_and_reaches_the_job(tmp_path, section, key, value):
    """A device, batch size or logging cadence leaves every stage's config file (its rule's param) as it was,
    and a job still reads the new value from the --runtime file."""
    from argparse import Namespace

    from ilm.commands import stage_config
    from ilm.config import write_runtime_config, write_stage_config

    base = load_config(REPO / "config.yaml")
    changed = load_config(REPO / "config.yaml", {section: {key: value}})
    assert changed[section][key] != base[section][key]
    for stage in STAGES:
        assert write_stage_config(changed, stage, tmp_path) == write_stage_config(base, stage, tmp_path), stage
    stage = {"train": "train_model", "evaluate": "evaluate_model", "gcg": "attack_gcg_shard",
             "invert": "invert_shard", "judge": "judge_inversion", "pilot": "attack_pilot"}[section]
    args = Namespace(config=write_stage_config(changed, stage, tmp_path),
                     runtime=write_runtime_config(changed, tmp_path), config_json=None)
    assert stage_config(args, stage)[section][key] == value


def test_settings_that_shape_outputs_change_their_stage_config(tmp_path):
    """train.lr renames the training config; the pilot's training settings rename its attack and table configs."""
    from ilm.config import write_stage_config

    base = load_config(REPO / "config.yaml")
    lr = load_config(REPO / "config.yaml", {"train": {"lr": 0.001}})
    assert write_stage_config(lr, "train_model", tmp_path) != write_stage_config(base, "train_model", tmp_path)
    for change in ({"epochs": 4}, {"lambda_pag": {"pag_identity": 1.5}}, {"max_tokens": 64}):
        pilot = load_config(REPO / "config.yaml", {"pilot": change})
        for stage in ("train_pilot", "attack_pilot", "tabulate_pag_pilot", "plot_pag_fgsm_sweep"):
            assert write_stage_config(pilot, stage, tmp_path) != write_stage_config(base, stage, tmp_path), stage


def test_integral_floats_hash_like_ints(tmp_path):
    """grad_scale_tokens: 65536.0 names the same config file as 65536 (no retraining for the spelling)."""
    from ilm.config import write_stage_config

    as_int = load_config(REPO / "config.yaml", {"objective": {"grad_scale_tokens": 65536}})
    as_float = load_config(REPO / "config.yaml", {"objective": {"grad_scale_tokens": 65536.0}})
    for stage in ("train_model", "evaluate_model", "attack_gcg_shard", "invert_shard"):
        assert write_stage_config(as_float, stage, tmp_path) == write_stage_config(as_int, stage, tmp_path), stage
    half = load_config(REPO / "config.yaml", {"objective": {"grad_scale_tokens": 65536.5}})
    assert write_stage_config(half, "train_model", tmp_path) != write_stage_config(as_int, "train_model", tmp_path)


def test_resume_keys_are_the_settings_that_shape_a_shard():
    """A partial GCG or inversion shard is resumed exactly when its stage config is unchanged: the settings its
    resume check compares are the shaping keys of its section, and training resumes across run-time changes."""
    from ilm.attack import RESULT_KEYS as GCG_KEYS
    from ilm.config import RUNTIME_KEYS
    from ilm.invert import RESULT_KEYS as INVERT_KEYS
    from ilm.train import RESUME_FREE_TRAIN_KEYS

    cfg = validate_config({})
    assert set(GCG_KEYS) == set(stage_slice(cfg, "attack_gcg_shard")["gcg"])
    assert set(INVERT_KEYS) == set(stage_slice(cfg, "invert_shard")["invert"])
    assert {k.split(".")[1] for k in RUNTIME_KEYS if k.startswith("train.")} <= set(RESUME_FREE_TRAIN_KEYS)


def test_every_ilm_call_takes_the_runtime_file():
    """Every rule that passes its config slice to `ilm` also passes the run-time file, by a derived param."""
    import re

    calls = 0
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=\S)", smk.read_text()):
            if "--config {params.config}" in block and block.startswith("rule "):
                calls += 1
                assert "--runtime {params.runtime}" in block and "runtime=runtime_file," in block, block[:60]
    assert calls >= 25


# --- bad values (issue 22 §5) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"pilot": {"sweep_start": 0.1, "sweep_stop": 0.01}}, "pilot.sweep_start (0.1) must be below pilot.sweep_stop"),
        ({"data": {"source": ""}}, "data.source is empty"),
        ({"data": {"source": "--help"}}, "data.source ('--help') starts with '-'"),
        ({"judge": {"similarity_model": ""}}, "judge.similarity_model is empty"),
        ({"judge": {"perplexity_model": "  "}}, "judge.perplexity_model is empty"),
        ({"pilot": {"encoder": "-x"}}, "pilot.encoder ('-x') starts with '-'"),
    ],
)
def test_bad_names_and_sweep_bounds_fail_naming_the_key(override, fragment):
    """A reversed FGSM sweep, an empty or option-like source and an empty judge name fail at start-up."""
    with pytest.raises(ValueError) as err:
        load_config(REPO / "config.yaml", override)
    assert fragment in str(err.value)


def test_broken_yaml_names_the_file_and_the_line(tmp_path, capsys):
    """A YAML syntax error is one line naming the file, line and column, from load_config and from `ilm`."""
    from ilm.cli import main

    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: 0.1\n  epochs: [1, 2\ngcg:\n  steps: 3\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    message = str(err.value)
    assert f"config file {path}, line 4, column 4" in message and "\n" not in message
    assert main(["gcg-samples", "--data-dir", str(tmp_path), "--out", str(tmp_path / "s.json"),
                 "--config", str(path)]) == 2
    assert f"{path}, line 4" in capsys.readouterr().err
