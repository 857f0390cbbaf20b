"""Train one model variant: a plain PyTorch loop with exact resume (docs/method.md §2.2, §2.3).

One optimizer step sees `train.batch_size` windows, reached by accumulating micro-batches
whose losses are scaled so the accumulated gradient is the batch mean (never zeroed in
between: the paper's bug §9.1.1). The learning rate warms up linearly, then decays linearly
to 0 (transformers' get_linear_schedule_with_warmup). Every `val_every` steps the objective is measured on a fixed validation subset, and
the lowest combined validation loss picks the model that is written out (§2.3).

Everything a killed job needs to continue lives in `checkpoint_dir/last.pt`; with the data
order a pure function of (seed, epoch) and every RNG state restored, N straight steps and
N/2 + kill + resume + N/2 give bitwise the same weights on the same machine. A checkpoint
resumes only a run with the same fingerprint: variant, settings, and the SHA-256 of the
split files and tokenizer. Any other checkpoint (or an unreadable one) is moved aside to
`checkpoint_dir/stale/` and training starts afresh, so changed data or settings never reuse
old weights.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from ilm import faults
from ilm.config import ConfigSection
from ilm.data import TOKENIZER_FILE, hf_tokenizer, load_split, read_tokenizer, save_hf_tokenizer
from ilm.io import atomic_path, fingerprints, provenance
from ilm.model import build_model, count_parameters, numerics, resolve_device, use_attention
from ilm.model_card import build_model_card
from ilm.names import parse_variant
from ilm.objectives import ObjectiveConfig, compute_objective
from ilm.progress import Progress as ProgressLine, human  # train.Progress is the checkpointed state

logger = logging.getLogger("ilm.train")

LOG_COLUMNS = ("step", "epoch", "tokens", "lr", "loss", "ce", "inv_ce", "val_loss", "val_ce", "val_inv_ce",
               "val_inv_ce_without_g", "val_g_sq_over_eps", "tokens_per_s")
CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 2  # bumped when the payload changes; an older checkpoint is set aside, not misread
BEST_DIR_NAME = "best"
BEST_META_NAME = "best.json"
STALE_DIR_NAME = "stale"
ZIP_MAGIC = b"PK\x03\x04"
# Train keys that change neither the weights nor the schedule, so a resume may change them.
# attention: its implementations agree to rounding (bitwise on CPU at the paper's head width), as devices do.
RESUME_FREE_TRAIN_KEYS = ("device", "checkpoint_every", "log_every", "attention")


@dataclass(frozen=True)
class TrainConfig(ConfigSection):
    """The `train:` section (docs/method.md §2.2; defaults and ranges: the schema)."""

    SECTION = "train"
    seed: int  # initialisation, data order and Bert-like masking
    epochs: int  # passes over the train split
    batch_size: int  # sequences per optimizer step
    micro_batch_size: int  # sequences per forward; accumulation reaches batch_size
    lr: float  # peak AdamW learning rate
    weight_decay: float  # on all parameters, as the paper (§9.1.9)
    betas: tuple[float, float]
    warmup_steps: int  # linear warm-up, then linear decay to 0 at the last step
    grad_clip: float  # gradient-norm clip; 0 disables
    max_steps: Optional[int]  # cap on optimizer steps; None = epochs x steps per epoch
    val_every: int  # optimizer steps between validations
    val_sequences: int  # the fixed validation subset: the first N windows
    checkpoint_every: int  # optimizer steps between resume checkpoints
    log_every: int  # optimizer steps between train_log.csv rows
    precision: str  # fp32 (TF32 allowed on CUDA) | bf16 autocast
    allow_tf32: bool
    device: str
    attention: str  # eager | sdpa_math: attention implementations with a double backward


# --- data -------------------------------------------------------------------------------------------


class TrainData(NamedTuple):
    """The splits training reads, their tokenizer, and the SHA-256 of every file they came from."""

    train: np.ndarray  # (N, T) uint16, memory-mapped
    validation: np.ndarray  # (Nv, T) uint16
    fingerprints: dict[str, str]  # file name -> SHA-256: train.npy, validation.npy, tokenizer.json
    tokenizer: Optional[Any]  # the transformers tokenizer written beside the model (None without tokenizer.json)


def load_train_data(data_dir: Path, model_cfg: Mapping) -> TrainData:
    """The train and validation splits, checked against the model; fails before any work on bad input."""
    train_data, val_data = load_split(data_dir, "train"), load_split(data_dir, "validation")
    for split, arr in (("train", train_data), ("validation", val_data)):
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
    files = [data_dir / "train.npy", data_dir / "validation.npy"]
    tokenizer_path = data_dir / TOKENIZER_FILE
    tokenizer = None
    if tokenizer_path.exists():
        files.append(tokenizer_path)
        raw = read_tokenizer(tokenizer_path)
        tokenizer_size = raw.get_vocab_size()
        tokenizer = hf_tokenizer(raw, model_max_length=window)
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
    if tokenizer is None:
        logger.warning("no %s in %s: the model folder will hold no tokenizer", TOKENIZER_FILE, data_dir)
    return TrainData(train_data, val_data, fingerprints(files), tokenizer)


def epoch_order(seed: int, epoch: int, n_windows: int) -> np.ndarray:
    """The train windows' order in one epoch: a pure function of (seed, epoch), so resume is exact."""
    return np.random.default_rng([seed, epoch]).permutation(n_windows)


