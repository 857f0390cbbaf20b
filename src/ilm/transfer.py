"""Transfer attacks: every model scored on the GCG prefixes found against every model (a success matrix).

A defence that only masks its gradient falls to attacks found on another model (Athalye, Carlini
and Wagner 2018, §5; Carlini et al. 2019, §4.4): if the Baseline's attacks succeed on an ILM
model more often than that model's own white-box attacks do, its resistance is not robustness.

For each target model t and each source model s, on the same attacked windows, t scores the
target y after the attack prefix found against s and after the original prefix, in the model's
own precision. Success uses the same criterion as the white-box attack: the attack's target CE
is at most the original prefix's, both under t. The diagonal (s = t) re-scores each model's own
best attack, so it equals its white-box final success.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ilm.io import model_fingerprint, write_text

log = logging.getLogger("ilm.transfer")

COLUMNS = ("source", "target", "sample", "orig_loss", "attack_loss", "success")


def _ids(column: pd.Series) -> np.ndarray:
    """(n, length) int64 ids from a column of space-separated ids."""
    return np.array([[int(t) for t in text.split()] for text in column], dtype=np.int64)


def read_attacks(per_sample: Mapping[str, Path]) -> dict[str, pd.DataFrame]:
    """Each source's gcg.csv, sorted by sample; all must hold the same windows (samples, prefixes and targets)."""
    frames = {name: pd.read_csv(path).sort_values("sample").reset_index(drop=True) for name, path in per_sample.items()}
    first_name, first = next(iter(frames.items()))
    for name, frame in frames.items():
        same = (
            len(frame) == len(first)
            and frame["sample"].tolist() == first["sample"].tolist()
            and frame["prefix_ids"].tolist() == first["prefix_ids"].tolist()
            and frame["target_ids"].tolist() == first["target_ids"].tolist()
        )
        if not same:
            raise ValueError(
                f"{per_sample[name]} and {per_sample[first_name]} attack different windows; "
                "rerun the GCG attacks of both with the same samples.json"
            )
    return frames


def transfer_losses(model, prefixes: np.ndarray, targets: np.ndarray, max_per_forward: int) -> np.ndarray:
    """(n,) target CE of each (prefix, target) pair under `model`, in the model's own precision."""
    import torch

    from ilm.gcg import candidate_losses

    device = next(model.parameters()).device
    prefix = torch.as_tensor(prefixes, device=device)[:, None, :]  # (n, 1, P)
    target = torch.as_tensor(targets, device=device)  # (n, L)
    return candidate_losses(model, prefix, target, max_per_forward, precision="fp32")[:, 0].double().cpu().numpy()


def transfer_matrix(
    models: Mapping[str, Path], per_sample: Mapping[str, Path], out: Path, config: Mapping
) -> pd.DataFrame:
    """Score every target model on every source's attacks; write one row per (source, target, sample) to `out`."""
    from ilm.gcg import use_sdpa_attention
    from ilm.model import load_model, resolve_device

    gcg = config["gcg"]
    frames = read_attacks(per_sample)
    any_frame = next(iter(frames.values()))
    originals, targets = _ids(any_frame["prefix_ids"]), _ids(any_frame["target_ids"])
    device = resolve_device(gcg["device"])
    rows = []
    for target_name, model_dir in models.items():
        model = use_sdpa_attention(load_model(model_dir, device))
        orig = transfer_losses(model, originals, targets, gcg["max_candidates_per_forward"])
        for source_name, frame in frames.items():
            attack = transfer_losses(model, _ids(frame["attack_ids"]), targets, gcg["max_candidates_per_forward"])
            rows.append(pd.DataFrame({
                "source": source_name, "target": target_name, "sample": frame["sample"].to_numpy(),
                "orig_loss": orig, "attack_loss": attack, "success": attack <= orig,
            }))
        log.info("%s (%s) scored on the attacks of %s", target_name, model_fingerprint(model_dir)[:12],
                 ", ".join(frames))
    table = pd.concat(rows, ignore_index=True)[list(COLUMNS)]
    write_text(out, table.to_csv(index=False))
    rates = table.groupby(["source", "target"])["success"].mean().unstack()
    log.info("transfer success (rows: source, columns: target):\n%s", rates.round(3).to_string())
    return table


def success_matrix(table: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Success rate of source (rows) attacks on target (columns) models, in `order`."""
    rates = table.groupby(["source", "target"])["success"].mean().unstack()
    return rates.reindex(index=list(order), columns=list(order))
