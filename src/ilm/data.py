"""The data stage: stories -> BPE tokenizer -> fixed-length windows -> train/validation/test.

Implements docs/method.md §3.2 (tokenizer) and §3.3 (windows and splits), with the fixes of §9.2:
a Metaspace decoder so decode -> encode round-trips, and (by default) the split made by story
before windowing so overlapping windows of one story never land in two splits.

Memory stays bounded at the paper's scale (~2.7 M stories): stories are streamed twice (BPE
training, then tokenization in batches) and windows are appended as uint16 blocks to raw files
that become the .npy outputs; only per-story and per-window indices live in memory.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ilm.download import is_hub_id, read_download_record, verify_download
from ilm.io import fingerprints, provenance, remove_path, settle, temp_sibling, write_json
from ilm.names import EOT_MARKER, SPECIAL_TOKENS
from ilm.progress import Progress

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = logging.getLogger("ilm.data")

METASPACE = "\u2581"  # the "▁" that Metaspace puts in place of spaces
SPLITS = ("train", "validation", "test")
# The paper cut its shuffled windows as train, test, validation (docs/method.md §3.3 step 5).
CUT_ORDER = ("train", "test", "validation")
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE)  # what AutoTokenizer.from_pretrained reads
STATS_FILE = "stats.json"


def stories_file(split: str) -> str:
    """The file holding the story id of every window of `split`: windows of one story overlap, so
    the bootstrap resamples stories, not windows (ilm.stats)."""
    return f"{split}_stories.npy"
# Rows of an HF dataset, or bytes of a text file, inspected by story_separator "auto".
AUTO_DETECT_ROWS = 1000
AUTO_DETECT_BYTES = 1 << 20
# Stories per encode_batch call (and per BPE-training batch): enough to keep every core busy,
# few enough to stream.
TOKENIZE_BATCH = 2048
HF_READ_BATCH = 1000  # dataset rows read at a time
# Windows copied at a time when the raw files become shuffled .npy arrays.
COPY_BLOCK = 1 << 16
NPY_MAGIC = b"\x93NUMPY"
# What to do about a damaged data file.
_REPREPARE = "prepare the data again (`snakemake --forcerun prepare_data`, or `ilm prepare-data`)"


# --- sources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorySource:
    """Where the stories come from; iterate it (any number of times) to stream the stories."""

    description: str
    separator: str  # "line" or "endoftext", resolved from data.story_separator
    text_files: Sequence[Path] = ()
    hf_dataset: Optional[object] = None  # a datasets.Dataset: the hf_splits concatenated
    text_column: str = "text"

    def chunks(self) -> Iterator[str]:
        """Raw text units: lines of the text files, or rows of the dataset."""
        if self.hf_dataset is not None:
            for batch in self.hf_dataset.iter(batch_size=HF_READ_BATCH):
                yield from (t or "" for t in batch[self.text_column])
        else:
            for path in self.text_files:
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        yield line.rstrip("\r\n")

    def __iter__(self) -> Iterator[str]:
        return split_stories(self.chunks(), self.separator)

    def fingerprint(self) -> dict[str, str]:
        """What the stories were read from: each text file's SHA-256, or the dataset's own fingerprint."""
        if self.hf_dataset is not None:
            return {self.description: f"datasets-fingerprint:{getattr(self.hf_dataset, '_fingerprint', None)}"}
        return fingerprints(self.text_files)

    def dataset(self, data_cfg: dict) -> Optional[dict]:
        """For an HF dataset: its id, the revision asked for, the commit downloaded (when download_data
        fetched it) and the datasets fingerprint of the rows read; None for local text files."""
        if self.hf_dataset is None:
            return None
        record = read_download_record(Path(self.description)) if Path(self.description).is_dir() else None
        return {
            "id": record["repo_id"] if record else self.description,
            "revision": record["revision"] if record else data_cfg["revision"],
            "commit": record["commit"] if record else None,
            "fingerprint": getattr(self.hf_dataset, "_fingerprint", None),
        }


def split_stories(chunks: Iterable[str], separator: str) -> Iterator[str]:
    """Stories from text units (docs/method.md §3.1): stripped, non-empty, without the marker.

    "line": every unit is a story. "endoftext": units are joined with newlines until a
    `<|endoftext|>`, which may also sit inside a unit.
    """
    if separator == "line":
        for chunk in chunks:
            story = chunk.replace(EOT_MARKER, "").strip()
            if story:
                yield story
        return
    assert separator == "endoftext", separator
    pending: List[str] = []
    for chunk in chunks:
        if EOT_MARKER not in chunk:
            pending.append(chunk)
            continue
        *closed, rest = chunk.split(EOT_MARKER)
        for piece in closed:
            pending.append(piece)
            story = "\n".join(pending).strip()
            if story:
                yield story
            pending = []
        pending.append(rest)
    story = "\n".join(pending).strip()
    if story:
        yield story


def _is_text_folder(folder: Path) -> bool:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return bool(entries) and all(p.is_file() and p.suffix == ".txt" for p in entries)


def _detect_separator(sample: Iterable[str]) -> str:
    return "endoftext" if any(s and EOT_MARKER in s for s in sample) else "line"


def _load_hf(source: str, data_cfg: dict):
    """`datasets.load_dataset(source)` with data.hf_splits concatenated in order (docs/method.md §3.1)."""
    import datasets

    revision = data_cfg["revision"] if is_hub_id(source) else None  # a local copy is one revision already
    if Path(source).is_dir():
        verify_download(source, "fetch it again with `snakemake --forcerun download_data`")
    try:
        loaded = datasets.load_dataset(source, revision=revision)
    except Exception as e:  # noqa: BLE001 - any loading failure is a bad data.source; re-raised
        raise ValueError(
            f"data.source {source!r} could not be loaded with datasets.load_dataset "
            f"({type(e).__name__}: {e}); without network access, point data.source at a local text "
            "file, a folder of .txt files, or a local dataset folder"
        ) from e
    missing = [s for s in data_cfg["hf_splits"] if s not in loaded]
    if missing:
        raise ValueError(
            f"data.hf_splits names {missing}, which dataset {source!r} does not have "
            f"(it has {sorted(loaded)}); set data.hf_splits to some of those"
        )
    parts = [loaded[s] for s in data_cfg["hf_splits"]]
    column = data_cfg["text_column"]
    for name, part in zip(data_cfg["hf_splits"], parts):
        if column not in part.column_names:
            raise ValueError(
                f"data.text_column {column!r} is not a column of split {name!r} of {source!r} "
                f"(columns: {part.column_names}); set data.text_column"
            )
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return dataset.select_columns([column])


def open_source(source: str, data_cfg: dict) -> StorySource:
    """Resolve data.source to local text files or an HF dataset, and data.story_separator."""
    path = Path(source)
    text_files: List[Path] = []
    hf_dataset = None
    if path.is_file():
        text_files = [path]
    elif path.is_dir() and _is_text_folder(path):
        text_files = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    elif path.is_dir() or is_hub_id(source):
        hf_dataset = _load_hf(source, data_cfg)
    else:
        hint = (
            " (\"generated\" stands for the synthetic corpus: run `ilm make-corpus --out FILE` "
            "and pass that file)" if source == "generated" else ""
        )
        raise ValueError(
            f"data.source {source!r} is neither an existing file or folder nor a Hugging Face "
            f"dataset id (owner/name){hint}; fix data.source or --source"
        )

    separator = data_cfg["story_separator"]
    if separator == "auto":
        if hf_dataset is not None:
            head = hf_dataset.select(range(min(AUTO_DETECT_ROWS, len(hf_dataset))))
            separator = _detect_separator(head[data_cfg["text_column"]])
        else:
            with open(text_files[0], encoding="utf-8", errors="replace") as f:
                separator = _detect_separator([f.read(AUTO_DETECT_BYTES)])
    return StorySource(
        description=str(source),
        separator=separator,
        text_files=tuple(text_files),
        hf_dataset=hf_dataset,
        text_column=data_cfg["text_column"],
    )


# --- tokenizer ----------------------------------------------------------------------------------


def new_tokenizer() -> Tokenizer:
    """An untrained BPE tokenizer as docs/method.md §3.2, plus the Metaspace decoder of §9.2.1.

    The decoder keeps every token's leading space (prepend_scheme "never"): a decoded text
    starts with one space, and a decoded continuation ("▁little" -> " little") joins its prompt
    as transformers' text-generation pipeline joins them. Re-encoding a decoded text gives the
    same ids, since the pre-tokenizer's prepended "▁" replaces that first space.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[0]))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="never")
    return tokenizer