def _to_ids(windows: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, T) int64 on `device`; to CUDA through pinned memory without blocking the host, on CPU as it is."""
    ids = torch.from_numpy(np.asarray(windows, dtype=np.int64))  # (B, T)
    if device.type != "cuda":
        return ids
    return ids.pin_memory().to(device, non_blocking=True)  # ordered before the step's kernels on the same stream


class Schedule(NamedTuple):
    """How many windows a step takes and how many steps the run has."""

    batch: int  # windows per optimizer step
    steps_per_epoch: int
    total: int  # optimizer steps of the whole run


def plan_steps(cfg: TrainConfig, n_train: int) -> Schedule:
    batch = cfg.batch_size
    if n_train < batch:
        logger.warning(
            "the train split has %d windows, fewer than train.batch_size (%d): each step uses the whole split",
            n_train, batch,
        )
        batch = n_train
    steps_per_epoch = max(1, n_train // batch)
    total = cfg.epochs * steps_per_epoch
    return Schedule(batch, steps_per_epoch, total if cfg.max_steps is None else min(total, cfg.max_steps))


def batch_windows(data: np.ndarray, seed: int, step: int, schedule: Schedule, cache: dict) -> np.ndarray:
    """The windows of optimizer step `step` (0-based): a slice of its epoch's permutation."""
    epoch, position = divmod(step, schedule.steps_per_epoch)
    if cache.get("epoch") != epoch:
        cache.update(epoch=epoch, order=epoch_order(seed, epoch, data.shape[0]))
    return data[cache["order"][position * schedule.batch : (position + 1) * schedule.batch]]


# --- one optimizer step -------------------------------------------------------------------------------


def configure_matmul_precision(device: torch.device, allow_tf32: bool) -> None:
    """TF32 matmuls on CUDA when allowed (the paper's "medium" fp32 precision, §2.2); CPU is unaffected."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")


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
                model, micro, variant, objective_cfg, generator=generator,
                create_graph=objective_cfg.double_backprop, top_k=(),
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


@dataclass
class Validation:
    """The objective on the fixed validation windows, and how much g carries there (ILM variants; else None)."""

    loss: float  # combined loss: what selects the model written out
    ce: float  # forward CE
    inv_ce: Optional[float] = None  # inverse CE with g
    inv_ce_without_g: Optional[float] = None  # the same rows from x alone (0 for `*_grad`)
    g_sq_over_eps: Optional[float] = None  # mean g^2 over the rows' elements / the first RMSNorm's eps


def first_norm_eps(model: torch.nn.Module) -> float:
    """The eps of the first decoder layer's input RMSNorm: g^2 far below it means Norm(x - g) is Norm(x)."""
    return float(model.model.layers[0].input_layernorm.variance_epsilon)


