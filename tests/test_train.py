"""The training loop: exact resume, gradient accumulation, schedule, best-model selection, outputs, errors."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ilm import faults
from ilm.data import load_split
from ilm.model import build_model
from ilm.objectives import ObjectiveConfig, compute_objective
from ilm.train import (
    LOG_COLUMNS,
    STALE_DIR_NAME,
    TrainConfig,
    _to_ids,
    accumulate_batch_gradients,
    configure_matmul_precision,
    epoch_order,
    new_run,
    train,
)
from tiny import VOCAB, WINDOW, tiny_config
from tiny import write_splits as write_data


def read_log(out_dir: Path) -> list[dict]:
    with open(out_dir / "train_log.csv") as f:
        return list(csv.DictReader(f))


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in rows]


def checkpoint_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint_dir / "last.pt", weights_only=True)["model"]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- resume ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["base", "bert_like"])
def test_resume_after_kill_is_bitwise_identical(tmp_path, variant):
    """N steps straight == N/2 steps, a kill, a resume and N/2 more: same weights, log and best model."""
    data = write_data(tmp_path / "data")
    cfg = tiny_config({"max_steps": 6})

    train(data, tmp_path / "out_a", tmp_path / "ckpt_a", variant, cfg)

    train(data, tmp_path / "out_b", tmp_path / "ckpt_b", variant, cfg, stop_after_steps=3)
    assert not (tmp_path / "out_b").exists(), "a killed run must not leave an output directory"
    assert torch.load(tmp_path / "ckpt_b" / "last.pt", weights_only=True)["progress"]["step"] == 3
    train(data, tmp_path / "out_b", tmp_path / "ckpt_b", variant, cfg)

    assert_bitwise_equal(checkpoint_weights(tmp_path / "ckpt_a"), checkpoint_weights(tmp_path / "ckpt_b"))
    assert_bitwise_equal(
        load_file(tmp_path / "out_a" / "model.safetensors"), load_file(tmp_path / "out_b" / "model.safetensors")
    )
    rows_a, rows_b = read_log(tmp_path / "out_a"), read_log(tmp_path / "out_b")
    assert [int(r["step"]) for r in rows_a] == list(range(1, 7))
    assert without_timing(rows_a) == without_timing(rows_b)


def test_environment_stop_exits_nonzero_and_leaves_no_output(tmp_path, monkeypatch):
    """ILM_STOP_AFTER_STEPS exits with status 3 after writing the checkpoint, before any out_dir."""
    data = write_data(tmp_path / "data")
    monkeypatch.setenv(faults.TRAIN_STOP_AFTER_STEPS, "2")
    with pytest.raises(SystemExit) as exc:
        train(data, tmp_path / "out", tmp_path / "ckpt", "base", tiny_config())
    assert exc.value.code == 3
    assert not (tmp_path / "out").exists()
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["progress"]["step"] == 2


def stale_states(checkpoint_dir: Path) -> list[Path]:
    stale = checkpoint_dir / STALE_DIR_NAME
    return sorted(stale.iterdir()) if stale.exists() else []


def test_checkpoint_of_other_data_is_set_aside_not_resumed(tmp_path, caplog):
    """Observed: after the splits were rebuilt with new contents (same shapes), training resumed the old run.

    Now the split contents are part of the resume key: the old state moves to stale/ with a log line,
    and the model equals one trained from scratch on the new data.
    """
    cfg = tiny_config({"max_steps": 4})
    ckpt = tmp_path / "ckpt"
    write_data(tmp_path / "data", seed=0)
    train(tmp_path / "data", tmp_path / "out", ckpt, "base", cfg, stop_after_steps=2)
    write_data(tmp_path / "data", seed=1)  # e.g. data.seed changed: same shapes, other windows
    with caplog.at_level("INFO", logger="ilm.train"):
        train(tmp_path / "data", tmp_path / "out", ckpt, "base", cfg)
    assert "resuming" not in caplog.text
    assert "was written by another run (it differs in: inputs_sha256.train.npy" in caplog.text
    (stale,) = stale_states(ckpt)
    assert (stale / "last.pt").exists() and torch.load(stale / "last.pt", weights_only=True)["progress"]["step"] == 2

    write_data(tmp_path / "fresh_data", seed=1)
    train(tmp_path / "fresh_data", tmp_path / "fresh_out", tmp_path / "fresh_ckpt", "base", cfg)
    assert_bitwise_equal(load_file(tmp_path / "out" / "model.safetensors"),
                         load_file(tmp_path / "fresh_out" / "model.safetensors"))
    run_config = json.loads((tmp_path / "out" / "run_config.json").read_text())
    from ilm.io import file_sha256

    assert run_config["inputs_sha256"]["train.npy"] == file_sha256(tmp_path / "data" / "train.npy")


def test_changed_setting_after_a_finished_run_retrains_from_scratch(tmp_path, caplog):
    """Observed: changing a setting after a finished run made `ilm train` refuse the old last.pt.

    Now the finished run's state is set aside and the new setting trains from scratch: the same
    weights as a run that never saw the old checkpoint.
    """
    data = write_data(tmp_path / "data")
    ckpt = tmp_path / "ckpt"
    train(data, tmp_path / "out", ckpt, "base", tiny_config({"max_steps": 3}))
    shutil.rmtree(tmp_path / "out")  # Snakemake deletes the outputs of a job it reruns
    changed = tiny_config({"max_steps": 3, "lr": 0.02})
    with caplog.at_level("WARNING", logger="ilm.train"):
        train(data, tmp_path / "out", ckpt, "base", changed)
    assert "it differs in: train.lr" in caplog.text
    assert len(stale_states(ckpt)) == 1
    train(data, tmp_path / "fresh_out", tmp_path / "fresh_ckpt", "base", changed)
    assert_bitwise_equal(load_file(tmp_path / "out" / "model.safetensors"),
                         load_file(tmp_path / "fresh_out" / "model.safetensors"))
    # Another variant or model size is another run too.
    train(data, tmp_path / "out2", ckpt, "identity", changed)
    train(data, tmp_path / "out3", ckpt, "identity", tiny_config({"max_steps": 3}, model={"hidden_size": 32}))
    assert len(stale_states(ckpt)) == 3


@pytest.mark.parametrize("damage", ["truncated", "garbage", "old_format"])
def test_unreadable_checkpoint_restarts_or_fails_when_strict(tmp_path, caplog, damage):
    """A cut-short, garbage or old-format last.pt is moved aside with a warning; with strict_resume, an error."""
    data = write_data(tmp_path / "data")
    cfg = tiny_config({"max_steps": 3})
    ckpt = tmp_path / "ckpt"
    train(data, tmp_path / "out", ckpt, "base", cfg, stop_after_steps=2)
    last = ckpt / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "garbage":
        last.write_bytes(b"not a checkpoint" * 100)
    else:
        torch.save({"step": 2, "model": {}}, last)
    with pytest.raises(ValueError, match=r"last.pt is not a .*; delete it to start afresh, or run without --strict"):
        train(data, tmp_path / "out", ckpt, "base", cfg, strict_resume=True)
    with caplog.at_level("WARNING", logger="ilm.train"):
        train(data, tmp_path / "out", ckpt, "base", cfg)
    assert "moved it to" in caplog.text and "starting afresh" in caplog.text
    assert "weights_only" not in caplog.text  # torch's advice to unpickle untrusted data is not passed on
    (stale,) = stale_states(ckpt)
    assert stale.name.endswith("-unreadable")
    train(data, tmp_path / "fresh_out", tmp_path / "fresh_ckpt", "base", cfg)
    assert_bitwise_equal(load_file(tmp_path / "out" / "model.safetensors"),
                         load_file(tmp_path / "fresh_out" / "model.safetensors"))


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    """Each epoch visits every window once; the order depends only on (seed, epoch)."""
    a = epoch_order(444, 3, 50)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, epoch_order(444, 3, 50))
    assert not np.array_equal(a, epoch_order(444, 4, 50))
    assert not np.array_equal(a, epoch_order(445, 3, 50))


# --- optimisation --------------------------------------------------------------------------------


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(tiny_config()["model"])


def test_new_run_uses_fused_adamw_with_the_reference_update():
    """The run's AdamW is the fused kernel; three of its steps move the weights as the reference (foreach) AdamW."""
    cfg = TrainConfig.from_dict(tiny_config()["train"])
    run = new_run(tiny_config()["model"], cfg, total_steps=10, device=torch.device("cpu"))
    assert run.optimizer.defaults["fused"] is True
    for group in run.optimizer.param_groups:
        group["lr"] = cfg.lr  # off the warm-up's lr 0, so the steps move the weights
    reference = _model()
    reference.load_state_dict(run.model.state_dict())
    ref_opt = torch.optim.AdamW(
        reference.parameters(), lr=cfg.lr, betas=cfg.betas,
        weight_decay=cfg.weight_decay, foreach=True,
    )
    for step in range(3):
        grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(step)) for p in reference.parameters()]
        for model, opt in ((run.model, run.optimizer), (reference, ref_opt)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    moved = [(a.detach() - b.detach()).abs().max() for a, b in zip(run.model.parameters(), _model().parameters())]
    assert max(moved) > 1e-3
    for fused, ref in zip(run.model.parameters(), reference.parameters()):
        torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-7)


