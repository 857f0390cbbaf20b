"""Independent reference computations the tests compare the package against.

Written the plain way: one sequence at a time, RMSNorm and the tied projection by hand,
log-softmax CE by hand. Nothing here calls ilm.objectives except to draw the same random
Bert-like positions.
"""

from __future__ import annotations

from typing import Optional

import torch

from ilm.names import BOS_ID, PAD_ID, UNK_ID


def sequence_gradient(
    model, ids_row: torch.Tensor, scale: float, last_unk: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, g) of one sequence: its embedding rows (T, d) and d(summed next-token CE)/dx / scale (T, d).

    last_unk: the last position is scored against <unk> too (the paper's shift_labels)."""
    x = model.model.embed_tokens.weight.detach()[ids_row].clone().unsqueeze(0).requires_grad_(True)  # (1, T, d)
    return x.detach()[0], _grad_of_nll(model(inputs_embeds=x).logits[0], ids_row, x, scale, last_unk)


def sequence_nll(logits: torch.Tensor, ids_row: torch.Tensor, last_unk: bool = False) -> torch.Tensor:
    """Per-position next-token NLL of one sequence from its logits (T, V): T-1 terms, or T with <unk> last."""
    targets = ids_row[1:]
    if last_unk:
        targets = torch.cat([targets, torch.tensor([UNK_ID])])
    return -torch.log_softmax(logits[: len(targets)], -1).gather(1, targets[:, None])[:, 0]


def _grad_of_nll(logits, ids_row, x, scale, last_unk=False):
    (g,) = torch.autograd.grad(sequence_nll(logits, ids_row, last_unk).sum(), x)
    return g[0] / scale


def project(model, v: torch.Tensor) -> torch.Tensor:
    """Manual RMSNorm (times the final norm's weight), then the tied embedding matrix: (M, d) -> (M, V)."""
    eps = model.config.rms_norm_eps
    h = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * model.model.norm.weight.detach()
    return h @ model.model.embed_tokens.weight.detach().T


def inverse_rows(
    model,
    ids: torch.Tensor,
    protocol: str,
    gradient_only: bool,
    scale: float,
    positions: Optional[torch.Tensor] = None,
    with_g: bool = True,
    placeholder: int = PAD_ID,
    exclude_last: bool = False,
    last_unk: bool = False,
    x_value: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse logits (M, V), targets (M,)) of a protocol, one sequence at a time.

    identity: every position (but the last with exclude_last) classifies its own token from
    x - g (or g); bert_like: `positions` (N, k) hold the placeholder and are classified;
    inv_first: position 0 holds <s> and is classified. Without g: from x (or from 0).
    last_unk: g includes the last position's <unk> term; x_value: x is that constant vector
    (the paper's Bert-like 3*1 - g) instead of the embedding rows.
    """
    logits, targets = [], []
    for b in range(ids.shape[0]):
        inp = ids[b].clone()
        if protocol == "bert_like":
            inp[positions[b]] = placeholder
        elif protocol == "inv_first":
            inp[0] = BOS_ID
        x = model.model.embed_tokens.weight.detach()[inp].clone().unsqueeze(0).requires_grad_(True)
        row_logits = model(inputs_embeds=x).logits[0]
        g = _grad_of_nll(row_logits, ids[b], x, scale, last_unk)  # targets are always the original tokens
        if not with_g:
            g = torch.zeros_like(g)
        x_rows = x.detach()[0] if x_value is None else torch.full_like(g, x_value)
        v = g if gradient_only else x_rows - g
        identity_rows = slice(0, ids.shape[1] - 1) if exclude_last else slice(None)
        rows = {"identity": identity_rows, "bert_like": positions[b] if positions is not None else None,
                "inv_first": slice(0, 1)}[protocol]
        logits.append(project(model, v[rows]))
        targets.append(ids[b][rows])
    return torch.cat(logits), torch.cat(targets)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE by hand: -log_softmax at the target."""
    return -torch.log_softmax(logits, -1).gather(1, targets[:, None]).mean()


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    """Rows whose target ranks among the k largest logits; ties count against the target.

    rank = number of other logits >= the target's, so a row of equal logits (g = 0 exactly at
    the last position projects to all-zero logits) is never correct, as torch.topk never picks a
    target id >= k among equal values there.
    """
    target_logit = logits.gather(1, targets[:, None])
    rank = (logits >= target_logit).sum(1) - 1
    return int((rank < k).sum())
