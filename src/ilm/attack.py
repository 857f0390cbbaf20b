"""One resumable GCG shard job, and the GCG sample plan (docs/method.md §4.1).

`select_gcg_samples` fixes the attacked windows once (`results/gcg/samples.json`) through
ilm.shards: a seeded subset of the test split, the same for every variant, dealt into
`gcg.shards` shards. It runs right after the data is prepared, so a `gcg.count` larger than the
test split fails before any GPU job.

A shard job (`attack_gcg_shard`) writes its records through ilm.shards' locked, resumable
partial file. Its meta file records the settings, model, test data and random-number scheme
(`ilm.gcg.SAMPLER`), so a partial file from another model, other settings or another scheme is
never resumed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from ilm import faults
from ilm.io import file_sha256, model_fingerprint
from ilm.progress import Progress
from ilm.shards import Stage, check_records, open_shard, read_plan, shard_samples, stage_samples, write_plan

log = logging.getLogger("ilm.attack")

# Settings that change a shard's records; batch_samples, max_candidates_per_forward and device do not.
RESULT_KEYS = (
    "prefix_length",
    "target_length",
    "steps",
    "search_width",
    "top_k",
    "fraction",
    "count",
    "sample_seed",
    "seed",
    "shards",
    "allow_special_tokens",
    "precision",
    "candidates",
)
# Settings that fix which windows are attacked and by which shard.
SELECTION_KEYS = ("fraction", "count", "sample_seed", "shards")
RECORD_KEYS = (
    "sample",
    "model_sha256",
    "prefix_ids",
    "target_ids",
    "attack_ids",
    "orig_loss",
    "attack_loss",
    "best_step",
    "trajectory",
    "init_loss",
    "rank_correlation",
    "kl",
    "seconds",
)


STAGE = Stage(section="gcg", command="gcg-attack", plan_command="gcg-samples")


# --- which windows ---------------------------------------------------------------------------------------


def _check_window(windows: np.ndarray, gcg: Mapping, path: Path) -> None:
    P, L = gcg["prefix_length"], gcg["target_length"]
    if windows.shape[1] < P + L:
        raise ValueError(
            f"{path} windows have {windows.shape[1]} tokens but gcg.prefix_length + gcg.target_length = {P + L}"
        )


def write_sample_plan(data_dir: Path, out: Path, config: Mapping) -> dict:
    """results/gcg/samples.json: the attacked test windows and their shards, fixed for every variant."""
    from ilm.data import load_split

    data_dir, gcg = Path(data_dir), config["gcg"]
    windows = load_split(data_dir, "test")
    _check_window(windows, gcg, data_dir / "test.npy")
    keys = ("prefix_length", "target_length", *SELECTION_KEYS)
    return write_plan(out, len(windows), gcg, keys, file_sha256(data_dir / "test.npy"), STAGE)


def read_sample_plan(path: Path, config: Mapping) -> dict:
    """samples.json, checked against the current selection settings."""
    return read_plan(path, config["gcg"], SELECTION_KEYS, STAGE)


# --- one shard --------------------------------------------------------------------------------------------


def expected_fields(windows, gcg: Mapping):
    """What a record of sample s must hold: its windows from the test split and a full trajectory."""
    P, L = gcg["prefix_length"], gcg["target_length"]

    def expected(s: int) -> dict:
        if not 0 <= s < len(windows):
            return {"sample": None}  # no such window: refused
        window = np.asarray(windows[s])
        return {"prefix_ids": window[:P].tolist(), "target_ids": window[P : P + L].tolist()}

    return expected


def check_trajectories(records, steps: int, path: Path, hint: str) -> None:
    """Every record's trajectory has one value per step."""
    for rec in records:
        if len(rec["trajectory"]) != steps:
            raise ValueError(
                f"{path} holds a record for sample {rec['sample']} that does not fit this shard or data: "
                f"a trajectory of {len(rec['trajectory'])} steps, but gcg.steps is {steps}; {hint}"
            )


def to_record(sample: int, model_sha256: str, prefix: np.ndarray, target: np.ndarray, result) -> dict:
    """One JSON line of a shard (docs/method.md §4.3)."""
    return {
        "sample": int(sample),
        "model_sha256": model_sha256,
        "prefix_ids": [int(t) for t in prefix],
        "target_ids": [int(t) for t in target],
        "attack_ids": list(result.attack_ids),
        "orig_loss": result.orig_loss,
        "attack_loss": result.attack_loss,
        "best_step": result.best_step,
        "trajectory": list(result.trajectory),
        "init_loss": result.init_loss,
        "rank_correlation": result.rank_correlation,
        "kl": result.kl,
        "seconds": result.seconds,
    }


