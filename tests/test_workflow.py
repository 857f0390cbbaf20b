"""The Snakemake workflow as users run it: dry runs, lint, early config errors, and a whole smoke run."""

import json
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
    proc = run_snakemake(tmp_path, "-n", configfiles=(), env={"HF_HUB_OFFLINE": "1"})  # planning needs no network
    counts = _job_counts(proc.stdout)
    assert counts["download_data"] == counts["prepare_data"] == counts["select_gcg_samples"] == 1
    assert counts["train_model"] == counts["evaluate_model"] == counts["summarise_gcg"] == 4
    assert counts["attack_gcg_shard"] == 4 * 8
    assert "make_corpus" not in counts  # the paper reads TinyStories, not the generated corpus
    assert counts["download_pilot_data"] == counts["embed_pilot"] == 1  # the pilot: IMDB, DistilBERT
    assert counts["train_pilot"] == counts["attack_pilot"] == 4
    for rule in ["tabulate_setup", "tabulate_token_entropy", "plot_token_entropy", "plot_training_curves",
                 "tabulate_forward_quality", "tabulate_inverse_accuracy", "plot_inverse_by_position",
                 "tabulate_gcg_summary", "tabulate_gcg_examples", "plot_gcg_success_rate", "tabulate_inversion",
                 "tabulate_inversion_examples", "tabulate_gcg_naturalness", "tabulate_inversion_vs_generic"]:
        assert counts[rule] == 1
    # the judges: both Hub ones fetched on the login node, then one job per kind for all methods; no network
    assert counts["fetch_judges"] == 2 and counts["judge_inversion"] == counts["judge_attacks"] == 1  # judges load once
    assert "resources/judges/meta-llama__Llama-3.2-1B" in proc.stdout


def test_demo_profile_dry_run_uses_the_generated_corpus(tmp_path):
    """The demo profile plans the offline corpus and the same stages."""
    proc = run_snakemake(tmp_path, "-n", "--profile", "profiles/demo", configfiles=())
    counts = _job_counts(proc.stdout)
    assert counts["make_corpus"] == 1 and counts["train_model"] == 4 and counts["attack_gcg_shard"] == 4  # 1 shard
    assert counts["attack_uniform_shard"] == 4 and counts["transfer_gcg"] == 1 and counts["tabulate_claims"] == 1
    assert "download_data" not in counts
    # offline judges: the packaged MiniLM unpacked, the Baseline model as perplexity judge (nothing to fetch)
    assert counts["fetch_judges"] == 1 and "resources/judges/packaged__all-MiniLM-L6-v2" in proc.stdout
    assert counts["judge_inversion"] == counts["judge_attacks"] == 1
    # both generic inverters on every variant, beside the 4 beam searches and the bigram, and their comparison
    assert counts["invert_shard"] == 5 and counts["invert_generic_shard"] == 8 and counts["summarise_inversion"] == 13
    assert counts["tabulate_inversion_vs_generic"] == 1
    assert "results/inversion/identity+gcg/shard0.jsonl" in proc.stdout
    assert "results/inversion/inv_first+relaxed/shard0.jsonl" in proc.stdout


def test_generic_inverters_can_be_switched_off(tmp_path):
    """`invert.generic.inverters: []` plans no generic shard and no comparison table; [relaxed] one per variant."""
    cfg = tmp_path / "generic.yaml"
    cfg.write_text("invert:\n  generic:\n    inverters: []\n")
    counts = _job_counts(run_snakemake(tmp_path / "off", "-n", configfiles=(cfg,),
                                       env={"HF_HUB_OFFLINE": "1"}).stdout)
    assert "invert_generic_shard" not in counts and "tabulate_inversion_vs_generic" not in counts
    assert counts["invert_shard"] == 5 * 4  # 4 variants and the bigram, 4 shards each
    cfg.write_text("invert:\n  generic:\n    inverters: [relaxed]\n")
    counts = _job_counts(run_snakemake(tmp_path / "one", "-n", configfiles=(cfg,),
                                       env={"HF_HUB_OFFLINE": "1"}).stdout)
    assert counts["invert_generic_shard"] == 4 * 4 and counts["tabulate_inversion_vs_generic"] == 1


