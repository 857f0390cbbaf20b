rule train:
    # One variant trained from scratch; resume state lives in results/checkpoints/ (not an output).
    input:
        splits=expand(f"{DATA}/{{split}}.npy", split=SPLITS),
        tokenizer=f"{DATA}/tokenizer.json",
    output:
        model=directory(f"{RESULTS}/models/{{variant}}"),
    log:
        "logs/train/{variant}.log",
    conda:
        "../../envs/ilm.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=1440,
    params:
        data_dir=input_dir("tokenizer"),
        checkpoints=f"{RESULTS}/checkpoints/{{variant}}",
        config=config_json("data", "model", "objective", "train"),
    shell:
        "ilm --threads {threads} train --data-dir {params.data_dir} --variant {wildcards.variant} --out {output.model}"
        " --checkpoint-dir {params.checkpoints} --config-json {params.config:q} > {log} 2>&1"
