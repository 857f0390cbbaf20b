# The paper's tables and figures, from small result files; each report() entry's category is its stage.
# Each table's .html (rounded for a reader) is what `snakemake --report` shows inline; its CSV is the download.


rule tabulate_setup:
    # The settings and sizes that define the run: data counts, model size and parameters, objective, training, GCG.
    input:
        stats=f"{DATA}/stats.json",
        runs=expand(f"{RESULTS}/models/{{variant}}/run_config.json", variant=VARIANTS),
        configs=expand(f"{RESULTS}/models/{{variant}}/config.json", variant=VARIANTS),
        weights=expand(
            f"{RESULTS}/models/{{variant}}/model.safetensors", variant=VARIANTS
        ),
    output:
        csv=report(
            f"{RESULTS}/tables/setup.csv",
            caption="../report/setup.rst",
            category="Data",
        ),
        md=f"{RESULTS}/tables/setup.md",
        tex=f"{RESULTS}/tables/setup.tex",
        html=report(
            f"{RESULTS}/tables/setup.html",
            caption="../report/setup.rst",
            category="Data",
        ),
    log:
        "logs/tables/setup.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_setup"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table setup --inputs {input.stats} {input.runs} {input.configs} {input.weights}"
        " --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"


rule tabulate_token_entropy:
    # Entropy (bits) of the token at each window position over the training windows (CSV, HTML).
    input:
        train=f"{DATA}/train.npy",
    output:
        csv=report(
            f"{RESULTS}/tables/token_entropy.csv",
            caption="../report/token_entropy.rst",
            category="Data",
        ),
        html=report(
            f"{RESULTS}/tables/token_entropy.html",
            caption="../report/token_entropy.rst",
            category="Data",
        ),
    log:
        "logs/tables/token_entropy.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
    shell:
        "ilm --log {log} table token_entropy --inputs {input.train}"
        " --out-stem {params.stem}"


rule plot_token_entropy:
    # The token entropy per position against the position.
    input:
        entropy=f"{RESULTS}/tables/token_entropy.csv",
    output:
        pdf=f"{RESULTS}/figures/token_entropy.pdf",
        png=report(
            f"{RESULTS}/figures/token_entropy.png",
            caption="../report/token_entropy.rst",
            category="Data",
        ),
    log:
        "logs/figures/token_entropy.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
    shell:
        "ilm --log {log} figure token_entropy --inputs {input.entropy}"
        " --out-stem {params.stem}"


rule plot_training_curves:
    # Forward (train, validation) and inverse CE against the optimizer step, one line per variant.
    input:
        logs=expand(f"{RESULTS}/models/{{variant}}/train_log.csv", variant=VARIANTS),
    output:
        pdf=f"{RESULTS}/figures/training_curves.pdf",
        png=report(
            f"{RESULTS}/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
    log:
        "logs/figures/training_curves.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
    shell:
        "ilm --log {log} figure training_curves --inputs {input.logs}"
        " --out-stem {params.stem}"


rule tabulate_forward_quality:
    # Test CE, perplexity and next-token top-k accuracy, one row per variant.
    input:
        metrics=metric_files("forward.json"),
        windows=metric_files("eval_windows.csv"),
        stories=f"{DATA}/test_stories.npy",
    output:
        csv=report(
            f"{RESULTS}/tables/forward_quality.csv",
            caption="../report/forward_quality.rst",
            category="Forward quality",
        ),
        md=f"{RESULTS}/tables/forward_quality.md",
        tex=f"{RESULTS}/tables/forward_quality.tex",
        html=report(
            f"{RESULTS}/tables/forward_quality.html",
            caption="../report/forward_quality.rst",
            category="Forward quality",
        ),
    log:
        "logs/tables/forward_quality.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_forward_quality"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table forward_quality --inputs {input} --out-stem {params.stem}"
        " --config {params.config} --runtime {params.runtime}"


rule tabulate_inverse_accuracy:
    # Inverse top-k accuracy under the Identity, Bert-like and Inv-First protocols, one row per variant.
    input:
        metrics=metric_files("inverse.json"),
        windows=metric_files("eval_windows.csv"),
        stories=f"{DATA}/test_stories.npy",
    output:
        csv=report(
            f"{RESULTS}/tables/inverse_accuracy.csv",
            caption="../report/inverse_accuracy.rst",
            category="Inverse accuracy",
        ),
        md=f"{RESULTS}/tables/inverse_accuracy.md",
        tex=f"{RESULTS}/tables/inverse_accuracy.tex",
        html=report(
            f"{RESULTS}/tables/inverse_accuracy.html",
            caption="../report/inverse_accuracy.rst",
            category="Inverse accuracy",
        ),
    log:
        "logs/tables/inverse_accuracy.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_inverse_accuracy"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table inverse_accuracy --inputs {input} --out-stem {params.stem}"
        " --config {params.config} --runtime {params.runtime}"


rule plot_inverse_by_position:
    # Inverse top-1 accuracy against the position, one panel per protocol, one line per variant.
    input:
        metrics=metric_files("inverse.json"),
    output:
        pdf=f"{RESULTS}/figures/inverse_by_position.pdf",
        png=report(
            f"{RESULTS}/figures/inverse_by_position.png",
            caption="../report/inverse_by_position.rst",
            category="Inverse accuracy",
        ),
    log:
        "logs/figures/inverse_by_position.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
    shell:
        "ilm --log {log} figure inverse_by_position --inputs {input.metrics}"
        " --out-stem {params.stem}"


rule tabulate_gcg_summary:
    # GCG success rate at the final budget, losses split by success and failure, and KL.
    input:
        metrics=metric_files("gcg.csv"),
    output:
        csv=report(
            f"{RESULTS}/tables/gcg_summary.csv",
            caption="../report/gcg_summary.rst",
            category="Robustness",
        ),
        md=f"{RESULTS}/tables/gcg_summary.md",
        tex=f"{RESULTS}/tables/gcg_summary.tex",
        html=report(
            f"{RESULTS}/tables/gcg_summary.html",
            caption="../report/gcg_summary.rst",
            category="Robustness",
        ),
    log:
        "logs/tables/gcg_summary.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_gcg_summary"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table gcg_summary --inputs {input.metrics}"
        " --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"


rule tabulate_gcg_examples:
    # The lowest-loss successful attacks of each variant, decoded to text (LaTeX, HTML).
    input:
        metrics=metric_files("gcg.csv"),
        tokenizer=f"{DATA}/tokenizer.json",
    output:
        tex=report(
            f"{RESULTS}/tables/gcg_examples.tex",
            caption="../report/gcg_examples.rst",
            category="Robustness",
        ),
        html=report(
            f"{RESULTS}/tables/gcg_examples.html",
            caption="../report/gcg_examples.rst",
            category="Robustness",
        ),
    log:
        "logs/tables/gcg_examples.log",
    conda:
        CONDA_ENV
    params:
        stem=output_stem,
        config=config_file("tabulate_gcg_examples"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} table gcg_examples --inputs {input.metrics} --tokenizer {input.tokenizer}"
        " --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"


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
        runtime=runtime_file,
    shell:
        "ilm --log {log} figure gcg_success_rate --inputs {input.sweeps}"
        " --out-stem {params.stem} --config {params.config} --runtime {params.runtime}"
