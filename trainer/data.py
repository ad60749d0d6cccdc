"""Pretraining data: published parquet datasets -> token shards -> fixed-length samples.

`prepare` reads a dataset in Hub layout (a local folder or a Hub repo id; its split's files found as
`datasets.load_dataset` finds them, see `find_parquet_files`), tokenizes it in worker
processes with batch encoding, appends EOS after every document (phi-1: "<|endoftext|> used for
separating the files", no document masking) and packs the stream into flat uint16 shards plus an
`index.json` with token counts and source hashes, written atomically.

Validation data: a split the publisher made (`validation`, `test`, ...) is prepared like any other; or
`prepare(..., holdout=Holdout(...))` holds out whole documents of the training split, chosen by a hash of
their text (independent of file order and worker count; exact duplicates fall on one side). All documents
stay in the shards; `holdout.npy` lists the held-out token ranges, the index key records the rule (another
rule makes the data stale), and `TokenStream` reads either the tokens for training (the held-out documents
cut out) or only the held-out ones.

Document text is encoded as ordinary text (tiktoken's `encode_ordinary`): a literal `<|endoftext|>`
inside a document is spelled out by BPE, so only the appended EOS separates documents.

`MixtureSampler` turns those streams into training samples. Sample `g` (the g-th sequence ever
drawn) is a pure function of (seed, g): the dataset comes from a seeded shuffle of a block holding
each dataset in exact weight proportion, the row from a seeded per-epoch permutation of that
dataset's rows. A step's samples are the next B after those drawn before it (`BatchPlan`):
`g in [n + (step-s)*B, n + (step-s+1)*B)` from the step `s` a run (re)started at with `n` samples drawn
(`n = s*B` unless the global batch changed on a resume), split between ranks and micro-steps. So a
step's samples on a rank are a pure function of (seed, samples drawn before it, rank), a resume needs
the step, the sample count and the seed (a checkpoint's meta.json records them), and any world size
sees the same data. A resume under another mix (other weights, a dataset added) counts blocks from the sample it
goes on from, and each dataset goes on from the windows it drew (`MixtureSampler`'s `start` and `offsets`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

INDEX_NAME = "index.json"
HOLDOUT_NAME = "holdout.npy"
PROGRESS_NAME = "progress.json"  # in a prepare's scratch folder: how far it got (`_Progress`)
INDEX_VERSION = 1
SPLIT_NAMES = ("train", "validation", "valid", "val", "test", "dev")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name: never a path starting ".", "/" or "~"
# `datasets`' SPLIT_PATTERN_SHARDED (data/{split}-NNNNN-of-NNNNN*), push_to_hub's and write_dataset's layout
SHARDED = re.compile(r"^(?P<split>\w+(?:\.\w+)*)-\d{5}-of-\d{5}[^/]*\.parquet$")


class DataError(ValueError):
    """A dataset that cannot be read or used; the message names the file, column or source."""


# ----------------------------------------------------------------------------- locating parquet


def local_source(source: str) -> Path | None:
    """The local file or folder `source` names, or None: then it is read as a Hub repo id."""
    path = Path(source).expanduser()
    return path if path.exists() else None


def no_local_copy(source: str) -> str:
    """", and there is no local file or folder 'ds/nope' (relative to CWD)" when `source`, read as a Hub id, starts with
    a folder that exists here (`ds/` of `ds/nope`): likely a mistyped local path, which a Hub error alone would
    hide. "" for anything else (`someone/model`), which is named as a Hub id as before."""
    owner = Path(source).parts[0] if source else ""
    if not owner or not Path(owner).is_dir():
        return ""
    return f", and there is no local file or folder {source!r} (relative to {Path.cwd()})"


def _split_of(path: Path, root: Path) -> str | None:
    """The split a Hub-layout file belongs to: `train-00000-of-00002.parquet`, `train.parquet` or `train/x.parquet`."""
    m = re.match(r"^([A-Za-z]+)(?:[-_.]|$)", path.stem)
    if m and m.group(1).lower() in SPLIT_NAMES:
        return m.group(1).lower()
    for part in path.relative_to(root).parts[:-1]:
        if part.lower() in SPLIT_NAMES:
            return part.lower()
    return None


def find_parquet_files(folder: Path, split: str, named: bool = False, subset: str | None = None) -> list[Path]:
    """Parquet files of one split of a dataset folder, in a stable order, found as `datasets.load_dataset`
    finds them: the README's `configs:` (the `subset` config, else the default one) when it has them; else
    the sharded layout `data/{split}-NNNNN-of-NNNNN.parquet` (any split name: `train.clean` is not `train`);
    else split keywords in file or folder names under data/ (or the folder).

    By keywords, files that name no split are all taken, unless `named` (a validation split: taking them
    would validate on the training data)."""
    from textbookgen.dataset import check_complete

    check_complete(folder, DataError)
    configs = _readme_configs(folder)
    if configs is not None or subset is not None:
        return _config_files(folder, configs or [], split, subset)
    sharded: dict[str, list[Path]] = {}
    for p in sorted((folder / "data").glob("*.parquet")):
        if m := SHARDED.match(p.name):
            sharded.setdefault(m["split"], []).append(p)
    if sharded:
        if split not in sharded:
            raise DataError(f"no parquet files for split {split!r} under {folder / 'data'} (splits found: "
                            f"{sorted(sharded)})")
        return sharded[split]
    root = folder / "data" if (folder / "data").is_dir() else folder
    files = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    if not files:
        raise DataError(f"no parquet files under {root} (expected Hub layout: data/{split}-00000-of-00001.parquet)")
    labelled = {p: _split_of(p, root) for p in files}
    if named and not any(labelled.values()):
        shown = ", ".join(str(p.relative_to(root)) for p in files[:3]) + (", ..." if len(files) > 3 else "")
        raise DataError(f"no parquet file under {root} names a split (found {shown}), so split {split!r} cannot "
                        f"be told from the training data; name the files by split (data/{split}-00000-of-00001."
                        f"parquet) or hold out part of the training split (holdout_fraction, holdout_tokens)")
    if any(labelled.values()):
        chosen = [p for p in files if labelled[p] == split]
        if not chosen:
            found = sorted({s for s in labelled.values() if s})
            raise DataError(f"no parquet files for split {split!r} under {root} (splits found: {found})")
        return chosen
    return files


def _readme_configs(folder: Path) -> list[dict[str, Any]] | None:
    """The `configs:` list of the folder's README.md front matter (the Hub's dataset card), or None."""
    import yaml

    readme = folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    try:
        meta = yaml.safe_load(m[1]) if m else None
    except yaml.YAMLError as e:
        raise DataError(f"{readme}: the YAML front matter does not parse: {e}") from e
    configs = meta.get("configs") if isinstance(meta, dict) else None
    return [c for c in configs if isinstance(c, dict)] if isinstance(configs, list) else None


def _split_patterns(data_files: Any) -> dict[str, list[str]]:
    """A config's `data_files` as {split: [glob, ...]}: a glob or list of globs is the train split."""
    if isinstance(data_files, str):
        return {"train": [data_files]}
    if isinstance(data_files, dict):
        return {str(s): [p] if isinstance(p, str) else list(p) for s, p in data_files.items()}
    out: dict[str, list[str]] = {}
    for entry in data_files or []:
        if isinstance(entry, str):
            out.setdefault("train", []).append(entry)
        elif isinstance(entry, dict) and "path" in entry:
            path = entry["path"]
            out.setdefault(str(entry.get("split", "train")), []).extend([path] if isinstance(path, str) else path)
    return out


