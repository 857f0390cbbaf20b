"""The data stage (ilm.data): tokenizer, windows, splits, sources and errors."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from ilm.cli import main as cli_main
from ilm.config import validate_config
from ilm.corpus import STORY_SEPARATOR, generate_stories
from ilm.data import (
    CUT_ORDER,
    SPECIAL_TOKENS,
    SPLITS,
    load_split,
    load_tokenizer,
    prepare_data,
    split_sizes,
    split_stories,
    story_windows,
    window_starts,
)


def _data_cfg(**overrides) -> dict:
    base = {"vocab_size": 256, "min_frequency": 2, "window": 32, "stride": 24, "seed": 7}
    base.update(overrides)
    return validate_config({"data": base}, stage="prepare_data")["data"]


def _corpus_stories(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text().split(STORY_SEPARATOR) if s.strip()]


def _expected_windows(stories: list[str], tokenizer: Tokenizer, window: int, stride: int) -> list[tuple[int, ...]]:
    """Windows computed independently: slice each story's own encoding at every stride."""
    out = []
    for story in stories:
        ids = tokenizer.encode(story, add_special_tokens=False).ids
        start = 0
        while start + window <= len(ids):
            out.append(tuple(ids[start : start + window]))
            start += stride
    return out


def _all_windows(data_dir: Path) -> dict[str, np.ndarray]:
    return {s: np.asarray(load_split(data_dir, s)) for s in SPLITS}


def _no_output(out: Path) -> bool:
    """Neither the output folder nor a staging sibling of it exists."""
    return not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


# --- windows ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, window, stride, starts",
    [
        (31, 32, 24, []),
        (32, 32, 24, [0]),
        (55, 32, 24, [0]),
        (56, 32, 24, [0, 24]),
        (100, 32, 24, [0, 24, 48]),
        (256, 256, 192, [0]),
        (447, 256, 192, [0]),
        (448, 256, 192, [0, 192]),
        (10, 4, 4, [0, 4]),
        (0, 4, 1, []),
    ],
)
def test_window_starts_hand_counts(n: int, window: int, stride: int, starts: list[int]) -> None:
    """Windows start at 0, stride, ... while they fit; the partial tail and short stories give none."""
    assert list(window_starts(n, window, stride)) == starts


def test_story_windows_slices_the_ids() -> None:
    """story_windows row k equals ids[k*stride : k*stride+window], as uint16."""
    ids = list(range(1000, 1100))
    windows = story_windows(ids, 32, 24)
    assert windows.dtype == np.uint16 and windows.shape == (3, 32)
    for k, row in enumerate(windows):
        assert row.tolist() == ids[24 * k : 24 * k + 32]
    assert story_windows(ids[:31], 32, 24).shape == (0, 32)


def test_split_sizes_follow_fractions() -> None:
    """Split sizes round the fractions in the paper's cut order and always add up to n."""
    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    assert split_sizes(1000, fractions) == {"train": 800, "test": 100, "validation": 100}
    assert list(split_sizes(7, fractions)) == list(CUT_ORDER)
    for n in range(0, 50):
        assert sum(split_sizes(n, fractions).values()) == n


def test_split_stories_endoftext_and_line() -> None:
    """endoftext joins lines up to the marker (also mid-line) and drops empties; line keeps each non-empty line."""
    chunks = ["First line.", "Second line.", STORY_SEPARATOR, "", "Two<|endoftext|>Three", "  ", STORY_SEPARATOR]
    assert list(split_stories(chunks, "endoftext")) == ["First line.\nSecond line.", "Two", "Three"]
    assert list(split_stories(["a b", "", " c <|endoftext|>", "d"], "line")) == ["a b", "c", "d"]


# --- tokenizer ----------------------------------------------------------------------------------


def test_tokenizer_special_ids_and_transformers_loading(tiny_data_dir: Path) -> None:
    """Special tokens have ids 0-5 in the paper's order and load as transformers special tokens."""
    raw = Tokenizer.from_file(str(tiny_data_dir / "tokenizer.json"))
    assert [raw.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(6))
    tok = load_tokenizer(tiny_data_dir)
    assert isinstance(tok, PreTrainedTokenizerFast)
    named = (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id)
    assert named == (0, 1, 2, 3, 4)
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 5
    assert len(tok) == raw.get_vocab_size() == 256
    # Same ids through either path, and no BOS/EOS added (no post-processor).
    assert tok("Once upon a time")["input_ids"] == raw.encode("Once upon a time").ids
    assert load_tokenizer(tiny_data_dir / "tokenizer.json").get_vocab() == tok.get_vocab()


