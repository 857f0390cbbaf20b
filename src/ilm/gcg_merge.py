"""Merge one variant's GCG shards into per-sample losses and the success-rate sweep (docs/method.md §4.4).

The merge refuses an incomplete or mixed set of shards: every sample the plan
(`results/gcg/samples.json`) assigned to a shard must be in it exactly once, and every
record must come from the model being summarised.

Success at budget s (docs/method.md §0): the best-so-far attack after s steps has target CE
<= the original prefix's, i.e. trajectory[s-1] <= orig_loss. The paper's post-hoc definition
(Figure 4, eval_gcg.py: final best attack with 0-based best_step <= s, and finally successful)
is reported beside it as `success_rate_posthoc`, exactly as the paper counted: best_step <= s
admits an attack first reached at step s+1, one step past the budget (method-spec §4.4). Each rate carries its sample count and a Wilson interval at the level
`statistics.confidence` (ilm.stats), which the `confidence` column records.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ilm.io import model_fingerprint, write_text
from ilm.stats import StatisticsConfig, wilson_interval

log = logging.getLogger("ilm.gcg_merge")

ID_COLUMNS = ("prefix_ids", "target_ids", "attack_ids")


def budget_column(iterations: int) -> str:
    """Per-sample column holding the best-so-far loss after `iterations` steps."""
    return f"best_loss_{iterations}"


def read_shard(path: Path) -> list[dict]:
    """The records of one finished shard file (one JSON object per line)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"GCG shard {path} does not exist; run `ilm gcg-attack` for it first")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(
                f"{path}:{number} is not a JSON record; run `ilm gcg-attack` for that shard again"
            ) from None
    return records


def check_shard(
    path: Path, records: list[dict], assigned: Sequence[int], steps: int, model_sha256: Optional[str]
) -> None:
    """A finished shard holds each assigned sample exactly once, nothing else, all from one model."""
    counts: dict[int, int] = {}
    for rec in records:
        counts[int(rec["sample"])] = counts.get(int(rec["sample"]), 0) + 1
    again = sorted(s for s, n in counts.items() if n > 1)
    missing = sorted(set(int(s) for s in assigned) - set(counts))
    foreign = sorted(set(counts) - set(int(s) for s in assigned))
    problems = []
    if missing:
        problems.append(f"lacks {len(missing)} assigned sample(s) {missing[:10]}")
    if again:
        problems.append(f"holds sample(s) {again[:10]} more than once")
    if foreign:
        problems.append(f"holds sample(s) {foreign[:10]} that the plan gives to another shard")
    if model_sha256 is not None:
        others = sorted({str(r.get("model_sha256"))[:12] for r in records if r.get("model_sha256") != model_sha256})
        if others:
            problems.append(f"holds records of another model ({', '.join(others)}, not {model_sha256[:12]})")
    for rec in records:
        if len(rec["trajectory"]) != steps:
            problems.append(
                f"has a trajectory of {len(rec['trajectory'])} steps for sample {rec['sample']} "
                f"but gcg.steps is {steps}"
            )
            break
        if not 0 <= rec["best_step"] < steps:
            problems.append(f"has best_step {rec['best_step']} for sample {rec['sample']}")
            break
    if problems:
        raise ValueError(f"GCG shard {path} " + "; ".join(problems) + "; run `ilm gcg-attack` for it again")


def per_sample_table(records: list[dict], variant: str, iterations: Sequence[int]) -> pd.DataFrame:
    """One row per attacked sample, ids as space-separated strings, best-so-far loss at every budget."""
    rows = []
    for rec in sorted(records, key=lambda r: r["sample"]):
        row = {
            "variant": variant,
            "sample": int(rec["sample"]),
            "orig_loss": rec["orig_loss"],
            "attack_loss": rec["attack_loss"],
            "delta_loss": rec["orig_loss"] - rec["attack_loss"],
            "success": bool(rec["attack_loss"] <= rec["orig_loss"]),
            "best_step": int(rec["best_step"]),
            "init_loss": rec["init_loss"],
            "rank_correlation": rec["rank_correlation"],
            "kl": rec["kl"],
            "seconds": rec.get("seconds", float("nan")),
        }
        row.update({key: " ".join(str(int(t)) for t in rec[key]) for key in ID_COLUMNS})
        row.update({budget_column(s): rec["trajectory"][s - 1] for s in iterations})
        rows.append(row)
    columns = [
        "variant", "sample", "orig_loss", "attack_loss", "delta_loss", "success", "best_step", "init_loss",
        "rank_correlation", "kl", "seconds",
        *ID_COLUMNS, *(budget_column(s) for s in iterations),
    ]
    return pd.DataFrame(rows, columns=columns)


