"""Which test windows GCG attacks, split into shards, and one resumable shard job (method-spec §4.1).

A shard appends each finished batch of records to `shard{k}.partial.jsonl` (flushed and
fsynced) and renames it to `shard{k}.jsonl` only when every sample is done, so the declared
output never looks finished early and a killed job resumes where it stopped. Beside it,
`shard{k}.meta.json` records what produced the records (settings, model fingerprint); a
partial file written under other settings or by another model is discarded, not resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ilm.io import provenance, write_json, write_text

log = logging.getLogger("ilm.attack")

# Test hook: exit the process after this many appended batches, as a kill would.
STOP_AFTER_BATCHES_ENV = "ILM_GCG_STOP_AFTER_BATCHES"
STOP_EXIT_CODE = 3

# Settings that change a shard's records; batch_samples, max_candidates_per_forward and device do not.
_RESULT_KEYS = (
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
)


def select_samples(n_test: int, fraction: float, count: Optional[int], seed: int) -> np.ndarray:
    """Sorted test indices to attack: a seeded subset of `count` windows, or `fraction` of them (§4.1).

    It depends only on its arguments, so every variant attacks the same windows.
    """
    if n_test < 0:
        raise ValueError(f"n_test must be >= 0 (got {n_test})")
    if count is not None:
        if count < 1:
            raise ValueError(f"gcg.count must be a positive integer or null (got {count})")
        if count > n_test:
            raise ValueError(
                f"gcg.count ({count}) is larger than the test split ({n_test} windows); "
                "lower gcg.count or set it to null and use gcg.fraction"
            )
        n = count
    else:
        if not 0 < fraction <= 1:
            raise ValueError(f"gcg.fraction must be in (0, 1] (got {fraction})")
        n = int(fraction * n_test)
    order = np.random.default_rng(seed).permutation(n_test)
    return np.sort(order[:n]).astype(np.int64)


def shard_samples(samples: np.ndarray, shard: int, n_shards: int) -> np.ndarray:
    """Shard `shard` of `n_shards`: every n-th sample starting at `shard` (a partition of `samples`)."""
    if n_shards < 1:
        raise ValueError(f"gcg.shards must be >= 1 (got {n_shards})")
    if not 0 <= shard < n_shards:
        raise ValueError(f"--shard {shard} is out of range: it must be in [0, gcg.shards={n_shards})")
    return np.asarray(samples)[shard::n_shards]


def partial_path(out: Path) -> Path:
    """The resume file beside a shard output: shard{k}.jsonl -> shard{k}.partial.jsonl."""
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def meta_path(out: Path) -> Path:
    """The provenance file beside a shard output: shard{k}.jsonl -> shard{k}.meta.json."""
    return out.with_name(f"{out.stem}.meta.json")


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 of the model's config and weights: a retrained model invalidates old partial records."""
    digest = hashlib.sha256()
    files = [model_dir / "config.json", *sorted(model_dir.glob("*.safetensors")), *sorted(model_dir.glob("*.bin"))]
    for file in files:
        if file.is_file():
            digest.update(file.name.encode())
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _read_partial(path: Path) -> list[dict]:
    """Records of a partial file; a trailing line without newline (cut by a kill) is dropped."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    if lines[-1]:
        log.warning("%s: dropping a truncated last line (%d characters)", path, len(lines[-1]))
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number} is not a JSON record; delete {path} to restart the shard") from None
    return records


def _check_resumed(records: list[dict], mine: np.ndarray, windows, gcg: dict, path: Path) -> None:
    """Resumed records must belong to this shard, be unique and match the data."""
    P, L = gcg["prefix_length"], gcg["target_length"]
    allowed = set(int(s) for s in mine)
    seen: set[int] = set()
    for rec in records:
        s = int(rec["sample"])
        window = np.asarray(windows[s])
        if (
            s not in allowed
            or s in seen
            or rec["prefix_ids"] != window[:P].tolist()
            or rec["target_ids"] != window[P : P + L].tolist()
            or len(rec["trajectory"]) != gcg["steps"]
        ):
            raise ValueError(
                f"{path} holds a record for sample {s} that does not fit this shard or data; delete {path} to restart"
            )
        seen.add(s)


def to_record(sample: int, prefix: np.ndarray, target: np.ndarray, result) -> dict:
    """One JSON line of a shard (DESIGN: GCG record)."""
    return {
        "sample": int(sample),
        "prefix_ids": [int(t) for t in prefix],
        "target_ids": [int(t) for t in target],
        "attack_ids": list(result.attack_ids),
        "orig_loss": result.orig_loss,
        "attack_loss": result.attack_loss,
        "best_step": result.best_step,
        "trajectory": list(result.trajectory),
        "kl": result.kl,
        "seconds": result.seconds,
    }


def _append(path: Path, records: list[dict]) -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _stop_after_batches() -> Optional[int]:
    value = os.environ.get(STOP_AFTER_BATCHES_ENV)
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(f"{STOP_AFTER_BATCHES_ENV} must be a non-negative integer (got {value!r})")
    return int(value)


def attack_shard(model_dir: Path, data_dir: Path, shard: int, out: Path, config: dict) -> None:
    """Attack shard `shard` of the GCG samples and write `out` (one JSON record per sample), resumably."""
    from ilm import gcg as gcg_attack
    from ilm.data import load_split
    from ilm.model import load_model, resolve_device

    model_dir, data_dir, out = Path(model_dir), Path(data_dir), Path(out)
    gcg = config["gcg"]
    gcfg = gcg_attack.GCGConfig.from_dict(gcg)
    P, L = gcfg.prefix_length, gcfg.target_length
    windows = load_split(data_dir, "test")  # (N, window) uint16, memory-mapped
    if windows.shape[1] < P + L:
        raise ValueError(
            f"test windows have {windows.shape[1]} tokens but gcg.prefix_length + gcg.target_length = {P + L}"
        )
    samples = select_samples(len(windows), gcg["fraction"], gcg["count"], gcg["sample_seed"])
    mine = shard_samples(samples, shard, gcg["shards"])
    partial = partial_path(out)

    fingerprint = model_fingerprint(model_dir)
    settings = {k: gcg[k] for k in _RESULT_KEYS}
    meta = provenance(
        dict(gcg), model_dir=str(model_dir), model_sha256=fingerprint, shard=shard, samples=[int(s) for s in mine]
    )
    records: list[dict] = []
    if partial.exists():
        old = json.loads(meta_path(out).read_text()) if meta_path(out).exists() else {}
        old_settings = {k: old.get("config", {}).get(k) for k in _RESULT_KEYS}
        if old.get("model_sha256") == fingerprint and old_settings == settings:
            records = _read_partial(partial)
            _check_resumed(records, mine, windows, gcg, partial)
        else:
            log.warning("%s was written by another model or other gcg settings: starting the shard over", partial)
    write_json(meta_path(out), meta)
    # Rewrite the partial file with only whole records, so appends never follow a cut line.
    write_text(partial, "".join(json.dumps(r) + "\n" for r in records))

    done = {int(r["sample"]) for r in records}
    todo = [int(s) for s in mine if int(s) not in done]
    log.info(
        "shard %d/%d: %d samples, %d already done, %d to attack", shard, gcg["shards"], len(mine), len(done), len(todo)
    )
    stop_after = _stop_after_batches()
    model = None
    if todo:
        model = gcg_attack.use_sdpa_attention(load_model(model_dir, resolve_device(gcfg.device)))
    batch_size = int(gcg["batch_samples"])
    n_batches = (len(todo) + batch_size - 1) // batch_size
    for b in range(n_batches):
        batch = todo[b * batch_size : (b + 1) * batch_size]
        rows = np.asarray(windows[batch]).astype(np.int64)  # (S, window)
        prefix, target = rows[:, :P], rows[:, P : P + L]
        started = time.perf_counter()
        results = gcg_attack.run(model, prefix, target, gcfg, sample_seeds=batch)
        seconds = time.perf_counter() - started
        _append(partial, [to_record(s, p, t, r) for s, p, t, r in zip(batch, prefix, target, results)])
        finished = len(done) + b * batch_size + len(batch)
        log.info(
            "shard %d | batch %03d/%03d | samples %d/%d | %.1f sample-steps/s",
            shard,
            b + 1,
            n_batches,
            finished,
            len(mine),
            len(batch) * gcfg.steps / seconds,
        )
        if stop_after is not None and b + 1 >= stop_after:
            log.warning("%s=%d: stopping after %d batches", STOP_AFTER_BATCHES_ENV, stop_after, b + 1)
            raise SystemExit(STOP_EXIT_CODE)
    os.replace(partial, out)
    log.info("shard %d complete: %s", shard, out)
