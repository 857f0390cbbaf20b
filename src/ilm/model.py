"""The paper's model: a small Llama trained from scratch (docs/method.md §2.1)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ilm.names import BOS_ID, EOS_ID, PAD_ID


def llama_config(model_cfg: Mapping, frozen_pad_row: bool = True) -> LlamaConfig:
    """A LlamaConfig from the `model:` section; eager attention, which supports double backprop.

    frozen_pad_row: pad_token_id = <pad>, which HF makes the embedding's padding_idx row (zero at
    init, no gradient), as the paper's models; False leaves <pad> an ordinary, trained row.
    """
    return LlamaConfig(
        **dict(model_cfg),
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID if frozen_pad_row else None,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        hidden_act="silu",
        attn_implementation="eager",
    )


def _sdpa_math_attention(*args, **kwargs):
    # SDPA held to its math kernel: built from differentiable ops, so it has a double backward (the flash
    # and memory-efficient kernels do not); it scales q and k, not the (B, H, T, T) scores as eager does.
    with sdpa_kernel([SDPBackend.MATH]):
        return sdpa_attention_forward(*args, **kwargs)


SDPA_MATH = "sdpa_math"
AttentionInterface.register(SDPA_MATH, _sdpa_math_attention)
# HF builds no causal mask for an attention name without a mask function: give it SDPA's.
AttentionMaskInterface.register(SDPA_MATH, sdpa_mask)
ATTENTION = ("eager", SDPA_MATH)  # the implementations with a double backward (train.attention)


def use_attention(model: LlamaForCausalLM, name: str) -> LlamaForCausalLM:
    """Switch a model to one of ATTENTION: eager (HF's) or sdpa_math (train.attention, docs/method.md §9.1.11)."""
    if name not in ATTENTION:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)} (double backprop needs them), got {name!r}")
    model.set_attn_implementation(name)
    return model


def build_model(model_cfg: Mapping, frozen_pad_row: bool = True) -> LlamaForCausalLM:
    """A freshly initialised model (HF Llama init: N(0, 0.02²) weights, unit norms); seed first."""
    return LlamaForCausalLM(llama_config(model_cfg, frozen_pad_row))


def load_model(path: Path | str, device: torch.device | str = "cpu") -> LlamaForCausalLM:
    """A model written by `ilm train` (HF save_pretrained directory), in eval mode."""
    path = Path(path)
    missing = [name for name in ("config.json", "model.safetensors") if not (path / name).is_file()]
    if missing:
        raise ValueError(
            f"{path} is not a complete model directory (no {' or '.join(missing)}); "
            "run `ilm train` for it (snakemake reruns train_model when it is incomplete)"
        )
    try:
        model = LlamaForCausalLM.from_pretrained(path, attn_implementation="eager")
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one clear line, not a traceback
        raise ValueError(
            f"{path} holds a model that cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"delete {path} and run `ilm train` for it again"
        ) from e
    return model.to(device).eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (the tied LM head counted once)."""
    return sum(p.numel() for p in model.parameters())


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


# Environment variables that pin the CPU kernels' code paths (docs/troubleshooting.md).
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS")


def numerics(device: torch.device) -> dict:
    """What decides the floating-point path of a run: device, CPU kernel dispatch level, threads, pinning env.

    Fused softmax/log_softmax reduce in SIMD registers whose width follows the dispatch level
    (AVX2 vs AVX-512), so results agree bitwise only where these agree.
    """
    out = {
        "device": str(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "env": {name: os.environ[name] for name in NUMERICS_ENV if name in os.environ},
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out