def _config_files(folder: Path, configs: list[dict[str, Any]], split: str, subset: str | None) -> list[Path]:
    """Parquet files of `split` in the config `subset` (None: the one marked default, else "default", else the
    only one) of a README's `configs:`."""
    names = [str(c.get("config_name", "default")) for c in configs]
    if subset is None:
        marked = [n for c, n in zip(configs, names, strict=True) if c.get("default")]
        subset = marked[0] if marked else "default" if "default" in names or len(names) != 1 else names[0]
    if subset not in names:
        raise DataError(f"{folder}: no config {subset!r} in README.md's `configs:` (configs: {names or 'none'})")
    patterns = _split_patterns(configs[names.index(subset)].get("data_files"))
    if split not in patterns:
        raise DataError(f"{folder / 'README.md'}: config {subset!r} has no split {split!r} (splits: {sorted(patterns)})")
    files = sorted({p for pattern in patterns[split] for p in folder.glob(pattern) if p.is_file()})
    other = [p for p in files if p.suffix != ".parquet"]
    if other:
        raise DataError(f"{other[0]}: config {subset!r} split {split!r} holds non-parquet files; the trainer reads parquet")
    if not files:
        raise DataError(f"{folder}: config {subset!r} split {split!r} ({', '.join(patterns[split])}) matches no files")
    return files


def resolve_source(source: str, split: str = "train", revision: str | None = None,
                   endpoint: str | None = None, named: bool = False, subset: str | None = None) -> list[Path]:
    """Parquet files of `source`: a local folder or file, else a Hub dataset repo id (downloaded).

    `named`: the split must be identifiable (see `find_parquet_files`); a single file names none.
    `subset`: the config of the README's `configs:` to read (None: the default one)."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".parquet":
            raise DataError(f"{path}: not a parquet file; the trainer reads published datasets (parquet). For "
                            f"a JSONL/JSON corpus run `textbookgen publish {path} -o <folder>` and prepare <folder>")
        if subset is not None:
            raise DataError(f"{path} is a single parquet file, which has no config {subset!r}")
        if named:
            raise DataError(f"{path} is a single parquet file, which names no split, so split {split!r} would be "
                            f"the training data; give a folder with data/{split}-*.parquet files or hold out part "
                            f"of the training split (holdout_fraction, holdout_tokens)")
        from textbookgen.dataset import is_build_folder

        if path.name == "documents.parquet" and is_build_folder(path.parent):
            print(f"warning: {path} is a textbookgen build's documents before curation (not deduplicated, "
                  f"decontaminated or filtered); its curated dataset is {path.parent / 'dataset'}", file=sys.stderr)
        return [path]
    if path.is_dir():
        return find_parquet_files(_dataset_of_build(path), split, named, subset)
    if not HUB_ID.match(source):
        raise DataError(f"dataset not found: {source!r} is neither a local folder/parquet file nor a Hub repo id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        local = snapshot_download(source, repo_type="dataset", revision=revision, endpoint=endpoint,
                                  allow_patterns=["README.md", "*.parquet", "**/*.parquet"])
    except RepositoryNotFoundError as e:
        raise DataError(f"dataset not found: Hub repo {source!r} does not exist or is private"
                        f"{no_local_copy(source)}") from e
    except RevisionNotFoundError as e:
        raise DataError(f"Hub dataset {source!r} has no revision {revision!r}") from e
    except LocalEntryNotFoundError as e:  # the Hub out of reach (its error is the cause), and no snapshot cached
        raise DataError(f"cannot reach the Hub for dataset {source!r} ({hub_unreachable_reason(e)}) and it is not "
                        f"in the HF cache{no_local_copy(source)}: give a local folder, or run prepare where the "
                        f"Hub is reachable") from e
    except (HfHubHTTPError, OSError, ConnectionError) as e:
        raise DataError(f"cannot download Hub dataset {source!r}{no_local_copy(source)} (offline? use a local "
                        f"folder): {first_line(e)}") from e
    return find_parquet_files(Path(local), split, named, subset)


def hub_commit(files: Sequence[Path]) -> str | None:
    """The Hub commit that downloaded files come from (their HF cache folder is snapshots/<commit>/): with
    `revision` unset, the index would otherwise not say which state of a repo that others push to was read."""
    parts = files[0].parts if files else ()
    at = [i for i in range(1, len(parts) - 2) if parts[i] == "snapshots" and parts[i - 1].startswith("datasets--")]
    return parts[at[-1] + 1] if at else None


def _dataset_of_build(folder: Path) -> Path:
    """`folder`, or its dataset/ when it is a build folder: searched as a dataset, a build folder would give its
    generation and curation files (uncurated documents, dropped rows) or fail on the first without `text`."""
    from textbookgen.dataset import is_build_folder

    if not is_build_folder(folder):
        return folder
    dataset = folder / "dataset"
    if not (dataset / "data").is_dir():
        raise DataError(f"{folder} is a textbookgen build folder with no dataset/ yet: finish the build "
                        f"(`textbookgen build RECIPE`), then prepare {dataset}")
    print(f"note: {folder} is a textbookgen build folder; reading its dataset, {dataset}", file=sys.stderr)
    return dataset


def hub_unreachable_reason(err: Exception) -> str:
    """Why a Hub download (snapshot_download: one request, no retries) found neither the Hub nor a copy in the
    HF cache, in one line: huggingface_hub's LocalEntryNotFoundError says it over two, with advice that does
    not fit here. "HF_HUB_OFFLINE is set", else the first line of the network error behind it."""
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else first_line(err.__cause__ or err)


def first_line(e: BaseException) -> str:
    """An exception's message in one line (huggingface_hub's run over several)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- tokenizing


_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_json: str, eos_id: int, dtype: str) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.encode_special_tokens = True  # text is ordinary text: a literal <|endoftext|> is not a separator
    _WORKER.update(tok=tok, eos=eos_id, dtype=np.dtype(dtype))


def _init_pool_worker(tokenizer_json: str, eos_id: int, dtype: str) -> None:
    """`_init_worker` in a pool process, which leaves Ctrl-C to the parent: the terminal sends SIGINT to the whole
    process group, and each worker would print its own KeyboardInterrupt traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(tokenizer_json, eos_id, dtype)


def doc_hash(text: str) -> int:
    """64-bit hash of a document's text, which decides whether a `Holdout` takes it."""
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"tbg-holdout-v1")
    return int.from_bytes(digest.digest(), "little")


