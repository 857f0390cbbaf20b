"""The `pilot:` config section and the pilot's variant names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from ilm.config import ConfigSection

# Paper order; the table and figure follow it.
PILOT_VARIANTS = ("baseline", "pag_identity", "pag_score_similar_samples", "pag_score_similar_features")
PILOT_NAMES = {
    "baseline": "Baseline",
    "pag_identity": "PAG-identity",
    "pag_score_similar_samples": "PAG-score (similar samples)",
    "pag_score_similar_features": "PAG-score (similar features)†",  # † the paper's cosine across the batch
}


@dataclass(frozen=True)
class PilotConfig(ConfigSection):
    """The `pilot:` section (defaults, ranges and meanings: the schema)."""

    SECTION = "pilot"
    enabled: bool
    dataset: str
    revision: Optional[str]
    max_chars: int
    generated_examples: int
    generated_seed: int
    encoder: str
    encoder_revision: Optional[str]
    max_tokens: int
    embed_batch_size: int
    variants: tuple
    hidden_sizes: tuple
    samples_per_class: int
    lambda_ce: Mapping
    lambda_pag: Mapping
    lr: float
    batch_size: int
    epochs: int
    validation_fraction: float
    seed: int
    apgd_eps: tuple
    apgd_iterations: int
    apgd_restarts: int  # random starts of APGD-CE (AutoAttack version='custom' keeps 5)
    square_eps: tuple
    square_queries: int
    square_samples: Optional[int]
    fgsm_alphas: tuple
    sweep_start: float
    sweep_stop: float
    sweep_step: float
    attack_samples: Optional[int]
    attack_batch_size: int
    device: str


def resolve_device(name: str) -> str:
    """"auto" -> "cuda" when available, else "cpu"; "cuda" without one is an error naming the key."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"pilot.device is {name!r} but no CUDA device is available; use auto or cpu")
    return name
