"""GCG merge and success-rate sweep (docs/method.md §4.4) on hand-made records: arithmetic and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ilm.config import validate_config
from ilm.gcg_merge import summarise_shards

STEPS = 4
MODEL_SHA = "a" * 64


def config(statistics=None, **gcg) -> dict:
    base = dict(prefix_length=2, target_length=2, steps=STEPS, iterations=[1, 2, 4], examples=2)
    return validate_config({"gcg": {**base, **gcg}, "statistics": statistics or {}})


def record(sample: int, orig: float, trajectory: list[float], best_step: int, kl: float = 0.5) -> dict:
    return {
        "sample": sample,
        "model_sha256": MODEL_SHA,
        "prefix_ids": [6, 7],
        "target_ids": [8, 9],
        "attack_ids": [10, 11],
        "orig_loss": orig,
        "attack_loss": trajectory[-1],
        "best_step": best_step,
        "trajectory": trajectory,
        "init_loss": trajectory[0] + 1.0,
        "rank_correlation": 0.25 * sample,
        "kl": kl,
        "seconds": 1.0,
    }


# Hand-made trajectories: (orig, trajectory, best_step).
# s0 succeeds from step 2 on (best first reached at step index 3); s1 never succeeds;
# s2 succeeds at step 1 already (best at index 0); s3 ties the original exactly at index 1.
RECORDS = [
    record(0, 2.0, [3.0, 1.9, 1.8, 1.5], 3, kl=1.0),
    record(1, 1.0, [4.0, 3.0, 2.0, 1.5], 3, kl=0.2),
    record(2, 3.0, [2.5, 2.5, 2.5, 2.5], 0, kl=2.0),
    record(3, 2.0, [2.5, 2.0, 2.0, 2.0], 1, kl=0.4),
]


def write_shards(folder: Path, records: list[dict], n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"shard{k}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records[k::n]))
        paths.append(path)
    return paths


def plan_of(records: list[dict], n: int = 2) -> dict:
    """The sample plan that deals `records` into n shards as write_shards does."""
    return {"shards": [[r["sample"] for r in records[k::n]] for k in range(n)]}


def summarise(tmp_path: Path, variant: str, records: list[dict]) -> tuple[Path, Path]:
    shards = write_shards(tmp_path / "gcg" / variant, records)
    per_sample = tmp_path / "metrics" / variant / "gcg.csv"
    sweep = tmp_path / "metrics" / variant / "gcg_sweep.csv"
    summarise_shards(shards, variant, per_sample, sweep, config(), plan=plan_of(records))
    return per_sample, sweep


def test_sweep_arithmetic_both_definitions(tmp_path):
    """Success at s uses the best-so-far loss after s steps; the post-hoc rate is the paper's: 0-based best_step <= s
    and final success (Figure 4's `steps <= s`)."""
    per_sample_csv, sweep_csv = summarise(tmp_path, "base", RECORDS)
    sweep = pd.read_csv(sweep_csv).set_index("iterations")
    # s=1: s2 only. s=2: s0 (1.9 <= 2.0), s2, s3 (tie). s=4: same three.
    assert sweep.loc[1, "success_rate"] == pytest.approx(1 / 4)
    assert sweep.loc[2, "success_rate"] == pytest.approx(3 / 4)
    assert sweep.loc[4, "success_rate"] == pytest.approx(3 / 4)
    assert sweep["successes"].tolist() == [1, 3, 3]
    # Post hoc (best_step <= s): s2 (best at 0) and s3 (best at 1) count from s=1, s0 (best at 3) only at s=4;
    # s1 never, as it fails. best_step < s would give 1/4 at s=1. At s=1 the paper's rate (2/4) exceeds the
    # best-so-far rate (1/4): s3's best attack, first reached at 0-based step 1, is the second step's.
    assert sweep.loc[1, "success_rate_posthoc"] == pytest.approx(2 / 4)
    assert sweep.loc[2, "success_rate_posthoc"] == pytest.approx(2 / 4)
    assert sweep.loc[4, "success_rate_posthoc"] == pytest.approx(3 / 4)
    assert sweep.loc[2, "mean_best_loss"] == pytest.approx((1.9 + 3.0 + 2.5 + 2.0) / 4)
    assert (sweep["samples"] == 4).all() and (sweep["variant"] == "base").all()
    # Published Wilson 95 % interval of 3/4: (0.3006, 0.9544).
    assert sweep.loc[4, "success_low"] == pytest.approx(0.3006, abs=1e-4)
    assert sweep.loc[4, "success_high"] == pytest.approx(0.9544, abs=1e-4)
    assert (sweep["confidence"] == 0.95).all()  # statistics.confidence's default, recorded with the interval

    per_sample = pd.read_csv(per_sample_csv)
    assert per_sample["sample"].tolist() == [0, 1, 2, 3]
    assert per_sample["success"].tolist() == [True, False, True, True]
    assert per_sample["delta_loss"].tolist() == pytest.approx([0.5, -0.5, 0.5, 0.0])
    assert per_sample["best_loss_2"].tolist() == pytest.approx([1.9, 3.0, 2.5, 2.0])
    assert per_sample["attack_ids"].tolist() == ["10 11"] * 4


def test_sweep_interval_follows_statistics_confidence(tmp_path):
    """statistics.confidence 0.9 gives the 90 % Wilson interval of 3/4, (0.3562, 0.9421) (z = 1.6449), and records it."""
    shards = write_shards(tmp_path / "gcg", RECORDS)
    sweep_csv = tmp_path / "sweep.csv"
    summarise_shards(shards, "base", tmp_path / "a.csv", sweep_csv, config({"confidence": 0.9}), plan=plan_of(RECORDS))
    final = pd.read_csv(sweep_csv).set_index("iterations").loc[4]
    assert (final["success_low"], final["success_high"]) == pytest.approx((0.3562, 0.9421), abs=1e-4)
    assert final["confidence"] == 0.9


def test_merge_rejects_duplicates_and_wrong_lengths(tmp_path):
    """A sample in two shards, or a trajectory whose length differs from gcg.steps, raises ValueError."""
    shards = write_shards(tmp_path / "dup", RECORDS + [record(4, 1.0, [1.0] * STEPS, 0), RECORDS[0]], n=2)
    with pytest.raises(ValueError, match=r"samples \[0\] appear in more than one GCG shard"):
        summarise_shards(shards, "base", tmp_path / "a.csv", tmp_path / "b.csv", config())
    shards = write_shards(tmp_path / "short", [record(0, 1.0, [1.0, 0.5], 1)], n=1)
    with pytest.raises(ValueError, match="gcg.steps is 4"):
        summarise_shards(shards, "base", tmp_path / "a.csv", tmp_path / "b.csv", config())
    assert not (tmp_path / "a.csv").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", r"shard0.jsonl lacks 1 assigned sample\(s\) \[2\]"),
        ("twice", r"shard1.jsonl holds sample\(s\) \[1\] more than once"),
        ("other_model", r"shard0.jsonl holds records of another model \(bbbbbbbbbbbb, not aaaaaaaaaaaa\)"),
        ("other_shard", r"shard1.jsonl holds sample\(s\) \[9\] that the plan gives to another shard"),
    ],
)
def test_merge_refuses_incomplete_or_mixed_shards(tmp_path, monkeypatch, case, message):
    """gcg-summary refuses a shard that lacks an assigned sample, holds one twice, or holds another model's record."""
    import ilm.gcg_merge

    monkeypatch.setattr(ilm.gcg_merge, "model_fingerprint", lambda model_dir: MODEL_SHA)
    shards = write_shards(tmp_path / "gcg", RECORDS)
    plan = plan_of(RECORDS)  # shard0: samples 0, 2; shard1: samples 1, 3
    if case == "missing":
        shards[0].write_text(json.dumps(RECORDS[0]) + "\n")
    elif case == "twice":
        with open(shards[1], "a") as f:
            f.write(json.dumps(RECORDS[1]) + "\n")
    elif case == "other_model":
        foreign = {**RECORDS[2], "model_sha256": "b" * 64}
        shards[0].write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(foreign) + "\n")
    else:
        with open(shards[1], "a") as f:
            f.write(json.dumps({**RECORDS[1], "sample": 9}) + "\n")
    with pytest.raises(ValueError, match=message):
        summarise_shards(
            shards, "base", tmp_path / "a.csv", tmp_path / "b.csv", config(), plan=plan, model_dir=tmp_path / "model"
        )
    assert not (tmp_path / "a.csv").exists()


