"""Throughput of one training step (objective + backward) of every variant on the paper model.

    python benchmarks/train_step.py [--device cpu|cuda] [--micro-batch N] [--steps N] [--variants ...]
                                    [--attention eager|sdpa_math] [--threads N]

Random token batches of T = data.window; warm-up steps are not timed; timed steps go
round-robin over the variants and the median step counts; the ratio column is each
variant's tokens/s over base's, measured in the same run. On CUDA the step is
synchronised and peak memory reported. The ILM variants pay a double backward (and
Bert-like a second forward), which is what this measures.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ilm.config import load_config
from ilm.io import provenance, write_json
from ilm.model import ATTENTION, build_model, count_parameters, resolve_device, use_attention
from ilm.objectives import VARIANTS, ObjectiveConfig, compute_objective

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("ilm.benchmarks.train_step")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "config.yaml",
                   help="config whose model, objective and data.window are used")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per step (default 8 on CPU, 256 on CUDA)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default data.window)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant before timing (>= 1)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast of the objective")
    p.add_argument("--attention", choices=list(ATTENTION), default=None,
                   help="attention implementation (default: the config's train.attention)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("micro_batch", "seq_len", "steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
    if args.warmup < 1:
        raise ValueError(f"--warmup must be >= 1 (got {args.warmup}): peak memory is read during warm-up")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model: torch.nn.Module, ids: torch.Tensor, variant: str, cfg: ObjectiveConfig,
          gen: torch.Generator, precision: str) -> tuple[float, float]:
    """(seconds, loss) of one compute_objective + backward, synchronised on CUDA."""
    device = ids.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    _sync(device)
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    with autocast:
        out = compute_objective(model, ids, variant, cfg, generator=gen, create_graph=True, top_k=(1,))
    out.loss.backward()
    _sync(device)
    return time.perf_counter() - start, out.loss.item()


def time_variants(
    model: torch.nn.Module,
    variants: Sequence[str],
    cfg: ObjectiveConfig,
    batch: int,
    seq_len: int,
    steps: int,
    warmup: int,
    precision: str,
    seed: int,
) -> list[dict]:
    """Median seconds per step, tokens/s and peak memory of compute_objective + backward per variant.

    Timed steps go round-robin over the variants and the median is kept, so a busy neighbour
    on a shared machine slows every variant alike instead of skewing the ratios.
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    batches = [torch.randint(0, vocab, (batch, seq_len), generator=gen).to(device) for _ in range(warmup + steps)]
    times: dict[str, list[float]] = {v: [] for v in variants}
    peaks: dict[str, Optional[float]] = {v: None for v in variants}
    for v in variants:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(warmup):
            seconds, loss = _step(model, batches[i], v, cfg, gen, precision)
            log.info("%-15s warm-up %d/%d | loss %.4f | %.3f s", v, i + 1, warmup, loss, seconds)
        if device.type == "cuda":
            peaks[v] = torch.cuda.max_memory_allocated(device) / 2**30
    for i in range(steps):
        for v in variants:
            seconds, loss = _step(model, batches[warmup + i], v, cfg, gen, precision)
            times[v].append(seconds)
            log.info("%-15s step %d/%d | loss %.4f | %.3f s", v, i + 1, steps, loss, seconds)
    model.zero_grad(set_to_none=True)
    rows = []
    for v in variants:
        median = statistics.median(times[v])
        rows.append({
            "variant": v,
            "seconds_per_step": median,
            "tokens_per_second": batch * seq_len / median,
            "peak_memory_gib": peaks[v],
            "step_seconds": times[v],
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table: variant, tokens/s, ratio to base, median ms/step, peak memory (CUDA, during warm-up)."""
    base = next(r["tokens_per_second"] for r in rows if r["variant"] == "base")
    lines = ["| variant | tokens/s | ratio to base | ms/step | peak GiB |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        lines.append(
            f"| {r['variant']} | {r['tokens_per_second']:,.0f} | {r['tokens_per_second'] / base:.3f} "
            f"| {1000 * r['seconds_per_step']:.1f} | {peak} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(argv)
    config = load_config(args.config)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    attention = args.attention or config["train"]["attention"]
    device = resolve_device(args.device)
    batch = args.micro_batch or (256 if device.type == "cuda" else 8)
    seq_len = args.seq_len or config["data"]["window"]
    if seq_len > config["model"]["max_position_embeddings"]:
        raise ValueError(f"--seq-len {seq_len} exceeds model.max_position_embeddings")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config["train"]["allow_tf32"]
    variants = list(dict.fromkeys(["base", *args.variants]))  # base is the reference of the ratio column

    torch.manual_seed(args.seed)
    model = use_attention(build_model(config["model"]), attention).to(device).train()
    cfg = ObjectiveConfig.from_dict(config["objective"])
    log.info("model %d parameters | device %s | micro-batch %d x %d tokens | %s | %s attention | %d threads",
             count_parameters(model), device, batch, seq_len, args.precision, attention, torch.get_num_threads())
    rows = time_variants(model, variants, cfg, batch, seq_len, args.steps, args.warmup, args.precision, args.seed)
    print(format_table(rows))
    if args.out is not None:
        write_json(args.out, {"rows": rows, **provenance(
            device=str(device), micro_batch=batch, seq_len=seq_len, steps=args.steps, warmup=args.warmup,
            precision=args.precision, attention=attention, threads=torch.get_num_threads(),
            gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        )})
    return 0


if __name__ == "__main__":
    sys.exit(main())
