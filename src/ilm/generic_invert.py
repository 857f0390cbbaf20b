"""Generic inverters: the reference the beam search's grounding is measured against (docs/method.md §12.1).

Both search a prefix X' of invert.prefix_length tokens in front of the true suffix Y that minimises
CE(Y | X'), the mean teacher-forced CE of Y given X' under the variant's own model, on the same
windows as the beam search and within the same forward budget (ilm.forward_budget):

- `gcg`: GCG (ilm.gcg.run with target Y) started from the variant's placeholder repeated P times
  (Inv-First: <s>; Bert-like: the Bert-like placeholder; otherwise the reverse-bigram prediction of
  Y's first token, as invert.placeholder says), search width and top-k from invert.generic;
- `relaxed`: SODA-style (arXiv 2507.01693) relaxed one-hot inputs: logits Z (R, P, V) per sample,
  inputs softmax(Z / T) @ E, Adam on the relaxed CE, Z decayed after every step; every step also
  scores argmax(Z) as a discrete prefix, and the best discrete prefix over steps and restarts wins.

Each sample's random numbers are keyed by (invert.generic.seed, sample index), so a result does not
depend on which samples share a batch beyond floating-point summation order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ilm.forward_budget import steps_and_forwards
from ilm.gcg import GCGConfig, allowed_token_ids, run as gcg_run, target_ce, target_logits
from ilm.names import SPECIAL_TOKENS, parse_generic

RELAXED_INIT_STD = 1.0  # standard deviation of the relaxed logits at every start


@dataclass(frozen=True)
class GenericConfig:
    """The `invert.generic` keys the inverters read (defaults and ranges: the schema)."""

    seed: int
    allow_special_tokens: bool
    gcg_search_width: int
    gcg_top_k: int
    relaxed_restarts: int
    relaxed_lr: float
    relaxed_temperature: float
    relaxed_decay: float

    @classmethod
    def from_section(cls, generic: Mapping) -> "GenericConfig":
        return cls(**{k: generic[k] for k in cls.__dataclass_fields__})


@dataclass
class GenericResult:
    """One batch's inversions: one prefix per sample, its CE(Y | X'), and the forward-equivalents each spent."""

    prefixes: torch.Tensor  # (S, 1, P) the best prefix (one "beam", as the beam search's records hold)
    scores: torch.Tensor  # (S, 1) CE(Y | prefix) in the model's precision
    forwards: int  # per sample, within invert.generic's budget


Placeholder = Callable[[torch.Tensor], torch.Tensor]  # (S, L) sequences -> (S,) the token put in front of each


def placeholder_prefix(placeholder: Placeholder, suffix: torch.Tensor, prefix_length: int) -> torch.Tensor:
    """(S, P) the GCG inverter's start: the placeholder the beam search puts in front of each suffix (S, Ls)
    (ilm.invert.variant_placeholder), repeated prefix_length times."""
    return placeholder(suffix)[:, None].expand(-1, prefix_length).clone()


def invert_gcg(
    model: torch.nn.Module, init: torch.Tensor, suffix: torch.Tensor, samples: Sequence[int], steps: int,
    gen: GenericConfig, max_per_forward: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(best prefixes (S, P), their CE (S,)): GCG on CE(suffix | X') from `init` (S, P), `steps` steps."""
    config = GCGConfig(
        prefix_length=init.shape[1], target_length=suffix.shape[1], steps=steps, search_width=gen.gcg_search_width,
        top_k=gen.gcg_top_k, seed=gen.seed, allow_special_tokens=gen.allow_special_tokens,
        max_candidates_per_forward=max_per_forward, precision="fp32", device="auto", compile=False,
        candidates="gradient",
    )
    results = gcg_run(model, init.cpu(), suffix.cpu(), config, list(samples), init_ids=init.cpu())
    prefixes = torch.tensor([r.attack_ids for r in results], dtype=torch.long)
    return prefixes, torch.tensor([r.attack_loss for r in results], dtype=torch.float64)


