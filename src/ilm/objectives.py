"""The training objectives: forward next-token CE and the inverse (ILM) losses (docs/method.md §1).

Every ILM variant classifies token ids from a vector built out of g, the gradient of the
forward CE with respect to the input embeddings (§1.3, §1.5-§1.7):

    L = lambda_ce * L_fwd + lambda_inv * L_inv

Conventions that differ from the paper's code (docs/method.md §0), each with a switch to the paper's:
* the last position has no target (`objective.last_target: ignore`; the paper trained it to predict
  <unk>, `unk`, §9.1.4);
* g = d(summed CE)/dx / grad_scale_tokens, so its scale does not depend on the micro-batch (§9.1.2);
* Bert-like projects the <pad> embedding minus g (`objective.mask_placeholder: pad_frozen`), not the
  integer pad id minus g, 3*1 - g (`paper_int3`, §9.1.3);
* top-k inverse accuracy uses a sorted top-k (§9.6.1).

Under `create_graph=True` (training with `objective.double_backprop`, the default) g keeps its
graph and the loss is back-propagated through it (double backprop). With `create_graph=False`
g is a constant: the control that isolates the second-order term. Called under
`torch.no_grad()` (evaluation), g is still computed (grad mode is switched on locally, the
gradient is taken with respect to the embeddings only, so no parameter `.grad` is touched)
and every returned tensor is detached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ilm.config import ConfigSection
from ilm.names import (  # noqa: F401 (PROTOCOLS, VARIANTS re-exported)
    BOS_ID,
    MASK_ID,
    PAD_ID,
    PROTOCOLS,
    UNK_ID,
    VARIANTS,
    check_protocol,
    parse_variant,
)

@dataclass(frozen=True)
class ObjectiveConfig(ConfigSection):
    """The `objective:` section (defaults and ranges: the schema)."""

    SECTION = "objective"
    lambda_ce: float  # weight of the forward next-token CE
    lambda_inv: float  # weight of the inverse CE (the paper's lambda_pag)
    grad_scale_tokens: float  # g = d(sum CE)/dx / this; 65536 = the paper's 256x256 micro-batch mean
    mask_fraction: float  # Bert-like: share of positions replaced by the placeholder, at least one
    double_backprop: bool  # train through g (the paper) or treat g as a constant (a control)
    mask_placeholder: str  # pad_frozen | pad_trainable | mask | paper_int3: Bert-like's placeholder and x
    exclude_last_position: bool  # leave the last position out of Identity rows and Bert-like masks
    last_target: str  # ignore (no target, g == 0 there) | unk (the paper: the last position predicts <unk>)

    @property
    def placeholder_id(self) -> int:
        """The token id Bert-like puts at the masked positions."""
        return MASK_ID if self.mask_placeholder == "mask" else PAD_ID

    @property
    def frozen_pad_row(self) -> bool:
        """Whether the model's <pad> row is HF's padding_idx row: zero at init, no gradient (the paper)."""
        return self.mask_placeholder in ("pad_frozen", "paper_int3")

    def next_targets(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Forward CE targets: ids[:, 1:] (N, T-1), with <unk> appended for the last position under
        last_target = unk (N, T): the paper's shift_labels (method-spec §1.2)."""
        targets = input_ids[:, 1:]
        if self.last_target == "unk":
            targets = torch.cat([targets, torch.full_like(input_ids[:, :1], UNK_ID)], dim=1)
        return targets


@dataclass
class InverseRows:
    """The rows one inverse protocol classifies: x and g at those rows, the true ids, and their positions."""

    ce: torch.Tensor  # forward CE mean of the pass the protocol differentiates
    x: torch.Tensor  # (M, d) input embeddings at the rows (the placeholder's row; 3*1 for paper_int3)
    g: torch.Tensor  # (M, d) g at the rows
    targets: torch.Tensor  # (M,) the original token ids
    positions: torch.Tensor  # (M,) the position of each row in its window

    def vectors(self, gradient_only: bool, with_g: bool = True) -> torch.Tensor:
        """v: x - g (or g alone for the `*_grad` variants); without g, x (or 0): what g adds is the difference."""
        if with_g:
            return _combine(self.x, self.g, gradient_only)
        return torch.zeros_like(self.x) if gradient_only else self.x


