"""MinHash near-duplicate removal over a resumable store of per-shard signatures, optionally incremental.

Layout under the store's folder (the stage's workdir; for an incremental run, its index folder), one
folder per signature setting, banding and signing code, so none of them ever mixes:

    minhash-<params>-c<code>/params.json
    minhash-<params>-c<code>/index.parquet    incremental runs' index: id, shard, text_hash per kept doc
    minhash-<params>-c<code>/shards/<shard-key>/{ids.parquet, sig.npy, keys.npy, hashes.npy, offsets.npy, DONE}
    minhash-<params>-c<code>/shards/.tmp-texts-*.arrow    a shard's texts while it is signed (then deleted)
    clusters.parquet    (workdir) every doc of a multi-doc cluster: id, row, cluster, size, kept, indexed, ...
    pairs.parquet       (workdir) verified candidate pairs (id_a, id_b, jaccard)

<code> fingerprints what normalisation, shingling, hashing and banding make of a fixed multilingual probe
text, so a change to any of them (normalize.py, say) starts a new store rather than comparing new
signatures with stale ones; the old store is ignored with one warning line. A store of other banding
(another threshold) whose signatures are this one's (same num_perm, seed, ngram, shingle hash and code)
is kin: its shards are reused, their band keys made anew, not signed again. A shard's key hashes its ids
and texts, so a killed run skips the shards it finished.

Memory grows with the docs' ids and one band's keys, not with the texts or shingle sets: texts come in
pieces (a frame's slices, or chunks streamed from files by `commands.dedup_out_of_core`) and go to their
shard's arrow file, which the worker signing it reads; the stored arrays are memory-mapped when needed:
one band's keys at a time for the candidates (lsh.py), and the shingle sets of docs in candidate pairs
only, in bounded batches, for the exact Jaccard.

By default a run is a fresh dedup of its input: stored shards only save signing, and the same input and
config give the same output in a reused workdir as in a fresh one (`curate()`, `textbookgen dedup`).
An incremental run (`textbookgen dedup --index DIR`) also dedups its input against the documents that
earlier runs with the same index kept, and indexes the documents it keeps:
- an indexed document is never dropped; a new document in its cluster is ("near_duplicate_of_indexed");
- an input document with an indexed id and the same text (xxh3-128 of it) is that indexed document: kept;
- one with an indexed id and another text was rewritten: it is judged anew, never against its own old
  text, and replaces the old version in the index if kept (leaves the index if dropped), so the index
  holds one version per id, the newest kept one.
An index folder holds one index. A run with another threshold or banding takes it over from the kin
store that holds it (re-banding its shards); a run whose signatures cannot be compared with the indexed
ones (other num_perm, ngram, seed, shingle hash or signing code) is refused, never run against no index.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash

from textbookgen.curation.base import StageStats, Step, input_rows, progress, require_columns, worker_count
from textbookgen.curation.config import MinHashConfig
from textbookgen.curation.corpus_io import new_path
from textbookgen.curation.exact import best_first
from textbookgen.curation.lsh import band_keys, candidate_pairs, connected_components, verify_pairs
from textbookgen.curation.minhash import MinHasher, jaccard_sorted
from textbookgen.curation.normalize import word_shingles

log = logging.getLogger(__name__)
INDEX = "index.parquet"
LEGACY_INDEX = "published.parquet"  # the index's earlier name
SIGNATURE_FIELDS = ("num_perm", "seed", "ngram", "hash_name")  # the settings a signature depends on
INDEX_SCHEMA = {"id": pl.String, "shard": pl.String, "text_hash": pl.String}
JACCARD_BATCH = 1 << 23  # shingle hashes (32 MiB) read per batch of candidate pairs to verify

# the probe whose shingles fingerprint the signing code: accents, CJK with kana voicing marks (composed and
# not), Indic vowel signs and viramas, Arabic harakat, Hebrew points, Thai, Hangul, other digits, odd spaces,
# ligatures, variation selectors, emoji and code: any change to how one of them is normalised shows
PROBE = (
    "Crème brûlée à la façon d'Ångström: naïve Straße, İstanbul, ĲSSELMEER, Ǆ ﬁnal ½ ² e\u0301 a\u034fb. "
    "Ελληνικά Ὀδυσσεύς, Москва́ ёлка. 光合作用是植物利用光能把二氧化碳和水转化为葡萄糖的过程。"
    "東京は日本の首都です。がぎぐ か\u3099き\u309a ｶﾞｷﾞｸﾞ 한국어 텍스트. "
    "हिन्दी भाषा भारत की राजभाषा है। की के को का कि क़िला ०१२३. தமிழ் மொழி ภาษาไทย คือ. "
    "اللُّغَةُ العَرَبِيَّةُ جَمِيلَةٌ ١٢٣. שָׁלוֹם עוֹלָם. I ❤️ it 👍🏽 a\u00a0b\u2003c\u200bd\u200de 1998… 2,5 x_y "
    "def f(x_1):\n    return x_1 ** 2  # 3.14 != 42\n\tif (a && b) { printf(\"%d\\n\", i++); } <a href='#'>ok</a>"
)


@dataclass(frozen=True)
class SignParams:
    """What a store's files depend on: SIGNATURE_FIELDS and the signing code for its signatures and
    shingle sets, the banding too for its band keys (the threshold only affects verification)."""

    num_perm: int
    seed: int
    ngram: int
    bands: int
    rows: int
    hash_name: str
    code: str  # `code_fingerprint` of the signing code

    @classmethod
    def from_config(cls, cfg: MinHashConfig) -> SignParams:
        b, r = cfg.band_rows
        hasher = MinHasher(cfg.num_perm, cfg.seed, cfg.ngram, cfg.hash_name)
        return cls(cfg.num_perm, cfg.seed, cfg.ngram, b, r, cfg.hash_name, code_fingerprint(hasher, b, r))

    @property
    def setting(self) -> str:
        return f"minhash-p{self.num_perm}-s{self.seed}-n{self.ngram}-b{self.bands}x{self.rows}-{self.hash_name}"

    @property
    def tag(self) -> str:
        return f"{self.setting}-c{self.code}"


def code_fingerprint(hasher: MinHasher, bands: int, rows: int) -> str:
    """xxh3-64 of PROBE's shingles, signature and band keys, as signing makes them: it changes when the
    normalisation, the shingling, the hashing or the banding does, and with it the store's folder."""
    h = xxhash.xxh3_64()
    for shingle in word_shingles(PROBE, hasher.ngram):
        h.update(shingle + b"\0")
    sig = hasher.sign_many([PROBE], 1)[0]  # the path that signs shards
    h.update(sig[0].tobytes())
    h.update(band_keys(sig, bands, rows).tobytes())
    return h.hexdigest()


