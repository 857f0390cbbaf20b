"""Robustness of the pilot's classifiers in embedding space, with the Adversarial Robustness Toolbox (ART).

ART rather than torchattacks: ART depends only on numpy, scipy, scikit-learn, six, setuptools and
tqdm and is maintained; torchattacks pins requests~=2.25.1 and pulls torchvision.

As in the paper (method-spec §6.7) the embeddings are reshaped to images (C, s, s), because ART's
Square attack needs 4-D inputs; APGD and FGSM are unaffected by the shape (their norms run over every
entry). The embeddings are unbounded: the clip range is set far outside them so it never binds.
Robust accuracy is the accuracy on the adversarial inputs over every attacked sample (as the paper's),
a rate with n and a Wilson interval. APGD-CE restarts `pilot.apgd_restarts` times (AutoAttack
`version='custom'` keeps 5); Square runs on a seeded random subset of `pilot.square_samples`
(the paper: 10 batches of a shuffled loader), not on the first ones.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from ilm.pilot.config import PilotConfig
from ilm.progress import Progress
from ilm.stats import wilson_interval

log = logging.getLogger("ilm.pilot")

UNBOUNDED = 1e6  # clip range of the ART wrapper: embeddings are nowhere near it


def image_shape(dim: int) -> tuple[int, int, int]:
    """(C, s, s) with s*s the largest square dividing dim (768 -> (3, 16, 16), the paper's; 384 -> (6, 8, 8))."""
    s = max(k for k in range(1, math.isqrt(dim) + 1) if dim % (k * k) == 0)
    return dim // (s * s), s, s


class Flatten(nn.Module):
    """The classifier seen by ART: (B, C, s, s) images -> (B, D) embeddings -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(len(x), -1))


def art_classifier(model: nn.Module, dim: int, classes: int, device: str):
    """ART's PyTorchClassifier around `model` on (C, s, s)-shaped embeddings; logits out, CE loss."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=Flatten(model),
        loss=nn.CrossEntropyLoss(),
        input_shape=image_shape(dim),
        nb_classes=classes,
        clip_values=(-UNBOUNDED, UNBOUNDED),
        device_type="gpu" if device.startswith("cuda") else "cpu",
    )


def to_images(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float32).reshape(len(x), *image_shape(x.shape[1]))


def fgsm(classifier, images: np.ndarray, labels: np.ndarray, alpha: float, batch_size: int) -> np.ndarray:
    """ART's FGSM: x + alpha * sign(grad_x CE(f(x), y)), untargeted, true labels, no random start."""
    from art.attacks.evasion import FastGradientMethod

    attack = FastGradientMethod(classifier, norm=np.inf, eps=alpha, eps_step=alpha, targeted=False,
                                num_random_init=0, batch_size=batch_size, minimal=False)
    return attack.generate(images, y=_one_hot(labels, classifier.nb_classes))


def apgd(classifier, images, labels, eps: float, iterations: int, batch_size: int, seed: int,
         restarts: int) -> np.ndarray:
    """ART's APGD-CE in L2 at radius eps (AutoAttack's first step size 2 eps), `restarts` random starts:
    each restart attacks the samples the earlier ones left correctly classified."""
    from art.attacks.evasion import AutoProjectedGradientDescent

    np.random.seed(seed)  # ART draws its random start from numpy's global generator
    attack = AutoProjectedGradientDescent(classifier, norm=2, eps=eps, eps_step=2 * eps, max_iter=iterations,
                                          targeted=False, nb_random_init=restarts, batch_size=batch_size,
                                          loss_type="cross_entropy", verbose=False)
    return attack.generate(images, y=_one_hot(labels, classifier.nb_classes))


def square(classifier, images, labels, eps: float, queries: int, batch_size: int, seed: int) -> np.ndarray:
    """ART's Square attack in L2 at radius eps (score-based, no gradients)."""
    from art.attacks.evasion import SquareAttack

    np.random.seed(seed)
    attack = SquareAttack(classifier, norm=2, eps=eps, max_iter=queries, nb_restarts=1, batch_size=batch_size,
                          verbose=False)
    return attack.generate(images, y=_one_hot(labels, classifier.nb_classes))


