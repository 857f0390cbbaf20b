"""Judge scores of inversions (method-spec §3.7, §5) and of GCG attacks (§4.4), from the per-sample metric files.

Token ids are decoded with the trained tokenizer's decoder, special tokens dropped (the paper's
`clean_text`). Every output keeps the decoded texts, so the tables rebuild from these small files.

* `judge_inversion` -> results/metrics/<method>/inversion_judged.csv: the similarity of the
  reconstructed and original prefix (primary) and of the full texts (reconstruction + Y vs X + Y),
  and the judge perplexity of the first `judge.ppl_words` words of each prefix, alone and followed
  by one space and the suffix (`evaluation_metrics.py:compute_third_party_perplexity`), without a
  BOS by default as the paper's HF evaluate call (`judge.ppl_bos`).
* `judge_attacks` -> results/metrics/<variant>/gcg_judged.csv: judge perplexity of the attack and
  of the original prefix (after a BOS, as the paper's GCG judge), their repeated tokens, their similarity, and their share of
  non-alphanumeric characters.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ilm.io import file_sha256, provenance, write_json, write_text
from ilm.judges import first_words, judge_fingerprint, load_judges
from ilm.shards import meta_path

log = logging.getLogger("ilm.judge_runs")

INVERSION_TEXTS = ("prefix_text", "reconstruction_text", "suffix_text")
ATTACK_TEXTS = ("prefix_text", "attack_text")


def ids_of(value) -> list[int]:
    """Token ids from a metric file's space-separated column ("" -> [])."""
    return [int(t) for t in value.split()] if isinstance(value, str) else []


def repeated_tokens(ids: Sequence[int]) -> int:
    """Sum over token types of (count - 1): the paper's token duplications (§4.4), on the model's ids."""
    return len(ids) - len(set(ids))


def nonalnum_share(text: str) -> float:
    """Share of the non-whitespace characters that are not letters or digits (NaN for a blank text)."""
    visible = [c for c in text if not c.isspace()]
    return sum(not c.isalnum() for c in visible) / len(visible) if visible else float("nan")


def with_suffix(prefix: str, suffix: str, words: int) -> str:
    """The first `words` words of a prefix followed by one space and the suffix (§3.7)."""
    return f"{first_words(prefix, words)} {suffix.strip()}"


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def judge_inversion(
    frame: pd.DataFrame, tokenizer, similarity, perplexity, words: int, bos: bool = False
) -> pd.DataFrame:
    """Judge metrics and decoded texts of each inverted sample of one method's inversion.csv; `bos`: judge.ppl_bos."""
    x = [ids_of(v) for v in frame["prefix_ids"]]
    xh = [ids_of(v) for v in frame["reconstruction_ids"]]
    y = [ids_of(v) for v in frame["suffix_ids"]]
    prefix = [_decode(tokenizer, a) for a in x]
    rec = [_decode(tokenizer, a) for a in xh]
    suffix = [_decode(tokenizer, a) for a in y]
    full_orig = [_decode(tokenizer, a + b) for a, b in zip(x, y)]
    full_rec = [_decode(tokenizer, a + b) for a, b in zip(xh, y)]
    n = len(frame)
    ppl = perplexity.perplexity(
        [first_words(t, words) for t in rec + prefix]
        + [with_suffix(p, s, words) for p, s in zip(rec + prefix, suffix + suffix)],
        bos=bos,
    )
    return pd.DataFrame({
        "method": frame["method"].to_numpy(),
        "sample": frame["sample"].to_numpy(),
        "similarity_prefix": similarity.similarity(rec, prefix),
        "similarity_full": similarity.similarity(full_rec, full_orig),
        "judge_ppl_prefix_reconstruction": ppl[:n],
        "judge_ppl_prefix_original": ppl[n : 2 * n],
        "judge_ppl_full_reconstruction": ppl[2 * n : 3 * n],
        "judge_ppl_full_original": ppl[3 * n :],
        "prefix_text": prefix,
        "reconstruction_text": rec,
        "suffix_text": suffix,
    })


