"""The synthetic story generator (ilm.corpus)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ilm.corpus import STORY_SEPARATOR, generate_stories, write_corpus


def _stories_in(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith(f"\n{STORY_SEPARATOR}\n")
    return text[: -len(f"\n{STORY_SEPARATOR}\n")].split(f"\n{STORY_SEPARATOR}\n")


def test_same_seed_writes_same_bytes(tmp_path: Path) -> None:
    """Two writes with one seed give byte-identical files."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    write_corpus(a, n_stories=30, seed=5)
    write_corpus(b, n_stories=30, seed=5)
    assert a.read_bytes() == b.read_bytes()


def test_different_seeds_differ(tmp_path: Path) -> None:
    """Different seeds give different stories."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    write_corpus(a, n_stories=30, seed=5)
    write_corpus(b, n_stories=30, seed=6)
    assert set(_stories_in(a)).isdisjoint(_stories_in(b))


def test_stories_separated_by_endoftext_lines(tmp_path: Path) -> None:
    """Every story is followed by a line holding only <|endoftext|>, and none contains the marker."""
    path = tmp_path / "c.txt"
    write_corpus(path, n_stories=25, seed=1)
    stories = _stories_in(path)
    assert len(stories) == 25
    assert all(s.strip() == s and s and STORY_SEPARATOR not in s for s in stories)
    lines = path.read_text().splitlines()
    assert sum(line == STORY_SEPARATOR for line in lines) == 25
    assert not list(tmp_path.glob(".*"))  # no temporary file left beside the output


def test_stories_have_variety_paragraphs_and_dialogue() -> None:
    """Stories use hundreds of distinct words, several paragraphs and quoted dialogue, and are distinct."""
    stories = generate_stories(300, seed=1234)
    words = {w for s in stories for w in re.findall(r"[a-z']+", s.lower())}
    assert len(words) > 600
    assert len(set(stories)) == len(stories)
    assert sum(s.count("\n") >= 3 for s in stories) / len(stories) > 0.9
    assert sum('"' in s for s in stories) / len(stories) > 0.9
    first_sentences = {s.split(".")[0] for s in stories}
    assert len(first_sentences) > 200


def test_most_stories_are_long_and_lengths_vary() -> None:
    """Most stories have 250+ words (enough for a 256-token window); some are short; lengths spread."""
    lengths = [len(s.split()) for s in generate_stories(300, seed=3)]
    long_share = sum(n >= 250 for n in lengths) / len(lengths)
    assert 0.65 < long_share < 0.97
    assert min(lengths) < 200 and max(lengths) > 550


def test_rejects_no_stories(tmp_path: Path) -> None:
    """Asking for zero stories raises ValueError naming the setting, and writes nothing."""
    with pytest.raises(ValueError, match="stories"):
        write_corpus(tmp_path / "x.txt", n_stories=0, seed=1)
    assert not (tmp_path / "x.txt").exists()


def test_make_corpus_reads_the_corpus_section_of_its_config(tmp_path: Path) -> None:
    """`ilm make-corpus --config` writes exactly write_corpus(corpus.stories, corpus.seed); a bad count exits 2."""
    from ilm.cli import main

    cfg = tmp_path / "config.yaml"
    cfg.write_text("corpus:\n  stories: 7\n  seed: 3\n")
    assert main(["make-corpus", "--out", str(tmp_path / "cli.txt"), "--config", str(cfg)]) == 0
    write_corpus(tmp_path / "direct.txt", n_stories=7, seed=3)
    assert (tmp_path / "cli.txt").read_text() == (tmp_path / "direct.txt").read_text()
    bad = '{"corpus": {"stories": 0}}'
    assert main(["make-corpus", "--out", str(tmp_path / "bad.txt"), "--config", str(cfg), "--config-json", bad]) == 2
    assert not (tmp_path / "bad.txt").exists()
