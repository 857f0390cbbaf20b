"""The pilot's classifier, its four training losses and training with selection on a validation split.

Losses (method-spec §6.7; x is the input embedding, f the MLP, CE the batch-mean cross-entropy):

* `baseline`: CE(f(x), y).
* `pag_identity`: lambda_ce CE + lambda_pag (1 - mean_i cos(grad_x CE, x_i)).
* `pag_score_similar_samples`: for each class c, K training embeddings r_a of class c and targets
  r_a - x_i; the gradient of -CE(f(x), c) (every sample labelled c) should point at them:
  1 - cos over the feature dimension for each (a, i); the mean over pairs, averaged over classes.
* `pag_score_similar_features`: the same with r_a of any class, the gradient of +CE, and the cosine
  across the batch dimension (one per feature): the paper's code, kept as the paper's choice
  (method-spec §9.7 finds it unintended).

The gradients are taken with create_graph=True, so the PAG term trains the weights (double backprop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ilm.pilot.config import PILOT_VARIANTS, PilotConfig
from ilm.progress import Progress

log = logging.getLogger("ilm.pilot")


class PilotMLP(nn.Module):
    """dim -> h1 -> LayerNorm -> ReLU -> ... -> classes (768 -> 384 -> 128 -> C in the paper), Kaiming-normal."""

    def __init__(self, dim: int, hidden_sizes: tuple, classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden_sizes:
            layers += [nn.Linear(dim, width), nn.LayerNorm(width), nn.ReLU()]
            dim = width
        layers.append(nn.Linear(dim, classes))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        return self.net(x)


@dataclass
class ClassBank:
    """The training embeddings the score-based variants draw their K targets from."""

    embeddings: torch.Tensor  # (N, D)
    by_class: list  # class -> (N_c,) indices into embeddings

    @classmethod
    def build(cls, embeddings: torch.Tensor, labels: torch.Tensor, classes: int) -> "ClassBank":
        return cls(embeddings, [torch.nonzero(labels == c).flatten() for c in range(classes)])

    def draw(self, k: int, c: Optional[int], gen: torch.Generator) -> torch.Tensor:
        """k distinct embeddings of class c (of any class when c is None): (k, D)."""
        pool = torch.arange(len(self.embeddings)) if c is None else self.by_class[c]
        pick = pool[torch.randperm(len(pool), generator=gen)[:k]]
        return self.embeddings[pick.to(self.embeddings.device)]


def _input_grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(loss, x, create_graph=True)[0]  # (B, D)


def pag_score_loss(model: nn.Module, x: torch.Tensor, logits: torch.Tensor, bank: ClassBank, k: int,
                   per_sample: bool, gen: torch.Generator) -> torch.Tensor:
    """The score-based PAG term (x requires grad; logits = model(x)); see the module docstring."""
    classes = logits.shape[1]
    total = x.new_zeros(())
    for c in range(classes):
        r = bank.draw(k, c if per_sample else None, gen)  # (K, D)
        k_ = r.shape[0]
        targets = (r[:, None, :] - x[None, :, :]).reshape(k_ * len(x), -1)  # (K*B, D), row a*B + i
        ce_c = F.cross_entropy(logits, torch.full((len(x),), c, device=x.device))
        sign = -1.0 if per_sample else 1.0
        grad = _input_grad(sign * ce_c, x).repeat(k_, 1)  # (K*B, D)
        total = total + (1 - F.cosine_similarity(grad, targets, dim=1 if per_sample else 0)).mean()
    return total / classes


def variant_loss(variant: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: PilotConfig,
                 bank: Optional[ClassBank], gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """(loss, {"ce", "pag"}) of one batch x (B, D), y (B,) under `variant` and its lambdas."""
    if variant not in PILOT_VARIANTS:
        raise ValueError(f"unknown pilot variant {variant!r}; variants are {', '.join(PILOT_VARIANTS)}")
    lam_ce, lam_pag = cfg.lambda_ce[variant], cfg.lambda_pag[variant]
    if variant == "baseline":
        ce = F.cross_entropy(model(x), y)
        return lam_ce * ce, {"ce": float(ce.detach()), "pag": 0.0}
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)  # (B, C)
    ce = F.cross_entropy(logits, y)
    if variant == "pag_identity":
        pag = 1 - F.cosine_similarity(_input_grad(ce, x), x, dim=1).mean()
    else:
        assert bank is not None
        pag = pag_score_loss(model, x, logits, bank, cfg.samples_per_class,
                             per_sample=variant == "pag_score_similar_samples", gen=gen)
    return lam_ce * ce + lam_pag * pag, {"ce": float(ce.detach()), "pag": float(pag.detach())}


def split_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): a seeded stratified hold-out of `fraction` of each class."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, int(round(fraction * len(idx))))
        if n_val >= len(idx):
            raise ValueError(f"class {c} has {len(idx)} training texts: too few for pilot.validation_fraction")
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _validation_loss(variant, model, x, y, cfg, bank, seed) -> float:
    """The variant's own loss on the validation split (the paper monitored val/loss), with fixed PAG draws."""
    gen = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    model.eval()
    for start in range(0, len(x), cfg.batch_size):
        xb, yb = x[start : start + cfg.batch_size], y[start : start + cfg.batch_size]
        loss, _ = variant_loss(variant, model, xb, yb, cfg, bank, gen)
        total += float(loss.detach()) * len(xb)  # the PAG term keeps a graph: detach before float
        n += len(xb)
    model.train()
    return total / n