def test_batch_ids_on_cpu_are_the_windows_as_int64_unpinned():
    """_to_ids: the windows as (B, T) int64; on CPU no pinned copy (pinning and non_blocking are the CUDA path)."""
    windows = np.arange(12, dtype=np.uint16).reshape(3, 4)
    ids = _to_ids(windows, torch.device("cpu"))
    assert ids.dtype == torch.int64 and not ids.is_pinned()
    assert np.array_equal(ids.numpy(), windows)


def test_tf32_setting_reaches_the_cuda_backend():
    """train.allow_tf32 sets both CUDA TF32 switches and the fp32 matmul precision; a CPU run leaves them alone."""
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        for allow, precision in ((True, "high"), (False, "highest")):
            configure_matmul_precision(torch.device("cuda"), allow)  # only sets flags: no GPU needed
            assert torch.backends.cuda.matmul.allow_tf32 is allow and torch.backends.cudnn.allow_tf32 is allow
            assert torch.get_float32_matmul_precision() == precision
        configure_matmul_precision(torch.device("cpu"), True)
        assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


@pytest.mark.parametrize("variant", ["base", "identity", "inv_first"])
def test_accumulated_gradient_equals_full_batch_gradient(variant):
    """Four micro-batches of 2 accumulate the same gradient as one batch of 8 (the batch mean)."""
    ids = torch.randint(6, VOCAB, (8, WINDOW), generator=torch.Generator().manual_seed(1))
    objective = ObjectiveConfig.from_dict(tiny_config()["objective"])
    grads = []
    for micro in (8, 2):
        model = _model()
        model.zero_grad()
        stats = accumulate_batch_gradients(model, ids, micro, variant, objective)
        grads.append([p.grad.clone() for p in model.parameters()])
        assert math.isfinite(stats["loss"])
    for full, accumulated in zip(*grads):
        torch.testing.assert_close(accumulated, full, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("double_backprop", [True, False])
def test_training_gradient_follows_objective_double_backprop(double_backprop):
    """objective.double_backprop decides whether the training gradient goes through g: with false it equals
    the gradient of the objective with g a constant, and differs from the double-backprop one."""
    ids = torch.randint(6, VOCAB, (4, WINDOW), generator=torch.Generator().manual_seed(2))
    section = {**tiny_config()["objective"], "grad_scale_tokens": 1.0, "double_backprop": double_backprop}
    objective = ObjectiveConfig.from_dict(section)

    def gradient(create_graph=None):
        model = _model()
        model.zero_grad()
        if create_graph is None:
            accumulate_batch_gradients(model, ids, 4, "identity", objective)
        else:
            compute_objective(model, ids, "identity", objective, create_graph=create_graph).loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    trained = gradient()
    torch.testing.assert_close(trained, gradient(create_graph=double_backprop), rtol=1e-6, atol=1e-9)
    other = gradient(create_graph=not double_backprop)
    assert (trained - other).norm() > 1e-3 * trained.norm()


def test_one_step_with_micro_batches_equals_one_full_batch_step(tmp_path):
    """One optimizer step gives the same weights whether the batch runs as 1 or 4 micro-batches."""
    data = write_data(tmp_path / "data")
    # Adam's first update is ~lr*sign(g), so a small lr keeps rounding in tiny |g| below 1e-6
    # while a wrong accumulation (a different gradient direction) still moves weights by ~2*lr.
    lr = 1e-4
    weights = []
    for micro in (8, 2):
        cfg = tiny_config({"micro_batch_size": micro, "max_steps": 1, "warmup_steps": 0, "lr": lr})
        train(data, tmp_path / f"out{micro}", tmp_path / f"ckpt{micro}", "identity", cfg)
        weights.append(checkpoint_weights(tmp_path / f"ckpt{micro}"))
    initial = _model().state_dict()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=1e-6)
    moved = max(float((weights[0][k] - initial[k]).abs().max()) for k in initial)
    assert moved > 0.5 * lr, "the step must move the weights"


