"""GCG sample selection, the sample plan and the resumable, single-owner shard job (docs/method.md §4.1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ilm.attack
import ilm.gcg
from ilm import faults
import ilm.shards
from ilm.attack import attack_shard, read_sample_plan, write_sample_plan
from ilm.shards import exclusive_file, meta_path, partial_path
from ilm.cli import main
from ilm.config import check_against_data
from ilm.io import model_fingerprint
from tiny import VOCAB, save_tiny_model, tiny_config

N_TEST = 12


def select_samples(n_test, fraction, count, seed):
    return ilm.shards.select_samples(n_test, fraction, count, seed, "gcg")


def shard_samples(samples, shard, n_shards):
    return ilm.shards.shard_samples(samples, shard, n_shards, "gcg")
RECORD_KEYS = set(ilm.attack.RECORD_KEYS)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory) -> tuple[Path, Path]:
    """A float64 tiny model saved like `ilm train` and a random uint16 test split of 12 windows."""
    root = tmp_path_factory.mktemp("attack")
    import torch

    save_tiny_model(root / "model", dtype=torch.float64)
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    np.save(data / "test.npy", rng.integers(0, VOCAB, size=(N_TEST, 16), dtype=np.uint16))
    return root / "model", data


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """A second tiny model with other weights (another seed)."""
    import torch

    return save_tiny_model(tmp_path_factory.mktemp("other") / "model", seed=1, dtype=torch.float64)


def config(**gcg) -> dict:
    return tiny_config(gcg=gcg)


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
    with pytest.raises(ValueError, match=r"gcg.count \(11\) is larger than the test split \(10 windows\)"):
        select_samples(10, 0.3, 11, seed=0)
    with pytest.raises(ValueError, match=r"gcg.fraction \(0.1\) of the 9 test windows selects no window"):
        select_samples(9, 0.1, None, seed=0)


def test_shards_partition_the_samples():
    """The shards are disjoint and together hold every sample; an out-of-range shard is refused."""
    samples = select_samples(101, 0.5, None, seed=3)
    parts = [shard_samples(samples, k, 4) for k in range(4)]
    joined = np.sort(np.concatenate(parts))
    assert np.array_equal(joined, samples) and len(set(joined.tolist())) == len(samples)
    with pytest.raises(ValueError, match="gcg.shards"):
        shard_samples(samples, 4, 4)


def test_sample_plan_fixes_the_shards_and_refuses_other_settings(model_and_data, tmp_path):
    """samples.json holds the selection and its shards; it is refused once the selection settings change."""
    _, data_dir = model_and_data
    cfg = config(count=5, shards=2, sample_seed=3)
    plan = write_sample_plan(data_dir, tmp_path / "samples.json", cfg)
    expected = select_samples(N_TEST, 0.3, 5, 3)
    assert plan["samples"] == expected.tolist() and plan["test_windows"] == N_TEST
    assert plan["shards"] == [expected[0::2].tolist(), expected[1::2].tolist()]
    assert read_sample_plan(tmp_path / "samples.json", cfg)["shards"] == plan["shards"]
    with pytest.raises(ValueError, match="gcg.count"):
        read_sample_plan(tmp_path / "samples.json", config(count=4, shards=2, sample_seed=3))
    with pytest.raises(ValueError, match=r"gcg.count \(13\) is larger than the test split \(12 windows\)"):
        write_sample_plan(data_dir, tmp_path / "too_many.json", config(count=13))
    assert not (tmp_path / "too_many.json").exists()


def test_attack_shard_writes_one_record_per_sample(model_and_data, tmp_path):
    """One record per sample (ids from the test windows, the model's fingerprint); the partial file is gone."""
    model_dir, data_dir = model_and_data
    out = tmp_path / "shard0.jsonl"
    attack_shard(model_dir, data_dir, 0, out, config())
    records = read_records(out)
    expected = shard_samples(select_samples(N_TEST, 0.3, 5, 0), 0, 2)
    assert [r["sample"] for r in records] == expected.tolist()
    windows = np.load(data_dir / "test.npy")
    fingerprint = model_fingerprint(model_dir)
    for r in records:
        assert set(r) == RECORD_KEYS
        assert r["model_sha256"] == fingerprint
        assert r["prefix_ids"] == windows[r["sample"], :5].tolist()
        assert r["target_ids"] == windows[r["sample"], 5:8].tolist()
        assert len(r["attack_ids"]) == 5 and len(r["trajectory"]) == 3
    assert not partial_path(out).exists()
    meta = json.loads(meta_path(out).read_text())
    assert meta["model_sha256"] == fingerprint and meta["samples"] == expected.tolist()


def test_more_shards_than_samples_and_bad_shard(model_and_data, tmp_path):
    """More shards than samples is refused naming gcg.shards (no empty shard); so is a shard outside [0, shards)."""
    model_dir, data_dir = model_and_data
    out = tmp_path / "shard1.jsonl"
    with pytest.raises(ValueError, match=r"gcg.shards \(2\) is more than the 1 sample\(s\) selected"):
        attack_shard(model_dir, data_dir, 1, out, config(count=1))
    assert not out.exists()
    with pytest.raises(ValueError, match=r"gcg.count \(13\) is larger"):
        check_against_data(tiny_config(gcg={"count": 13}), {"splits": {"test": {"windows": 12}}})
    with pytest.raises(ValueError, match=r"invert.shards \(3\) is more than the 2 sample"):
        check_against_data(tiny_config(invert={"count": 2, "shards": 3}), {"splits": {"test": {"windows": 12}}})
    with pytest.raises(ValueError, match="gcg.shards"):
        attack_shard(model_dir, data_dir, 2, tmp_path / "shard2.jsonl", config())


def _killed_after_one_batch(model_dir, data_dir, out, cfg, monkeypatch) -> None:
    monkeypatch.setenv(faults.GCG_STOP_AFTER_BATCHES, "1")
    with pytest.raises(SystemExit) as stopped:
        attack_shard(model_dir, data_dir, 0, out, cfg)
    assert stopped.value.code == faults.KILLED_EXIT_CODE
    monkeypatch.delenv(faults.GCG_STOP_AFTER_BATCHES)


def test_killed_shard_resumes_without_redoing_samples(model_and_data, tmp_path, monkeypatch):
    """After a kill and a cut last line, a shard attacks only unfinished samples and ends as an uninterrupted run."""
    model_dir, data_dir = model_and_data
    cfg = config(count=6, shards=1)
    reference = tmp_path / "reference" / "shard0.jsonl"
    attack_shard(model_dir, data_dir, 0, reference, cfg)
    expected = read_records(reference)
    assert len(expected) == 6

    out = tmp_path / "killed" / "shard0.jsonl"
    monkeypatch.setenv(faults.GCG_STOP_AFTER_BATCHES, "2")
    with pytest.raises(SystemExit):
        attack_shard(model_dir, data_dir, 0, out, cfg)
    monkeypatch.delenv(faults.GCG_STOP_AFTER_BATCHES)
    assert not out.exists()
    partial = partial_path(out)
    assert len(read_records(partial)) == 4
    with open(partial, "a") as f:  # a kill mid-write leaves half a line: sample 5's record, cut
        f.write(json.dumps(expected[4])[:40])

    seen: list[int] = []
    real_run = ilm.gcg.run

    def recording_run(model, prefix_ids, target_ids, config, sample_seeds, **kwargs):
        seen.extend(int(s) for s in sample_seeds)
        return real_run(model, prefix_ids, target_ids, config, sample_seeds, **kwargs)

    monkeypatch.setattr(ilm.gcg, "run", recording_run)
    attack_shard(model_dir, data_dir, 0, out, cfg)
    assert seen == [r["sample"] for r in expected[4:]]
    assert without_timing(read_records(out)) == without_timing(expected)
    assert not partial.exists()


def test_partial_from_other_settings_or_model_is_not_resumed(model_and_data, other_model, tmp_path, monkeypatch):
    """A partial file written with other gcg settings, or by another model, is discarded and every sample redone."""
    model_dir, data_dir = model_and_data
    out = tmp_path / "shard0.jsonl"
    _killed_after_one_batch(model_dir, data_dir, out, config(count=4, shards=1, steps=2, iterations=[2]), monkeypatch)
    attack_shard(model_dir, data_dir, 0, out, config(count=4, shards=1))
    records = read_records(out)
    assert len(records) == 4 and all(len(r["trajectory"]) == 3 for r in records)

    out = tmp_path / "model_changed" / "shard0.jsonl"
    _killed_after_one_batch(other_model, data_dir, out, config(count=4, shards=1), monkeypatch)
    attack_shard(model_dir, data_dir, 0, out, config(count=4, shards=1))
    assert {r["model_sha256"] for r in read_records(out)} == {model_fingerprint(model_dir)}


def test_partial_from_another_sampler_is_not_resumed(model_and_data, tmp_path, monkeypatch):
    """A partial file whose meta names no sampler or another one (records from other random streams) is redone."""
    model_dir, data_dir = model_and_data
    cfg = config(count=4, shards=1)
    real_run = ilm.gcg.run
    for sampler in (None, "torch-generator"):  # None: a shard written before samplers were recorded
        out = tmp_path / str(sampler) / "shard0.jsonl"
        _killed_after_one_batch(model_dir, data_dir, out, cfg, monkeypatch)
        meta = json.loads(meta_path(out).read_text())
        assert meta["sampler"] == ilm.gcg.SAMPLER and read_records(partial_path(out))
        meta = {k: v for k, v in meta.items() if k != "sampler"} | ({"sampler": sampler} if sampler else {})
        meta_path(out).write_text(json.dumps(meta))
        seen: list[int] = []

        def recording_run(model, prefix_ids, target_ids, config, sample_seeds, **kwargs):
            seen.extend(int(s) for s in sample_seeds)
            return real_run(model, prefix_ids, target_ids, config, sample_seeds, **kwargs)

        monkeypatch.setattr(ilm.gcg, "run", recording_run)
        attack_shard(model_dir, data_dir, 0, out, cfg)
        monkeypatch.setattr(ilm.gcg, "run", real_run)
        assert seen == [r["sample"] for r in read_records(out)] and len(seen) == 4


def test_second_writer_of_a_shard_fails_at_once(model_and_data, tmp_path, capsys):
    """While one process holds a shard, a second `ilm gcg-attack` on it exits 2 with a clear message."""
    model_dir, data_dir = model_and_data
    out = tmp_path / "shard0.jsonl"
    args = ["gcg-attack", "--model", str(model_dir), "--data-dir", str(data_dir), "--shard", "0", "--out", str(out),
            "--config-json", json.dumps({"gcg": config(count=4, shards=1)["gcg"], "model": config()["model"],
                                         "data": config()["data"]})]
    with exclusive_file(partial_path(out), "gcg-attack"):
        assert main(args) == 2
        assert "is locked by another `ilm gcg-attack` process" in capsys.readouterr().err
        assert not out.exists() and not meta_path(out).exists()
    assert main(args) == 0
    assert [r["sample"] for r in read_records(out)] == select_samples(N_TEST, 0.3, 4, 0).tolist()


def test_partial_is_reset_before_its_meta_is_rewritten(model_and_data, other_model, tmp_path, monkeypatch):
    """A kill while the meta file is rewritten leaves an empty partial file, never old records under a new meta."""
    model_dir, data_dir = model_and_data
    cfg = config(count=4, shards=1)
    out = tmp_path / "shard0.jsonl"
    _killed_after_one_batch(other_model, data_dir, out, cfg, monkeypatch)
    assert len(read_records(partial_path(out))) == 2

    real_write_json = ilm.shards.write_json

    def killed_writing_meta(path, obj):
        assert read_records(partial_path(out)) == [], "the partial file must be reset before the meta is rewritten"
        raise SystemExit(faults.KILLED_EXIT_CODE)

    monkeypatch.setattr(ilm.shards, "write_json", killed_writing_meta)
    with pytest.raises(SystemExit):
        attack_shard(model_dir, data_dir, 0, out, cfg)
    monkeypatch.setattr(ilm.shards, "write_json", real_write_json)
    attack_shard(model_dir, data_dir, 0, out, cfg)
    records = read_records(out)
    assert len(records) == 4 and {r["model_sha256"] for r in records} == {model_fingerprint(model_dir)}


@pytest.mark.parametrize("tamper", ["other_model", "other_shard"])
def test_resume_refuses_records_that_do_not_belong(model_and_data, tmp_path, monkeypatch, tamper):
    """A record appended to a partial file from another model, or for a sample of another shard, is refused."""
    model_dir, data_dir = model_and_data
    cfg = config(count=4, shards=1)
    out = tmp_path / "shard0.jsonl"
    _killed_after_one_batch(model_dir, data_dir, out, cfg, monkeypatch)
    partial = partial_path(out)
    record = dict(read_records(partial)[0])
    done = {r["sample"] for r in read_records(partial)}
    pending = [s for s in select_samples(N_TEST, 0.3, 4, 0).tolist() if s not in done]
    if tamper == "other_model":
        record.update(sample=pending[0], model_sha256="0" * 64)
        message = "from another model"
    else:
        outside = next(s for s in range(N_TEST) if s not in select_samples(N_TEST, 0.3, 4, 0))
        record.update(sample=outside)
        message = "does not fit this shard or data"
    with open(partial, "a") as f:
        f.write(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=message):
        attack_shard(model_dir, data_dir, 0, out, cfg)
    assert not out.exists()