def judge_attacks(frame: pd.DataFrame, tokenizer, similarity, perplexity) -> pd.DataFrame:
    """Naturalness of each attack of one variant's gcg.csv and of the prefix it replaced (§4.4)."""
    x = [ids_of(v) for v in frame["prefix_ids"]]
    xa = [ids_of(v) for v in frame["attack_ids"]]
    prefix = [_decode(tokenizer, a) for a in x]
    attack = [_decode(tokenizer, a) for a in xa]
    n = len(frame)
    ppl = perplexity.perplexity(attack + prefix, bos=True)
    return pd.DataFrame({
        "variant": frame["variant"].to_numpy(),
        "sample": frame["sample"].to_numpy(),
        "success": frame["success"].astype(str).str.lower().eq("true").to_numpy(),
        "judge_ppl_attack": ppl[:n],
        "judge_ppl_original": ppl[n:],
        "repeated_tokens_attack": [repeated_tokens(a) for a in xa],
        "repeated_tokens_original": [repeated_tokens(a) for a in x],
        "similarity_attack_original": similarity.similarity(attack, prefix),
        "nonalnum_attack": [nonalnum_share(t) for t in attack],
        "nonalnum_original": [nonalnum_share(t) for t in prefix],
        "prefix_text": prefix,
        "attack_text": attack,
    })


def offline() -> None:
    """Jobs load judges from local folders only (compute nodes often have no network).

    huggingface_hub reads this when first imported: `ilm judge-*` calls it before anything imports
    transformers, and the rules also set it in the job's environment.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"


def _read_metrics(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"per-sample metrics {path} do not exist; run the rule that writes it first")
    return pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"], dtype={
        c: str for c in ("prefix_ids", "reconstruction_ids", "suffix_ids", "attack_ids", "success")})


def write_judged(kind: str, metrics: Sequence[Path], tokenizer_path: Path, similarity_dir: Path,
                 perplexity_dir: Path, outs: Sequence[Path], config: Mapping) -> list[pd.DataFrame]:
    """`kind` "inversion" or "attacks": judge each per-sample metric file into its `outs` entry (and .meta.json).

    The judges load once for all files (one job per kind: loading dominates at small scale).
    """
    from ilm.data import load_tokenizer

    offline()
    if kind not in ("inversion", "attacks"):
        raise ValueError(f"unknown kind {kind!r}; choose inversion or attacks")
    metrics, outs = [Path(p) for p in metrics], [Path(p) for p in outs]
    if len(metrics) != len(outs):
        raise ValueError(f"{len(metrics)} metric files but {len(outs)} outputs; pass one --out per --metrics file")
    frames = [_read_metrics(p) for p in metrics]  # every input checked before the judges load
    tokenizer = load_tokenizer(Path(tokenizer_path))
    similarity, perplexity = load_judges(similarity_dir, perplexity_dir, config)
    judges = {"similarity_judge": judge_fingerprint(similarity_dir), "perplexity_judge": judge_fingerprint(perplexity_dir)}
    results = []
    for path, frame, out in zip(metrics, frames, outs):
        log.info("judging %d samples of %s", len(frame), path)
        if kind == "inversion":
            judged = judge_inversion(frame, tokenizer, similarity, perplexity, config["judge"]["ppl_words"],
                                     bos=config["judge"]["ppl_bos"])
        else:
            judged = judge_attacks(frame, tokenizer, similarity, perplexity)
        write_text(out, judged.to_csv(index=False))
        write_json(meta_path(out), provenance(
            dict(config["judge"]),
            inputs={str(path): file_sha256(path), str(tokenizer_path): file_sha256(tokenizer_path)}, **judges,
        ))
        log.info("%d judged samples -> %s", len(judged), out)
        results.append(judged)
    return results
