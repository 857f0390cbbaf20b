"""Which test windows GCG attacks, split into shards, and one resumable shard job (docs/method.md §4.1).

`select_gcg_samples` fixes the attacked windows once (`results/gcg/samples.json`): a seeded
subset of the test split, the same for every variant, dealt into `gcg.shards` shards. It runs
right after the data is prepared, so a `gcg.count` larger than the test split fails before
any GPU job.

A shard job (`attack_gcg_shard`) owns `shard{k}.partial.jsonl` through an exclusive lock, so a
second process on the same shard fails at once instead of interleaving records. It appends
each finished batch of records (flushed and fsynced) and renames the file to `shard{k}.jsonl`
only when every sample is done, so the declared output never looks finished early and a
killed job resumes where it stopped. Every record names the model that produced it; beside
the partial file, `shard{k}.meta.json` records the settings, model and test data, and is
written only after the partial file has been reset, so a partial file from another model,
other settings or another random-number scheme (`ilm.gcg.SAMPLER`) is never resumed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator, Mapping, Optional

import numpy as np

from ilm import faults
from ilm.io import file_sha256, model_fingerprint, provenance, write_json

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
    "kl",
    "seconds",
)


# --- which windows ---------------------------------------------------------------------------------------


def sample_count(n_test: int, fraction: float, count: Optional[int], section: str = "gcg") -> int:
    """How many test windows GCG attacks (or `section` samples): `count`, or `fraction` of the split; at least one."""
    if n_test < 0:
        raise ValueError(f"n_test must be >= 0 (got {n_test})")
    if count is not None:
        if count < 1:
            raise ValueError(f"{section}.count must be a positive integer or null (got {count})")
        if count > n_test:
            raise ValueError(
                f"{section}.count ({count}) is larger than the test split ({n_test} windows); "
                f"lower {section}.count, or set it to null and use {section}.fraction"
            )
        return count
    if not 0 < fraction <= 1:
        raise ValueError(f"{section}.fraction must be in (0, 1] (got {fraction})")
    n = int(fraction * n_test)
    if n < 1:
        raise ValueError(
            f"{section}.fraction ({fraction}) of the {n_test} test windows selects no window; "
            f"raise {section}.fraction or set {section}.count"
        )
    return n


def select_samples(
    n_test: int, fraction: float, count: Optional[int], seed: int, section: str = "gcg"
) -> np.ndarray:
    """Sorted test indices to attack: a seeded subset of `count` windows, or `fraction` of them (§4.1).

    It depends only on its arguments, so every variant attacks the same windows.
    """
    n = sample_count(n_test, fraction, count, section)
    order = np.random.default_rng(seed).permutation(n_test)
    return np.sort(order[:n]).astype(np.int64)


def shard_samples(samples: np.ndarray, shard: int, n_shards: int) -> np.ndarray:
    """Shard `shard` of `n_shards`: every n-th sample starting at `shard` (a partition of `samples`)."""
    if n_shards < 1:
        raise ValueError(f"gcg.shards must be >= 1 (got {n_shards})")
    if not 0 <= shard < n_shards:
        raise ValueError(f"--shard {shard} is out of range: it must be in [0, gcg.shards={n_shards})")
    return np.asarray(samples)[shard::n_shards]


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
    samples = select_samples(len(windows), gcg["fraction"], gcg["count"], gcg["sample_seed"])
    plan = {
        "test_windows": int(len(windows)),
        "samples": samples.tolist(),
        "shards": [shard_samples(samples, k, gcg["shards"]).tolist() for k in range(gcg["shards"])],
        "meta": provenance(
            {k: gcg[k] for k in ("prefix_length", "target_length", *SELECTION_KEYS)},
            inputs={"test.npy": file_sha256(data_dir / "test.npy")},
        ),
    }
    write_json(out, plan)
    log.info("%d of %d test windows in %d shards -> %s", len(samples), len(windows), gcg["shards"], out)
    return plan


def read_sample_plan(path: Path, config: Mapping) -> dict:
    """samples.json, checked against the current selection settings."""
    return read_plan(path, config["gcg"], SELECTION_KEYS, "gcg", "gcg-samples")


def read_plan(path: Path, settings: Mapping, keys, section: str, command: str) -> dict:
    """A sample plan (GCG or inversion), checked against the `section` settings it was selected with.

    `keys` are the settings that decide the selection; `command` is the `ilm` command that rewrites the plan.
    """
    path = Path(path)
    try:
        plan = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable sample plan ({e}); run `ilm {command}` again") from None
    made_with = plan.get("meta", {}).get("config", {})
    differing = [k for k in keys if made_with.get(k) != settings[k]]
    if differing:
        raise ValueError(
            f"{path} was made with other {section} settings ({', '.join(f'{section}.{k}' for k in differing)}); "
            f"run `ilm {command}` again"
        )
    return plan


# --- one shard --------------------------------------------------------------------------------------------


def partial_path(out: Path) -> Path:
    """The resume file beside a shard output: shard{k}.jsonl -> shard{k}.partial.jsonl."""
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def meta_path(out: Path) -> Path:
    """The provenance file beside a shard output: shard{k}.jsonl -> shard{k}.meta.json."""
    return out.with_name(f"{out.stem}.meta.json")


@contextlib.contextmanager
def exclusive_file(path: Path) -> Iterator[int]:
    """Open (or create) `path` and hold an exclusive lock on it; ValueError at once if another process holds it.

    flock locks are seen across the nodes of NFS v4 and Lustre clients of a cluster. The loop
    guards against the file being renamed between our open and our lock.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(
                f"{path} is locked by another `ilm gcg-attack` process (an earlier job of this shard is still "
                "running); let it finish or cancel it, then run this shard again"
            ) from None
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _whole_records(text: str, path: Path) -> tuple[list[dict], int]:
    """(records, bytes they take): a trailing line without newline (cut by a kill) is dropped."""
    lines = text.split("\n")
    if lines[-1]:
        log.warning("%s: dropping a truncated last line (%d characters)", path, len(lines[-1]))
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number} is not a JSON record; delete {path} to restart the shard") from None
    return records, len(text.encode()) - len(lines[-1].encode())


