rule evaluate_model:
    # Forward quality and inverse accuracy (all three protocols) of one variant on the test split.
    input:
        model=model_files(),
        test=f"{DATA}/test.npy",
    output:
        forward=f"{RESULTS}/metrics/{{variant}}/forward.json",
        inverse=f"{RESULTS}/metrics/{{variant}}/inverse.json",
        windows=f"{RESULTS}/metrics/{{variant}}/eval_windows.csv",
    log:
        "logs/evaluate/{variant}.log",
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,  # 0.5-2 GPU-h per variant at paper scale (estimate); not resumable
    params:
        model_dir=model_dir,
        data_dir=input_dir("test"),
        config=config_file("evaluate_model"),
        runtime=runtime_file,
    shell:
        "ilm --log {log} --threads {threads} evaluate --model {params.model_dir} --data-dir {params.data_dir} --variant {wildcards.variant}"
        " --forward-out {output.forward} --inverse-out {output.inverse} --windows-out {output.windows}"
        " --config {params.config} --runtime {params.runtime}"
