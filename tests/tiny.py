"""The one tiny model and tiny config every unit test builds on (CPU, seconds).

`tiny_model_config()` is a 1-layer, 16-wide Llama with a 64-token vocabulary; tests that
need another size override single keys. `tiny_config()` is a validated workflow config
around it (window 16), for the train/evaluate/attack entry points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ilm.config import deep_merge, validate_config
from ilm.model import build_model

VOCAB, WINDOW = 64, 16

TINY_MODEL = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=VOCAB,
    max_position_embeddings=32,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
)


def tiny_model_config(**overrides) -> dict:
    """The `model:` section of the tiny model, with single keys overridden."""
    return {**TINY_MODEL, **overrides}


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> torch.nn.Module:
    """A freshly initialised tiny model (seeded), in eval mode."""
    torch.manual_seed(seed)
    return build_model(tiny_model_config(**overrides)).to(dtype).eval()


def tiny_config(train: Optional[dict] = None, **sections) -> dict:
    """A validated workflow config around the tiny model: window 16, an 8-window batch (4 micro), CPU everywhere."""
    base = {
        "data": {"vocab_size": VOCAB, "window": WINDOW, "stride": WINDOW},
        "model": dict(TINY_MODEL),
        "train": {
            "seed": 0,
            "epochs": 2,
            "batch_size": 8,
            "micro_batch_size": 4,
            "lr": 0.01,
            "warmup_steps": 2,
            "val_every": 2,
            "val_sequences": 8,
            "checkpoint_every": 100,
            "log_every": 1,
            "device": "cpu",
        },
        "evaluate": {"batch_size": 4, "device": "cpu", "seed": 0},
        "gcg": {
            "prefix_length": 5,
            "target_length": 3,
            "steps": 3,
            "search_width": 8,
            "top_k": 4,
            "count": 5,
            "shards": 2,
            "batch_samples": 2,
            "iterations": [1, 2, 3],
            "examples": 2,
            "device": "cpu",
            "precision": "fp32",
        },
        "invert": {"skip_tokens": 2, "prefix_length": 4, "suffix_length": 6, "beam": 3, "top_k": 4, "count": 5,
                   "shards": 2, "batch_samples": 2, "device": "cpu"},
    }
    return validate_config(deep_merge(base, {"train": train or {}, **sections}))


def write_splits(
    data_dir: Path,
    n_train: int = 32,
    n_val: int = 8,
    n_test: int = 8,
    window: int = WINDOW,
    high: int = VOCAB,
    seed: int = 0,
) -> Path:
    """Random uint16 windows of non-special ids as {train,validation,test}.npy."""
    rng = np.random.default_rng(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        np.save(data_dir / f"{split}.npy", rng.integers(6, high, (n, window)).astype(np.uint16))
    return data_dir


def save_tiny_model(path: Path, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """A tiny model saved as `ilm train` saves one (config.json + model.safetensors)."""
    tiny_model(seed, dtype, **overrides).save_pretrained(path)
    return path
