"""Grounding: bigram counts, the batched inversion search, the baseline, shards and token-id metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import reference
from ilm.shards import partial_path
from ilm.cli import main
from ilm.invert import (
    BIGRAM,
    RESULT_KEYS,
    bigram_counts,
    bigram_proposer,
    first_position_gradient,
    gradient_proposer,
    placeholder_fn,
    repeat_count,
    search,
    token_metrics,
)
from ilm.names import BOS_ID, PAD_ID
from ilm.objectives import ObjectiveConfig, embed, forward_ce, project_to_vocab
from tiny import VOCAB, save_tiny_model, tiny_config, tiny_model, write_splits

INVERT = {"skip_tokens": 2, "prefix_length": 4, "suffix_length": 6, "beam": 3, "top_k": 4, "count": 5,
          "shards": 2, "batch_samples": 2, "device": "cpu"}


def config(**invert) -> dict:
    return tiny_config(invert={**INVERT, **invert})


def test_bigram_counts_equal_a_plain_loop():
    """C[next, prev] from bincount equals counting adjacent pairs one by one."""
    rng = np.random.default_rng(3)
    windows = rng.integers(0, 11, (7, 9)).astype(np.uint16)
    expected = np.zeros((11, 11), dtype=np.int64)
    for row in windows:
        for prev, nxt in zip(row[:-1], row[1:]):
            expected[nxt, prev] += 1
    np.testing.assert_array_equal(bigram_counts(windows, 11), expected)
    with pytest.raises(ValueError, match="model.vocab_size"):
        bigram_counts(windows, 5)


def test_repeat_count_and_token_metrics_by_hand():
    """Repeats = sum over types of (count - 1); set P/R/F1, exact and positional accuracy on a hand case."""
    assert repeat_count(torch.tensor([[1, 2, 1, 1], [1, 2, 3, 4], [5, 5, 6, 6]])).tolist() == [2, 0, 2]
    m = token_metrics([1, 2, 3, 4], [1, 3, 3, 9])
    # sets {1,2,3,4} vs {1,3,9}: common 2, precision 2/3, recall 2/4
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["positional_accuracy"] == pytest.approx(0.5)  # positions 0 and 2
    assert m["exact_match"] == 0.0 and m["repeated_tokens"] == 1
    assert token_metrics([1, 2], [1, 2])["exact_match"] == 1.0
    assert token_metrics([1, 2], [3, 4])["f1"] == 0.0


def _naive_ppl(model, ids: list[int]) -> float:
    t = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=t).logits[0, :-1]
    logp = torch.log_softmax(logits.double(), dim=-1)
    nll = [-float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    return float(np.exp(np.mean(nll)))


def _naive_search(model, suffix: list[int], steps: int, beam: int, candidates) -> tuple[list[list[int]], list[float]]:
    """One sample, one beam and one candidate at a time (method-spec §5.1)."""
    beams, scores = [list(suffix)], [0.0]
    for step in range(steps):
        scored = []
        for seq in beams:
            for tok in candidates(seq):
                cand = [tok] + seq
                generated = cand[: step + 1]
                repeats = len(generated) - len(set(generated))
                scored.append((_naive_ppl(model, cand) + repeats, cand))
        scored.sort(key=lambda pair: pair[0])  # stable: ties keep candidate order
        beams, scores = [c for _, c in scored[:beam]], [s for s, _ in scored[:beam]]
    return [b[:steps] for b in beams], scores


def _naive_gradient_candidates(model, placeholder: int, gradient_only: bool, grad_scale: str, k: int):
    def candidates(seq: list[int]) -> list[int]:
        ids = torch.tensor([[placeholder] + seq])
        x = embed(model, ids).detach().requires_grad_(True)
        ce = forward_ce(model, x, ids[:, 1:], reduction="sum")
        (grad,) = torch.autograd.grad(ce, x)
        g = grad[0, 0] / (len(seq) + 1 if grad_scale == "paper" else 65536.0)
        v = g if gradient_only else x[0, 0].detach() - g
        logits = project_to_vocab(model, v.unsqueeze(0))[0].detach()
        return torch.topk(logits, k).indices.tolist()

    return candidates


@pytest.mark.parametrize("method,grad_scale", [("inv_first", "paper"), ("inv_first", "training"),
                                               ("bert_like_grad", "paper"), (BIGRAM, "paper")])
def test_batched_search_equals_a_plain_one_sample_search(method, grad_scale):
    """All beams of all samples in one pass give the same beams and scores as a per-sample, per-candidate search."""
    model = tiny_model(seed=1, dtype=torch.float64)
    cfg = config(grad_scale=grad_scale)
    rng = np.random.default_rng(0)
    suffix = torch.from_numpy(rng.integers(6, VOCAB, (3, 6)))
    counts = torch.from_numpy(bigram_counts(rng.integers(0, VOCAB, (40, 16)), VOCAB))
    result = search(method, model, counts, suffix, cfg)
    assert result.prefixes.shape == (3, 3, 4)
    for i in range(3):
        if method == BIGRAM:
            def cands(seq):
                row = counts[seq[0]].tolist()
                return sorted(range(VOCAB), key=lambda t: -row[t])[:4]  # stable: lower id first on ties
        else:
            placeholder = BOS_ID if method == "inv_first" else PAD_ID
            cands = _naive_gradient_candidates(model, placeholder, method.endswith("_grad"), grad_scale, 4)
        beams, scores = _naive_search(model, suffix[i].tolist(), 4, 3, cands)
        assert result.prefixes[i].tolist() == beams
        np.testing.assert_allclose(result.scores[i].numpy(), scores, rtol=1e-9)


@pytest.mark.parametrize("last_target", ["ignore", "unk"])
@pytest.mark.parametrize("grad_scale", ["paper", "training"])
def test_first_position_gradient_matches_a_one_sequence_autograd(grad_scale, last_target):
    """g at the placeholder of each of 3 sequences in one pass equals plain autograd on that sequence alone:
    d(summed NLL)/dx / 65536 (training) or / its L+1 positions (paper); with the paper's <unk> last target,
    paper is exactly the gradient of the sequence's mean CE, the official code's g at batch 1. (HF runs its
    norms and softmax in float32: relative tolerance 1e-5, far below the 1/(L+1) step between divisors.)"""
    model = tiny_model(seed=4, dtype=torch.float64)
    objective = ObjectiveConfig.from_dict({"last_target": last_target})
    ids = torch.from_numpy(np.random.default_rng(5).integers(0, VOCAB, (3, 9)))  # (M, L+1), L = 8
    x0, g = first_position_gradient(model, ids, grad_scale, objective)
    for row in range(3):
        x = model.model.embed_tokens.weight.detach()[ids[row]].clone()[None].requires_grad_(True)
        nll = reference.sequence_nll(model(inputs_embeds=x).logits[0], ids[row], last_unk=last_target == "unk")
        divisor = 9 if grad_scale == "paper" else 65536
        (expected,) = torch.autograd.grad(nll.sum() / divisor, x, retain_graph=True)
        torch.testing.assert_close(g[row], expected[0, 0], rtol=1e-5, atol=1e-9 / divisor)
        torch.testing.assert_close(x0[row], x[0, 0].detach())
        if grad_scale == "paper" and last_target == "unk":
            assert nll.numel() == 9  # the paper's B*(L+1) terms at B = 1
            (mean_g,) = torch.autograd.grad(nll.mean(), x)
            torch.testing.assert_close(g[row], mean_g[0, 0], rtol=1e-5, atol=1e-9 / divisor)


def test_paper_grad_scale_is_282_times_the_training_one_at_231_suffix_tokens():
    """paper / training = 65536 / (L+1) row by row: 65536 / 232 = 282.5 for a 231-token suffix and its placeholder."""
    model = tiny_model(seed=4, dtype=torch.float64, max_position_embeddings=256)
    ids = torch.from_numpy(np.random.default_rng(6).integers(6, VOCAB, (2, 232)))
    objective = ObjectiveConfig.from_dict({"last_target": "unk"})
    _, paper = first_position_gradient(model, ids, "paper", objective)
    _, training = first_position_gradient(model, ids, "training", objective)
    torch.testing.assert_close(paper, training * 65536 / 232, rtol=1e-12, atol=0)
    assert round(65536 / 232) == 282 and training.abs().max() > 0
    with pytest.raises(ValueError, match="invert.grad_scale"):
        first_position_gradient(model, ids, "mean", objective)


def test_bigram_baseline_beams_are_distinct_and_placeholder_is_reverse_bigram():
    """The baseline's beams differ from the first step; the bigram placeholder is the most frequent predecessor."""
    counts = torch.zeros(8, 8, dtype=torch.long)
    counts[5, 2], counts[5, 3], counts[5, 4] = 3, 7, 1
    assert bigram_proposer(counts, 3)(torch.tensor([[5, 1]])).tolist() == [[3, 2, 4]]
    assert placeholder_fn("identity", "auto", PAD_ID, counts)(torch.tensor([[5, 1]])).tolist() == [3]
    assert placeholder_fn("inv_first", "auto", PAD_ID, counts)(torch.tensor([[5, 1]])).tolist() == [BOS_ID]
    model = tiny_model(seed=2)
    rng = np.random.default_rng(1)
    big = torch.from_numpy(bigram_counts(rng.integers(0, VOCAB, (40, 16)), VOCAB))
    result = search(BIGRAM, model, big, torch.from_numpy(rng.integers(6, VOCAB, (2, 6))), config())
    for beams in result.prefixes.tolist():
        assert len({tuple(b) for b in beams}) == len(beams)
    assert gradient_proposer  # imported API


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("invert")
    write_splits(root / "data")
    save_tiny_model(root / "base", seed=0)
    save_tiny_model(root / "inv_first", seed=1)
    (root / "cfg.json").write_text(json.dumps(config()))
    assert main(["bigram-counts", "--data-dir", str(root / "data"), "--out", str(root / "bigram.npy"),
                 "--config", str(root / "cfg.json")]) == 0
    assert main(["invert-samples", "--data-dir", str(root / "data"), "--out", str(root / "samples.json"),
                 "--config", str(root / "cfg.json")]) == 0
    return root