def _encode(job: tuple[int, list[str]]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(source file number, token ids of a batch of its documents, each followed by EOS, flat; each
    document's token count with its EOS; each document's `doc_hash`)."""
    file_no, texts = job
    tok, eos, dtype = _WORKER["tok"], _WORKER["eos"], _WORKER["dtype"]
    encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
    ids: list[int] = []
    for enc in encodings:
        ids.extend(enc.ids)
        ids.append(eos)
    lengths = np.fromiter((len(enc.ids) + 1 for enc in encodings), dtype=np.int64, count=len(texts))
    hashes = np.fromiter((doc_hash(t) for t in texts), dtype=np.uint64, count=len(texts))
    return file_no, np.asarray(ids, dtype=dtype), lengths, hashes


def _open_parquet(path: Path, column: str):
    """The parquet file, checked to hold a string `column`; errors name the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file: {e}") from e
    names = pf.schema_arrow.names
    if column not in names:
        raise DataError(f"{path}: no column {column!r} (columns: {names}); name the text column with "
                        f"`prepare --column NAME` or `column: NAME` in the config's dataset entry")
    col_type = pf.schema_arrow.field(column).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise DataError(f"{path}: column {column!r} holds {col_type}, expected strings")
    return pf


def _text_batches(files: Sequence[Path], column: str, batch_docs: int, sources: list[dict[str, Any]],
                  first: int = 0) -> Iterator[tuple[int, list[str]]]:
    """(file number, non-empty documents of `column`) in file order from file `first` on, in batches, each file
    closed by an empty batch (which tells the writer, in stream order, that the file is done); counts docs per file."""
    for file_no in range(first, len(files)):
        row = 0
        for batch in _open_parquet(files[file_no], column).iter_batches(batch_size=batch_docs, columns=[column]):
            texts = column_texts(batch.column(0), files[file_no], column, row)
            row += len(texts)
            kept = [t for t in texts if t]
            sources[file_no]["skipped_empty"] += len(texts) - len(kept)
            sources[file_no]["documents"] += len(kept)
            if kept:
                yield file_no, kept
        yield file_no, []


def column_texts(values, path: Path, column: str, first_row: int) -> list[str | None]:
    """The strings of a batch of `column`; bytes that are not UTF-8 (a writer that does not validate them) are an
    error naming the file and row, not a bare UnicodeDecodeError."""
    try:
        return values.to_pylist()
    except UnicodeDecodeError:
        for i in range(len(values)):
            try:
                values[i].as_py()
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: row {first_row + i} (from 0): column {column!r} is not valid UTF-8 "
                                f"({e.reason} at byte {e.start}); re-encode that text as UTF-8 or drop the row") from None
        raise


class _ShardWriter:
    """Appends token arrays to fixed-size flat shard files `shard-NNNNN.bin`, after the `shards` already written
    (a resumed prepare: the last one is cut back to its recorded length, later ones deleted)."""

    def __init__(self, folder: Path, shard_tokens: int, dtype: np.dtype, shards: Sequence[dict[str, Any]] = ()):
        self.folder, self.shard_tokens, self.dtype = folder, shard_tokens, dtype
        self.shards: list[dict[str, Any]] = [dict(s) for s in shards]
        self._f = None
        self._n = 0
        kept = {s["file"] for s in self.shards}
        for path in folder.glob("shard-*.bin"):
            if path.name not in kept:
                path.unlink()
        if self.shards and self.shards[-1]["tokens"] < shard_tokens:
            self._n = self.shards[-1]["tokens"]
            self._f = open(folder / self.shards[-1]["file"], "r+b")
            self._f.truncate(self._n * dtype.itemsize)
            self._f.seek(0, os.SEEK_END)

    def write(self, arr: np.ndarray) -> None:
        while arr.size:
            if self._f is None:
                name = f"shard-{len(self.shards):05d}.bin"
                self._f = open(self.folder / name, "wb")
                self.shards.append({"file": name, "tokens": 0})
                self._n = 0
            take = min(arr.size, self.shard_tokens - self._n)
            self._f.write(arr[:take].tobytes())
            self._n += take
            self.shards[-1]["tokens"] = self._n
            arr = arr[take:]
            if self._n == self.shard_tokens:
                self._close()

    def sync(self) -> None:
        """Flush the open shard to disk, so that the shards hold what `shards` says."""
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())

    def _close(self) -> None:
        if self._f is not None:
            self.sync()
            self._f.close()
            self._f = None

    def close(self) -> list[dict[str, Any]]:
        self._close()
        return self.shards


@dataclass(frozen=True)
class Holdout:
    """Documents of a training split kept for validation, by `doc_hash`: those whose hash falls in the lowest
    `fraction` of its range (about that fraction of the tokens), or the lowest hashes that make at least
    `tokens` tokens. Neither set: nothing held out."""

    fraction: float = 0.0
    tokens: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.fraction < 1 or self.tokens < 0 or (self.fraction and self.tokens):
            raise DataError(f"holdout: fraction {self.fraction} must be in [0, 1) and tokens {self.tokens} >= 0, "
                            f"not both set")

    def __bool__(self) -> bool:
        return bool(self.fraction or self.tokens)

    def key(self) -> dict[str, Any]:
        """The index key's entry: empty when nothing is held out, so older indexes stay current."""
        if not self:
            return {}
        rule = {"fraction": self.fraction} if self.fraction else {"tokens": self.tokens}
        return {"holdout": {"hash": "blake2b-64 of the text", **rule}}


