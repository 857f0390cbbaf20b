rule make_corpus:
    # Seeded synthetic children's stories: the offline corpus of the demo and the tests.
    output:
        stories=f"{RESULTS}/corpus/stories.txt",
    log:
        "logs/make_corpus.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=config_file("make_corpus"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} make-corpus --out {output.stories} --config {params.config} --runtime {params.runtime}"


# Only for a Hub dataset: other sources are local files (or the generated corpus).
if is_hub_id(config["data"]["source"]):

    rule download_data:
        # The HF dataset of data.source at data.revision, fetched once where there is network (a local rule).
        output:
            folder=directory(corpus_source()),
        log:
            "logs/download_data.log",
        conda:
            CONDA_ENV
        params:
            source=config["data"]["source"],
            revision=config["data"]["revision"] or "",
        shell:
            "ilm --log {log} download-data --source {params.source:q} --revision {params.revision:q} --out {output.folder}"


rule prepare_data:
    # BPE tokenizer, 256-token windows within stories, and the train/validation/test splits.
    input:
        corpus_input,
    output:
        tokenizer=f"{DATA}/tokenizer.json",
        tokenizer_config=f"{DATA}/tokenizer_config.json",
        splits=expand(f"{DATA}/{{split}}.npy", split=SPLITS),
        stories=expand(f"{DATA}/{{split}}_stories.npy", split=SPLITS),
        stats=f"{DATA}/stats.json",
    log:
        "logs/prepare_data.log",
    conda:
        CONDA_ENV
    threads: 8  # capped at --cores
    resources:
        mem_mb=32000,  # the BPE trainer holds TinyStoriesV2's 2.7 M stories in memory
        runtime=180,  # < 1 CPU-h at paper scale (estimate)
    params:
        data_dir=lambda wildcards, output: os.path.dirname(output.stats),
        source=corpus_source(),
        config=config_file("prepare_data"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} --threads {threads} prepare-data --source {params.source:q} --out-dir {params.data_dir} --workers {threads}"
        " --config {params.config} --runtime {params.runtime}"