def _invert(root: Path, method: str, shard: int, out: Path) -> int:
    model = root / ("base" if method == BIGRAM else method)
    return main(["invert", "--method", method, "--model", str(model), "--data-dir", str(root / "data"),
                 "--bigram", str(root / "bigram.npy"), "--shard", str(shard), "--out", str(out),
                 "--config", str(root / "cfg.json")])


def test_shards_merge_into_per_sample_metrics(workdir, tmp_path):
    """Shards hold each planned sample once; the summary recomputes the metrics from the stored ids."""
    plan = json.loads((workdir / "samples.json").read_text())
    assert sorted(plan["samples"]) == sorted(plan["shards"][0] + plan["shards"][1]) and len(plan["samples"]) == 5
    outs = [tmp_path / f"shard{k}.jsonl" for k in range(2)]
    for k, out in enumerate(outs):
        assert _invert(workdir, "inv_first", k, out) == 0
        assert not partial_path(out).exists()
    rec = json.loads(outs[0].read_text().splitlines()[0])
    windows = np.load(workdir / "data" / "test.npy")
    assert rec["prefix_ids"] == windows[rec["sample"], 2:6].tolist()
    assert rec["suffix_ids"] == windows[rec["sample"], 6:12].tolist()
    csv = tmp_path / "inversion.csv"
    assert main(["invert-summary", "--method", "inv_first", "--shards", *map(str, outs), "--plan",
                 str(workdir / "samples.json"), "--model", str(workdir / "inv_first"), "--data-dir",
                 str(workdir / "data"), "--out", str(csv),
                 "--config", str(workdir / "cfg.json")]) == 0
    frame = pd.read_csv(csv)
    assert sorted(frame["sample"]) == sorted(plan["samples"])
    row = frame.iloc[0]
    expected = token_metrics([int(t) for t in row["prefix_ids"].split()], [int(t) for t in row["reconstruction_ids"].split()])
    assert row["f1"] == pytest.approx(expected["f1"])
    # a shard of another model is refused
    assert _invert(workdir, BIGRAM, 0, tmp_path / "b0.jsonl") == 0
    assert main(["invert-summary", "--method", "inv_first", "--shards", str(tmp_path / "b0.jsonl"), str(outs[1]),
                 "--plan", str(workdir / "samples.json"), "--model", str(workdir / "inv_first"), "--data-dir",
                 str(workdir / "data"), "--out", str(csv), "--config", str(workdir / "cfg.json")]) == 2


