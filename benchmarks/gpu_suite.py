"""Every stage's throughput on one GPU in one command, and paper-scale GPU-hours projected from it (issue 13).

Writes <out-dir>/suite.json and <out-dir>/suite.md, and the short training run's curves
(training_curves.csv, training_curves.png). Parts, each under its own time budget:

1. train_step: one training step (objective + backward) of every variant at micro-batch 256,
   fp32 with TF32 and bf16 autocast, with the configured train.attention: tokens/s, ratio to
   base, peak memory (train_step.py); and fp32 with the other attention implementation beside
   it (eager vs sdpa_math, both with a double backward), to choose train.attention by measurement.
2. gcg: sample-steps/s of `ilm.gcg.run` at width 4096 for S in {1, 8, 64}, uncompiled, beside
   the naive one-sample GCG, in the same run (gcg_step.py); on CUDA, also whether a step runs
   with no host synchronisation (torch.cuda.set_sync_debug_mode("error")).
3. evaluate: windows/s of `ilm.evaluate`'s forward pass and its three inverse passes.
4. inversion: samples/s of the batched `ilm.invert.search` and of a naive one-sample search,
   checked to return the same beams first (invert_search.py).
5. training_run: every variant trained for a few dozen steps at the paper's model size on a
   generated corpus (ilm.corpus, offline), with the package's own step functions.
6. gcg_compiled: part 2 with the candidate forward under torch.compile (gcg.compile: true;
   `auto` compiles on CUDA), compilation outside the timed run. Last, as compilation is the
   riskiest part; the projection uses the faster of the two GCG parts.
7. projection: paper-scale GPU-hours per stage from the measured rates (projection.py).

A part that raises or overruns its budget is recorded as failed/overran and the others still
run; suite.json is rewritten after every part, so a killed run keeps what finished. Models have
random weights (throughput does not depend on them) except in the training run.

It imports neither jsonschema, datasets nor snakemake, which the GPU machine lacks: config.yaml
is read with `ilm.config.load_config_unchecked` (the tests validate the same file). On the
device machine, from the repository root (one `run` call of the device tool, timeout_s 570):

    set -o pipefail; PYTHONPATH=src PYTHONUNBUFFERED=1 python benchmarks/gpu_suite.py --out-dir $OUT \\
        --commit <the commit you run> 2>&1 | tee $OUT/suite.log

On a CPU, `python benchmarks/gpu_suite.py --quick --out-dir /tmp/suite` runs every part at tiny
sizes in well under a minute (the tests do); its numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as _dt
import io
import json
import logging
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules

from gcg_step import check_no_sync, gcg_rates  # noqa: E402
from invert_search import check_same_beams, measure_inversion, random_suffixes, setup  # noqa: E402
from projection import project_gpu_hours  # noqa: E402
from train_step import time_variants  # noqa: E402

from ilm.config import load_config_unchecked  # noqa: E402
from ilm.io import provenance, write_json, write_text  # noqa: E402
from ilm.model import build_model, count_parameters, resolve_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("ilm.benchmarks.gpu_suite")

# Sizes of each part. FULL: one H100/H200, under 8 minutes in all; QUICK: a CPU, tiny, for the tests.
# budget_s caps each part (it is recorded as overran past it); time_limit_s caps the whole run.
FULL = {
    "micro_batch": 256, "seq_len": None, "train_step_steps": 5, "train_step_warmup": 2,
    "gcg_width": 4096, "gcg_steps": 10, "gcg_samples": [1, 8, 64], "gcg_top_k": None,
    "eval_windows": 2048, "eval_batch": None,
    "invert_samples": [8, 64], "invert_naive_samples": 4, "invert_prefix_length": None,
    "invert_suffix_length": None, "invert_method": "identity",
    "run_stories": 8000, "run_data": {}, "run_steps": 60, "run_batch": 256, "run_warmup": 10,
    "run_val_every": 10, "run_val_sequences": 256,
    "budget_s": {"train_step": 85, "gcg": 70, "evaluate": 30, "inversion": 55, "training_run": 120,
                 "gcg_compiled": 100},
    "time_limit_s": 460,
}
QUICK = {
    "micro_batch": 2, "seq_len": 32, "train_step_steps": 1, "train_step_warmup": 1,
    "gcg_width": 16, "gcg_steps": 1, "gcg_samples": [1, 2], "gcg_top_k": 8,
    "eval_windows": 4, "eval_batch": 2,
    "invert_samples": [2], "invert_naive_samples": 1, "invert_prefix_length": 2,
    "invert_suffix_length": 6, "invert_method": "identity",
    "run_stories": 150, "run_data": {"vocab_size": 384, "window": 32, "stride": 24}, "run_steps": 2,
    "run_batch": 4, "run_warmup": 1, "run_val_every": 1, "run_val_sequences": 4,
    "budget_s": {"train_step": 60, "gcg": 60, "evaluate": 60, "inversion": 60, "training_run": 60,
                 "gcg_compiled": 60},
    "time_limit_s": 300,
}
PARTS = ("train_step", "gcg", "evaluate", "inversion", "training_run", "gcg_compiled")
# The paper's split (TinyStoriesV2_cleaned, windows of 256): estimates of method-spec §3.3 / §7.3,
# used unless --data-stats gives a prepared split's counts.
PAPER_TRAIN_WINDOWS = 1_100_000
PAPER_TEST_WINDOWS = 140_000


class PartOverrun(Exception):
    """A part ran past its time budget."""


@contextlib.contextmanager
def time_budget(seconds: float):
    """Raise PartOverrun in the main thread once `seconds` have passed inside the block."""
    def expire(signum, frame):
        raise PartOverrun(f"overran its budget of {seconds:.3g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def training_numerics(device: torch.device, allow_tf32: bool):
    """`ilm train`'s matmul precision inside the block (TF32 on CUDA when allowed), torch's settings restored
    after it: the other parts run as `ilm evaluate`, `ilm gcg-attack` and `ilm invert` do (no TF32)."""
    from ilm.train import configure_matmul_precision

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    configure_matmul_precision(device, allow_tf32)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _at_samples(rows: Sequence[Mapping], samples: int, key: str) -> tuple[int, float]:
    """(S, rate) of the row measured at `samples`, else at the nearest measured S."""
    row = min(rows, key=lambda r: (abs(r["samples"] - samples), r["samples"]))
    return row["samples"], row[key]


# --- the parts ------------------------------------------------------------------------------------------


class Suite:
    """The measured parts; each returns a JSON-able dict.

    Each part imports the modules it measures itself, so a module that fails to import on the
    GPU machine fails that part alone (recorded), not the suite.
    """

    def __init__(self, config: dict, sizes: Mapping, device: torch.device, seed: int):
        self.config, self.sizes, self.device, self.seed = config, sizes, device, seed
        self.variants = list(dict.fromkeys(["base", *config["variants"]]))
        from ilm.objectives import ObjectiveConfig

        self.objective = ObjectiveConfig.from_section(config["objective"])

    def _model(self) -> torch.nn.Module:
        torch.manual_seed(self.seed)
        return build_model(self.config["model"]).to(self.device)

    def train_step(self) -> dict:
        with training_numerics(self.device, True):  # fp32 = fp32 with TF32 on CUDA (train.allow_tf32)
            return self._train_step()

    def _train_step(self) -> dict:
        from ilm.model import ATTENTION, use_attention

        s = self.sizes
        attention = self.config["train"]["attention"]
        model = use_attention(self._model(), attention).train()
        seq_len = s["seq_len"] or self.config["data"]["window"]
        out = {"micro_batch": s["micro_batch"], "seq_len": seq_len, "steps": s["train_step_steps"],
               "warmup": s["train_step_warmup"], "attention": attention, "precisions": {}}

        def rows_of(precision: str) -> list[dict]:
            rows = time_variants(model, self.variants, self.objective, s["micro_batch"], seq_len,
                                 s["train_step_steps"], s["train_step_warmup"], precision, self.seed)
            base = next(r["tokens_per_second"] for r in rows if r["variant"] == "base")
            return [{**r, "ratio_to_base": r["tokens_per_second"] / base} for r in rows]

        for precision, label in (("fp32", "fp32_tf32"), ("bf16", "bf16")):
            out["precisions"][label] = rows_of(precision)
        # The other implementation, fp32 only: tokens/s relative to the configured one, variant by variant.
        configured = {r["variant"]: r["tokens_per_second"] for r in out["precisions"]["fp32_tf32"]}
        out["other_attention"] = {}
        for other in (a for a in ATTENTION if a != attention):
            use_attention(model, other)
            out["other_attention"][other] = [
                {**r, "ratio_to_configured": r["tokens_per_second"] / configured[r["variant"]]}
                for r in rows_of("fp32")
            ]
        use_attention(model, attention)
        return out

    def gcg(self, compile: bool = False) -> dict:
        from ilm.gcg import GCGConfig, use_sdpa_attention

        s = self.sizes
        model = self._model().eval()  # eager attention, as ilm.model loads it (the naive reference)
        attack_model = use_sdpa_attention(copy.deepcopy(model))  # what `ilm gcg-attack` runs
        section = {**self.config["gcg"], "search_width": s["gcg_width"], "steps": s["gcg_steps"],
                   "compile": compile}
        if s["gcg_top_k"] is not None:
            section["top_k"] = s["gcg_top_k"]
        gcfg = GCGConfig.from_section(section)
        vocab, window = self.config["model"]["vocab_size"], self.config["data"]["window"]
        data = torch.randint(vocab, (max(s["gcg_samples"]), window), generator=torch.Generator().manual_seed(1))
        naive_rate, rows = gcg_rates(model, attack_model, gcfg, data, s["gcg_samples"], self.device)
        out = {"width": gcfg.search_width, "steps": gcfg.steps, "top_k": gcfg.top_k, "compile": compile,
               "precision": gcfg.precision if self.device.type == "cuda" else "fp32",
               "chunk": gcfg.max_candidates_per_forward, "naive_sample_steps_per_second": naive_rate, "rows": rows}
        if self.device.type == "cuda" and not compile:
            out["host_sync_free"] = self._sync_check(attack_model, gcfg, data)
        return out

    def _sync_check(self, attack_model, gcfg, data: torch.Tensor) -> str:
        """"yes", or the first synchronising call's error: every step of a 2-step attack of 8 samples runs
        under torch.cuda.set_sync_debug_mode("error") (gcg_step.check_no_sync)."""
        from ilm.gcg import GCGConfig

        P, L = gcfg.prefix_length, gcfg.target_length
        samples = min(8, len(data))
        try:
            # host tensors, as `ilm gcg-attack` passes them: ilm.gcg.run moves them to the model's device
            check_no_sync(attack_model, data[:, :P], data[:, P : P + L],
                          GCGConfig(**{**gcfg.__dict__, "steps": 2}), samples)
        except RuntimeError as e:
            return f"no: {str(e).splitlines()[0]}"
        return "yes"

    def evaluate(self) -> dict:
        from ilm.evaluate import forward_metrics, inverse_metrics
        from ilm.names import PROTOCOLS

        s = self.sizes
        ev = self.config["evaluate"]
        batch = s["eval_batch"] or ev["batch_size"]
        seq_len = s["seq_len"] or self.config["data"]["window"]
        model = self._model().eval()  # ilm.model.load_model's mode: eager attention, eval
        rng = np.random.default_rng(self.seed)
        windows = rng.integers(0, self.config["model"]["vocab_size"], (s["eval_windows"], seq_len)).astype(np.uint16)
        ks = sorted(set(ev["top_k"]))
        passes = {"forward": lambda w: forward_metrics(model, w, batch, ks, self.device)}
        for protocol in PROTOCOLS:
            passes[protocol] = lambda w, p=protocol: inverse_metrics(
                model, w, p, False, self.objective, batch, ks, ev["seed"], self.device)
        for fn in passes.values():  # warm-up on one batch
            fn(windows[:batch])
        seconds = {}
        for name, fn in passes.items():
            _sync(self.device)
            start = time.perf_counter()
            fn(windows)
            _sync(self.device)
            seconds[name] = time.perf_counter() - start
        total = sum(seconds.values())
        return {"windows": int(windows.shape[0]), "seq_len": seq_len, "batch": batch, "pass_seconds": seconds,
                "windows_per_second": windows.shape[0] / total}

    def inversion(self) -> dict:
        s = self.sizes
        inv = dict(self.config["invert"])
        for key in ("prefix_length", "suffix_length"):
            if s[f"invert_{key}"] is not None:
                inv[key] = s[f"invert_{key}"]
        config = {**self.config, "invert": inv}
        method = s["invert_method"]
        model, counts = setup(config, self.device, method, self.seed)
        check_same_beams(model, method, counts, config)
        samples = s["invert_samples"]
        suffixes = random_suffixes(config, max(*samples, s["invert_naive_samples"]), self.seed + 2, self.device)
        result = measure_inversion(model, method, counts, suffixes, config, samples, s["invert_naive_samples"])
        return {"method": method, "prefix_length": inv["prefix_length"], "suffix_length": int(suffixes.shape[1]),
                "beam": inv["beam"], "top_k": inv["top_k"], "same_beams_checked": True, **result}

    def training_run(self, out_dir: Path) -> dict:
        from ilm.corpus import write_corpus
        from ilm.data import load_split, prepare_data
        from ilm.train import TrainConfig

        s = self.sizes
        data_cfg = {**self.config["data"], "source": "generated", **s["run_data"]}
        train_cfg = TrainConfig.from_section({
            **self.config["train"], "batch_size": s["run_batch"], "micro_batch_size": min(s["run_batch"], self.config["train"]["micro_batch_size"]),
            "max_steps": s["run_steps"], "warmup_steps": s["run_warmup"], "val_every": s["run_val_every"],
            "val_sequences": s["run_val_sequences"],
        })
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "stories.txt"
            write_corpus(corpus, s["run_stories"], self.config["corpus"]["seed"])
            stats = prepare_data(str(corpus), Path(tmp) / "data", data_cfg)
            train = np.array(load_split(Path(tmp) / "data", "train"))  # copied: the folder goes away
            val = np.array(load_split(Path(tmp) / "data", "validation"))
        rows, summary = [], {}
        for variant in self.variants:
            log.info("training run: %s, %d steps of %d windows", variant, s["run_steps"], s["run_batch"])
            with training_numerics(self.device, train_cfg.allow_tf32):
                curve = short_training(self.config["model"], train, val, variant, train_cfg, self.objective,
                                       self.device)
            rows += [{"variant": variant, **r} for r in curve]
            first, last = curve[0], curve[-1]
            summary[variant] = {
                "steps": len(curve), "first_loss": first["loss"], "last_loss": last["loss"],
                "first_val_loss": curve[0]["val_loss"], "last_val_loss": last["val_loss"],
                "first_inv_ce": first["inv_ce"], "last_inv_ce": last["inv_ce"],
                "tokens_per_second": float(np.median([r["tokens_per_s"] for r in curve])),
            }
        write_text(out_dir / "training_curves.csv", _curves_csv(rows))
        plot_curves(rows, out_dir / "training_curves.png")
        return {"train_windows": int(train.shape[0]), "window": int(train.shape[1]), "stories": s["run_stories"],
                "tokenizer_vocab": stats.get("vocab_size"), "batch": s["run_batch"],
                "epochs": round(s["run_steps"] * s["run_batch"] / train.shape[0], 3), "variants": summary,
                "curves": ["training_curves.csv", "training_curves.png"]}


def short_training(model_cfg: Mapping, train: np.ndarray, val: np.ndarray, variant: str, cfg, objective,
                   device: torch.device) -> list[dict]:
    """`cfg.max_steps` optimizer steps of `variant` with ilm.train's own step functions; one row per step.

    As `ilm train` does, minus checkpoints and model selection: AdamW with the warm-up/decay
    schedule, accumulation over micro-batches, gradient clipping, and the validation loss on
    the first `cfg.val_sequences` validation windows every `cfg.val_every` steps.
    """
    from ilm.train import accumulate_batch_gradients, batch_windows, new_run, plan_steps, validation_loss

    schedule = plan_steps(cfg, train.shape[0])
    run = new_run(model_cfg, cfg, schedule.total, device, frozen_pad_row=objective.frozen_pad_row)
    val_ids = torch.from_numpy(val[: cfg.val_sequences].astype(np.int64)).to(device)  # (Nv, T)
    order: dict = {}
    rows = []
    for step in range(schedule.total):
        ids = torch.from_numpy(batch_windows(train, cfg.seed, step, schedule, order).astype(np.int64)).to(device)
        _sync(device)
        start = time.perf_counter()
        run.optimizer.zero_grad(set_to_none=True)
        stats = accumulate_batch_gradients(run.model, ids, cfg.micro_batch_size, variant, objective, run.generator,
                                           cfg.precision)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        _sync(device)
        seconds = time.perf_counter() - start
        val_loss = val_ce = val_g = None
        if (step + 1) % cfg.val_every == 0 or step + 1 == schedule.total:
            val = validation_loss(run.model, val_ids, cfg.micro_batch_size, variant, objective, cfg.seed,
                                  cfg.precision)
            val_loss, val_ce, val_g = val.loss, val.ce, val.g_sq_over_eps
        rows.append({"step": step + 1, "loss": stats["loss"], "ce": stats["ce"], "inv_ce": stats["inv_ce"],
                     "val_loss": val_loss, "val_ce": val_ce, "val_g_sq_over_eps": val_g,
                     "tokens_per_s": ids.numel() / seconds})
    return rows


CURVE_COLUMNS = ("variant", "step", "loss", "ce", "inv_ce", "val_loss", "val_ce", "tokens_per_s")


def _curves_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CURVE_COLUMNS})
    return buf.getvalue()


def plot_curves(rows: list[dict], path: Path) -> None:
    """Forward CE (train, and validation as dots) and inverse CE per step, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ce, ax_inv) = plt.subplots(1, 2, figsize=(10, 4))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        line, = ax_ce.plot([r["step"] for r in mine], [r["ce"] for r in mine], label=variant)
        val = [r for r in mine if r["val_ce"] is not None]
        ax_ce.plot([r["step"] for r in val], [r["val_ce"] for r in val], "o", color=line.get_color(), ms=3)
        if mine[0]["inv_ce"] is not None:
            ax_inv.plot([r["step"] for r in mine], [r["inv_ce"] for r in mine], label=variant, color=line.get_color())
    ax_ce.set(xlabel="optimizer step", ylabel="forward CE (line: train, dots: validation)")
    ax_inv.set(xlabel="optimizer step", ylabel="inverse CE (train)")
    ax_ce.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    from ilm.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


