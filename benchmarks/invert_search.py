"""Inversion throughput: samples per second of the batched search (`ilm.invert.search`) against a naive one.

The paper model (config.yaml `model:`) with random weights, in eval mode with frozen weights
as `ilm invert` loads it, inverting random suffixes with the config's `invert:` settings (by
default 20 prefix tokens in front of the rest of the 256-token window, beam 5, top-k 5).
The batched search grows every beam of S samples in one gradient pass and one scoring pass
per step; the naive reference, written out below, inverts one sample at a time, as the
paper's script did (method-spec §5.1): per step one gradient pass over that sample's beams
and one scoring pass over its beam x top-k candidates. The naive rate does not depend on S.
Before timing, both are run on a small float64 case and must return the same beams, so the
ratio compares equal work.

    python benchmarks/invert_search.py                                # S = invert.batch_samples
    python benchmarks/invert_search.py --samples 8 64 --out inv.json  # on a GPU
    python benchmarks/invert_search.py --prefix-length 4 --suffix-length 32 --samples 4 --naive-samples 2  # CPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from ilm.config import load_config_unchecked
from ilm.invert import BIGRAM, bigram_counts, placeholder_fn, repeat_count, search
from ilm.io import provenance, write_json
from ilm.model import build_model, resolve_device
from ilm.names import parse_variant
from ilm.objectives import ObjectiveConfig, embed, forward_ce, project_to_vocab

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_invert(model: torch.nn.Module, method: str, counts: torch.Tensor, suffix: torch.Tensor,
                 config: Mapping) -> tuple[list[list[int]], list[float]]:
    """One sample's beams (best first) and scores: a plain right-to-left beam search on its own.  suffix: (Ls,)"""
    inv, obj = config["invert"], config["objective"]
    _, gradient_only = parse_variant(method)
    objective = ObjectiveConfig.from_section(obj)
    place = placeholder_fn(method, inv["placeholder"], objective.placeholder_id, counts)
    beams = suffix.unsqueeze(0)  # (b, L): one beam, the suffix
    scores = torch.zeros(1)
    for step in range(inv["prefix_length"]):
        ids = torch.cat([place(beams).unsqueeze(1), beams], dim=1)  # (b, L+1)
        with torch.enable_grad():
            x = embed(model, ids).detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(forward_ce(model, x, objective.next_targets(ids), reduction="sum"), x)
        g = grad[:, 0] / (ids.shape[1] if inv["grad_scale"] == "paper" else obj["grad_scale_tokens"])  # (b, d)
        with torch.no_grad():
            v = g if gradient_only else x[:, 0] - g
            tokens = project_to_vocab(model, v).topk(inv["top_k"], dim=1).indices  # (b, K)
            cands = torch.cat([tokens.reshape(-1, 1), beams.repeat_interleave(inv["top_k"], dim=0)], dim=1)
            ce = forward_ce(model, embed(model, cands), cands[:, 1:], reduction="none")  # (b*K, L)
            score = ce.mean(dim=1).exp() + repeat_count(cands[:, : step + 1])
        order = torch.sort(score, stable=True).indices[: inv["beam"]]
        beams, scores = cands[order], score[order]
    return beams[:, : inv["prefix_length"]].tolist(), scores.tolist()


def check_same_beams(model: torch.nn.Module, method: str, counts: torch.Tensor, config: Mapping,
                     samples: int = 2, prefix_length: int = 3, suffix_length: int = 8) -> None:
    """Both searches return the same beams on a small float64 case (AssertionError otherwise)."""
    small = copy.deepcopy(model).double()
    cfg = {**config, "invert": {**config["invert"], "prefix_length": prefix_length}}
    vocab = model.config.vocab_size
    device = next(model.parameters()).device
    suffix = torch.randint(6, vocab, (samples, suffix_length), generator=torch.Generator().manual_seed(5)).to(device)
    batched = search(method, small, counts, suffix, cfg)
    for i in range(samples):
        beams, scores = naive_invert(small, method, counts, suffix[i], cfg)
        assert batched.prefixes[i].tolist() == beams, f"sample {i}: batched beams differ from the naive search's"
        assert torch.allclose(batched.scores[i].cpu(), torch.tensor(scores, dtype=torch.float64), rtol=1e-9)


def random_counts(vocab: int, window: int, seed: int, device: torch.device) -> torch.Tensor:
    """Bigram counts of random windows: the placeholder of the bigram-placeholder variants."""
    windows = torch.randint(vocab, (256, window), generator=torch.Generator().manual_seed(seed)).numpy()
    return torch.from_numpy(bigram_counts(windows, vocab)).to(device)