def schedule(step: int, warmup: int, total: int) -> float:
    """The paper's LR multiplier by hand: step/warmup, then linear to 0 at `total` (docs/method.md §2.2)."""
    return step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup))


def test_logged_learning_rate_follows_the_schedule(tmp_path):
    """train_log.csv's lr at step s is lr x the multiplier at s - 1 (the lr that step used): warm-up, then decay to 0."""
    data = write_data(tmp_path / "data")
    cfg = tiny_config({"warmup_steps": 3, "lr": 0.02})
    train(data, tmp_path / "out", tmp_path / "ckpt", "base", cfg)
    rows = read_log(tmp_path / "out")
    assert len(rows) == 8
    lrs = [float(row["lr"]) for row in rows]
    assert lrs == pytest.approx([0.02 * schedule(s, 3, 8) for s in range(8)], abs=1e-12)
    assert lrs[0] == 0.0 and lrs[3] == pytest.approx(0.02) and lrs[-1] == pytest.approx(0.02 / 5)


def test_loss_decreases_on_a_learnable_sequence(tmp_path):
    """Base learns a deterministic cyclic token pattern: the training CE falls well below its start."""
    rng = np.random.default_rng(0)
    offsets = rng.integers(0, 8, (64, 1))
    windows = (6 + (offsets + np.arange(WINDOW)) % 8).astype(np.uint16)  # next token fixed by the current one
    data = tmp_path / "data"
    data.mkdir()
    for split, rows in (("train", windows[:48]), ("validation", windows[48:56]), ("test", windows[56:])):
        np.save(data / f"{split}.npy", rows)
    cfg = tiny_config(
        {"epochs": 10, "batch_size": 8, "micro_batch_size": 8, "lr": 0.02, "warmup_steps": 5, "val_every": 10}
    )
    train(data, tmp_path / "out", tmp_path / "ckpt", "base", cfg)
    rows = read_log(tmp_path / "out")
    first, last = float(rows[0]["ce"]), float(rows[-1]["ce"])
    assert first > 3.5  # about log(64) at initialisation
    assert last < 0.5 * first
    assert float(rows[-1]["val_ce"]) < 0.5 * first


