"""`ilm <command>`: the thin entry points that Snakemake rules call; each also runs on its own.

Commands that depend on settings take `--config FILE` (a full or partial config.yaml) and/or
`--config-json TEXT` (the slice a rule passes through `params:`); both are merged, then
validated against the schema, so defaults fill whatever is absent.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ilm import logger


def _config(args: argparse.Namespace) -> dict:
    from ilm.config import load_config, parse_config_json

    return load_config(args.config, parse_config_json(args.config_json))


def _quiet_transformers() -> None:
    """HF's per-file "Loading weights" bars clutter job logs; our own progress bars stay."""
    import transformers

    transformers.utils.logging.disable_progress_bar()


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML config file (defaults fill the rest)")
    p.add_argument("--config-json", default=None, help="JSON config slice, merged over --config")


# --- data -------------------------------------------------------------------------------------


def cmd_make_corpus(args: argparse.Namespace) -> None:
    from ilm.corpus import write_corpus

    write_corpus(args.out, n_stories=args.stories, seed=args.seed)


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from ilm.data import prepare_data

    cfg = _config(args)
    source = args.source if args.source is not None else cfg["data"]["source"]
    prepare_data(source, args.out_dir, cfg["data"], num_workers=args.workers)


# --- models -----------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> None:
    _quiet_transformers()
    from ilm.train import train

    cfg = _config(args)
    train(
        data_dir=args.data_dir,
        out_dir=args.out,
        checkpoint_dir=args.checkpoint_dir,
        variant=args.variant,
        config=cfg,
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    _quiet_transformers()
    from ilm.evaluate import evaluate

    cfg = _config(args)
    evaluate(
        model_dir=args.model,
        data_dir=args.data_dir,
        variant=args.variant,
        forward_out=args.forward_out,
        inverse_out=args.inverse_out,
        config=cfg,
    )


# --- GCG --------------------------------------------------------------------------------------


def cmd_gcg_attack(args: argparse.Namespace) -> None:
    _quiet_transformers()
    from ilm.attack import attack_shard

    cfg = _config(args)
    attack_shard(
        model_dir=args.model,
        data_dir=args.data_dir,
        shard=args.shard,
        out=args.out,
        config=cfg,
    )


def cmd_gcg_summary(args: argparse.Namespace) -> None:
    from ilm.gcg_report import summarise_shards

    cfg = _config(args)
    summarise_shards(
        args.shards,
        variant=args.variant,
        per_sample_out=args.per_sample_out,
        sweep_out=args.sweep_out,
        config=cfg,
    )


# --- report -----------------------------------------------------------------------------------


def cmd_table(args: argparse.Namespace) -> None:
    from ilm import report

    cfg = _config(args)
    report.make_table(args.name, args.inputs, args.out_stem, config=cfg, tokenizer=args.tokenizer)


def cmd_figure(args: argparse.Namespace) -> None:
    from ilm import report

    cfg = _config(args)
    report.make_figure(args.name, args.inputs, args.out_stem, config=cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ilm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = sub.add_parser("make-corpus", help="write seeded synthetic children's stories (demo, tests)")
    p.add_argument("--out", type=Path, required=True, help="text file to write")
    p.add_argument("--stories", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1234)
    p.set_defaults(func=cmd_make_corpus)

    p = sub.add_parser("prepare-data", help="train the BPE tokenizer, cut windows, split, write .npy")
    p.add_argument("--source", default=None, help="HF dataset id, local text file/folder (default: data.source)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--workers", type=int, default=None, help="tokenizer threads (default: all cores)")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("train", help="train one variant (resumes from --checkpoint-dir)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--out", type=Path, required=True, help="model directory (save_pretrained)")
    p.add_argument("--checkpoint-dir", type=Path, required=True, help="resume state (kept across kills)")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="forward quality and inverse accuracy on the test split")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--forward-out", type=Path, required=True)
    p.add_argument("--inverse-out", type=Path, required=True)
    _add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("gcg-attack", help="attack shard k of n of the GCG samples (resumable)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--shard", type=int, required=True, help="shard index k in [0, gcg.shards)")
    p.add_argument("--out", type=Path, required=True, help="shard{k}.jsonl")
    _add_config_args(p)
    p.set_defaults(func=cmd_gcg_attack)

    p = sub.add_parser("gcg-summary", help="merge shards: per-sample gcg.csv and the gcg_sweep.csv")
    p.add_argument("--shards", type=Path, nargs="+", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--per-sample-out", type=Path, required=True)
    p.add_argument("--sweep-out", type=Path, required=True)
    _add_config_args(p)
    p.set_defaults(func=cmd_gcg_summary)

    p = sub.add_parser("table", help="build one table from metric files")
    p.add_argument("name", help="forward_quality | inverse_accuracy | gcg_summary | gcg_examples")
    p.add_argument("--inputs", type=Path, nargs="+", required=True, help="metric files, one per variant")
    p.add_argument("--out-stem", type=Path, required=True, help="output path without suffix")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (tables that decode text)")
    _add_config_args(p)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("figure", help="draw one figure from metric files")
    p.add_argument("name", help="gcg_success_rate")
    p.add_argument("--inputs", type=Path, nargs="+", required=True)
    p.add_argument("--out-stem", type=Path, required=True)
    _add_config_args(p)
    p.set_defaults(func=cmd_figure)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s | %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except ValueError as e:
        # Bad user input: one clear message, no traceback (STYLE 7).
        logger.error("%s", e)
        print(f"ilm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
