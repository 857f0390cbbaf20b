# Studies (config `studies:`): every point of a grid runs the main run's rules, with the point's
# config slice, under results/studies/{study}/{point}/. Only the paths and the config differ.
STUDY_RUN = f"{RESULTS}/studies/{{study}}/{{point}}"
STUDY_LOGS = "logs/studies/{study}/{point}"


def study_config_file(stage):
    """Like config_file, for the point named by the job's wildcards."""

    def path(wildcards):
        point = POINT_CONFIGS[(wildcards.study, wildcards.point)]
        return str(write_stage_config(point, stage, ".snakemake/ilm/config"))

    return path


def study_shards(wildcards):
    """The shard files of one variant at one point (the point may sweep gcg.shards)."""
    shards = POINT_CONFIGS[(wildcards.study, wildcards.point)]["gcg"]["shards"]
    root = f"{RESULTS}/studies/{wildcards.study}/{wildcards.point}"
    return [f"{root}/gcg/{wildcards.variant}/shard{k}.jsonl" for k in range(shards)]


def study_manifest(wildcards):
    """The study's points and metric files, as a content-named JSON file (a change reruns the summary)."""
    text = json.dumps(manifest(config, wildcards.study, RESULTS), indent=1, sort_keys=True) + "\n"
    return str(write_named_by_content(".snakemake/ilm/studies", wildcards.study, ".json", text))


def study_inputs(wildcards):
    """Every metric file of the study: a point equal to the main run reads results/."""
    return manifest_files(manifest(config, wildcards.study, RESULTS))


use rule select_gcg_samples as study_select_gcg_samples with:
    output:
        plan=f"{STUDY_RUN}/gcg/samples.json",
    log:
        f"{STUDY_LOGS}/gcg/select_samples.log",
    params:
        config=study_config_file("select_gcg_samples"),


use rule train_model as study_train_model with:
    output:
        model=model_files(f"{STUDY_RUN}"),
    log:
        f"{STUDY_LOGS}/train/{{variant}}.log",
    params:
        checkpoints=f"{STUDY_RUN}/checkpoints/{{variant}}",
        config=study_config_file("train_model"),


use rule evaluate_model as study_evaluate_model with:
    input:
        model=model_files(f"{STUDY_RUN}"),
        test=f"{DATA}/test.npy",
    output:
        forward=f"{STUDY_RUN}/metrics/{{variant}}/forward.json",
        inverse=f"{STUDY_RUN}/metrics/{{variant}}/inverse.json",
    log:
        f"{STUDY_LOGS}/evaluate/{{variant}}.log",
    params:
        config=study_config_file("evaluate_model"),


use rule attack_gcg_shard as study_attack_gcg_shard with:
    input:
        model=model_files(f"{STUDY_RUN}"),
        test=f"{DATA}/test.npy",
        plan=f"{STUDY_RUN}/gcg/samples.json",
    output:
        shard=f"{STUDY_RUN}/gcg/{{variant}}/shard{{shard}}.jsonl",
    log:
        f"{STUDY_LOGS}/gcg/{{variant}}/shard{{shard}}.log",
    params:
        config=study_config_file("attack_gcg_shard"),


use rule summarise_gcg as study_summarise_gcg with:
    input:
        shards=study_shards,
        plan=f"{STUDY_RUN}/gcg/samples.json",
        model=model_files(f"{STUDY_RUN}"),
    output:
        per_sample=f"{STUDY_RUN}/metrics/{{variant}}/gcg.csv",
        sweep=f"{STUDY_RUN}/metrics/{{variant}}/gcg_sweep.csv",
    log:
        f"{STUDY_LOGS}/gcg/{{variant}}/summary.log",
    params:
        config=study_config_file("summarise_gcg"),


rule summarise_study:
    # A study's table and figure: inverse accuracy with and without g, forward CE and GCG success per point.
    input:
        study_inputs,
    output:
        csv=report(
            f"{RESULTS}/studies/{{study}}/study.csv",
            caption="../report/study.rst",
            category="Studies",
            subcategory="{study}",
        ),
        md=f"{RESULTS}/studies/{{study}}/study.md",
        tex=f"{RESULTS}/studies/{{study}}/study.tex",
        pdf=f"{RESULTS}/studies/{{study}}/study.pdf",
        png=report(
            f"{RESULTS}/studies/{{study}}/study.png",
            caption="../report/study.rst",
            category="Studies",
            subcategory="{study}",
        ),
    log:
        "logs/studies/{study}/summary.log",
    conda:
        CONDA_ENV
    params:
        manifest=study_manifest,
        stem=output_stem,
        config=config_file("summarise_study"),
    shell:
        "ilm summarise-study --manifest {params.manifest} --table-stem {params.stem} --figure-stem {params.stem}"
        " --config {params.config} > {log} 2>&1"


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
