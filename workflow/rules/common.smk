# Validation (before any job runs), shared paths and the config slices rules pass to `ilm`.
import json
import os

from ilm.config import (
    check_data_stats,
    deep_merge,
    validate_config,
    write_runtime_config,
    write_stage_config,
)
from ilm.deploy import conda_env_file
from ilm.download import is_hub_id, local_folder
from ilm.io import write_named_by_content
from ilm.judges import JUDGE_ROOT, check_local_judges, judge_folder, needs_fetch
from ilm.names import (
    GENERIC_INVERTERS,
    MODEL_FILES,
    VARIANTS as VARIANT_NAMES,
    generic_method,
    parse_generic,
)
from ilm.pilot.config import PILOT_VARIANTS
from ilm.pilot.data import encoder_folder as pilot_encoder_dir
from ilm.studies import (
    check_studies,
    manifest,
    manifest_files,
    point_config,
    point_root,
    study,
)

config.update(validate_config(config))
check_studies(config)

VARIANTS = config["variants"]
RESULTS = "results"
DATA = f"{RESULTS}/data"
SPLITS = ["train", "validation", "test"]
GCG_SHARDS = list(range(config["gcg"]["shards"]))
INVERT_SHARDS = list(range(config["invert"]["shards"]))
# Inversion methods: every variant's beam search, the reverse-bigram baseline when the Baseline (its scorer)
# is trained, and each generic inverter of invert.generic.inverters on every variant (`identity+gcg`).
SEARCH_METHODS = [*VARIANTS, *(["bigram"] if "base" in VARIANTS else [])]
GENERIC_METHODS = [
    generic_method(v, inverter)
    for v in VARIANTS
    for inverter in config["invert"]["generic"]["inverters"]
]
INVERT_METHODS = [*SEARCH_METHODS, *GENERIC_METHODS]
SEARCH_METHOD_PATTERN = "|".join([*VARIANT_NAMES, "bigram"])
GENERIC_METHOD_PATTERN = (
    f"(?:{'|'.join(VARIANT_NAMES)})\\+(?:{'|'.join(GENERIC_INVERTERS)})"
)

# Under --sdm conda every job runs in this env, envs/ilm.yaml plus this checkout and the torch build.
CONDA_ENV = str(
    conda_env_file(
        os.path.join(workflow.basedir, "envs", "ilm.yaml"),
        workflow.basedir,
        ".snakemake/ilm/envs",
    )
)

# Checks that need the prepared data run now when results/data is current (else after prepare_data).
check_data_stats(config, f"{DATA}/stats.json")


# Every study and every point of it (validated above with the config).
STUDIES = {name: study(config, name) for name in config["studies"]["grids"]}
POINT_CONFIGS = {
    (name, point.name): point_config(config, name, point)
    for name, s in STUDIES.items()
    for point in s.points
}


wildcard_constraints:
    variant="|".join(VARIANT_NAMES),
    method=f"{SEARCH_METHOD_PATTERN}|{GENERIC_METHOD_PATTERN}",
    shard=r"\d+",
    study=r"[A-Za-z][A-Za-z0-9_]*",
    point=r"[A-Za-z0-9_.=+-]+",
    pilot_variant="|".join(PILOT_VARIANTS),


# Devices, batch sizes and logging cadence (ilm.config.RUNTIME_KEYS), for every `ilm` call that reads settings.
RUNTIME = str(write_runtime_config(config, ".snakemake/ilm/config"))


def runtime_file(wildcards, input):
    """The run-time settings file, as a param that Snakemake does not compare (pass it as `--runtime`).

    A param function that takes `input` is derived from the inputs, so Snakemake leaves it out of its
    "params have changed" check: a new device or batch size reaches the next job and reruns no finished one.
    """
    return RUNTIME


def config_file(stage, overrides=None):
    """The file holding the config slice `stage` (named after its rule) reads; its name is the slice's hash.

    Passed as a param, so a change to the slice reruns that step and what follows, and only then.
    ilm.config.STAGES says which keys each rule reads. `overrides` (nested sections) are merged
    over the config first: the gradient-free GCG control is the same attack with gcg.candidates: uniform.
    """
    cfg = deep_merge(config, overrides) if overrides else config
    return str(write_stage_config(cfg, stage, ".snakemake/ilm/config"))


def corpus_source():
    """What prepare_data reads: the generated corpus, the local copy of a Hub dataset, or the local source."""
    source = config["data"]["source"]
    if source == "generated":
        return f"{RESULTS}/corpus/stories.txt"
    if is_hub_id(source):
        return local_folder(source, config["data"]["revision"])
    return source


def corpus_input(wildcards):
    """The corpus prepare_data reads: a file or folder a rule makes, a local file, or every file under a local folder."""
    source = corpus_source()
    if (
        config["data"]["source"] == "generated"
        or is_hub_id(config["data"]["source"])
        or os.path.isfile(source)
    ):
        return [source]
    if os.path.isdir(source):
        return sorted(
            os.path.join(root, name)
            for root, dirs, names in os.walk(source)
            for name in names
            if not name.startswith(".")
        )
    return []