def test_data_folder_loads_with_autotokenizer(tiny_data_dir: Path) -> None:
    """AutoTokenizer.from_pretrained(data dir) knows the special tokens, the window, and can pad a batch."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_data_dir)
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token, tok.mask_token) == SPECIAL_TOKENS[:5]
    assert tok.model_max_length == 32  # data.window of the tiny data
    batch = tok(["Once upon a time", "Tom"], padding=True)["input_ids"]
    assert batch[1][-1] == 3 and len(batch[0]) == len(batch[1])  # padded with <pad> (id 3)
    assert batch[0] == load_tokenizer(tiny_data_dir)("Once upon a time")["input_ids"]


def test_decode_encode_round_trip_on_held_out_text(tiny_data_dir: Path) -> None:
    """decode(ids) re-encodes to the same ids and gives back the text (after the first token's space), on held-out
    stories; a continuation decodes with its leading space, so prompt + continuation reads as the whole."""
    tok = load_tokenizer(tiny_data_dir)
    for story in generate_stories(5, seed=99):
        ids = tok.encode(story, add_special_tokens=False)
        text = tok.decode(ids)
        assert text == " " + story
        assert tok.encode(text, add_special_tokens=False) == ids
        cut = len(ids) // 2
        assert tok.decode(ids[:cut]) + tok.decode(ids[cut:]) == text


def test_load_tokenizer_missing(tmp_path: Path) -> None:
    """A missing tokenizer raises ValueError pointing at `ilm prepare-data`."""
    with pytest.raises(ValueError, match="ilm prepare-data"):
        load_tokenizer(tmp_path)


# --- end to end on the tiny corpus --------------------------------------------------------------


def test_windows_are_story_slices(tiny_corpus: Path, tiny_data_dir: Path) -> None:
    """The windows of all splits together are exactly the stride-spaced slices of each story's encoding."""
    raw = Tokenizer.from_file(str(tiny_data_dir / "tokenizer.json"))
    expected = Counter(_expected_windows(_corpus_stories(tiny_corpus), raw, 32, 24))
    got = Counter(tuple(row) for arr in _all_windows(tiny_data_dir).values() for row in arr.tolist())
    assert got == expected
    assert sum(expected.values()) > 100


def test_no_story_in_two_splits(tiny_corpus: Path, tiny_data_dir: Path) -> None:
    """Split by story: every story's windows all land in one split."""
    raw = Tokenizer.from_file(str(tiny_data_dir / "tokenizer.json"))
    owner: dict[tuple[int, ...], set[int]] = {}
    for i, story in enumerate(_corpus_stories(tiny_corpus)):
        for w in _expected_windows([story], raw, 32, 24):
            owner.setdefault(w, set()).add(i)
    stories_of = {
        split: {next(iter(owner[tuple(r)])) for r in arr.tolist() if len(owner[tuple(r)]) == 1}
        for split, arr in _all_windows(tiny_data_dir).items()
    }
    assert all(stories_of.values())
    assert stories_of["train"].isdisjoint(stories_of["test"])
    assert stories_of["train"].isdisjoint(stories_of["validation"])
    assert stories_of["test"].isdisjoint(stories_of["validation"])


def test_story_ids_name_the_story_of_every_window(tiny_corpus: Path, tiny_data_dir: Path) -> None:
    """{split}_stories.npy holds, for every window, the index of the story it was cut from (recomputed here)."""
    from ilm.data import load_story_ids

    raw = Tokenizer.from_file(str(tiny_data_dir / "tokenizer.json"))
    owner: dict[tuple[int, ...], set[int]] = {}
    for i, story in enumerate(_corpus_stories(tiny_corpus)):
        for w in _expected_windows([story], raw, 32, 24):
            owner.setdefault(w, set()).add(i)
    checked = 0
    for split, arr in _all_windows(tiny_data_dir).items():
        ids = load_story_ids(tiny_data_dir, split, len(arr))
        assert ids.dtype == np.int64
        for row, story in zip(arr.tolist(), ids.tolist()):
            assert story in owner[tuple(row)]
            checked += 1
    assert checked == sum(len(a) for a in _all_windows(tiny_data_dir).values())
    with pytest.raises(ValueError, match="story ids for 3 test windows"):
        load_story_ids(tiny_data_dir, "test", 3)


def test_stats_match_arrays(tiny_data_dir: Path) -> None:
    """stats.json counts equal the array shapes, and story counts add up."""
    stats = json.loads((tiny_data_dir / "stats.json").read_text())
    arrays = _all_windows(tiny_data_dir)
    for split, arr in arrays.items():
        assert arr.dtype == np.uint16 and arr.shape == (stats["splits"][split]["windows"], 32)
        assert stats["splits"][split]["tokens"] == arr.size
        assert arr.max() < stats["vocab_size"]
    totals = stats["totals"]
    assert totals["windows"] == sum(len(a) for a in arrays.values())
    assert totals["stories"] == 40
    assert totals["stories_with_windows"] + totals["stories_too_short"] == totals["stories"]
    assert sum(s["stories"] for s in stats["splits"].values()) == totals["stories_with_windows"]
    assert stats["data_config"]["window"] == 32 and stats["vocab_size"] == 256


def test_deterministic_given_seed(tiny_corpus: Path, tmp_path: Path) -> None:
    """Two runs with one seed give identical tokenizer and arrays; another seed reshuffles."""
    cfg = _data_cfg()
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    prepare_data(str(tiny_corpus), a, cfg)
    prepare_data(str(tiny_corpus), b, cfg)
    prepare_data(str(tiny_corpus), c, _data_cfg(seed=8))
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    for split in SPLITS:
        assert np.array_equal(load_split(a, split), load_split(b, split))
    assert not np.array_equal(load_split(a, "test"), load_split(c, "test"))


def test_chunk_mode_respects_fractions(tiny_corpus: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    """split_unit chunk cuts the same windows by the fractions in the paper's order (train, test, validation)."""
    fractions = {"train": 0.6, "validation": 0.15, "test": 0.25}
    out = tmp_path / "chunk"
    stats = prepare_data(str(tiny_corpus), out, _data_cfg(split_unit="chunk", split_fractions=fractions))
    arrays = _all_windows(out)
    total = sum(len(a) for a in arrays.values())
    assert {s: len(a) for s, a in arrays.items()} == split_sizes(total, fractions)
    assert abs(len(arrays["test"]) / total - 0.25) < 0.01
    story_mode = Counter(tuple(r) for a in _all_windows(tiny_data_dir).values() for r in a.tolist())
    assert Counter(tuple(r) for a in arrays.values() for r in a.tolist()) == story_mode
    assert stats["splits"]["test"]["windows"] == len(arrays["test"])


def test_story_mode_fractions_of_stories(tiny_corpus: Path, tmp_path: Path) -> None:
    """split_unit story gives each split its fraction of the stories (those with windows counted)."""
    stats = prepare_data(str(tiny_corpus), tmp_path / "d", _data_cfg(window=8, stride=8))
    assert stats["totals"]["stories_too_short"] == 0
    assert {s: v["stories"] for s, v in stats["splits"].items()} == {"train": 32, "validation": 4, "test": 4}


def test_line_separated_text_file(tmp_path: Path) -> None:
    """A text file without markers is read as one story per non-empty line."""
    stories = [s.replace("\n", " ") for s in generate_stories(30, seed=4)]
    src = tmp_path / "lines.txt"
    src.write_text("\n\n".join(stories) + "\n")
    stats = prepare_data(str(src), tmp_path / "out", _data_cfg())
    assert stats["story_separator"] == "line"
    assert stats["totals"]["stories"] == 30


def test_folder_of_text_files(tmp_path: Path) -> None:
    """A folder of .txt files is read in sorted order as one stream of stories."""
    folder = tmp_path / "texts"
    folder.mkdir()
    stories = generate_stories(24, seed=6)
    for k in range(3):
        part = stories[8 * k : 8 * (k + 1)]
        (folder / f"part{k}.txt").write_text("".join(f"{s}\n{STORY_SEPARATOR}\n" for s in part))
    stats = prepare_data(str(folder), tmp_path / "out", _data_cfg())
    assert stats["totals"]["stories"] == 24 and stats["story_separator"] == "endoftext"


def test_local_hf_dataset_folder_and_hf_splits(tmp_path: Path) -> None:
    """A local parquet dataset loads through datasets.load_dataset; data.hf_splits picks and concatenates splits."""
    folder = tmp_path / "hf"
    (folder / "data").mkdir(parents=True)
    stories = generate_stories(30, seed=8)
    pd.DataFrame({"text": stories[:20], "id": range(20)}).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    pd.DataFrame({"text": stories[20:], "id": range(10)}).to_parquet(folder / "data" / "test-00000-of-00001.parquet")

    both = prepare_data(str(folder), tmp_path / "both", _data_cfg(hf_splits=["train", "test"]))
    assert both["totals"]["stories"] == 30 and both["story_separator"] == "line"
    only_test = prepare_data(str(folder), tmp_path / "test_only", _data_cfg(hf_splits=["test"], vocab_size=200))
    assert only_test["totals"]["stories"] == 10

    raw = Tokenizer.from_file(str(tmp_path / "both" / "tokenizer.json"))
    expected = Counter(_expected_windows(stories, raw, 32, 24))
    assert Counter(tuple(r) for a in _all_windows(tmp_path / "both").values() for r in a.tolist()) == expected

    with pytest.raises(ValueError, match="data.hf_splits"):
        prepare_data(str(folder), tmp_path / "bad", _data_cfg(hf_splits=["train", "validation"]))
    with pytest.raises(ValueError, match="data.text_column"):
        prepare_data(str(folder), tmp_path / "bad", _data_cfg(text_column="story"))
    assert _no_output(tmp_path / "bad")


def test_hf_rows_joined_until_marker(tmp_path: Path) -> None:
    """With endoftext, consecutive dataset rows (lines, as the text builder gives) are joined into one story."""
    folder = tmp_path / "hf"
    (folder / "data").mkdir(parents=True)
    rows = []
    for story in generate_stories(12, seed=2):
        rows += story.split("\n") + [STORY_SEPARATOR]
    pd.DataFrame({"text": rows}).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    stats = prepare_data(str(folder), tmp_path / "out", _data_cfg(hf_splits=["train"], split_fractions={
        "train": 0.5, "validation": 0.25, "test": 0.25}))
    assert stats["story_separator"] == "endoftext" and stats["totals"]["stories"] == 12


def test_unloadable_hf_id_is_wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An HF id that cannot be loaded raises ValueError that names data.source and suggests a local path."""
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"data.source 'someone/stories' could not be loaded.*local") as err:
        prepare_data("someone/stories", out, _data_cfg())
    assert isinstance(err.value.__cause__, ConnectionError)
    assert _no_output(out)


# --- bad input ----------------------------------------------------------------------------------


def test_missing_source(tmp_path: Path) -> None:
    """A missing local path raises ValueError naming data.source and creates no output."""
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="data.source"):
        prepare_data(str(tmp_path / "nope.txt"), out, _data_cfg())
    with pytest.raises(ValueError, match="ilm make-corpus"):
        prepare_data("generated", out, _data_cfg())
    assert _no_output(out)


def test_empty_source(tmp_path: Path) -> None:
    """A corpus with no story text raises ValueError saying so, and leaves no output."""
    src = tmp_path / "empty.txt"
    src.write_text(f"\n  \n{STORY_SEPARATOR}\n\n{STORY_SEPARATOR}\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no stories"):
        prepare_data(str(src), out, _data_cfg())
    assert _no_output(out)


def test_vocab_too_small(tiny_corpus: Path, tmp_path: Path) -> None:
    """A vocab_size below 6 specials + alphabet raises ValueError naming data.vocab_size and the minimum."""
    alphabet = set(tiny_corpus.read_text().replace(STORY_SEPARATOR, "").replace("\n", " ").strip())
    needed = 6 + len(alphabet - {" "}) + 1 + 1  # "▁" replaces " "; "\n" stays inside stories
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"data.vocab_size \(40\).*at least {needed}"):
        prepare_data(str(tiny_corpus), out, _data_cfg(vocab_size=40))
    assert _no_output(out)
    prepare_data(str(tiny_corpus), out, _data_cfg(vocab_size=needed))  # the minimum itself is enough
    assert Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size() == needed


def test_no_story_fills_a_window(tmp_path: Path) -> None:
    """Stories all shorter than the window raise ValueError with the longest length and data.window."""
    src = tmp_path / "short.txt"
    src.write_text("\n".join(["the cat sat on the mat.", "a dog ran in the park.", "the sun is hot."] * 10) + "\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"none of the 30 stories .*data.window=32.*longest has \d+"):
        prepare_data(str(src), out, _data_cfg(vocab_size=64))
    assert _no_output(out)


def test_empty_split(tiny_corpus: Path, tmp_path: Path) -> None:
    """A split left with zero windows raises ValueError naming data.split_fractions."""
    fractions = {"train": 0.98, "validation": 0.01, "test": 0.01}
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="data.split_fractions"):
        prepare_data(str(tiny_corpus), out, _data_cfg(split_fractions=fractions))
    assert _no_output(out)


def test_replaces_previous_outputs_but_keeps_other_files(tiny_corpus: Path, tmp_path: Path) -> None:
    """A rerun replaces the stage's files and leaves other files of the folder (e.g. bigram.npy) alone."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "bigram.npy").write_bytes(b"keep")
    (out / "train.npy").write_bytes(b"stale")
    prepare_data(str(tiny_corpus), out, _data_cfg())
    assert (out / "bigram.npy").read_bytes() == b"keep"
    assert load_split(out, "train").shape[1] == 32


def test_load_split_errors(tmp_path: Path) -> None:
    """load_split rejects unknown split names and points at `ilm prepare-data` when a split is missing."""
    with pytest.raises(ValueError, match="split must be one of"):
        load_split(tmp_path, "dev")
    with pytest.raises(ValueError, match="ilm prepare-data"):
        load_split(tmp_path, "train")


def test_cli_prepare_data(tiny_corpus: Path, tmp_path: Path) -> None:
    """`ilm prepare-data` writes the stage's files; a bad source exits 2 with the message."""
    out = tmp_path / "cli"
    cfg = json.dumps({"data": {"vocab_size": 256, "window": 32, "stride": 24}})
    assert cli_main(["prepare-data", "--source", str(tiny_corpus), "--out-dir", str(out), "--config-json", cfg]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["stats.json", "test.npy", "test_stories.npy", "tokenizer.json", "tokenizer_config.json",
                       "train.npy", "train_stories.npy", "validation.npy", "validation_stories.npy"]
    assert cli_main(["prepare-data", "--source", str(tmp_path / "none.txt"), "--out-dir", str(tmp_path / "x"),
                     "--config-json", cfg]) == 2


def test_rerun_removes_what_a_killed_run_left(tiny_corpus: Path, tmp_path: Path) -> None:
    """A staging folder of a killed prepare-data (its process gone) is removed by the next run; a live one stays."""
    import socket
    import subprocess

    out = tmp_path / "out"
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    left = tmp_path / f".out.tmp-{host}-{dead.pid}"
    (left / "train.raw").parent.mkdir()
    (left / "train.raw").write_bytes(b"\0" * 1000)
    alive = tmp_path / f".out.tmp-{host}-{os.getppid()}"  # a running process's staging folder
    alive.mkdir()
    prepare_data(str(tiny_corpus), out, _data_cfg())
    assert not left.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "out"])


def test_stats_record_the_corpus_fingerprint(tiny_corpus: Path, tiny_data_dir: Path) -> None:
    """stats.json names the SHA-256 of the corpus file the data was made from."""
    import hashlib

    stats = json.loads((tiny_data_dir / "stats.json").read_text())
    expected = hashlib.sha256(tiny_corpus.read_bytes()).hexdigest()
    assert stats["provenance"]["inputs_sha256"] == {tiny_corpus.name: expected}
