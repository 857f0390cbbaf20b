"""GCG throughput: sample-steps per second of `ilm.gcg.run` against a naive one-sample GCG.

The paper model (config.yaml `model:`) with random weights. The naive reference attacks one
sample at a time and scores candidates with a plain HF forward (full-sequence logits), as a
straightforward GCG implementation would, with the eager attention `ilm.model.load_model`
gives; `run` uses SDPA attention as `ilm gcg-attack` does. The naive rate does not depend
on S, so it is measured once. On CUDA both run under bf16 autocast.

    python benchmarks/gcg_step.py                         # width 4096 on CUDA, 256 on CPU; S in {1, 8, 64}
    python benchmarks/gcg_step.py --width 256 --steps 2 --samples 1 8 --threads 1 --chunk 128   # CPU
    python benchmarks/gcg_step.py ... --compile on     # gcg.compile forced on (auto: CUDA only)
    python benchmarks/gcg_step.py --check-sync         # CUDA: first fail if a GCG step synchronises with the host

On a CPU, small chunks (gcg.max_candidates_per_forward ~128) keep activations in cache and
are ~2x faster than one big forward; on a GPU, large chunks are what saturate it.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ilm.config import load_config
from ilm.gcg import GCGConfig, run, use_compile, use_sdpa_attention
from ilm.model import build_model, resolve_device

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def naive_attack(model, prefix: torch.Tensor, target: torch.Tensor, cfg: GCGConfig, seed: int) -> float:
    """Plain single-sample GCG (full logits, one candidate batch per step); returns the last best loss."""
    gen = torch.Generator().manual_seed(seed)
    weight = model.get_input_embeddings().weight  # (V, H)
    V, P = weight.shape[0], cfg.prefix_length
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=weight.device.type == "cuda" and cfg.precision == "bf16")
    current = torch.randint(V, (P,), generator=gen).to(weight.device)
    best = float("inf")
    for _ in range(cfg.steps):
        one_hot = F.one_hot(current, V).to(weight.dtype).requires_grad_(True)  # (P, V)
        with amp:
            embeds = torch.cat([one_hot @ weight, model.get_input_embeddings()(target)])[None]  # (1, P+L, H)
            logits = model(inputs_embeds=embeds).logits[0, P - 1 : -1]  # (L, V)
            loss = F.cross_entropy(logits.float(), target)
        (grad,) = torch.autograd.grad(loss, one_hot)  # (P, V)
        top = (grad / grad.norm(dim=-1, keepdim=True)).topk(cfg.top_k, dim=-1, largest=False).indices  # (P, K)
        pos = torch.randint(P, (cfg.search_width,), generator=gen).to(weight.device)
        rank = torch.randint(cfg.top_k, (cfg.search_width,), generator=gen).to(weight.device)
        cands = current.repeat(cfg.search_width, 1)  # (W, P)
        cands[torch.arange(cfg.search_width), pos] = top[pos, rank]
        with torch.no_grad(), amp:
            ids = torch.cat([cands, target.repeat(cfg.search_width, 1)], dim=1)  # (W, P+L)
            logits = model(input_ids=ids).logits[:, P - 1 : -1].float()  # (W, L, V)
            losses = F.cross_entropy(logits.transpose(1, 2), target.repeat(cfg.search_width, 1), reduction="none")
            losses = losses.mean(1)  # (W,)
        i = int(losses.argmin())
        current = cands[i]
        best = min(best, float(losses[i]))
    return best


def check_no_sync(model, prefix: torch.Tensor, target: torch.Tensor, cfg: GCGConfig, samples: int) -> None:
    """Run every step of a warmed-up attack under torch.cuda.set_sync_debug_mode("error") (CUDA only)."""
    import ilm.gcg

    real_step = ilm.gcg.search_step

    def guarded(search, state, step):
        torch.cuda.set_sync_debug_mode("error")
        try:
            real_step(search, state, step)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    run(model, prefix[:samples], target[:samples], cfg, list(range(samples)))  # warm-up (compilation may sync)
    ilm.gcg.search_step = guarded
    try:
        run(model, prefix[:samples], target[:samples], cfg, list(range(samples)))
    finally:
        ilm.gcg.search_step = real_step
    print(f"# sync check: {cfg.steps} steps x {samples} samples ran with no host synchronisation")


def measure(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def gcg_rates(model, attack_model, gcfg: GCGConfig, data: torch.Tensor, samples, device: torch.device):
    """(naive sample-steps/s, [{samples, sample_steps_per_second, speedup}]) measured in one run.

    data: (>= max(samples), >= P + L) token ids; each sample attacks data[i, P:P+L] from data[i, :P].
    Each path is warmed up first (allocator, kernels, any compilation) by a one-step attack of
    the same shape as the timed one.
    """
    P, L, steps = gcfg.prefix_length, gcfg.target_length, gcfg.steps
    warm = GCGConfig(**{**gcfg.__dict__, "steps": 1})
    naive_attack(model, data[0, :P].to(device), data[0, P : P + L].to(device), warm, 0)
    naive_s = measure(
        lambda: naive_attack(model, data[0, :P].to(device), data[0, P : P + L].to(device), gcfg, 0), device
    )
    naive_rate = steps / naive_s
    rows = []
    for S in samples:
        run(attack_model, data[:S, :P], data[:S, P : P + L], warm, list(range(S)))
        seconds = measure(lambda: run(attack_model, data[:S, :P], data[:S, P : P + L], gcfg, list(range(S))), device)
        rate = S * steps / seconds
        rows.append({"samples": S, "sample_steps_per_second": rate, "speedup": rate / naive_rate})
    return naive_rate, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--width", type=int, default=None, help="candidates per step (default 4096 CUDA, 256 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed GCG steps (default 10 CUDA, 2 CPU)")
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 8, 64], help="samples attacked together")
    parser.add_argument("--top-k", type=int, default=None, help="default: gcg.top_k")
    parser.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="default: gcg.precision")
    parser.add_argument(
        "--chunk", type=int, default=None, help="gcg.max_candidates_per_forward (default: config; CPUs like ~128)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--check-sync", action="store_true", help="CUDA: first check that no GCG step synchronises with the host"
    )
    parser.add_argument(
        "--compile", default=None, choices=["auto", "on", "off"], help="gcg.compile (default: config; auto = CUDA only)"
    )
    args = parser.parse_args()

    cfg = load_config(args.config)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    width = args.width or (4096 if cuda else 256)
    steps = args.steps or (10 if cuda else 2)
    torch.manual_seed(0)
    model = build_model(cfg["model"]).to(device).eval()  # eager attention, as ilm.model loads it
    attack_model = use_sdpa_attention(copy.deepcopy(model))  # what `ilm gcg-attack` runs
    window = cfg["data"]["window"]
    vocab = cfg["model"]["vocab_size"]
    gcfg = GCGConfig.from_dict(
        {
            **cfg["gcg"],
            "search_width": width,
            "steps": steps,
            "top_k": args.top_k or cfg["gcg"]["top_k"],
            "max_candidates_per_forward": args.chunk or cfg["gcg"]["max_candidates_per_forward"],
            "precision": args.precision or cfg["gcg"]["precision"],
            "compile": {"on": True, "off": False, "auto": "auto", None: cfg["gcg"]["compile"]}[args.compile],
        }
    )
    data = torch.randint(vocab, (max(args.samples), window), generator=torch.Generator().manual_seed(1))
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"# {name} | model {sum(p.numel() for p in model.parameters()):,} params | width {width} | "
        f"top-k {gcfg.top_k} | chunk {gcfg.max_candidates_per_forward} | steps {steps} | "
        f"precision {gcfg.precision if cuda else 'fp32'} | compile {use_compile(gcfg.compile, device)}"
    )

    if args.check_sync:
        P, L = gcfg.prefix_length, gcfg.target_length
        if not cuda:
            raise SystemExit("--check-sync needs CUDA (on CPU, tests/test_gcg.py runs the same check)")
        check_no_sync(attack_model, data[:, :P], data[:, P : P + L], GCGConfig(**{**gcfg.__dict__, "steps": 2}), 2)

    naive_rate, rows = gcg_rates(model, attack_model, gcfg, data, args.samples, device)
    print(f"{'S':>4} | {'ilm.gcg.run sample-steps/s':>26} | {'naive sample-steps/s':>20} | {'speed-up':>8}")
    for row in rows:
        print(f"{row['samples']:>4} | {row['sample_steps_per_second']:>26.2f} | {naive_rate:>20.2f} | "
              f"{row['speedup']:>7.1f}x")


if __name__ == "__main__":
    main()
