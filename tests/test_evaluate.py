"""Test-split evaluation: forward metrics against an independent computation, inverse protocols' accuracies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

import reference
from ilm.evaluate import evaluate
from ilm.model import build_model
from ilm.names import PROTOCOLS
from ilm.objectives import draw_mask_positions
from ilm.stats import bootstrap_interval
from tiny import VOCAB, WINDOW, tiny_config, tiny_model_config

N_TEST = 10
MODEL = tiny_model_config(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)


def eval_config(objective=None, **evaluate_overrides) -> dict:
    """The tiny config with a 32-wide model; evaluation in batches of 4 (an uneven last batch)."""
    return tiny_config(model=MODEL, objective=objective or {}, evaluate={"batch_size": 4, **evaluate_overrides})


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory) -> tuple[Path, Path]:
    """A random model dominated by its tied embedding (so it echoes tokens), and a test split of 10 windows."""
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = build_model(MODEL)
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


def run(tmp_path: Path, model_and_data, variant: str, objective=None, **evaluate_overrides) -> tuple[dict, dict]:
    model_dir, data_dir = model_and_data
    forward_out, inverse_out = tmp_path / variant / "forward.json", tmp_path / variant / "inverse.json"
    evaluate(model_dir, data_dir, variant, forward_out, inverse_out, eval_config(objective, **evaluate_overrides))
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
    # No statistics in this GPU job: the tables compute intervals from the per-window sums (eval_windows.csv).
    assert "ce_low" not in forward and "statistics" not in forward["meta"]["config"]
    assert forward["meta"]["variant"] == "base" and "git_commit" in forward["meta"]
    assert set(forward["meta"]["inputs_sha256"]) == {"model", "test.npy"}


@pytest.mark.parametrize("variant", ["identity", "inv_first_grad"])
@pytest.mark.parametrize("with_g", [True, False])
def test_inverse_metrics_match_an_independent_computation(tmp_path, model_and_data, variant, with_g):
    """inverse.json's CE, top-k and row count per protocol, with g and without (`without_g`: v = x, or
    0 for `*_grad`), equal a per-sequence, hand-normed reference; so does the top-1 accuracy by position.

    g is scaled by 1 (not 1/65536) so the gradient-only logits are not all near-ties that
    float32 rounding could reorder. Rows of equal logits (g = 0 exactly at the last position, and
    every row of `*_grad` without g) count as wrong: ties count against the target.
    """
    objective = {"grad_scale_tokens": 1.0}
    _, inverse = run(tmp_path, model_and_data, variant, objective)
    model_dir, data_dir = model_and_data
    model = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    ids = torch.from_numpy(np.load(data_dir / "test.npy").astype(np.int64))  # (N, T)
    cfg = eval_config(objective)
    scale, fraction = cfg["objective"]["grad_scale_tokens"], cfg["objective"]["mask_fraction"]
    gradient_only = variant.endswith("_grad")
    generator = torch.Generator().manual_seed(cfg["evaluate"]["seed"])
    for protocol in PROTOCOLS:
        logits, targets, where = [], [], []
        for start in range(0, N_TEST, 4):  # the masks are drawn batch by batch, as evaluate draws them
            batch = ids[start : start + 4]
            positions = draw_mask_positions(*batch.shape, fraction, generator) if protocol == "bert_like" else None
            batch_logits, batch_targets = reference.inverse_rows(
                model, batch, protocol, gradient_only, scale, positions, with_g=with_g
            )
            logits.append(batch_logits.detach())
            targets.append(batch_targets)
            at = {"identity": torch.arange(WINDOW).repeat(len(batch)), "inv_first": torch.zeros(len(batch))}
            where.append(positions.reshape(-1) if protocol == "bert_like" else at[protocol])
        logits, targets, where = torch.cat(logits).double(), torch.cat(targets), torch.cat(where).long()
        m = inverse[protocol] if with_g else inverse[protocol]["without_g"]
        assert inverse[protocol]["rows"] == len(targets)
        assert m["ce"] == pytest.approx(float(reference.cross_entropy(logits, targets)), rel=1e-4)
        for k in (1, 3, 5):
            assert m[f"top{k}"] == pytest.approx(reference.topk_hits(logits, targets, k) / len(targets), abs=1e-12)
        if gradient_only and not with_g:
            assert m["top5"] == 0.0 and m["ce"] == pytest.approx(math.log(VOCAB), rel=1e-6)  # v = 0: no information
        if with_g:
            by_position = inverse[protocol]["by_position"]
            for t in range(WINDOW):
                here = where == t
                assert by_position["rows"][t] == int(here.sum())
                expected = reference.topk_hits(logits[here], targets[here], 1) / int(here.sum()) if here.any() else None
                assert by_position["top1"][t] == (pytest.approx(expected, abs=1e-12) if expected is not None else None)


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


def test_per_window_values_add_up_to_the_json_and_a_direct_forward(tmp_path, model_and_data):
    """eval_windows.csv: per-window forward CE sums equal a direct HF forward; per protocol, the window sums of
    rows, CE and top-1 hits with and without g add up to inverse.json's aggregates."""
    import pandas as pd

    model_dir, data_dir = model_and_data
    out = tmp_path / "w"
    evaluate(model_dir, data_dir, "identity", out / "f.json", out / "i.json", eval_config(), windows_out=out / "w.csv")
    forward, inverse = json.loads((out / "f.json").read_text()), json.loads((out / "i.json").read_text())
    table = pd.read_csv(out / "w.csv")
    assert list(table["window"]) == list(range(N_TEST)) and "per_window" not in forward
    model = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    ids = torch.from_numpy(np.load(data_dir / "test.npy").astype(np.int64))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)[:, :-1]
    direct = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).sum(1)  # (N,)
    assert table["forward_ce_sum"].to_numpy() == pytest.approx(direct.numpy(), rel=1e-5)
    assert (table["forward_rows"] == WINDOW - 1).all()
    for protocol in PROTOCOLS:
        rows = table[f"{protocol}_rows"].sum()
        assert rows == inverse[protocol]["rows"]
        assert table[f"{protocol}_ce_sum"].sum() / rows == pytest.approx(inverse[protocol]["ce"], rel=1e-9)
        assert table[f"{protocol}_top1"].sum() / rows == pytest.approx(inverse[protocol]["top1"], abs=1e-12)
        assert table[f"{protocol}_top1_without_g"].sum() / rows == pytest.approx(
            inverse[protocol]["without_g"]["top1"], abs=1e-12)


def test_unknown_variant_is_a_value_error(tmp_path, model_and_data):
    """A variant name outside the known list raises ValueError and writes nothing."""
    with pytest.raises(ValueError, match="unknown variant"):
        run(tmp_path, model_and_data, "bogus")
    assert not (tmp_path / "bogus").exists()