def shard_key(ids: Iterable[str], texts: Iterable[str], h: xxhash.xxh3_128 | None = None) -> str:
    """Content hash of a shard: same ids and texts -> same key -> reuse on resume. `h`: the hash of the
    shard's docs before these (a shard's key can be taken a piece at a time)."""
    h = h or xxhash.xxh3_128()
    for i, t in zip(ids, texts, strict=True):
        h.update(i.encode("utf-8", "surrogatepass") + b"\0" + t.encode("utf-8", "surrogatepass") + b"\1")
    return h.hexdigest()


def cut_shards(ids: pl.Series, texts: Iterable[pl.Series], size: int, spill: Path,
               on_texts: Callable[[pl.Series], None] | None = None) -> Iterator[tuple[str, list[str], Path]]:
    """(key, ids, texts file) of each `size` run of docs, as the texts come (Series of any length, in the
    order of `ids`). A shard's texts go to an arrow file under `spill` piece by piece, so no more than
    one piece is in memory and a worker gets a file name, not the texts; `on_texts` sees every piece."""
    start, held, writer, path, h = 0, 0, None, Path(), xxhash.xxh3_128()
    for chunk in texts:
        chunk = chunk.cast(pl.String)
        while chunk.len():
            if writer is None:
                fd, name = tempfile.mkstemp(prefix=".tmp-texts-", suffix=".arrow", dir=spill)
                os.close(fd)
                path, h, held = Path(name), xxhash.xxh3_128(), 0
                writer = pa.ipc.new_file(path, pa.schema([("text", chunk.to_arrow().type)]))
            piece, chunk = chunk.slice(0, size - held), chunk.slice(size - held)
            piece_ids = ids.slice(start + held, piece.len())
            if piece_ids.len() != piece.len():
                raise ValueError(f"more texts than the {ids.len()} ids")
            writer.write_table(pa.table({"text": piece.to_arrow()}))
            shard_key(piece_ids, piece, h)
            if on_texts:
                on_texts(piece)
            held += piece.len()
            if held == size:
                writer.close()
                writer = None
                yield h.hexdigest(), ids.slice(start, held).to_list(), path
                start += held
    if writer is not None:  # the last shard, shorter than `size`
        writer.close()
        yield h.hexdigest(), ids.slice(start, held).to_list(), path
        start += held
    if start != ids.len():
        raise ValueError(f"{start} texts for {ids.len()} ids")


