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

`gcg.candidates: uniform` replaces steps 2-3 by uniformly random substitutions (a uniform position,
a uniform allowed token): the same search, width, steps and candidate forwards without the
gradient's guidance, a random-search baseline that tells gradient masking from real robustness
(Athalye et al. 2018). Two diagnostics come with every result: `init_loss`, the loss of the random
start, and `rank_correlation`, how well the one-hot gradient ranks the candidates by their actual
loss change (Spearman between actual and first-order predicted loss changes). Under `uniform` the
gradient is still taken every step, but only for that measure: the candidates never depend on it,
so it ranks an unbiased draw of substitutions and is the value to compare across models; in
gradient mode it ranks the top-k shortlist the gradient itself chose (narrow spread, near 0 when
top_k < V whatever the gradient's quality).

Several samples are attacked together. Each sample's random numbers come from a counter-based
generator (Philox4x32-10) keyed by (gcg.seed, sample seed) and counted by (draw, step), computed
on the model's device, and every sequence is scored on its own row, so a sample's result depends
neither on its batch mates nor on the chunking of the forwards, and a step never waits for the
host: the per-step bookkeeping stays on the device until the search ends.

Losses found during the search may be bf16 (autocast on CUDA). At the end, every prefix
that improved the best-so-far is re-scored in the model's own precision (fp32) and the
reported trajectory, best attack, `best_step` and `attack_loss` all come from those
re-scored losses, so the final trajectory value is exactly `attack_loss`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ilm.config import ConfigSection
from ilm.names import SPECIAL_TOKENS
from ilm.philox import below, philox4x32, stream_keys
from ilm.progress import Progress

log = logging.getLogger("ilm.gcg")

# Loss given to a candidate whose CE is NaN or inf, as the paper's GCG does (§4.2 step 4).
NONFINITE_LOSS = 1e6
# Floor of the per-position gradient norm before normalising (§4.2 step 2).
GRAD_NORM_FLOOR = 1e-8
# The generator behind the init and the candidates; shard files record it, so a partial shard drawn
# from another generator (the per-sample torch.Generator streams before it) is never resumed.
SAMPLER = "philox4x32-10"
# Counter word 2 of a draw: which of a sample's draws it is. The uniform candidates have their own
# stream, so the two modes never share a draw and the gradient mode draws what it always drew.
INIT_STREAM, CANDIDATE_STREAM, UNIFORM_STREAM = 0, 1, 2


@dataclass(frozen=True)
class GCGConfig(ConfigSection):
    """Settings of one GCG attack: the attack keys of the `gcg:` section (defaults and ranges: the schema)."""

    SECTION = "gcg"
    prefix_length: int  # P: adversarial prefix tokens (= original prefix length)
    target_length: int  # L: target tokens following the prefix
    steps: int  # GCG iterations per sample
    search_width: int  # W: candidates per sample per step
    top_k: int  # tokens per position with the most negative gradient
    seed: int  # base seed; each sample's random stream is keyed by (seed, sample seed)
    allow_special_tokens: bool  # the paper allows ids 0-5 in the init and candidates
    max_candidates_per_forward: int  # memory budget of one candidate forward (sequences)
    precision: str  # bf16: autocast on CUDA (CPU always runs the model's dtype)
    device: str  # where attack_shard puts the model; run() uses the model's device
    compile: Union[str, bool]  # "auto" | True | False: torch.compile the candidate forward (auto: on CUDA only)
    candidates: str  # gradient (GCG's top-k) | uniform (gradient-free random substitutions, same budget)


@dataclass
class GCGResult:
    """The outcome of attacking one sample."""

    attack_ids: list[int]  # (P,) best prefix found
    best_step: int  # 0-based step at which the best prefix was first reached
    trajectory: list[float]  # (steps,) best-so-far loss after every step (never increases)
    orig_loss: float  # target CE given the original prefix
    attack_loss: float  # target CE given attack_ids (= trajectory[-1])
    kl: float  # mean over target positions of KL(p_orig || p_attack), summed over the vocabulary
    init_loss: float  # target CE given the random initial prefix, re-scored like the trajectory (drop = init - attack)
    # Mean over steps of the Spearman correlation between the W candidates' actual loss changes and their
    # first-order predictions from the one-hot gradient (steps where either side is constant left out; nan
    # when none counted). Over which candidates: under gcg.candidates: uniform, the uniformly drawn ones (the
    # gradient is taken only for this), an unbiased measure of the linearisation GCG relies on and the value to
    # compare across models (a masked gradient ranks them poorly, Athalye et al. 2018); under gradient, the
    # top-k shortlist the gradient chose, whose narrow spread keeps it near 0 when top_k < V.
    rank_correlation: float
    seconds: float = 0.0  # wall-clock of the batched run divided by the samples in it


class Candidates(NamedTuple):
    """One step's candidates: ids (S, W, P); the position (S, W) and token (S, W) each one substituted."""

    ids: torch.Tensor
    positions: torch.Tensor
    tokens: torch.Tensor


def sample_keys(base_seed: int, sample_seeds: Sequence[int]) -> torch.Tensor:
    """(S, 2) Philox keys, one per sample, from (gcg.seed, sample seed)."""
    return stream_keys(base_seed, sample_seeds)


def draw_words(keys: torch.Tensor, stream: int, step: int, n: int) -> torch.Tensor:
    """(S, n, 4) random 32-bit words: draw i of `stream` at `step` for each sample's key (S, 2).

    The counter is (i, step, stream, 0), so a sample's words depend only on its key and the counter.
    """
    idx = torch.arange(n, device=keys.device)  # (n,)
    counter = torch.stack([idx, torch.full_like(idx, step), torch.full_like(idx, stream), torch.zeros_like(idx)], -1)
    return philox4x32(counter[None], keys[:, None])  # (S, n, 4)


def allowed_token_ids(vocab_size: int, allow_special_tokens: bool) -> torch.Tensor:
    """Token ids the init and the candidates may use: all, or all but the special ids."""
    ids = torch.arange(vocab_size)
    if allow_special_tokens:
        return ids
    return ids[ids >= len(SPECIAL_TOKENS)]


def initial_prefix(keys: torch.Tensor, prefix_length: int, allowed: torch.Tensor) -> torch.Tensor:
    """(S, P) ids drawn uniformly from `allowed` (on the keys' device), from each sample's init stream."""
    words = draw_words(keys, INIT_STREAM, 0, prefix_length)[..., 0]  # (S, P)
    return allowed[below(words, len(allowed))]


def top_k_substitutions(grad: torch.Tensor, k: int, banned: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(S, P, K) the k tokens per position with the most negative normalised gradient (§4.2 step 2).

    `grad` is (S, P, V); `banned` holds token ids that may never be proposed (keep it on grad's
    device: the step then never copies from the host).
    """
    g = grad if grad.dtype == torch.float64 else grad.float()
    # Zero non-finite entries before the norm too, so one NaN cannot blank a whole position.
    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
    g = g / g.norm(dim=-1, keepdim=True).clamp_min(GRAD_NORM_FLOOR)
    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
    if banned is not None and len(banned):
        g = g.index_fill(-1, banned.to(g.device), float("inf"))
    return g.topk(k, dim=-1, largest=False).indices


def sample_candidates(
    current: torch.Tensor,
    top_tokens: torch.Tensor,
    width: int,
    keys: torch.Tensor,
    step: int,
) -> Candidates:
    """`width` one-token substitutions of each sample's current prefix (§4.2 step 3).

    current: (S, P); top_tokens: (S, P, K); keys: (S, 2) on current's device. Candidate i of
    sample s replaces position positions[s, i] (uniform over P) by tokens[s, i] (uniform over
    that position's top-k); both come from word 0 and 1 of draw i of the sample's candidate
    stream at `step`, one batched Philox call for all samples.
    """
    S, P = current.shape
    K = top_tokens.shape[-1]
    assert keys.shape == (S, 2), "one key per sample"
    words = draw_words(keys, CANDIDATE_STREAM, step, width)  # (S, W, 4)
    positions = below(words[..., 0], P)  # (S, W)
    ranks = below(words[..., 1], K)  # (S, W)
    tokens = top_tokens.reshape(S, P * K).gather(1, positions * K + ranks)  # (S, W)
    return _substitute(current, positions, tokens)


def uniform_candidates(
    current: torch.Tensor,
    allowed: torch.Tensor,
    width: int,
    keys: torch.Tensor,
    step: int,
) -> Candidates:
    """`width` one-token substitutions of each current prefix, drawn without a gradient (gcg.candidates: uniform).

    current: (S, P); allowed: (A,) ids on current's device; keys: (S, 2). Candidate i of sample s
    replaces a position uniform over P by a token uniform over `allowed`, from word 0 and 1 of
    draw i of the sample's uniform stream at `step` (UNIFORM_STREAM: never a gradient-mode draw).
    """
    S, P = current.shape
    assert keys.shape == (S, 2), "one key per sample"
    words = draw_words(keys, UNIFORM_STREAM, step, width)  # (S, W, 4)
    positions = below(words[..., 0], P)  # (S, W)
    tokens = allowed[below(words[..., 1], len(allowed))]  # (S, W)
    return _substitute(current, positions, tokens)


def _substitute(current: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor) -> Candidates:
    """Candidates (S, W, P): copies of current (S, P), copy w with tokens[s, w] at positions[s, w]."""
    S, P = current.shape
    ids = current[:, None, :].expand(S, positions.shape[1], P).clone()  # (S, W, P)
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


def causal_mask(model: torch.nn.Module, length: int, device: torch.device) -> torch.Tensor:
    """(1, 1, T, T) causal mask in the form the model's attention takes: bool for SDPA, additive for eager.

    Passing it ready-made keeps HF's mask builder out of the forward: without a mask it checks
    the position ids for packed sequences, reading a device value on the host every forward.
    """
    keep = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]  # (1, 1, T, T)
    if model.config._attn_implementation == "sdpa":
        return keep
    dtype = next(model.parameters()).dtype
    return torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)


def target_logits(model: torch.nn.Module, embeds: torch.Tensor, prefix_length: int, target_length: int) -> torch.Tensor:
    """(N, L, V) logits predicting the target: LM head only at positions P-1 .. P+L-2.

    embeds: (N, P+L, H) input embeddings of [prefix, target].
    """
    mask = causal_mask(model, embeds.shape[1], embeds.device)
    hidden = model.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state  # (N, P+L, H)
    return model.lm_head(hidden[:, prefix_length - 1 : prefix_length + target_length - 1])  # (N, L, V)


def target_ce(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """(N,) mean CE over the target tokens, in at least fp32; NaN/inf become NONFINITE_LOSS."""
    N, L, V = logits.shape
    work = logits if logits.dtype == torch.float64 else logits.float()
    ce = F.cross_entropy(work.reshape(N * L, V), target_ids.reshape(N * L), reduction="none").view(N, L).mean(1)
    return torch.where(torch.isfinite(ce), ce, torch.full_like(ce, NONFINITE_LOSS))


def score_chunk(
    model: torch.nn.Module, prefix_ids: torch.Tensor, target_embeds: torch.Tensor, target_ids: torch.Tensor
) -> torch.Tensor:
    """(n,) target CE of n sequences [prefix, target]: the candidate forward, static in shape.

    prefix_ids: (n, P); target_embeds: (n, L, H); target_ids: (n, L).
    """
    P, L = prefix_ids.shape[1], target_ids.shape[1]
    embeds = torch.cat([model.get_input_embeddings()(prefix_ids), target_embeds], dim=1)  # (n, P+L, H)
    return target_ce(target_logits(model, embeds, P, L), target_ids)


_compiled_score_chunk = None


def compiled_score_chunk():
    """score_chunk under torch.compile, built once per process (dynamo guards on the model and the shapes)."""
    global _compiled_score_chunk
    if _compiled_score_chunk is None:
        _compiled_score_chunk = torch.compile(score_chunk)
    return _compiled_score_chunk


def use_compile(setting, device: torch.device) -> bool:
    """Whether gcg.compile (auto | true | false) compiles the candidate forward on `device` (auto: CUDA only)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


@torch.no_grad()
def candidate_losses(
    model: torch.nn.Module,
    candidates: torch.Tensor,
    target_ids: torch.Tensor,
    max_per_forward: int,
    target_embeds: Optional[torch.Tensor] = None,
    precision: str = "fp32",
    compiled: bool = False,
) -> torch.Tensor:
    """(S, W) target CE of every candidate prefix (§4.2 step 4), in chunks of `max_per_forward` rows.

    candidates: (S, W, P) ids; target_ids: (S, L); target_embeds: (S, L, H), computed here if absent.
    All sequences have the same length and no padding, so a row's loss is independent of its chunk.
    `compiled` runs each chunk through torch.compile (one graph per chunk shape).
    """
    S, W, P = candidates.shape
    if target_embeds is None:
        target_embeds = model.get_input_embeddings()(target_ids)  # (S, L, H)
    flat = candidates.reshape(S * W, P)  # (N, P)
    loss_dtype = torch.float64 if target_embeds.dtype == torch.float64 else torch.float32
    out = torch.empty(S * W, dtype=loss_dtype, device=candidates.device)  # (N,)
    score = compiled_score_chunk() if compiled else score_chunk
    with _amp(model, precision):
        for start in range(0, S * W, max_per_forward):
            stop = min(start + max_per_forward, S * W)
            who = torch.arange(start, stop, device=candidates.device) // W  # (n,) sample of each row
            out[start:stop] = score(model, flat[start:stop], target_embeds[who], target_ids[who]).to(out.dtype)
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
    return prefix_loss_and_gradient(model, prefix_ids, target_ids, target_embeds, precision)[1]


def prefix_loss_and_gradient(
    model: torch.nn.Module,
    prefix_ids: torch.Tensor,
    target_ids: torch.Tensor,
    target_embeds: torch.Tensor,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss (S,), grad (S, P, V)): each sample's target CE given its prefix and prefix_gradient's gradient of it."""
    embed = model.get_input_embeddings()
    weight = embed.weight  # (V, H)
    S, P = prefix_ids.shape
    L = target_ids.shape[1]
    # scatter, not F.one_hot: on CPU one_hot reads the ids' min and max back to the host.
    one_hot = torch.zeros(S, P, weight.shape[0], dtype=weight.dtype, device=weight.device)
    one_hot = one_hot.scatter_(2, prefix_ids[..., None], 1.0).requires_grad_(True)  # (S, P, V)
    with torch.enable_grad(), _amp(model, precision):
        embeds = torch.cat([one_hot @ weight, target_embeds.to(weight.dtype)], dim=1)  # (S, P+L, H)
        loss = target_ce(target_logits(model, embeds, P, L), target_ids)  # (S,)
        (grad,) = torch.autograd.grad(loss.sum(), one_hot)
    return loss.detach(), grad


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """(S, W) float64 1-based ranks of x (S, W) along the last axis, ties sharing their average rank (scipy's rankdata).

    Sorted once and located with searchsorted: no pairwise (W, W) table, no data-dependent shape.
    """
    s = x.sort(dim=-1).values  # (S, W)
    lower = torch.searchsorted(s, x, side="left")  # (S, W) entries below x
    upper = torch.searchsorted(s, x, side="right")  # (S, W) entries at or below x
    return (lower + upper + 1).to(torch.float64) / 2


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(S,) Spearman correlation of each row of x and y (S, W): Pearson of average ranks; nan for a constant row."""
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(-1, keepdim=True), ry - ry.mean(-1, keepdim=True)
    return (dx * dy).sum(-1) / ((dx * dx).sum(-1) * (dy * dy).sum(-1)).sqrt()


def gradient_rank_correlation(
    grad: torch.Tensor, current: torch.Tensor, current_loss: torch.Tensor, cands: Candidates, losses: torch.Tensor
) -> torch.Tensor:
    """(S,) Spearman correlation of the candidates' actual and first-order predicted loss changes at one step.

    grad: (S, P, V) unnormalised gradient of the target CE at the one-hot of current (S, P);
    current_loss: (S,); losses: (S, W) of cands. A substitution of token v for u at position p is
    predicted to change the loss by grad[p, v] - grad[p, u]; the actual change is its loss minus
    current_loss. NaN predictions rank above everything (the gradient made no usable claim).
    """
    S, P, V = grad.shape
    at_current = grad.gather(2, current[..., None]).squeeze(-1)  # (S, P)
    predicted = grad.reshape(S, P * V).gather(1, cands.positions * V + cands.tokens)  # (S, W)
    predicted = predicted - at_current.gather(1, cands.positions)
    predicted = torch.where(torch.isnan(predicted), torch.full_like(predicted, float("inf")), predicted)
    actual = losses - current_loss[:, None].to(losses.dtype)  # (S, W)
    return spearman(actual, predicted)


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
    if config.candidates == "gradient" and config.top_k > n_allowed:
        raise ValueError(
            f"gcg.top_k ({config.top_k}) is larger than the {n_allowed} tokens candidates may use; lower gcg.top_k"
        )


@dataclass(frozen=True)
class Search:
    """What every step of one run() reads, all on the model's device."""

    model: torch.nn.Module
    target_ids: torch.Tensor  # (S, L)
    target_embeds: torch.Tensor  # (S, L, H), computed once
    keys: torch.Tensor  # (S, 2) Philox key of each sample
    banned: Optional[torch.Tensor]  # token ids never proposed, or None
    allowed: torch.Tensor  # (A,) token ids the uniform candidates draw from (the complement of banned)
    config: GCGConfig
    compiled: bool  # candidate forward under torch.compile


@dataclass
class SearchState:
    """The search so far, on the device; search_step updates it in place."""

    current: torch.Tensor  # (S, P) prefix the next step starts from
    best_loss: torch.Tensor  # (S,) best-so-far search loss
    visited: torch.Tensor  # (steps, S, P) argmin prefix of every step
    improved: torch.Tensor  # (steps, S) whether that step improved the best-so-far loss
    rank_corr_sum: torch.Tensor  # (S,) float64 sum of the finite per-step gradient rank correlations
    rank_corr_steps: torch.Tensor  # (S,) float64 how many steps added to it


def search_step(search: Search, state: SearchState, step: int) -> None:
    """One GCG step (§4.2 steps 1-5) for every sample, without host synchronisation.

    Every shape is fixed by the config and every value stays on the device (no .item(), no
    copy to or from the host, no data-dependent shape), so a CUDA stream never waits for the CPU.
    Under gcg.candidates: uniform, steps 2-3 are uniform substitutions; the gradient of step 1 is
    still taken, but only to measure rank_correlation over them: the candidates never depend on it.
    """
    cfg = search.config
    current_loss, grad = prefix_loss_and_gradient(
        search.model, state.current, search.target_ids, search.target_embeds, cfg.precision
    )  # (S,), (S, P, V)
    if cfg.candidates == "uniform":
        cands = uniform_candidates(state.current, search.allowed, cfg.search_width, search.keys, step)
    else:
        top = top_k_substitutions(grad, cfg.top_k, search.banned)  # (S, P, K)
        cands = sample_candidates(state.current, top, cfg.search_width, search.keys, step)
    losses = candidate_losses(
        search.model, cands.ids, search.target_ids, cfg.max_candidates_per_forward, search.target_embeds,
        cfg.precision, search.compiled,
    )  # (S, W)
    rho = gradient_rank_correlation(grad, state.current, current_loss, cands, losses)  # (S,)
    counts = torch.isfinite(rho)  # a constant side (e.g. W = 1) makes rho nan: that step counts for nothing
    state.rank_corr_sum += torch.where(counts, rho, torch.zeros_like(rho))
    state.rank_corr_steps += counts
    pick = losses.argmin(dim=1, keepdim=True)  # (S, 1)
    step_loss = losses.gather(1, pick).squeeze(1).to(state.best_loss.dtype)  # (S,)
    rows = torch.arange(len(pick), device=pick.device)
    state.current = cands.ids[rows, pick[:, 0]]  # (S, P) plain GCG: move even if worse
    state.improved[step] = step_loss < state.best_loss
    torch.minimum(state.best_loss, step_loss, out=state.best_loss)
    state.visited[step] = state.current


def run(
    model: torch.nn.Module,
    prefix_ids,
    target_ids,
    config: GCGConfig,
    sample_seeds: Sequence[int],
    progress: Optional[Progress] = None,
    init_ids=None,
) -> list[GCGResult]:
    """Attack S samples together with GCG (docs/method.md §4.2); one GCGResult per sample.

    prefix_ids: (S, P) original prefixes (scored for orig_loss and kl, never used by the
    search); target_ids: (S, L). sample_seeds: one int per sample (its index in the test
    split) that, with config.seed, keys the sample's random stream. `progress`, if given,
    counts S sample-steps per step. `init_ids` (S, P), if given, is the start instead of the
    random prefix (the GCG inverter starts from a placeholder, ilm.generic_invert); it may hold
    any id of the vocabulary, banned ones included (the candidates never propose those).
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
    if init_ids is not None:
        init_ids = torch.as_tensor(np.asarray(init_ids), dtype=torch.long)
        if init_ids.shape != prefix_ids.shape:
            raise ValueError(f"init_ids must be shaped as prefix_ids {tuple(prefix_ids.shape)}; got {tuple(init_ids.shape)}")
        if init_ids.numel() and (int(init_ids.min()) < 0 or int(init_ids.max()) >= vocab_size):
            raise ValueError(f"init_ids holds ids outside the model vocabulary [0, {vocab_size})")
    S, P = prefix_ids.shape
    if S == 0:
        return []
    banned = None if config.allow_special_tokens else torch.arange(len(SPECIAL_TOKENS), device=device)
    prefix_ids, target_ids = prefix_ids.to(device), target_ids.to(device)
    keys = sample_keys(config.seed, sample_seeds).to(device)  # (S, 2)

    with torch.no_grad():
        target_embeds = model.get_input_embeddings()(target_ids)  # (S, L, H), computed once
    search_dtype = torch.float64 if target_embeds.dtype == torch.float64 else torch.float32
    allowed = allowed.to(device)
    search = Search(
        model, target_ids, target_embeds, keys, banned, allowed, config, use_compile(config.compile, device)
    )
    init = initial_prefix(keys, P, allowed) if init_ids is None else init_ids.to(device)  # (S, P)
    state = SearchState(
        current=init,
        best_loss=torch.full((S,), float("inf"), dtype=search_dtype, device=device),
        visited=torch.empty((config.steps, S, P), dtype=torch.long, device=device),
        improved=torch.empty((config.steps, S), dtype=torch.bool, device=device),
        rank_corr_sum=torch.zeros(S, dtype=torch.float64, device=device),
        rank_corr_steps=torch.zeros(S, dtype=torch.float64, device=device),
    )
    for step in range(config.steps):
        search_step(search, state, step)
        if progress is not None:  # host-side count: on CUDA it runs ahead of the queued kernels by a few steps
            progress.update(S)
    # The first host synchronisation: the search is over.
    return _finalise(model, prefix_ids, target_ids, init, state, config, started)


def _finalise(
    model: torch.nn.Module,
    prefix_ids: torch.Tensor,
    target_ids: torch.Tensor,
    init: torch.Tensor,
    state: SearchState,
    config: GCGConfig,
    started: float,
) -> list[GCGResult]:
    """Re-score every best-so-far prefix and the initial prefix (S, P) in full precision and build the results."""
    visited, improved = state.visited, state.improved
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
    # A separate call, so the trajectory's re-scoring forwards are the ones they always were.
    init_loss = _rescore(model, init, target_ids, config.max_candidates_per_forward)  # (S,)
    rank_correlation = state.rank_corr_sum / state.rank_corr_steps  # (S,) 0/0 = nan where no step counted
    seconds = (time.perf_counter() - started) / S
    attack, orig_loss, kl = attack.cpu(), orig_loss.cpu(), kl.cpu()
    init_loss, rank_correlation = init_loss.cpu(), rank_correlation.cpu()
    return [
        GCGResult(
            attack_ids=[int(t) for t in attack[s]],
            best_step=int(best_step[s]),
            trajectory=[float(v) for v in trajectory[:, s]],
            orig_loss=float(orig_loss[s]),
            attack_loss=float(trajectory[-1, s]),
            kl=float(kl[s]),
            init_loss=float(init_loss[s]),
            rank_correlation=float(rank_correlation[s]),
            seconds=seconds,
        )
        for s in range(S)
    ]


def _rescore(
    model: torch.nn.Module, prefixes: torch.Tensor, target_ids: torch.Tensor, max_per_forward: int
) -> torch.Tensor:
    """(N,) target CE of N (prefix, target) pairs in the model's own precision."""
    return candidate_losses(model, prefixes[:, None, :], target_ids, max_per_forward, precision="fp32")[:, 0]
