"""Every GPU stage's entry point on a CUDA device, against the same call on the CPU (skipped without CUDA).

The CPU tests cannot reach what only a GPU run does: models, data and random streams placed on the
device, records written from device tensors, TF32 and bf16 paths. Each test runs one stage on the tiny
model on both devices and compares what the arithmetic allows: fp32 stages to 1e-4, bf16 GCG through
its full-precision re-scoring. Run them on a GPU machine with `pytest tests/test_cuda.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tiny import save_tiny_model, tiny_config, write_splits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def on(device: str, **sections) -> dict:
    """tiny_config with every stage on `device` (GCG in bf16 on CUDA, as the paper config runs it)."""
    devices = {s: {"device": device} for s in ("train", "evaluate", "invert")}
    gcg = {"device": device, "precision": "bf16" if device == "cuda" else "fp32"}
    merged = {**devices, "gcg": gcg}
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value}
    train = merged.pop("train")
    return tiny_config(train, **merged)


def test_training_on_cuda_follows_the_cpu_run(tmp_path):
    """Every variant trains on CUDA; its logged losses follow the CPU run's (fp32, TF32 off) to 1e-3."""
    from ilm.train import train

    data = write_splits(tmp_path / "data")
    for variant in ("base", "identity", "bert_like", "inv_first"):
        logs = {}
        for device in ("cpu", "cuda"):
            out = tmp_path / device / variant
            train(data, out, tmp_path / device / f"{variant}.ckpt", variant, on(device, train={"allow_tf32": False}))
            logs[device] = pd.read_csv(out / "train_log.csv")
        assert len(logs["cuda"]) == len(logs["cpu"]) > 0
        for column in ("loss", "val_loss"):
            a, b = logs["cpu"][column].to_numpy(float), logs["cuda"][column].to_numpy(float)
            assert np.array_equal(np.isnan(a), np.isnan(b))
            np.testing.assert_allclose(b[~np.isnan(b)], a[~np.isnan(a)], rtol=1e-3, err_msg=f"{variant} {column}")


def test_evaluation_on_cuda_equals_the_cpu_numbers(tmp_path):
    """Forward CE and inverse accuracy on CUDA equal the CPU's (fp32) for every protocol."""
    from ilm.evaluate import evaluate

    model, data = save_tiny_model(tmp_path / "model"), write_splits(tmp_path / "data")
    for variant in ("identity", "bert_like", "inv_first"):
        out = {}
        for device in ("cpu", "cuda"):
            d = tmp_path / device / variant
            d.mkdir(parents=True)
            evaluate(model, data, variant, d / "forward.json", d / "inverse.json", on(device), d / "windows.csv")
            out[device] = (json.loads((d / "forward.json").read_text()), pd.read_csv(d / "windows.csv"))
        cpu, cuda = out["cpu"], out["cuda"]
        assert cuda[0]["ce"] == pytest.approx(cpu[0]["ce"], rel=1e-4)
        assert list(cuda[1].columns) == list(cpu[1].columns)
        numeric = cpu[1].select_dtypes("number").columns
        np.testing.assert_allclose(cuda[1][numeric].to_numpy(float), cpu[1][numeric].to_numpy(float),
                                   rtol=1e-4, atol=1e-5, err_msg=variant)


def test_gcg_shard_on_cuda_reports_losses_its_prefixes_have(tmp_path):
    """A GCG shard on CUDA (bf16 search) writes complete records whose best loss is the fp32 CPU loss of its
    best prefix: the re-scoring in full precision, checked by a plain forward on the CPU."""
    from ilm.attack import attack_shard
    from ilm.model import load_model
    from ilm.objectives import embed, forward_ce

    model_dir, data = save_tiny_model(tmp_path / "model"), write_splits(tmp_path / "data")
    out = tmp_path / "shard0.jsonl"
    attack_shard(model_dir, data, 0, out, on("cuda"))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(r["model_sha256"] for r in records)
    model = load_model(model_dir, torch.device("cpu"))
    for r in records:
        ids = torch.tensor([r["attack_ids"] + r["target_ids"]])
        P = len(r["attack_ids"])
        with torch.no_grad():
            ce = forward_ce(model, embed(model, ids), ids[:, 1:], reduction="none")[0, P - 1 :].mean()
        assert r["attack_loss"] == pytest.approx(float(ce), rel=1e-4, abs=1e-5)
        assert len(r["trajectory"]) == 3 and r["attack_loss"] <= r["init_loss"] + 1e-6


def test_inversion_on_cuda_finds_the_cpu_beams(tmp_path):
    """The gradient-guided beam search and the bigram baseline on CUDA return the CPU run's beams (fp32)."""
    from ilm.invert import invert_shard, write_bigram_counts

    model, data = save_tiny_model(tmp_path / "model"), write_splits(tmp_path / "data")
    write_bigram_counts(data, tmp_path / "bigram.npy", on("cpu"))
    for method in ("identity", "inv_first", "bigram"):
        beams = {}
        for device in ("cpu", "cuda"):
            out = tmp_path / device / method / "shard0.jsonl"
            out.parent.mkdir(parents=True)
            invert_shard(model, data, tmp_path / "bigram.npy", method, 0, out, on(device))
            beams[device] = [json.loads(line)["beam_ids"] for line in out.read_text().splitlines()]
        assert beams["cuda"] == beams["cpu"], method


def test_transfer_on_cuda_equals_the_cpu_losses(tmp_path):
    """Transfer losses (one forward per attacked window) agree between devices."""
    from ilm.model import load_model
    from ilm.transfer import transfer_losses

    model_dir = save_tiny_model(tmp_path / "model")
    rng = np.random.default_rng(0)
    prefixes, targets = rng.integers(6, 64, (10, 5)), rng.integers(6, 64, (10, 3))
    losses = {d: transfer_losses(load_model(model_dir, torch.device(d)), prefixes, targets, 4) for d in ("cpu", "cuda")}
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-4)


def test_the_cuda_tests_ran_on_a_gpu():
    """A guard that the file is not silently skipped where a GPU is present."""
    assert torch.cuda.is_available() and torch.zeros(1, device="cuda").is_cuda
