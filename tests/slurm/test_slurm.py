"""The workflow on a real SLURM cluster through profiles/slurm: every job an sbatch job, GPUs asked
for exactly by the GPU rules, the same tables as a local run, and resumption after a cancelled job,
a time limit and a killed GCG shard, without a killed job ever leaving an output that looks done.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slurm_helpers import (
    FAULTS_CONFIG,
    GPU_RULES,
    LOCAL_RULES,
    run_on_slurm,
    sbatch_calls,
    start_on_slurm,
    wait_for,
)
from workflow_helpers import SMOKE_CONFIG, read_tables, run_locally, run_snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FAULT_CONFIGS = (SMOKE_CONFIG, FAULTS_CONFIG)
MODEL_DIR = "results/models/base"
MODEL = f"{MODEL_DIR}/model.safetensors"  # the target that makes Snakemake train `base`
SHARD = "results/gcg/base/shard0.jsonl"
TIMING_FIELDS = {"seconds"}


def _copy_results(src: Path, dst: Path, *paths: str) -> Path:
    """Copy finished results (keeping mtimes) into a fresh workdir, so a test runs only what it studies."""
    for rel in paths:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if (src / rel).is_dir():
            shutil.copytree(src / rel, dst / rel)
        else:
            shutil.copy2(src / rel, dst / rel)
    return dst


def _job_stats(snakemake_output: str) -> dict[str, int]:
    """The first 'Job stats' table of a Snakemake run or dry run: jobs per rule."""
    table = snakemake_output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M) if rule != "total"}


def _planned_rules(workdir: Path, *targets: str) -> set[str]:
    """Rules a dry run would execute now: what Snakemake does not take as complete."""
    return set(_job_stats(run_snakemake(workdir, "-n", *targets, configfiles=FAULT_CONFIGS).stdout))


def _assert_same_weights(model_dir: Path, reference_dir: Path) -> None:
    ours, ref = load_file(model_dir / "model.safetensors"), load_file(reference_dir / "model.safetensors")
    assert ours.keys() == ref.keys()
    for name in ref:
        assert torch.equal(ours[name], ref[name]), f"{name} differs from the uninterrupted run"


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in path.read_text().splitlines()]


def _checkpoint_step(workdir: Path) -> int:
    checkpoint = torch.load(workdir / "results/checkpoints/base/last.pt", map_location="cpu", weights_only=True)
    return checkpoint["progress"]["step"]


@pytest.fixture(scope="module")
def fault_reference(smoke_run, tmp_path_factory) -> Path:
    """Model `base` and GCG shard 0 under faults.yaml, run locally without interruption."""
    work = _copy_results(smoke_run, tmp_path_factory.mktemp("fault_reference"), "results/corpus", "results/data")
    return run_locally(work, MODEL, SHARD, configfiles=FAULT_CONFIGS)


def test_whole_workflow_runs_through_sbatch_with_gpus_only_for_gpu_rules(slurm_cluster, smoke_run, tmp_path):
    """Every Snakemake job is one sbatch job, GPU rules ask --gpus=1 and get gres:gpu:1, tables match a local run."""
    work = tmp_path / "slurm_smoke"
    proc = run_on_slurm(slurm_cluster, work)
    log = proc.stdout + proc.stderr

    stats = _job_stats(log)
    # the main run's local rules (downloads and studies are not in the smoke run's DAG)
    assert LOCAL_RULES - {"download_data", "download_pilot_data", "studies", "study_select_gcg_samples",
                          "study_summarise_gcg", "study_summarise_uniform", "summarise_study",
                          "tabulate_seed_claims"} <= set(stats)
    planned = {rule: n for rule, n in stats.items() if rule not in LOCAL_RULES}  # local rules never reach sbatch
    jobs = slurm_cluster.jobs(work)
    assert not {job.rule for job in jobs} & LOCAL_RULES
    per_rule = {rule: sum(job.rule == rule for job in jobs) for rule in planned}
    assert per_rule == planned and len(jobs) == sum(planned.values())
    assert {job.state for job in jobs} == {"COMPLETED"}
    submitted = {int(i) for i in re.findall(r"has been submitted with SLURM jobid (\d+)", log)}
    assert submitted == {job.id for job in jobs} == slurm_cluster.completed_job_ids(work)

    calls = sbatch_calls(log)
    assert sorted(calls) == sorted(job.comment for job in jobs)
    for job in jobs:
        (call,) = calls[job.comment]
        if job.rule in GPU_RULES:
            assert "--gpus=1" in call.split() and job.tres_per_job == "gres:gpu:1", call
        else:
            assert "--gpus" not in call and "gpu" not in job.tres_per_job, call
    # The rules' paper-scale requests reach sbatch (runtimes in minutes, attempt 1).
    train_call = calls["rule_train_model_wildcards_base"][0].split()
    assert train_call[train_call.index("-t") + 1] == "1440" and train_call[train_call.index("--mem") + 1] == "32000"
    print("\nsbatch, GPU job:", calls["rule_train_model_wildcards_base"][0])
    print("sbatch, CPU job:", calls["rule_prepare_data"][0])

    tables = read_tables(work)
    assert tables and tables == read_tables(smoke_run)


def test_cancelled_training_resumes_from_its_checkpoint(slurm_cluster, smoke_run, fault_reference, tmp_path):
    """scancel mid-training, rerun: training resumes from the last checkpoint; same weights as without the cancel."""
    work = _copy_results(smoke_run, tmp_path / "cancel", "results/corpus", "results/data")
    run = start_on_slurm(
        slurm_cluster, work, "--retries", "0", MODEL, configfiles=FAULT_CONFIGS, env={"ILM_TRAIN_STEP_SLEEP": "1"}
    )
    try:
        job = wait_for(
            lambda: [j for j in slurm_cluster.jobs(work) if j.rule == "train_model" and j.state == "RUNNING"],
            120, "the training job to run",
        )[0]
        wait_for(lambda: (work / "results/checkpoints/base/last.pt").exists(), 120, "a first checkpoint")
        slurm_cluster.scancel(job.id)
        assert run.wait(timeout=180) != 0
    finally:
        if run.poll() is None:
            run.kill()
    assert [j.state for j in slurm_cluster.jobs(work)] == ["CANCELLED"]
    step = _checkpoint_step(work)
    assert 0 < step < 24
    # (d) the cancelled job left no output that Snakemake takes as complete
    assert not (work / MODEL_DIR).exists()
    assert "train_model" in _planned_rules(work, MODEL)

    run_on_slurm(slurm_cluster, work, MODEL, configfiles=FAULT_CONFIGS)
    assert f"resuming from step {step}" in (work / "logs/train/base.log").read_text()
    assert [j.state for j in slurm_cluster.jobs(work)] == ["CANCELLED", "COMPLETED"]
    _assert_same_weights(work / MODEL_DIR, fault_reference / MODEL_DIR)


def test_training_past_its_time_limit_is_retried_longer_and_resumes(slurm_cluster, smoke_run, fault_reference, tmp_path):
    """A training job killed by its 1-minute limit is resubmitted with a longer one and resumes, not restarts."""
    work = _copy_results(smoke_run, tmp_path / "timeout", "results/corpus", "results/data")
    # 24 steps of 4 s outlast SLURM's kill at 60-90 s; attempt 2 gets 5 minutes. Other resources of
    # `train_model` come from the rule (gpu=1): --set-resources on the command line replaces the profile's.
    proc = run_on_slurm(
        slurm_cluster, work, MODEL, "--retries", "1", "--set-resources", "train_model:runtime=4*attempt-3",
        configfiles=FAULT_CONFIGS, env={"ILM_TRAIN_STEP_SLEEP": "4"},
    )
    jobs = slurm_cluster.jobs(work)
    assert [(j.state, j.time_limit) for j in jobs] == [("TIMEOUT", "00:01:00"), ("COMPLETED", "00:05:00")]
    calls = sbatch_calls(proc.stdout + proc.stderr)["rule_train_model_wildcards_base"]
    assert [call.split()[call.split().index("-t") + 1] for call in calls] == ["1", "5"]
    assert all("--gpus=1" in call.split() for call in calls)
    resumed = re.search(r"resuming from step (\d+)", (work / "logs/train/base.log").read_text())
    assert resumed and int(resumed.group(1)) > 0
    _assert_same_weights(work / MODEL_DIR, fault_reference / MODEL_DIR)


def test_killed_gcg_shard_keeps_its_finished_samples(slurm_cluster, fault_reference, tmp_path):
    """A GCG shard killed after one batch leaves only shard0.partial.jsonl; the rerun attacks only the rest."""
    work = _copy_results(
        fault_reference, tmp_path / "gcg", "results/corpus", "results/data", MODEL_DIR
    )
    proc = run_on_slurm(
        slurm_cluster, work, "--retries", "0", SHARD,
        configfiles=FAULT_CONFIGS, env={"ILM_GCG_STOP_AFTER_BATCHES": "1"}, check=False,
    )
    assert proc.returncode != 0
    assert [j.state for j in slurm_cluster.jobs(work)] == ["FAILED"]
    partial = work / "results/gcg/base/shard0.partial.jsonl"
    assert len(_records(partial)) == 2
    # (d) the killed shard left no output that Snakemake takes as complete
    assert not (work / SHARD).exists()
    assert _planned_rules(work, SHARD) == {"attack_gcg_shard"}

    run_on_slurm(slurm_cluster, work, SHARD, configfiles=FAULT_CONFIGS)
    assert "4 samples, 2 already done, 2 to attack" in (work / "logs/gcg/base/shard0.log").read_text()
    assert not partial.exists()
    assert _records(work / SHARD) == _records(fault_reference / SHARD)