class _HoldoutPicker:
    """Collects the held-out documents' token ranges while the stream is written; `state` resumes it."""

    def __init__(self, holdout: Holdout, state: np.ndarray | None = None):
        self.holdout = holdout
        self._threshold = np.uint64(int(holdout.fraction * 2**64))
        self._picked: list[np.ndarray] = [np.zeros((0, 2), dtype=np.int64)]  # fraction: (start, length) arrays
        self._heap: list[tuple[int, int, int]] = []  # tokens: (-hash, start, length), the largest hash on top
        if state is not None and len(state):
            if holdout.tokens:
                self._heap = [(-h, s, n) for h, s, n in state.tolist()]
                heapq.heapify(self._heap)
            else:
                self._picked.append(state[:, 1:].astype(np.int64))
        self._heap_tokens = sum(n for _, _, n in self._heap)

    def state(self) -> np.ndarray:
        """[k, 3] uint64 (hash, start, length) of the documents picked so far (hash 0 by fraction): what the
        constructor takes to go on."""
        if self.holdout.tokens:
            return np.array([(-h, s, n) for h, s, n in self._heap], dtype=np.uint64).reshape(-1, 3)
        picked = np.concatenate(self._picked)
        return np.concatenate([np.zeros((len(picked), 1), np.int64), picked], axis=1).astype(np.uint64)

    def add(self, start: int, lengths: np.ndarray, hashes: np.ndarray) -> None:
        """Documents of `lengths` tokens laid out from stream position `start`, with their hashes."""
        starts = start + np.cumsum(lengths) - lengths
        if self.holdout.fraction:
            keep = hashes < self._threshold
            self._picked.append(np.stack([starts[keep], lengths[keep]], axis=1))
        elif self.holdout.tokens:
            for h, s, n in zip(hashes.tolist(), starts.tolist(), lengths.tolist(), strict=True):
                if self._heap_tokens < self.holdout.tokens or h <= -self._heap[0][0]:
                    heapq.heappush(self._heap, (-h, s, n))
                    self._heap_tokens += n
                    self._trim()

    def admits(self, hashes: np.ndarray) -> np.ndarray:
        """Under a token count, which of `hashes` `add` could still take (once the heap holds the count, only hashes
        up to its largest, which never grows): the others need no token count."""
        if self._heap_tokens < self.holdout.tokens:
            return np.ones(len(hashes), dtype=bool)
        return hashes <= np.uint64(-self._heap[0][0])

    def _trim(self) -> None:
        """Drop the documents of the largest hash while the rest still make `tokens` (ties go together)."""
        while self._heap:
            top, group = self._heap[0][0], []
            while self._heap and self._heap[0][0] == top:
                group.append(heapq.heappop(self._heap))
            size = sum(n for _, _, n in group)
            if self._heap_tokens - size < self.holdout.tokens:
                for item in group:
                    heapq.heappush(self._heap, item)
                return
            self._heap_tokens -= size

    def _documents(self) -> np.ndarray:
        if self.holdout.tokens:
            return np.array([(s, n) for _, s, n in self._heap], dtype=np.int64).reshape(-1, 2)
        return np.concatenate(self._picked)

    @property
    def documents(self) -> int:
        return len(self._documents())

    def ranges(self) -> np.ndarray:
        """[k, 2] int64 (start, length) of the held-out tokens, by start, adjacent documents merged."""
        picked = self._documents()
        if not len(picked):
            return picked
        picked = picked[np.argsort(picked[:, 0], kind="stable")]
        first = np.flatnonzero(np.concatenate([[True], picked[1:, 0] != picked[:-1, 0] + picked[:-1, 1]]))
        return np.stack([picked[first, 0], np.add.reduceat(picked[:, 1], first)], axis=1)


def held_out(files: Sequence[Path], column: str, holdout: Holdout, tokenizer: Any) -> Callable[[str], bool]:
    """Whether `prepare` of these files (a split, in order) with `holdout` and `tokenizer` holds a document out for
    validation, by its text: what anything trained on the training text (a tokenizer) must not read.
    A fraction needs only each text's hash; a token count needs the token counts of the documents that could be
    picked, under `tokenizer` (the one prepare uses), so the files are read once here."""
    if holdout.fraction:
        threshold = int(holdout.fraction * 2**64)
        return lambda text: doc_hash(text) < threshold
    if not holdout.tokens:
        return lambda text: False
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(_as_tokenizer(tokenizer).to_str())  # a copy: the caller's keeps its own setting
    tok.encode_special_tokens = True  # as prepare encodes (_init_worker)
    picker = _HoldoutPicker(holdout)
    sources = [{"documents": 0, "skipped_empty": 0} for _ in files]
    for _, texts in _text_batches(files, column, 1024, sources):
        hashes = np.fromiter((doc_hash(t) for t in texts), dtype=np.uint64, count=len(texts))
        wanted = np.flatnonzero(picker.admits(hashes))
        encodings = tok.encode_batch_fast([texts[i] for i in wanted], add_special_tokens=False)
        lengths = np.array([len(e.ids) + 1 for e in encodings], dtype=np.int64)  # with EOS, as prepare counts
        picker.add(0, lengths, hashes[wanted])  # stream positions do not matter here, only the hashes picked
    picked = set(picker.state()[:, 0].tolist())
    return lambda text: doc_hash(text) in picked


def tokenizer_fingerprint(tokenizer_json: str) -> str:
    return hashlib.sha256(tokenizer_json.encode()).hexdigest()


def _as_tokenizer(tokenizer: Any) -> Tokenizer:
    """A `tokenizers.Tokenizer` as given, or loaded from a spec for `trainer.tokenizer.load_tokenizer`."""
    if isinstance(tokenizer, (str, Path)):
        from trainer.tokenizer import load_tokenizer

        return load_tokenizer(tokenizer)
    return tokenizer


# How special tokens written in a document's text are encoded: "ordinary" = as text (see _init_worker).
# Indexes without this key were made when such text became special ids: they count as stale.
TEXT_SPECIALS = {"specials_in_text": "ordinary"}


def encoding_key(tokenizer: Tokenizer, column: str, eos_id: int | None = None) -> dict[str, Any]:
    """The part of an index's `key` that is not the source bytes: what turns the same text into other ids."""
    return {"column": column, "tokenizer_sha256": tokenizer_fingerprint(tokenizer.to_str()),
            "eos_id": _eos_of(tokenizer, eos_id), **TEXT_SPECIALS}


def _eos_of(tokenizer, eos_id: int | None) -> int:
    if eos_id is not None:
        return eos_id
    found = tokenizer.token_to_id("<|endoftext|>")
    if found is None:
        raise DataError("tokenizer has no <|endoftext|> token; pass eos_id explicitly")
    return found


def skipped_rows(index: dict[str, Any]) -> str:
    """'N of M rows skipped: ...' for a prepared index that skipped rows without text (else ''): said aloud, since
    a column mostly null or empty trains on a fraction of the dataset."""
    skipped = index.get("skipped_empty", 0)
    if not skipped:
        return ""
    return f"{skipped:,} of {index['documents'] + skipped:,} rows skipped: empty or null {index['column']!r}"


def read_index(folder: Path) -> dict[str, Any]:
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise DataError(f"no tokenized data at {folder}: {INDEX_NAME} missing (run `python -m trainer prepare`)")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt index: {e}") from e
    if index.get("version") != INDEX_VERSION:
        raise DataError(f"{path}: index version {index.get('version')} (expected {INDEX_VERSION}); prepare again")
    return index


def _is_token_scratch(folder: Path) -> bool:
    """Whether `folder` is absent or holds only shards, an index and a prepare's progress: one `prepare` may delete."""
    if not folder.exists():
        return True
    names = rf"shard-\d+\.bin|({re.escape(INDEX_NAME)}|{re.escape(PROGRESS_NAME)})(\.tmp)?|{re.escape(HOLDOUT_NAME)}"
    return folder.is_dir() and all(re.fullmatch(names, p.name) for p in folder.iterdir())