@dataclass
class ObjectiveOutput:
    """What one micro-batch step of the objective produces."""

    loss: torch.Tensor  # scalar; differentiable (through g too when create_graph) unless called under no_grad
    ce: torch.Tensor  # forward CE, mean over predicted positions, detached
    inv_ce: Optional[torch.Tensor]  # inverse CE, detached; None for base
    inv_correct: dict[int, torch.Tensor]  # k -> inverse rows whose target is in the top-k, detached
    inv_rows: int  # rows of the inverse classification (0 for base)
    # With diagnostics=True (validation): the inverse CE of the same rows without g, and the mean of g^2 over the
    # rows' elements; both detached, None for base. How much g carries, and how large it is against the norm's eps.
    inv_ce_without_g: Optional[torch.Tensor] = None
    g_sq_mean: Optional[torch.Tensor] = None


def embed(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """E[input_ids], attached to the embedding weight.  (N, T) -> (N, T, d)"""
    return model.get_input_embeddings()(input_ids)


def forward_ce(
    model: torch.nn.Module, inputs_embeds: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token CE of logits at positions 0..T-2 against `targets` = ids[:, 1:] (N, T-1) (§1.2).

    The last position is not scored (docs/method.md §0) unless `targets` has T columns: then
    every position is (ObjectiveConfig.next_targets with last_target = unk, the paper's <unk>).
    `reduction`: mean | sum | none ("none" gives the targets' shape).
    """
    n, t = inputs_embeds.shape[:2]
    if targets.shape not in ((n, t - 1), (n, t)):
        raise ValueError(
            f"targets must have shape (N, T-1) = {(n, t - 1)} (or (N, T) with a last target), got {tuple(targets.shape)}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    scored = targets.shape[1]
    logits = model(inputs_embeds=inputs_embeds, use_cache=False).logits[:, :scored]  # (N, T-1 or T, V)
    logits = _upcast(logits)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)
    return ce.view(n, scored) if reduction == "none" else ce


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    # CE in half precision loses the small probabilities; float64 (tests) is kept as it is.
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def project_to_vocab(model: torch.nn.Module, v: torch.Tensor) -> torch.Tensor:
    """logits = RMSNorm_final(v) @ W_head.detach().T (§1.3).  (M, d) -> (M, V)

    The final norm is the model's own and is trained by the inverse loss; the tied head is
    detached so the projection sends no gradient into it.
    """
    head = model.get_output_embeddings()
    h = model.model.norm(v)  # (M, d)
    logits = h @ head.weight.detach().T  # (M, V)
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias.detach()
    return logits


def mask_count(seq_len: int, mask_fraction: float) -> int:
    """k = max(1, floor(mask_fraction * T)) masked positions per sequence (§1.6)."""
    return max(1, math.floor(mask_fraction * seq_len))


def draw_mask_positions(
    batch: int, seq_len: int, mask_fraction: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Bert-like positions among 0..seq_len-1: k per sequence, uniform without replacement (§1.6).

    -> (N, k), on the generator's device (CPU without one), so a seed draws the same mask anywhere.
    With `objective.exclude_last_position` the caller passes seq_len = T - 1.
    """
    k = mask_count(seq_len, mask_fraction)
    device = generator.device if generator is not None else torch.device("cpu")
    scores = torch.rand((batch, seq_len), generator=generator, device=device)  # (N, T)
    return scores.argsort(dim=1)[:, :k]  # (N, k)


def apply_mask(input_ids: torch.Tensor, positions: torch.Tensor, placeholder_id: int = PAD_ID) -> torch.Tensor:
    """A copy of `input_ids` (N, T) with the placeholder (<pad> by default) at `positions` (N, k) (§1.6)."""
    return input_ids.scatter(1, positions.to(input_ids.device), placeholder_id)


def _input_gradient(
    ce_sum: torch.Tensor, x: torch.Tensor, cfg: ObjectiveConfig, create_graph: bool, retain_graph: bool
) -> torch.Tensor:
    """g = d(summed CE)/dx / grad_scale_tokens (docs/method.md §0).  -> x.shape"""
    (grad,) = torch.autograd.grad(ce_sum, x, create_graph=create_graph, retain_graph=retain_graph)
    return grad / cfg.grad_scale_tokens


def _combine(x: torch.Tensor, g: torch.Tensor, gradient_only: bool) -> torch.Tensor:
    # grad-value strategy (`*_grad`, the paper's val-*) vs grad-subtract (§1.3)
    return g if gradient_only else x - g


def _check_input_ids(input_ids: torch.Tensor) -> None:
    if input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a (N, T) int64 tensor, got {tuple(input_ids.shape)} {input_ids.dtype}")
    if input_ids.shape[1] < 2:
        raise ValueError(
            f"input_ids must hold at least 2 tokens per sequence to have a next-token target, "
            f"got T={input_ids.shape[1]}"
        )


def _inverse_pass(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    protocol: str,
    cfg: ObjectiveConfig,
    generator: Optional[torch.Generator],
    create_graph: bool,
    retain_graph: bool,
) -> InverseRows:
    """x, g, targets and positions of the rows one protocol classifies; grad mode on."""
    n, t = input_ids.shape
    d = model.config.hidden_size
    targets_next = cfg.next_targets(input_ids)  # (N, T-1), or (N, T) with <unk> last: always the original tokens
    if protocol == "identity":  # §1.5: every position classifies its own token
        x = embed(model, input_ids)  # (N, T, d)
        ce = forward_ce(model, x, targets_next, reduction="none")  # (N, T-1 or T)
        g = _input_gradient(ce.sum(), x, cfg, create_graph, retain_graph)  # (N, T, d)
        keep = t - 1 if cfg.exclude_last_position else t  # without a last target its g is exactly 0
        positions = torch.arange(keep, device=input_ids.device).expand(n, keep)  # (N, T')
        x_rows, g_rows = x[:, :keep].reshape(-1, d), g[:, :keep].reshape(-1, d)  # (N*T', d)
        targets = input_ids[:, :keep].reshape(-1)  # (N*T',)
    elif protocol == "bert_like":  # §1.6: k positions -> placeholder, classify the originals there
        eligible = t - 1 if cfg.exclude_last_position else t
        positions = draw_mask_positions(n, eligible, cfg.mask_fraction, generator).to(input_ids.device)  # (N, k)
        masked_ids = apply_mask(input_ids, positions, cfg.placeholder_id)  # (N, T)
        x = embed(model, masked_ids)  # (N, T, d); x[b, positions[b]] == E[placeholder]
        ce = forward_ce(model, x, targets_next, reduction="none")  # (N, T-1 or T)
        g = _input_gradient(ce.sum(), x, cfg, create_graph, retain_graph)  # (N, T, d)
        rows = positions.unsqueeze(-1).expand(-1, -1, d)  # (N, k, d)
        x_rows, g_rows = x.gather(1, rows).reshape(-1, d), g.gather(1, rows).reshape(-1, d)  # (N*k, d)
        if cfg.mask_placeholder == "paper_int3":  # the paper's strategy(pad_token_id, g): the integer 3, 3*1 - g
            x_rows = torch.full_like(x_rows, float(PAD_ID))
        targets = input_ids.gather(1, positions).reshape(-1)  # (N*k,)
    elif protocol == "inv_first":  # §1.7: position 0 -> <s>, classify the original first token
        bos_ids = input_ids.clone()
        bos_ids[:, 0] = BOS_ID
        x = embed(model, bos_ids)  # (N, T, d)
        ce = forward_ce(model, x, targets_next, reduction="none")  # (N, T-1 or T)
        g = _input_gradient(ce.sum(), x, cfg, create_graph, retain_graph)  # (N, T, d)
        positions = torch.zeros((n, 1), dtype=torch.long, device=input_ids.device)  # (N, 1)
        x_rows, g_rows = x[:, 0], g[:, 0]  # (N, d)
        targets = input_ids[:, 0]  # (N,)
    else:
        raise AssertionError(f"unchecked protocol {protocol!r}")
    return InverseRows(ce=ce.mean(), x=x_rows, g=g_rows, targets=targets, positions=positions.reshape(-1))


def inverse_rows(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    protocol: str,
    cfg: ObjectiveConfig,
    generator: Optional[torch.Generator] = None,
) -> InverseRows:
    """x, g, targets and positions of one protocol's rows, detached (evaluation, §6.1)."""
    check_protocol(protocol)
    _check_input_ids(input_ids)
    with torch.enable_grad():
        rows = _inverse_pass(model, input_ids, protocol, cfg, generator, create_graph=False, retain_graph=False)
    return InverseRows(
        ce=rows.ce.detach(), x=rows.x.detach(), g=rows.g.detach(), targets=rows.targets, positions=rows.positions
    )


def inverse_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    protocol: str,
    gradient_only: bool,
    cfg: ObjectiveConfig,
    generator: Optional[torch.Generator] = None,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse classification of one protocol (§1.5-§1.7) on any model.

    Returns (forward CE mean of the pass the protocol differentiates, logits (M, V), targets (M,)).
    For bert_like that CE is the MASKED pass's, not the clean L_fwd. `generator` draws the
    Bert-like mask. The caller's `input_ids` is never modified. Under no_grad the results are
    detached; with grad enabled they stay differentiable.
    """
    check_protocol(protocol)
    _check_input_ids(input_ids)
    track = torch.is_grad_enabled()
    with torch.enable_grad():
        rows = _inverse_pass(
            model, input_ids, protocol, cfg, generator, create_graph, retain_graph=create_graph or track
        )
        ce, logits, targets = rows.ce, project_to_vocab(model, rows.vectors(gradient_only)), rows.targets
    if not track:
        ce, logits = ce.detach(), logits.detach()
    return ce, logits, targets


@torch.no_grad()
def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """k -> number of rows whose target is among the k largest logits (§9.6.1).  logits (M, V)

    A tie counts against the target: its rank is the number of other logits >= its own, so a
    row of equal logits (v = 0 projects to all-zero logits) is never correct.
    """
    return {k: hits.sum() for k, hits in topk_hits(logits, targets, ks).items()}


@torch.no_grad()
def topk_hits(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """k -> (M,) bool: whether each row's target is among the k largest logits, ties counted against."""
    if any(k < 1 for k in ks):
        raise ValueError(f"top-k values must be >= 1, got {list(ks)}")
    if not ks:
        return {}
    target_logit = logits.gather(1, targets.unsqueeze(-1))  # (M, 1)
    rank = (~(logits < target_logit)).sum(dim=-1) - 1  # (M,): other logits at least as large (NaN counts too)
    return {k: rank < k for k in ks}


def compute_objective(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    variant: str,
    cfg: ObjectiveConfig,
    generator: Optional[torch.Generator] = None,
    create_graph: bool = True,
    top_k: Sequence[int] = (1, 3, 5),
    diagnostics: bool = False,
) -> ObjectiveOutput:
    """L = lambda_ce * L_fwd + lambda_inv * L_inv for one micro-batch of a variant (§1.4-§1.7).

    `diagnostics` adds the inverse CE without g and the mean g^2 (one more head projection; validation only).

    identity / inv_first: one forward + one double backward (L_fwd comes from the pass that gives g).
    bert_like: a clean forward for L_fwd and a masked forward for g; the masked CE enters only
    through g. base: L_fwd only. `input_ids` (N, T) is never modified.
    """
    protocol, gradient_only = parse_variant(variant)
    _check_input_ids(input_ids)
    track = torch.is_grad_enabled()
    with torch.enable_grad():
        if protocol is None or protocol == "bert_like":
            with torch.set_grad_enabled(track):  # the clean pass needs no graph in evaluation
                ce = forward_ce(model, embed(model, input_ids), cfg.next_targets(input_ids))
        if protocol is None:
            loss = cfg.lambda_ce * ce
            inv_ce, inv_correct, inv_rows = None, {}, 0
        else:
            rows = _inverse_pass(
                model, input_ids, protocol, cfg, generator, create_graph, retain_graph=create_graph or track
            )
            logits, targets = project_to_vocab(model, rows.vectors(gradient_only)), rows.targets
            if protocol != "bert_like":
                ce = rows.ce
            inv_ce = F.cross_entropy(_upcast(logits), targets)
            loss = cfg.lambda_ce * ce + cfg.lambda_inv * inv_ce
            inv_correct = topk_correct(logits, targets, top_k)
            inv_rows = targets.numel()
            inv_ce = inv_ce.detach()
    without_g = g_sq = None
    if diagnostics and protocol is not None:
        with torch.no_grad():
            plain = project_to_vocab(model, rows.vectors(gradient_only, with_g=False).detach())
            without_g = F.cross_entropy(_upcast(plain), targets)
            g_sq = rows.g.detach().float().pow(2).mean()
    return ObjectiveOutput(
        loss=loss if track else loss.detach(),
        ce=ce.detach(),
        inv_ce=inv_ce,
        inv_correct=inv_correct,
        inv_rows=inv_rows,
        inv_ce_without_g=without_g,
        g_sq_mean=g_sq,
    )
