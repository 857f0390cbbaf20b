"""The workflow's vocabulary: special tokens, variants, inverse protocols, model files (no torch needed).

Everything that names a token id, a model variant or an inverse protocol imports it from
here, so `import ilm.data` or a Snakefile can use them without loading torch.
"""

from __future__ import annotations

from typing import Optional

# The tokenizer's special tokens; the BPE trainer gives them ids 0-5 in this order (docs/method.md §3.2).
SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", "<mask>", "<|endoftext|>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID, MASK_ID, EOT_ID = range(len(SPECIAL_TOKENS))
EOT_MARKER = SPECIAL_TOKENS[EOT_ID]

# Model variants (docs/method.md §1.1): `base`, the three ILM variants, and their gradient-only ablations.
VARIANTS: tuple[str, ...] = (
    "base",
    "identity",
    "bert_like",
    "inv_first",
    "identity_grad",
    "bert_like_grad",
    "inv_first_grad",
)
# Inverse protocols: how an ILM variant hides and recovers input tokens (docs/method.md §1.5-§1.7).
PROTOCOLS: tuple[str, ...] = ("identity", "bert_like", "inv_first")
# The inversion method name of the reverse-bigram baseline (scored by the Baseline model).
BIGRAM = "bigram"
_GRADIENT_ONLY_SUFFIX = "_grad"
# Generic inverters (docs/method.md §12.1): method `<variant>+<inverter>` inverts with that variant's model.
GENERIC_INVERTERS: tuple[str, ...] = ("gcg", "relaxed")
GENERIC_NAMES: dict[str, str] = {"gcg": "GCG inverter", "relaxed": "Relaxed inverter"}

# The files `ilm train` writes into a model directory; the directory is whole only with all of them.
MODEL_FILES: tuple[str, ...] = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
    "train_log.csv",
    "run_config.json",
)

# Paper names, in the paper's order; the `_grad` ablations project the gradient alone.
VARIANT_NAMES: dict[str, str] = {
    "base": "Baseline",
    "identity": "Identity",
    "bert_like": "Bert-like",
    "inv_first": "Inv-First",
    "identity_grad": "Identity (grad only)",
    "bert_like_grad": "Bert-like (grad only)",
    "inv_first_grad": "Inv-First (grad only)",
}


def parse_variant(name: str) -> tuple[Optional[str], bool]:
    """(protocol, gradient_only) of a variant name; `base` has protocol None (docs/method.md §1.1)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; valid variants are: {', '.join(VARIANTS)}")
    if name == "base":
        return None, False
    if name.endswith(_GRADIENT_ONLY_SUFFIX):
        return name[: -len(_GRADIENT_ONLY_SUFFIX)], True
    return name, False


def generic_method(variant: str, inverter: str) -> str:
    """The inversion method name of a generic inverter on a variant's model: `identity+gcg`."""
    return f"{variant}+{inverter}"


def parse_generic(method: str) -> Optional[tuple[str, str]]:
    """(variant, inverter) of a generic-inverter method, None for any other name; ValueError for a bad one."""
    if "+" not in method:
        return None
    variant, _, inverter = method.partition("+")
    parse_variant(variant)
    if inverter not in GENERIC_INVERTERS:
        raise ValueError(f"unknown generic inverter {inverter!r} in {method!r}; valid: {', '.join(GENERIC_INVERTERS)}")
    return variant, inverter


def check_protocol(protocol: str) -> None:
    """Raise ValueError naming the valid protocols when `protocol` is not one of them."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown inverse protocol {protocol!r}; valid protocols are: {', '.join(PROTOCOLS)}")


def variant_name(variant: str) -> str:
    """The paper's name of a variant (the variant itself when unknown)."""
    return VARIANT_NAMES.get(variant, variant)


def order_variants(variants) -> list[str]:
    """Variants in the paper's order, unknown names last (alphabetically)."""
    known = [v for v in VARIANT_NAMES if v in variants]
    return known + sorted(v for v in variants if v not in VARIANT_NAMES)