def model_files(root=RESULTS, variant="{variant}"):
    """The files of a trained model directory: whole only when every one exists."""
    return [f"{root}/models/{variant}/{name}" for name in MODEL_FILES]


def model_dir(wildcards, input):
    """The model directory of a rule's `model` input."""
    return os.path.dirname(input.model[0])


def metric_files(name):
    return expand(f"{RESULTS}/metrics/{{variant}}/{name}", variant=VARIANTS)


def study_targets(name):
    """A study's table and figure (workflow/rules/studies.smk); the seed study's claims table too.

    With the models its points train, so that a deleted one is retrained (see model_targets).
    """
    return [
        *study_model_files(name),
        *expand(
            f"{RESULTS}/studies/{name}/study.{{ext}}",
            ext=["csv", "md", "tex", "pdf", "png"],
        ),
        *(seed_claims_targets(name) if name == config["claims"]["seed_study"] else []),
    ]


def invert_model_files(wildcards):
    """The model an inversion method runs: the variant's own (a generic inverter's too), the Baseline for the bigram."""
    method = wildcards.method
    generic = parse_generic(method)
    if generic is not None:
        return model_files(variant=generic[0])
    return model_files(variant="base" if method == "bigram" else method)


def invert_metric_files(name, methods=None):
    """results/metrics/<method>/<name> of every inversion method (or of `methods`)."""
    return expand(
        f"{RESULTS}/metrics/{{method}}/{name}",
        method=INVERT_METHODS if methods is None else methods,
    )


def grounding_targets():
    """The grounding tables (workflow/rules/invert.smk) and the attacks' naturalness (judges.smk)."""
    return [
        *expand(
            f"{RESULTS}/tables/{{table}}.{{ext}}",
            table=["inversion", "gcg_naturalness"],
            ext=["csv", "md", "tex"],
        ),
        f"{RESULTS}/tables/inversion_examples.tex",
        *(
            [f"{RESULTS}/tables/inversion_vs_generic.{ext}" for ext in ("csv", "md")]
            if GENERIC_METHODS
            else []
        ),
    ]


# --- judges (workflow/rules/judges.smk) ---
# The local folder each judge loads from; fetch_judges makes those under resources/judges/.
JUDGE_DIRS = {
    role: judge_folder(config["judge"][f"{role}_model"])
    for role in ("similarity", "perplexity")
}
check_local_judges(config, trained_root=f"{RESULTS}/models", variants=VARIANT_NAMES)
FETCHED_JUDGES = {
    os.path.basename(JUDGE_DIRS[role]): config["judge"][f"{role}_model"]
    for role in JUDGE_DIRS
    if needs_fetch(config["judge"][f"{role}_model"])
}


def judge_inputs(wildcards):
    """Each judge's folder; a model this workflow trains (results/models/<v>, the demo) by its files."""
    inputs = {}
    for role, folder in JUDGE_DIRS.items():
        parent, name = os.path.split(os.path.normpath(folder))
        trained = parent == f"{RESULTS}/models" and name in VARIANT_NAMES
        inputs[f"{role}_judge"] = model_files(variant=name) if trained else folder
    return inputs


def model_targets():
    """Every trained model's files: a target, so a deleted model folder is retrained (and what read it rerun).

    Snakemake rebuilds a missing file only when a job that needs to run asks for it; without these, a
    removed results/models/<v>/ or results/pilot/models/<v>/ went unnoticed behind its finished metrics.
    """
    pilot = PILOT["variants"] if PILOT["enabled"] else []
    return [
        *(path for v in VARIANTS for path in model_files(variant=v)),
        *(
            f"{PILOT_DIR}/models/{v}/{name}"
            for v in pilot
            for name in ("classifier.safetensors", "train_log.csv", "run.json")
        ),
    ]


def all_targets():
    return [
        *model_targets(),
        *claims_targets(),
        *(pilot_targets() if PILOT["enabled"] else []),
        *grounding_targets(),
        *[path for name in config["studies"]["run"] for path in study_targets(name)],
        *expand(
            f"{RESULTS}/tables/{{table}}.{{ext}}",
            table=["setup", "forward_quality", "inverse_accuracy", "gcg_summary"],
            ext=["csv", "md", "tex"],
        ),
        f"{RESULTS}/tables/token_entropy.csv",
        f"{RESULTS}/tables/gcg_examples.tex",
        *expand(
            f"{RESULTS}/figures/{{figure}}.{{ext}}",
            figure=[
                "token_entropy",
                "training_curves",
                "inverse_by_position",
                "gcg_success_rate",
            ],
            ext=["pdf", "png"],
        ),
    ]


def output_stem(wildcards, output):
    """A table's or figure's path without its suffix: `ilm` adds .csv/.md/.tex or .pdf/.png."""
    return os.path.splitext(output[0])[0]


def input_dir(name):
    """The folder of input `name` (results/data), derived from the input so it follows any rename."""
    return lambda wildcards, input: os.path.dirname(input[name])


# --- studies (workflow/rules/studies.smk) ---
STUDY_RUN = f"{RESULTS}/studies/{{study}}/{{point}}"
STUDY_LOGS = "logs/studies/{study}/{point}"


