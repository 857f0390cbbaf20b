"""External judges of text (method-spec §3.7): a sentence encoder for similarity, a causal LM for perplexity.

Each is a Hub id or a local folder (`judge.similarity_model`, `judge.perplexity_model`). A job
loads a judge once and scores in batches, on the GPU when there is one. Perplexity is computed
here with `transformers` (HF `evaluate` reloads the model on every call, §9.5.4): exp of the
mean next-token CE over each text's tokens, with right padding masked out.

`fetch` downloads a Hub judge into resources/judges/ (the `fetch_judges` rule, on the login
node); jobs then load it from there with the Hub offline.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("ilm.judges")


def first_words(text: str, n: int) -> str:
    """The first `n` whitespace-separated words of `text` (the paper's 50-word cut, §3.7)."""
    return " ".join(text.split()[:n])


class SimilarityJudge:
    """Cosine similarity of sentence embeddings (sentence-transformers); 0 when either text is empty."""

    def __init__(self, path: str, device: torch.device, batch_size: int):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=str(device))
        self.batch_size = batch_size

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        if len(a) != len(b):
            raise ValueError(f"similarity needs pairs of texts ({len(a)} vs {len(b)})")
        ea = self.model.encode(list(a), batch_size=self.batch_size, convert_to_tensor=True)
        eb = self.model.encode(list(b), batch_size=self.batch_size, convert_to_tensor=True)
        sim = F.cosine_similarity(ea, eb, dim=-1).float().cpu().numpy()
        empty = np.array([not x.strip() or not y.strip() for x, y in zip(a, b)], dtype=bool)
        return np.where(empty, 0.0, sim)


class PerplexityJudge:
    """exp(mean next-token CE) of each text under a causal LM; the tokenizer's BOS, if it adds one, is context."""

    def __init__(self, path: str, device: torch.device, batch_size: int, max_length: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForCausalLM.from_pretrained(str(path)).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    @torch.no_grad()
    def perplexity(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            enc = [self.tokenizer(t, truncation=True, max_length=self.max_length)["input_ids"] for t in batch]
            width = max(len(ids) for ids in enc)
            ids = torch.zeros((len(enc), width), dtype=torch.long)
            mask = torch.zeros((len(enc), width), dtype=torch.long)
            for i, row in enumerate(enc):
                ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
            ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
            keep = mask[:, 1:].float()
            n = keep.sum(dim=1)
            mean = (ce * keep).sum(dim=1) / n.clamp(min=1)
            out += [math.exp(m) if k > 0 else float("nan") for m, k in zip(mean.tolist(), n.tolist())]
        return np.asarray(out, dtype=float)


GATED_HINT = (
    "{model} could not be downloaded ({error}); if it is gated, accept its licence at "
    "https://huggingface.co/{model} and export HF_TOKEN=<a token of that account>, then run fetch_judges again"
)


def fetch(model: str, out: Path) -> Path:
    """Download Hub model `model` into `out` (huggingface_hub.snapshot_download); one-line error when gated."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id=model, local_dir=str(out))
    except Exception as e:  # noqa: BLE001 (HTTP, auth and gating errors all end here)
        raise ValueError(GATED_HINT.format(model=model, error=type(e).__name__)) from None
    log.info("%s -> %s", model, out)
    return Path(out)