def train_variant(variant: str, embeddings: torch.Tensor, labels: torch.Tensor, classes: int, cfg: PilotConfig,
                  device: str) -> tuple[PilotMLP, list[dict]]:
    """Train one variant for cfg.epochs; return the model of the epoch of lowest validation loss and the log."""
    torch.manual_seed(cfg.seed)
    tr, va = split_validation(labels.numpy(), cfg.validation_fraction, cfg.seed)
    x_tr, y_tr = embeddings[tr].to(device), labels[tr].to(device)
    x_va, y_va = embeddings[va].to(device), labels[va].to(device)
    bank = ClassBank.build(x_tr, y_tr.cpu(), classes)  # targets come from train only, never validation
    model = PilotMLP(embeddings.shape[1], cfg.hidden_sizes, classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    best, best_state, history = float("inf"), None, []
    batches = -(-len(x_tr) // cfg.batch_size)
    progress = Progress(cfg.epochs * batches, f"pilot train {variant}", unit="batch", log=log)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x_tr), generator=gen).to(device)
        sums = {"loss": 0.0, "ce": 0.0, "pag": 0.0}
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            loss, parts = variant_loss(variant, model, x_tr[idx], y_tr[idx], cfg, bank, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums["loss"] += float(loss.detach()) * len(idx)  # float() of a tensor needing grad warns
            sums["ce"] += parts["ce"] * len(idx)
            sums["pag"] += parts["pag"] * len(idx)
            progress.update(1, {"epoch": f"{epoch + 1}/{cfg.epochs}"})
        val = _validation_loss(variant, model, x_va, y_va, cfg, bank, cfg.seed + 2)
        with torch.no_grad():
            val_acc = float((model(x_va).argmax(1) == y_va).float().mean())
        row = {"epoch": epoch + 1, **{k: v / len(perm) for k, v in sums.items()}, "val_loss": val, "val_acc": val_acc}
        history.append(row)
        if val < best:
            best = val
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if epoch % 10 == 0 or epoch + 1 == cfg.epochs:
            log.info("%s epoch %03d/%03d | loss %.4f | ce %.4f | pag %.4f | val loss %.4f | val acc %.4f",
                     variant, epoch + 1, cfg.epochs, row["loss"], row["ce"], row["pag"], val, val_acc)
    progress.close()
    model.load_state_dict(best_state)
    return model.eval(), history


def save_classifier(model: PilotMLP, path: Path) -> None:
    from safetensors.torch import save_file

    from ilm.io import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))


def load_classifier(path: Path, dim: int, cfg: PilotConfig, classes: int, device: str) -> PilotMLP:
    from safetensors.torch import load_file

    from ilm.io import check_safetensors

    check_safetensors(path, "train it again with `snakemake --forcerun train_pilot`")
    model = PilotMLP(dim, cfg.hidden_sizes, classes)
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval()