def test_shard_count_must_match_the_plan(tmp_path):
    """Passing fewer shard files than the plan has shards is refused."""
    shards = write_shards(tmp_path / "gcg", RECORDS)
    with pytest.raises(ValueError, match="the sample plan has 3 shards but 2 shard files"):
        summarise_shards(
            shards, "base", tmp_path / "a.csv", tmp_path / "b.csv", config(), plan={"shards": [[], [], []]}
        )


def test_curves_hold_every_step_of_every_sample_in_sample_order(tmp_path):
    """gcg_curves.npz holds, sorted by sample, the whole trajectory and the original and initial losses of each record."""
    import numpy as np

    shards = write_shards(tmp_path / "gcg" / "base", RECORDS[::-1])
    curves = tmp_path / "gcg_curves.npz"
    summarise_shards(shards, "base", tmp_path / "a.csv", tmp_path / "b.csv", config(),
                     plan=plan_of(RECORDS[::-1]), curves_out=curves)
    with np.load(curves) as z:
        assert z["sample"].tolist() == [0, 1, 2, 3]
        assert z["trajectory"].tolist() == [r["trajectory"] for r in RECORDS]
        assert z["orig_loss"].tolist() == [r["orig_loss"] for r in RECORDS]
        assert z["init_loss"].tolist() == [r["trajectory"][0] + 1.0 for r in RECORDS]
        assert z["rank_correlation"].tolist() == [0.0, 0.25, 0.5, 0.75]
