"""Grounding: reconstruct a test prefix from its suffix, right to left (docs/method.md §12; method-spec §5).

For each sampled test window, drop `invert.skip_tokens`, take the next `invert.prefix_length`
tokens as X and the rest (or `invert.suffix_length` tokens) as the true suffix Y. Starting
from Y, one token is added in front per step, keeping `invert.beam` beams (§5.1):

1. put a placeholder p in front of every beam (<s>, the Bert-like placeholder, or the
   reverse-bigram prediction of the beam's first token);
2. g at p = d(summed CE of the whole sequence)/dx divided, per sequence, by its L+1 positions
   (`invert.grad_scale: paper`, the gradient of the sequence's mean CE, as the official code) or
   by objective.grad_scale_tokens (`training`, the g the model was trained with); neither depends
   on how many beams share a pass (docs/method.md §0.1, §12);
3. v = x_p - g (g alone for the `*_grad` variants), projected through the final norm and the
   head; each beam is expanded by its top-k tokens;
4. each candidate is scored by the scorer's perplexity of the whole sequence plus the repeat
   count of the tokens generated so far; the `beam` lowest are kept (stable order on ties).

Every beam of every sample is expanded and scored in one batched pass per step.

The reverse-bigram baseline (`BIGRAM`) uses the same search with other candidates: the top-k
predecessors of each beam's current first token in the training bigram counts. Unlike the
paper's code (§9.5.2) its beams are distinct from the first step, the chosen tokens are visible
to the scorer, it is conditioned on the true suffix, and it is scored by the Baseline model.

A generic inverter (method `<variant>+gcg` or `<variant>+relaxed`, ilm.generic_invert) inverts the same windows
with the variant's model within the beam search's forward budget; its records add `forwards` (docs/method.md §12.1).

Shards are written through ilm.shards, like the GCG shards: a locked partial file that survives a
kill, a meta file that says which model, data and settings it holds, and a rename when complete.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from ilm.io import file_sha256, model_fingerprint, provenance, write_json, write_text
from ilm.names import BIGRAM, BOS_ID, PAD_ID, parse_generic, parse_variant
from ilm.objectives import ObjectiveConfig, embed, forward_ce, project_to_vocab
from ilm.progress import Progress
from ilm.shards import (
    Stage,
    check_complete,
    check_records,
    meta_path,
    open_shard,
    read_plan,
    read_records,
    shard_samples,
    stage_samples,
    write_plan,
)

log = logging.getLogger("ilm.invert")

BASE = "base"
# Settings that change a shard's records (batch_samples and device do not).
RESULT_KEYS = (
    "skip_tokens",
    "prefix_length",
    "suffix_length",
    "beam",
    "top_k",
    "grad_scale",
    "placeholder",
    "fraction",
    "count",
    "sample_seed",
    "shards",
)
SELECTION_KEYS = ("skip_tokens", "prefix_length", "suffix_length", "fraction", "count", "sample_seed", "shards")
STAGE = Stage(section="invert", command="invert", plan_command="invert-samples")
_BIGRAM_CHUNK = 65536  # windows per bincount, to bound memory on the paper's train split


# --- bigram counts ----------------------------------------------------------------------------------------


def bigram_counts(windows: np.ndarray, vocab_size: int) -> np.ndarray:
    """C[next, prev]: how often `prev` directly precedes `next` in the windows.  (N, T) -> (V, V) int64"""
    windows = np.asarray(windows)
    counts = np.zeros(vocab_size * vocab_size, dtype=np.int64)
    for start in range(0, len(windows), _BIGRAM_CHUNK):
        w = np.asarray(windows[start : start + _BIGRAM_CHUNK]).astype(np.int64)  # (n, T)
        if w.size and (w.min() < 0 or w.max() >= vocab_size):
            raise ValueError(f"token ids must lie in [0, {vocab_size}) (model.vocab_size); got {w.min()}..{w.max()}")
        counts += np.bincount((w[:, 1:] * vocab_size + w[:, :-1]).ravel(), minlength=vocab_size * vocab_size)
    return counts.reshape(vocab_size, vocab_size)


def write_bigram_counts(data_dir: Path, out: Path, config: Mapping) -> None:
    """results/data/bigram.npy from the train split."""
    from ilm.data import load_split

    counts = bigram_counts(load_split(Path(data_dir), "train"), config["model"]["vocab_size"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, counts)
    os.replace(tmp, out)
    log.info("%d bigrams over %d token types -> %s", int(counts.sum()), counts.shape[0], out)


# --- the search -------------------------------------------------------------------------------------------


def repeat_count(tokens: torch.Tensor) -> torch.Tensor:
    """Sum over token types of (count - 1): tokens that repeat an earlier one.  (M, n) -> (M,)"""
    if tokens.shape[1] < 2:
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    s = tokens.sort(dim=1).values
    return (s[:, 1:] == s[:, :-1]).sum(dim=1)


@torch.no_grad()
def sequence_ppl(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """exp(mean next-token CE) of each whole sequence under `model`.  (M, T) -> (M,)"""
    return forward_ce(model, embed(model, ids), ids[:, 1:], reduction="none").mean(dim=1).exp()


Proposer = Callable[[torch.Tensor], torch.Tensor]  # (M, L) current sequences -> (M, K) candidate first tokens


@dataclass
class SearchResult:
    prefixes: torch.Tensor  # (S, B, P) the final beams' generated prefixes, best first
    scores: torch.Tensor  # (S, B) their scores (perplexity + repeats), ascending


def beam_search(scorer: torch.nn.Module, suffix: torch.Tensor, prefix_length: int, beam: int, propose: Proposer):
    """Grow `prefix_length` tokens in front of each suffix (S, Ls), right to left, all beams in one pass per step."""
    seqs = suffix.unsqueeze(1)  # (S, 1, Ls)
    scores = torch.zeros(suffix.shape[0], 1)
    for step in range(prefix_length):
        s, b, length = seqs.shape
        flat = seqs.reshape(s * b, length)  # (S*b, L)
        tokens = propose(flat)  # (S*b, K)
        k = tokens.shape[1]
        cands = torch.cat([tokens.reshape(-1, 1), flat.repeat_interleave(k, dim=0)], dim=1)  # (S*b*K, L+1)
        score = sequence_ppl(scorer, cands) + repeat_count(cands[:, : step + 1])  # (S*b*K,)
        score = score.view(s, b * k)
        order = torch.sort(score, dim=1, stable=True).indices[:, :beam]  # (S, B)
        seqs = cands.view(s, b * k, length + 1).gather(1, order.unsqueeze(-1).expand(-1, -1, length + 1))
        scores = score.gather(1, order)
    return SearchResult(prefixes=seqs[:, :, :prefix_length], scores=scores)


GRAD_SCALES = ("paper", "training")


def first_position_gradient(
    model: torch.nn.Module, ids: torch.Tensor, grad_scale: str, objective: ObjectiveConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, g) at position 0 of each sequence ids (M, L+1) -> (M, d), (M, d) (§5.1 step 3).

    grad_scale "paper": g = d(sum CE)/dx / (L+1), the gradient of each sequence's own mean CE over
    its L+1 positions (the official code's mean, per sequence: 65536/232 = 282x the training scale
    at 231 suffix tokens); "training": d(sum CE)/dx / objective.grad_scale_tokens. Rows are
    independent: a sequence's g does not depend on the others in the pass. The CE's targets follow
    objective.last_target (the paper: <unk> at the last position).
    """
    if grad_scale not in GRAD_SCALES:
        raise ValueError(f"invert.grad_scale must be one of {', '.join(GRAD_SCALES)}, got {grad_scale!r}")
    with torch.enable_grad():
        x = embed(model, ids).detach().requires_grad_(True)  # (M, L+1, d)
        ce = forward_ce(model, x, objective.next_targets(ids), reduction="sum")
        (grad,) = torch.autograd.grad(ce, x)
    scale = ids.shape[1] if grad_scale == "paper" else objective.grad_scale_tokens
    return x[:, 0].detach(), grad[:, 0] / scale