def test_killed_shard_resumes_without_redoing_samples(workdir, tmp_path, monkeypatch):
    """A partial file of this model and settings is resumed: its samples are not searched again."""
    import ilm.invert

    out = tmp_path / "shard0.jsonl"
    plan = json.loads((workdir / "samples.json").read_text())
    first = plan["shards"][0][0]
    assert _invert(workdir, "inv_first", 0, out) == 0
    lines = out.read_text().splitlines()
    out.rename(partial_path(out))
    partial_path(out).write_text(lines[0] + "\n" + lines[1][:10])  # one whole record and a cut one
    seen = []
    real = ilm.invert.search

    def recording(method, model, counts, suffix, cfg):
        seen.append(suffix.shape[0])
        return real(method, model, counts, suffix, cfg)

    monkeypatch.setattr(ilm.invert, "search", recording)
    assert _invert(workdir, "inv_first", 0, out) == 0
    assert sum(seen) == len(plan["shards"][0]) - 1
    assert [json.loads(line)["sample"] for line in out.read_text().splitlines()][0] == first
    assert out.read_text().splitlines() == lines  # bitwise: records carry no timing


def test_a_partial_shard_of_the_other_grad_scale_is_not_resumed(workdir, tmp_path, monkeypatch):
    """invert.grad_scale is a result key (default paper): a partial file written with the training scale is
    started over under the paper's, every sample searched again."""
    import ilm.invert

    assert "grad_scale" in RESULT_KEYS and config()["invert"]["grad_scale"] == "paper"
    plan = json.loads((workdir / "samples.json").read_text())
    training = tmp_path / "training.json"
    training.write_text(json.dumps(config(grad_scale="training")))
    out = tmp_path / "shard0.jsonl"
    assert main(["invert", "--method", "inv_first", "--model", str(workdir / "inv_first"), "--data-dir",
                 str(workdir / "data"), "--bigram", str(workdir / "bigram.npy"), "--shard", "0", "--out", str(out),
                 "--config", str(training)]) == 0
    assert json.loads(out.with_name("shard0.meta.json").read_text())["settings"]["grad_scale"] == "training"
    out.rename(partial_path(out))
    seen = []
    real = ilm.invert.search

    def recording(method, model, counts, suffix, cfg):
        seen.append(suffix.shape[0])
        return real(method, model, counts, suffix, cfg)

    monkeypatch.setattr(ilm.invert, "search", recording)
    assert _invert(workdir, "inv_first", 0, out) == 0
    assert sum(seen) == len(plan["shards"][0])
    assert json.loads(out.with_name("shard0.meta.json").read_text())["settings"]["grad_scale"] == "paper"


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda r: r.update(prefix_ids=[r["prefix_ids"][0] + 1, *r["prefix_ids"][1:]]), "prefix_ids differ"),
        (lambda r: r.update(suffix_ids=r["suffix_ids"][::-1]), "suffix_ids differ"),
        (lambda r: r.update(method=BIGRAM), "method differ"),
    ],
    ids=["token_id", "suffix", "method"],
)
def test_summary_refuses_records_that_differ_from_their_source(workdir, tmp_path, capsys, tamper, message):
    """A record whose ids differ from its test window, or whose method is not the shard's, is refused in one line."""
    outs = [tmp_path / f"shard{k}.jsonl" for k in range(2)]
    for k, out in enumerate(outs):
        assert _invert(workdir, "inv_first", k, out) == 0
    lines = outs[0].read_text().splitlines()
    record = json.loads(lines[1])
    tamper(record)
    outs[0].write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    code = main(["invert-summary", "--method", "inv_first", "--shards", *map(str, outs), "--plan",
                 str(workdir / "samples.json"), "--model", str(workdir / "inv_first"), "--data-dir",
                 str(workdir / "data"), "--out", str(tmp_path / "inversion.csv"), "--config", str(workdir / "cfg.json")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "inversion.csv").exists()
    assert f"{outs[0]} record 2 (sample {record['sample']})" in err and message in err
