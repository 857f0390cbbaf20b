# Studies (config `studies:`): every point of a grid runs the main run's rules, with the point's
# config slice, under results/studies/{study}/{point}/. Only the paths and the config differ.
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
        windows=f"{STUDY_RUN}/metrics/{{variant}}/eval_windows.csv",
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
        curves=f"{STUDY_RUN}/metrics/{{variant}}/gcg_curves.npz",
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
        html=report(
            f"{RESULTS}/studies/{{study}}/study.html",
            caption="../report/study.rst",
            category="Studies",
            subcategory="{study}",
        ),
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
        runtime=runtime_file,
    shell:
        "ilm --log {log} summarise-study --manifest {params.manifest} --table-stem {params.stem} --figure-stem {params.stem}"
        " --config {params.config} --runtime {params.runtime}"