def gradient_proposer(
    model: torch.nn.Module,
    placeholder: Callable[[torch.Tensor], torch.Tensor],
    gradient_only: bool,
    grad_scale: str,
    objective: ObjectiveConfig,
    top_k: int,
) -> Proposer:
    """Candidates from g at a placeholder in front of each sequence, projected to the vocabulary (§5.1 steps 1-4);
    g as `first_position_gradient` with `grad_scale`."""

    def propose(seqs: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([placeholder(seqs).unsqueeze(1), seqs], dim=1)  # (M, L+1)
        x0, g = first_position_gradient(model, ids, grad_scale, objective)  # (M, d), (M, d)
        v = g if gradient_only else x0 - g
        with torch.no_grad():
            return project_to_vocab(model, v).topk(top_k, dim=1).indices  # (M, K)

    return propose


def bigram_proposer(counts: torch.Tensor, top_k: int) -> Proposer:
    """Candidates: the top-k predecessors of each sequence's first token (ties: lower id first)."""

    def propose(seqs: torch.Tensor) -> torch.Tensor:
        rows = counts[seqs[:, 0]]  # (M, V)
        return torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :top_k]

    return propose


def placeholder_fn(method: str, placeholder: str, mask_placeholder_id: int, counts: torch.Tensor):
    """The token put in front of each beam: auto = <s> for Inv-First, the Bert-like placeholder for Bert-like,
    the reverse-bigram prediction (most frequent predecessor of the first token) otherwise (§5.1 step 1)."""
    protocol, _ = parse_variant(method)
    if placeholder == "auto":
        placeholder = {"inv_first": "bos", "bert_like": "mask"}.get(protocol or "", "bigram")
    if placeholder == "bigram":
        reverse = counts.argmax(dim=1)  # (V,): first maximum on ties

        return lambda seqs: reverse[seqs[:, 0]]
    token = {"bos": BOS_ID, "pad": PAD_ID, "mask": mask_placeholder_id}[placeholder]
    return lambda seqs: torch.full((seqs.shape[0],), token, dtype=torch.long, device=seqs.device)