@dataclass
class _CorpusTally:
    """What the training pass learns about the corpus while streaming it."""

    stories: int = 0
    characters: int = 0
    alphabet: Optional[set] = None


def _counting(stories: Iterable[str], tally: _CorpusTally) -> Iterator[List[str]]:
    """Yield stories in batches, counting them and collecting their characters on the way."""
    tally.alphabet = set()
    batch: List[str] = []
    for story in stories:
        tally.stories += 1
        tally.characters += len(story)
        tally.alphabet.update(story)
        batch.append(story)
        if len(batch) == TOKENIZE_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def train_tokenizer(stories: Iterable[str], vocab_size: int, min_frequency: int) -> tuple[Tokenizer, _CorpusTally]:
    """Train the BPE on streamed stories; return it with the story count and alphabet."""
    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=sys.stderr.isatty(),  # its bar prints blank lines into log files
    )
    tally = _CorpusTally()
    log.info("training the BPE tokenizer (vocab %d, min frequency %d)", vocab_size, min_frequency)
    tokenizer.train_from_iterator(_counting(stories, tally), trainer=trainer)
    return tokenizer, tally


def _check_vocabulary(tokenizer: Tokenizer, tally: _CorpusTally, vocab_size: int) -> None:
    """The trained vocabulary fits data.vocab_size and has the special ids of docs/method.md §3.2."""
    # Metaspace turns spaces into "▁" and always prepends one, so "▁" is in every alphabet.
    alphabet = (tally.alphabet - {" "}) | {METASPACE}
    needed = len(SPECIAL_TOKENS) + len(alphabet)
    real = tokenizer.get_vocab_size()
    if real > vocab_size:
        raise ValueError(
            f"data.vocab_size ({vocab_size}) is too small: the {len(SPECIAL_TOKENS)} special tokens and "
            f"the corpus's {len(alphabet)} distinct characters need at least {needed}; "
            f"raise data.vocab_size to {needed} or more"
        )
    if real < vocab_size:
        log.warning(
            "the tokenizer learned %d tokens, fewer than data.vocab_size=%d (the corpus has too few "
            "pairs of frequency >= data.min_frequency); ids stay below %d",
            real, vocab_size, vocab_size,
        )
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == expected_id, (token, tokenizer.token_to_id(token))


