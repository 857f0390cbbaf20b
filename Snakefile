# Inverse Language Modeling (arXiv 2510.01929): from raw text to the paper's tables and figures.
# Presets: config.yaml (paper), profiles/demo (CPU, offline), tests/smoke.yaml (CI).
import os

from snakemake.utils import min_version

min_version("8.20")


# Snakemake's own message for a broken YAML names neither file nor line; this one does (for config.yaml:
# files given with --configfile are read by Snakemake before this line runs).
from ilm.config import read_yaml

read_yaml(os.path.join(workflow.basedir, "config.yaml"))


configfile: os.path.join(workflow.basedir, "config.yaml")


# The image of every rule under --sdm apptainer (build it from envs/Apptainer.def; docs/environments.md).
container: os.path.join(workflow.basedir, "envs", "ilm.sif")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/studies.smk"
include: "workflow/rules/pilot.smk"
include: "workflow/rules/invert.smk"
include: "workflow/rules/judges.smk"
include: "workflow/rules/claims.smk"


# Downloads (they need network) and seconds of CPU on small files: run them where Snakemake runs,
# usually the login node, never as cluster jobs.
localrules:
    all,
    download_data,
    select_gcg_samples,
    summarise_gcg,
    summarise_uniform,
    tabulate_setup,
    tabulate_token_entropy,
    plot_token_entropy,
    plot_training_curves,
    tabulate_forward_quality,
    tabulate_inverse_accuracy,
    plot_inverse_by_position,
    tabulate_gcg_summary,
    tabulate_gcg_examples,
    plot_gcg_success_rate,
    study_select_gcg_samples,
    study_summarise_gcg,
    summarise_study,
    studies,
    download_pilot_data,
    download_pilot_encoder,
    tabulate_pag_pilot,
    plot_pag_fgsm_sweep,
    select_invert_samples,
    tabulate_inversion,
    tabulate_inversion_examples,
    tabulate_inversion_vs_generic,
    fetch_judges,
    tabulate_gcg_naturalness,
    tabulate_claims,
    plot_g_curves,
    tabulate_gcg_robustness,
    tabulate_seed_claims,
    study_summarise_uniform,


rule all:
    default_target: True
    input:
        all_targets(),


# `snakemake study_<name>` builds one study, `snakemake studies` every declared one.
for _name in STUDIES:

    rule:
        name:
            f"study_{_name}"
        input:
            study_targets(_name),


rule studies:
    input:
        [path for name in STUDIES for path in study_targets(name)],
