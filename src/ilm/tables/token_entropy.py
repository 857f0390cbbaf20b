"""Table `token_entropy` (rule tabulate_token_entropy; docs/method.md §8 E4): token entropy per window position.

For each position t of the training windows, the Shannon entropy (bits) of the empirical
distribution of the token at t over all windows. The CSV (and its HTML view in the report) holds the
numbers figure `token_entropy` draws, so they can be checked; a 256-row LaTeX table would serve no one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ilm.data import load_split
from ilm.io import write_text
from ilm.tables.common import write_html

# Windows per bincount pass: bounds the int64 copy to ~64 MiB at T=256 on the memory-mapped split.
CHUNK_WINDOWS = 32768


def position_entropy(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(entropy in bits, distinct tokens), each (T,), of the token at each position over the N windows (N, T).

    One bincount over t*V + token per chunk of windows counts every (position, token) pair at once.
    """
    n, t = windows.shape
    if n == 0:
        raise ValueError("no windows to count: the training split is empty; rerun `ilm prepare-data`")
    v = int(windows.max()) + 1
    offsets = np.arange(t, dtype=np.int64) * v  # (T,)
    counts = np.zeros(t * v, dtype=np.int64)
    for start in range(0, n, CHUNK_WINDOWS):
        block = np.asarray(windows[start : start + CHUNK_WINDOWS], dtype=np.int64)  # (B, T)
        counts += np.bincount((block + offsets).ravel(), minlength=t * v)
    counts = counts.reshape(t, v)  # (T, V)
    p = counts / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, -p * np.log2(p), 0.0)  # 0 log 0 = 0
    return terms.sum(axis=1), (counts > 0).sum(axis=1)


def build(train_npy: Path) -> pd.DataFrame:
    """One row per position: position, entropy (bits), distinct tokens seen there, windows counted."""
    train_npy = Path(train_npy)
    windows = load_split(train_npy.parent, train_npy.stem)  # (N, T) uint16, memory-mapped
    entropy, distinct = position_entropy(windows)
    return pd.DataFrame(
        {
            "position": np.arange(windows.shape[1]),
            "entropy_bits": entropy,
            "distinct_tokens": distinct,
            "windows": windows.shape[0],
        }
    )


def write(inputs: Sequence[Path], out_stem: Path, config: Mapping, tokenizer=None) -> None:
    if len(inputs) != 1:
        raise ValueError(f"table token_entropy reads one split file (results/data/train.npy), got {len(inputs)}")
    table = build(inputs[0])
    write_text(Path(out_stem).with_suffix(".csv"), table.to_csv(index=False))
    write_html(table, out_stem, "Shannon entropy (bits) of the token at each window position over the training windows")