def validation_loss(
    model: torch.nn.Module,
    val_ids: torch.Tensor,
    micro_batch_size: int,
    variant: str,
    objective_cfg: ObjectiveConfig,
    seed: int,
    precision: str = "fp32",
) -> Validation:
    """The objective on the fixed validation windows val_ids (N, T), deterministic, with the g diagnostics.

    The objective is the training one without double backprop; the Bert-like masks come from
    a generator re-seeded at every call, so every validation sees the same masks. The g curves
    (inverse CE with and without g, mean g^2 / eps) are means over micro-batches weighted by windows.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=val_ids.device)
    generator.manual_seed(seed)
    n = val_ids.shape[0]
    sums = {key: torch.zeros((), device=val_ids.device) for key in ("loss", "ce", "inv", "without", "g_sq")}
    ilm = False
    # no_grad: the objective still takes g internally (grad mode is switched on for it) but
    # builds no parameter graph, so validation costs no extra memory.
    with torch.no_grad():
        for start in range(0, n, micro_batch_size):
            micro = val_ids[start : start + micro_batch_size]  # (m, T)
            with _autocast(val_ids.device, precision):
                out = compute_objective(
                    model, micro, variant, objective_cfg, generator=generator, create_graph=False, top_k=(),
                    diagnostics=True,
                )
            m = micro.shape[0]
            sums["loss"] += out.loss.float() * m
            sums["ce"] += out.ce.float() * m
            if out.inv_ce is not None:
                ilm = True
                sums["inv"] += out.inv_ce.float() * m
                sums["without"] += out.inv_ce_without_g.float() * m
                sums["g_sq"] += out.g_sq_mean.float() * m
    model.train(was_training)
    result = Validation(float(sums["loss"]) / n, float(sums["ce"]) / n)
    if ilm:
        result.inv_ce = float(sums["inv"]) / n
        result.inv_ce_without_g = float(sums["without"]) / n
        result.g_sq_over_eps = float(sums["g_sq"]) / n / first_norm_eps(model)
    return result


def improves(val_loss: float, best: Optional[float]) -> bool:
    """Whether val_loss is a new best; a NaN loss wins only when nothing else has been seen."""
    if math.isnan(val_loss):
        return best is None
    return best is None or math.isnan(best) or val_loss < best


# --- the run's state, checkpoints and resume -------------------------------------------------------------


@dataclass
class Progress:
    """The loop's own progress; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    best_val_loss: Optional[float] = None
    best_step: Optional[int] = None
    log_rows: list[dict] = field(default_factory=list)


