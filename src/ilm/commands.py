"""What every `ilm` command shares: the config arguments, their loading per stage, and quiet HF loading.

ilm.cli and each stage's own command module (ilm.pilot.cli) build on these; none of them imports
another's command module back.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_config_args(p: argparse.ArgumentParser) -> None:
    """--config FILE, --runtime FILE and --config-json TEXT, as every command that reads settings takes them."""
    p.add_argument("--config", type=Path, default=None, help="YAML config file (defaults fill the rest)")
    p.add_argument("--runtime", type=Path, default=None,
                   help="run-time settings (devices, batch sizes, logging cadence), merged over --config")
    p.add_argument("--config-json", default=None, help="JSON config slice, merged over --config and --runtime")


def stage_config(args: argparse.Namespace, stage: str) -> dict:
    """--config, --runtime and --config-json merged in that order and validated as `stage` (a rule name) reads them."""
    from ilm.config import deep_merge, load_config, parse_config_json, read_yaml

    runtime = read_yaml(args.runtime) if getattr(args, "runtime", None) is not None else {}
    return load_config(args.config, deep_merge(runtime, parse_config_json(args.config_json)), stage=stage)


def quiet_progress_bars() -> None:
    """Turn the Hub's and datasets' tqdm bars off when stderr is no terminal: they put \\r frames in job logs.

    Call before huggingface_hub or datasets is imported (both read these once); a value the user set stays.
    """
    if not sys.stderr.isatty():
        for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(var, "1")


def quiet_transformers() -> None:
    """HF's per-file "Loading weights" bars clutter job logs; our own progress lines stay."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
