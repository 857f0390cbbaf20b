"""The pilot's steps as the rules call them: embed, train one variant, attack one variant, table, figure."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from ilm.io import atomic_path, fingerprints, provenance, write_json
from ilm.pilot.config import PILOT_NAMES, PILOT_VARIANTS, PilotConfig, resolve_device

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


def _pct(r: dict) -> float:
    return 100.0 * r["accuracy"]


def _ci(r: dict) -> str:
    return f"[{100 * r['low']:.1f}, {100 * r['high']:.1f}]"


def attack_label(row: dict) -> str:
    name = "α" if row["attack"] == "FGSM" else "ε"
    return f"{row['attack']} {row['norm']} {name}={row['eps']:g}"


def table(metric_files: Sequence[Path], out_stem: Path, config: dict):
    """pag_pilot: a row per variant; accuracy (%) clean and under each attack, with n and Wilson intervals."""
    import pandas as pd

    from ilm.stats import StatisticsConfig, level_label
    from ilm.tables.common import write_table

    confidence = StatisticsConfig.from_dict(config["statistics"]).confidence
    results = {json.loads(Path(p).read_text())["variant"]: json.loads(Path(p).read_text()) for p in metric_files}
    rows = []
    for variant in [v for v in PILOT_VARIANTS if v in results]:
        res = results[variant]
        if abs(res["confidence"] - confidence) > 1e-12:
            raise ValueError(f"{variant}'s metrics hold {res['confidence']:g} intervals but statistics.confidence "
                             f"is {confidence:g}; rerun attack_pilot")
        row = {"Model": PILOT_NAMES[variant], "n": res["clean"]["n"], "Clean (%)": _pct(res["clean"]),
               f"Clean {level_label(confidence)} CI": _ci(res["clean"])}
        for a in res["attacks"]:
            label = attack_label(a)
            row[f"{label} (%)"] = _pct(a)
            row[f"{label} CI"] = _ci(a)
            if a["n"] != res["clean"]["n"]:
                row[f"{label} n"] = a["n"]
        rows.append(row)
    df = pd.DataFrame(rows)
    write_table(df, out_stem, digits=1,
                caption="PAG pilot: accuracy (%) of each classifier on clean and attacked test embeddings",
                label="tab:pag_pilot")
    return df


def figure(metric_files: Sequence[Path], out_stem: Path, config: dict):
    """pag_fgsm_sweep: FGSM accuracy against alpha, one line per variant, Wilson bands."""
    from matplotlib.figure import Figure

    from ilm.figures.common import line_style, palette, paper_style, save
    from ilm.stats import StatisticsConfig, level_label

    confidence = StatisticsConfig.from_dict(config["statistics"]).confidence
    results = {}
    for p in metric_files:
        res = json.loads(Path(p).read_text())
        results[res["variant"]] = res
    variants = [v for v in PILOT_VARIANTS if v in results]
    with paper_style():
        colours = palette(len(variants))
        fig = Figure(figsize=(5.5, 3.8), layout="constrained")
        ax = fig.add_subplot()
        for i, variant in enumerate(variants):
            sweep = results[variant]["sweep"]
            alphas = [r["alpha"] for r in sweep]
            style = line_style(i, colours)
            ax.plot(alphas, [_pct(r) for r in sweep], label=f"{PILOT_NAMES[variant]} (n={sweep[0]['n']})",
                    **style, linewidth=1.4, markersize=3, markevery=max(1, len(alphas) // 10))
            ax.fill_between(alphas, [100 * r["low"] for r in sweep], [100 * r["high"] for r in sweep],
                            color=colours[i], alpha=0.12, linewidth=0)
        ax.set_xlabel("FGSM step α (L∞, embedding space)")
        ax.set_ylabel("Accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("PAG pilot: accuracy under FGSM")
        ax.legend(title=f"bands: {level_label(confidence)} Wilson CI", frameon=True, fontsize="small")
        save(fig, out_stem)
    return fig
