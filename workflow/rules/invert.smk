rule count_bigrams:
    # Counts of (next, previous) token pairs over the train split: the reverse-bigram baseline and placeholder.
    input:
        train=f"{DATA}/train.npy",
    output:
        counts=f"{DATA}/bigram.npy",
    log:
        "logs/invert/count_bigrams.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        data_dir=input_dir("train"),
        config=config_file("count_bigrams"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} bigram-counts --data-dir {params.data_dir} --out {output.counts} --config {params.config} --runtime {params.runtime}"


rule select_invert_samples:
    # The inverted test windows and their shards, the same for every variant and the bigram baseline.
    input:
        test=f"{DATA}/test.npy",
    output:
        plan=f"{RESULTS}/inversion/samples.json",
    log:
        "logs/invert/select_samples.log",
    conda:
        CONDA_ENV
    params:
        data_dir=input_dir("test"),
        config=config_file("select_invert_samples"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} invert-samples --data-dir {params.data_dir} --out {output.plan} --config {params.config} --runtime {params.runtime}"


rule invert_shard:
    # Shard k of the inversions of one method (a variant, or `bigram` scored by the Baseline); resumable.
    input:
        model=invert_model_files,
        test=f"{DATA}/test.npy",
        bigram=f"{DATA}/bigram.npy",
        plan=f"{RESULTS}/inversion/samples.json",
    output:
        shard=f"{RESULTS}/inversion/{{method}}/shard{{shard}}.jsonl",
    log:
        "logs/invert/{method}/shard{shard}.log",
    wildcard_constraints:
        method=SEARCH_METHOD_PATTERN,
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    params:
        model_dir=model_dir,
        data_dir=input_dir("test"),
        config=config_file("invert_shard"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} --threads {threads} invert --method {wildcards.method} --model {params.model_dir}"
        " --data-dir {params.data_dir} --bigram {input.bigram} --shard {wildcards.shard}"
        " --out {output.shard} --config {params.config} --runtime {params.runtime}"


rule invert_generic_shard:
    # Shard k of a generic inverter (`<variant>+gcg`, `<variant>+relaxed`) on the beam search's windows; resumable.
    input:
        model=invert_model_files,
        test=f"{DATA}/test.npy",
        bigram=f"{DATA}/bigram.npy",
        plan=f"{RESULTS}/inversion/samples.json",
    output:
        shard=f"{RESULTS}/inversion/{{method}}/shard{{shard}}.jsonl",
    log:
        "logs/invert/{method}/shard{shard}.log",
    wildcard_constraints:
        method=GENERIC_METHOD_PATTERN,
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    params:
        model_dir=model_dir,
        data_dir=input_dir("test"),
        config=config_file("invert_generic_shard"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} --threads {threads} invert --method {wildcards.method} --model {params.model_dir}"
        " --data-dir {params.data_dir} --bigram {input.bigram} --shard {wildcards.shard}"
        " --out {output.shard} --config {params.config} --runtime {params.runtime}"


rule summarise_inversion:
    # Merge a method's shards; per-sample token-id metrics and the scoring model's suffix CE and perplexity.
    input:
        shards=expand(
            f"{RESULTS}/inversion/{{{{method}}}}/shard{{shard}}.jsonl",
            shard=INVERT_SHARDS,
        ),
        plan=f"{RESULTS}/inversion/samples.json",
        model=invert_model_files,
        test=f"{DATA}/test.npy",
    output:
        metrics=f"{RESULTS}/metrics/{{method}}/inversion.csv",
    log:
        "logs/invert/{method}/summary.log",
    conda:
        CONDA_ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        model_dir=model_dir,
        data_dir=input_dir("test"),
        config=config_file("summarise_inversion"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} --threads {threads} invert-summary --method {wildcards.method} --shards {input.shards}"
        " --plan {input.plan} --model {params.model_dir} --data-dir {params.data_dir} --out {output.metrics}"
        " --config {params.config} --runtime {params.runtime}"


rule tabulate_inversion:
    # Inversion metrics per method (beam search, reverse bigram, generic inverters), mean ± std over the same samples.
    input:
        metrics=invert_metric_files("inversion.csv"),
        judged=invert_metric_files("inversion_judged.csv"),
    output:
        csv=report(
            f"{RESULTS}/tables/inversion.csv",
            caption="../report/inversion.rst",
            category="Grounding",
        ),
        md=f"{RESULTS}/tables/inversion.md",
        tex=f"{RESULTS}/tables/inversion.tex",
        html=report(
            f"{RESULTS}/tables/inversion.html",
            caption="../report/inversion.rst",
            category="Grounding",
        ),
    log:
        "logs/tables/inversion.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_inversion"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table inversion --inputs {input.metrics} {input.judged}"
        " --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"


rule tabulate_inversion_vs_generic:
    # Per variant: the beam search against each generic inverter on the same windows, paired story-bootstrap intervals.
    input:
        metrics=invert_metric_files("inversion.csv", [*VARIANTS, *GENERIC_METHODS]),
        judged=invert_metric_files(
            "inversion_judged.csv", [*VARIANTS, *GENERIC_METHODS]
        ),
        stories=f"{DATA}/test_stories.npy",
    output:
        csv=report(
            f"{RESULTS}/tables/inversion_vs_generic.csv",
            caption="../report/inversion_vs_generic.rst",
            category="Grounding",
        ),
        md=f"{RESULTS}/tables/inversion_vs_generic.md",
        html=report(
            f"{RESULTS}/tables/inversion_vs_generic.html",
            caption="../report/inversion_vs_generic.rst",
            category="Grounding",
        ),
    log:
        "logs/tables/inversion_vs_generic.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_inversion_vs_generic"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table inversion_vs_generic --inputs {input.metrics} {input.judged} {input.stories}"
        " --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"


rule tabulate_inversion_examples:
    # The most fluent reconstructions per method by judge perplexity, decoded (LaTeX).
    input:
        judged=invert_metric_files("inversion_judged.csv", SEARCH_METHODS),
    output:
        report(
            f"{RESULTS}/tables/inversion_examples.tex",
            caption="../report/inversion_examples.rst",
            category="Grounding",
        ),
        report(
            f"{RESULTS}/tables/inversion_examples.html",
            caption="../report/inversion_examples.rst",
            category="Grounding",
        ),
    log:
        "logs/tables/inversion_examples.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_inversion_examples"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table inversion_examples --inputs {input.judged}"
        " --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"