def test_long_profile_is_the_demo_trained_ten_times_longer(tmp_path):
    """profiles/long plans the demo's stages on the demo's corpus and model, with 10 epochs of training, every test
    window evaluated and 16 inversions (the slices its jobs would read, as Snakemake resolved the two config files)."""
    proc = run_snakemake(tmp_path, "-n", "-p", "--profile", "profiles/long", configfiles=())
    demo = _job_counts(run_snakemake(tmp_path / "demo", "-n", "--profile", "profiles/demo", configfiles=()).stdout)
    assert _job_counts(proc.stdout) == demo

    def slice_of(rule: str) -> dict:
        path = re.search(rf"\.snakemake/ilm/config/{rule}-[0-9a-f]+\.json", proc.stdout).group(0)
        return json.loads((tmp_path / path).read_text())

    train = slice_of("train_model")
    assert (train["train"]["epochs"], train["train"]["warmup_steps"], train["train"]["val_every"]) == (10, 20, 20)
    assert train["train"]["batch_size"] == 32 and train["model"]["hidden_size"] == 128  # the demo's
    assert slice_of("make_corpus")["corpus"]["stories"] == 1500
    assert slice_of("evaluate_model")["evaluate"]["max_sequences"] is None
    assert slice_of("invert_shard")["invert"]["count"] == 16


def test_fetch_judges_failure_reaches_the_terminal_as_one_line(tmp_path):
    """A Hub judge that cannot be fetched (here: Hub offline) stops fetch_judges with the HF_TOKEN line on stderr."""
    target = "resources/judges/meta-llama__Llama-3.2-1B"
    proc = run_snakemake(tmp_path, "--cores", "1", target, configfiles=(), env={"HF_HUB_OFFLINE": "1"}, check=False)
    assert proc.returncode != 0 and not (tmp_path / target).exists()
    lines = [line for line in proc.stderr.splitlines() if "HF_TOKEN" in line]
    assert lines and all("https://huggingface.co/meta-llama/Llama-3.2-1B" in line for line in lines)
    assert lines[0].startswith("ilm fetch-judge: error: meta-llama/Llama-3.2-1B could not be downloaded")


def test_ablation_variants_can_be_added(tmp_path):
    """Listing the gradient-only ablations in `variants` adds their jobs."""
    cfg = tmp_path / "ablations.yaml"
    cfg.write_text("variants: [base, identity, identity_grad, bert_like_grad, inv_first_grad]\n")
    proc = run_snakemake(tmp_path / "run", "-n", configfiles=(cfg,))
    assert _job_counts(proc.stdout)["train_model"] == 5