@dataclass
class Run:
    """Everything that evolves during training and is saved in last.pt."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator  # Bert-like masks during training
    progress: Progress
    best_state: Optional[dict[str, torch.Tensor]] = None  # CPU copy of the best weights so far


def new_run(
    model_cfg: Mapping, cfg: TrainConfig, total_steps: int, device: torch.device, frozen_pad_row: bool = True
) -> Run:
    """A freshly initialised model, AdamW (all parameters decayed, §9.1.9) and the LR schedule.

    frozen_pad_row: <pad> is HF's padding_idx row (zero, no gradient; objective.mask_placeholder).
    """
    torch.manual_seed(cfg.seed)
    model = use_attention(build_model(model_cfg, frozen_pad_row=frozen_pad_row), cfg.attention).to(device)
    model.train()
    # fused: one kernel for all parameters (CPU and CUDA); 11x faster than foreach on CPU, same update up to rounding.
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
    )
    # Linear warm-up, then linear decay to 0 at the last step: the paper's schedule (§2.2), from transformers.
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    return Run(model, optimizer, scheduler, generator, Progress())


def run_fingerprint(config: Mapping, variant: str, data_fingerprints: Mapping[str, str]) -> dict:
    """What a checkpoint must share with the current run to be resumed: settings and input content."""
    train_cfg = {k: v for k, v in config["train"].items() if k not in RESUME_FREE_TRAIN_KEYS}
    return json.loads(
        json.dumps(
            {
                "variant": variant,
                "model": dict(config["model"]),
                "objective": dict(config["objective"]),
                "train": train_cfg,
                "inputs_sha256": dict(data_fingerprints),
            }
        )
    )


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def checkpoint_payload(run: Run, fingerprint: dict, device: torch.device) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "objective_generator": run.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "progress": asdict(run.progress),
        "best_model": run.best_state,
    }


def save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def set_aside(checkpoint_dir: Path, reason: str) -> Path:
    """Move last.pt and best/ to checkpoint_dir/stale/<UTC time>-<reason>/ (kept for inspection, never reused)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = checkpoint_dir / STALE_DIR_NAME / f"{stamp}-{reason}"
    target.mkdir(parents=True)
    for name in (CHECKPOINT_NAME, BEST_DIR_NAME):
        if (checkpoint_dir / name).exists():
            (checkpoint_dir / name).rename(target / name)
    return target


def _read_checkpoint(path: Path) -> dict:
    """last.pt as saved by save_checkpoint; ValueError when it is not one (cut short, garbage, old format)."""
    with open(path, "rb") as f:
        if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:  # torch.save writes a zip archive
            raise ValueError(f"{path} is not a readable checkpoint (not a file torch.save wrote)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # RNG states must stay on CPU
    except Exception as e:  # noqa: BLE001 - zip, unpickling and EOF errors all mean "damaged"
        # torch's own message advises weights_only=False (unpickling arbitrary code): not passed on.
        raise ValueError(f"{path} is not a readable checkpoint (damaged or cut short: {type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this version of `ilm train` (format {CHECKPOINT_FORMAT})")
    return ckpt


def resume(run: Run, checkpoint_dir: Path, fingerprint: dict, device: torch.device, strict: bool) -> bool:
    """Restore `run` from checkpoint_dir/last.pt when it belongs to this run; return whether it did.

    A checkpoint of another run (other settings or data) is moved aside and training starts
    afresh. So is an unreadable one, unless `strict`, when it is an error.
    """
    path = checkpoint_dir / CHECKPOINT_NAME
    if not path.exists():
        return False
    try:
        ckpt = _read_checkpoint(path)
    except ValueError as e:
        if strict:
            raise ValueError(f"{e}; delete it to start afresh, or run without --strict-resume") from None
        logger.warning("%s; moved it to %s and starting afresh", e, set_aside(checkpoint_dir, "unreadable"))
        return False
    differing = differing_keys(ckpt["fingerprint"], fingerprint)
    if differing:
        logger.warning(
            "%s was written by another run (it differs in: %s); moved it to %s and starting afresh",
            path, ", ".join(differing), set_aside(checkpoint_dir, "other-run"),
        )
        return False
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.generator.set_state(ckpt["objective_generator"])
    torch.set_rng_state(ckpt["torch_rng"])
    if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
    run.progress = Progress(**ckpt["progress"])
    run.best_state = ckpt["best_model"]
    logger.info("resuming from step %d", run.progress.step)
    best_dir = checkpoint_dir / BEST_DIR_NAME
    if run.best_state is not None and _best_dir_step(best_dir) != run.progress.best_step:
        # A kill between saving best/ and last.pt can leave a best/ from beyond the checkpoint.
        current = _state_copy(run.model)
        run.model.load_state_dict(run.best_state)
        _save_best(best_dir, run.model, run.progress)
        run.model.load_state_dict(current)
    return True


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _save_best(best_dir: Path, model: torch.nn.Module, progress: Progress) -> None:
    """`model`, the best so far, as an HF directory with its step and validation loss."""
    with atomic_path(best_dir) as tmp:
        model.save_pretrained(tmp)
        meta = {"step": progress.best_step, "val_loss": progress.best_val_loss}
        (tmp / BEST_META_NAME).write_text(json.dumps(meta, indent=2) + "\n")


def _best_dir_step(best_dir: Path) -> Optional[int]:
    meta = best_dir / BEST_META_NAME
    try:
        return json.loads(meta.read_text()).get("step")
    except (OSError, json.JSONDecodeError):
        return None


# --- logging and the output ---------------------------------------------------------------------------------


def _log_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOG_COLUMNS})
    return buf.getvalue()


