rule tabulate_forward_quality:
    # Test CE, perplexity and next-token top-k accuracy, one row per variant.
    input:
        metrics=metric_files("forward.json"),
    output:
        csv=report(
            f"{RESULTS}/tables/forward_quality.csv",
            caption="../report/forward_quality.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/tables/forward_quality.md",
        tex=f"{RESULTS}/tables/forward_quality.tex",
    log:
        "logs/tables/forward_quality.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
    shell:
        "ilm table forward_quality --inputs {input.metrics}"
        " --out-stem {params.stem} > {log} 2>&1"


rule tabulate_inverse_accuracy:
    # Inverse top-k accuracy under the Identity, Bert-like and Inv-First protocols, one row per variant.
    input:
        metrics=metric_files("inverse.json"),
    output:
        csv=report(
            f"{RESULTS}/tables/inverse_accuracy.csv",
            caption="../report/inverse_accuracy.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/tables/inverse_accuracy.md",
        tex=f"{RESULTS}/tables/inverse_accuracy.tex",
    log:
        "logs/tables/inverse_accuracy.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
    shell:
        "ilm table inverse_accuracy --inputs {input.metrics}"
        " --out-stem {params.stem} > {log} 2>&1"


rule tabulate_gcg_summary:
    # GCG success rate at the final budget, losses split by success and failure, and KL.
    input:
        metrics=metric_files("gcg.csv"),
    output:
        csv=report(
            f"{RESULTS}/tables/gcg_summary.csv",
            caption="../report/gcg_summary.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/tables/gcg_summary.md",
        tex=f"{RESULTS}/tables/gcg_summary.tex",
    log:
        "logs/tables/gcg_summary.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_gcg_summary"),
    shell:
        "ilm table gcg_summary --inputs {input.metrics}"
        " --out-stem {params.stem} --config {params.config} > {log} 2>&1"


rule tabulate_gcg_examples:
    # The lowest-loss successful attacks of each variant, decoded to text (LaTeX).
    input:
        metrics=metric_files("gcg.csv"),
        tokenizer=f"{DATA}/tokenizer.json",
    output:
        report(
            f"{RESULTS}/tables/gcg_examples.tex",
            caption="../report/gcg_examples.rst",
            category="Tables",
        ),
    log:
        "logs/tables/gcg_examples.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_gcg_examples"),
    shell:
        "ilm table gcg_examples --inputs {input.metrics} --tokenizer {input.tokenizer}"
        " --out-stem {params.stem} --config {params.config} > {log} 2>&1"


rule plot_gcg_success_rate:
    # Figure 4: GCG success rate against the iteration budget, one line per variant.
    input:
        sweeps=metric_files("gcg_sweep.csv"),
    output:
        pdf=f"{RESULTS}/figures/gcg_success_rate.pdf",
        png=report(
            f"{RESULTS}/figures/gcg_success_rate.png",
            caption="../report/gcg_success_rate.rst",
            category="Robustness",
        ),
    log:
        "logs/figures/gcg_success_rate.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("plot_gcg_success_rate"),
    shell:
        "ilm figure gcg_success_rate --inputs {input.sweeps}"
        " --out-stem {params.stem} --config {params.config} > {log} 2>&1"