def check_records(records: list[dict], mine: np.ndarray, windows, gcg: Mapping, fingerprint: str, path: Path) -> None:
    """Resumed records must be this model's, belong to this shard, be unique and match the data."""
    P, L = gcg["prefix_length"], gcg["target_length"]
    allowed = set(int(s) for s in mine)
    seen: set[int] = set()
    for rec in records:
        s = int(rec["sample"])
        if rec.get("model_sha256") != fingerprint:
            raise ValueError(
                f"{path} holds a record for sample {s} from another model ({str(rec.get('model_sha256'))[:12]}, "
                f"not {fingerprint[:12]}); delete {path} to restart the shard"
            )
        window = np.asarray(windows[s]) if 0 <= s < len(windows) else None
        if (
            s not in allowed
            or s in seen
            or window is None
            or rec["prefix_ids"] != window[:P].tolist()
            or rec["target_ids"] != window[P : P + L].tolist()
            or len(rec["trajectory"]) != gcg["steps"]
        ):
            raise ValueError(
                f"{path} holds a record for sample {s} that does not fit this shard or data; delete {path} to restart"
            )
        seen.add(s)


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
        "kl": result.kl,
        "seconds": result.seconds,
    }


def _append(fd: int, records: list[dict]) -> None:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    os.lseek(fd, 0, os.SEEK_END)
    while data:
        data = data[os.write(fd, data):]
    os.fsync(fd)


def _resumable(out: Path, settings: dict, fingerprint: str, test_sha: str, sampler: str) -> bool:
    """Whether the partial file beside `out` was written for these settings, this model, this data and sampler."""
    try:
        old = json.loads(meta_path(out).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        old.get("model_sha256") == fingerprint
        and old.get("sampler") == sampler
        and old.get("inputs_sha256", {}).get("test.npy") == test_sha
        and {k: old.get("config", {}).get(k) for k in RESULT_KEYS} == settings
    )