def prepare(source: str, out_dir: str | Path, tokenizer: Any, *, split: str = "train", column: str = "text",
            revision: str | None = None, endpoint: str | None = None, eos_id: int | None = None,
            num_workers: int = 0, batch_docs: int = 1024, shard_tokens: int = 1 << 28,
            force: bool = False, progress: bool = True, holdout: Holdout = Holdout(),
            named: bool = False, subset: str | None = None) -> dict[str, Any]:
    """Tokenize a published dataset into `out_dir` (uint16 shards + index.json); returns the index.

    `tokenizer`: a `tokenizers.Tokenizer` or a spec for `trainer.tokenizer.load_tokenizer`.
    `holdout`: documents to keep out of training (`holdout.npy`, see the module docstring).
    `named`: `split` must be named by the source's files (a validation split; see `find_parquet_files`).
    `subset`: the config of the source's README `configs:` to read (None: the default one).

    Reuses an existing `out_dir` whose index has the same source files (by sha256), column,
    tokenizer and holdout, unless `force`. Writes into a temporary folder renamed into place at the end, so a
    crash never leaves a half-written dataset behind; the source files finished there are kept, and a rerun
    goes on from the next one (`_Progress`; not with `force`). Holds a lock on `out_dir` meanwhile
    (`_prepare_lock`): a second prepare of it waits, then reuses its result.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    files = resolve_source(source, split, revision, endpoint, named, subset)
    spec = str(tokenizer) if isinstance(tokenizer, (str, Path)) else None  # recorded for offline checks
    tokenizer = _as_tokenizer(tokenizer)  # loaded only once the data is known to exist
    sources = [{"file": str(p), "sha256": sha256_file(p), **_file_stamp(p)} for p in files]
    key = {"sources": [s["sha256"] for s in sources], **encoding_key(tokenizer, column, eos_id), **holdout.key()}
    origin = {"source": str(source), "subset": subset, "split": split, "revision": revision, "tokenizer": spec,
              "commit": hub_commit(files) if local_source(source) is None else None}
    with _prepare_lock(out_dir):
        if not force and (reused := _reusable(out_dir, key, sources, origin)) is not None:
            return reused
        eos, vocab = key["eos_id"], tokenizer.get_vocab_size(with_added_tokens=True)
        dtype = np.dtype(np.uint16 if max(vocab, eos + 1) <= 1 << 16 else np.uint32)
        total_docs = sum(_open_parquet(p, column).metadata.num_rows for p in files)  # checks the column first
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        state = _Progress.start(tmp, {**key, "dtype": dtype.name, "shard_tokens": shard_tokens}, fresh=force)
        with _resumable(str(source), state, len(files)), _tokenize_bar(progress, str(source), total_docs) as report:
            shards, total, picker = _tokenize_shards(
                files, column, sources, state, tokenizer.to_str(), eos, dtype, holdout=holdout,
                batch_docs=batch_docs, shard_tokens=shard_tokens, workers=num_workers or os.cpu_count() or 1,
                report=report)
        if total == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{source}: no non-empty documents in column {column!r} of split {split!r}")
        index = {
            "version": INDEX_VERSION, "key": key, "source": str(source), "subset": subset, "split": split,
            "column": column, "revision": revision, "commit": origin["commit"], "tokenizer": spec,
            "dtype": dtype.name, "eos_id": eos,
            "vocab_size": vocab, "sources": sources, "shards": shards, "total_tokens": total,
            "documents": sum(s["documents"] for s in sources),
            "skipped_empty": sum(s["skipped_empty"] for s in sources), "seconds": round(state.seconds, 3),
        }
        (tmp / PROGRESS_NAME).unlink()
        _write_index(tmp, index, holdout, picker)
        _swap_in(tmp, out_dir)
    return index


@contextmanager
def _resumable(source: str, state: _Progress, n_files: int) -> Iterator[None]:
    """Say where a prepare goes on from an interrupted one, and turn a Ctrl-C into one line saying how far it got:
    the source files done stay in the scratch folder, for a rerun to go on from."""
    if state.files_done:
        print(f"{source}: going on from an interrupted prepare ({state.files_done} of {n_files} source "
              f"files done)", file=sys.stderr)
    try:
        yield
    except KeyboardInterrupt:
        kept = (f"after {state.files_done} of {n_files} source files (kept in {state.folder}); run it again to go "
                f"on from there" if state.files_done else "before its first source file was done")
        raise KeyboardInterrupt(f"prepare of {source} stopped {kept}") from None


@contextmanager
def _prepare_lock(out_dir: Path) -> Iterator[None]:
    """Hold `out_dir`'s lock (the file `.NAME.lock` beside it) while preparing it: a second prepare of the same
    folder (an lr sweep starting N runs of one config at once) waits, saying so, then finds the data current,
    instead of both writing one scratch folder. A file system without locks goes on unlocked, as before."""
    import fcntl

    if not out_dir.parent.exists():  # (a file there: opening the lock fails, naming the path)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.with_name(f".{out_dir.name}.lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another prepare of {out_dir} to finish", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # e.g. ENOLCK on an NFS mount without a lock daemon
            pass
        yield


@dataclass
class _Progress:
    """How far a `prepare` got, saved in its scratch folder after each source file, so that an interrupted one
    (Ctrl-C, a kill, a crash) goes on from the next file when run again with the same `key` (source bytes,
    encoding, holdout, dtype and shard size) instead of tokenizing everything again."""

    folder: Path
    key: dict[str, Any]
    files_done: int = 0
    total: int = 0  # tokens written
    shards: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, int]] = field(default_factory=list)  # documents, skipped_empty, tokens per file done
    held: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint64))  # `_HoldoutPicker.state`
    seconds: float = 0.0

    @classmethod
    def start(cls, folder: Path, key: dict[str, Any], fresh: bool) -> _Progress:
        """The progress saved in `folder` under `key` (unless `fresh`), else a new one in an emptied `folder`."""
        saved = None if fresh else cls._load(folder, key)
        if saved is None:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            return cls(folder, key)
        return saved

    @classmethod
    def _load(cls, folder: Path, key: dict[str, Any]) -> _Progress | None:
        """The saved progress if it is of `key` and its shards are all there; else None."""
        try:
            rec = json.loads((folder / PROGRESS_NAME).read_text())
            if rec["key"] != key:
                return None
            size = np.dtype(key["dtype"]).itemsize
            if any(not (folder / s["file"]).is_file() or (folder / s["file"]).stat().st_size < s["tokens"] * size
                   for s in rec["shards"]):
                return None
            held = np.array(rec["held"], dtype=np.uint64).reshape(-1, 3)
            return cls(folder, key, rec["files_done"], rec["total"], rec["shards"], rec["sources"], held,
                       rec["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def record(self, files_done: int, total: int, shards: list[dict[str, Any]], sources: list[dict[str, Any]],
               held: np.ndarray, seconds: float) -> None:
        """Save that the first `files_done` source files are done, with what they made (`total` tokens in `shards`,
        counted into `sources`); the shards must be on disk first (`_ShardWriter.sync`)."""
        self.files_done, self.total, self.held, self.seconds = files_done, total, held, seconds
        self.shards = [dict(s) for s in shards]
        self.sources = [{k: s[k] for k in ("documents", "skipped_empty", "tokens")} for s in sources[:files_done]]
        rec = {k: getattr(self, k) for k in ("key", "files_done", "total", "shards", "sources", "seconds")}
        _write_json_atomic(self.folder / PROGRESS_NAME, {**rec, "held": self.held.tolist()})


def _note_replaced(out_dir: Path, old: dict[str, Any], key: dict[str, Any]) -> None:
    """Say so when `out_dir` holds this data prepared another way (tokenizer, column, holdout), not merely from
    changed source files: two configs that share a data.cache_dir and a dataset name but tokenize it differently
    (a tokenizer ablation) would replace each other's data at every start, re-tokenizing it each time unseen."""
    spec = old.get("tokenizer")
    what = {"tokenizer_sha256": f"tokenizer ({spec})" if spec else "tokenizer", "column": "column",
            "eos_id": "EOS id", "holdout": "holdout rule"}  # not specials_in_text: old data, made again once
    changed = [name for k, name in what.items() if (old.get("key") or {}).get(k) != key.get(k)]
    if what["tokenizer_sha256"] in changed and "EOS id" in changed:
        changed.remove("EOS id")  # the tokenizer's own
    if changed:
        print(f"note: {out_dir} holds {old.get('source')} prepared with another {', '.join(changed)}; preparing "
              f"it again replaces that data (to keep both, prepare this one into another folder: its own "
              f"data.cache_dir or data.datasets.N.name, or prepare --out)", file=sys.stderr)


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder (or scratch beside it) that `prepare` did not write: it may be someone's data."""
    if out_dir.exists() and not (out_dir / INDEX_NAME).is_file():
        raise DataError(f"{out_dir}: exists but holds no {INDEX_NAME} of an earlier prepare; "
                        "refusing to replace it (choose a new folder)")
    for scratch in (out_dir.with_name(out_dir.name + ".tmp"), out_dir.with_name(out_dir.name + ".old")):
        if not _is_token_scratch(scratch):
            raise DataError(f"{scratch}: exists and is not a token folder left by prepare; move it away")