# --- projection and the summary ---------------------------------------------------------------------------


def projections(config: Mapping, parts: Mapping, train_windows: int, test_windows: int) -> dict:
    """project_gpu_hours for each training precision, from the parts' measured rates (which S and rates used)."""
    needed = ("train_step", "evaluate", "inversion")
    missing = [p for p in needed if parts.get(p, {}).get("status") != "ok"]
    gcg_parts = [parts[p] for p in ("gcg", "gcg_compiled") if parts.get(p, {}).get("status") == "ok"]
    if not gcg_parts:
        missing.append("gcg or gcg_compiled")
    if missing:
        raise ValueError(f"no projection: the part(s) {', '.join(missing)} did not finish")
    gcg_s, gcg_rate, gcg_compiled = max(
        ((*_at_samples(p["rows"], config["gcg"]["batch_samples"], "sample_steps_per_second"), p["compile"])
         for p in gcg_parts),
        key=lambda measured: measured[1],
    )
    inv_s, inv_rate = _at_samples(parts["inversion"]["rows"], config["invert"]["batch_samples"],
                                  "samples_per_second")
    rates = {"gcg_samples": gcg_s, "gcg_sample_steps_per_second": gcg_rate, "gcg_compiled": gcg_compiled,
             "inversion_samples": inv_s,
             "inversion_samples_per_second": inv_rate,
             "evaluation_windows_per_second": parts["evaluate"]["windows_per_second"]}
    out = {"rates": rates, "train_windows": train_windows, "test_windows": test_windows, "by_precision": {}}
    for label, rows in parts["train_step"]["precisions"].items():
        train_rates = {r["variant"]: r["tokens_per_second"] for r in rows}
        out["rates"][f"train_tokens_per_second_{label}"] = train_rates
        out["by_precision"][label] = project_gpu_hours(
            config, train_windows, test_windows, train_rates, gcg_rate, inv_rate,
            parts["evaluate"]["windows_per_second"])
    return out


