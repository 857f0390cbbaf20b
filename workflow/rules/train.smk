rule train_model:
    # One variant trained from scratch; resume state lives in results/checkpoints/ (not an output).
    input:
        splits=expand(f"{DATA}/{{split}}.npy", split=SPLITS),
        tokenizer=f"{DATA}/tokenizer.json",
    output:
        model=model_files(),
    log:
        "logs/train/{variant}.log",
    # Trainings go first: one queued behind another variant's attacks delays everything after it.
    priority: 20
    conda:
        CONDA_ENV
    threads: 4
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=1440,
    params:
        data_dir=input_dir("tokenizer"),
        model_dir=lambda wildcards, output: os.path.dirname(output.model[0]),
        checkpoints=f"{RESULTS}/checkpoints/{{variant}}",
        config=config_file("train_model"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} --threads {threads} train --data-dir {params.data_dir} --variant {wildcards.variant} --out {params.model_dir}"
        " --checkpoint-dir {params.checkpoints} --config {params.config} --runtime {params.runtime}"