def attack_shard(model_dir: Path, data_dir: Path, shard: int, out: Path, config: dict) -> None:
    """Attack shard `shard` of the GCG samples and write `out` (one JSON record per sample), resumably."""
    from ilm import gcg as gcg_attack
    from ilm.data import load_split

    model_dir, data_dir, out = Path(model_dir), Path(data_dir), Path(out)
    gcg = config["gcg"]
    gcfg = gcg_attack.GCGConfig.from_dict(gcg)
    windows = load_split(data_dir, "test")  # (N, window) uint16, memory-mapped
    _check_window(windows, gcg, data_dir / "test.npy")
    samples = select_samples(len(windows), gcg["fraction"], gcg["count"], gcg["sample_seed"])
    mine = shard_samples(samples, shard, gcg["shards"])
    fingerprint = model_fingerprint(model_dir)
    test_sha = file_sha256(data_dir / "test.npy")
    settings = {k: gcg[k] for k in RESULT_KEYS}
    partial = partial_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    with exclusive_file(partial) as fd:
        records: list[dict] = []
        keep_bytes = 0
        text = partial.read_text()
        if text and _resumable(out, settings, fingerprint, test_sha, gcg_attack.SAMPLER):
            records, keep_bytes = _whole_records(text, partial)
            check_records(records, mine, windows, gcg, fingerprint, partial)
        elif text:
            log.warning(
                "%s was written by another model, other data, other gcg settings or another sampler: starting over",
                partial,
            )
        # Reset first (only whole records of this run stay), then say what the file now holds.
        os.ftruncate(fd, keep_bytes)
        os.fsync(fd)
        write_json(
            meta_path(out),
            provenance(
                dict(gcg),
                inputs={"model": fingerprint, "test.npy": test_sha},
                model_dir=str(model_dir),
                model_sha256=fingerprint,
                sampler=gcg_attack.SAMPLER,
                shard=shard,
                samples=[int(s) for s in mine],
                numerics=_numerics(gcfg.device),
            ),
        )
        done = {int(r["sample"]) for r in records}
        todo = [int(s) for s in mine if int(s) not in done]
        log.info(
            "shard %d/%d: %d samples, %d already done, %d to attack",
            shard, gcg["shards"], len(mine), len(done), len(todo),
        )
        _attack_batches(fd, todo, windows, model_dir, fingerprint, gcfg, gcg, shard, len(done), len(mine))
        os.replace(partial, out)  # still under the lock: no other writer can have appended
    log.info("shard %d complete: %s", shard, out)


def _numerics(device_name: str) -> dict:
    from ilm.model import numerics, resolve_device

    return numerics(resolve_device(device_name))


def _attack_batches(
    fd: int, todo: list[int], windows, model_dir: Path, fingerprint: str, gcfg, gcg: Mapping, shard: int,
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
    for b in range(n_batches):
        batch = todo[b * batch_size : (b + 1) * batch_size]
        rows = np.asarray(windows[batch]).astype(np.int64)  # (S, window)
        prefix, target = rows[:, :P], rows[:, P : P + L]
        started = time.perf_counter()
        results = gcg_attack.run(model, prefix, target, gcfg, sample_seeds=batch)
        seconds = time.perf_counter() - started
        _append(fd, [to_record(s, fingerprint, p, t, r) for s, p, t, r in zip(batch, prefix, target, results)])
        log.info(
            "shard %d | batch %03d/%03d | samples %d/%d | %.1f sample-steps/s",
            shard, b + 1, n_batches, n_done + b * batch_size + len(batch), n_mine,
            len(batch) * gcfg.steps / seconds,
        )
        if kill_after is not None and b + 1 >= kill_after:
            log.warning("%s=%d: stopping after %d batches", faults.GCG_STOP_AFTER_BATCHES, kill_after, b + 1)
            faults.simulate_kill()