def _fmt(value: Optional[float], spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def _rate_rows(rows: Sequence[Mapping], key: str, naive: float, spec: str) -> list[str]:
    """Markdown rows `| S | rate | naive rate | speed-up |` of a batched-vs-naive part (GCG, inversion)."""
    return [f"| {r['samples']} | {format(r[key], spec)} | {format(naive, spec)} | {r['speedup']:.1f}x |" for r in rows]


def summary_markdown(result: Mapping) -> str:
    """The suite's results as markdown: the environment, one table per part, the projection, what failed."""
    env, parts = result["environment"], result["parts"]
    lines = [f"# GPU suite: {env['device_name']}", "",
             f"{env['date']} | torch {env['torch']} | transformers {env['transformers']} | commit "
             f"{env['git_commit'] or 'unknown'} | mode {result['mode']}", "",
             "| part | status | seconds | budget s |", "|---|---|---:|---:|"]
    for name in PARTS:
        p = parts.get(name, {"status": "not run"})
        lines.append(f"| {name} | {p['status']} | {_fmt(p.get('seconds'))} | {_fmt(p.get('budget_s'), '.0f')} |")
    failed = [f"- {n}: {p['error']}" for n, p in parts.items() if p.get("error")]
    if failed:
        lines += ["", "Failed or overran:", *failed]
    p = parts.get("train_step", {})
    if p.get("status") == "ok":
        lines += ["", f"## Training step (objective + backward), micro-batch {p['micro_batch']} x {p['seq_len']}", "",
                  "| precision | variant | tokens/s | ratio to base | ms/step | peak GiB |",
                  "|---|---|---:|---:|---:|---:|"]
        for label, rows in p["precisions"].items():
            for r in rows:
                lines.append(f"| {label} | {r['variant']} | {r['tokens_per_second']:,.0f} | {r['ratio_to_base']:.3f} "
                             f"| {1000 * r['seconds_per_step']:.1f} | {_fmt(r['peak_memory_gib'], '.2f')} |")
        for other, rows in p.get("other_attention", {}).items():
            lines += ["", f"{other} attention instead of {p['attention']} (train.attention), fp32: "
                      + ", ".join(f"{r['variant']} {r['tokens_per_second']:,.0f} tokens/s "
                                  f"({r['ratio_to_configured']:.2f}x)" for r in rows)]
    for name in ("gcg", "gcg_compiled"):
        p = parts.get(name, {})
        if p.get("status") != "ok":
            continue
        lines += ["", f"## GCG, width {p['width']}, top-k {p['top_k']}, {p['steps']} steps, {p['precision']}, "
                  f"{'compiled' if p['compile'] else 'not compiled'}", "",
                  "| S | ilm.gcg.run sample-steps/s | naive sample-steps/s | speed-up |", "|---:|---:|---:|---:|"]
        lines += _rate_rows(p["rows"], "sample_steps_per_second", p["naive_sample_steps_per_second"], ",.1f")
        if "host_sync_free" in p:
            lines += ["", f"A step with no host synchronisation: {p['host_sync_free']}"]
    p = parts.get("evaluate", {})
    if p.get("status") == "ok":
        passes = ", ".join(f"{k} {v:.2f} s" for k, v in p["pass_seconds"].items())
        lines += ["", "## Evaluation (forward + three inverse passes)", "",
                  f"{p['windows_per_second']:,.1f} windows/s over {p['windows']} windows of {p['seq_len']} "
                  f"(batch {p['batch']}; {passes})"]
    p = parts.get("inversion", {})
    if p.get("status") == "ok":
        lines += ["", f"## Inversion ({p['method']}, prefix {p['prefix_length']}, suffix {p['suffix_length']}, "
                  f"beam {p['beam']}, top-k {p['top_k']}; same beams as the naive search: checked)", "",
                  "| S | batched samples/s | naive samples/s | speed-up |", "|---:|---:|---:|---:|"]
        lines += _rate_rows(p["rows"], "samples_per_second", p["naive_samples_per_second"], ",.2f")
    p = parts.get("training_run", {})
    if p.get("status") == "ok":
        lines += ["", f"## Short training run ({p['train_windows']} generated windows of {p['window']}, batch "
                  f"{p['batch']}, {p['epochs']} epochs; curves in training_curves.csv/.png)", "",
                  "| variant | steps | loss first -> last | val loss first -> last | inverse CE first -> last | tokens/s |",
                  "|---|---:|---|---|---|---:|"]
        for v, r in p["variants"].items():
            lines.append(f"| {v} | {r['steps']} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} | "
                         f"{_fmt(r['first_val_loss'], '.3f')} -> {_fmt(r['last_val_loss'], '.3f')} | "
                         f"{_fmt(r['first_inv_ce'], '.3f')} -> {_fmt(r['last_inv_ce'], '.3f')} | "
                         f"{r['tokens_per_second']:,.0f} |")
    proj = result.get("projection", {})
    if "by_precision" in proj:
        rates = proj["rates"]
        lines += ["", f"## Projected paper-scale GPU-hours on this device ({proj['train_windows']:,} train and "
                  f"{proj['test_windows']:,} test windows; GCG at S={rates['gcg_samples']}"
                  f"{', compiled' if rates.get('gcg_compiled') else ''}, inversion at "
                  f"S={rates['inversion_samples']})", "",
                  "| training precision | train (all variants) | GCG | inversion | evaluate | total |",
                  "|---|---:|---:|---:|---:|---:|"]
        for label, pr in proj["by_precision"].items():
            st = pr["stages"]
            lines.append(f"| {label} | {st['train']:,.1f} | {st['gcg']:,.1f} | {st['inversion']:,.1f} | "
                         f"{st['evaluate']:,.1f} | {pr['total']:,.1f} |")
    elif proj.get("error"):
        lines += ["", f"Projection: {proj['error']}"]
    return "\n".join(lines) + "\n"


# --- the command ------------------------------------------------------------------------------------------------


def environment(device: torch.device, commit: Optional[str]) -> dict:
    meta = provenance()
    return {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)",
        "device": str(device),
        "torch": torch.__version__,
        "transformers": meta["transformers"],
        "cuda": torch.version.cuda,
        "gpu_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda"
        else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit or meta["git_commit"],
        "python": meta["python"],
    }


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, required=True, help="suite.json, suite.md and the training curves go here")
    p.add_argument("--config", type=Path, default=REPO / "config.yaml", help="the paper config (sizes, settings)")
    p.add_argument("--quick", action="store_true", help="every part at tiny sizes (a CPU, the tests)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=None,
                   help="default: all; with --quick all but gcg_compiled (compiling takes minutes on a CPU)")
    p.add_argument("--data-stats", type=Path, default=None,
                   help="a prepared paper split's stats.json: its train/test window counts for the projection "
                        f"(default: the estimates {PAPER_TRAIN_WINDOWS:,} / {PAPER_TEST_WINDOWS:,})")
    p.add_argument("--commit", default=None, help="the commit measured, where the tree has no .git (device machine)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of torch (default: 1 with --quick, which stays fast on a busy machine; else torch's)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def split_sizes(stats_path: Optional[Path]) -> tuple[int, int, str]:
    """(train windows, test windows, where they come from) for the projection."""
    if stats_path is None:
        return PAPER_TRAIN_WINDOWS, PAPER_TEST_WINDOWS, "method-spec §7.3 estimates"
    splits = json.loads(Path(stats_path).read_text())["splits"]
    return int(splits["train"]["windows"]), int(splits["test"]["windows"]), str(stats_path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    config = load_config_unchecked(args.config)
    device = resolve_device(args.device)
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    train_windows, test_windows, size_source = split_sizes(args.data_stats)
    suite = Suite(config, sizes, device, args.seed)
    result = {
        "mode": "quick" if args.quick else "full",
        "environment": environment(device, args.commit),
        "model_parameters": count_parameters(build_model(config["model"])),
        "variants": suite.variants,
        "sizes": sizes,
        "split_sizes_from": size_source,
        "parts": {},
    }

    def save() -> None:
        write_json(out_dir / "suite.json", result)
        write_text(out_dir / "suite.md", summary_markdown(result))

    started = time.perf_counter()
    runners: dict[str, Callable[[], dict]] = {
        "train_step": suite.train_step, "gcg": suite.gcg, "evaluate": suite.evaluate,
        "inversion": suite.inversion, "training_run": lambda: suite.training_run(out_dir),
        "gcg_compiled": lambda: suite.gcg(compile=True),
    }
    parts = args.parts or [p for p in PARTS if not (args.quick and p == "gcg_compiled")]
    for name in parts:
        left = sizes["time_limit_s"] - (time.perf_counter() - started)
        budget = min(sizes["budget_s"][name], left)
        result["parts"][name] = run_part(name, runners[name], budget, device)
        save()
    try:
        result["projection"] = projections(config, result["parts"], train_windows, test_windows)
    except ValueError as e:
        result["projection"] = {"error": str(e)}
    result["seconds"] = time.perf_counter() - started
    save()
    print(summary_markdown(result))
    return 0


def run_part(name: str, fn: Callable[[], dict], budget: float, device: torch.device) -> dict:
    """Run one part under its budget; a failure or overrun is recorded (with its error), never lost."""
    log.info("part %s: budget %.0f s", name, budget)
    start = time.perf_counter()
    if budget <= 0:
        return {"status": "skipped", "error": "the suite's time limit was reached before it", "budget_s": budget}
    try:
        with time_budget(budget):
            entry = {"status": "ok", **fn()}
    except PartOverrun as e:
        entry = {"status": "overran", "error": str(e)}
    except Exception as e:  # noqa: BLE001 - the guard's job: one part's failure must not lose the others
        log.error("part %s failed:\n%s", name, traceback.format_exc())
        entry = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    entry.update(seconds=time.perf_counter() - start, budget_s=budget)
    log.info("part %s: %s in %.1f s", name, entry["status"], entry["seconds"])
    return entry


if __name__ == "__main__":
    sys.exit(main())
