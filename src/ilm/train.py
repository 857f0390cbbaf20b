"""Train one model variant: a plain PyTorch loop with exact resume (method-spec §2.2, §2.3).

One optimizer step sees `train.batch_size` windows, reached by accumulating micro-batches
whose losses are scaled so the accumulated gradient is the batch mean (never zeroed in
between: the paper's bug §9.1.1). The learning rate warms up linearly, then decays linearly
to 0. Every `val_every` steps the objective is measured on a fixed validation subset, and
the lowest combined validation loss picks the model that is written out (§2.3).

Everything a killed job needs to continue lives in `checkpoint_dir/last.pt`; with the data
order a pure function of (seed, epoch) and every RNG state restored, N straight steps and
N/2 + kill + resume + N/2 give bitwise the same weights on CPU.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from tqdm import tqdm

from ilm.data import load_split
from ilm.io import atomic_path, provenance
from ilm.model import build_model, count_parameters, resolve_device
from ilm.objectives import ObjectiveConfig, compute_objective, parse_variant

logger = logging.getLogger("ilm.train")

STOP_ENV = "ILM_STOP_AFTER_STEPS"  # simulate a killed job from outside (whole-workflow tests)
KILLED_EXIT_CODE = 3
STEP_SLEEP_ENV = "ILM_TRAIN_STEP_SLEEP"  # seconds idled per step: a smoke job long enough to cancel (tests)
LOG_COLUMNS = ("step", "epoch", "tokens", "lr", "loss", "ce", "inv_ce", "val_loss", "val_ce", "tokens_per_s")
CHECKPOINT_NAME = "last.pt"
BEST_DIR_NAME = "best"
BEST_META_NAME = "best.json"
# Train keys that change neither the weights nor the schedule, so a resume may change them.
_RESUME_FREE_TRAIN_KEYS = ("device", "checkpoint_every", "log_every")


@dataclass
class TrainConfig:
    """The `train:` section of the config (method-spec §2.2)."""

    seed: int = 444  # initialisation, data order and Bert-like masking
    epochs: int = 25  # passes over the train split
    batch_size: int = 4096  # sequences per optimizer step
    micro_batch_size: int = 256  # sequences per forward; accumulation reaches batch_size
    lr: float = 0.004  # peak AdamW learning rate
    weight_decay: float = 0.01  # on all parameters, as the paper (§9.1.9)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100  # linear warm-up, then linear decay to 0 at the last step
    grad_clip: float = 1.0  # gradient-norm clip; 0 disables
    max_steps: Optional[int] = None  # cap on optimizer steps; None = epochs x steps per epoch
    val_every: int = 50  # optimizer steps between validations
    val_sequences: int = 4096  # the fixed validation subset: the first N windows
    checkpoint_every: int = 50  # optimizer steps between resume checkpoints
    log_every: int = 10  # optimizer steps between train_log.csv rows
    precision: str = "fp32"  # fp32 (TF32 allowed on CUDA) | bf16 autocast
    allow_tf32: bool = True
    device: str = "auto"

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainConfig":
        """Build from `config["train"]` (already schema-validated); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown key(s) train.{', train.'.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        values = dict(d)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        cfg = cls(**values)
        if cfg.batch_size % cfg.micro_batch_size:
            raise ValueError(
                f"train.batch_size ({cfg.batch_size}) must be a multiple of train.micro_batch_size "
                f"({cfg.micro_batch_size}); change one of them"
            )
        if cfg.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {cfg.precision!r}")
        return cfg


class WarmupLinearDecay:
    """LR multiplier: step/warmup during warm-up, then linear decay to 0 at `total_steps` (§2.2).

    The same formula as transformers' get_linear_schedule_with_warmup, which the paper used
    (so the very first step runs at lr 0 when there is a warm-up).
    """

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))