# --- best model and outputs ---------------------------------------------------------------------------


def test_saved_model_is_the_one_with_the_lowest_validation_loss(tmp_path):
    """out_dir and checkpoint_dir/best hold the weights of the step with the lowest recorded val loss."""
    data = write_data(tmp_path / "data", n_train=16, n_val=8)
    steps = 8
    cfg = tiny_config({"epochs": steps, "val_every": 1, "lr": 0.05, "warmup_steps": 0})
    ckpt = tmp_path / "ckpt"
    weights_at = {}
    for step in range(1, steps):  # one step per call: resume is exact, so these are the run's weights
        train(data, tmp_path / "out", ckpt, "base", cfg, stop_after_steps=step)
        weights_at[step] = checkpoint_weights(ckpt)
    train(data, tmp_path / "out", ckpt, "base", cfg)
    weights_at[steps] = checkpoint_weights(ckpt)

    rows = read_log(tmp_path / "out")
    val = {int(r["step"]): float(r["val_loss"]) for r in rows}
    best_step = min(val, key=val.get)
    assert best_step != steps, "pick a setting where the last step is not the best, or the test proves little"
    run_config = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert run_config["best_step"] == best_step
    assert run_config["best_val_loss"] == pytest.approx(val[best_step])

    saved = load_file(tmp_path / "out" / "model.safetensors")
    for key, value in saved.items():
        assert torch.equal(value, weights_at[best_step][key]), key
    assert json.loads((ckpt / "best" / "best.json").read_text())["step"] == best_step
    best_dir = load_file(ckpt / "best" / "model.safetensors")
    assert all(torch.equal(best_dir[k], saved[k]) for k in saved)