def study_config_file(stage, overrides=None):
    """Like config_file, for the point named by the job's wildcards."""

    def path(wildcards):
        point = POINT_CONFIGS[(wildcards.study, wildcards.point)]
        point = deep_merge(point, overrides) if overrides else point
        return str(write_stage_config(point, stage, ".snakemake/ilm/config"))

    return path


def study_shards_of(kind):
    """The shard files under `kind` (gcg, gcg_uniform) of one variant at one point (it may sweep gcg.shards)."""

    def shards(wildcards):
        n = POINT_CONFIGS[(wildcards.study, wildcards.point)]["gcg"]["shards"]
        root = f"{RESULTS}/studies/{wildcards.study}/{wildcards.point}"
        return [f"{root}/{kind}/{wildcards.variant}/shard{k}.jsonl" for k in range(n)]

    return shards


study_shards = study_shards_of("gcg")


# --- claims (workflow/rules/claims.smk) ---
CLAIM_FILES = ["gcg_curves.npz", "gcg_uniform_curves.npz", "eval_windows.csv"]


def claims_targets():
    """The claims and robustness tables of the main run (the seed study's come with study_targets)."""
    return [
        *expand(
            f"{RESULTS}/tables/{{table}}.{{ext}}",
            table=["claims", "gcg_robustness"],
            ext=["csv", "md", "tex"],
        ),
        *expand(f"{RESULTS}/figures/g_curves.{{ext}}", ext=["pdf", "png"]),
    ]


def study_model_files(name):
    """The model files of every point of study `name` that does not reuse the main run."""
    s = STUDIES[name]
    paths = []
    for point in s.points:
        root = point_root(config, name, point, RESULTS)
        if root != RESULTS:
            paths += [path for v in s.variants for path in model_files(root, v)]
    return paths


def seed_variants(wildcards):
    """The variants a study trains that the main run has too (the seed study's replicates)."""
    return [v for v in STUDIES[wildcards.study].variants if v in VARIANTS]


def study_transfer_inputs(wildcards):
    """Each replicate's models and attacks, for the transfer matrix of one study point."""
    root = f"{RESULTS}/studies/{wildcards.study}/{wildcards.point}"
    return {
        "models": [p for v in seed_variants(wildcards) for p in model_files(root, v)],
        "attacks": [f"{root}/metrics/{v}/gcg.csv" for v in seed_variants(wildcards)],
    }


def seed_claims_targets(name):
    return expand(f"{RESULTS}/studies/{name}/claims.{{ext}}", ext=["csv", "md", "tex"])


def seed_claims_inputs(wildcards):
    """Every replicate's curves, evaluation windows and transfer matrix (the main run first), and the stories."""
    s = STUDIES[wildcards.study]
    roots = sorted(
        (point_root(config, wildcards.study, p, RESULTS) for p in s.points),
        key=lambda root: root != RESULTS,
    )
    return [
        *(
            f"{root}/metrics/{v}/{name}"
            for root in roots
            for v in seed_variants(wildcards)
            for name in CLAIM_FILES
        ),
        *(f"{root}/metrics/transfer.csv" for root in roots),
        *(
            f"{root}/models/{v}/train_log.csv"
            for root in roots
            for v in seed_variants(wildcards)
        ),
        f"{DATA}/test_stories.npy",
    ]


def study_manifest(wildcards):
    """The study's points and metric files, as a content-named JSON file (a change reruns the summary)."""
    text = (
        json.dumps(manifest(config, wildcards.study, RESULTS), indent=1, sort_keys=True)
        + "\n"
    )
    return str(
        write_named_by_content(".snakemake/ilm/studies", wildcards.study, ".json", text)
    )


def study_inputs(wildcards):
    """Every metric file of the study: a point equal to the main run reads results/."""
    return manifest_files(manifest(config, wildcards.study, RESULTS))


# --- the PAG pilot (workflow/rules/pilot.smk) ---
PILOT = config["pilot"]
PILOT_DIR = f"{RESULTS}/pilot"


def pilot_dataset_folder():
    """Where download_pilot_data puts the pilot's HF dataset."""
    return local_folder(PILOT["dataset"], PILOT["revision"])


def pilot_encoder_folder():
    """Where download_pilot_encoder puts the frozen encoder."""
    return pilot_encoder_dir(PILOT["encoder"], PILOT["encoder_revision"])


def pilot_embed_inputs(wildcards):
    """The encoder folder, and the dataset folder unless the pilot reads the generated texts."""
    inputs = {"encoder": pilot_encoder_folder()}
    if PILOT["dataset"] != "generated":
        inputs["source"] = pilot_dataset_folder()
    return inputs


def pilot_metric_files():
    return expand(f"{PILOT_DIR}/metrics/{{v}}.json", v=PILOT["variants"])


def pilot_targets():
    """The pilot's table and figure."""
    return [
        *expand(f"{RESULTS}/tables/pag_pilot.{{ext}}", ext=["csv", "md", "tex"]),
        *expand(f"{RESULTS}/figures/pag_fgsm_sweep.{{ext}}", ext=["pdf", "png"]),
    ]