def variant_placeholder(variant: str, counts: torch.Tensor, config: Mapping):
    """placeholder_fn of a variant under invert.placeholder and objective.mask_placeholder (a validated config)."""
    objective = ObjectiveConfig.from_section(config["objective"])
    return placeholder_fn(variant, config["invert"]["placeholder"], objective.placeholder_id, counts)


def search(
    method: str, model: torch.nn.Module, counts: torch.Tensor, suffix: torch.Tensor, config: Mapping
) -> SearchResult:
    """Invert a batch of suffixes (S, Ls) with `method`: a variant (gradient-guided) or BIGRAM (scored by `model`)."""
    inv, obj = config["invert"], config["objective"]
    if method == BIGRAM:
        propose = bigram_proposer(counts, inv["top_k"])
    else:
        _, gradient_only = parse_variant(method)
        objective = ObjectiveConfig.from_section(obj)  # `config` is validated: no jsonschema here
        place = placeholder_fn(method, inv["placeholder"], objective.placeholder_id, counts)
        propose = gradient_proposer(model, place, gradient_only, inv["grad_scale"], objective, inv["top_k"])
    return beam_search(model, suffix, inv["prefix_length"], inv["beam"], propose)


# --- which windows ----------------------------------------------------------------------------------------


def window_parts(windows: np.ndarray, inv: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """(X (S, P), Y (S, Ls)) of test windows: skip, prefix, then the suffix."""
    skip, p = inv["skip_tokens"], inv["prefix_length"]
    rest = windows.shape[1] - skip - p
    ls = inv["suffix_length"] if inv["suffix_length"] is not None else rest
    if ls < 1 or ls > rest:
        raise ValueError(
            f"test windows of {windows.shape[1]} tokens leave {rest} suffix tokens after invert.skip_tokens + "
            f"invert.prefix_length, but {ls} are needed; shorten invert.suffix_length or invert.prefix_length"
        )
    rows = np.asarray(windows).astype(np.int64)
    return rows[:, skip : skip + p], rows[:, skip + p : skip + p + ls]


def write_sample_plan(data_dir: Path, out: Path, config: Mapping) -> dict:
    """results/inversion/samples.json: the inverted test windows and their shards, the same for every variant."""
    from ilm.data import load_split

    data_dir, inv = Path(data_dir), config["invert"]
    windows = load_split(data_dir, "test")
    window_parts(np.asarray(windows[:1]), inv)
    return write_plan(out, len(windows), inv, SELECTION_KEYS, file_sha256(data_dir / "test.npy"), STAGE)


def read_sample_plan(path: Path, config: Mapping) -> dict:
    """samples.json, checked against the current selection settings."""
    return read_plan(path, config["invert"], SELECTION_KEYS, STAGE)


# --- one shard --------------------------------------------------------------------------------------------


def _settings(config: Mapping, method: str) -> dict:
    obj = config["objective"]
    settings = {
        "method": method,
        **{k: config["invert"][k] for k in RESULT_KEYS},
        "grad_scale_tokens": obj["grad_scale_tokens"],
        "mask_placeholder": obj["mask_placeholder"],
        "last_target": obj["last_target"],
    }
    if parse_generic(method) is not None:  # only a generic inverter's shards depend on invert.generic
        settings["generic"] = {k: v for k, v in config["invert"]["generic"].items() if k != "inverters"}
    return settings


def check_method(method: str) -> None:
    """ValueError unless `method` is a variant, BIGRAM or a generic inverter on a variant (`identity+gcg`)."""
    if method != BIGRAM and parse_generic(method) is None:
        parse_variant(method)


def expected_fields(windows, inv: Mapping, method: str):
    """What a record of sample s must hold: its method, and its prefix and suffix from the test split."""

    def expected(s: int) -> dict:
        if not 0 <= s < len(windows):
            return {"sample": None}  # no such window: refused
        x, y = window_parts(np.asarray(windows[s : s + 1]), inv)
        return {"method": method, "prefix_ids": x[0].tolist(), "suffix_ids": y[0].tolist()}

    return expected


def invert_shard(
    model_dir: Path, data_dir: Path, bigram: Path, method: str, shard: int, out: Path, config: Mapping
) -> None:
    """Invert shard `shard` of the sampled windows with `method` and write `out` (JSON lines), resumably."""
    from ilm.data import load_split
    from ilm.model import load_model, resolve_device

    check_method(method)
    generic = parse_generic(method) is not None
    model_dir, data_dir, out = Path(model_dir), Path(data_dir), Path(out)
    inv = config["invert"]
    windows = load_split(data_dir, "test")
    mine = [int(s) for s in shard_samples(stage_samples(len(windows), inv, STAGE), shard, inv["shards"], STAGE.section)]
    fingerprint = model_fingerprint(model_dir)
    inputs = {"model": fingerprint, "test.npy": file_sha256(data_dir / "test.npy"), "bigram.npy": file_sha256(bigram)}
    identity = {"settings": _settings(config, method), "inputs_sha256": inputs}
    meta = {"config": dict(inv), "model_dir": str(model_dir), "shard": shard, "samples": mine}
    expected = expected_fields(windows, inv, method)

    def check(records: list[dict], path: Path) -> None:
        check_records(records, mine, fingerprint, expected, path, f"delete {path} to restart the shard")

    with open_shard(out, identity, meta, check, STAGE) as writer:
        done = writer.done
        todo = [s for s in mine if s not in done]
        log.info("%s shard %d: %d samples, %d done, %d to invert", method, shard, len(mine), len(done), len(todo))
        if todo:
            device = resolve_device(inv["device"])
            model = load_model(model_dir, device).requires_grad_(False)
            counts = torch.from_numpy(np.load(bigram)).to(device)
            size = inv["batch_samples"]
            progress = Progress(len(mine), f"invert {method} shard {shard}", unit="sample", done=len(done), log=log)
            for b in range(0, len(todo), size):
                batch = todo[b : b + size]
                x, y = window_parts(np.asarray(windows[batch]), inv)
                started = time.perf_counter()
                suffix = torch.from_numpy(y).to(device)
                if generic:
                    from ilm.generic_invert import invert as generic_invert

                    place = variant_placeholder(parse_generic(method)[0], counts, config)
                    result = generic_invert(method, model, place, suffix, batch, config)
                    extra = {"forwards": result.forwards}  # forward-equivalents spent per sample
                else:
                    result, extra = search(method, model, counts, suffix, config), {}
                seconds = time.perf_counter() - started
                writer.append([
                    {
                        "sample": s,
                        "method": method,
                        "model_sha256": fingerprint,
                        "prefix_ids": x[i].tolist(),
                        "suffix_ids": y[i].tolist(),
                        "reconstruction_ids": result.prefixes[i, 0].tolist(),
                        "beam_ids": result.prefixes[i].tolist(),
                        "beam_scores": result.scores[i].tolist(),
                        **extra,
                    }
                    for i, s in enumerate(batch)
                ])
                log.info(
                    "%s shard %d | samples %d/%d | %.2f samples/s",
                    method, shard, len(done) + b + len(batch), len(mine), len(batch) / seconds,
                )
                progress.update(len(batch))
            progress.close()
    log.info("%s shard %d complete: %s", method, shard, out)


# --- merge and token-id metrics ---------------------------------------------------------------------------


def token_metrics(original: list[int], reconstruction: list[int]) -> dict:
    """Set precision/recall/F1 on unique ids, exact match, positional accuracy and repeats (§5.3, on token ids)."""
    if len(original) != len(reconstruction) or not original:
        raise ValueError(f"prefixes must be non-empty and equally long ({len(original)} vs {len(reconstruction)})")
    a, b = set(original), set(reconstruction)
    common = len(a & b)
    precision, recall = common / len(b), common / len(a)
    f1 = 2 * precision * recall / (precision + recall) if common else 0.0
    same = [int(o == r) for o, r in zip(original, reconstruction)]
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "exact_match": float(all(same)),
        "positional_accuracy": sum(same) / len(same),
        "repeated_tokens": len(reconstruction) - len(b),
    }


