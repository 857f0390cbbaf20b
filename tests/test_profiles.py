"""profiles/slurm adds site values only: every GPU rule gets the GPU partition and model, and no number
a rule declares (gpu, mem_mb, runtime, threads) is set again, differently, by the profile."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yte

from rule_resources import REPO, declared_resources

SLURM_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
SITE = {"ILM_SLURM_ACCOUNT": "proj", "ILM_SLURM_PARTITION": "cpu", "ILM_SLURM_GPU_PARTITION": "gpu",
        "ILM_SLURM_GPU_MODEL": "a100"}
GPU_SITE_VALUES = {"slurm_partition": "gpu", "gpu_model": "a100"}
# Submitted rules that still lean on the profile's fallback runtime (workflow/rules/invert.smk to
# declare runtime=30 and runtime=60); empty this set once they do.
NO_RUNTIME_YET: set[str] = set()


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> dict[str, dict]:
    """Every rule of the paper configuration (config.yaml) with what its rule file declares."""
    return declared_resources(tmp_path_factory.mktemp("rules"), [])


def _profile(monkeypatch, site: dict[str, str]) -> dict:
    """profiles/slurm/config.yaml rendered as Snakemake renders it (YTE) under these site variables."""
    for name in SITE:
        monkeypatch.delenv(name, raising=False)
    for name, value in site.items():
        monkeypatch.setenv(name, value)
    with SLURM_PROFILE.open() as stream:
        return yte.process_yaml(stream, require_use_yte=True)


def _gpu_rules(rules: dict[str, dict]) -> set[str]:
    return {name for name, rule in rules.items() if not rule["local"] and rule["resources"].get("gpu", 0)}


def test_every_gpu_rule_gets_the_gpu_partition_and_model(rules, monkeypatch):
    """With the site variables set, each submitted rule asking for a GPU, and only those, gets the GPU site values."""
    profile = _profile(monkeypatch, SITE)
    per_rule = profile.get("set-resources", {})
    gpu_rules = _gpu_rules(rules)
    assert gpu_rules >= {"train_model", "evaluate_model", "attack_gcg_shard", "embed_pilot"}  # the parse found them
    missing = sorted(
        r for r in gpu_rules if {k: per_rule.get(r, {}).get(k) for k in GPU_SITE_VALUES} != GPU_SITE_VALUES
    )
    assert not missing, f"GPU rules without the GPU partition and model in profiles/slurm (gpu_rules): {missing}"
    assert not set(per_rule) - set(rules), f"profiles/slurm names rules that do not exist: {set(per_rule) - set(rules)}"
    cpu_with_gpu_values = sorted(r for r in set(per_rule) - gpu_rules if set(per_rule[r]) & set(GPU_SITE_VALUES))
    assert not cpu_with_gpu_values, f"rules without gpu=1 sent to the GPU partition: {cpu_with_gpu_values}"
    assert profile["default-resources"]["slurm_partition"] == "cpu"
    assert profile["default-resources"]["slurm_account"] == "proj"


@pytest.mark.parametrize("site", [SITE, {}], ids=["site-set", "site-unset"])
def test_profile_repeats_no_rule_number_differently(rules, monkeypatch, site):
    """No set-resources or set-threads value differs from the number the rule itself declares."""
    profile = _profile(monkeypatch, site)
    clashes = []
    for rule, values in profile.get("set-resources", {}).items():
        declared = rules[rule]["resources"]
        clashes += [f"{rule}: {k}={v} (rule: {declared[k]})"
                    for k, v in values.items() if k in declared and declared[k] != v]
    for rule, threads in profile.get("set-threads", {}).items():
        if rules[rule]["resources"]["threads"] != threads:
            clashes.append(f"{rule}: threads={threads} (rule: {rules[rule]['resources']['threads']})")
    assert not clashes, "profiles/slurm and the rules disagree; the rule owns the number: " + "; ".join(clashes)


def test_every_submitted_rule_declares_memory_and_runtime(rules):
    """Each rule that reaches sbatch declares its own mem_mb and runtime, so the profile's fallback stays unused."""
    submitted = {name: rule["resources"] for name, rule in rules.items() if not rule["local"]}
    no_memory = sorted(name for name, res in submitted.items() if "mem_mb" not in res)
    no_runtime = {name for name, res in submitted.items() if "runtime" not in res}
    assert not no_memory, f"submitted rules without mem_mb: {no_memory}"
    assert no_runtime <= NO_RUNTIME_YET, f"submitted rules without runtime: {sorted(no_runtime - NO_RUNTIME_YET)}"


def _dry_run_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of each job a dry run lists."""
    jobs = []
    for block in re.split(r"^rule (?=\w+:$)", output, flags=re.M)[1:]:
        rule = block.split(":", 1)[0]
        line = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
        resources = dict(item.split("=", 1) for item in line.group(1).split(", ")) if line else {}
        jobs.append((rule, resources))
    return jobs


def test_dry_run_sends_gpu_jobs_to_the_gpu_partition_with_the_rule_numbers(rules, tmp_path):
    """A dry run through profiles/slurm: GPU jobs get the GPU partition and model, CPU jobs the CPU partition,
    every job its rule's memory and runtime."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    env = {k: v for k, v in os.environ.items() if k not in SITE} | SITE
    snakemake = str(Path(sys.executable).parent / "snakemake")
    proc = subprocess.run(
        [snakemake, "-n", "--profile", str(SLURM_PROFILE.parent), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
         "--configfile", str(REPO / "tests" / "smoke.yaml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = [(rule, res) for rule, res in _dry_run_jobs(proc.stdout + proc.stderr) if not rules[rule]["local"]]
    assert {"embed_pilot", "train_model", "prepare_data"} <= {rule for rule, _ in jobs}
    for rule, res in jobs:
        declared = rules[rule]["resources"]
        if declared.get("gpu", 0):
            assert res.get("gpu") == "1" and {k: res.get(k) for k in GPU_SITE_VALUES} == GPU_SITE_VALUES, (rule, res)
        else:
            assert "gpu" not in res and "gpu_model" not in res and res.get("slurm_partition") == "cpu", (rule, res)
        for key in ("mem_mb", "runtime"):
            if key in declared:
                assert res[key] == str(declared[key]), (rule, key, res[key], declared[key])