def measure_inversion(model: torch.nn.Module, method: str, counts: torch.Tensor, suffixes: torch.Tensor,
                      config: Mapping, samples: Sequence[int], naive_samples: int, repeats: int = 1) -> dict:
    """Samples/s of the batched search at each S and of the naive one, in the same run: rows and the naive rate.

    suffixes: (>= max(samples, naive_samples), Ls) on the model's device. One untimed search of
    each kind and shape runs first; then `repeats` rounds time the naive search and each S in
    turn, and the median rate of each is kept, so a busy neighbour slows both alike.
    """
    device = suffixes.device
    naive_invert(model, method, counts, suffixes[0], config)
    for S in samples:
        search(method, model, counts, suffixes[:S], config)

    def rate(fn, n: int) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return n / (time.perf_counter() - start)

    naive, batched = [], {S: [] for S in samples}
    for _ in range(repeats):
        naive.append(rate(lambda: [naive_invert(model, method, counts, suffixes[i], config)
                                   for i in range(naive_samples)], naive_samples))
        for S in samples:
            batched[S].append(rate(lambda: search(method, model, counts, suffixes[:S], config), S))
    naive_rate = statistics.median(naive)
    rows = [{"samples": S, "samples_per_second": statistics.median(batched[S]),
             "speedup": statistics.median(batched[S]) / naive_rate} for S in samples]
    return {"naive_samples_per_second": naive_rate, "naive_samples": naive_samples, "repeats": repeats, "rows": rows}


def setup(config: Mapping, device: torch.device, method: str, seed: int = 0):
    """The random-weight model (eval, frozen, as `ilm invert` loads it) and bigram counts."""
    if method != BIGRAM:
        parse_variant(method)
    torch.manual_seed(seed)
    model = build_model(config["model"]).to(device).eval().requires_grad_(False)
    counts = random_counts(config["model"]["vocab_size"], config["data"]["window"], seed + 1, device)
    return model, counts


def random_suffixes(config: Mapping, n: int, seed: int, device: torch.device) -> torch.Tensor:
    """(n, Ls) random suffixes of the length `invert:` gives (the rest of the window when suffix_length is null)."""
    inv = config["invert"]
    length = inv["suffix_length"] or config["data"]["window"] - inv["skip_tokens"] - inv["prefix_length"]
    vocab = config["model"]["vocab_size"]
    return torch.randint(6, vocab, (n, length), generator=torch.Generator().manual_seed(seed)).to(device)


def format_table(result: Mapping) -> str:
    lines = ["| S | batched samples/s | naive samples/s | speed-up |", "|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['samples']} | {r['samples_per_second']:.2f} | {result['naive_samples_per_second']:.2f} "
                     f"| {r['speedup']:.1f}x |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "config.yaml", help="its model, data, objective, invert")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--method", default="identity", help="a variant, or bigram (default identity)")
    p.add_argument("--samples", type=int, nargs="+", default=None, help="S searched together (default batch_samples)")
    p.add_argument("--naive-samples", type=int, default=4, help="samples the naive search inverts (timed)")
    p.add_argument("--prefix-length", type=int, default=None, help="default invert.prefix_length")
    p.add_argument("--suffix-length", type=int, default=None, help="default invert.suffix_length")
    p.add_argument("--repeats", type=int, default=1, help="timed rounds (medians kept)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in (("prefix_length", args.prefix_length), ("suffix_length", args.suffix_length))
                 if v is not None}
    config = load_config_unchecked(args.config, {"invert": overrides})
    samples = args.samples or [config["invert"]["batch_samples"]]
    if min(samples) < 1 or args.naive_samples < 1 or args.repeats < 1:
        raise ValueError("--samples, --naive-samples and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, counts = setup(config, device, args.method, args.seed)
    if args.method != BIGRAM:
        check_same_beams(model, args.method, counts, config)
    suffixes = random_suffixes(config, max(*samples, args.naive_samples), args.seed + 2, device)
    result = measure_inversion(model, args.method, counts, suffixes, config, samples, args.naive_samples,
                               args.repeats)
    inv = config["invert"]
    print(f"# {args.method} | {device} | prefix {inv['prefix_length']} | suffix {suffixes.shape[1]} | "
          f"beam {inv['beam']} | top-k {inv['top_k']}")
    print(format_table(result))
    if args.out is not None:
        write_json(args.out, {**result, **provenance(
            {"invert": dict(inv)}, method=args.method, device=str(device), suffix_length=int(suffixes.shape[1]),
            gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        )})
    return 0


if __name__ == "__main__":
    sys.exit(main())
