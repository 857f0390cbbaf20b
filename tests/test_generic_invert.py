"""Generic inverters (GCG and SODA-style relaxed) beside the beam search: budget, CE, start, determinism, shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import reference
from ilm.cli import main
from ilm.config import deep_merge, validate_config
from ilm.forward_budget import beam_search_forwards, generic_budget, steps_and_forwards
from ilm.gcg import GCGConfig
from ilm.gcg import run as gcg_run
from ilm.generic_invert import GenericConfig, invert, invert_relaxed, placeholder_prefix
from ilm.invert import bigram_counts, search, variant_placeholder
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
    init = placeholder_prefix(variant_placeholder(variant, counts, config()), suffix, 4)
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
    result = invert("identity+gcg", model, variant_placeholder("identity", counts, cfg), suffix, [3, 5, 7], cfg)
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
    result = invert("identity+relaxed", model, None, suffix, [3, 5, 7], config())
    assert result.forwards == (70 // 8) * 8 == 64


@pytest.mark.parametrize("method", ["identity+gcg", "identity+relaxed"])
def test_generic_inverters_are_deterministic_and_seeded(method):
    """The same seed gives bitwise the same prefixes and scores; another invert.generic.seed another search."""
    model = tiny_model(seed=1)
    suffix, counts = _data()
    place = variant_placeholder("identity", counts, config())
    a = invert(method, model, place, suffix, [3, 5, 7], config())
    b = invert(method, model, place, suffix, [3, 5, 7], config())
    assert torch.equal(a.prefixes, b.prefixes) and torch.equal(a.scores, b.scores)
    c = invert(method, model, place, suffix, [3, 5, 7], config(seed=1))
    d = invert(method, model, place, suffix, [4, 6, 8], config())
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

    frame = pd.read_csv(csv)
    # the search's score is the suffix CE the summary recomputes for the reconstruction
    np.testing.assert_allclose(frame["search_score"], frame["coherence_ce_reconstruction"], rtol=1e-5)


def _write_method(root: Path, method: str, f1, similarity) -> list[Path]:
    d = root / method
    d.mkdir()
    samples = list(range(len(f1)))
    pd.DataFrame({"method": method, "sample": samples, "f1": f1}).to_csv(d / "inversion.csv", index=False)
    pd.DataFrame({"sample": samples, "similarity_prefix": similarity, "similarity_full": 0.5,
                  "judge_ppl_prefix_reconstruction": 1.0, "judge_ppl_prefix_original": 1.0,
                  "judge_ppl_full_reconstruction": 1.0, "judge_ppl_full_original": 1.0}).to_csv(
        d / "inversion_judged.csv", index=False)
    return [d / "inversion.csv", d / "inversion_judged.csv"]


def test_comparison_table_against_a_plain_bootstrap_loop(tmp_path):
    """Paired difference beam - generic, its story-bootstrap interval recomputed by a plain loop over the same
    resampled stories, and the verdict strings; the caption states the forward budget."""
    from ilm.tables import inversion_vs_generic as table

    stories = np.array([0, 0, 1, 1, 2, 2, 9, 9])  # samples 0-5 come from stories 0, 1, 2
    np.save(tmp_path / "test_stories.npy", stories)
    rng = np.random.default_rng(1)
    beam = rng.uniform(0.4, 0.6, 6)
    paths = _write_method(tmp_path, "identity", beam, beam)
    paths += _write_method(tmp_path, "identity+gcg", beam - [0.1, 0.2, 0.15, 0.3, 0.1, 0.12], beam - 0.05)
    paths += _write_method(tmp_path, "identity+relaxed", beam + [0.1, 0.2, 0.15, 0.3, 0.1, 0.12],
                           beam + [0.2, -0.3, 0.1, -0.1, 0.05, -0.05])
    cfg = validate_config({"statistics": {"bootstrap_resamples": 200, "seed": 3}})
    table.write([*paths, tmp_path / "test_stories.npy"], tmp_path / "inversion_vs_generic", cfg)
    out = pd.read_csv(tmp_path / "inversion_vs_generic.csv")
    assert list(out["Inverter"]) == ["GCG inverter"] * 2 + ["Relaxed inverter"] * 2
    assert list(out["Verdict"]) == ["beam search better", "beam search better", "generic better", "no difference shown"]
    frames = {m: pd.read_csv(tmp_path / m / "inversion.csv").merge(pd.read_csv(tmp_path / m / "inversion_judged.csv"))
              for m in ("identity", "identity+gcg", "identity+relaxed")}
    for row in out.itertuples():
        method = "identity+gcg" if row.Inverter == "GCG inverter" else "identity+relaxed"
        column = "f1" if row.Metric == "Token F1" else "similarity_prefix"
        diffs = frames["identity"][column].to_numpy() - frames[method][column].to_numpy()
        assert row.Difference == pytest.approx(diffs.mean()) and row.Samples == 6 and row.Stories == 3
        # the plain loop: draw 3 stories with replacement, mean of the differences of their windows
        draws = np.random.default_rng(3).integers(0, 3, size=(200, 3))
        stats = []
        for pick in draws:
            rows = [i for story in pick for i in range(6) if stories[i] == story]
            stats.append(sum(diffs[i] for i in rows) / len(rows))
        stats = np.sort(stats)
        assert (row.Low, row.High) == pytest.approx((stats[4], stats[194]))  # ceil(200 x 0.025) = 5th, 195th
    assert table.verdict(0.01, 0.2) == "beam search better" and table.verdict(-0.2, -0.01) == "generic better"
    assert table.verdict(-0.1, 0.1) == table.verdict(0.0, 0.1) == "no difference shown"
    md = (tmp_path / "inversion_vs_generic.md").read_text()
    assert "the beam search spends 768" in md and "each generic inverter gets 768 (1 x that)" in md
    assert "GCG 40 steps of 3 + 16 (760)" in md and "relaxed 96 steps of 4 x 2 restarts (768)" in md
    frames_bad = _write_method(tmp_path, "bert_like", beam, beam) + _write_method(tmp_path, "bert_like+gcg",
                                                                                     beam[:5], beam[:5])
    with pytest.raises(ValueError, match="inverted different test windows"):
        table.write([*frames_bad, tmp_path / "test_stories.npy"], tmp_path / "bad", cfg)


def test_inversion_table_orders_and_names_the_generic_rows():
    """Beam searches in the paper's order, the bigram, then each variant's generic rows (GCG, then relaxed)."""
    from ilm.tables.inversion import method_name, order_methods

    methods = ["inv_first+relaxed", "bigram", "identity+relaxed", "inv_first", "identity", "identity+gcg", "base"]
    assert order_methods(methods) == ["base", "identity", "inv_first", "bigram", "identity+gcg", "identity+relaxed",
                                      "inv_first+relaxed"]
    assert method_name("bert_like+gcg") == "GCG inverter (Bert-like)"
    assert method_name("identity_grad+relaxed") == "Relaxed inverter (Identity (grad only))"


def test_only_generic_shards_depend_on_the_generic_settings():
    """invert.generic enters a generic shard's identity (a change restarts it) and never a beam search's."""
    from ilm.invert import _settings

    a, b = config(), config(relaxed_lr=0.5)
    assert _settings(a, "identity") == _settings(b, "identity") and "generic" not in _settings(a, "identity")
    assert _settings(a, "identity+relaxed") != _settings(b, "identity+relaxed")