def _reusable(out_dir: Path, key: dict[str, Any], sources: list[dict[str, Any]],
              origin: dict[str, Any]) -> dict[str, Any] | None:
    """The index already in `out_dir` when it was made from the same bytes the same way (files touched or moved:
    only their stamps and `origin` are refreshed, no hours of tokenizing again); else None."""
    if not (out_dir / INDEX_NAME).is_file():
        return None
    try:
        old = read_index(out_dir)
    except DataError:  # damaged or of another version: tokenize again
        return None
    if old.get("key") != key:
        _note_replaced(out_dir, old, key)
        return None
    for entry, new in zip(old["sources"], sources, strict=True):
        entry.update(file=new["file"], bytes=new["bytes"], mtime_ns=new["mtime_ns"])
    old.update(origin)
    _write_json_atomic(out_dir / INDEX_NAME, old)
    return old


@contextmanager
def _tokenize_bar(enabled: bool, label: str, total_docs: int) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for one `prepare`; yields `report(documents read, tokens written)` to move it."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]tokenizing[/] {task.description}"), BarColumn(),
                  TextColumn("{task.completed:,}/{task.total:,} docs  {task.fields[tokens]:,} tokens"),
                  TimeRemainingColumn(), disable=not enabled) as bar:
        task = bar.add_task(label, total=total_docs, tokens=0)
        yield lambda rows, tokens: bar.update(task, completed=rows, tokens=tokens)


def _tokenize_shards(files: Sequence[Path], column: str, sources: list[dict[str, Any]], progress: _Progress,
                     tokenizer_json: str, eos: int, dtype: np.dtype, *, holdout: Holdout, batch_docs: int,
                     shard_tokens: int, workers: int,
                     report: Callable[[int, int], None]) -> tuple[list[dict[str, Any]], int, _HoldoutPicker]:
    """Encode every document of the files after `progress.files_done` into shards in `progress.folder`, in file
    order whatever the worker count, counting each source file's documents and tokens into `sources`, picking the
    holdout as the stream goes by, and saving `progress` as each file is done.
    Returns (the shards, the token count, the holdout picked)."""
    done, t0, seconds = progress.files_done, time.time(), progress.seconds
    writer = _ShardWriter(progress.folder, shard_tokens, dtype, progress.shards)
    picker, total = _HoldoutPicker(holdout, progress.held), progress.total
    for s, counts in zip(sources[:done], progress.sources, strict=True):
        s.update(counts)
    for s in sources[done:]:
        s.update(documents=0, skipped_empty=0, tokens=0)
    report(sum(s["documents"] + s["skipped_empty"] for s in sources), total)
    batches = _text_batches(files, column, batch_docs, sources, done)
    with _encoded(batches, workers, tokenizer_json, eos, dtype) as results:
        for file_no, arr, lengths, hashes in results:
            if not len(lengths):  # the end of file `file_no`
                writer.sync()
                progress.record(file_no + 1, total, writer.shards, sources, picker.state(), seconds + time.time() - t0)
                continue
            picker.add(total, lengths, hashes)
            writer.write(arr)
            sources[file_no]["tokens"] += int(arr.size)
            total += int(arr.size)
            report(sum(s["documents"] + s["skipped_empty"] for s in sources), total)
    return writer.close(), total, picker


@contextmanager
def _encoded(batches: Iterator[tuple[int, list[str]]], workers: int, tokenizer_json: str, eos: int,
             dtype: np.dtype) -> Iterator[Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]]:
    """The batches' `_encode` results in order: in this process for one worker (no start-up of a pool), else
    from a pool of spawned processes, stopped when the block exits."""
    if workers == 1:
        _init_worker(tokenizer_json, eos, dtype.str)
        yield map(_encode, batches)
        return
    with mp.get_context("spawn").Pool(workers, initializer=_init_pool_worker,
                                      initargs=(tokenizer_json, eos, dtype.str)) as pool:
        yield pool.imap(_encode, batches)