def load_tokenizer(path: Path, model_max_length: Optional[int] = None) -> "PreTrainedTokenizerFast":
    """The trained tokenizer as a transformers tokenizer with its special tokens declared.

    `path` is the data dir or its tokenizer.json; `model_max_length` is the window, when known.
    """
    return hf_tokenizer(read_tokenizer(path), model_max_length)


def hf_tokenizer(tokenizer: Tokenizer, model_max_length: Optional[int] = None) -> "PreTrainedTokenizerFast":
    """A trained `tokenizers.Tokenizer` wrapped for transformers, its special tokens declared."""
    from transformers import PreTrainedTokenizerFast

    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        pad_token=SPECIAL_TOKENS[3],
        mask_token=SPECIAL_TOKENS[4],
        additional_special_tokens=[SPECIAL_TOKENS[5]],
        **extra,
    )


def save_hf_tokenizer(tokenizer: "PreTrainedTokenizerFast", directory: Path) -> None:
    """tokenizer.json and tokenizer_config.json, so AutoTokenizer.from_pretrained(directory) knows the specials.

    The config names PreTrainedTokenizerFast, which transformers 4 and 5 both load.
    """
    tokenizer.save_pretrained(directory)
    config_path = Path(directory) / TOKENIZER_CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def read_tokenizer(path: Path) -> Tokenizer:
    """The trained tokenizer.json as a `tokenizers.Tokenizer`; a missing or corrupt file is a clear error."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"no tokenizer at {file}; run `ilm prepare-data` first")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # noqa: BLE001 - the Rust error names no file: one clear line instead
        raise ValueError(f"{file} is not a readable tokenizer ({e}); {_REPREPARE}") from None


# --- windows and splits -------------------------------------------------------------------------


def window_starts(n_tokens: int, window: int, stride: int) -> range:
    """Start offsets of the full windows of a story (docs/method.md §3.3): 0, stride, ... while start+window <= n.

    The last partial window is dropped; a story shorter than `window` has none.
    """
    assert window >= 1 and stride >= 1, (window, stride)
    return range(0, n_tokens - window + 1, stride)


def story_windows(ids: Sequence[int], window: int, stride: int) -> np.ndarray:
    """The windows of one tokenized story, shape (n_windows, window), uint16."""
    starts = np.asarray(window_starts(len(ids), window, stride), dtype=np.int64)
    if starts.size == 0:
        return np.empty((0, window), dtype=np.uint16)
    tokens = np.asarray(ids, dtype=np.uint16)  # (n_tokens,)
    return tokens[starts[:, None] + np.arange(window)]  # (n_windows, window)


def split_sizes(n: int, fractions: Dict[str, float]) -> Dict[str, int]:
    """How many of `n` units each split gets, in CUT_ORDER; the last split takes the remainder."""
    sizes: Dict[str, int] = {}
    left = n
    for name in CUT_ORDER[:-1]:
        sizes[name] = min(left, int(round(n * fractions[name])))
        left -= sizes[name]
    sizes[CUT_ORDER[-1]] = left
    return sizes


def assign_stories(n_stories: int, fractions: Dict[str, float], seed: int) -> np.ndarray:
    """Split index (position in SPLITS) of every story, from a seeded permutation (split_unit "story")."""
    perm = np.random.default_rng(seed).permutation(n_stories)
    assignment = np.empty(n_stories, dtype=np.uint8)
    start = 0
    for name, size in split_sizes(n_stories, fractions).items():
        assignment[perm[start : start + size]] = SPLITS.index(name)
        start += size
    return assignment


class _WindowSink:
    """Appends uint16 window blocks to one raw file, remembering the story of every window."""

    def __init__(self, path: Path, window: int):
        self.path = path
        self.window = window
        self.file = open(path, "wb")
        self.story_ids = array("q")
        self.count = 0

    def add(self, windows: np.ndarray, story_id: int) -> None:
        self.file.write(windows.tobytes())
        self.story_ids.extend([story_id] * len(windows))
        self.count += len(windows)

    def close(self) -> np.ndarray:
        """Finish the file; return the story id of every window, shape (count,)."""
        self.file.close()
        return np.frombuffer(self.story_ids, dtype=np.int64) if self.count else np.empty(0, dtype=np.int64)

    def windows(self) -> np.ndarray:
        """The windows written, memory-mapped, shape (count, window)."""
        if self.count == 0:
            return np.empty((0, self.window), dtype=np.uint16)
        return np.memmap(self.path, dtype=np.uint16, mode="r", shape=(self.count, self.window))


def _write_rows(out: Path, source: np.ndarray, rows: np.ndarray) -> None:
    """Write source[rows] as a .npy file, a block at a time (source may be a memmap)."""
    target = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint16, shape=(len(rows), source.shape[1]))
    for start in range(0, len(rows), COPY_BLOCK):
        target[start : start + COPY_BLOCK] = source[rows[start : start + COPY_BLOCK]]
    target.flush()
    del target


def _tokenize(tokenizer: Tokenizer, stories: Iterable[str], n_stories: int) -> Iterator[List[int]]:
    """Token ids of every story, in order, encoded in parallel batches (no special tokens added)."""
    # encode_batch_fast (tokenizers >= 0.21) skips the character offsets we do not need.
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    progress = Progress(n_stories, "tokenize", unit="story", log=log)
    batch: List[str] = []

    def flush() -> Iterator[List[int]]:
        for encoding in encode(batch, add_special_tokens=False):
            yield encoding.ids
        progress.update(len(batch))
        batch.clear()

    for story in stories:
        batch.append(story)
        if len(batch) == TOKENIZE_BATCH:
            yield from flush()
    if batch:
        yield from flush()
    progress.close()


# --- the stage ----------------------------------------------------------------------------------


def _set_threads(num_workers: Optional[int]) -> int:
    """Size the tokenizers thread pool (Rust rayon; read when the pool first starts in a process)."""
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if num_workers < 1:
        raise ValueError(f"--workers (num_workers) must be at least 1, got {num_workers}")
    os.environ["RAYON_NUM_THREADS"] = str(num_workers)
    return num_workers


def prepare_data(source: str, out_dir: Path, data_cfg: dict, num_workers: Optional[int] = None) -> dict:
    """Train the tokenizer, cut windows and split them; write tokenizer.json, {split}.npy, stats.json.

    `data_cfg` is the validated `data:` section. Nothing appears in `out_dir` unless every step
    succeeds. Returns the statistics written to stats.json.
    """
    out_dir = Path(out_dir)
    started = time.time()
    workers = _set_threads(num_workers)
    corpus = open_source(str(source), data_cfg)
    log.info("source %s (%s-separated stories), %d tokenizer threads", corpus.description, corpus.separator, workers)

    staging = temp_sibling(out_dir)  # a killed run's staging folder is removed here, on the rerun
    staging.mkdir()
    try:
        stats = _prepare_into(corpus, staging, data_cfg)
        stats["seconds"] = round(time.time() - started, 2)
        stats["provenance"] = provenance(inputs=corpus.fingerprint())
        write_json(staging / STATS_FILE, stats)
        settle(staging)
        out_dir.mkdir(exist_ok=True)
        # stats.json moves last: its presence marks a complete data directory.
        for name in [*TOKENIZER_FILES, *(f"{s}.npy" for s in SPLITS), *map(stories_file, SPLITS), STATS_FILE]:
            os.replace(staging / name, out_dir / name)
    finally:
        remove_path(staging)
    log.info("wrote %s in %.1f s", out_dir, stats["seconds"])
    return stats


def _prepare_into(corpus: StorySource, staging: Path, data_cfg: dict) -> dict:
    window, stride = data_cfg["window"], data_cfg["stride"]
    fractions = data_cfg["split_fractions"]
    by_story = data_cfg["split_unit"] == "story"

    # Pass 1 (§3.2): BPE training; it also counts the stories and their characters.
    t0 = time.time()
    tokenizer, tally = train_tokenizer(corpus, data_cfg["vocab_size"], data_cfg["min_frequency"])
    if tally.stories == 0:
        raise ValueError(
            f"data.source {corpus.description!r} holds no stories (it is empty, or only whitespace "
            f"and {EOT_MARKER} markers); point data.source at the corpus"
        )
    _check_vocabulary(tokenizer, tally, data_cfg["vocab_size"])
    save_hf_tokenizer(hf_tokenizer(tokenizer, window), staging)
    log.info(
        "tokenizer: %d tokens from %d stories in %.1f s",
        tokenizer.get_vocab_size(), tally.stories, time.time() - t0,
    )

    # Pass 2 (§3.3): tokenize each story alone; its windows go to its split (story) or one pool (chunk).
    assignment = assign_stories(tally.stories, fractions, data_cfg["seed"]) if by_story else None
    sinks = {name: _WindowSink(staging / f"{name}.raw", window) for name in (SPLITS if by_story else ("all",))}
    story_tokens = too_short = longest = 0
    n_seen = 0
    for story_id, ids in enumerate(_tokenize(tokenizer, corpus, tally.stories)):
        n_seen += 1
        story_tokens += len(ids)
        longest = max(longest, len(ids))
        windows = story_windows(ids, window, stride)  # (k, window)
        if len(windows) == 0:
            too_short += 1
            continue
        sink = sinks[SPLITS[assignment[story_id]]] if by_story else sinks["all"]
        sink.add(windows, story_id)
    assert n_seen == tally.stories, (n_seen, tally.stories)
    story_of = {name: sink.close() for name, sink in sinks.items()}
    total_windows = sum(s.count for s in sinks.values())
    if total_windows == 0:
        raise ValueError(
            f"none of the {tally.stories} stories is at least data.window={window} tokens long "
            f"(the longest has {longest}); use a smaller data.window or a corpus of longer stories"
        )

    # Shuffle windows (seeded) so that any prefix of a split is a random sample of it.
    rng = np.random.default_rng(data_cfg["seed"])
    rows: Dict[str, np.ndarray] = {}
    split_story_ids: Dict[str, np.ndarray] = {}
    if by_story:
        for name in SPLITS:
            rows[name] = rng.permutation(sinks[name].count)
            split_story_ids[name] = story_of[name][rows[name]]
    else:
        # The paper's order (§3.3 step 5): shuffle all windows, cut train, test, validation.
        perm = rng.permutation(total_windows)
        start = 0
        for name, size in split_sizes(total_windows, fractions).items():
            rows[name] = perm[start : start + size]
            split_story_ids[name] = story_of["all"][rows[name]]
            start += size
    empty = [name for name in SPLITS if len(rows[name]) == 0]
    if empty:
        raise ValueError(
            f"split(s) {empty} got no windows ({total_windows} windows from {tally.stories} stories in all); "
            "raise their data.split_fractions or use a larger corpus"
        )
    for name in SPLITS:
        source = sinks[name if by_story else "all"].windows()
        _write_rows(staging / f"{name}.npy", source, rows[name])
        np.save(staging / stories_file(name), split_story_ids[name].astype(np.int64))
        del source
    for sink in sinks.values():
        sink.path.unlink()

    splits = {
        name: {
            "stories": int(np.unique(split_story_ids[name]).size),
            "windows": int(len(rows[name])),
            "tokens": int(len(rows[name]) * window),
        }
        for name in SPLITS
    }
    for name in SPLITS:
        log.info("%-10s %8d windows from %7d stories", name, splits[name]["windows"], splits[name]["stories"])
    log.info("%d of %d stories were shorter than %d tokens and gave no window", too_short, tally.stories, window)
    return {
        "source": corpus.description,
        "dataset": corpus.dataset(data_cfg),
        "story_separator": corpus.separator,
        "splits": splits,
        "totals": {
            "stories": tally.stories,
            "stories_with_windows": tally.stories - too_short,
            "stories_too_short": too_short,
            "story_tokens": story_tokens,
            "longest_story_tokens": longest,
            "windows": total_windows,
            "tokens": total_windows * window,
        },
        "vocab_size": tokenizer.get_vocab_size(),
        "windows_shuffled_within_split": True,
        "data_config": dict(data_cfg),
    }


def load_story_ids(data_dir: Path, split: str, n_windows: int) -> np.ndarray:
    """The story id of every window of `split` (n_windows,), int64; a missing or mismatched file is a clear error."""
    path = Path(data_dir) / stories_file(split)
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path} is not a readable story-id array ({e}); {_REPREPARE}") from None
    if ids.shape != (n_windows,):
        raise ValueError(f"{path} holds {ids.shape} story ids for {n_windows} {split} windows; {_REPREPARE}")
    return ids


def load_split(data_dir: Path, split: str) -> np.ndarray:
    """One split's windows, memory-mapped, shape (N, window), uint16; a damaged file is a clear error."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    path = Path(data_dir) / f"{split}.npy"
    if not path.is_file():
        raise ValueError(f"no {split} split at {path}; run `ilm prepare-data --out-dir {data_dir}` first")
    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise ValueError(f"{path} is not a .npy file (no NumPy header); {_REPREPARE}")
    try:
        windows = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # e.g. a file cut short: "mmap length is greater than file size"
        raise ValueError(f"{path} is not a readable .npy array ({e}); {_REPREPARE}") from None
    if windows.dtype != np.uint16 or windows.ndim != 2:
        raise ValueError(
            f"{path} holds a {windows.dtype} array of shape {windows.shape}, not uint16 [windows, tokens] "
            f"as `ilm prepare-data` writes; {_REPREPARE}"
        )
    return windows
