"""Shared fixtures: a tiny generated corpus, the data directory prepared from it, and one whole
workflow run at smoke scale.

All are session-scoped (built once per test run). Treat them as read-only, except that tests may add
to the smoke run (a study, a report) or rebuild one of its tables to the same bytes. The SLURM tests
compare their tables against its `results/tables`, so those must stay as the run wrote them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ilm.config import validate_config
from ilm.corpus import write_corpus
from ilm.data import prepare_data

# Small enough for a fast BPE and a tiny model: stories of a few hundred tokens give several windows each.
TINY_STORIES = 40
TINY_CORPUS_SEED = 11
TINY_DATA = {"vocab_size": 256, "min_frequency": 2, "window": 32, "stride": 24, "seed": 7}


@pytest.fixture(scope="session")
def tiny_data_config() -> dict:
    """The validated `data:` section used for tiny_data_dir (vocab 256, window 32, stride 24, split by story)."""
    return validate_config({"data": dict(TINY_DATA)}, stage="prepare_data")["data"]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated corpus of 40 stories separated by <|endoftext|> lines."""
    path = tmp_path_factory.mktemp("corpus") / "stories.txt"
    write_corpus(path, n_stories=TINY_STORIES, seed=TINY_CORPUS_SEED)
    return path


@pytest.fixture(scope="session")
def tiny_data_dir(tiny_corpus: Path, tiny_data_config: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prepare_data run on tiny_corpus: tokenizer.json, {train,validation,test}.npy, stats.json."""
    out = tmp_path_factory.mktemp("data") / "data"
    prepare_data(str(tiny_corpus), out, tiny_data_config)
    return out


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole workflow at smoke scale (tests/smoke.yaml), all four variants, on 2 cores.

    Run once per session: the workflow tests read it and add to it (a study, a report), and the
    SLURM tests take it as the local reference, so it runs one thread a job, as the SLURM test layer
    gives each job (`run_locally`): both compute the same floats.
    """
    from workflow_helpers import run_locally

    return run_locally(tmp_path_factory.mktemp("smoke"))


def pytest_configure(config):
    """One torch thread per test process: tiny models run ~10x faster than with threads fighting on 2 cores."""
    import torch

    torch.set_num_threads(1)
