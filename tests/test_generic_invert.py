"""Generic inverters (GCG and SODA-style relaxed) beside the beam search: budget, CE, start, determinism, shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import reference
from ilm.cli import main
from ilm.config import deep_merge, validate_config
from ilm.forward_budget import beam_search_forwards, generic_budget, steps_and_forwards
from ilm.gcg import GCGConfig
from ilm.gcg import run as gcg_run
from ilm.generic_invert import GenericConfig, invert, invert_relaxed, placeholder_prefix
from ilm.invert import bigram_counts, search
from ilm.names import BOS_ID, PAD_ID, parse_generic
from tiny import VOCAB, save_tiny_model, tiny_config, tiny_model, write_splits

INVERT = {"skip_tokens": 2, "prefix_length": 4, "suffix_length": 6, "beam": 3, "top_k": 4, "count": 5,
          "shards": 2, "batch_samples": 2, "device": "cpu",
          "generic": {"gcg_search_width": 8, "gcg_top_k": 8, "relaxed_restarts": 2}}


def config(**generic) -> dict:
    return tiny_config(invert=deep_merge(INVERT, {"generic": generic}))


def plain_suffix_ce(model, prefix: list[int], suffix: list[int]) -> float:
    """CE(Y | X') of one sequence: a plain forward of [X', Y], the logits at P-1 .. P+L-2 scored by hand."""
    ids = torch.tensor([prefix + suffix])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # (P+L, V)
    p = len(prefix)
    return float(reference.cross_entropy(logits[p - 1 : p - 1 + len(suffix)], torch.tensor(suffix)))


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    suffix = torch.from_numpy(rng.integers(6, VOCAB, (3, 6)))
    counts = torch.from_numpy(bigram_counts(rng.integers(6, VOCAB, (40, 16)), VOCAB))
    return suffix, counts


def test_beam_search_forwards_by_hand():
    """Step 0 has one beam, later steps min(beam, beams * top_k); a gradient costs 3, a candidate 1."""
    assert beam_search_forwards(20, 5, 5) == 8 + 19 * 40 == 768
    assert beam_search_forwards(4, 3, 4) == 7 + 3 * 21 == 70
    # beams grow 1 -> 2 -> 4 -> 5: (3 + 2) + (6 + 4) + (12 + 8) + (15 + 10)
    assert beam_search_forwards(4, 5, 2) == 5 + 10 + 20 + 25
    inv = {"prefix_length": 20, "beam": 5, "top_k": 5,
           "generic": {"budget_ratio": 1.0, "gcg_search_width": 16, "relaxed_restarts": 2}}
    assert generic_budget(inv) == 768
    assert steps_and_forwards("gcg", inv) == (768 // 19, 40 * 19) == (40, 760)
    assert steps_and_forwards("relaxed", inv) == (96, 768)
    inv["generic"]["budget_ratio"] = 0.5
    assert steps_and_forwards("gcg", inv) == (20, 380) and steps_and_forwards("relaxed", inv) == (48, 384)


def test_beam_search_forwards_count_the_search_itself(monkeypatch):
    """The formula equals the rows the beam search actually differentiates (3 each) and scores (1 each)."""
    import ilm.invert

    model = tiny_model(seed=1)
    suffix, counts = _data()
    cfg = config()
    spent = []
    real_grad, real_ppl = ilm.invert.first_position_gradient, ilm.invert.sequence_ppl
    monkeypatch.setattr(ilm.invert, "first_position_gradient",
                        lambda m, ids, *a: spent.append(3 * len(ids)) or real_grad(m, ids, *a))
    monkeypatch.setattr(ilm.invert, "sequence_ppl", lambda m, ids: spent.append(len(ids)) or real_ppl(m, ids))
    search("identity", model, counts, suffix, cfg)
    assert sum(spent) == len(suffix) * beam_search_forwards(4, 3, 4)


@pytest.mark.parametrize("variant, expected", [("inv_first", "bos"), ("bert_like", "pad"), ("identity", "bigram"),
                                               ("base", "bigram"), ("inv_first_grad", "bos")])
def test_gcg_inverter_starts_from_the_placeholder(variant, expected):
    """The start is the variant's placeholder repeated P times: <s>, the Bert-like one (pad), the reverse bigram."""
    suffix, counts = _data()
    init = placeholder_prefix(variant, suffix, counts, config())
    # C[next, prev]: the reverse bigram is the likeliest predecessor of the suffix's first token
    want = {"bos": [BOS_ID] * 3, "pad": [PAD_ID] * 3,
            "bigram": [int(counts[int(t)].argmax()) for t in suffix[:, 0]]}[expected]
    assert init.shape == (3, 4)
    assert init.tolist() == [[w] * 4 for w in want]