def _sample_generator(seed: int, sample: int) -> torch.Generator:
    """A CPU generator keyed by (seed, sample) through numpy's SeedSequence (no collisions between pairs)."""
    state = np.random.SeedSequence([seed, sample]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


@torch.no_grad()
def suffix_ce(model: torch.nn.Module, prefix_embeds: torch.Tensor, suffix: torch.Tensor) -> torch.Tensor:
    """(N,) CE(suffix | prefix) of prefix embeddings (N, P, H) and suffix ids (N, Ls)."""
    embeds = torch.cat([prefix_embeds, model.get_input_embeddings()(suffix)], dim=1)
    return target_ce(target_logits(model, embeds, prefix_embeds.shape[1], suffix.shape[1]), suffix)


def invert_relaxed(
    model: torch.nn.Module, suffix: torch.Tensor, samples: Sequence[int], prefix_length: int, steps: int,
    gen: GenericConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(best discrete prefixes (S, P), their CE (S,), the CE of the first discrete prefix (S,)).

    All R restarts of all S samples run side by side as N = S * R rows (sample-major).
    """
    S, R, P = suffix.shape[0], gen.relaxed_restarts, prefix_length
    device = suffix.device
    weight = model.get_input_embeddings().weight  # (V, H)
    V = weight.shape[0]
    z = torch.cat([
        torch.randn((R, P, V), generator=_sample_generator(gen.seed, s)) * RELAXED_INIT_STD for s in samples
    ]).to(device=device, dtype=weight.dtype).requires_grad_(True)  # (N, P, V)
    banned = torch.zeros(V, dtype=torch.bool, device=device)
    if not gen.allow_special_tokens:
        banned[: len(SPECIAL_TOKENS)] = True
    mask = torch.zeros(V, dtype=weight.dtype, device=device).masked_fill(banned, float("-inf"))  # (V,)
    target = suffix.repeat_interleave(R, dim=0)  # (N, Ls)
    with torch.no_grad():
        target_embeds = model.get_input_embeddings()(target)  # (N, Ls, H)
    optimiser = torch.optim.Adam([z], lr=gen.relaxed_lr)
    best_loss = torch.full((S * R,), float("inf"), dtype=torch.float64, device=device)
    best_ids = torch.zeros((S * R, P), dtype=torch.long, device=device)
    first_loss = None
    for _ in range(steps):
        # the discrete prefix of the logits this step starts from: scored, never differentiated (1 forward)
        ids = (z.detach() + mask).argmax(dim=-1)  # (N, P)
        loss = suffix_ce(model, model.get_input_embeddings()(ids), target).double()  # (N,)
        first_loss = loss if first_loss is None else first_loss
        better = loss < best_loss
        best_ids[better], best_loss[better] = ids[better], loss[better]
        # the relaxed step (forward + backward: 3)
        with torch.enable_grad():
            probs = torch.softmax((z + mask) / gen.relaxed_temperature, dim=-1)  # (N, P, V)
            embeds = torch.cat([probs @ weight, target_embeds], dim=1)  # (N, P+Ls, H)
            relaxed = target_ce(target_logits(model, embeds, P, target.shape[1]), target)  # (N,)
            optimiser.zero_grad(set_to_none=True)
            relaxed.sum().backward()
        optimiser.step()
        with torch.no_grad():
            z.mul_(1 - gen.relaxed_decay)
    # the best restart of every sample
    pick = best_loss.view(S, R).argmin(dim=1)  # (S,)
    rows = torch.arange(S, device=device) * R + pick
    return best_ids[rows], best_loss[rows], first_loss.view(S, R)[:, 0]


def invert(
    method: str, model: torch.nn.Module, placeholder: Placeholder, suffix: torch.Tensor, samples: Sequence[int],
    config: Mapping,
) -> GenericResult:
    """Invert a batch of suffixes (S, Ls) of test windows `samples` with a generic method `<variant>+<inverter>`;
    `placeholder` is the variant's (ilm.invert.variant_placeholder), the GCG inverter's start."""
    parsed = parse_generic(method)
    if parsed is None:
        raise ValueError(f"{method!r} is not a generic inverter method (<variant>+gcg or <variant>+relaxed)")
    _, inverter = parsed
    inv = config["invert"]
    gen = GenericConfig.from_section(inv["generic"])
    steps, forwards = steps_and_forwards(inverter, inv)
    if steps < 1:
        raise ValueError(f"the {inverter} inverter gets no whole step within its budget; raise invert.generic.budget_ratio")
    if inverter == "gcg":
        allowed = allowed_token_ids(int(model.config.vocab_size), gen.allow_special_tokens)
        if gen.gcg_top_k > len(allowed):
            raise ValueError(f"invert.generic.gcg_top_k ({gen.gcg_top_k}) exceeds the {len(allowed)} usable tokens")
        init = placeholder_prefix(placeholder, suffix, inv["prefix_length"])
        max_per_forward = config["gcg"]["max_candidates_per_forward"]
        prefixes, scores = invert_gcg(model, init, suffix, samples, steps, gen, max_per_forward)
    else:
        prefixes, scores, _ = invert_relaxed(model, suffix, samples, inv["prefix_length"], steps, gen)
    return GenericResult(prefixes=prefixes.cpu()[:, None], scores=scores.cpu()[:, None], forwards=forwards)
