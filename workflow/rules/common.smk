# Validation (before any job runs), shared paths and the config slices rules pass to `ilm`.
import json
import os

from ilm.config import validate_config

config.update(validate_config(config))

VARIANTS = config["variants"]
RESULTS = "results"
DATA = f"{RESULTS}/data"
SPLITS = ["train", "validation", "test"]
GCG_SHARDS = list(range(config["gcg"]["shards"]))


wildcard_constraints:
    variant="|".join(VARIANTS),
    shard=r"\d+",


def config_json(*items, drop=()):
    """The config a step depends on, as JSON: a change to it reruns that step and what follows.

    An item is a section ("train") or one key ("gcg.examples"); `drop` removes keys that only
    later steps read, so changing them does not rerun this one.
    """
    sliced = {}
    for item in items:
        section, _, key = item.partition(".")
        if key:
            sliced.setdefault(section, {})[key] = config[section][key]
        else:
            sliced[section] = dict(config[section])
    for dotted in drop:
        section, key = dotted.split(".")
        sliced[section].pop(key, None)
    return json.dumps(sliced, sort_keys=True)


def corpus_source():
    """The generated corpus when data.source is "generated", else the configured source."""
    if config["data"]["source"] == "generated":
        return f"{RESULTS}/corpus/stories.txt"
    return config["data"]["source"]


def corpus_input(wildcards):
    return [corpus_source()] if config["data"]["source"] == "generated" else []


def metric_files(name):
    return expand(f"{RESULTS}/metrics/{{variant}}/{name}", variant=VARIANTS)


def all_targets():
    return [
        *expand(
            f"{RESULTS}/tables/{{table}}.{{ext}}",
            table=["forward_quality", "inverse_accuracy", "gcg_summary"],
            ext=["csv", "md", "tex"],
        ),
        f"{RESULTS}/tables/gcg_examples.tex",
        *expand(f"{RESULTS}/figures/gcg_success_rate.{{ext}}", ext=["pdf", "png"]),
    ]


def output_stem(wildcards, output):
    """A table's or figure's path without its suffix: `ilm` adds .csv/.md/.tex or .pdf/.png."""
    return os.path.splitext(output[0])[0]


def input_dir(name):
    """The folder of input `name` (results/data), derived from the input so it follows any rename."""
    return lambda wildcards, input: os.path.dirname(input[name])