def test_gcg_run_starts_from_init_ids():
    """gcg.run with init_ids reports that start's CE as init_loss; without, the random start as before."""
    model = tiny_model(seed=1)
    suffix, _ = _data()
    cfg = GCGConfig.from_dict({"prefix_length": 4, "target_length": 6, "steps": 2, "search_width": 4, "top_k": 4,
                               "precision": "fp32", "allow_special_tokens": False})
    init = torch.full((3, 4), BOS_ID)
    results = gcg_run(model, init, suffix, cfg, [0, 1, 2], init_ids=init)
    for r, y in zip(results, suffix.tolist()):
        assert r.init_loss == pytest.approx(plain_suffix_ce(model, [BOS_ID] * 4, y), rel=1e-5)
    with pytest.raises(ValueError, match="init_ids must be shaped"):
        gcg_run(model, init, suffix, cfg, [0, 1, 2], init_ids=init[:, :3])


def test_gcg_inverter_best_ce_is_a_plain_recomputation():
    """The GCG inverter's score is CE(Y | X') of its prefix recomputed by a plain forward, and it spends
    exactly steps * (3 + width) forwards within the budget."""
    model = tiny_model(seed=1)
    suffix, counts = _data()
    cfg = config()
    result = invert("identity+gcg", model, counts, suffix, [3, 5, 7], cfg)
    assert result.prefixes.shape == (3, 1, 4)
    for i, y in enumerate(suffix.tolist()):
        assert float(result.scores[i, 0]) == pytest.approx(plain_suffix_ce(model, result.prefixes[i, 0].tolist(), y),
                                                           rel=1e-5)
        assert min(result.prefixes[i, 0].tolist()) >= 6  # special ids are never proposed by default
    budget = beam_search_forwards(4, 3, 4)  # 70
    assert result.forwards == (budget // 11) * 11 == 66 <= budget


def test_relaxed_inverter_best_ce_is_a_plain_recomputation_and_never_worse_than_its_first():
    """The relaxed inverter's best discrete CE equals a plain recomputation and is <= its first discrete prefix's."""
    model = tiny_model(seed=1)
    suffix, _ = _data()
    gen = GenericConfig.from_section(config()["invert"]["generic"])
    ids, best, first = invert_relaxed(model, suffix, [3, 5, 7], 4, 8, gen)
    for i, y in enumerate(suffix.tolist()):
        assert float(best[i]) == pytest.approx(plain_suffix_ce(model, ids[i].tolist(), y), rel=1e-5)
        assert min(ids[i].tolist()) >= 6
    assert torch.all(best <= first)
    assert torch.any(best < first)  # 8 Adam steps found something better on this model
    result = invert("identity+relaxed", model, torch.zeros(VOCAB, VOCAB), suffix, [3, 5, 7], config())
    assert result.forwards == (70 // 8) * 8 == 64


@pytest.mark.parametrize("method", ["identity+gcg", "identity+relaxed"])
def test_generic_inverters_are_deterministic_and_seeded(method):
    """The same seed gives bitwise the same prefixes and scores; another invert.generic.seed another search."""
    model = tiny_model(seed=1)
    suffix, counts = _data()
    a = invert(method, model, counts, suffix, [3, 5, 7], config())
    b = invert(method, model, counts, suffix, [3, 5, 7], config())
    assert torch.equal(a.prefixes, b.prefixes) and torch.equal(a.scores, b.scores)
    c = invert(method, model, counts, suffix, [3, 5, 7], config(seed=1))
    d = invert(method, model, counts, suffix, [4, 6, 8], config())
    assert not torch.equal(a.prefixes, c.prefixes) and not torch.equal(a.prefixes, d.prefixes)


@pytest.mark.parametrize("generic, message", [
    ({"budget_ratio": 0.01}, "invert.generic.budget_ratio"),
    ({"gcg_top_k": 200}, "invert.generic.gcg_top_k"),
    ({"inverters": ["gcg", "soda"]}, "invert.generic.inverters"),
    ({"relaxed_decay": 1.0}, "invert.generic.relaxed_decay"),
])
def test_config_errors_name_the_key(generic, message):
    """A budget too small for one step, a top-k beyond the vocabulary or an unknown inverter name the key."""
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        validate_config(deep_merge(config(), {"invert": {"generic": generic}}))


def test_method_names():
    """`<variant>+<inverter>` parses; an unknown inverter or variant is refused by name."""
    assert parse_generic("bert_like_grad+relaxed") == ("bert_like_grad", "relaxed")
    assert parse_generic("identity") is None
    with pytest.raises(ValueError, match="generic inverter 'soda'"):
        parse_generic("identity+soda")
    with pytest.raises(ValueError, match="unknown variant"):
        parse_generic("nope+gcg")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generic")
    write_splits(root / "data")
    save_tiny_model(root / "inv_first", seed=1)
    (root / "cfg.json").write_text(json.dumps(config()))
    for command, out in (("bigram-counts", "bigram.npy"), ("invert-samples", "samples.json")):
        assert main([command, "--data-dir", str(root / "data"), "--out", str(root / out),
                     "--config", str(root / "cfg.json")]) == 0
    return root


@pytest.mark.parametrize("inverter", ["gcg", "relaxed"])
def test_generic_shard_records_and_summary(workdir, tmp_path, inverter):
    """`ilm invert --method inv_first+<inverter>` writes the beam search's record fields plus `forwards`, and the
    summary merges the shards like any method's."""
    method = f"inv_first+{inverter}"
    outs = [tmp_path / f"shard{k}.jsonl" for k in range(2)]
    for k, out in enumerate(outs):
        assert main(["invert", "--method", method, "--model", str(workdir / "inv_first"), "--data-dir",
                     str(workdir / "data"), "--bigram", str(workdir / "bigram.npy"), "--shard", str(k),
                     "--out", str(out), "--config", str(workdir / "cfg.json")]) == 0
    records = [json.loads(line) for out in outs for line in out.read_text().splitlines()]
    expected_forwards = steps_and_forwards(inverter, config()["invert"])[1]
    for r in records:
        assert r["method"] == method and r["forwards"] == expected_forwards <= 70
        assert r["beam_ids"] == [r["reconstruction_ids"]] and len(r["beam_scores"]) == 1
    csv = tmp_path / "inversion.csv"
    assert main(["invert-summary", "--method", method, "--shards", *map(str, outs), "--plan",
                 str(workdir / "samples.json"), "--model", str(workdir / "inv_first"), "--data-dir",
                 str(workdir / "data"), "--out", str(csv), "--config", str(workdir / "cfg.json")]) == 0
    import pandas as pd

    frame = pd.read_csv(csv)
    # the search's score is the suffix CE the summary recomputes for the reconstruction
    np.testing.assert_allclose(frame["search_score"], frame["coherence_ce_reconstruction"], rtol=1e-5)