def test_bad_config_fails_before_any_job_naming_the_key(tmp_path):
    """A bad value stops Snakemake at parse time with the key in the message; nothing is created."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  lr: -1\n")
    work = tmp_path / "run"
    proc = run_snakemake(work, "-n", configfiles=(cfg,), check=False)
    assert proc.returncode != 0
    assert "train.lr" in proc.stdout + proc.stderr
    assert not (work / "results").exists()


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("data={window: 512}", "data.window (512) is longer than model.max_position_embeddings (256)"),
        ("train={lr: .inf}", "train.lr: inf is not a finite number"),
        ("evaluate={top_k: [1, 100000]}", "evaluate.top_k holds 100000"),
    ],
)
def test_nested_config_overrides_are_validated_before_any_job(tmp_path, override, fragment):
    """`--config` overrides reach validation typed: bad ones fail naming the key, nothing is created."""
    proc = run_snakemake(tmp_path, "-n", "--config", override, configfiles=(), check=False)
    assert proc.returncode != 0 and fragment in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_valid_nested_config_override_is_accepted(tmp_path):
    """`--config 'train={lr: 0.001}'` (strings from Snakemake's parser) plans the run with the typed values;
    each shell line passes its config slice as one short file path."""
    proc = run_snakemake(tmp_path, "-n", "-p", "--config", "train={lr: 0.001, max_steps: 10}", configfiles=())
    assert _job_counts(proc.stdout)["train_model"] == 4
    commands = [line for line in proc.stdout.splitlines() if line.startswith("Shell command:")]
    assert commands and not [line for line in commands if "{" in line]  # no JSON on any command line
    assert max(len(line) for line in commands if " train --data-dir " in line) < 360  # was about 1.4 kB
    (train_config,) = set(re.findall(r"train --.* --config (\S+train_model-\w+\.json)", proc.stdout))
    sliced = json.loads((tmp_path / train_config).read_text())
    assert sliced["train"]["lr"] == 0.001 and sliced["train"]["max_steps"] == 10
    assert set(sliced) == {"data", "model", "objective", "train"}


@pytest.mark.parametrize("command", ["--rulegraph", "--dag", "--summary", "--unlock"])
def test_inspection_commands_need_no_cores(tmp_path, command):
    """Snakemake's inspection commands run bare, without --cores (no rule sizes its threads from the core count)."""
    proc = run_snakemake(tmp_path, command, configfiles=())
    assert "requires a total number of cores" not in proc.stdout + proc.stderr
    if command == "--rulegraph":
        assert "digraph snakemake_dag" in proc.stdout and "train_model" in proc.stdout


def test_lint_and_format_are_clean():
    """`snakemake --lint` finds nothing and snakefmt would change nothing."""
    lint = subprocess.run([SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Lints for" not in lint.stdout + lint.stderr
    snakefmt = shutil.which("snakefmt") or str(Path(SNAKEMAKE).parent / "snakefmt")
    fmt = subprocess.run([snakefmt, "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


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
    inversion = pd.read_csv(tables / "inversion.csv")  # every variant, the reverse bigram, then the generic inverters
    generic = [f"{inverter} inverter ({model})" for model in forward["Model"] for inverter in ("GCG", "Relaxed")]
    assert list(inversion["Method"]) == [*forward["Model"], "Reverse bigram (Baseline-scored)", *generic]
    assert (inversion["Samples"] == 3).all() and inversion["Token F1 mean"].between(0, 1).all()
    assert inversion["Similarity prefix mean"].between(-1, 1).all() and (inversion["Judge PPL rec. mean"] > 1).all()
    judged = pd.read_csv(smoke_run / "results/metrics/bigram/inversion_judged.csv", keep_default_na=False)
    assert len(judged) == 3 and judged["prefix_text"].str.len().gt(0).all()
    naturalness = pd.read_csv(tables / "gcg_naturalness.csv")
    assert naturalness["Variant"].tolist() == [m for m in forward["Model"] for _ in range(3)]
    total = naturalness.set_index(["Variant", "Subset"])["n"]
    for model in forward["Model"]:
        assert total[model, "all"] == total[model, "success"] + total[model, "failure"] > 0
    examples = (tables / "inversion_examples.tex").read_text()
    assert examples.count("\n$\\hat{x}$ & ") == 2 * 5 and "Reverse bigram" in examples  # invert.examples 2, 5 methods
    setup = pd.read_csv(tables / "setup.csv", dtype=str)
    assert int(dict(zip(setup["Setting"], setup["Value"]))["Parameters"]) > 0
    entropy = pd.read_csv(tables / "token_entropy.csv")
    assert len(entropy) == 64 and (entropy["entropy_bits"] > 0).all()  # smoke window 64
    figures = ["token_entropy", "training_curves", "inverse_by_position", "gcg_success_rate"]
    for name in figures:
        for ext in ["pdf", "png"]:
            assert (smoke_run / "results" / "figures" / f"{name}.{ext}").stat().st_size > 0, name
    pilot = pd.read_csv(tables / "pag_pilot.csv")  # the PAG pilot: a row per variant, accuracies in [0, 100]
    assert pilot["Model"].tolist()[0] == "Baseline" and len(pilot) == 4 and (pilot["n"] == 64).all()
    assert pilot.filter(like="(%)").apply(lambda c: c.between(0, 100)).all().all()
    assert (smoke_run / "results" / "figures" / "pag_fgsm_sweep.png").stat().st_size > 0
    for variant in VARIANTS:
        model = smoke_run / "results" / "models" / variant
        assert (model / "model.safetensors").exists() and (model / "train_log.csv").exists()
        assert (smoke_run / "logs" / "train" / f"{variant}.log").exists()
        assert not [p.name for p in model.iterdir() if p.name.startswith(".")]  # no workflow markers


@pytest.mark.slow
def test_smoke_model_runs_in_a_text_generation_pipeline(smoke_run):
    """pipeline("text-generation", model=<model folder>) works as it is; its text is prompt + decoded continuation."""
    from transformers import AutoTokenizer, pipeline

    model_dir = smoke_run / "results" / "models" / "base"
    prompt = "Once upon a time"
    text = pipeline("text-generation", model=str(model_dir))(prompt, max_new_tokens=8, do_sample=False)
    text = text[0]["generated_text"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert tok.decode(tok(text)["input_ids"]).strip() == text  # the text round-trips through the tokenizer


@pytest.mark.slow
def test_finished_run_is_a_no_op_and_one_table_rebuilds_alone(smoke_run):
    """A rerun does nothing; a deleted table is rebuilt from metric files alone, identically."""
    before = read_tables(smoke_run)
    proc = run_snakemake(smoke_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    for path in (smoke_run / "results" / "tables").glob("forward_quality.*"):
        path.unlink()
    proc = run_snakemake(smoke_run, "--cores", "1", "results/tables/forward_quality.csv")
    assert set(_job_counts(proc.stdout + proc.stderr)) <= {"tabulate_forward_quality"}
    assert read_tables(smoke_run) == before


@pytest.mark.slow
def test_report_setting_reruns_only_its_table(smoke_run, tmp_path):
    """Changing gcg.examples plans only the examples table, not the attacks."""
    cfg = tmp_path / "examples.yaml"
    cfg.write_text("gcg:\n  examples: 1\n")
    proc = run_snakemake(smoke_run, "-n", configfiles=(REPO / "tests" / "smoke.yaml", cfg))
    assert set(_job_counts(proc.stdout)) - {"all"} == {"tabulate_gcg_examples"}


def _copy_run(src: Path, dst: Path) -> Path:
    """A copy of a finished run, mtimes and Snakemake's metadata kept, for a test that changes it."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.mark.slow
def test_incomplete_model_directory_is_rebuilt(smoke_run, tmp_path):
    """A model folder that lost model.safetensors is not taken as complete: a step that needs it retrains it first."""
    work = _copy_run(smoke_run, tmp_path / "run")
    (work / "results" / "models" / "base" / "model.safetensors").unlink()
    (work / "results" / "metrics" / "base" / "forward.json").unlink()  # the evaluation must be redone
    counts = _job_counts(run_snakemake(work, "-n", "results/metrics/base/forward.json").stdout)
    assert counts == {"train_model": 1, "evaluate_model": 1}
    counts = _job_counts(run_snakemake(work, "-n", "results/models/base/model.safetensors").stdout)
    assert counts == {"train_model": 1}
    assert not list((work / "results" / "models" / "base").glob(".snakemake_timestamp"))


@pytest.mark.slow
def test_changed_training_setting_retrains_from_scratch(smoke_run, tmp_path):
    """Changing train.lr after a finished run retrains that model (it failed on the old checkpoint before)."""
    work = _copy_run(smoke_run, tmp_path / "run")
    cfg = tmp_path / "lr.yaml"
    cfg.write_text("train:\n  lr: 0.002\n")
    run_snakemake(work, "--cores", "2", "results/models/base/model.safetensors",
                  configfiles=(REPO / "tests" / "smoke.yaml", cfg))
    log = (work / "logs" / "train" / "base.log").read_text()
    assert "it differs in: train.lr" in log and "starting afresh" in log and "resuming" not in log
    (stale,) = (work / "results" / "checkpoints" / "base" / "stale").iterdir()
    assert (stale / "last.pt").exists()


@pytest.mark.slow
def test_count_beyond_the_test_split_fails_before_training(smoke_run, tmp_path):
    """gcg.count larger than the test split fails at once when the data exists, else right after prepare_data."""
    cfg = tmp_path / "count.yaml"
    cfg.write_text("gcg:\n  count: 100000\n")
    configs = (REPO / "tests" / "smoke.yaml", cfg)
    proc = run_snakemake(smoke_run, "-n", configfiles=configs, check=False)
    assert proc.returncode != 0 and "gcg.count (100000) is larger than the test split" in proc.stdout + proc.stderr

    fresh = tmp_path / "fresh"
    proc = run_snakemake(fresh, "--cores", "2", configfiles=configs, check=False)
    assert proc.returncode != 0
    select_log = (fresh / "logs" / "gcg" / "select_samples.log").read_text()
    assert "gcg.count (100000) is larger than the test split" in select_log
    assert (fresh / "results" / "data" / "stats.json").exists()
    assert not (fresh / "logs" / "train").exists(), "no training job may start"


@pytest.mark.slow
def test_local_corpus_is_an_input(tmp_path):
    """Editing the local text file data.source names reruns prepare_data (it was 'Nothing to be done')."""
    from ilm.corpus import write_corpus

    corpus = tmp_path / "stories.txt"
    write_corpus(corpus, n_stories=120, seed=5)
    cfg = tmp_path / "local.yaml"
    cfg.write_text(f"data:\n  source: {corpus}\n")
    configs = (REPO / "tests" / "smoke.yaml", cfg)
    work = tmp_path / "run"
    run_snakemake(work, "--cores", "2", "results/data/stats.json", configfiles=configs)
    assert "Nothing to be done" in run_snakemake(work, "-n", "results/data/stats.json", configfiles=configs).stdout
    with open(corpus, "a") as f:
        f.write("\n<|endoftext|>\nOne more story about a cat who found a hat.\n")
    counts = _job_counts(run_snakemake(work, "-n", "results/data/stats.json", configfiles=configs).stdout)
    assert counts == {"prepare_data": 1}


@pytest.mark.slow
def test_report_holds_every_table_and_figure(smoke_run, tmp_path):
    """`snakemake --report` on a finished run embeds every table and figure, with captions, grouped by stage."""
    report = tmp_path / "report.html"
    run_snakemake(smoke_run, "--report", str(report))
    html = report.read_text()
    results = smoke_run / "results"
    # The run made exactly all_targets() (and the tables of all_targets only), so these are its tables and figures.
    expected = sorted(p.name for p in [*(results / "tables").glob("*.csv"), *(results / "figures").glob("*.png")])
    assert {"setup.csv", "token_entropy.csv", "training_curves.png", "gcg_success_rate.png", "pag_pilot.csv",
            "pag_fgsm_sweep.png"} <= set(expected)
    assert {"inversion.csv", "gcg_naturalness.csv"} <= set(expected)
    for name in [*expected, "gcg_examples.tex", "inversion_examples.tex"]:
        assert name in html, name
    assert "Wilson interval" in html and "Shannon entropy" in html  # captions rendered
    assert "Baseline stands in as perplexity judge" in html and "GCG naturalness" in html
    for category in ("Data", "Training", "Forward quality", "Inverse accuracy", "Robustness", "Pilot", "Grounding",
                     "1. Claims"):
        assert category in html, category
    # Every table is readable in the report: its HTML version, holding a <table>, is embedded.
    tables = sorted((results / "tables").glob("*.html"))
    assert {"claims.html", "gcg_robustness.html", "gcg_summary.html"} <= {p.name for p in tables}
    for path in tables:
        assert "<table" in path.read_text(), path.name
        assert path.name in html, path.name


def test_paper_studies_dry_run_reuses_the_main_run_point(tmp_path):
    """`snakemake -n studies` plans every declared study; a point equal to the main run trains nothing new."""
    counts = _job_counts(run_snakemake(tmp_path, "-n", "studies", configfiles=()).stdout)
    # new points x variants: grad_scale 2 x 3, double_backprop 1 x 3, placeholder 3 x 1, last_position 3 x 2,
    # seeds 2 x 4 (every variant: the claims compare each with the Baseline)
    assert counts["study_train_model"] == counts["study_evaluate_model"] == 6 + 3 + 3 + 6 + 8
    assert counts["train_model"] == 4  # the reused points need the main run's models (the seed study: the Baseline too)
    assert counts["summarise_study"] == 5
    assert counts["study_attack_gcg_shard"] == 26 * 8
    # the seed study's replicates also get the gradient-free control and the transfer matrix, and one claims table
    assert counts["study_attack_uniform_shard"] == 8 * 8 and counts["study_transfer_gcg"] == 2
    assert counts["tabulate_seed_claims"] == 1


@pytest.mark.slow
def test_smoke_study_table_figure_and_report(smoke_run, tmp_path):
    """The smoke preset's grad-scale study on the finished smoke run: the 65536 point reads results/, the other
    trains under results/studies/; the table has a row per point, the report a Studies section."""
    run_snakemake(smoke_run, "--cores", "2", "study_grad_scale")
    study = pd.read_csv(smoke_run / "results/studies/grad_scale/study.csv")
    assert study["grad_scale_tokens"].tolist() == [65536, 1]
    assert study["Results"].tolist() == ["results", "results/studies/grad_scale/grad_scale_tokens=1"]
    assert (study["GCG n"] == 4).all() and study["Model"].tolist() == ["Identity"] * 2
    main = json.loads((smoke_run / "results/metrics/identity/inverse.json").read_text())
    assert study["Inverse top-1 (%)"][0] == pytest.approx(100 * main["identity"]["top1"])
    point = smoke_run / "results/studies/grad_scale/grad_scale_tokens=1"
    run_config = json.loads((point / "models/identity/run_config.json").read_text())
    assert run_config["config"]["objective"]["grad_scale_tokens"] == 1  # the point's value, the rest the main run's
    assert run_config["config"]["train"] == json.loads(
        (smoke_run / "results/models/identity/run_config.json").read_text())["config"]["train"]
    assert (smoke_run / "logs/studies/grad_scale/grad_scale_tokens=1/train/identity.log").exists()
    assert (smoke_run / "results/studies/grad_scale/study.png").stat().st_size > 0
    report = tmp_path / "report.html"
    run_snakemake(smoke_run, "--report", str(report), "all", "study_grad_scale")
    html = report.read_text()
    assert "study.csv" in html and "study.png" in html and "Studies" in html


# --- planning on a fabricated finished run (issue 22: rerun only what changed, rebuild what is lost) ---------------


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory) -> Path:
    """A finished smoke run as Snakemake sees it (empty outputs, real metadata), made in seconds by --touch."""
    from workflow_helpers import fabricate_run

    return fabricate_run(tmp_path_factory.mktemp("fabricated"))


def _smoke_with(tmp_path: Path, name: str, text: str) -> tuple:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(text)
    return (REPO / "tests" / "smoke.yaml", cfg)


def test_runtime_settings_plan_no_job(fabricated, tmp_path):
    """Changing the logging and checkpoint cadence, the devices and the search's batch sizes plans nothing;
    train.lr still plans the four trainings."""
    runtime = _smoke_with(tmp_path, "runtime", (
        "train: {log_every: 2, checkpoint_every: 3, device: auto}\n"
        "evaluate: {batch_size: 8, device: auto}\n"
        "gcg: {batch_samples: 1, max_candidates_per_forward: 32, compile: false, device: auto}\n"
        "invert: {batch_samples: 1, device: auto}\n"
        "judge: {device: auto}\n"
        "pilot: {device: auto}\n"
        "objective: {grad_scale_tokens: 65536.0}\n"
    ))
    proc = run_snakemake(fabricated, "-n", configfiles=runtime)
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    lr = _smoke_with(tmp_path, "lr", "train: {lr: 0.002}\n")
    assert _job_counts(run_snakemake(fabricated, "-n", configfiles=lr).stdout)["train_model"] == 4


def test_deleted_model_folders_are_retrained(fabricated, tmp_path):
    """`rm -rf results/models/inv_first results/pilot/models/baseline; snakemake -n` plans both trainings and
    what read them (it said "Nothing to be done")."""
    work = tmp_path / "run"
    shutil.copytree(fabricated, work, symlinks=True)
    shutil.rmtree(work / "results" / "models" / "inv_first")
    shutil.rmtree(work / "results" / "pilot" / "models" / "baseline")
    counts = _job_counts(run_snakemake(work, "-n").stdout)
    assert counts["train_model"] == counts["evaluate_model"] == counts["summarise_gcg"] == 1
    assert counts["train_pilot"] == counts["attack_pilot"] == counts["tabulate_pag_pilot"] == 1


def test_killed_pilot_retrain_reruns_its_attack_and_table(fabricated, tmp_path):
    """pilot.epochs 3 -> 4, three variants retrained and attacked, the Baseline's retrain killed (Snakemake deletes
    its folder): the rerun retrains and attacks the Baseline before the table (it planned the table alone)."""
    work = tmp_path / "run"
    shutil.copytree(fabricated, work, symlinks=True)
    epochs = _smoke_with(tmp_path, "epochs", "pilot: {epochs: 4}\n")
    done = [f"results/pilot/metrics/{v}.json" for v in ("pag_identity", "pag_score_similar_samples",
                                                         "pag_score_similar_features")]
    run_snakemake(work, "--touch", "--cores", "1", *done, configfiles=epochs)
    killed = [f"results/pilot/models/baseline/{name}" for name in ("classifier.safetensors", "train_log.csv", "run.json")]
    shutil.rmtree(work / "results" / "pilot" / "models" / "baseline")  # as Snakemake cleans up a killed job:
    run_snakemake(work, "--cleanup-metadata", *killed, configfiles=epochs)  # its outputs and their metadata
    counts = _job_counts(run_snakemake(work, "-n", configfiles=epochs).stdout)
    assert counts["train_pilot"] == counts["attack_pilot"] == 1
    assert counts["tabulate_pag_pilot"] == counts["plot_pag_fgsm_sweep"] == 1


def test_missing_local_judge_folder_fails_at_start_naming_the_key(tmp_path):
    """A judge given as a local folder that does not exist stops Snakemake at start-up naming judge.<role>_model."""
    cfg = _smoke_with(tmp_path, "judge", f"judge: {{similarity_model: {tmp_path / 'no_such_judge'}}}\n")
    proc = run_snakemake(tmp_path / "run", "-n", configfiles=cfg, check=False)
    assert proc.returncode != 0
    assert "judge.similarity_model names the local folder" in proc.stdout + proc.stderr