def write_curves(out: Path, records: list[dict]) -> None:
    """`gcg_curves.npz`: per sample (sorted), the best-so-far loss after every step, the original and initial
    losses and the gradient diagnostic: what the robustness analysis (ilm.tables.claims) reads."""
    records = sorted(records, key=lambda r: r["sample"])
    arrays = {
        "sample": np.array([int(r["sample"]) for r in records], dtype=np.int64),
        "trajectory": np.array([r["trajectory"] for r in records], dtype=np.float64).reshape(len(records), -1),
        "orig_loss": np.array([r["orig_loss"] for r in records], dtype=np.float64),
        "init_loss": np.array([r["init_loss"] for r in records], dtype=np.float64),
        "rank_correlation": np.array([r["rank_correlation"] for r in records], dtype=np.float64),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)


def sweep_table(
    per_sample: pd.DataFrame, variant: str, iterations: Sequence[int], confidence: float
) -> pd.DataFrame:
    """Success rate at each iteration budget s (Figure 4), both definitions, over all attacked samples,
    with the Wilson interval of the first at level `confidence`."""
    n = len(per_sample)
    orig = per_sample["orig_loss"].to_numpy(dtype=float)
    final = per_sample["success"].to_numpy(dtype=bool)
    rows = []
    for s in iterations:
        best = per_sample[budget_column(s)].to_numpy(dtype=float)
        reached = per_sample["best_step"].to_numpy() <= s  # the paper's `steps <= s` on the 0-based best step
        successes = int(np.sum(best <= orig))
        low, high = wilson_interval(successes, n, confidence)
        rows.append(
            {
                "variant": variant,
                "iterations": int(s),
                "samples": n,
                "successes": successes,
                "success_rate": successes / n if n else float("nan"),
                "success_low": low,
                "success_high": high,
                "confidence": confidence,
                "success_rate_posthoc": float(np.mean(reached & final)) if n else float("nan"),
                "mean_best_loss": float(np.mean(best)) if n else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def summarise_shards(
    shards: Sequence[Path],
    variant: str,
    per_sample_out: Path,
    sweep_out: Path,
    config: Mapping,
    plan: Optional[Mapping] = None,
    model_dir: Optional[Path] = None,
    curves_out: Optional[Path] = None,
) -> None:
    """Merge one variant's shard files (in shard order) into gcg.csv (per sample) and gcg_sweep.csv (per budget).

    `plan` (samples.json) gives each shard's assigned samples; `model_dir` the model every
    record must come from. Without them only duplicates and trajectory lengths are checked.
    """
    gcg = config["gcg"]
    steps = int(gcg["steps"])
    iterations = sorted(int(s) for s in gcg["iterations"])
    if plan is not None and len(plan["shards"]) != len(shards):
        raise ValueError(
            f"the sample plan has {len(plan['shards'])} shards but {len(shards)} shard files were given; "
            "pass every shard of gcg.shards once, in order"
        )
    fingerprint = model_fingerprint(model_dir) if model_dir is not None else None
    records: list[dict] = []
    for k, shard in enumerate(shards):
        shard_records = read_shard(Path(shard))
        assigned = plan["shards"][k] if plan is not None else [r["sample"] for r in shard_records]
        check_shard(Path(shard), shard_records, assigned, steps, fingerprint)
        records += shard_records
    seen: dict[int, int] = {}
    for rec in records:
        seen[int(rec["sample"])] = seen.get(int(rec["sample"]), 0) + 1
    duplicates = sorted(s for s, n in seen.items() if n > 1)
    if duplicates:
        raise ValueError(
            f"samples {duplicates[:10]} appear in more than one GCG shard; pass each shard once and "
            "make sure all shards come from the same gcg.shards setting"
        )
    per_sample = per_sample_table(records, variant, iterations)
    statistics = StatisticsConfig.from_dict(config["statistics"])
    sweep = sweep_table(per_sample, variant, iterations, statistics.confidence)
    write_text(per_sample_out, per_sample.to_csv(index=False))
    write_text(sweep_out, sweep.to_csv(index=False))
    if curves_out is not None:
        write_curves(curves_out, records)
    log.info(
        "%s: %d samples from %d shards, success %s",
        variant, len(per_sample), len(shards),
        f"{per_sample['success'].mean():.3f}" if len(per_sample) else "n/a",
    )