def content_hashes(texts: Iterable[str]) -> list[str]:
    """xxh3-128 of each text: an input doc with an indexed id and the same hash is that indexed doc."""
    return [xxhash.xxh3_128_hexdigest(t.encode("utf-8", "surrogatepass")) for t in texts]


def _noted(shards: Iterable[tuple[str, list[str], Path]], into: list[tuple[str, int]]
           ) -> Iterator[tuple[str, list[str], Path]]:
    """The shards, appending each one's (key, docs) to `into` as it passes."""
    for key, ids, texts_file in shards:
        into.append((key, len(ids)))
        yield key, ids, texts_file


def sign_shard(shard_dir: str, ids: list[str], texts_file: str, hasher: MinHasher, params: SignParams) -> str:
    """Compute and store one shard (signatures, band keys, shingle hash sets) from its texts' arrow file
    (see `cut_shards`), which it deletes; atomic via rename. Texts are read a record batch at a time
    from the memory-mapped file; `hasher` comes made (a worker need not import datasketch for it)."""
    final = Path(shard_dir)
    if (final / "DONE").exists():
        Path(texts_file).unlink(missing_ok=True)
        return shard_dir
    with pa.memory_map(texts_file) as source:
        reader = pa.ipc.open_file(source)
        batches = [reader.get_batch(b) for b in range(reader.num_record_batches)]  # views of the map
        if sum(b.num_rows for b in batches) != len(ids):
            raise ValueError(f"{texts_file}: {sum(b.num_rows for b in batches)} texts for {len(ids)} ids")
        texts = itertools.chain.from_iterable(b.column(0).to_pylist() for b in batches)
        sig, hashes, offsets = hasher.sign_many(texts, len(ids))
        del batches

    def write(tmp: Path) -> None:
        pl.DataFrame({"id": ids}, schema={"id": pl.String}).write_parquet(tmp / "ids.parquet")
        np.save(tmp / "sig.npy", sig)
        np.save(tmp / "keys.npy", band_keys(sig, params.bands, params.rows))
        np.save(tmp / "hashes.npy", hashes)
        np.save(tmp / "offsets.npy", offsets)

    store_shard(final, write)
    Path(texts_file).unlink(missing_ok=True)
    return shard_dir


