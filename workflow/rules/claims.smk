# The claims table (docs/method.md §14): each claim of the paper, its test and a verdict from rules in code.
# The main run's table has one training seed; the seed study's (claims.seed_study) compares every seed.


rule tabulate_claims:
    # Verdicts on fluency, recovery from g, GCG robustness (gradient-free, fluency-free, transfer) and grounding.
    input:
        curves=metric_files("gcg_curves.npz"),
        uniform=metric_files("gcg_uniform_curves.npz"),
        windows=metric_files("eval_windows.csv"),
        transfer=f"{RESULTS}/metrics/transfer.csv",
        inversion=invert_metric_files("inversion.csv", SEARCH_METHODS),
        logs=expand(f"{RESULTS}/models/{{variant}}/train_log.csv", variant=VARIANTS),
        stories=f"{DATA}/test_stories.npy",
    output:
        csv=report(
            f"{RESULTS}/tables/claims.csv",
            caption="../report/claims.rst",
            category="1. Claims",
        ),
        md=f"{RESULTS}/tables/claims.md",
        tex=f"{RESULTS}/tables/claims.tex",
        html=report(
            f"{RESULTS}/tables/claims.html",
            caption="../report/claims.rst",
            category="1. Claims",
        ),
    log:
        "logs/tables/claims.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_claims"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table claims --inputs {input} --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"


rule tabulate_gcg_robustness:
    # Per budget: success of each variant and the Baseline, discordant pairs and exact McNemar p, every attack.
    input:
        curves=metric_files("gcg_curves.npz"),
        uniform=metric_files("gcg_uniform_curves.npz"),
        transfer=f"{RESULTS}/metrics/transfer.csv",
        stories=f"{DATA}/test_stories.npy",
    output:
        csv=report(
            f"{RESULTS}/tables/gcg_robustness.csv",
            caption="../report/gcg_robustness.rst",
            category="Robustness",
        ),
        md=f"{RESULTS}/tables/gcg_robustness.md",
        tex=f"{RESULTS}/tables/gcg_robustness.tex",
        html=report(
            f"{RESULTS}/tables/gcg_robustness.html",
            caption="../report/gcg_robustness.rst",
            category="Robustness",
        ),
        models=report(
            f"{RESULTS}/tables/gcg_robustness_models.csv",
            caption="../report/gcg_robustness.rst",
            category="Robustness",
        ),
        models_md=f"{RESULTS}/tables/gcg_robustness_models.md",
        models_tex=f"{RESULTS}/tables/gcg_robustness_models.tex",
        models_html=report(
            f"{RESULTS}/tables/gcg_robustness_models.html",
            caption="../report/gcg_robustness.rst",
            category="Robustness",
        ),
    log:
        "logs/tables/gcg_robustness.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_gcg_robustness"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table gcg_robustness --inputs {input} --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"


rule plot_g_curves:
    # Validation inverse CE with and without g and mean g^2 / eps against the step: is g still growing?
    input:
        logs=expand(f"{RESULTS}/models/{{variant}}/train_log.csv", variant=VARIANTS),
    output:
        pdf=f"{RESULTS}/figures/g_curves.pdf",
        png=report(
            f"{RESULTS}/figures/g_curves.png",
            caption="../report/g_curves.rst",
            category="Training",
        ),
    log:
        "logs/figures/g_curves.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
    shell:
        "ilm --log {log} figure g_curves --inputs {input.logs} --out-stem {params.stem}"


# --- the seed study: the same attacks per replicate, and one claims table over every seed ---
use rule attack_uniform_shard as study_attack_uniform_shard with:
    input:
        model=model_files(f"{STUDY_RUN}"),
        test=f"{DATA}/test.npy",
        plan=f"{STUDY_RUN}/gcg/samples.json",
    output:
        shard=f"{STUDY_RUN}/gcg_uniform/{{variant}}/shard{{shard}}.jsonl",
    log:
        f"{STUDY_LOGS}/gcg_uniform/{{variant}}/shard{{shard}}.log",
    params:
        model_dir=model_dir,
        data_dir=input_dir("test"),
        config=study_config_file("attack_gcg_shard", {"gcg": {"candidates": "uniform"}}),


use rule summarise_uniform as study_summarise_uniform with:
    input:
        shards=study_shards_of("gcg_uniform"),
        plan=f"{STUDY_RUN}/gcg/samples.json",
        model=model_files(f"{STUDY_RUN}"),
    output:
        per_sample=f"{STUDY_RUN}/metrics/{{variant}}/gcg_uniform.csv",
        sweep=f"{STUDY_RUN}/metrics/{{variant}}/gcg_uniform_sweep.csv",
        curves=f"{STUDY_RUN}/metrics/{{variant}}/gcg_uniform_curves.npz",
    log:
        f"{STUDY_LOGS}/gcg_uniform/{{variant}}/summary.log",
    params:
        model_dir=model_dir,
        config=study_config_file("summarise_gcg", {"gcg": {"candidates": "uniform"}}),


use rule transfer_gcg as study_transfer_gcg with:
    input:
        unpack(study_transfer_inputs),
    output:
        table=f"{STUDY_RUN}/metrics/transfer.csv",
    log:
        f"{STUDY_LOGS}/gcg/transfer.log",
    params:
        variants=lambda w: seed_variants(w),
        model_dirs=lambda w: [
            f"{RESULTS}/studies/{w.study}/{w.point}/models/{v}"
            for v in seed_variants(w)
        ],
        config=study_config_file("transfer_gcg"),


rule tabulate_seed_claims:
    # The claims table over every seed of the seed study: a verdict stands only if every seed gives it.
    input:
        seed_claims_inputs,
    output:
        csv=report(
            f"{RESULTS}/studies/{{study}}/claims.csv",
            caption="../report/claims.rst",
            category="1. Claims",
            subcategory="{study}",
        ),
        md=f"{RESULTS}/studies/{{study}}/claims.md",
        tex=f"{RESULTS}/studies/{{study}}/claims.tex",
        html=report(
            f"{RESULTS}/studies/{{study}}/claims.html",
            caption="../report/claims.rst",
            category="1. Claims",
            subcategory="{study}",
        ),
    log:
        "logs/studies/{study}/claims.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_seed_claims"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table claims --inputs {input} --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"
