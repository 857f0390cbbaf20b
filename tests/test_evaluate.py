"""Test-split evaluation: forward metrics against an independent computation, inverse protocols' accuracies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from ilm.config import deep_merge, validate_config
from ilm.evaluate import evaluate
from ilm.model import build_model
from ilm.objectives import PROTOCOLS

WINDOW, VOCAB, N_TEST = 16, 64, 10


def tiny_config(**evaluate_overrides) -> dict:
    """A validated config for a 1-layer, 32-wide model; evaluation in batches of 4 (an uneven last batch)."""
    base = {
        "data": {"vocab_size": VOCAB, "window": WINDOW, "stride": WINDOW},
        "model": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": VOCAB,
            "max_position_embeddings": WINDOW,
        },
        "evaluate": {"batch_size": 4, "device": "cpu", "seed": 0},
        "gcg": {"prefix_length": 4, "target_length": 4, "steps": 3, "iterations": [3]},
    }
    return validate_config(deep_merge(base, {"evaluate": evaluate_overrides}))


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory) -> tuple[Path, Path]:
    """A random model dominated by its tied embedding (so it echoes tokens), and a test split of 10 windows."""
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = build_model(tiny_config()["model"])
    with torch.no_grad():  # large embeddings swamp the random blocks: the tied head predicts the input token
        model.model.embed_tokens.weight.mul_(20)
    model.save_pretrained(root / "model")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    # Tokens in pairs (a a b b ...): a model that echoes its input is right on half the positions.
    pairs = rng.integers(6, VOCAB, (N_TEST, WINDOW // 2))
    np.save(data / "test.npy", np.repeat(pairs, 2, axis=1).astype(np.uint16))
    return root / "model", data


def run(tmp_path: Path, model_and_data, variant: str, **evaluate_overrides) -> tuple[dict, dict]:
    model_dir, data_dir = model_and_data
    forward_out, inverse_out = tmp_path / variant / "forward.json", tmp_path / variant / "inverse.json"
    evaluate(model_dir, data_dir, variant, forward_out, inverse_out, tiny_config(**evaluate_overrides))
    return json.loads(forward_out.read_text()), json.loads(inverse_out.read_text())


def test_forward_metrics_match_an_independent_computation(tmp_path, model_and_data):
    """forward.json's CE, perplexity, top-k and token count equal a direct HF forward + log-softmax + ranks."""
    forward, _ = run(tmp_path, model_and_data, "base")
    model_dir, data_dir = model_and_data
    model = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    ids = torch.from_numpy(np.load(data_dir / "test.npy").astype(np.int64))  # (N, T)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)[:, :-1]  # (N, T-1, V)
    targets = ids[:, 1:]  # (N, T-1)
    target_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N, T-1)
    rank = (logp > target_logp.unsqueeze(-1)).sum(-1)  # (N, T-1): tokens scored above the target

    assert forward["tokens"] == N_TEST * (WINDOW - 1)
    assert forward["ce"] == pytest.approx(float(-target_logp.mean()), rel=1e-5)
    assert forward["perplexity"] == pytest.approx(math.exp(forward["ce"]), rel=1e-9)
    for k in (1, 3, 5):
        assert forward[f"top{k}"] == pytest.approx(float((rank < k).double().mean()), abs=1e-12)
    assert 0 < forward["top1"] < forward["top5"] < 1, "the check needs non-trivial accuracies"
    assert forward["meta"]["variant"] == "base" and "git_commit" in forward["meta"]


@pytest.mark.parametrize("variant", ["base", "bert_like"])
def test_inverse_reports_every_protocol_with_monotone_topk(tmp_path, model_and_data, variant):
    """inverse.json has all three protocols, top-k in [0, 1] and non-decreasing in k, and the right row counts."""
    _, inverse = run(tmp_path, model_and_data, variant)
    assert set(inverse) == set(PROTOCOLS) | {"meta"}
    expected_rows = {"identity": N_TEST * WINDOW, "bert_like": N_TEST * 1, "inv_first": N_TEST}  # k=max(1, 0.1*16)
    for protocol in PROTOCOLS:
        m = inverse[protocol]
        assert m["rows"] == expected_rows[protocol]
        accuracies = [m["top1"], m["top3"], m["top5"]]
        assert all(0.0 <= a <= 1.0 for a in accuracies)
        assert accuracies == sorted(accuracies)
        assert math.isfinite(m["ce"]) and m["ce"] > 0


def test_inverse_is_deterministic_and_independent_of_batch_size(tmp_path, model_and_data):
    """evaluate.seed fixes Bert-like masks (repeatable, seed-dependent); identity/inv_first ignore batch size."""
    _, first = run(tmp_path / "a", model_and_data, "identity")
    _, again = run(tmp_path / "b", model_and_data, "identity")
    _, reseeded = run(tmp_path / "c", model_and_data, "identity", seed=1)
    _, one_batch = run(tmp_path / "d", model_and_data, "identity", batch_size=N_TEST)
    for protocol in PROTOCOLS:
        assert first[protocol] == again[protocol]
    assert reseeded["bert_like"]["ce"] != first["bert_like"]["ce"]
    assert reseeded["identity"] == first["identity"]
    for protocol in ("identity", "inv_first"):
        for key in ("top1", "top3", "top5", "rows"):
            assert one_batch[protocol][key] == first[protocol][key]
        assert one_batch[protocol]["ce"] == pytest.approx(first[protocol]["ce"], rel=1e-5)


def test_gradient_only_variant_projects_the_gradient_alone(tmp_path, model_and_data):
    """identity (x - g) recovers tokens through the tied head far better than identity_grad (g alone)."""
    _, with_x = run(tmp_path, model_and_data, "identity")
    _, grad_only = run(tmp_path, model_and_data, "identity_grad")
    assert with_x["identity"]["top1"] > 0.9
    assert grad_only["identity"]["top1"] < with_x["identity"]["top1"] - 0.3


def test_max_sequences_limits_the_evaluated_windows(tmp_path, model_and_data):
    """evaluate.max_sequences evaluates only the first N test windows."""
    forward, inverse = run(tmp_path, model_and_data, "base", max_sequences=3)
    assert forward["tokens"] == 3 * (WINDOW - 1)
    assert inverse["inv_first"]["rows"] == 3
    assert forward["meta"]["sequences"] == 3


def test_unknown_variant_is_a_value_error(tmp_path, model_and_data):
    """A variant name outside the known list raises ValueError and writes nothing."""
    with pytest.raises(ValueError, match="unknown variant"):
        run(tmp_path, model_and_data, "bogus")
    assert not (tmp_path / "bogus").exists()
