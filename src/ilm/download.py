"""Fetch a Hugging Face dataset once, on a machine with network, so that `prepare_data` runs offline.

`download_data` (a local rule: it runs where Snakemake runs, usually the login node) resolves
`data.revision` to a commit and downloads that snapshot's files into `resources/datasets/`.
The folder is written atomically and records what it holds in `.download.json` (a hidden file,
which `datasets.load_dataset` skips): the dataset id, the revision asked for, the commit it
resolved to, and the SHA-256 of every file.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional

from ilm.io import atomic_path, file_sha256, provenance, remove_path

log = logging.getLogger("ilm.download")

DOWNLOAD_RECORD = ".download.json"
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_SUFFIXES = (".txt", ".text", ".json", ".jsonl", ".parquet", ".csv", ".arrow")


def is_hub_id(source: str) -> bool:
    """Whether data.source names a Hub dataset (owner/name) rather than a local file or folder."""
    return (
        source != "generated"
        and not Path(source).exists()
        and bool(HF_ID.match(source))
        and not source.lower().endswith(LOCAL_SUFFIXES)
    )


def local_folder(repo_id: str, revision: Optional[str], root: str = "resources/datasets") -> str:
    """Where download_data puts a dataset: resources/datasets/<owner>__<name>@<revision>."""
    return f"{root}/{repo_id.replace('/', '__')}@{revision or 'default'}"


def resolve_commit(repo_id: str, revision: Optional[str]) -> str:
    """The commit a revision (branch, tag, commit or None for the default branch) points at on the Hub."""
    from huggingface_hub import HfApi

    return HfApi().dataset_info(repo_id, revision=revision).sha


def fetch_snapshot(repo_id: str, commit: str, local_dir: Path) -> None:
    """Download every file of the dataset at `commit` into local_dir."""
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id, repo_type="dataset", revision=commit, local_dir=local_dir)


def download_dataset(repo_id: str, revision: Optional[str], out: Path) -> dict:
    """Download `repo_id` at `revision` into `out` (whole or not at all); return the download record."""
    out = Path(out)
    try:
        commit = resolve_commit(repo_id, revision)
    except Exception as e:  # noqa: BLE001 - no network, unknown id or revision: one clear line
        raise ValueError(
            f"data.source {repo_id!r} (revision {revision!r}) could not be resolved on the Hugging Face Hub "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); run download_data where "
            "there is network, or point data.source at a local copy"
        ) from e
    log.info("downloading %s at %s (revision %s) into %s", repo_id, commit, revision, out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        fetch_snapshot(repo_id, commit, tmp)
        remove_path(tmp / ".cache")  # huggingface_hub's own bookkeeping inside local_dir
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and not p.name.startswith("."))
        record = {
            "repo_id": repo_id,
            "revision": revision,
            "commit": commit,
            "files_sha256": {str(p.relative_to(tmp)): file_sha256(p) for p in files},
            "meta": provenance(),
        }
        (tmp / DOWNLOAD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log.info("%d files, commit %s", len(record["files_sha256"]), commit)
    return record


def read_download_record(folder: Path) -> Optional[dict]:
    """The record download_dataset left in `folder`, or None for a folder it did not make."""
    path = Path(folder) / DOWNLOAD_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def verify_download(folder: Path | str, rebuild: str) -> None:
    """Check every file of a downloaded `folder` against the SHA-256 its .download.json records.

    Raises one line naming the first file that is missing or differs, and `rebuild` (the command
    that downloads it again). A folder without a record (a local copy the user made) is not checked.
    """
    folder = Path(folder)
    try:
        record = read_download_record(folder)
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{folder / DOWNLOAD_RECORD} is unreadable; {rebuild}") from None
    if record is None:
        return
    for name, digest in sorted(record.get("files_sha256", {}).items()):
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path} is missing from the download recorded in {folder / DOWNLOAD_RECORD}; {rebuild}")
        if file_sha256(path) != digest:
            raise ValueError(
                f"{path} does not match the SHA-256 recorded in {folder / DOWNLOAD_RECORD} "
                f"(truncated or changed since the download); {rebuild}"
            )
