rule gcg_attack:
    # Shard k of the GCG samples of one variant; finished samples survive a kill in shard{k}.partial.jsonl.
    input:
        model=f"{RESULTS}/models/{{variant}}",
        test=f"{DATA}/test.npy",
    output:
        shard=f"{RESULTS}/gcg/{{variant}}/shard{{shard}}.jsonl",
    log:
        "logs/gcg/{variant}/shard{shard}.log",
    conda:
        "../../envs/ilm.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=1440,
    params:
        data_dir=input_dir("test"),
        config=config_json(
            "data", "model", "gcg", drop=["gcg.iterations", "gcg.examples"]
        ),
    shell:
        "ilm --threads {threads} gcg-attack --model {input.model} --data-dir {params.data_dir} --shard {wildcards.shard}"
        " --out {output.shard} --config-json {params.config:q} > {log} 2>&1"


rule gcg_summary:
    # Merge a variant's shards: per-sample losses and the success rate per iteration budget.
    input:
        shards=expand(
            f"{RESULTS}/gcg/{{{{variant}}}}/shard{{shard}}.jsonl", shard=GCG_SHARDS
        ),
    output:
        per_sample=f"{RESULTS}/metrics/{{variant}}/gcg.csv",
        sweep=f"{RESULTS}/metrics/{{variant}}/gcg_sweep.csv",
    log:
        "logs/gcg/{variant}/summary.log",
    conda:
        "../../envs/ilm.yaml"
    params:
        config=config_json("gcg", drop=["gcg.examples"]),
    shell:
        "ilm gcg-summary --shards {input.shards} --variant {wildcards.variant}"
        " --per-sample-out {output.per_sample} --sweep-out {output.sweep}"
        " --config-json {params.config:q} > {log} 2>&1"