def write_model(
    out_dir: Path, run: Run, config: Mapping, variant: str, tokenizer: Optional[Any], extra: Mapping
) -> None:
    """out_dir, all at once: the best model (save_pretrained), its tokenizer, a model card (README.md),
    train_log.csv and run_config.json. With the tokenizer there, AutoTokenizer, AutoModelForCausalLM
    and pipeline("text-generation") load the folder as it is."""
    assert run.best_state is not None and run.progress.best_step is not None, "the last step always validates"
    run.model.load_state_dict(run.best_state)
    run_config = provenance(
        {k: config[k] for k in ("data", "model", "objective", "train") if k in config},
        variant=variant,
        best_step=run.progress.best_step,
        best_val_loss=run.progress.best_val_loss,
        steps=run.progress.step,
        **extra,
    )
    with atomic_path(out_dir) as tmp:
        run.model.save_pretrained(tmp)
        if tokenizer is not None:
            save_hf_tokenizer(tokenizer, tmp)
        (tmp / "train_log.csv").write_text(_log_csv(run.progress.log_rows))
        (tmp / "run_config.json").write_text(json.dumps(run_config, indent=2) + "\n")
        build_model_card(run_config, run.progress, out_dir).save(tmp / "README.md")
    logger.info(
        "wrote %s: best model from step %d (val loss %.4f) after %d steps",
        out_dir, run.progress.best_step, run.progress.best_val_loss, run.progress.step,
    )


# --- the loop ----------------------------------------------------------------------------------------------


