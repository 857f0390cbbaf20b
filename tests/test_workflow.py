"""The Snakemake workflow as users run it: dry runs, lint, early config errors, and a whole smoke run."""

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from workflow_helpers import REPO, SNAKEMAKE, read_tables, run_snakemake

VARIANTS = ["base", "identity", "bert_like", "inv_first"]


def _job_counts(dry_run_output: str) -> dict[str, int]:
    """Jobs per rule from the 'Job stats' table of a run (its 'total' row left out)."""
    counts = {}
    for line in dry_run_output.split("Job stats:")[-1].splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_paper_config_dry_run_resolves_the_whole_dag(tmp_path):
    """`snakemake -n` on the paper config plans every stage for the four variants."""
    proc = run_snakemake(tmp_path, "-n", configfiles=())
    counts = _job_counts(proc.stdout)
    assert counts["prepare_data"] == 1
    assert counts["train"] == counts["evaluate"] == counts["gcg_summary"] == 4
    assert counts["gcg_attack"] == 4 * 8
    assert "make_corpus" not in counts  # the paper reads TinyStories, not the generated corpus
    for rule in ["table_forward_quality", "table_inverse_accuracy", "table_gcg_summary", "table_gcg_examples",
                 "figure_gcg_success_rate"]:
        assert counts[rule] == 1


def test_demo_profile_dry_run_uses_the_generated_corpus(tmp_path):
    """The demo profile plans the offline corpus and the same stages."""
    proc = run_snakemake(tmp_path, "-n", "--profile", "profiles/demo", configfiles=())
    counts = _job_counts(proc.stdout)
    assert counts["make_corpus"] == 1 and counts["train"] == 4 and counts["gcg_attack"] == 4 * 2


def test_ablation_variants_can_be_added(tmp_path):
    """Listing the gradient-only ablations in `variants` adds their jobs."""
    cfg = tmp_path / "ablations.yaml"
    cfg.write_text("variants: [base, identity, identity_grad, bert_like_grad, inv_first_grad]\n")
    proc = run_snakemake(tmp_path / "run", "-n", configfiles=(cfg,))
    assert _job_counts(proc.stdout)["train"] == 5


def test_bad_config_fails_before_any_job_naming_the_key(tmp_path):
    """A bad value stops Snakemake at parse time with the key in the message; nothing is created."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  lr: -1\n")
    work = tmp_path / "run"
    proc = run_snakemake(work, "-n", configfiles=(cfg,), check=False)
    assert proc.returncode != 0
    assert "train.lr" in proc.stdout + proc.stderr
    assert not (work / "results").exists()


def test_lint_and_format_are_clean():
    """`snakemake --lint` finds nothing and snakefmt would change nothing."""
    lint = subprocess.run([SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Lints for" not in lint.stdout + lint.stderr
    snakefmt = shutil.which("snakefmt") or str(Path(SNAKEMAKE).parent / "snakefmt")
    fmt = subprocess.run([snakefmt, "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The whole workflow at smoke scale, all four variants, on 2 cores."""
    work = tmp_path_factory.mktemp("smoke")
    run_snakemake(work, "--cores", "2")
    return work


@pytest.mark.slow
def test_smoke_run_produces_every_table_and_figure(smoke_run):
    """Both foundation tables and the GCG outputs exist, with one row or line per variant."""
    tables = smoke_run / "results" / "tables"
    forward = pd.read_csv(tables / "forward_quality.csv")
    inverse = pd.read_csv(tables / "inverse_accuracy.csv")
    assert list(forward["Model"]) == ["Baseline", "Identity", "Bert-like", "Inv-First"]
    assert list(inverse["Model"]) == list(forward["Model"])
    assert (forward["PPL"] > 1).all() and forward["CE"].notna().all()
    assert len(pd.read_csv(tables / "gcg_summary.csv")) == 4
    assert (tables / "gcg_examples.tex").read_text().strip()
    for ext in ["pdf", "png"]:
        assert (smoke_run / "results" / "figures" / f"gcg_success_rate.{ext}").stat().st_size > 0
    for variant in VARIANTS:
        model = smoke_run / "results" / "models" / variant
        assert (model / "model.safetensors").exists() and (model / "train_log.csv").exists()
        assert (smoke_run / "logs" / "train" / f"{variant}.log").exists()


@pytest.mark.slow
def test_finished_run_is_a_no_op_and_one_table_rebuilds_alone(smoke_run):
    """A rerun does nothing; a deleted table is rebuilt from metric files alone, identically."""
    before = read_tables(smoke_run)
    proc = run_snakemake(smoke_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    for path in (smoke_run / "results" / "tables").glob("forward_quality.*"):
        path.unlink()
    proc = run_snakemake(smoke_run, "--cores", "1", "results/tables/forward_quality.csv")
    assert set(_job_counts(proc.stdout + proc.stderr)) <= {"table_forward_quality"}
    assert read_tables(smoke_run) == before


@pytest.mark.slow
def test_report_setting_reruns_only_its_table(smoke_run, tmp_path):
    """Changing gcg.examples plans only the examples table, not the attacks."""
    cfg = tmp_path / "examples.yaml"
    cfg.write_text("gcg:\n  examples: 1\n")
    proc = run_snakemake(smoke_run, "-n", configfiles=(REPO / "tests" / "smoke.yaml", cfg))
    assert set(_job_counts(proc.stdout)) == {"table_gcg_examples", "all"}
