"""Sharded stages: which test windows a stage works on, its shards, and one locked, resumable shard file.

Every sharded stage (GCG attacks, inversion, any new attack or inverter) uses this module; a
stage module holds only its own algorithm and its job (docs/method.md §4.1, §12).

* The sample plan (`<stage>/samples.json`) fixes the windows once: a seeded subset of the test
  split, the same for every model, dealt into `<section>.shards` shards. It records the settings
  that chose it and the test split's SHA-256, and a plan made with other settings is refused.
* A shard job owns `shard{k}.partial.jsonl` through an exclusive lock, so a second process on the
  same shard fails at once instead of interleaving records. It appends each finished batch of
  records (flushed and fsynced) and renames the file to `shard{k}.jsonl` only when every sample
  is done, so the declared output never looks finished early and a killed job resumes where it
  stopped. Beside it, `shard{k}.meta.json` says what the partial file holds (settings, inputs,
  anything else the stage names); it is written only after the partial file has been reset, so
  records from another model, other settings or other data are never resumed.
* Every record is checked against its source before it is resumed or merged: its sample belongs
  to the shard, appears once, comes from the model named, and its stored windows equal the test
  split's.

numpy only: the Snakefile and the config checks import this module to plan jobs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from ilm.io import provenance, write_json

log = logging.getLogger("ilm.shards")


@dataclass(frozen=True)
class Stage:
    """How one sharded stage is named in messages: its config section and its `ilm` commands."""

    section: str  # config section holding fraction, count, sample_seed and shards ("gcg", "invert")
    command: str  # the `ilm` command that runs one shard
    plan_command: str  # the `ilm` command that writes the sample plan


# --- which windows ---------------------------------------------------------------------------------------


def sample_count(n_test: int, fraction: float, count: Optional[int], section: str) -> int:
    """How many test windows a stage uses: `count`, or `fraction` of the split; at least one."""
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


def check_shard_count(n_samples: int, n_shards: int, section: str) -> None:
    """Every shard must get at least one sample: more shards than samples is a setting error."""
    if n_shards < 1:
        raise ValueError(f"{section}.shards must be >= 1 (got {n_shards})")
    if n_shards > n_samples:
        raise ValueError(
            f"{section}.shards ({n_shards}) is more than the {n_samples} sample(s) selected, so some shards "
            f"would be empty; lower {section}.shards to at most {n_samples}"
        )


def select_samples(n_test: int, fraction: float, count: Optional[int], seed: int, section: str) -> np.ndarray:
    """Sorted test indices: a seeded subset of `count` windows, or `fraction` of them (§4.1).

    It depends only on its arguments, so every model is attacked (or inverted) on the same windows.
    """
    n = sample_count(n_test, fraction, count, section)
    order = np.random.default_rng(seed).permutation(n_test)
    return np.sort(order[:n]).astype(np.int64)


def shard_samples(samples: np.ndarray, shard: int, n_shards: int, section: str) -> np.ndarray:
    """Shard `shard` of `n_shards`: every n-th sample starting at `shard` (a partition of `samples`)."""
    if n_shards < 1:
        raise ValueError(f"{section}.shards must be >= 1 (got {n_shards})")
    if not 0 <= shard < n_shards:
        raise ValueError(f"--shard {shard} is out of range: it must be in [0, {section}.shards={n_shards})")
    return np.asarray(samples)[shard::n_shards]


def stage_samples(n_test: int, settings: Mapping, stage: Stage) -> np.ndarray:
    """The stage's selected samples from its config section (fraction, count, sample_seed, shards checked)."""
    samples = select_samples(n_test, settings["fraction"], settings["count"], settings["sample_seed"], stage.section)
    check_shard_count(len(samples), settings["shards"], stage.section)
    return samples


def write_plan(out: Path, n_test: int, settings: Mapping, keys: Sequence[str], test_sha256: str, stage: Stage) -> dict:
    """`<stage>/samples.json`: the selected test windows and their shards, fixed for every model."""
    samples = stage_samples(n_test, settings, stage)
    n_shards = settings["shards"]
    plan = {
        "test_windows": int(n_test),
        "samples": samples.tolist(),
        "shards": [shard_samples(samples, k, n_shards, stage.section).tolist() for k in range(n_shards)],
        "meta": provenance({k: settings[k] for k in keys}, inputs={"test.npy": test_sha256}),
    }
    write_json(out, plan)
    log.info("%d of %d test windows in %d shards -> %s", len(samples), n_test, n_shards, out)
    return plan


def read_plan(path: Path, settings: Mapping, keys: Sequence[str], stage: Stage) -> dict:
    """A sample plan, checked against the `keys` of the section settings it was selected with."""
    path = Path(path)
    try:
        plan = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable sample plan ({e}); run `ilm {stage.plan_command}` again") from None
    made_with = plan.get("meta", {}).get("config", {})
    differing = [k for k in keys if made_with.get(k) != settings[k]]
    if differing:
        raise ValueError(
            f"{path} was made with other {stage.section} settings "
            f"({', '.join(f'{stage.section}.{k}' for k in differing)}); run `ilm {stage.plan_command}` again"
        )
    return plan


# --- records ----------------------------------------------------------------------------------------------


