"""Greedy Coordinate Gradient (GCG) prefix attack on token ids (docs/method.md §4.2, §9.4).

The attack searches a `prefix_length`-token prefix x* that makes the model predict the
`target_length`-token target y, minimising the mean teacher-forced CE of y given x*
(the logit at position t-1 scores token t). Each step:

1. gradient of the loss w.r.t. the one-hot prefix (S, P, V), L2-normalised per position;
2. the `top_k` tokens with the most negative gradient at every position;
3. `search_width` candidates per sample, each replacing one uniformly random position
   with a uniformly random token from that position's top-k;
4. all candidates scored in no-grad forwards; the argmin becomes the current prefix even
   when it is worse (plain GCG); the best-so-far prefix is tracked.

Several samples are attacked together, but each sample draws its init and candidates from
its own generator in a fixed order and every sequence is scored on its own row, so a
sample's result depends neither on its batch mates nor on the chunking of the forwards.

Losses found during the search may be bf16 (autocast on CUDA). At the end, every prefix
that improved the best-so-far is re-scored in the model's own precision (fp32) and the
reported trajectory, best attack, `best_step` and `attack_loss` all come from those
re-scored losses, so the final trajectory value is exactly `attack_loss`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ilm.config import ConfigSection
from ilm.names import SPECIAL_TOKENS

log = logging.getLogger("ilm.gcg")

# Loss given to a candidate whose CE is NaN or inf, as the paper's GCG does (§4.2 step 4).
NONFINITE_LOSS = 1e6
# Floor of the per-position gradient norm before normalising (§4.2 step 2).
GRAD_NORM_FLOOR = 1e-8


@dataclass(frozen=True)
class GCGConfig(ConfigSection):
    """Settings of one GCG attack: the attack keys of the `gcg:` section (defaults and ranges: the schema)."""

    SECTION = "gcg"
    prefix_length: int  # P: adversarial prefix tokens (= original prefix length)
    target_length: int  # L: target tokens following the prefix
    steps: int  # GCG iterations per sample
    search_width: int  # W: candidates per sample per step
    top_k: int  # tokens per position with the most negative gradient
    seed: int  # base seed; each sample's generator also mixes in its sample seed
    allow_special_tokens: bool  # the paper allows ids 0-5 in the init and candidates
    max_candidates_per_forward: int  # memory budget of one candidate forward (sequences)
    precision: str  # bf16: autocast on CUDA (CPU always runs the model's dtype)
    device: str  # where attack_shard puts the model; run() uses the model's device


@dataclass
class GCGResult:
    """The outcome of attacking one sample."""

    attack_ids: list[int]  # (P,) best prefix found
    best_step: int  # 0-based step at which the best prefix was first reached
    trajectory: list[float]  # (steps,) best-so-far loss after every step (never increases)
    orig_loss: float  # target CE given the original prefix
    attack_loss: float  # target CE given attack_ids (= trajectory[-1])
    kl: float  # mean over target positions of KL(p_orig || p_attack), summed over the vocabulary
    seconds: float = 0.0  # wall-clock of the batched run divided by the samples in it


class Candidates(NamedTuple):
    """One step's candidates: ids (S, W, P); the position (S, W) and token (S, W) each one substituted."""

    ids: torch.Tensor
    positions: torch.Tensor
    tokens: torch.Tensor


def sample_generator(base_seed: int, sample_seed: int) -> torch.Generator:
    """A CPU generator private to one sample, seeded from (gcg.seed, sample seed)."""
    state = np.random.SeedSequence([int(base_seed), int(sample_seed)]).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(state))
    return gen


def allowed_token_ids(vocab_size: int, allow_special_tokens: bool) -> torch.Tensor:
    """Token ids the init and the candidates may use: all, or all but the special ids."""
    ids = torch.arange(vocab_size)
    if allow_special_tokens:
        return ids
    return ids[ids >= len(SPECIAL_TOKENS)]


def initial_prefix(generators: Sequence[torch.Generator], prefix_length: int, allowed: torch.Tensor) -> torch.Tensor:
    """(S, P) ids drawn uniformly from `allowed`, one draw per sample from its own generator."""
    rows = [allowed[torch.randint(len(allowed), (prefix_length,), generator=g)] for g in generators]
    return torch.stack(rows)