def attack_shard(model_dir: Path, data_dir: Path, shard: int, out: Path, config: dict) -> None:
    """Attack shard `shard` of the GCG samples and write `out` (one JSON record per sample), resumably."""
    from ilm import gcg as gcg_attack
    from ilm.data import load_split

    model_dir, data_dir, out = Path(model_dir), Path(data_dir), Path(out)
    gcg = config["gcg"]
    gcfg = gcg_attack.GCGConfig.from_dict(gcg)
    windows = load_split(data_dir, "test")  # (N, window) uint16, memory-mapped
    _check_window(windows, gcg, data_dir / "test.npy")
    mine = shard_samples(stage_samples(len(windows), gcg, STAGE), shard, gcg["shards"], STAGE.section)
    fingerprint = model_fingerprint(model_dir)
    identity = {
        "settings": {k: gcg[k] for k in RESULT_KEYS},
        "inputs_sha256": {"model": fingerprint, "test.npy": file_sha256(data_dir / "test.npy")},
        "model_sha256": fingerprint,
        "sampler": gcg_attack.SAMPLER,
    }
    meta = {"config": dict(gcg), "model_dir": str(model_dir), "shard": shard, "samples": [int(s) for s in mine],
            "numerics": _numerics(gcfg.device)}
    expected = expected_fields(windows, gcg)

    def check(records: list[dict], path: Path) -> None:
        hint = f"delete {path} to restart the shard"
        check_records(records, mine, fingerprint, expected, path, hint)
        check_trajectories(records, gcg["steps"], path, hint)

    with open_shard(out, identity, meta, check, STAGE) as writer:
        done = writer.done
        todo = [int(s) for s in mine if int(s) not in done]
        log.info(
            "shard %d/%d: %d samples, %d already done, %d to attack",
            shard, gcg["shards"], len(mine), len(done), len(todo),
        )
        _attack_batches(writer, todo, windows, model_dir, fingerprint, gcfg, gcg, shard, len(done), len(mine))
    log.info("shard %d complete: %s", shard, out)


def _numerics(device_name: str) -> dict:
    from ilm.model import numerics, resolve_device

    return numerics(resolve_device(device_name))


def _attack_batches(
    writer, todo: list[int], windows, model_dir: Path, fingerprint: str, gcfg, gcg: Mapping, shard: int,
    n_done: int, n_mine: int,
) -> None:
    """Attack `todo` in batches of gcg.batch_samples, appending each batch's records to the partial file."""
    from ilm import gcg as gcg_attack
    from ilm.model import load_model, resolve_device

    if not todo:
        return
    P, L = gcfg.prefix_length, gcfg.target_length
    model = gcg_attack.use_sdpa_attention(load_model(model_dir, resolve_device(gcfg.device)))
    kill_after = faults.gcg_stop_after_batches()
    batch_size = int(gcg["batch_samples"])
    n_batches = (len(todo) + batch_size - 1) // batch_size
    # Counted in sample-steps, so a line comes every 30 s even when one batch takes minutes.
    progress = Progress(n_mine * gcfg.steps, f"gcg shard {shard}", unit="sample-step", done=n_done * gcfg.steps,
                        log=log)
    for b in range(n_batches):
        batch = todo[b * batch_size : (b + 1) * batch_size]
        rows = np.asarray(windows[batch]).astype(np.int64)  # (S, window)
        prefix, target = rows[:, :P], rows[:, P : P + L]
        started = time.perf_counter()
        results = gcg_attack.run(model, prefix, target, gcfg, sample_seeds=batch, progress=progress)
        seconds = time.perf_counter() - started
        writer.append([to_record(s, fingerprint, p, t, r) for s, p, t, r in zip(batch, prefix, target, results)])
        log.info(
            "shard %d | batch %03d/%03d | samples %d/%d | %.1f sample-steps/s",
            shard, b + 1, n_batches, n_done + b * batch_size + len(batch), n_mine,
            len(batch) * gcfg.steps / seconds,
        )
        if kill_after is not None and b + 1 >= kill_after:
            log.warning("%s=%d: stopping after %d batches", faults.GCG_STOP_AFTER_BATCHES, kill_after, b + 1)
            faults.simulate_kill()
    progress.close()
