"""Test-split evaluation: forward LM quality and inverse accuracy under every protocol (docs/method.md §6.1).

forward.json: next-token CE, perplexity and top-k accuracy on the plain test windows (what
GCG sees), the last position having no target. inverse.json: for each protocol (identity,
bert_like, inv_first) the sorted top-k accuracy and CE of classifying input tokens from
the variant's own projection (x - g, or g alone for the `*_grad` variants; the Baseline
uses x - g), so every variant, the Baseline included, is measured the same way; beside it the
same accuracy without g (x alone, or 0), whose difference is what g carries, and the top-1
accuracy at each position of the window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ilm.config import ConfigSection
from ilm.data import load_split
from ilm.io import file_sha256, model_fingerprint, provenance, write_json, write_text
from ilm.model import load_model, numerics, resolve_device
from ilm.names import PROTOCOLS, parse_variant
from ilm.objectives import (
    ObjectiveConfig,
    inverse_rows,
    project_to_vocab,
    topk_correct,
    topk_hits,
)
from ilm.progress import Progress

logger = logging.getLogger("ilm.evaluate")


@dataclass(frozen=True)
class EvaluateConfig(ConfigSection):
    """The `evaluate:` section (defaults and ranges: the schema)."""

    SECTION = "evaluate"
    batch_size: int  # windows per evaluation batch
    max_sequences: Optional[int]  # evaluate the first N test windows; None = all
    seed: int  # Bert-like masking of the inverse protocol
    top_k: tuple[int, ...]  # reported top-k accuracies
    device: str


def _n_batches(windows: np.ndarray, batch_size: int) -> int:
    return -(-windows.shape[0] // batch_size)


def _batches(windows: np.ndarray, batch_size: int, device: torch.device, progress: Optional[Progress]):
    """(B, T) int64 id tensors over `windows` in order, counting each batch in `progress` once it is done."""
    for start in range(0, windows.shape[0], batch_size):
        yield torch.from_numpy(np.asarray(windows[start : start + batch_size], dtype=np.int64)).to(device)
        if progress is not None:
            progress.update(1)


@torch.no_grad()
def forward_metrics(
    model: torch.nn.Module,
    windows: np.ndarray,
    batch_size: int,
    ks: Sequence[int],
    device: torch.device,
    progress: Optional[Progress] = None,
) -> dict:
    """Next-token CE, perplexity, top-k accuracy and the number of predicted positions (§1.2), with the
    per-window CE sums from which the tables compute intervals (no statistics in this GPU job).

    Position t predicts token t+1; the last position has no target (docs/method.md §0).
    """
    correct = {k: torch.zeros((), dtype=torch.long, device=device) for k in ks}
    window_sums, window_rows = [], []
    tokens = 0
    for ids in _batches(windows, batch_size, device, progress):  # (B, T)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()  # (B, T-1, V)
        logits = logits.reshape(-1, logits.shape[-1])  # (B*(T-1), V)
        targets = ids[:, 1:].reshape(-1)  # (B*(T-1),)
        ce = F.cross_entropy(logits, targets, reduction="none").double().view(ids.shape[0], -1)  # (B, T-1)
        window_sums.append(ce.sum(1))
        window_rows.append(torch.full((ids.shape[0],), ce.shape[1], device=device))
        for k, hits in topk_correct(logits, targets, ks).items():
            correct[k] += hits
        tokens += targets.numel()
    ce = float(torch.cat(window_sums).sum()) / tokens
    out = {"ce": ce, "perplexity": float(np.exp(ce))}
    out.update({f"top{k}": int(correct[k]) / tokens for k in ks})
    out["tokens"] = tokens
    out["per_window"] = {"ce_sum": torch.cat(window_sums).cpu().tolist(), "rows": torch.cat(window_rows).cpu().tolist()}
    return out


@torch.no_grad()
def inverse_metrics(
    model: torch.nn.Module,
    windows: np.ndarray,
    protocol: str,
    gradient_only: bool,
    objective_cfg: ObjectiveConfig,
    batch_size: int,
    ks: Sequence[int],
    seed: int,
    device: torch.device,
    progress: Optional[Progress] = None,
) -> dict:
    """Top-k accuracy and CE of the inverse classification under one protocol, with and without g (§1.5-§1.7, §6.1).

    With g, v = x - g (g alone for the `*_grad` variants); `without_g` classifies the same rows
    from x alone (from 0 for `*_grad`, which is chance), so the difference is what g carries.
    `by_position` gives the rows and the top-1 accuracy (with g) at each position of the window;
    `per_window` the sums behind every number, for intervals computed downstream.
    g is taken without double backprop; the Bert-like masks come from a generator seeded with
    `seed`, so the result is deterministic.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    seq_len = windows.shape[1]
    ce_sum = {with_g: torch.zeros((), dtype=torch.float64, device=device) for with_g in (True, False)}
    correct = {with_g: {k: torch.zeros((), dtype=torch.long, device=device) for k in ks} for with_g in (True, False)}
    rows_at = torch.zeros(seq_len, dtype=torch.long, device=device)
    top1_at = torch.zeros(seq_len, dtype=torch.long, device=device)
    rows = 0
    window_sums, window_rows = [], []
    window_top1 = {True: [], False: []}  # per window: top-1 hits with and without g
    for ids in _batches(windows, batch_size, device, progress):  # (B, T)
        inv = inverse_rows(model, ids, protocol, objective_cfg, generator=generator)  # M rows, window-major
        for with_g in (True, False):
            logits = project_to_vocab(model, inv.vectors(gradient_only, with_g)).float()  # (M, V)
            ce = F.cross_entropy(logits, inv.targets, reduction="none").double()  # (M,)
            ce_sum[with_g] += ce.sum()
            if with_g:
                window_sums.append(ce.view(ids.shape[0], -1).sum(1))  # every window has the same row count
                window_rows.append(torch.full((ids.shape[0],), ce.numel() // ids.shape[0], device=device))
            hits = topk_hits(logits, inv.targets, sorted(set(ks) | {1}))  # k -> (M,) bool
            window_top1[with_g].append(hits[1].view(ids.shape[0], -1).sum(1))  # (B,)
            for k in ks:
                correct[with_g][k] += hits[k].sum()
            if with_g:
                rows_at += torch.bincount(inv.positions, minlength=seq_len)
                top1_at += torch.bincount(inv.positions, weights=hits[1].double(), minlength=seq_len).long()
        rows += inv.targets.numel()

    def summary(with_g: bool) -> dict:
        out = {f"top{k}": int(correct[with_g][k]) / rows for k in ks}
        out["ce"] = float(ce_sum[with_g]) / rows
        return out

    rows_at, top1_at = rows_at.tolist(), top1_at.tolist()
    return {
        **summary(True),
        "rows": rows,
        "without_g": summary(False),
        "per_window": {
            "ce_sum": torch.cat(window_sums).cpu().tolist(),
            "rows": torch.cat(window_rows).cpu().tolist(),
            "top1": torch.cat(window_top1[True]).cpu().tolist(),
            "top1_without_g": torch.cat(window_top1[False]).cpu().tolist(),
        },
        "by_position": {
            "rows": rows_at,
            "top1": [hits / n if n else None for hits, n in zip(top1_at, rows_at)],
        },
    }


def _check_test_windows(data_dir: Path, windows: np.ndarray, model: torch.nn.Module) -> None:
    if windows.ndim != 2 or windows.shape[0] == 0:
        raise ValueError(
            f"{data_dir}/test.npy must hold at least one window (shape {windows.shape}); "
            "prepare more data or change data.split_fractions"
        )
    if windows.shape[1] < 2:
        raise ValueError(f"{data_dir}/test.npy windows have {windows.shape[1]} token(s); at least 2 are needed")
    max_positions = model.config.max_position_embeddings
    if windows.shape[1] > max_positions:
        raise ValueError(
            f"the test windows have {windows.shape[1]} tokens but the model takes at most {max_positions}; "
            "evaluate data prepared with the model's data.window"
        )
    largest = int(windows.max())
    if largest >= model.config.vocab_size:
        raise ValueError(
            f"{data_dir}/test.npy holds token id {largest} but the model's vocabulary has "
            f"{model.config.vocab_size} entries; evaluate with the data the model was trained on"
        )


def window_table(forward: dict, inverse: dict) -> "pd.DataFrame":  # noqa: F821
    """One row per test window: forward CE sum and rows, and per protocol the inverse CE sum, rows and
    top-1 hits with and without g. Paired statistics between models are computed from it downstream."""
    import pandas as pd

    columns = {"window": range(len(forward["per_window"]["rows"])),
               "forward_ce_sum": forward["per_window"]["ce_sum"], "forward_rows": forward["per_window"]["rows"]}
    for protocol, result in inverse.items():
        for key, values in result["per_window"].items():
            columns[f"{protocol}_{key}"] = values
    return pd.DataFrame(columns)


def evaluate(
    model_dir: Path,
    data_dir: Path,
    variant: str,
    forward_out: Path,
    inverse_out: Path,
    config: dict,
    windows_out: Optional[Path] = None,
) -> None:
    """Write forward.json and inverse.json (and the per-window values, windows_out) for the model on the test split."""
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    cfg = EvaluateConfig.from_dict(config["evaluate"])
    _, gradient_only = parse_variant(variant)  # the Baseline projects x - g like the plain variants
    objective_cfg = ObjectiveConfig.from_dict(config["objective"])
    ks = sorted(set(cfg.top_k))
    device = resolve_device(cfg.device)

    windows = load_split(data_dir, "test")
    if cfg.max_sequences is not None:
        windows = windows[: cfg.max_sequences]
    model = load_model(model_dir, device)  # eval mode
    _check_test_windows(data_dir, windows, model)
    logger.info("evaluating %s (%s) on %d test windows on %s", variant, model_dir, windows.shape[0], device)

    # One line for the whole job: the forward pass, then one inverse pass per protocol.
    with Progress(_n_batches(windows, cfg.batch_size) * (1 + len(PROTOCOLS)), f"evaluate {variant}", unit="batch",
                  log=logger) as progress:
        forward = forward_metrics(model, windows, cfg.batch_size, ks, device, progress)
        inverse = {
            protocol: inverse_metrics(
                model, windows, protocol, gradient_only, objective_cfg, cfg.batch_size, ks, cfg.seed, device,
                progress,
            )
            for protocol in PROTOCOLS
        }
    meta = provenance(
        {key: dict(config[key]) for key in ("objective", "evaluate")},
        inputs={"model": model_fingerprint(model_dir), "test.npy": file_sha256(data_dir / "test.npy")},
        variant=variant,
        model_dir=str(model_dir),
        data_dir=str(data_dir),
        sequences=int(windows.shape[0]),
        numerics=numerics(device),
    )
    if windows_out is not None:
        write_text(windows_out, window_table(forward, inverse).to_csv(index=False))
    forward.pop("per_window")
    for result in inverse.values():
        result.pop("per_window")
    write_json(forward_out, {**forward, "meta": meta})
    write_json(inverse_out, {**inverse, "meta": meta})
    first = f"top{ks[0]}"
    logger.info(
        "%s: forward ce %.4f (ppl %.2f, %s %.3f) | inverse %s %s",
        variant, forward["ce"], forward["perplexity"], first, forward[first], first,
        ", ".join(f"{p} {inverse[p][first]:.3f} (without g {inverse[p]['without_g'][first]:.3f})" for p in PROTOCOLS),
    )
