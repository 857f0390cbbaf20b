"""Atomic writes, content fingerprints and model loading errors (ilm.io, ilm.model)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess

import pytest

from ilm.io import atomic_path, file_sha256, fingerprints, model_fingerprint, write_text
from ilm.model import load_model
from tiny import save_tiny_model


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    """file_sha256 equals hashlib's digest of the whole file, across several read blocks."""
    data = os.urandom(3 * (1 << 20) + 17)
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
    assert fingerprints([tmp_path / "blob"]) == {"blob": hashlib.sha256(data).hexdigest()}


def test_model_fingerprint_follows_the_weights(tmp_path):
    """Same weights, same fingerprint wherever they live; other weights or another config, another fingerprint."""
    a = save_tiny_model(tmp_path / "a", seed=0)
    a_again = save_tiny_model(tmp_path / "a_again", seed=0)
    b = save_tiny_model(tmp_path / "b", seed=1)
    assert model_fingerprint(a) == model_fingerprint(a_again)
    assert model_fingerprint(a) != model_fingerprint(b)
    config = (a_again / "config.json").read_text()
    (a_again / "config.json").write_text(config.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    assert model_fingerprint(a) != model_fingerprint(a_again)
    (b / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="not a complete model directory"):
        model_fingerprint(b)


def test_incomplete_or_damaged_model_directory_is_a_clear_error(tmp_path):
    """A model folder without weights, or with weights cut short, fails naming the folder and the fix."""
    model = save_tiny_model(tmp_path / "model")
    weights = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=r"model holds a model that cannot be loaded .*run `ilm train`"):
        load_model(model)
    (model / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model is not a complete model directory \(no model.safetensors\)"):
        load_model(model)


def test_atomic_write_leaves_nothing_on_failure_and_clears_dead_leftovers(tmp_path):
    """A failed write leaves neither target nor temporary; a killed process's temporary is removed by the next write."""
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".out.txt.tmp-{socket.gethostname()}-{dead.pid}"
    leftover.write_text("from a killed job")
    write_text(target, "whole")
    assert target.read_text() == "whole" and not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
