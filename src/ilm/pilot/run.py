"""The pilot's steps as the rules call them: embed, train one variant, attack one variant.

Its table and figure are ilm.tables.pag_pilot and ilm.figures.pag_fgsm_sweep (`ilm table`, `ilm figure`).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Optional

from ilm.io import atomic_path, fingerprints, provenance, write_json
from ilm.pilot.config import PILOT_VARIANTS, PilotConfig, resolve_device

log = logging.getLogger("ilm.pilot")


def embed(config: dict, encoder_dir: Path, source: Optional[Path], train_out: Path, test_out: Path,
          info_out: Path) -> dict:
    from ilm.pilot.data import embed_dataset

    cfg = PilotConfig.from_dict(config["pilot"])
    return embed_dataset(cfg, config, Path(encoder_dir), Path(source) if source else None, Path(train_out),
                         Path(test_out), Path(info_out), resolve_device(cfg.device))


def train(config: dict, variant: str, train_embeddings: Path, info: Path, model_out: Path, log_out: Path,
          run_out: Path) -> None:
    """Train `variant` on the train embeddings (validation carved from them); write weights, log and record."""
    from ilm.pilot.data import read_embeddings
    from ilm.pilot.train import save_classifier, train_variant

    cfg = PilotConfig.from_dict(config["pilot"])
    if variant not in PILOT_VARIANTS:
        raise ValueError(f"unknown pilot variant {variant!r}; pilot.variants may hold {', '.join(PILOT_VARIANTS)}")
    classes = json.loads(Path(info).read_text())["classes"]
    x, y = read_embeddings(train_embeddings)
    model, history = train_variant(variant, x, y, classes, cfg, resolve_device(cfg.device))
    save_classifier(model, model_out)
    with atomic_path(log_out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    best = min(history, key=lambda r: r["val_loss"])
    write_json(run_out, {"variant": variant, "classes": classes, "dim": int(x.shape[1]),
                         "selected_epoch": best["epoch"], "selected_val_loss": best["val_loss"],
                         "selected_val_acc": best["val_acc"],
                         "meta": provenance(config, fingerprints([train_embeddings, info]),
                                            outputs_sha256=fingerprints([model_out]))})


def attack(config: dict, variant: str, model: Path, run: Path, test_embeddings: Path, out: Path) -> dict:
    """Clean and robust accuracies of one variant on the test embeddings (JSON)."""
    from ilm.pilot.attacks import evaluate_robustness
    from ilm.pilot.data import read_embeddings
    from ilm.pilot.train import load_classifier
    from ilm.stats import StatisticsConfig

    cfg = PilotConfig.from_dict(config["pilot"])
    confidence = StatisticsConfig.from_dict(config["statistics"]).confidence
    device = resolve_device(cfg.device)
    record = json.loads(Path(run).read_text())
    x, y = read_embeddings(test_embeddings)
    clf = load_classifier(model, record["dim"], cfg, record["classes"], device)
    result = {"variant": variant, "confidence": confidence,
              **evaluate_robustness(clf, x, y, record["classes"], cfg, confidence, device)}
    result["meta"] = provenance(config, fingerprints([model, run, test_embeddings]))
    write_json(out, result)
    return result