def partial_path(out: Path) -> Path:
    """The resume file beside a shard output: shard{k}.jsonl -> shard{k}.partial.jsonl."""
    out = Path(out)
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def meta_path(out: Path) -> Path:
    """The provenance file beside a shard output (or any result): shard{k}.jsonl -> shard{k}.meta.json."""
    out = Path(out)
    return out.with_name(f"{out.stem}.meta.json")


def whole_records(text: str, path: Path, hint: str) -> tuple[list[dict], int]:
    """(records, bytes they take) of JSON lines; a trailing line without newline (cut by a kill) is dropped."""
    lines = text.split("\n")
    if lines[-1]:
        log.warning("%s: dropping a truncated last line (%d characters)", path, len(lines[-1]))
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number} is not a JSON record; {hint}") from None
    return records, len(text.encode()) - len(lines[-1].encode())


def read_records(path: Path, stage: Stage) -> list[dict]:
    """The records of one finished shard file (one JSON object per line)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"shard {path} does not exist; run `ilm {stage.command}` for it first")
    text = path.read_text()
    return whole_records(text if text.endswith("\n") or not text else text + "\n", path,
                         f"run `ilm {stage.command}` for that shard again")[0]


def check_records(
    records: Sequence[Mapping],
    allowed: Sequence[int],
    fingerprint: Optional[str],
    expected: Callable[[int], Mapping],
    path: Path,
    hint: str,
) -> None:
    """Each record belongs to `allowed`, appears once, is `fingerprint`'s, and holds `expected(sample)`'s values.

    `expected(sample)` gives the fields a record of that sample must hold exactly (its windows from
    the test split, its method, its trajectory length...). The first offending record is named.
    """
    allowed_set, seen = {int(s) for s in allowed}, set()
    for number, rec in enumerate(records, start=1):
        s = int(rec["sample"])
        where = f"{path} record {number} (sample {s})"
        if fingerprint is not None and rec.get("model_sha256") != fingerprint:
            raise ValueError(
                f"{where} is from another model ({str(rec.get('model_sha256'))[:12]}, not {fingerprint[:12]}); {hint}"
            )
        if s not in allowed_set:
            raise ValueError(f"{where} does not fit this shard or data: the plan gives that sample to no such shard; {hint}")
        if s in seen:
            raise ValueError(f"{where} does not fit this shard or data: the sample appears twice; {hint}")
        wrong = [key for key, value in expected(s).items() if rec.get(key) != value]
        if wrong:
            raise ValueError(f"{where} does not fit this shard or data: {', '.join(wrong)} differ from the source; {hint}")
        seen.add(s)


def check_complete(records: Sequence[Mapping], assigned: Sequence[int], path: Path, hint: str) -> None:
    """A finished shard holds every assigned sample (the other checks are check_records')."""
    missing = sorted({int(s) for s in assigned} - {int(r["sample"]) for r in records})
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} assigned sample(s) {missing[:10]}; {hint}")


# --- one shard file ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive_file(path: Path, command: str) -> Iterator[int]:
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
                f"{path} is locked by another `ilm {command}` process (an earlier job of this shard is still "
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


def append_records(fd: int, records: Sequence[Mapping]) -> None:
    """Append JSON lines at the end of the open file and fsync, so a kill loses at most a cut last line."""
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    os.lseek(fd, 0, os.SEEK_END)
    while data:
        data = data[os.write(fd, data):]
    os.fsync(fd)


class ShardWriter:
    """The open partial file of one shard: the records resumed from it, and `append` for new ones."""

    def __init__(self, fd: int, records: list[dict]):
        self._fd = fd
        self.records = records

    @property
    def done(self) -> set[int]:
        return {int(r["sample"]) for r in self.records}

    def append(self, records: Sequence[Mapping]) -> None:
        append_records(self._fd, records)


def _matches(meta_file: Path, identity: Mapping) -> bool:
    try:
        old = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(old.get(key) == value for key, value in identity.items())


@contextlib.contextmanager
def open_shard(
    out: Path,
    identity: Mapping,
    meta: Mapping,
    check: Callable[[list[dict], Path], None],
    stage: Stage,
) -> Iterator[ShardWriter]:
    """Own shard file `out`: lock its partial file, resume it if its meta holds `identity`, then rename when done.

    `identity` holds the meta fields (settings, input hashes, sampler...) that must be equal for
    the partial file's records to be resumed; `meta` is the rest of what the meta file records.
    `check(records, path)` refuses resumed records that do not belong (see check_records). The
    rename to `out` happens only if the block ends without an exception, still under the lock.
    """
    out = Path(out)
    partial = partial_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_file(partial, stage.command) as fd:
        records: list[dict] = []
        keep = 0
        text = partial.read_text()
        if text and _matches(meta_path(out), identity):
            records, keep = whole_records(text, partial, f"delete {partial} to restart the shard")
            check(records, partial)
        elif text:
            log.warning("%s was written by another model, other data or other settings: starting over", partial)
        # Reset first (only whole records of this run stay), then say what the file now holds.
        os.ftruncate(fd, keep)
        os.fsync(fd)
        write_json(meta_path(out), {**provenance(), **meta, **identity})
        yield ShardWriter(fd, records)
        os.replace(partial, out)  # still under the lock: no other writer can have appended