@torch.no_grad()
def model_metrics(model: torch.nn.Module, prefix: torch.Tensor, suffix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE of the suffix given the prefix, perplexity of prefix + suffix) under `model`.  (S, P), (S, Ls) -> (S,), (S,)"""
    ids = torch.cat([prefix, suffix], dim=1)
    ce = forward_ce(model, embed(model, ids), ids[:, 1:], reduction="none")  # (S, P+Ls-1)
    return ce[:, prefix.shape[1] - 1 :].mean(dim=1), ce.mean(dim=1).exp()


def _ids(values) -> str:
    return " ".join(str(int(v)) for v in values)


def summarise_shards(
    shards: list[Path], plan: Mapping, method: str, model_dir: Path, data_dir: Path, out: Path, config: Mapping
) -> "pd.DataFrame":  # noqa: F821
    """Merge a method's shards into per-sample token-id metrics (results/metrics/<m>/inversion.csv).

    Every shard must be complete and hold only records of this method and model whose prefix and
    suffix equal the test split's window (ilm.shards.check_records).
    """
    import pandas as pd

    from ilm.data import load_split
    from ilm.model import load_model, resolve_device

    fingerprint = model_fingerprint(model_dir)
    windows = load_split(Path(data_dir), "test")
    expected = expected_fields(windows, config["invert"], method)
    records = []
    for k, path in enumerate(shards):
        path = Path(path)
        hint = f"run `ilm invert --method {method} --shard {k}` again"
        recs = read_records(path, STAGE)
        check_records(recs, plan["shards"][k], fingerprint, expected, path, hint)
        check_complete(recs, plan["shards"][k], path, hint)
        records += recs
    records.sort(key=lambda r: r["sample"])
    device = resolve_device(config["invert"]["device"])
    model = load_model(model_dir, device)
    rows = []
    size = config["invert"]["batch_samples"]
    for b in range(0, len(records), size):
        batch = records[b : b + size]
        x = torch.tensor([r["prefix_ids"] for r in batch], device=device)
        xh = torch.tensor([r["reconstruction_ids"] for r in batch], device=device)
        y = torch.tensor([r["suffix_ids"] for r in batch], device=device)
        ce_orig, ppl_orig = model_metrics(model, x, y)
        ce_rec, ppl_rec = model_metrics(model, xh, y)
        for i, r in enumerate(batch):
            rows.append({
                "method": method,
                "sample": r["sample"],
                **token_metrics(r["prefix_ids"], r["reconstruction_ids"]),
                "coherence_ce_reconstruction": float(ce_rec[i]),
                "coherence_ce_original": float(ce_orig[i]),
                "ppl_reconstruction": float(ppl_rec[i]),
                "ppl_original": float(ppl_orig[i]),
                "search_score": r["beam_scores"][0],
                "prefix_ids": _ids(r["prefix_ids"]),
                "reconstruction_ids": _ids(r["reconstruction_ids"]),
                "suffix_ids": _ids(r["suffix_ids"]),
            })
    frame = pd.DataFrame(rows)
    out = Path(out)
    write_text(out, frame.to_csv(index=False))
    write_json(
        meta_path(out),
        provenance(dict(config["invert"]), inputs={**{str(p): file_sha256(p) for p in shards}, "model": fingerprint,
                                                   "test.npy": file_sha256(Path(data_dir) / "test.npy")},
                   model_sha256=fingerprint, method=method),
    )
    log.info("%s: %d samples, mean F1 %.3f -> %s", method, len(frame), frame["f1"].mean() if len(frame) else 0, out)
    return frame

