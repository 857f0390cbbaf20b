"""The Hugging Face model card (README.md) of a trained model folder, built with `huggingface_hub.ModelCard`.

Its metadata says what the Hub and `huggingface_hub` read: license, datasets (data.source when it
is a Hub dataset), language, metrics, and the selected step's validation cross-entropy and
perplexity as eval results (model-index). The body says what the model is, how it was trained,
how to load it, and its limitations. Test-split metrics come later, from `ilm evaluate`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ilm.download import is_hub_id
from ilm.names import parse_variant, variant_name

LICENSE = "mit"  # the project's license (pyproject.toml), for its code and the weights it trains
# What the workflow measures on each model (results/metrics/<variant>/): forward CE and perplexity,
# next-token and inverse top-k accuracy, and the GCG attack success rate.
METRICS = ["perplexity", "accuracy"]
TAGS = ["inverse-language-modeling", "ilm", "llama", "tinystories", "adversarial-robustness"]


class TrainingProgress(Protocol):
    """What the card reads of the training loop's progress (ilm.train.Progress)."""

    best_step: Optional[int]
    best_val_loss: Optional[float]
    log_rows: Sequence[Mapping[str, Any]]


def _inverse_objective(variant: str, objective: Mapping) -> str:
    protocol, gradient_only = parse_variant(variant)
    if protocol is None:
        return "none (forward next-token CE only)"
    return (
        f"{variant_name(protocol)} protocol, projecting {'g' if gradient_only else 'x - g'}; "
        f"lambda_ce {objective['lambda_ce']}, lambda_inv {objective['lambda_inv']}, "
        f"g = d(sum CE)/dx / {objective['grad_scale_tokens']}"
    )


def _eval_results(source: str, revision: Optional[str], val_ce: Optional[float]) -> list[EvalResult]:
    """The selected step's validation CE (nats per token) and its perplexity, on the run's validation split."""
    if val_ce is None:
        return []
    where = dict(task_type="text-generation", dataset_type=source, dataset_name=source, dataset_split="validation",
                 dataset_revision=revision or None)
    return [
        EvalResult(**where, metric_type="cross_entropy", metric_name="Validation CE (nats/token)",
                   metric_value=round(float(val_ce), 4)),
        EvalResult(**where, metric_type="perplexity", metric_name="Validation perplexity",
                   metric_value=round(math.exp(float(val_ce)), 3)),
    ]


def card_data(run_config: Mapping, progress: TrainingProgress) -> ModelCardData:
    """The card's metadata (the YAML header) for one trained variant."""
    cfg, variant = run_config["config"], run_config["variant"]
    source = str(cfg["data"]["source"])
    best = next((r for r in progress.log_rows if r["step"] == progress.best_step), {})
    name = f"ILM {variant_name(variant)}"
    return ModelCardData(
        model_name=name,
        license=LICENSE,
        language="en",
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS,
        datasets=[source] if is_hub_id(source) else None,
        metrics=METRICS,
        eval_results=_eval_results(source, cfg["data"].get("revision"), best.get("val_ce")) or None,
    )


def _limitations(cfg: Mapping, steps: int) -> str:
    source = str(cfg["data"]["source"])
    data = "synthetic stories generated offline (`generated`)" if source == "generated" else f"`{source}`"
    return f"""## Limitations

- A research artefact: a small Llama trained from scratch to reproduce one paper's experiments, not a
  general-purpose or instruction-following model. It writes simple English stories like its training data,
  {data}, and nothing else well; it is not meant for any application.
- Context of {cfg['data']['window']} tokens, and a {cfg['data']['vocab_size']}-token BPE vocabulary trained on
  that data: other domains and languages tokenize poorly.
- Trained for {steps} optimizer steps under this run's configuration. The demo and test presets train tiny
  models for a few steps: their text and metrics show that the workflow runs, not what the method does.
- Robustness and grounding claims rest on this workflow's own evaluation (GCG prefix attacks, inversion of
  test prefixes; results/metrics/), on the test split of the same data. No safety evaluation was done; the
  model may produce incoherent, repetitive or biased text inherited from its training data.
- The license above covers the weights and code; the training data keeps its own license.
"""


def build_model_card(run_config: Mapping, progress: TrainingProgress, out_dir: Path) -> ModelCard:
    """The model card of the model trained into `out_dir`: metadata (card_data), a summary table, how to
    load it, and its limitations. `run_config` is what run_config.json holds."""
    cfg, variant = run_config["config"], run_config["variant"]
    best = next((r for r in progress.log_rows if r["step"] == progress.best_step), {})
    config_hash = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
    inputs = run_config.get("inputs_sha256", {})
    rows = [
        ("Variant", f"{variant_name(variant)} (`{variant}`)"),
        ("Inverse objective", _inverse_objective(variant, cfg["objective"])),
        ("Parameters", f"{run_config['parameters']:,}"),
        ("Data", f"`{cfg['data']['source']}`, windows of {cfg['data']['window']} tokens, split by "
                 f"{cfg['data']['split_unit']}; train.npy sha256 {inputs.get('train.npy', '?')[:12]}"),
        ("Training", f"{run_config['steps']} steps ({run_config['epochs_completed']} epochs) of "
                     f"{run_config['batch_size']} windows, lr {cfg['train']['lr']}, seed {cfg['train']['seed']}"),
        ("Selected", f"step {progress.best_step}: validation loss {progress.best_val_loss:.4f}"
                     + (f", validation CE {best['val_ce']:.4f}" if best.get("val_ce") is not None else "")),
        ("Config hash", f"sha256 {config_hash[:16]} (of the `config` in run_config.json)"),
        ("Code", f"ilm {run_config['ilm_version']}, commit {run_config.get('git_commit') or 'unknown'}"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    body = f"""# ILM {variant_name(variant)}

A small Llama trained from scratch by the reference reproduction of *Inverse Language Modeling towards
Robust and Grounded LLMs* (arXiv 2510.01929). Test metrics (forward cross-entropy and perplexity, next-token
and inverse top-k accuracy, GCG attack success) are in `results/metrics/{variant}/`.

| | |
|---|---|
{table}

```python
from transformers import pipeline

generate = pipeline("text-generation", model="{out_dir}")
print(generate("Once upon a time", max_new_tokens=20, do_sample=False)[0]["generated_text"])
```

{_limitations(cfg, int(run_config['steps']))}"""
    return ModelCard(f"---\n{card_data(run_config, progress).to_yaml()}\n---\n\n{body}")
