"""Judges: a tiny Llama and a tiny BERT sentence-transformers folder, loaded through the same code path as the real ones."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ilm.judges import GATED_HINT, PerplexityJudge, SimilarityJudge, first_words
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
    """Batched, right-padded judge perplexity equals exp(mean NLL) of each text run alone."""
    judge = PerplexityJudge(str(llama_judge_dir), torch.device("cpu"), batch_size=3, max_length=64)
    texts = ["Once upon a time there was a cat.", "The dog ran.", "A big red ball rolled down the hill slowly."]
    got = judge.perplexity(texts)
    for text, value in zip(texts, got):
        ids = torch.tensor([judge.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(judge.model(input_ids=ids).logits[0, :-1].double(), -1)
        nll = -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].mean().item()
        assert value == pytest.approx(math.exp(nll), rel=1e-4)


def test_similarity_is_the_cosine_of_mean_pooled_embeddings(bert_judge_dir):
    """Identical texts score 1, an empty text 0, others the cosine of the encoder's mean-pooled states."""
    judge = SimilarityJudge(str(bert_judge_dir), torch.device("cpu"), batch_size=2)
    a, b = ["the cat sat on a mat", "the dog ran", "big red"], ["the cat sat on a mat", "a red cat", ""]
    got = judge.similarity(a, b)
    assert got[0] == pytest.approx(1.0, abs=1e-5) and got[2] == 0.0
    emb = judge.model.encode(["the dog ran", "a red cat"], convert_to_numpy=True)
    expected = float(emb[0] @ emb[1] / np.linalg.norm(emb[0]) / np.linalg.norm(emb[1]))
    assert got[1] == pytest.approx(expected, abs=1e-5) and got[1] < 0.9999


def test_first_words_and_gated_message():
    """The 50-word cut keeps whole words; the gated-model message names HF_TOKEN and the model page."""
    assert first_words("a  b\nc d", 3) == "a b c"
    line = GATED_HINT.format(model="meta-llama/Llama-3.2-1B", error="GatedRepoError")
    assert "HF_TOKEN" in line and "https://huggingface.co/meta-llama/Llama-3.2-1B" in line and "\n" not in line