@dataclass
class RunState:
    """The loop's own progress; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    best_val_loss: Optional[float] = None
    best_step: Optional[int] = None
    log_rows: list[dict] = field(default_factory=list)


# --- data -------------------------------------------------------------------------------------


def _check_inputs(data_dir: Path, model_cfg: Mapping, train_data: np.ndarray, val_data: np.ndarray) -> None:
    """Fail before any work when the data cannot feed this model (bad user input -> ValueError)."""
    for split, arr in (("train", train_data), ("validation", val_data)):
        if arr.ndim != 2:
            raise ValueError(f"{data_dir}/{split}.npy must be a 2-D [windows, tokens] array, got shape {arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError(
                f"the {split} split in {data_dir} is empty; prepare more data or change data.split_fractions"
            )
    if train_data.shape[1] != val_data.shape[1]:
        raise ValueError(
            f"train and validation windows differ in length ({train_data.shape[1]} vs {val_data.shape[1]}) "
            f"in {data_dir}; re-run prepare-data"
        )
    window = train_data.shape[1]
    if window > model_cfg["max_position_embeddings"]:
        raise ValueError(
            f"the data windows have {window} tokens but model.max_position_embeddings is "
            f"{model_cfg['max_position_embeddings']}; raise model.max_position_embeddings or re-prepare the "
            "data with a shorter data.window"
        )
    vocab = model_cfg["vocab_size"]
    tokenizer_path = data_dir / "tokenizer.json"
    if tokenizer_path.exists():
        from tokenizers import Tokenizer

        tokenizer_size = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()
        if vocab < tokenizer_size:
            raise ValueError(
                f"model.vocab_size ({vocab}) is smaller than the tokenizer's vocabulary ({tokenizer_size}, "
                f"{tokenizer_path}); set model.vocab_size to at least {tokenizer_size}"
            )
    for split, arr in (("train", train_data), ("validation", val_data)):
        largest = int(arr.max())
        if largest >= vocab:
            raise ValueError(
                f"{data_dir}/{split}.npy holds token id {largest} but model.vocab_size is {vocab}; "
                f"set model.vocab_size to at least {largest + 1}"
            )


def epoch_order(seed: int, epoch: int, n_windows: int) -> np.ndarray:
    """The train windows' order in one epoch: a pure function of (seed, epoch), so resume is exact."""
    return np.random.default_rng([seed, epoch]).permutation(n_windows)


def _to_ids(windows: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(windows, dtype=np.int64)).to(device)  # (B, T)


# --- one optimizer step -------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def accumulate_batch_gradients(
    model: torch.nn.Module,
    batch_ids: torch.Tensor,
    micro_batch_size: int,
    variant: str,
    objective_cfg: ObjectiveConfig,
    generator: Optional[torch.Generator] = None,
    precision: str = "fp32",
) -> dict[str, Optional[float]]:
    """Add d(batch-mean loss)/d(params) to `.grad`, one micro-batch at a time (§2.2, §9.1.1).

    batch_ids: (B, T). Each micro-batch's mean loss is weighted by its share of the batch,
    so the accumulated gradient equals the full batch's mean; gradients are never zeroed
    here. Returns the batch-mean loss, ce and inv_ce (None for base).
    """
    n = batch_ids.shape[0]
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, n, micro_batch_size):
        micro = batch_ids[start : start + micro_batch_size]  # (m, T)
        share = micro.shape[0] / n
        with _autocast(batch_ids.device, precision):
            out = compute_objective(
                model, micro, variant, objective_cfg, generator=generator, create_graph=True, top_k=()
            )
        (out.loss * share).backward()
        parts = {"loss": out.loss.detach(), "ce": out.ce}
        if out.inv_ce is not None:
            parts["inv_ce"] = out.inv_ce
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value.float() * share
    # One host sync per optimizer step, not one per micro-batch.
    totals = {key: float(value) for key, value in sums.items()}
    return {"loss": totals["loss"], "ce": totals["ce"], "inv_ce": totals.get("inv_ce")}


def lr_multiplier_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping WarmupLinearDecay once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupLinearDecay(warmup_steps, total_steps))


# --- validation ----------------------------------------------------------------------------------