def test_resume_repairs_a_best_dir_written_after_the_checkpoint(tmp_path):
    """A best/ newer than last.pt (killed between the two writes) is replaced by the checkpoint's best model."""
    data = write_data(tmp_path / "data")
    cfg = tiny_config({"val_every": 2})
    ckpt = tmp_path / "ckpt"
    train(data, tmp_path / "out", ckpt, "base", cfg, stop_after_steps=2)
    expected = load_file(ckpt / "best" / "model.safetensors")
    (ckpt / "best" / "best.json").write_text(json.dumps({"step": 5, "val_loss": 0.0}))  # a later run's best
    (ckpt / "best" / "model.safetensors").unlink()
    train(data, tmp_path / "out", ckpt, "base", cfg, stop_after_steps=3)  # no validation at step 3
    assert json.loads((ckpt / "best" / "best.json").read_text())["step"] == 2
    repaired = load_file(ckpt / "best" / "model.safetensors")
    assert all(torch.equal(repaired[k], expected[k]) for k in expected)


def test_output_directory_contents(tmp_path):
    """out_dir holds an HF model, a train log with the documented columns and a run_config with provenance."""
    from ilm.model import load_model

    data = write_data(tmp_path / "data")
    cfg = tiny_config({"max_steps": 3, "val_every": 2, "log_every": 2})
    train(data, tmp_path / "out", tmp_path / "ckpt", "inv_first", cfg)
    out = tmp_path / "out"
    assert {"config.json", "model.safetensors", "train_log.csv", "run_config.json"} <= {p.name for p in out.iterdir()}
    with open(out / "train_log.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == LOG_COLUMNS
        rows = list(reader)
    assert [int(r["step"]) for r in rows] == [2, 3]  # log_every 2 and the final validation
    assert all(r["inv_ce"] and r["val_loss"] and r["val_ce"] for r in rows)
    assert int(rows[-1]["tokens"]) == 3 * 8 * WINDOW
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["variant"] == "inv_first"
    assert run_config["steps"] == 3
    assert run_config["parameters"] == sum(p.numel() for p in _model().parameters())
    assert set(run_config["inputs_sha256"]) == {"train.npy", "validation.npy"}
    assert run_config["numerics"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert run_config["numerics"]["threads"] == torch.get_num_threads() and run_config["numerics"]["device"] == "cpu"
    assert run_config["config"]["model"]["hidden_size"] == 16
    assert "torch" in run_config and "git_commit" in run_config
    model = load_model(out)
    assert model.config.vocab_size == VOCAB
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.safetensors", "config.json", "run_config.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, f"{name} must be readable as the umask allows"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "no temporary sibling left behind"


def test_split_smaller_than_batch_trains_on_the_whole_split(tmp_path, caplog):
    """With fewer train windows than batch_size every step uses the whole split (with a warning)."""
    data = write_data(tmp_path / "data", n_train=6)
    cfg = tiny_config({"batch_size": 16, "micro_batch_size": 4, "epochs": 3})
    with caplog.at_level("WARNING", logger="ilm.train"):
        train(data, tmp_path / "out", tmp_path / "ckpt", "base", cfg)
    assert "fewer than train.batch_size" in caplog.text
    rows = read_log(tmp_path / "out")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert int(rows[-1]["tokens"]) == 3 * 6 * WINDOW


# --- bad input ----------------------------------------------------------------------------------------


def _tokenizer(path: Path, size: int) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    Tokenizer(WordLevel({f"t{i}": i for i in range(size)}, unk_token="t0")).save(str(path))


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_variant", r"unknown variant 'bogus'"),
        ("token_id_beyond_vocab", r"token id \d+ but model\.vocab_size is 32"),
        ("tokenizer_beyond_vocab", r"model\.vocab_size \(64\) is smaller than the tokenizer's vocabulary \(80"),
        ("window_too_long", r"48 tokens but model\.max_position_embeddings is 32"),
        ("empty_validation", r"validation split .* is empty"),
        ("truncated_split", r"train.npy is not a readable .npy array \(mmap length is greater than file size\)"),
        ("float32_split", r"train.npy holds a float32 array of shape \(32, 16\), not uint16"),
        ("garbage_split", r"train.npy is not a .npy file"),
        ("truncated_tokenizer", r"tokenizer.json is not a readable tokenizer .*; prepare the data again"),
    ],
)
def test_bad_input_raises_a_clear_error_and_writes_nothing(tmp_path, case, message):
    """Unusable data or settings fail before training with a ValueError naming the fix; no out_dir."""
    variant, cfg = "base", tiny_config()
    data = write_data(tmp_path / "data")
    if case == "unknown_variant":
        variant = "bogus"
    elif case == "token_id_beyond_vocab":
        cfg = tiny_config(data={"vocab_size": 32}, model={"vocab_size": 32}, invert={"generic": {"gcg_top_k": 8}})
    elif case == "tokenizer_beyond_vocab":
        _tokenizer(data / "tokenizer.json", 80)
    elif case == "window_too_long":
        data = write_data(tmp_path / "data", window=48)
    elif case == "empty_validation":
        np.save(data / "validation.npy", np.zeros((0, WINDOW), dtype=np.uint16))
    elif case == "truncated_split":
        content = (data / "train.npy").read_bytes()
        (data / "train.npy").write_bytes(content[: len(content) // 2])
    elif case == "float32_split":
        np.save(data / "train.npy", load_split(data, "train").astype(np.float32))
    elif case == "garbage_split":
        (data / "train.npy").write_bytes(b"\x00" * 300)
    elif case == "truncated_tokenizer":
        _tokenizer(data / "tokenizer.json", 40)
        text = (data / "tokenizer.json").read_text()
        (data / "tokenizer.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=message):
        train(data, tmp_path / "out", tmp_path / "ckpt", variant, cfg)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "ckpt" / "last.pt").exists()


def test_model_folder_loads_with_transformers_as_it_is(tiny_data_dir, tmp_path):
    """AutoTokenizer, AutoModelForCausalLM and pipeline("text-generation") load the folder with no extra step,
    and the pipeline's text is the prompt followed by the decoded continuation (no lost space)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    cfg = tiny_config({"max_steps": 2}, data={"vocab_size": 256, "window": 32, "stride": 24},
                      model={"vocab_size": 256})
    out = tmp_path / "model"
    train(tiny_data_dir, out, tmp_path / "ckpt", "inv_first", cfg)
    assert {"tokenizer.json", "tokenizer_config.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    tok = AutoTokenizer.from_pretrained(out)
    assert (tok.bos_token, tok.pad_token, tok.model_max_length) == ("<s>", "<pad>", 32)
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = "Once upon a time there was a little"
    text = pipeline("text-generation", model=str(out))(prompt, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    prompt_ids = tok(prompt, return_tensors="pt")["input_ids"]
    generated = model.generate(prompt_ids, max_new_tokens=6, do_sample=False)[0]
    assert text == prompt + tok.decode(generated[prompt_ids.shape[1]:])
    assert tok.decode(generated).strip() == text  # the whole decoded sequence reads the same
    card = (out / "README.md").read_text()
    assert "Inv-First" in card and "pipeline(\"text-generation\"" in card and "step 2" in card


@pytest.mark.parametrize("variant", ["inv_first", "bert_like"])
def test_g_curves_match_an_independent_computation(tmp_path, variant):
    """At each validation, val_inv_ce, val_inv_ce_without_g and val_g_sq_over_eps equal a direct computation on the
    best model's validation windows: g by plain autograd of the summed CE / grad_scale_tokens, the rows classified
    from Norm(x - g) and from Norm(x), the mean g^2 divided by the first RMSNorm's eps (Inv-First: position 0; the
    Bert-like masks drawn as validation draws them)."""
    from ilm.model import load_model
    from ilm.objectives import draw_mask_positions, embed, forward_ce, project_to_vocab

    data = write_data(tmp_path / "data")
    cfg = tiny_config({"max_steps": 2, "val_every": 2, "log_every": 2})
    cfg["objective"]["grad_scale_tokens"] = 1.0  # g large enough that "with g" and "without g" differ
    train(data, tmp_path / "out", tmp_path / "ckpt", variant, cfg)
    row = read_log(tmp_path / "out")[-1]
    model = load_model(tmp_path / "out")  # step 2 is the only validation, so the best model is the step-2 model
    val = torch.from_numpy(load_split(data, "validation")[: cfg["train"]["val_sequences"]].astype(np.int64))
    obj = ObjectiveConfig.from_dict(cfg["objective"])
    generator = torch.Generator().manual_seed(cfg["train"]["seed"])
    sums = {"with": 0.0, "without": 0.0, "g2": 0.0}
    micro = cfg["train"]["micro_batch_size"]
    for start in range(0, len(val), micro):
        ids = val[start : start + micro]  # (m, T)
        if variant == "inv_first":
            inputs, rows = ids.clone(), (torch.arange(len(ids)), torch.zeros(len(ids), dtype=torch.long))
            inputs[:, 0] = 1  # <s> at position 0
        else:
            positions = draw_mask_positions(*ids.shape, obj.mask_fraction, generator)  # (m, k)
            inputs = ids.clone()
            inputs.scatter_(1, positions, obj.placeholder_id)
            rows = (torch.arange(len(ids)).repeat_interleave(positions.shape[1]), positions.reshape(-1))
        x = embed(model, inputs).detach().requires_grad_(True)  # (m, T, d)
        ce = forward_ce(model, x, obj.next_targets(inputs), reduction="sum")
        (g,) = torch.autograd.grad(ce, x)
        g = g / obj.grad_scale_tokens
        xr, gr, targets = x.detach()[rows], g[rows], ids[rows]  # (M, d), (M, d), (M,)
        with torch.no_grad():
            ce_with = torch.nn.functional.cross_entropy(project_to_vocab(model, xr - gr).double(), targets)
            ce_without = torch.nn.functional.cross_entropy(project_to_vocab(model, xr).double(), targets)
        sums["with"] += float(ce_with) * len(ids)
        sums["without"] += float(ce_without) * len(ids)
        sums["g2"] += float(gr.double().pow(2).mean()) * len(ids)
    n, eps = len(val), model.model.layers[0].input_layernorm.variance_epsilon
    assert float(row["val_inv_ce"]) == pytest.approx(sums["with"] / n, rel=1e-4)
    assert float(row["val_inv_ce_without_g"]) == pytest.approx(sums["without"] / n, rel=1e-4)
    assert float(row["val_g_sq_over_eps"]) == pytest.approx(sums["g2"] / n / eps, rel=1e-4)
    assert float(row["val_inv_ce"]) != pytest.approx(float(row["val_inv_ce_without_g"]), rel=1e-6)


def test_base_logs_no_g_curves(tmp_path):
    """The Baseline has no g: its g columns stay empty."""
    data = write_data(tmp_path / "data")
    train(data, tmp_path / "out", tmp_path / "ckpt", "base", tiny_config({"max_steps": 2, "val_every": 2}))
    row = read_log(tmp_path / "out")[-1]
    assert row["val_loss"] and row["val_inv_ce"] == row["val_inv_ce_without_g"] == row["val_g_sq_over_eps"] == ""
