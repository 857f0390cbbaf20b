"""Atomic outputs, content fingerprints and provenance: a killed job never leaves a file that looks finished,
and every output records what it was made from."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

HASH_BLOCK = 1 << 20


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes (hex), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprints(paths: Iterable[Path | str]) -> dict[str, str]:
    """{file name: SHA-256} of each file: the content an output was made from, independent of where it lives."""
    return {Path(p).name: file_sha256(p) for p in paths}


def _temp_name(path: Path) -> str:
    """The temporary sibling of `path` for this process: host and pid, so a rerun can tell dead leftovers."""
    return f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(path: Path) -> list[Path]:
    """Remove the temporary siblings of `path` left by killed processes of this host; return them.

    A live process's temporary (another writer on this host, or any host's we cannot see) stays.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = f".{path.name}.tmp-{socket.gethostname()}-"
    removed = []
    for candidate in path.parent.glob(f".{path.name}.tmp-*"):
        pid = candidate.name[len(prefix):] if candidate.name.startswith(prefix) else ""
        if pid.isdigit() and not _process_alive(int(pid)):
            remove_path(candidate)
            removed.append(candidate)
    return removed


def temp_sibling(path: Path | str) -> Path:
    """A fresh temporary path beside `path` for this process, after removing killed processes' leftovers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path)
    tmp = path.parent / _temp_name(path)
    remove_path(tmp)
    return tmp


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories (a directory target is replaced whole). The new content is
    fsynced and given umask permissions before the rename (`settle`), and the parent directory
    after it. Temporaries of killed earlier attempts are removed first, so nothing a kill leaves
    behind accumulates.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        settle(tmp)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        remove_path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def settle(path: Path) -> None:
    """Make a freshly written file or tree durable and shareable before it is renamed into place.

    Every file is fsynced (a rename alone can outrun the data on NFS and Lustre), then every
    directory; permissions follow the umask, as files made by `open` do (some writers, e.g.
    safetensors, create theirs 0600, which collaborators in a project group could not read).
    """
    mask = _umask()
    paths = [path] + (sorted(path.rglob("*"), reverse=True) if path.is_dir() else [])
    for p in paths:
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, 0o777 & ~mask)
            _fsync_dir(p)
        else:
            os.chmod(p, 0o666 & ~mask)
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def remove_path(p: Path) -> None:
    """Delete a file, link or directory tree if it exists."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_named_by_content(directory: Path | str, stem: str, suffix: str, text: str) -> Path:
    """Write `text` to directory/<stem>-<first 16 hex of its SHA-256><suffix> unless it is there; return the path.

    The name changes exactly when the content does, which makes the path a cheap change marker.
    """
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(directory) / f"{stem}-{digest}{suffix}"
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)
    return path


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def git_commit() -> Optional[str]:
    """The commit of the checkout the package runs from, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _version(package: str) -> Optional[str]:
    """An installed package's version, read from its metadata (importing torch takes seconds)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(
    config: Optional[Mapping] = None, inputs: Optional[Mapping[str, str]] = None, **extra: Any
) -> dict:
    """What made an output: the config slice, the SHA-256 of each input file, code and library versions."""
    from ilm import __version__

    meta: dict[str, Any] = {
        "ilm_version": __version__,
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        **{name: _version(name) for name in ("torch", "transformers", "tokenizers", "numpy")},
    }
    if config is not None:
        meta["config"] = dict(config)
    if inputs is not None:
        meta["inputs_sha256"] = dict(inputs)
    meta.update(extra)
    return meta


def check_safetensors(path: Path | str, rebuild: str) -> None:
    """Raise one line naming `path` and `rebuild` (the command that remakes it) unless it is a whole safetensors file.

    Reads only the header: its length, its JSON, and that the tensors' data ends where the file does
    (a truncated or cut-off copy fails here rather than deep inside the loader, with a traceback).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; {rebuild}")
    size = path.stat().st_size
    problem = None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                problem = f"its header does not fit in its {size} bytes"
            else:
                header = json.loads(f.read(n))
                ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
                if 8 + n + max(ends, default=0) != size:
                    problem = f"its tensors need {8 + n + max(ends, default=0)} bytes, the file has {size}"
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        problem = f"its header is unreadable ({type(e).__name__})"
    if problem is not None:
        raise ValueError(f"{path} is truncated or corrupt ({problem}); {rebuild}")


def model_fingerprint(model_dir: Path | str) -> str:
    """SHA-256 over a model directory's config.json and weights: which model produced a result."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    files = [model_dir / "config.json", model_dir / "model.safetensors"]
    for file in files:
        if not file.is_file():
            raise ValueError(f"{file} does not exist: {model_dir} is not a complete model directory")
        digest.update(file.name.encode() + b"\0" + file_sha256(file).encode())
    return digest.hexdigest()