def store_shard(final: Path, write: Callable[[Path], None]) -> None:
    """A shard's files written by `write(folder)` into a new folder, then renamed to `final` with its DONE
    marker: a killed run leaves no half shard under the final name (one without DONE is replaced)."""
    tmp = new_path(final.parent, ".tmp-", directory=True)
    write(tmp)
    (tmp / "DONE").write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _link(src: Path, dst: Path) -> None:
    """`dst` as a hard link to `src` (stored files are never rewritten in place), or a copy where links fail."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _index_file(store: Path) -> Path | None:
    return next((f for f in (store / INDEX, store / LEGACY_INDEX) if f.exists()), None)


def _count_rows(parquet: Path) -> int:
    return pl.scan_parquet(parquet).select(pl.len()).collect().item()


def _stored_params(store: Path) -> dict | None:
    """The settings a store was made with (its params.json), or None if unreadable."""
    try:
        return json.loads((store / "params.json").read_text())
    except (OSError, ValueError):
        return None


def _stores(folder: Path) -> list[Path]:
    return sorted(d for d in folder.glob("minhash-*") if d.is_dir())


def is_kin(store: Path, params: SignParams, hasher: MinHasher) -> bool:
    """Whether `store` holds the signatures and shingle sets of a store of `params`, only banded
    otherwise: the same SIGNATURE_FIELDS, and signed by this code (`hasher`'s: its code fingerprint is
    the one this code gives at its banding)."""
    theirs = _stored_params(store)
    if theirs is None or any(theirs.get(k) != getattr(params, k) for k in SIGNATURE_FIELDS):
        return False
    try:
        return theirs.get("code") == code_fingerprint(hasher, theirs["bands"], theirs["rows"])
    except (KeyError, TypeError, ValueError):  # a params.json of another layout
        return False


def index_source(folder: Path, params: SignParams, hasher: MinHasher) -> Path | None:
    """The store in `folder` whose index a store of `params` takes over: a kin one (`is_kin`) made with
    another threshold; None if no other store holds an index. Raises, naming the index, its documents and
    its settings, where a run with `params` cannot use the folder's index: it was signed otherwise, or
    the folder holds several (left apart by runs before this check)."""
    mine = folder / params.tag
    held = [d for d in _stores(folder) if _index_file(d) is not None]
    if not held or held == [mine]:
        return None
    docs = {d: _count_rows(_index_file(d)) for d in held}  # type: ignore[arg-type]
    if len(held) > 1:
        listed = "; ".join(f"{d.name}: {n} documents" for d, n in docs.items())
        raise ValueError(f"{folder}: holds {len(held)} indexes ({listed}), each made with other MinHash settings, "
                         f"and a run dedups against one: move all but one out of {folder}")
    (source,) = held
    if (source / INDEX).exists() and is_kin(source, params, hasher):
        return source
    theirs = _stored_params(source) or {}
    differ = [f"{k}={getattr(params, k)}" for k in SIGNATURE_FIELDS if theirs.get(k) != getattr(params, k)]
    why = f"this run's {', '.join(differ)}" if differ else "this textbookgen's text normalisation/shingling code"
    raise ValueError(f"{folder}: its index holds {docs[source]} documents signed with {_describe(theirs)} "
                     f"({source.name}), which {why} cannot compare with: rerun with those settings, or give "
                     "another index folder to start a new index")


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={params.get(k)}" for k in SIGNATURE_FIELDS) + f", bands={params.get('bands')}x" \
        f"{params.get('rows')}"


@dataclass(frozen=True)
class Segment:
    """Docs of one stored shard in a `StoreView`: `rows` of the shard (None: all), from view index `start`."""

    shard: Path
    rows: np.ndarray | None
    start: int


class StoreView:
    """This run's docs and the indexed ones in one index space, over the shards' files: ids and which
    docs are current (part of this run's input) and indexed (kept by an earlier incremental run) are in
    memory; band keys and shingle hash sets are memory-mapped from the shards when asked for."""

    def __init__(self, segments: list[Segment], ids: pl.Series, current: np.ndarray, indexed: np.ndarray,
                 bands: int) -> None:
        self.segments, self.ids, self.current, self.indexed, self.bands = segments, ids, current, indexed, bands
        self.starts = np.array([seg.start for seg in segments], dtype=np.int64)

    def __len__(self) -> int:
        return self.ids.len()

    def band_keys(self, band: int) -> np.ndarray:
        """Every doc's key in one band (8 bytes a doc)."""
        out = np.empty(len(self), dtype=np.uint64)
        for seg in self.segments:
            keys = np.load(seg.shard / "keys.npy", mmap_mode="r")
            col = keys[:, band] if seg.rows is None else keys[seg.rows, band]
            out[seg.start : seg.start + col.shape[0]] = col
        return out

    def _locate(self, docs: np.ndarray) -> Iterator[tuple[Segment, np.ndarray, np.ndarray]]:
        """(segment, docs in it, their rows in its shard) for sorted distinct view indices."""
        which = np.searchsorted(self.starts, docs, side="right") - 1
        for s in np.unique(which):
            seg, mine = self.segments[s], docs[which == s]
            local = mine - seg.start
            yield seg, mine, local if seg.rows is None else seg.rows[local]

    def set_sizes(self, docs: np.ndarray) -> np.ndarray:
        """Number of distinct shingle hashes of each of `docs` (sorted distinct view indices)."""
        out = np.empty(docs.size, dtype=np.int64)
        at = 0
        for seg, mine, rows in self._locate(docs):
            offsets = np.load(seg.shard / "offsets.npy", mmap_mode="r")
            out[at : at + mine.size] = offsets[rows + 1] - offsets[rows]
            at += mine.size
        return out

    def shingle_sets(self, docs: np.ndarray) -> dict[int, np.ndarray]:
        """The sorted distinct shingle hashes of `docs` (sorted distinct view indices), copied out of the
        memory-mapped shards so that no mapping outlives the call."""
        out = {}
        for seg, mine, rows in self._locate(docs):
            offsets = np.load(seg.shard / "offsets.npy", mmap_mode="r")
            hashes = np.load(seg.shard / "hashes.npy", mmap_mode="r")
            for d, lo, hi in zip(mine.tolist(), offsets[rows].tolist(), offsets[rows + 1].tolist(), strict=True):
                out[d] = np.array(hashes[lo:hi])
        return out

    def jaccards(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Exact Jaccard of each pair (a[i], b[i]) of view indices; the shingle sets are read in batches
        of at most JACCARD_BATCH hashes (a doc in many pairs counted each time), so memory stays flat."""
        out = np.empty(a.size, dtype=np.float64)
        if a.size == 0:
            return out
        docs = np.unique(np.concatenate([a, b]))
        sizes = self.set_sizes(docs)
        cost = np.cumsum(sizes[np.searchsorted(docs, a)] + sizes[np.searchsorted(docs, b)])
        cuts = np.searchsorted(cost, np.arange(JACCARD_BATCH, cost[-1], JACCARD_BATCH), side="right")
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), a.size], strict=True):
            if lo == hi:
                continue
            sets = self.shingle_sets(np.unique(np.concatenate([a[lo:hi], b[lo:hi]])))
            out[lo:hi] = [jaccard_sorted(sets[x], sets[y]) for x, y in zip(a[lo:hi].tolist(), b[lo:hi].tolist(),
                                                                          strict=True)]
        return out


class MinHashStore:
    """The per-shard signature store of one signature setting, banding and signing code."""

    def __init__(self, root: Path, params: SignParams, incremental: bool = False) -> None:
        """`incremental`: the run uses the folder's index, which this store takes over from a kin store
        (see `index_source`; a folder whose index this run cannot use raises before anything is made)."""
        self.params = params
        self.hasher = MinHasher(params.num_perm, params.seed, params.ngram, params.hash_name)  # type: ignore[arg-type]
        self.root = Path(root) / params.tag
        self.shards = self.root / "shards"
        source = index_source(Path(root), params, self.hasher) if incremental else None
        self.kin = [d for d in _stores(Path(root)) if d != self.root and is_kin(d, params, self.hasher)]
        self.ignored = [] if self.root.exists() else self._other_code_stores()
        self.shards.mkdir(parents=True, exist_ok=True)
        for stale in self.shards.glob(".tmp-*"):  # half-written shards and texts files of a killed run
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        meta = self.root / "params.json"
        if not meta.exists():
            meta.write_text(json.dumps(params.__dict__, indent=2) + "\n")
        if source is not None:
            self._take_index(source)

    def done(self, key: str) -> bool:
        return (self.shards / key / "DONE").exists()

    def _take_index(self, source: Path) -> None:
        """Move the index of `source`, a kin store, here (a run with another threshold): first each shard
        of its indexed docs, re-banded (`_reband`), so that a killed run loses nothing."""
        for key in pl.read_parquet(source / INDEX, columns=["shard"])["shard"].unique().sort():
            if not self.done(key) and (source / "shards" / key / "DONE").exists():
                self._reband(source, key)
        os.replace(source / INDEX, self.root / INDEX)
        log.info(f"minhash: index moved from {source.name} to {self.root.name} (same signatures, other banding)")

    def _reband(self, source: Path, key: str) -> None:
        """Store shard `key` of the kin store `source` here: its ids, signatures and shingle sets linked,
        its band keys made for this banding (a fraction of signing it)."""
        src = source / "shards" / key

        def write(tmp: Path) -> None:
            for name in ("ids.parquet", "sig.npy", "hashes.npy", "offsets.npy"):
                _link(src / name, tmp / name)
            np.save(tmp / "keys.npy", band_keys(np.load(src / "sig.npy"), self.params.bands, self.params.rows))

        store_shard(self.shards / key, write)

    def _stored(self, key: str) -> bool:
        """Whether shard `key` is stored here, after re-banding it from a kin store that has it."""
        if self.done(key):
            return True
        source = next((d for d in self.kin if (d / "shards" / key / "DONE").exists()), None)
        if source is not None:
            self._reband(source, key)
        return source is not None

    def add(self, shards: Iterable[tuple[str, list[str], Path]], total: int, workers: int,
            on_shard: Callable[[str], None] | None = None) -> list[str]:
        """Sign the shards (key, ids, texts file: see `cut_shards`) not yet stored, in `workers` processes,
        taking them as they come; returns the keys signed now (`total`: the number of shards, for progress)."""
        todo = self._todo(shards)
        if workers <= 1 or total <= 1:
            results = (sign_shard(str(self.shards / k), ids, str(f), self.hasher, self.params) for k, ids, f in todo)
        else:
            results = self._parallel(todo, min(workers, total))
        signed = []
        for path in progress(results, total, "MinHash shards", min_total=2):
            signed.append(Path(path).name)
            if on_shard:
                on_shard(signed[-1])
        return signed

    def _todo(self, shards: Iterable[tuple[str, list[str], Path]]) -> Iterator[tuple[str, list[str], Path]]:
        for key, ids, texts_file in shards:
            if self._stored(key):
                texts_file.unlink(missing_ok=True)
            else:
                yield key, ids, texts_file

    def _parallel(self, todo: Iterator[tuple[str, list[str], Path]], workers: int) -> Iterator[str]:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            running: set = set()
            for k, ids, f in todo:
                running.add(pool.submit(sign_shard, str(self.shards / k), ids, str(f), self.hasher, self.params))
                if len(running) > workers:
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in finished)
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in finished)

    def _other_code_stores(self) -> list[Path]:
        """Stores of this setting made by other signing code (looked for as this one is made): never read."""
        setting = self.params.setting
        return [old for old in sorted(self.root.parent.glob(f"{setting}*")) if old.is_dir()
                and (old.name == setting or old.name.startswith(f"{setting}-c"))]

    def note_ignored(self) -> None:
        """One warning line per ignored store (an incremental run never ignores one holding its index)."""
        for old in self.ignored:
            log.warning(f"minhash: ignoring {old}: other text normalisation/shingling code signed it; "
                        f"signing anew into {self.root.name}")

    def index(self) -> pl.DataFrame:
        """The incremental index (id, shard, text_hash): one row per doc that earlier runs kept."""
        path = self.root / INDEX
        return pl.read_parquet(path) if path.exists() else pl.DataFrame(schema=INDEX_SCHEMA)

    def publish(self, kept: pl.DataFrame, current_ids: pl.Series) -> None:
        """Record a run's outcome: its input's docs were judged anew, so of those only the kept stay, each
        as the version this run signed (id, shard, text_hash); other docs keep their entries."""
        index = pl.concat([self.index().filter(~pl.col("id").is_in(current_ids.implode())),
                           kept.select(list(INDEX_SCHEMA))]).sort("id")
        tmp = self.root / f".{INDEX}.tmp"
        index.write_parquet(tmp)
        os.replace(tmp, self.root / INDEX)

    def view(self, current: list[tuple[str, int]], current_ids: pl.Series, indexed: pl.DataFrame) -> StoreView:
        """The current shards (key, docs), whose ids are `current_ids`, in order, then the `indexed` docs
        (id, shard) absent from them, each read from the shard holding its indexed version; an `indexed` id
        among the current docs marks that doc."""
        segments, start = [], 0
        for key, n in current:
            segments.append(Segment(self.shards / key, None, start))
            start += n
        ids = [current_ids]
        others = indexed.filter(~pl.col("id").is_in(current_ids.implode()))
        for (key,), group in sorted(others.group_by("shard"), key=lambda g: str(g[0][0])):
            shard = self.shards / str(key)
            if not (shard / "DONE").exists():
                raise ValueError(f"{self.root / INDEX}: indexes {group.height} document(s) signed in "
                                 f"{shard}, which is missing; restore it or start a new index")
            shard_ids = pl.read_parquet(shard / "ids.parquet")["id"]
            keep = shard_ids.is_in(group["id"].implode())
            rows = np.flatnonzero(keep.to_numpy())
            segments.append(Segment(shard, rows, start))
            start += rows.size
            ids.append(shard_ids.filter(keep))
        all_ids = pl.concat(ids).rename("id")
        current = np.arange(all_ids.len()) < current_ids.len()
        flags = all_ids.is_in(indexed["id"].implode()).to_numpy()
        return StoreView(segments, all_ids, current, flags, self.params.bands)


def entries_in_force(index: pl.DataFrame, docs: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """The index entries a run uses, and how many input docs were rewritten: an entry stands for a doc
    absent from the input, or for an input doc given with its indexed text (`docs`: id, text_hash); an
    entry whose id comes with another text is superseded, so a doc is never compared with its old self."""
    absent = index.join(docs, on="id", how="anti")
    same = index.join(docs, on=["id", "text_hash"], how="semi")
    rewritten = index.join(docs, on="id", how="semi").height - same.height
    return pl.concat([absent, same]), rewritten


class MinHashDedup(Step):
    """Drop near-duplicates: LSH candidates, exact-Jaccard check, union-find, keep the best member."""

    name = "minhash_dedup"

    def __init__(self, config: MinHashConfig | None = None, text_column: str = "text", id_column: str = "id",
                 on_shard: Callable[[str], None] | None = None, incremental: bool = False,
                 index: Path | str | None = None) -> None:
        """`incremental`: dedup against the docs that earlier incremental runs kept, whose signatures are
        in the store under `index` (default: the workdir); giving an `index` makes the run incremental."""
        self.config = config or MinHashConfig()
        self.text_column, self.id_column = text_column, id_column
        self.on_shard = on_shard
        self.index = Path(index) if index is not None else None
        self.incremental = incremental or self.index is not None

    def fingerprint(self) -> str | None:
        """The settings; None for an incremental run, whose output also depends on what its index holds."""
        if self.incremental:
            return None
        return f"{self.name} {self.config.model_dump_json()} {self.text_column} {self.id_column}"

    def check_index(self) -> None:
        """Raise now, before any work, if this run cannot use its index folder (see `index_source`)."""
        if self.index is not None and self.index.is_dir():
            cfg = self.config
            index_source(self.index, SignParams.from_config(cfg), MinHasher(cfg.num_perm, cfg.seed, cfg.ngram,
                                                                               cfg.hash_name))

    def _duplicate_ids(self, ids: pl.Series, rows: pl.Series) -> ValueError:
        """The error for ids given to more than one document (shards numbered from 0 each): how many, the first
        one and the input rows (`rows`, shown from 1, in corpus order) that share it, and the way out."""
        shared = ids.is_duplicated()
        first = ids.filter(shared)[0]
        rows = rows.filter(ids == first) + 1
        return ValueError(f"{self.name}: {ids.filter(shared).n_unique()} ids of column {self.id_column!r} are given "
                          f"to more than one document (the first: {first!r}, at rows {rows[0]} and {rows[1]}); ids "
                          "must be unique: fix them, or pass --id-column naming a field the files lack to have "
                          "<file>:<row> ids made up")

    def run(self, df: pl.DataFrame, workdir: Path | None, stats: StageStats) -> pl.DataFrame:
        require_columns(df, [self.text_column, self.id_column], self.name)
        texts, size = df[self.text_column], self.config.shard_size
        chunks = (texts.slice(s, size) for s in range(0, df.height, size))
        quality = df["quality_score"] if "quality_score" in df.columns else None
        return df.filter(self.dedup(df[self.id_column], chunks, quality, workdir, stats, input_rows(df)))

    def dedup(self, ids: pl.Series, texts: Iterable[pl.Series], quality: pl.Series | None, workdir: Path | None,
              stats: StageStats, rows: pl.Series | None = None) -> np.ndarray:
        """Which docs to keep (a mask), given their `ids` (of any type; compared and reported as strings),
        their `texts` in the same order in Series of any length, taken once, their `quality` scores
        (None: none) and their `rows` in the input, as the reports name them (`input_rows`; None: their
        positions); counts go to `stats`.

        Memory: the ids and a few bytes a doc, one piece of texts, one band's keys (see the module doc)."""
        ids = ids.cast(pl.String)
        rows = rows if rows is not None else pl.int_range(ids.len(), eager=True)
        if ids.n_unique() != ids.len():
            raise self._duplicate_ids(ids, rows)
        cfg = self.config
        params = SignParams.from_config(cfg)
        tmp = None
        if workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="textbookgen-minhash-")
            workdir = Path(tmp.name)
        try:
            store = MinHashStore(self.index or workdir, params, self.incremental)
            store.note_ignored()
            shards: list[tuple[str, int]] = []  # (key, docs) in order, as they are cut
            hashes: list[pl.Series] = []  # incremental: the texts' content hashes, a piece at a time
            on_texts = (lambda piece: hashes.append(pl.Series(content_hashes(piece), dtype=pl.String))) \
                if self.incremental else None
            cut = cut_shards(ids, texts, cfg.shard_size, store.shards, on_texts)
            total = -(-ids.len() // cfg.shard_size)
            signed = store.add(_noted(cut, shards), total, worker_count(cfg.workers), self.on_shard)
            docs = self._docs(ids, hashes, shards) if self.incremental else None
            indexed, rewritten = entries_in_force(store.index(), docs) if docs is not None else \
                (pl.DataFrame(schema=INDEX_SCHEMA), 0)
            view = store.view(shards, ids, indexed)
            inputs = pl.DataFrame({"id": ids, "row": rows,
                                   "quality_score": quality if quality is not None else
                                   pl.repeat(None, ids.len(), dtype=pl.Float64, eager=True)},
                                  schema={"id": pl.String, "row": pl.Int64, "quality_score": pl.Float64})
            kept, clusters, pairs = self._cluster(view, inputs)
            if docs is not None:
                store.publish(docs.filter(kept), ids)
            clusters.write_parquet(workdir / "clusters.parquet")
            pairs.write_parquet(workdir / "pairs.parquet")
        finally:
            if tmp is not None:
                tmp.cleanup()
        dropped = clusters.filter(~pl.col("kept") & (pl.col("source") == "current"))
        vs_indexed = dropped.filter(pl.col("cluster_has_indexed")).height
        stats.dropped["near_duplicate"] = dropped.height - vs_indexed
        if vs_indexed:
            stats.dropped["near_duplicate_of_indexed"] = vs_indexed
        stats.extra.update({
            "bands": params.bands, "rows": params.rows, "threshold": cfg.threshold,
            "lsh_threshold": round(cfg.lsh_threshold, 4), "shards": len(shards), "shards_signed": len(signed),
            "indexed_docs": int((~view.current).sum()), "verified_pairs": pairs.height,
            "clusters": clusters["cluster"].n_unique() if clusters.height else 0,
        })
        if self.incremental:  # input docs that are indexed ones (kept), and those given with a new text
            stats.extra.update(already_indexed=int((view.current & view.indexed).sum()), rewritten=rewritten)
        return kept

    @staticmethod
    def _docs(ids: pl.Series, hashes: list[pl.Series], shards: list[tuple[str, int]]) -> pl.DataFrame:
        """(id, text_hash, shard) of each input doc: what the index records of those this run keeps."""
        keys = pl.Series([k for k, _ in shards], dtype=pl.String)
        return pl.DataFrame({"id": ids, "text_hash": pl.concat(hashes) if hashes else pl.Series([], dtype=pl.String),
                             "shard": keys.gather(np.repeat(np.arange(len(shards)), [n for _, n in shards]))},
                            schema=INDEX_SCHEMA)

    def _cluster(self, view: StoreView, inputs: pl.DataFrame) -> tuple[np.ndarray, pl.DataFrame, pl.DataFrame]:
        """Verified pairs -> clusters -> the kept mask of this input, the cluster table and the pairs; `inputs`:
        (id, row, quality_score) of this run's docs."""
        cands = candidate_pairs(len(view), view.band_keys, view.bands)
        pairs = verify_pairs(cands, view.jaccards, self.config.threshold) if self.config.verify else \
            cands.with_columns(pl.lit(None, dtype=pl.Float64).alias("jaccard"))
        labels = connected_components(len(view), pairs)
        clusters = cluster_table(view, labels, inputs)
        n_current = int(view.current.sum())
        dropped = clusters.filter(~pl.col("kept"))["id"]
        kept = ~view.ids.slice(0, n_current).is_in(dropped.implode()).to_numpy()
        pair_table = pl.DataFrame({"id_a": view.ids.gather(pairs["a"]), "id_b": view.ids.gather(pairs["b"]),
                                   "jaccard": pairs["jaccard"]},
                                  schema={"id_a": pl.String, "id_b": pl.String, "jaccard": pl.Float64})
        return kept, clusters, pair_table


def cluster_table(view: StoreView, labels: np.ndarray, inputs: pl.DataFrame) -> pl.DataFrame:
    """One row per doc in a multi-doc cluster: which member is kept and how similar the others are, and
    for this run's docs their row in the input (`inputs`: id, row, quality_score; null for indexed docs).

    The kept member is an indexed doc if the cluster has one (it is already published), else the one
    with the highest quality_score, then the first in input order (`best_first`); `cluster` is its id.
    Every indexed doc is kept (two can meet through a new doc near both). `source`: "current" (this run's
    input) or "indexed"."""
    n = len(view)
    in_cluster = np.flatnonzero(np.bincount(labels, minlength=n)[labels] > 1)
    members = pl.DataFrame({
        "id": view.ids.gather(in_cluster), "doc": in_cluster,
        "label": labels[in_cluster], "current": view.current[in_cluster], "indexed": view.indexed[in_cluster],
    }, schema={"id": pl.String, "doc": pl.Int64, "label": pl.Int64, "current": pl.Boolean, "indexed": pl.Boolean})
    members = members.join(inputs, on="id", how="left")
    ranked = best_first(members, "doc").sort(["label", "indexed"], descending=[False, True], maintain_order=True)
    first = ranked.group_by("label", maintain_order=True).first().select(
        "label", pl.col("id").alias("cluster"), pl.col("doc").alias("kept_doc"))
    clusters = members.join(first, on="label").with_columns(
        pl.len().over("label").alias("size"),
        ((pl.col("doc") == pl.col("kept_doc")) | pl.col("indexed")).alias("kept"),
        pl.col("indexed").any().over("label").alias("cluster_has_indexed"),
        pl.when(pl.col("current")).then(pl.lit("current")).otherwise(pl.lit("indexed")).alias("source"))
    jk = view.jaccards(clusters["doc"].to_numpy(), clusters["kept_doc"].to_numpy())
    return (clusters.with_columns(pl.Series("jaccard_to_kept", jk, dtype=pl.Float64))
            .select("id", "row", "cluster", "size", "kept", "indexed", "jaccard_to_kept", "source",
                    "cluster_has_indexed", "quality_score")
            .sort(["cluster", "kept", "id"], descending=[False, True, False]))