def top_k_substitutions(grad: torch.Tensor, k: int, banned: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(S, P, K) the k tokens per position with the most negative normalised gradient (§4.2 step 2).

    `grad` is (S, P, V); `banned` holds token ids that may never be proposed.
    """
    g = grad if grad.dtype == torch.float64 else grad.float()
    # Zero non-finite entries before the norm too, so one NaN cannot blank a whole position.
    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
    g = g / g.norm(dim=-1, keepdim=True).clamp_min(GRAD_NORM_FLOOR)
    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
    if banned is not None and len(banned):
        g[..., banned.to(g.device)] = float("inf")
    return g.topk(k, dim=-1, largest=False).indices


def sample_candidates(
    current: torch.Tensor,
    top_tokens: torch.Tensor,
    width: int,
    generators: Sequence[torch.Generator],
) -> Candidates:
    """`width` one-token substitutions of each sample's current prefix (§4.2 step 3).

    current: (S, P); top_tokens: (S, P, K). Candidate i of sample s replaces position
    positions[s, i] (uniform over P) by tokens[s, i] (uniform over that position's top-k).
    Draws come from the sample's own generator: positions first, then top-k ranks.
    """
    S, P = current.shape
    K = top_tokens.shape[-1]
    assert len(generators) == S, "one generator per sample"
    draws = [(torch.randint(P, (width,), generator=g), torch.randint(K, (width,), generator=g)) for g in generators]
    positions = torch.stack([d[0] for d in draws]).to(current.device)  # (S, W)
    ranks = torch.stack([d[1] for d in draws]).to(current.device)  # (S, W)
    tokens = top_tokens.reshape(S, P * K).gather(1, positions * K + ranks)  # (S, W)
    ids = current[:, None, :].expand(S, width, P).clone()  # (S, W, P)
    ids.scatter_(2, positions[..., None], tokens[..., None])
    return Candidates(ids, positions, tokens)


def use_sdpa_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a loaded model to PyTorch SDPA attention, faster than eager for candidate batches.

    ilm.model loads eager attention because training needs double backprop; the attack only
    takes first-order gradients, which SDPA supports.
    """
    model.set_attn_implementation("sdpa")
    return model


def _amp(model: torch.nn.Module, precision: str):
    device = next(model.parameters()).device
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16" and device.type == "cuda")


def target_logits(model: torch.nn.Module, embeds: torch.Tensor, prefix_length: int, target_length: int) -> torch.Tensor:
    """(N, L, V) logits predicting the target: LM head only at positions P-1 .. P+L-2.

    embeds: (N, P+L, H) input embeddings of [prefix, target].
    """
    hidden = model.model(inputs_embeds=embeds, use_cache=False).last_hidden_state  # (N, P+L, H)
    return model.lm_head(hidden[:, prefix_length - 1 : prefix_length + target_length - 1])  # (N, L, V)


def target_ce(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """(N,) mean CE over the target tokens, in at least fp32; NaN/inf become NONFINITE_LOSS."""
    N, L, V = logits.shape
    work = logits if logits.dtype == torch.float64 else logits.float()
    ce = F.cross_entropy(work.reshape(N * L, V), target_ids.reshape(N * L), reduction="none").view(N, L).mean(1)
    return torch.where(torch.isfinite(ce), ce, torch.full_like(ce, NONFINITE_LOSS))


@torch.no_grad()
def candidate_losses(
    model: torch.nn.Module,
    candidates: torch.Tensor,
    target_ids: torch.Tensor,
    max_per_forward: int,
    target_embeds: Optional[torch.Tensor] = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """(S, W) target CE of every candidate prefix (§4.2 step 4), in chunks of `max_per_forward` rows.

    candidates: (S, W, P) ids; target_ids: (S, L); target_embeds: (S, L, H), computed here if absent.
    All sequences have the same length and no padding, so a row's loss is independent of its chunk.
    """
    S, W, P = candidates.shape
    L = target_ids.shape[1]
    embed = model.get_input_embeddings()
    if target_embeds is None:
        target_embeds = embed(target_ids)  # (S, L, H)
    flat = candidates.reshape(S * W, P)  # (N, P)
    owner = torch.arange(S, device=candidates.device).repeat_interleave(W)  # (N,) sample of each row
    loss_dtype = torch.float64 if target_embeds.dtype == torch.float64 else torch.float32
    out = torch.empty(S * W, dtype=loss_dtype, device=candidates.device)  # (N,)
    with _amp(model, precision):
        for start in range(0, S * W, max_per_forward):
            rows = slice(start, min(start + max_per_forward, S * W))
            who = owner[rows]
            embeds = torch.cat([embed(flat[rows]), target_embeds[who]], dim=1)  # (n, P+L, H)
            logits = target_logits(model, embeds, P, L)  # (n, L, V)
            out[rows] = target_ce(logits, target_ids[who]).to(out.dtype)
    return out.view(S, W)


def prefix_gradient(
    model: torch.nn.Module,
    prefix_ids: torch.Tensor,
    target_ids: torch.Tensor,
    target_embeds: torch.Tensor,
    precision: str,
) -> torch.Tensor:
    """(S, P, V) gradient of each sample's target CE w.r.t. its one-hot prefix (§4.2 steps 1-2).

    The summed loss is differentiated; rows do not interact, so each sample gets its own gradient.
    """
    embed = model.get_input_embeddings()
    weight = embed.weight  # (V, H)
    S, P = prefix_ids.shape
    L = target_ids.shape[1]
    one_hot = F.one_hot(prefix_ids, weight.shape[0]).to(weight.dtype).requires_grad_(True)  # (S, P, V)
    with torch.enable_grad(), _amp(model, precision):
        embeds = torch.cat([one_hot @ weight, target_embeds.to(weight.dtype)], dim=1)  # (S, P+L, H)
        loss = target_ce(target_logits(model, embeds, P, L), target_ids).sum()
        (grad,) = torch.autograd.grad(loss, one_hot)
    return grad


@torch.no_grad()
def _final_metrics(
    model: torch.nn.Module, orig: torch.Tensor, attack: torch.Tensor, target_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(orig_loss (S,), kl (S,)) in the model's precision (§4.4): KL(p_orig || p_attack) per position."""
    S, P = orig.shape
    L = target_ids.shape[1]
    ids = torch.cat([torch.cat([orig, attack]), target_ids.repeat(2, 1)], dim=1)  # (2S, P+L)
    logits = target_logits(model, model.get_input_embeddings()(ids), P, L)  # (2S, L, V)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    orig_loss = target_ce(logits[:S], target_ids)
    kl = F.kl_div(logp[S:], logp[:S], log_target=True, reduction="none").sum(-1).mean(-1)  # (S,)
    return orig_loss, kl


def _check_inputs(
    prefix_ids: torch.Tensor,
    target_ids: torch.Tensor,
    sample_seeds: Sequence[int],
    config: GCGConfig,
    vocab_size: int,
    n_allowed: int,
) -> None:
    if prefix_ids.ndim != 2 or prefix_ids.shape[1] != config.prefix_length:
        raise ValueError(
            f"prefix_ids must be (samples, gcg.prefix_length={config.prefix_length}); got {tuple(prefix_ids.shape)}"
        )
    if target_ids.ndim != 2 or target_ids.shape != (prefix_ids.shape[0], config.target_length):
        raise ValueError(
            f"target_ids must be (samples, gcg.target_length={config.target_length}); got {tuple(target_ids.shape)}"
        )
    if len(sample_seeds) != prefix_ids.shape[0]:
        raise ValueError(f"need one sample seed per sample ({prefix_ids.shape[0]}); got {len(sample_seeds)}")
    for name, ids in (("prefix_ids", prefix_ids), ("target_ids", target_ids)):
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise ValueError(f"{name} holds ids outside the model vocabulary [0, {vocab_size})")
    if config.top_k > n_allowed:
        raise ValueError(
            f"gcg.top_k ({config.top_k}) is larger than the {n_allowed} tokens candidates may use; lower gcg.top_k"
        )


def run(
    model: torch.nn.Module,
    prefix_ids,
    target_ids,
    config: GCGConfig,
    sample_seeds: Sequence[int],
) -> list[GCGResult]:
    """Attack S samples together with GCG (docs/method.md §4.2); one GCGResult per sample.

    prefix_ids: (S, P) original prefixes (scored for orig_loss and kl, never used by the
    search); target_ids: (S, L). sample_seeds: one int per sample (its index in the test
    split) that, with config.seed, seeds the sample's private generator.
    """
    if isinstance(config, Mapping):
        config = GCGConfig.from_dict(config)
    started = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    vocab_size = int(model.config.vocab_size)
    prefix_ids = torch.as_tensor(np.asarray(prefix_ids), dtype=torch.long)
    target_ids = torch.as_tensor(np.asarray(target_ids), dtype=torch.long)
    allowed = allowed_token_ids(vocab_size, config.allow_special_tokens)
    _check_inputs(prefix_ids, target_ids, sample_seeds, config, vocab_size, len(allowed))
    S, P = prefix_ids.shape
    if S == 0:
        return []
    banned = None if config.allow_special_tokens else torch.arange(len(SPECIAL_TOKENS))
    prefix_ids, target_ids = prefix_ids.to(device), target_ids.to(device)
    generators = [sample_generator(config.seed, s) for s in sample_seeds]

    with torch.no_grad():
        target_embeds = model.get_input_embeddings()(target_ids)  # (S, L, H), computed once
    current = initial_prefix(generators, P, allowed).to(device)  # (S, P)
    search_dtype = torch.float64 if target_embeds.dtype == torch.float64 else torch.float32
    best_loss = torch.full((S,), float("inf"), dtype=search_dtype, device=device)  # (S,)
    visited = torch.empty((config.steps, S, P), dtype=torch.long, device=device)  # argmin prefix per step
    improved = torch.empty((config.steps, S), dtype=torch.bool, device=device)

    for step in tqdm(range(config.steps), desc="gcg", unit="step", leave=False, disable=None):
        grad = prefix_gradient(model, current, target_ids, target_embeds, config.precision)  # (S, P, V)
        top = top_k_substitutions(grad, config.top_k, banned)  # (S, P, K)
        cands = sample_candidates(current, top, config.search_width, generators)
        losses = candidate_losses(
            model, cands.ids, target_ids, config.max_candidates_per_forward, target_embeds, config.precision
        )  # (S, W)
        pick = losses.argmin(dim=1)  # (S,)
        step_loss = losses.gather(1, pick[:, None]).squeeze(1).to(best_loss.dtype)
        current = cands.ids[torch.arange(S, device=device), pick]  # plain GCG: move even if worse
        improved[step] = step_loss < best_loss
        best_loss = torch.minimum(best_loss, step_loss)
        visited[step] = current

    return _finalise(model, prefix_ids, target_ids, visited, improved, config, started)


def _finalise(
    model: torch.nn.Module,
    prefix_ids: torch.Tensor,
    target_ids: torch.Tensor,
    visited: torch.Tensor,
    improved: torch.Tensor,
    config: GCGConfig,
    started: float,
) -> list[GCGResult]:
    """Re-score every best-so-far prefix in full precision and build the results."""
    steps, S, P = visited.shape
    step_idx, sample_idx = improved.nonzero(as_tuple=True)  # every (step, sample) that improved the best
    rescored = _rescore(
        model, visited[step_idx, sample_idx], target_ids[sample_idx], config.max_candidates_per_forward
    )  # (n_improved,)
    at_step = np.full((steps, S), np.inf)  # (steps, S) re-scored loss where the best improved
    at_step[step_idx.cpu().numpy(), sample_idx.cpu().numpy()] = rescored.cpu().double().numpy()
    trajectory = np.minimum.accumulate(at_step, axis=0)  # (steps, S)
    best_step = at_step.argmin(axis=0)  # (S,) first step reaching the minimum
    attack = visited[torch.as_tensor(best_step, device=visited.device), torch.arange(S, device=visited.device)]
    orig_loss, kl = _final_metrics(model, prefix_ids, attack, target_ids)
    seconds = (time.perf_counter() - started) / S
    attack, orig_loss, kl = attack.cpu(), orig_loss.cpu(), kl.cpu()
    return [
        GCGResult(
            attack_ids=[int(t) for t in attack[s]],
            best_step=int(best_step[s]),
            trajectory=[float(v) for v in trajectory[:, s]],
            orig_loss=float(orig_loss[s]),
            attack_loss=float(trajectory[-1, s]),
            kl=float(kl[s]),
            seconds=seconds,
        )
        for s in range(S)
    ]


def _rescore(
    model: torch.nn.Module, prefixes: torch.Tensor, target_ids: torch.Tensor, max_per_forward: int
) -> torch.Tensor:
    """(N,) target CE of N (prefix, target) pairs in the model's own precision."""
    return candidate_losses(model, prefixes[:, None, :], target_ids, max_per_forward, precision="fp32")[:, 0]
