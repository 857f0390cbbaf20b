"""download_data: a Hub dataset fetched once at a pinned commit, then prepared offline (the Hub is faked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ilm.download
from ilm.cli import main
from ilm.config import validate_config
from ilm.corpus import write_corpus
from ilm.data import prepare_data
from ilm.download import DOWNLOAD_RECORD, download_dataset, is_hub_id, local_folder
from ilm.io import file_sha256

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A Hub holding one text dataset with data/train and data/test, at COMMIT."""
    source = tmp_path / "hub"
    for split, stories, seed in (("train", 36, 1), ("test", 6, 2)):
        write_corpus(source / "data" / split / "part0.txt", n_stories=stories, seed=seed)
    asked = []

    def resolve(repo_id, revision):
        asked.append((repo_id, revision))
        if repo_id != "owner/stories":
            raise OSError(f"404 Client Error: repository {repo_id} not found")
        return COMMIT

    def fetch(repo_id, commit, local_dir):
        assert commit == COMMIT  # the snapshot is fetched at the resolved commit, not at a moving branch
        import shutil

        shutil.copytree(source, local_dir, dirs_exist_ok=True)
        (Path(local_dir) / ".cache").mkdir()

    monkeypatch.setattr(ilm.download, "resolve_commit", resolve)
    monkeypatch.setattr(ilm.download, "fetch_snapshot", fetch)
    return source, asked


def test_hub_ids_and_local_folders():
    """owner/name is a Hub id unless it exists locally or names a file; the local copy is named by id and revision."""
    assert is_hub_id("fhswf/TinyStoriesV2_cleaned") and not is_hub_id("generated")
    assert not is_hub_id("stories.txt") and not is_hub_id("data/stories.jsonl") and not is_hub_id("tests")
    assert local_folder("fhswf/TinyStoriesV2_cleaned", None) == "resources/datasets/fhswf__TinyStoriesV2_cleaned@default"
    assert local_folder("a/b", "v1.0").endswith("a__b@v1.0")


def test_download_records_the_commit_and_every_file(fake_hub, tmp_path):
    """The folder holds the snapshot and .download.json: id, revision asked, commit, SHA-256 of each file."""
    source, asked = fake_hub
    out = tmp_path / "resources" / "datasets" / "owner__stories@main"
    record = download_dataset("owner/stories", "main", out)
    assert asked == [("owner/stories", "main")]
    assert json.loads((out / DOWNLOAD_RECORD).read_text()) == record
    assert (record["repo_id"], record["revision"], record["commit"]) == ("owner/stories", "main", COMMIT)
    expected = {f"data/{s}/part0.txt": file_sha256(source / "data" / s / "part0.txt") for s in ("train", "test")}
    assert record["files_sha256"] == expected
    assert not (out / ".cache").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary left


def test_prepare_reads_the_download_offline_and_records_the_dataset(fake_hub, tmp_path, monkeypatch):
    """prepare_data on the downloaded folder, offline, gives stats.json the dataset id, revision and commit."""
    out = tmp_path / "owner__stories@main"
    download_dataset("owner/stories", "main", out)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data_cfg = validate_config({"data": {"source": "owner/stories", "revision": "main", "vocab_size": 256,
                                         "window": 32, "stride": 24}}, stage="prepare_data")["data"]
    stats = prepare_data(str(out), tmp_path / "data", data_cfg)
    dataset = stats["dataset"]
    assert (dataset["id"], dataset["revision"], dataset["commit"]) == ("owner/stories", "main", COMMIT)
    assert dataset["fingerprint"]
    assert json.loads((tmp_path / "data" / "stats.json").read_text())["dataset"] == dataset
    assert stats["totals"]["stories"] == 42  # the train and test splits, concatenated (data.hf_splits)


def test_unreachable_dataset_is_one_clear_error(fake_hub, tmp_path, capsys):
    """An id the Hub does not know (or no network) exits 2 naming the source and what to do; nothing is written."""
    out = tmp_path / "missing"
    assert main(["download-data", "--source", "owner/missing", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data.source 'owner/missing' (revision None) could not be resolved" in err and "404" in err
    assert not out.exists()


def test_changed_download_fails_naming_the_file_and_the_fix(fake_hub, tmp_path, monkeypatch):
    """A downloaded file that no longer matches its SHA-256 in .download.json stops prepare_data in one line."""
    out = tmp_path / "owner__stories@main"
    download_dataset("owner/stories", "main", out)
    part = out / "data" / "train" / "part0.txt"
    part.write_bytes(part.read_bytes()[:100])  # truncated
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data_cfg = validate_config({"data": {"source": "owner/stories", "vocab_size": 256, "window": 32, "stride": 24}},
                               stage="prepare_data")["data"]
    with pytest.raises(ValueError) as err:
        prepare_data(str(out), tmp_path / "data", data_cfg)
    message = str(err.value)
    assert f"{part} does not match the SHA-256 recorded in {out / DOWNLOAD_RECORD}" in message
    assert "snakemake --forcerun download_data" in message and "\n" not in message
    part.unlink()
    with pytest.raises(ValueError, match=f"{part} is missing from the download"):
        prepare_data(str(out), tmp_path / "data", data_cfg)
