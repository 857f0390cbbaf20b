"""What logging the g curves costs training: a validation with and without them, against training steps.

    python benchmarks/g_curves_cost.py [--config FILE ...] [--variants ...] [--repeats N] [--threads N]

The g curves (ilm.train.Validation: inverse CE without g, mean g^2 / eps) are computed only at
validation points, as one more head projection per validation micro-batch
(`compute_objective(..., diagnostics=True)`). This measures, in the same run and on random
weights: one training step (objective + backward), one validation with the curves and one
without, and prints the extra seconds per validation over `train.val_every` training steps, the
share of a training step that logging adds. Median of `--repeats` timings each; compare ratios
only on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml

from ilm.config import deep_merge, load_config
from ilm.model import build_model, use_attention
from ilm.objectives import ObjectiveConfig, compute_objective
from ilm.train import validation_loss

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, nargs="+", default=[REPO / "config.yaml", REPO / "profiles/demo/demo.yaml"],
                   help="config files, merged in order (default: the demo's sizes)")
    p.add_argument("--variants", nargs="+", default=["identity", "bert_like", "inv_first"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _validation_without_curves(model, val_ids, micro, variant, objective, seed) -> None:
    """validation_loss's work without the g diagnostics: the objective alone on the same micro-batches."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for start in range(0, len(val_ids), micro):
            compute_objective(model, val_ids[start : start + micro], variant, objective, generator=generator,
                              create_graph=False, top_k=())


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config: dict = {}
    for path in args.config:
        config = deep_merge(config, yaml.safe_load(path.read_text()) or {})
    config = load_config(None, config)
    train, window = config["train"], config["data"]["window"]
    objective = ObjectiveConfig.from_dict(config["objective"])
    gen = torch.Generator().manual_seed(0)
    vocab = config["model"]["vocab_size"]
    batch = torch.randint(6, vocab, (train["micro_batch_size"], window), generator=gen)
    val_ids = torch.randint(6, vocab, (train["val_sequences"], window), generator=gen)
    print(f"micro-batch {train['micro_batch_size']} x {window}, batch {train['batch_size']}, validation "
          f"{train['val_sequences']} windows every {train['val_every']} steps, {args.threads} thread(s)")
    print("| variant | train step (s) | validation with curves (s) | without (s) | added per step (%) |")
    print("|---|---|---|---|---|")
    for variant in args.variants:
        torch.manual_seed(0)
        model = use_attention(build_model(config["model"]), train["attention"]).train()

        def step():
            model.zero_grad(set_to_none=True)
            for _ in range(train["batch_size"] // train["micro_batch_size"]):
                compute_objective(model, batch, variant, objective, generator=gen).loss.backward()

        t_step = _median_seconds(step, args.repeats)
        t_with = _median_seconds(lambda: validation_loss(model, val_ids, train["micro_batch_size"], variant,
                                                         objective, 0), args.repeats)
        t_without = _median_seconds(lambda: _validation_without_curves(model, val_ids, train["micro_batch_size"],
                                                                       variant, objective, 0), args.repeats)
        added = (t_with - t_without) / (train["val_every"] * t_step)
        print(f"| {variant} | {t_step:.3f} | {t_with:.3f} | {t_without:.3f} | {100 * added:.2f} |")


if __name__ == "__main__":
    main()