def _write_index(folder: Path, index: dict[str, Any], holdout: Holdout, picker: _HoldoutPicker) -> None:
    """Write `holdout.npy` (if any) and index.json into the scratch folder and fsync it, so the swap publishes
    complete data: the index is what marks a folder as finished."""
    if holdout:
        held = picker.ranges()
        np.save(folder / HOLDOUT_NAME, held)
        index["holdout"] = {"rule": holdout.key()["holdout"], "file": HOLDOUT_NAME, "documents": picker.documents,
                            "tokens": int(held[:, 1].sum()), "ranges": len(held)}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    fsync_path(folder)


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace `out_dir` by the finished `tmp` with renames, so a crash leaves the old data or the new, never a mix."""
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    fsync_path(out_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def _file_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def index_is_current(folder: str | Path, source: str, tokenizer: Any, *, split: str = "train",
                     column: str = "text", eos_id: int | None = None, revision: str | None = None,
                     holdout: Holdout = Holdout(), subset: str | None = None) -> bool:
    """Cheap staleness check of prepared data: same source, subset, split and revision, same column, tokenizer,
    EOS id, encoding of special tokens in the text and holdout, and for a local source the same files, sizes and
    mtimes (not hashed: training start-up should not read the corpus).

    `tokenizer`: a `tokenizers.Tokenizer` or a spec, as for `prepare`; None skips the tokenizer (the
    caller checked the index's recorded spec instead). Hub sources' files are not checked (no network at
    start-up); run `prepare` again after they change."""
    index = read_index(Path(folder))
    recorded = (index.get("source"), index.get("subset"), index.get("split"), index.get("revision"))
    if recorded != (str(source), subset, split, revision):
        return False
    wanted = (encoding_key(_as_tokenizer(tokenizer), column, eos_id) if tokenizer is not None
              else {"column": column, **TEXT_SPECIALS})
    wanted["holdout"] = holdout.key().get("holdout")
    if any(index["key"].get(k) != v for k, v in wanted.items()):
        return False
    if local_source(source) is None:
        return True
    files = resolve_source(source, split, subset=subset)
    now = [(str(p), *_file_stamp(p).values()) for p in files]
    return now == [(s["file"], s["bytes"], s.get("mtime_ns")) for s in index["sources"]]


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder, so that a rename into it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading


class TokenStream:
    """The concatenated token shards of one prepared dataset, read through memmaps: the tokens for training
    (any held-out documents cut out, see `Holdout`), or with `held_out` only the held-out documents."""

    def __init__(self, folder: str | Path, held_out: bool = False):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        dtype = np.dtype(self.index["dtype"])
        self.maps = []
        for shard in self.index["shards"]:
            path = self.folder / shard["file"]
            expect = shard["tokens"] * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expect:
                raise DataError(f"{path}: missing or truncated shard (expected {expect} bytes); prepare again")
            self.maps.append(np.memmap(path, dtype=dtype, mode="r"))
        self.starts = np.cumsum([0] + [m.size for m in self.maps])
        if held_out and "holdout" not in self.index:
            raise DataError(f"{self.folder}: holds out no documents (prepared without a holdout)")
        held = self._held_ranges()
        self.segments = held if held_out else _complement(held, int(self.starts[-1]))
        self.segment_starts = np.concatenate([[0], np.cumsum(self.segments[:, 1])])

    def _held_ranges(self) -> np.ndarray:
        """[k, 2] (start, length) of the held-out documents in the shards, checked against the index."""
        info = self.index.get("holdout")
        if info is None:
            return np.zeros((0, 2), dtype=np.int64)
        path = self.folder / info["file"]
        try:
            held = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: missing or unreadable ({e}); prepare again") from e
        if held.shape != (info["ranges"], 2) or int(held[:, 1].sum()) != info["tokens"]:
            raise DataError(f"{path}: does not match {INDEX_NAME} (damaged?); prepare again")
        return held.astype(np.int64)

    def __len__(self) -> int:
        return int(self.segment_starts[-1])

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start+n) of this view as int64, across held-out gaps and shard boundaries."""
        if start < 0 or start + n > len(self):
            raise IndexError(f"read [{start}, {start + n}) outside {len(self)} tokens")
        out = np.empty(n, dtype=np.int64)
        k = int(np.searchsorted(self.segment_starts, start, side="right")) - 1
        done = 0
        while done < n:
            lo = start + done - int(self.segment_starts[k])
            take = min(n - done, int(self.segments[k, 1]) - lo)
            self._read_shards(int(self.segments[k, 0]) + lo, out[done:done + take])
            done += take
            k += 1
        return out

    def _read_shards(self, start: int, out: np.ndarray) -> None:
        """Fill `out` with the shards' tokens from `start` on, each shard checked to still hold them (one fstat of
        the mapped file per shard read): a shard truncated after start-up (prepared again, or damaged) ended the
        process at the read with a SIGBUS that named nothing. A truncation between the check and the read still
        does."""
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        done = 0
        while done < out.size:
            lo = start + done - int(self.starts[k])
            take = min(out.size - done, self.maps[k].size - lo)
            self._check_shard(k, lo + take)
            out[done:done + take] = self.maps[k][lo:lo + take]
            done += take
            k += 1

    def _check_shard(self, k: int, tokens: int) -> None:
        """Shard k's file (the one mapped, by its open descriptor) still holds its first `tokens` tokens."""
        shard = self.maps[k]
        size = shard.base.size()  # the mmap's fstat: the file's size now
        if size < tokens * shard.itemsize:
            raise DataError(f"{shard.filename}: truncated to {size} bytes since it was opened ({INDEX_NAME} says "
                            f"{shard.size * shard.itemsize}): prepare again, then resume")


def _complement(ranges: np.ndarray, total: int) -> np.ndarray:
    """The (start, length) pieces of [0, total) outside `ranges` (sorted, disjoint)."""
    starts = np.concatenate([[0], ranges[:, 0] + ranges[:, 1]]).astype(np.int64)
    stops = np.concatenate([ranges[:, 0], [total]]).astype(np.int64)
    keep = stops > starts
    return np.stack([starts[keep], (stops - starts)[keep]], axis=1)


def mix_quotas(weights: Sequence[float], block: int) -> np.ndarray:
    """Samples per dataset in a block of `block`, proportional to weights (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * block
    q = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - q), kind="stable")[: block - int(q.sum())]:
        q[i] += 1
    if (q == 0).any():
        raise DataError(f"data.mix_block={block} is too small for weights {list(weights)}: a dataset gets no samples")
    return q


class MixtureSampler:
    """Sample g -> (seq_len+1) tokens, a pure function of (seed, g); see the module docstring.

    `start` and `offsets`: a mix that took over from an earlier one (a resume under other weights) draws
    samples from `start` on, in blocks counted from there, and dataset d goes on from its `offsets[d]`-th
    window (those it drew before): none read twice or jumped over within an epoch."""

    def __init__(self, streams: Sequence[TokenStream], weights: Sequence[float], seq_len: int, seed: int,
                 block: int = 1000, names: Sequence[str] | None = None, start: int = 0,
                 offsets: Sequence[int] | None = None):
        if len(streams) != len(weights) or not streams:
            raise DataError("need one weight per dataset and at least one dataset")
        self.streams, self.seq_len, self.seed = list(streams), seq_len, seed
        self.start, self.offsets = start, list(offsets or [0] * len(streams))
        self.names = list(names or [str(s.folder) for s in streams])
        self.rows = []
        for name, s in zip(self.names, self.streams, strict=True):
            rows = (len(s) - 1) // seq_len - 1
            if rows < 1:
                raise DataError(f"dataset {name} has {len(s)} tokens: too few for seq_len {seq_len} "
                                f"(need at least {2 * seq_len + 1})")
            self.rows.append(rows)
        self.block = block if len(streams) > 1 else 1
        self.quotas = mix_quotas(weights, self.block)
        self._labels = np.repeat(np.arange(len(streams)), self.quotas)
        self._block_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._epoch_cache: dict[tuple[int, int], tuple[np.ndarray, int]] = {}

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Dataset of each position in block b, and each position's ordinal within its dataset."""
        if b not in self._block_cache:
            if len(self._block_cache) > 4:
                self._block_cache.clear()
            labels = np.random.default_rng([self.seed, 0x4D495845, b]).permutation(self._labels)
            ordinal = np.empty(self.block, dtype=np.int64)
            for d in range(len(self.streams)):
                mask = labels == d
                ordinal[mask] = np.arange(int(mask.sum()))
            self._block_cache[b] = (labels, ordinal)
        return self._block_cache[b]

    def _epoch(self, d: int, e: int) -> tuple[np.ndarray, int]:
        """Row order and token offset of epoch e of dataset d (a fresh cut of rows every epoch)."""
        key = (d, e)
        if key not in self._epoch_cache:
            for old in [k for k in self._epoch_cache if k[0] == d]:
                del self._epoch_cache[old]
            rng = np.random.default_rng([self.seed, d, e])
            self._epoch_cache[key] = (rng.permutation(self.rows[d]), int(rng.integers(self.seq_len)))
        return self._epoch_cache[key]

    def locate(self, g: int) -> tuple[int, int]:
        """(dataset, start token) of sample g (>= `start`)."""
        if g < self.start:
            raise IndexError(f"sample {g} was drawn under an earlier mix (this one starts at sample {self.start})")
        b, p = divmod(g - self.start, self.block)
        labels, ordinal = self._block(b)
        d = int(labels[p])
        n = self.offsets[d] + b * int(self.quotas[d]) + int(ordinal[p])
        e, i = divmod(n, self.rows[d])
        perm, offset = self._epoch(d, e)
        return d, offset + int(perm[i]) * self.seq_len

    def sample(self, g: int) -> np.ndarray:
        d, start = self.locate(g)
        return self.streams[d].read(start, self.seq_len + 1)

    def drawn(self, samples: int) -> list[int]:
        """Samples of each dataset among samples [0, samples) (>= `start`), earlier mixes' included."""
        full, part = divmod(samples - self.start, self.block)
        labels = self._block(full)[0][:part]
        return [off + full * int(q) + int(np.count_nonzero(labels == d))
                for d, (off, q) in enumerate(zip(self.offsets, self.quotas, strict=True))]

    def epoch_lines(self, samples: int) -> list[str]:
        """One line per dataset for a run's start-up header: its share of the samples (of a mix) and what samples
        [0, samples) draw of it, in tokens and epochs (an epoch: each of its rows once), noting where that repeats
        the data, and for a Hub id the commit prepared (training does not look for a newer one: `prepare` fetches
        it). From the counts at hand: no pass over the data."""
        lines = []
        for name, stream, rows, n, q in zip(self.names, self.streams, self.rows, self.drawn(samples), self.quotas,
                                            strict=True):
            e = n / rows  # an epoch reads `rows` windows, fewer tokens than the stream holds (its random offset)
            note = f"; the run sees each token about {n * self.seq_len / len(stream):.1f} times" if e > 1 else ""
            share = f"{q / self.block:.1%} of the samples, " if len(self.streams) > 1 else ""  # weights are relative
            skipped = skipped_rows(stream.index)
            commit = stream.index.get("commit")  # a Hub id: the commit prepare read, not looked up again here
            name = f"{name} ({stream.index['source']}@{commit[:12]}, as prepared)" if commit else name
            lines.append(f"data {name}: {share}draws {n * self.seq_len:,} of its {len(stream):,} tokens, "
                         f"{e:.2f} epochs{note}{'; ' + skipped if skipped else ''}")
        return lines


class SyntheticSampler:
    """Uniform random tokens, seeded per sample: for throughput runs where no dataset is at hand."""

    def __init__(self, vocab_size: int, seq_len: int, seed: int):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed
        self.names = ["synthetic"]

    def sample(self, g: int) -> np.ndarray:
        return np.random.default_rng([self.seed, g]).integers(0, self.vocab_size, self.seq_len + 1)


@dataclass(frozen=True)
class BatchPlan:
    """Which samples each rank and micro-step of a step reads: a contiguous slice of the step's batch.

    Steps count from `start_step`, before which `start_samples` samples were drawn (by default
    `start_step * global_batch`): a resume under another global batch continues at the checkpoint's
    sample count, so no sample is skipped or read twice."""

    global_batch: int
    micro_batch: int
    world_size: int = 1
    rank: int = 0
    start_step: int = 0
    start_samples: int | None = None

    def __post_init__(self) -> None:
        per_rank, rem = divmod(self.global_batch, self.world_size)
        if rem or per_rank % self.micro_batch:
            raise DataError(f"global_batch {self.global_batch} must be a multiple of micro_batch "
                            f"{self.micro_batch} x world_size {self.world_size}")

    @property
    def accum_steps(self) -> int:
        return self.global_batch // (self.world_size * self.micro_batch)

    def samples_before(self, step: int) -> int:
        """Samples drawn, over all ranks, before `step` (>= start_step)."""
        start = self.start_step * self.global_batch if self.start_samples is None else self.start_samples
        return start + (step - self.start_step) * self.global_batch

    def samples(self, step: int, micro: int) -> range:
        first = self.samples_before(step) + self.rank * (self.global_batch // self.world_size)
        first += micro * self.micro_batch
        return range(first, first + self.micro_batch)


def get_batch(sampler, plan: BatchPlan, step: int, micro: int) -> np.ndarray:
    """[micro_batch, seq_len+1] int64 tokens for (step, micro) of this rank."""
    return np.stack([sampler.sample(g) for g in plan.samples(step, micro)])


class Loader:
    """Yields (step, micro, inputs, labels) tensors from `start_step` on, prefetched by a thread.

    Inputs are tokens [:-1] and labels [1:] of each sample; on CUDA they go through pinned memory with
    non-blocking copies. `prefetch` micro-batches are read ahead while the GPU computes: by default a whole step
    and one more, as the Trainer takes all of a step's batches before its first forward.
    """

    def __init__(self, sampler, plan: BatchPlan, start_step: int, device: str = "cpu", prefetch: int | None = None):
        self.sampler, self.plan, self.step, self.device = sampler, plan, start_step, device
        self._queue: Queue = Queue(maxsize=prefetch or plan.accum_steps + 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        import torch

        step, pin = self.step, str(self.device).startswith("cuda")
        try:
            while True:
                for micro in range(self.plan.accum_steps):
                    t = torch.from_numpy(get_batch(self.sampler, self.plan, step, micro))
                    if not self._put((step, micro, t.pin_memory() if pin else t)):
                        return
                step += 1
        except Exception as e:  # surfaced to the training thread by __next__
            self._put(e)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def __iter__(self) -> Loader:
        return self

    def __next__(self):
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        step, micro, t = item
        t = t.to(self.device, non_blocking=True)
        return step, micro, t[:, :-1], t[:, 1:]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