def validation_loss(
    model: torch.nn.Module,
    val_ids: torch.Tensor,
    micro_batch_size: int,
    variant: str,
    objective_cfg: ObjectiveConfig,
    seed: int,
    precision: str = "fp32",
) -> tuple[float, float]:
    """(combined loss, forward CE) on the fixed validation windows val_ids (N, T), deterministic.

    The objective is the training one without double backprop; the Bert-like masks come from
    a generator re-seeded at every call, so every validation sees the same masks.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=val_ids.device)
    generator.manual_seed(seed)
    n = val_ids.shape[0]
    loss_sum = torch.zeros((), device=val_ids.device)
    ce_sum = torch.zeros((), device=val_ids.device)
    # no_grad: the objective still takes g internally (grad mode is switched on for it) but
    # builds no parameter graph, so validation costs no extra memory.
    with torch.no_grad():
        for start in range(0, n, micro_batch_size):
            micro = val_ids[start : start + micro_batch_size]  # (m, T)
            with _autocast(val_ids.device, precision):
                out = compute_objective(
                    model, micro, variant, objective_cfg, generator=generator, create_graph=False, top_k=()
                )
            loss_sum += out.loss.float() * micro.shape[0]
            ce_sum += out.ce.float() * micro.shape[0]
    model.train(was_training)
    return float(loss_sum) / n, float(ce_sum) / n


# --- checkpoints -------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def run_fingerprint(config: Mapping, variant: str, train_shape: tuple, val_shape: tuple) -> dict:
    """What a checkpoint must share with the current run to be resumed."""
    train_cfg = {k: v for k, v in config["train"].items() if k not in _RESUME_FREE_TRAIN_KEYS}
    return _jsonable(
        {
            "variant": variant,
            "model": dict(config["model"]),
            "objective": dict(config["objective"]),
            "train": train_cfg,
            "data": {"train_shape": list(train_shape), "validation_shape": list(val_shape)},
        }
    )


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _save_best(best_dir: Path, model: torch.nn.Module, step: int, val_loss: float) -> None:
    """The best model so far as an HF directory, with its step and validation loss."""
    with atomic_path(best_dir) as tmp:
        model.save_pretrained(tmp)
        (tmp / BEST_META_NAME).write_text(json.dumps({"step": step, "val_loss": val_loss}, indent=2) + "\n")


# --- logging -----------------------------------------------------------------------------------


def _human(rate: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if rate >= scale:
            return f"{rate / scale:.1f}{unit}"
    return f"{rate:.0f}"


def _log_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOG_COLUMNS})
    return buf.getvalue()


def _stop_step(stop_after_steps: Optional[int]) -> tuple[Optional[int], bool]:
    """(step to stop after, whether to exit the process) from the argument or the environment."""
    if stop_after_steps is not None:
        if stop_after_steps < 1:
            raise ValueError(f"stop_after_steps must be >= 1, got {stop_after_steps}")
        return stop_after_steps, False
    text = os.environ.get(STOP_ENV)
    if not text:
        return None, False
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {STOP_ENV} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"environment variable {STOP_ENV} must be a positive integer, got {text!r}")
    return value, True


# --- the loop ----------------------------------------------------------------------------------


def train(
    data_dir: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    variant: str,
    config: dict,
    *,
    stop_after_steps: Optional[int] = None,
) -> None:
    """Train `variant` on data_dir/{train,validation}.npy; write the best model to out_dir.

    Resumes from checkpoint_dir/last.pt when it exists and matches the configuration.
    out_dir (HF save_pretrained of the best model, train_log.csv, run_config.json) appears
    only when training is complete. `stop_after_steps` (testing) returns right after the
    checkpoint at that step, leaving no out_dir; the environment variable ILM_STOP_AFTER_STEPS
    does the same but exits the process with status 3 (a simulated kill).
    """
    data_dir, out_dir, checkpoint_dir = Path(data_dir), Path(out_dir), Path(checkpoint_dir)
    cfg = TrainConfig.from_dict(config["train"])
    objective_cfg = ObjectiveConfig.from_dict(config["objective"])
    stop_at, exit_on_stop = _stop_step(stop_after_steps)
    parse_variant(variant)
    train_data = load_split(data_dir, "train")
    val_data = load_split(data_dir, "validation")
    _check_inputs(data_dir, config["model"], train_data, val_data)

    n_train, window = train_data.shape
    batch = cfg.batch_size
    if n_train < batch:
        logger.warning(
            "the train split has %d windows, fewer than train.batch_size (%d): each step uses the whole split",
            n_train, batch,
        )
        batch = n_train
    steps_per_epoch = max(1, n_train // batch)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
        torch.set_float32_matmul_precision("high" if cfg.allow_tf32 else "highest")

    torch.manual_seed(cfg.seed)
    model = build_model(config["model"]).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = lr_multiplier_schedule(optimizer, cfg.warmup_steps, total)
    generator = torch.Generator(device=device)  # Bert-like masks during training
    generator.manual_seed(cfg.seed)
    state = RunState()
    best_state: Optional[dict[str, torch.Tensor]] = None

    fingerprint = run_fingerprint(config, variant, train_data.shape, val_data.shape)
    checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
    best_dir = checkpoint_dir / BEST_DIR_NAME
    if checkpoint_path.exists():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)  # RNG states must stay on CPU
        differing = _differing_keys(ckpt["fingerprint"], fingerprint)
        if differing:
            raise ValueError(
                f"{checkpoint_path} was written by a run with a different configuration (differs in: "
                f"{', '.join(differing)}); delete {checkpoint_dir} to start afresh, or restore that configuration"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["objective_generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        state = RunState(
            step=ckpt["step"],
            best_val_loss=ckpt["best_val_loss"],
            best_step=ckpt["best_step"],
            log_rows=list(ckpt["log_rows"]),
        )
        best_state = ckpt["best_model"]
        logger.info("resuming from step %d", state.step)
        if best_state is not None and _best_dir_step(best_dir) != state.best_step:
            # A kill between saving best/ and last.pt can leave a best/ from beyond the checkpoint.
            current = _state_copy(model)
            model.load_state_dict(best_state)
            _save_best(best_dir, model, state.best_step, state.best_val_loss)
            model.load_state_dict(current)

    val_ids = _to_ids(val_data[: cfg.val_sequences], device)  # (Nv, T)
    n_params = count_parameters(model)
    logger.info(
        "training %s: %s parameters, %d train windows of %d tokens, batch %d (micro %d), %d steps/epoch, "
        "%d steps on %s",
        variant, f"{n_params:,}", n_train, window, batch, cfg.micro_batch_size, steps_per_epoch, total, device,
    )

    def checkpoint_payload() -> dict:
        epoch, position = divmod(state.step, steps_per_epoch)
        return {
            "fingerprint": fingerprint,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "objective_generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "step": state.step,
            "epoch": epoch,
            "position": position,
            "best_val_loss": state.best_val_loss,
            "best_step": state.best_step,
            "best_model": best_state,
            "log_rows": state.log_rows,
        }

    tokens_per_step = batch * window
    interval_tokens, interval_seconds = 0, 0.0
    bar = tqdm(
        total=total, initial=state.step, desc=f"train {variant}", unit="step", file=sys.stderr, dynamic_ncols=True
    )
    order_epoch, order = -1, np.empty(0, dtype=np.int64)
    step_sleep = float(os.environ.get(STEP_SLEEP_ENV) or 0)
    while state.step < total:
        time.sleep(step_sleep)  # outside the timed region: changes neither the weights nor tokens/s
        epoch, position = divmod(state.step, steps_per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(cfg.seed, epoch, n_train)
        batch_ids = _to_ids(train_data[order[position * batch : (position + 1) * batch]], device)  # (B, T)

        started = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        optimizer.zero_grad(set_to_none=True)  # once per optimizer step, never inside the accumulation
        stats = accumulate_batch_gradients(
            model, batch_ids, cfg.micro_batch_size, variant, objective_cfg, generator, cfg.precision
        )
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        state.step += 1
        interval_seconds += time.perf_counter() - started
        interval_tokens += tokens_per_step
        rate = interval_tokens / max(interval_seconds, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=_human(rate))

        validate = state.step % cfg.val_every == 0 or state.step == total
        val_loss = val_ce = None
        if validate:
            val_loss, val_ce = validation_loss(
                model, val_ids, cfg.micro_batch_size, variant, objective_cfg, cfg.seed, cfg.precision
            )
            if _improves(val_loss, state.best_val_loss):
                state.best_val_loss, state.best_step = val_loss, state.step
                best_state = _state_copy(model)
                _save_best(best_dir, model, state.step, val_loss)
            bar.write(
                f"step {state.step:05d}/{total:05d} | loss {stats['loss']:.2f} | val {val_loss:.2f} | "
                f"{_human(rate)} tok/s",
                file=sys.stderr,
            )
        if validate or state.step % cfg.log_every == 0:
            state.log_rows.append(
                {
                    "step": state.step,
                    "epoch": round(state.step / steps_per_epoch, 4),
                    "tokens": state.step * tokens_per_step,
                    "lr": lr,
                    "loss": stats["loss"],
                    "ce": stats["ce"],
                    "inv_ce": stats["inv_ce"],
                    "val_loss": val_loss,
                    "val_ce": val_ce,
                    "tokens_per_s": round(rate, 1),
                }
            )
            interval_tokens, interval_seconds = 0, 0.0

        stopping = stop_at is not None and state.step == stop_at and state.step < total
        if state.step % cfg.checkpoint_every == 0 or state.step == total or stopping:
            _save_checkpoint(checkpoint_path, checkpoint_payload())
        if stopping:
            bar.close()
            logger.info(
                "stopping after step %d as asked (a simulated kill); checkpoint in %s", state.step, checkpoint_dir
            )
            if exit_on_stop:
                raise SystemExit(KILLED_EXIT_CODE)
            return
    bar.close()

    assert best_state is not None and state.best_step is not None, "the last step always validates"
    model.load_state_dict(best_state)
    run_config = provenance(
        {k: config[k] for k in ("data", "model", "objective", "train") if k in config},
        variant=variant,
        best_step=state.best_step,
        best_val_loss=state.best_val_loss,
        steps=state.step,
        epochs_completed=round(state.step / steps_per_epoch, 4),
        steps_per_epoch=steps_per_epoch,
        batch_size=batch,
        parameters=n_params,
    )
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        (tmp / "train_log.csv").write_text(_log_csv(state.log_rows))
        (tmp / "run_config.json").write_text(json.dumps(run_config, indent=2) + "\n")
    logger.info(
        "wrote %s: best model from step %d (val loss %.4f) after %d steps",
        out_dir, state.best_step, state.best_val_loss, state.step,
    )


def _improves(val_loss: float, best: Optional[float]) -> bool:
    """Whether val_loss is a new best; a NaN loss wins only when nothing else has been seen."""
    if math.isnan(val_loss):
        return best is None
    return best is None or math.isnan(best) or val_loss < best


def _best_dir_step(best_dir: Path) -> Optional[int]:
    meta = best_dir / BEST_META_NAME
    if not meta.exists():
        return None
    return json.loads(meta.read_text()).get("step")
