"""Paper-scale GPU-hours per stage, projected from measured rates and the config's sizes (benchmarks/gpu_suite.py).

The config gives the work (train.epochs, batch_size, val_every, val_sequences, data.window,
variants; gcg fraction/count and steps; invert fraction/count; evaluate.max_sequences); the
split sizes come from the caller (the paper's TinyStoriesV2 split, or a stats.json); the
rates are what the suite measured on one GPU. Everything here is plain arithmetic.
"""

from __future__ import annotations

import math
from typing import Mapping

from ilm.shards import sample_count

SECONDS_PER_HOUR = 3600.0


def project_gpu_hours(
    config: Mapping,
    train_windows: int,
    test_windows: int,
    train_tokens_per_second: Mapping[str, float],
    gcg_sample_steps_per_second: float,
    inversion_samples_per_second: float,
    evaluation_windows_per_second: float,
) -> dict:
    """GPU-hours of each stage at paper scale on the measuring GPU, and the work each one counts.

    train (per variant): optimizer steps x batch_size x window tokens, plus the validation
    windows (one validation every val_every steps and at the last), both at the measured
    training-step rate (validation takes no parameter gradient: an upper bound).
    gcg (per variant): attacked samples x gcg.steps sample-steps, twice: the gradient attack and its
    gradient-free control (gcg.candidates: uniform, same forwards; measured at the gradient rate). inversion: sampled windows,
    for every variant and the bigram baseline (at the gradient search's rate: an upper bound
    for the baseline). evaluate (per variant): the test windows (or evaluate.max_sequences).
    """
    train, data = config["train"], config["data"]
    variants = list(config["variants"])
    missing = [v for v in variants if v not in train_tokens_per_second]
    if missing:
        raise ValueError(f"no measured training rate for {missing}; measure every variant in config.variants")
    batch = min(train["batch_size"], train_windows)
    steps = train["epochs"] * max(1, train_windows // batch)
    if train["max_steps"] is not None:
        steps = min(steps, train["max_steps"])
    validations = math.ceil(steps / train["val_every"])
    train_tokens = steps * batch * data["window"]
    val_tokens = validations * train["val_sequences"] * data["window"]
    train_hours = {v: (train_tokens + val_tokens) / train_tokens_per_second[v] / SECONDS_PER_HOUR for v in variants}

    gcg = config["gcg"]
    gcg_samples = sample_count(test_windows, gcg["fraction"], gcg["count"], "gcg")
    gcg_hours = gcg_samples * gcg["steps"] / gcg_sample_steps_per_second / SECONDS_PER_HOUR

    inv = config["invert"]
    inv_samples = sample_count(test_windows, inv["fraction"], inv["count"], "invert")
    inv_methods = len(variants) + (1 if "base" in variants else 0)  # + the bigram baseline (workflow INVERT_METHODS)
    inv_hours = inv_samples / inversion_samples_per_second / SECONDS_PER_HOUR

    max_sequences = config["evaluate"]["max_sequences"]
    eval_windows = test_windows if max_sequences is None else min(max_sequences, test_windows)
    eval_hours = eval_windows / evaluation_windows_per_second / SECONDS_PER_HOUR

    stages = {
        "train": sum(train_hours.values()),
        "gcg": 2 * gcg_hours * len(variants),  # the gradient attack and the uniform control
        "inversion": inv_hours * inv_methods,
        "evaluate": eval_hours * len(variants),
    }
    return {
        "work": {
            "variants": variants,
            "train_windows": train_windows,
            "test_windows": test_windows,
            "optimizer_steps": steps,
            "train_tokens": train_tokens,
            "validation_tokens": val_tokens,
            "gcg_samples": gcg_samples,
            "gcg_sample_steps": gcg_samples * gcg["steps"],
            "inversion_samples": inv_samples,
            "inversion_methods": inv_methods,
            "evaluation_windows": eval_windows,
        },
        "train_per_variant": train_hours,
        "gcg_per_variant": gcg_hours,
        "inversion_per_method": inv_hours,
        "evaluate_per_variant": eval_hours,
        "stages": stages,
        "total": sum(stages.values()),
    }