def train(
    data_dir: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    variant: str,
    config: dict,
    *,
    stop_after_steps: Optional[int] = None,
    strict_resume: bool = False,
) -> None:
    """Train `variant` on data_dir/{train,validation}.npy; write the best model to out_dir.

    Resumes from checkpoint_dir/last.pt when it belongs to this run (see resume). out_dir
    appears only when training is complete. `stop_after_steps` (tests) returns right after
    the checkpoint at that step, leaving no out_dir; ILM_STOP_AFTER_STEPS does the same but
    exits the process as a kill would (ilm.faults).
    """
    data_dir, out_dir, checkpoint_dir = Path(data_dir), Path(out_dir), Path(checkpoint_dir)
    cfg = TrainConfig.from_dict(config["train"])
    objective_cfg = ObjectiveConfig.from_dict(config["objective"])
    parse_variant(variant)
    if stop_after_steps is not None and stop_after_steps < 1:
        raise ValueError(f"stop_after_steps must be >= 1, got {stop_after_steps}")
    kill_at = faults.train_stop_after_steps()
    sleep = faults.train_step_sleep()
    data = load_train_data(data_dir, config["model"])
    schedule = plan_steps(cfg, data.train.shape[0])
    device = resolve_device(cfg.device)
    configure_matmul_precision(device, cfg.allow_tf32)

    run = new_run(config["model"], cfg, schedule.total, device, frozen_pad_row=objective_cfg.frozen_pad_row)
    fingerprint = run_fingerprint(config, variant, data.fingerprints)
    resume(run, checkpoint_dir, fingerprint, device, strict_resume)
    progress = run.progress
    val_ids = _to_ids(data.validation[: cfg.val_sequences], device)  # (Nv, T)
    n_params = count_parameters(run.model)
    window = data.train.shape[1]
    logger.info(
        "training %s: %s parameters, %d train windows of %d tokens, batch %d (micro %d), %d steps/epoch, "
        "%d steps on %s",
        variant, f"{n_params:,}", data.train.shape[0], window, schedule.batch, cfg.micro_batch_size,
        schedule.steps_per_epoch, schedule.total, device,
    )

    tokens_per_step = schedule.batch * window
    interval_tokens, interval_seconds = 0, 0.0
    order_cache: dict = {}
    report = ProgressLine(schedule.total, f"train {variant}", done=progress.step, log=logger)
    while progress.step < schedule.total:
        time.sleep(sleep)  # tests only; outside the timed region
        batch_ids = _to_ids(batch_windows(data.train, cfg.seed, progress.step, schedule, order_cache), device)

        started = time.perf_counter()
        lr = run.scheduler.get_last_lr()[0]
        run.optimizer.zero_grad(set_to_none=True)  # once per optimizer step, never inside the accumulation
        stats = accumulate_batch_gradients(
            run.model, batch_ids, cfg.micro_batch_size, variant, objective_cfg, run.generator, cfg.precision
        )
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        progress.step += 1
        interval_seconds += time.perf_counter() - started
        interval_tokens += tokens_per_step
        rate = interval_tokens / max(interval_seconds, 1e-9)
        report.update(1, {"loss": stats["loss"], "tok/s": human(rate)})

        last = progress.step == schedule.total
        val_loss = val_ce = None
        val = Validation(float("nan"), float("nan"))
        if progress.step % cfg.val_every == 0 or last:
            val = validation_loss(
                run.model, val_ids, cfg.micro_batch_size, variant, objective_cfg, cfg.seed, cfg.precision
            )
            val_loss, val_ce = val.loss, val.ce
            if improves(val_loss, progress.best_val_loss):
                progress.best_val_loss, progress.best_step = val_loss, progress.step
                run.best_state = _state_copy(run.model)
                _save_best(checkpoint_dir / BEST_DIR_NAME, run.model, progress)
            logger.info(
                "step %05d/%05d | loss %.2f | val %.2f | %s tok/s",
                progress.step, schedule.total, stats["loss"], val_loss, human(rate),
            )
        if val_loss is not None or progress.step % cfg.log_every == 0:
            progress.log_rows.append(
                {
                    "step": progress.step,
                    "epoch": round(progress.step / schedule.steps_per_epoch, 4),
                    "tokens": progress.step * tokens_per_step,
                    "lr": lr,
                    "loss": stats["loss"],
                    "ce": stats["ce"],
                    "inv_ce": stats["inv_ce"],
                    "val_loss": val_loss,
                    "val_ce": val_ce,
                    "val_inv_ce": val.inv_ce,
                    "val_inv_ce_without_g": val.inv_ce_without_g,
                    "val_g_sq_over_eps": val.g_sq_over_eps,
                    "tokens_per_s": round(rate, 1),
                }
            )
            interval_tokens, interval_seconds = 0, 0.0

        stopping = not last and progress.step in (stop_after_steps, kill_at)
        if progress.step % cfg.checkpoint_every == 0 or last or stopping:
            save_checkpoint(checkpoint_dir / CHECKPOINT_NAME, checkpoint_payload(run, fingerprint, device))
        if stopping:
            report.close()
            logger.info("stopping after step %d as asked; checkpoint in %s", progress.step, checkpoint_dir)
            if progress.step == kill_at:
                faults.simulate_kill()
            return
    report.close()
    write_model(
        out_dir, run, config, variant, data.tokenizer,
        {
            "inputs_sha256": data.fingerprints,
            "epochs_completed": round(progress.step / schedule.steps_per_epoch, 4),
            "steps_per_epoch": schedule.steps_per_epoch,
            "batch_size": schedule.batch,
            "parameters": n_params,
            "numerics": numerics(device),
        },
    )