def square_subset(n: int, size: Optional[int], seed: int) -> np.ndarray:
    """Indices (sorted) of a uniform random subset of `size` of n samples, drawn with `seed`; all n when size is
    None or at least n. The paper ran Square on 10 batches of a shuffled loader, not the first samples."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def rate(correct: int, n: int, confidence: float) -> dict:
    """An accuracy as a rate: n, correct, accuracy and its Wilson interval."""
    low, high = wilson_interval(correct, n, confidence)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else float("nan"), "low": low, "high": high}


def accuracy(classifier, images: np.ndarray, labels: np.ndarray, batch_size: int, confidence: float) -> dict:
    pred = classifier.predict(images, batch_size=batch_size).argmax(1)
    return rate(int((pred == labels).sum()), len(labels), confidence)


def sweep_alphas(cfg: PilotConfig) -> list[float]:
    """The FGSM sweep: start, start + step, ... below stop (the paper's [1e-8, 5e-2) in steps of 5e-4)."""
    n = max(1, math.ceil((cfg.sweep_stop - cfg.sweep_start) / cfg.sweep_step))
    return [cfg.sweep_start + i * cfg.sweep_step for i in range(n)]


def evaluate_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int, cfg: PilotConfig,
                        confidence: float, device: str) -> dict:
    """Clean accuracy, APGD-CE, Square and FGSM rows and the FGSM sweep of one classifier on x (N, D), y (N,)."""
    n = len(x) if cfg.attack_samples is None else min(cfg.attack_samples, len(x))
    images, labels = to_images(x[:n]), y[:n].cpu().numpy()
    clf = art_classifier(model, x.shape[1], classes, device)
    bs = cfg.attack_batch_size
    alphas = sweep_alphas(cfg)
    # One unit per attack run at one radius (the sweep's FGSM runs included).
    progress = Progress(len(cfg.apgd_eps) + len(cfg.square_eps) + len(cfg.fgsm_alphas) + len(alphas),
                        "pilot attack", unit="attack", log=log)
    out: dict = {"clean": accuracy(clf, images, labels, bs, confidence), "attacks": []}
    for eps in cfg.apgd_eps:
        adv = apgd(clf, images, labels, eps, cfg.apgd_iterations, bs, cfg.seed, cfg.apgd_restarts)
        out["attacks"].append({"attack": "APGD-CE", "norm": "L2", "eps": eps,
                               **accuracy(clf, adv, labels, bs, confidence)})
        progress.update(1)
    sq = square_subset(n, cfg.square_samples, cfg.seed)
    for eps in cfg.square_eps:
        adv = square(clf, images[sq], labels[sq], eps, cfg.square_queries, bs, cfg.seed)
        out["attacks"].append({"attack": "Square", "norm": "L2", "eps": eps,
                               **accuracy(clf, adv, labels[sq], bs, confidence)})
        progress.update(1)
    for alpha in cfg.fgsm_alphas:
        adv = fgsm(clf, images, labels, alpha, bs)
        out["attacks"].append({"attack": "FGSM", "norm": "Linf", "eps": alpha,
                               **accuracy(clf, adv, labels, bs, confidence)})
        progress.update(1)
    out["sweep"] = []
    for a in alphas:
        out["sweep"].append({"alpha": a, **accuracy(clf, fgsm(clf, images, labels, a, bs), labels, bs, confidence)})
        progress.update(1)
    progress.close()
    for row in out["attacks"]:
        log.info("%s eps %g: accuracy %.4f (n=%d)", row["attack"], row["eps"], row["accuracy"], row["n"])
    return out


def hand_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """FGSM written out (for tests): x + alpha * sign(d mean CE / dx)."""
    x = x.detach().clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + alpha * grad.sign()).detach()
