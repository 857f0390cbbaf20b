rule select_gcg_samples:
    # The attacked test windows and their shards, the same for every variant; checks gcg.count against the data.
    input:
        test=f"{DATA}/test.npy",
    output:
        plan=f"{RESULTS}/gcg/samples.json",
    log:
        "logs/gcg/select_samples.log",
    priority: 50
    conda:
        CONDA_ENV
    params:
        data_dir=input_dir("test"),
        config=config_file("select_gcg_samples"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} gcg-samples --data-dir {params.data_dir} --out {output.plan} --config {params.config} --runtime {params.runtime}"


rule attack_gcg_shard:
    # Shard k of the GCG samples of one variant; finished samples survive a kill in shard{k}.partial.jsonl.
    input:
        model=model_files(),
        test=f"{DATA}/test.npy",
        plan=f"{RESULTS}/gcg/samples.json",
    output:
        shard=f"{RESULTS}/gcg/{{variant}}/shard{{shard}}.jsonl",
    log:
        "logs/gcg/{variant}/shard{shard}.log",
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=1440,
    params:
        model_dir=model_dir,
        data_dir=input_dir("test"),
        config=config_file("attack_gcg_shard"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} --threads {threads} gcg-attack --model {params.model_dir} --data-dir {params.data_dir} --shard {wildcards.shard}"
        " --out {output.shard} --config {params.config} --runtime {params.runtime}"


rule summarise_gcg:
    # Merge a variant's shards (each complete, one model): per-sample losses and the success rate per budget.
    input:
        shards=expand(
            f"{RESULTS}/gcg/{{{{variant}}}}/shard{{shard}}.jsonl", shard=GCG_SHARDS
        ),
        plan=f"{RESULTS}/gcg/samples.json",
        model=model_files(),
    output:
        per_sample=f"{RESULTS}/metrics/{{variant}}/gcg.csv",
        sweep=f"{RESULTS}/metrics/{{variant}}/gcg_sweep.csv",
        curves=f"{RESULTS}/metrics/{{variant}}/gcg_curves.npz",
    log:
        "logs/gcg/{variant}/summary.log",
    conda:
        CONDA_ENV
    params:
        model_dir=model_dir,
        config=config_file("summarise_gcg"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} gcg-summary --shards {input.shards} --plan {input.plan} --model {params.model_dir}"
        " --variant {wildcards.variant} --per-sample-out {output.per_sample} --sweep-out {output.sweep}"
        " --curves-out {output.curves}"
        " --config {params.config} --runtime {params.runtime}"


# The gradient-free control (docs/method.md §4.2): the same search, width, steps and windows with candidates
# drawn uniformly at random. A delay that only the gradient-guided attack shows is gradient masking.
use rule attack_gcg_shard as attack_uniform_shard with:
    output:
        shard=f"{RESULTS}/gcg_uniform/{{variant}}/shard{{shard}}.jsonl",
    log:
        "logs/gcg_uniform/{variant}/shard{shard}.log",
    params:
        model_dir=model_dir,
        data_dir=input_dir("test"),
        config=config_file("attack_gcg_shard", {"gcg": {"candidates": "uniform"}}),


use rule summarise_gcg as summarise_uniform with:
    input:
        shards=expand(
            f"{RESULTS}/gcg_uniform/{{{{variant}}}}/shard{{shard}}.jsonl",
            shard=GCG_SHARDS,
        ),
        plan=f"{RESULTS}/gcg/samples.json",
        model=model_files(),
    output:
        per_sample=f"{RESULTS}/metrics/{{variant}}/gcg_uniform.csv",
        sweep=f"{RESULTS}/metrics/{{variant}}/gcg_uniform_sweep.csv",
        curves=f"{RESULTS}/metrics/{{variant}}/gcg_uniform_curves.npz",
    log:
        "logs/gcg_uniform/{variant}/summary.log",
    params:
        model_dir=model_dir,
        config=config_file("summarise_gcg", {"gcg": {"candidates": "uniform"}}),


rule transfer_gcg:
    # Every variant scored on the GCG attacks found against every variant, on the same windows: the transfer matrix.
    input:
        models=[path for v in VARIANTS for path in model_files(variant=v)],
        attacks=metric_files("gcg.csv"),
    output:
        table=f"{RESULTS}/metrics/transfer.csv",
    log:
        "logs/gcg/transfer.log",
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        variants=VARIANTS,
        model_dirs=[f"{RESULTS}/models/{v}" for v in VARIANTS],
        config=config_file("transfer_gcg"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} --threads {threads} gcg-transfer --variants {params.variants} --models {params.model_dirs}"
        " --attacks {input.attacks} --out {output.table} --config {params.config} --runtime {params.runtime}"
