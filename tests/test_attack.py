"""GCG sample selection, sharding and the resumable shard job (method-spec §4.1, DESIGN long jobs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ilm.gcg
from ilm.attack import (
    STOP_AFTER_BATCHES_ENV,
    STOP_EXIT_CODE,
    attack_shard,
    meta_path,
    partial_path,
    select_samples,
    shard_samples,
)
from ilm.config import validate_config
from ilm.model import build_model

V, WINDOW, N_TEST = 48, 16, 12
TINY = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=V,
    max_position_embeddings=WINDOW,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
)


def make_config(**gcg) -> dict:
    base = dict(
        prefix_length=5,
        target_length=3,
        steps=3,
        search_width=8,
        top_k=4,
        count=5,
        shards=2,
        batch_samples=2,
        iterations=[1, 2, 3],
        device="cpu",
        precision="fp32",
    )
    return validate_config(
        {"data": {"vocab_size": V, "window": WINDOW, "stride": WINDOW}, "model": TINY, "gcg": {**base, **gcg}}
    )


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory) -> tuple[Path, Path]:
    """A float64 tiny model saved like `ilm train` and a random uint16 test split."""
    root = tmp_path_factory.mktemp("attack")
    torch.manual_seed(0)
    build_model(TINY).double().save_pretrained(root / "model")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    np.save(data / "test.npy", rng.integers(0, V, size=(N_TEST, WINDOW), dtype=np.uint16))
    return root / "model", data


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_select_samples_fraction_count_and_seed():
    """The subset is sorted, unique, sized by fraction or count, reproducible, and seed-dependent."""
    a = select_samples(1000, 0.3, None, seed=0)
    assert len(a) == 300 and np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 1000
    assert np.array_equal(a, select_samples(1000, 0.3, None, seed=0))  # every variant gets the same windows
    assert not np.array_equal(a, select_samples(1000, 0.3, None, seed=1))
    assert len(select_samples(1000, 0.3, 17, seed=0)) == 17
    with pytest.raises(ValueError, match="gcg.count"):
        select_samples(10, 0.3, 11, seed=0)
    with pytest.raises(ValueError, match="gcg.fraction"):
        select_samples(10, 0.0, None, seed=0)


def test_shards_partition_the_samples():
    """The shards are disjoint and together hold every sample; an out-of-range shard is refused."""
    samples = select_samples(101, 0.5, None, seed=3)
    parts = [shard_samples(samples, k, 4) for k in range(4)]
    joined = np.sort(np.concatenate(parts))
    assert np.array_equal(joined, samples) and len(set(joined.tolist())) == len(samples)
    with pytest.raises(ValueError, match="gcg.shards"):
        shard_samples(samples, 4, 4)


def test_attack_shard_writes_one_record_per_sample(model_and_data, tmp_path):
    """A shard writes one DESIGN record per sample, ids taken from the test windows, and drops its partial file."""
    model_dir, data_dir = model_and_data
    cfg = make_config()
    out = tmp_path / "shard0.jsonl"
    attack_shard(model_dir, data_dir, 0, out, cfg)
    records = read_records(out)
    expected = shard_samples(select_samples(N_TEST, 0.3, 5, 0), 0, 2)
    assert [r["sample"] for r in records] == expected.tolist()
    windows = np.load(data_dir / "test.npy")
    for r in records:
        assert set(r) == {
            "sample",
            "prefix_ids",
            "target_ids",
            "attack_ids",
            "orig_loss",
            "attack_loss",
            "best_step",
            "trajectory",
            "kl",
            "seconds",
        }
        assert r["prefix_ids"] == windows[r["sample"], :5].tolist()
        assert r["target_ids"] == windows[r["sample"], 5:8].tolist()
        assert len(r["attack_ids"]) == 5 and len(r["trajectory"]) == 3
    assert not partial_path(out).exists() and meta_path(out).exists()


def test_empty_shard_and_bad_shard(model_and_data, tmp_path):
    """A shard without samples writes an empty file; a shard index outside [0, shards) raises ValueError."""
    model_dir, data_dir = model_and_data
    out = tmp_path / "shard1.jsonl"
    attack_shard(model_dir, data_dir, 1, out, make_config(count=1))
    assert out.exists() and out.read_text() == ""
    with pytest.raises(ValueError, match="gcg.shards"):
        attack_shard(model_dir, data_dir, 2, tmp_path / "shard2.jsonl", make_config())


def test_killed_shard_resumes_without_redoing_samples(model_and_data, tmp_path, monkeypatch):
    """After a kill and a cut last line, a shard attacks only unfinished samples and ends as an uninterrupted run."""
    model_dir, data_dir = model_and_data
    cfg = make_config(count=6, shards=1)
    reference = tmp_path / "reference" / "shard0.jsonl"
    attack_shard(model_dir, data_dir, 0, reference, cfg)
    expected = read_records(reference)
    assert len(expected) == 6

    out = tmp_path / "killed" / "shard0.jsonl"
    monkeypatch.setenv(STOP_AFTER_BATCHES_ENV, "2")
    with pytest.raises(SystemExit) as stopped:
        attack_shard(model_dir, data_dir, 0, out, cfg)
    assert stopped.value.code == STOP_EXIT_CODE
    assert not out.exists()
    partial = partial_path(out)
    assert len(read_records(partial)) == 4
    # A kill mid-write leaves half a line: sample 5's record, cut.
    with open(partial, "a") as f:
        f.write(json.dumps(expected[4])[:40])

    monkeypatch.delenv(STOP_AFTER_BATCHES_ENV)
    seen: list[int] = []
    real_run = ilm.gcg.run

    def recording_run(model, prefix_ids, target_ids, config, sample_seeds):
        seen.extend(int(s) for s in sample_seeds)
        return real_run(model, prefix_ids, target_ids, config, sample_seeds)

    monkeypatch.setattr(ilm.gcg, "run", recording_run)
    attack_shard(model_dir, data_dir, 0, out, cfg)
    assert seen == [r["sample"] for r in expected[4:]]
    assert without_timing(read_records(out)) == without_timing(expected)
    assert not partial.exists()


def test_partial_from_other_settings_is_not_resumed(model_and_data, tmp_path, monkeypatch):
    """A partial file written with other gcg settings is discarded and every sample is attacked again."""
    model_dir, data_dir = model_and_data
    out = tmp_path / "shard0.jsonl"
    monkeypatch.setenv(STOP_AFTER_BATCHES_ENV, "1")
    with pytest.raises(SystemExit):
        attack_shard(model_dir, data_dir, 0, out, make_config(count=4, shards=1, steps=2, iterations=[2]))
    monkeypatch.delenv(STOP_AFTER_BATCHES_ENV)
    attack_shard(model_dir, data_dir, 0, out, make_config(count=4, shards=1))
    records = read_records(out)
    assert len(records) == 4 and all(len(r["trajectory"]) == 3 for r in records)
