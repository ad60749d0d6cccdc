"""MinHash near-duplicate removal over a resumable, incremental store of per-shard signatures.

Layout under the stage's workdir (one folder per signature setting, so settings never mix):

    minhash-<params>/params.json
    minhash-<params>/published.parquet   ids kept by earlier incremental runs (the "indexed" docs)
    minhash-<params>/shards/<shard-key>/{ids.parquet, sig.npy, keys.npy, hashes.npy, offsets.npy, DONE}
    clusters.parquet    every doc of a multi-doc cluster: id, cluster, size, kept, jaccard_to_kept, source
    pairs.parquet       verified candidate pairs (id_a, id_b, jaccard)

A shard's key hashes its ids and texts, so a killed run skips the shards it finished. Incremental runs
(`textbookgen dedup` into one workdir, batch after batch) also dedup new documents against those that
earlier runs kept: "indexed" docs are never dropped; a new doc in their cluster is. Only kept docs are
indexed, and a doc given again is judged anew. `curate()` is not incremental: it always gets the whole
corpus, so old shards only save signing, and the same input and config give the same output in a
reused workdir as in a fresh one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import polars as pl
import xxhash

from textbookgen.curation.base import StageStats, Step, progress, require_columns
from textbookgen.curation.config import MinHashConfig
from textbookgen.curation.exact import best_first
from textbookgen.curation.lsh import (
    band_frame,
    band_keys,
    candidate_pairs,
    connected_components,
    verify_pairs,
)
from textbookgen.curation.minhash import MinHasher, jaccard_sorted


@dataclass(frozen=True)
class SignParams:
    """What a stored signature depends on (the threshold does not: it only affects verification)."""

    num_perm: int
    seed: int
    ngram: int
    bands: int
    rows: int
    hash_name: str = "xxh32"

    @classmethod
    def from_config(cls, cfg: MinHashConfig) -> SignParams:
        b, r = cfg.band_rows
        return cls(cfg.num_perm, cfg.seed, cfg.ngram, b, r, cfg.hash_name)

    @property
    def tag(self) -> str:
        return f"minhash-p{self.num_perm}-s{self.seed}-n{self.ngram}-b{self.bands}x{self.rows}-{self.hash_name}"


def shard_key(ids: list[str], texts: list[str]) -> str:
    """Content hash of a shard: same ids and texts -> same key -> reuse on resume."""
    h = xxhash.xxh3_128()
    for i, t in zip(ids, texts, strict=True):
        h.update(i.encode("utf-8", "surrogatepass") + b"\0" + t.encode("utf-8", "surrogatepass") + b"\1")
    return h.hexdigest()


def sign_shard(shard_dir: str, ids: list[str], texts: list[str], params: SignParams) -> str:
    """Compute and store one shard (signatures, band keys, shingle hash sets); atomic via rename."""
    final = Path(shard_dir)
    if (final / "DONE").exists():
        return shard_dir
    hasher = MinHasher(params.num_perm, params.seed, params.ngram, params.hash_name)  # type: ignore[arg-type]
    sig = np.empty((len(texts), params.num_perm), dtype=np.uint32)
    sets, offsets = [], np.zeros(len(texts) + 1, dtype=np.int64)
    for i, text in enumerate(texts):
        sig[i], uniq = hasher.sign(text)
        sets.append(uniq)
        offsets[i + 1] = offsets[i] + uniq.size
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    pl.DataFrame({"id": ids}, schema={"id": pl.String}).write_parquet(tmp / "ids.parquet")
    np.save(tmp / "sig.npy", sig)
    np.save(tmp / "keys.npy", band_keys(sig, params.bands, params.rows))
    np.save(tmp / "hashes.npy", np.concatenate(sets) if sets else np.zeros(0, dtype=np.uint32))
    np.save(tmp / "offsets.npy", offsets)
    (tmp / "DONE").write_text("ok\n")
    if final.exists():  # a half-written shard from a killed run (no DONE): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    return shard_dir


@dataclass
class LoadedStore:
    """All shards' docs in one index space: ids, band keys, shingle hash sets, and which are current."""

    ids: list[str]
    keys: np.ndarray
    hashes: np.ndarray
    offsets: np.ndarray
    current: np.ndarray  # bool per doc: part of this run's input (False: indexed by an earlier run)

    def jaccard(self, a: int, b: int) -> float:
        o = self.offsets
        return jaccard_sorted(self.hashes[o[a] : o[a + 1]], self.hashes[o[b] : o[b + 1]])


class MinHashStore:
    """The per-shard signature store of one signature setting."""

    def __init__(self, root: Path, params: SignParams) -> None:
        self.params = params
        self.root = Path(root) / params.tag
        self.shards = self.root / "shards"
        self.shards.mkdir(parents=True, exist_ok=True)
        for stale in self.shards.glob(".tmp-*"):  # half-written shards of a killed run
            shutil.rmtree(stale, ignore_errors=True)
        meta = self.root / "params.json"
        if not meta.exists():
            meta.write_text(json.dumps(params.__dict__, indent=2) + "\n")

    def done(self, key: str) -> bool:
        return (self.shards / key / "DONE").exists()

    def add(self, shards: list[tuple[str, Callable[[], tuple[list[str], list[str]]]]], workers: int,
            on_shard: Callable[[str], None] | None = None) -> list[str]:
        """Sign the shards not yet stored, in `workers` processes; returns the keys signed now.

        Each shard is (key, load) where load() gives its (ids, texts): texts are materialised one
        shard at a time and at most `workers + 1` shards are in flight, so memory stays flat."""
        todo = [(k, load) for k, load in shards if not self.done(k)]
        if workers <= 1 or len(todo) <= 1:
            results = (sign_shard(str(self.shards / k), *load(), self.params) for k, load in todo)
        else:
            results = self._parallel(todo, workers)
        for path in progress(results, len(todo), "MinHash shards", min_total=2):
            if on_shard:
                on_shard(Path(path).name)
        return [k for k, _ in todo]

    def _parallel(self, todo: list, workers: int) -> Iterator[str]:
        pending = iter(todo)
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
            running = set()
            for _ in range(min(workers + 1, len(todo))):
                k, load = next(pending)
                running.add(pool.submit(sign_shard, str(self.shards / k), *load(), self.params))
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    nxt = next(pending, None)
                    if nxt is not None:
                        running.add(pool.submit(sign_shard, str(self.shards / nxt[0]), *nxt[1](), self.params))
                    yield f.result()

    @property
    def _published_path(self) -> Path:
        return self.root / "published.parquet"

    def published(self) -> set[str]:
        """Ids that earlier incremental runs kept (empty before the first one)."""
        path = self._published_path
        return set(pl.read_parquet(path)["id"].to_list()) if path.exists() else set()

    def publish(self, kept_ids: list[str], current_ids: set[str]) -> None:
        """Record this run's outcome: its input's ids are judged anew, so only those it kept stay."""
        ids = sorted((self.published() - current_ids) | set(kept_ids))
        tmp = self.root / ".published.parquet.tmp"
        pl.DataFrame({"id": ids}, schema={"id": pl.String}).write_parquet(tmp)
        os.replace(tmp, self._published_path)

    def load(self, current_keys: list[str], indexed_ids: set[str]) -> LoadedStore:
        """Current shards first (in order), then the `indexed_ids` docs of every other finished shard."""
        others = sorted(p.name for p in self.shards.iterdir()
                        if p.is_dir() and not p.name.startswith(".") and (p / "DONE").exists()
                        and p.name not in set(current_keys)) if indexed_ids else []
        ids, keys, sets, offs, current = [], [], [], [np.zeros(1, dtype=np.int64)], []
        base = 0
        for key in list(current_keys) + others:
            d = self.shards / key
            shard_ids = pl.read_parquet(d / "ids.parquet")["id"].to_list()
            k, h, o = np.load(d / "keys.npy"), np.load(d / "hashes.npy"), np.load(d / "offsets.npy")
            is_current = key in current_keys
            keep = np.ones(len(shard_ids), dtype=bool) if is_current else \
                np.array([i in indexed_ids for i in shard_ids], dtype=bool)
            lengths = np.diff(o)
            sets.append(h if keep.all() else h[np.repeat(keep, lengths)])
            offs.append(base + np.cumsum(lengths[keep]))
            base += int(lengths[keep].sum())
            ids.extend(i for i, kk in zip(shard_ids, keep, strict=True) if kk)
            keys.append(k[keep])
            current.append(np.full(int(keep.sum()), is_current))
        b = self.params.bands
        return LoadedStore(
            ids=ids,
            keys=np.concatenate(keys) if keys else np.zeros((0, b), dtype=np.uint64),
            hashes=np.concatenate(sets) if sets else np.zeros(0, dtype=np.uint32),
            offsets=np.concatenate(offs),
            current=np.concatenate(current) if current else np.zeros(0, dtype=bool),
        )


class MinHashDedup(Step):
    """Drop near-duplicates: LSH candidates, exact-Jaccard check, union-find, keep the best member."""

    name = "minhash_dedup"

    def __init__(self, config: MinHashConfig | None = None, text_column: str = "text", id_column: str = "id",
                 on_shard: Callable[[str], None] | None = None, incremental: bool = True) -> None:
        self.config = config or MinHashConfig()
        self.text_column, self.id_column = text_column, id_column
        self.on_shard = on_shard
        self.incremental = incremental  # dedup against docs kept by earlier runs in the same workdir

    def run(self, df: pl.DataFrame, workdir: Path | None, stats: StageStats) -> pl.DataFrame:
        require_columns(df, [self.text_column, self.id_column], self.name)
        if df[self.id_column].n_unique() != df.height:
            raise ValueError(f"{self.name}: column {self.id_column!r} has duplicate ids")
        cfg = self.config
        params = SignParams.from_config(cfg)
        tmp = None
        if workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="textbookgen-minhash-")
            workdir = Path(tmp.name)
        try:
            store = MinHashStore(workdir, params)
            id_col = df[self.id_column].cast(pl.String)
            shards = []
            for s in range(0, df.height, cfg.shard_size):
                load = self._shard_loader(id_col, df[self.text_column], s, cfg.shard_size)
                shards.append((shard_key(*load()), load))
            workers = cfg.workers or os.cpu_count() or 1
            signed = store.add(shards, workers, self.on_shard)
            current_ids = set(id_col.to_list())
            indexed_ids = store.published() - current_ids if self.incremental else set()
            loaded = store.load([k for k, _ in shards], indexed_ids)
            kept_ids, clusters, pairs = self._cluster(loaded, df)
            if self.incremental:
                store.publish(kept_ids, current_ids)
            clusters.write_parquet(workdir / "clusters.parquet")
            pairs.write_parquet(workdir / "pairs.parquet")
        finally:
            if tmp is not None:
                tmp.cleanup()
        out = df.filter(pl.col(self.id_column).cast(pl.String).is_in(kept_ids))
        dropped = clusters.filter(~pl.col("kept") & (pl.col("source") == "current"))
        vs_indexed = dropped.filter(pl.col("cluster_has_indexed")).height
        stats.dropped["near_duplicate"] = dropped.height - vs_indexed
        if vs_indexed:
            stats.dropped["near_duplicate_of_indexed"] = vs_indexed
        stats.extra.update({
            "bands": params.bands, "rows": params.rows, "threshold": cfg.threshold,
            "lsh_threshold": round(cfg.lsh_threshold, 4), "shards": len(shards), "shards_signed": len(signed),
            "indexed_docs": int((~loaded.current).sum()), "verified_pairs": pairs.height,
            "clusters": clusters["cluster"].n_unique() if clusters.height else 0,
        })
        return out

    @staticmethod
    def _shard_loader(ids: pl.Series, texts: pl.Series, start: int, size: int):
        return lambda: (ids.slice(start, size).to_list(), texts.slice(start, size).to_list())

    def _cluster(self, store: LoadedStore, df: pl.DataFrame) -> tuple[list[str], pl.DataFrame, pl.DataFrame]:
        """Verified pairs -> clusters -> the kept ids of this input, the cluster table and the pairs."""
        cands = candidate_pairs(band_frame(store.keys))
        pairs = verify_pairs(cands, store.jaccard, self.config.threshold) if self.config.verify else \
            cands.with_columns(pl.lit(None, dtype=pl.Float64).alias("jaccard"))
        labels = connected_components(len(store.ids), pairs)
        clusters = cluster_table(store, labels, self._quality(df))
        drop = set(clusters.filter(~pl.col("kept"))["id"].to_list())
        kept_ids = [i for i, c in zip(store.ids, store.current, strict=True) if c and i not in drop]
        ids = np.array(store.ids, dtype=object)
        pair_table = pl.DataFrame({"id_a": ids[pairs["a"].to_numpy()].tolist(),
                                   "id_b": ids[pairs["b"].to_numpy()].tolist(), "jaccard": pairs["jaccard"]},
                                  schema={"id_a": pl.String, "id_b": pl.String, "jaccard": pl.Float64})
        return kept_ids, clusters, pair_table

    def _quality(self, df: pl.DataFrame) -> pl.DataFrame:
        """(id, quality_score) of this input; null scores where the column is absent."""
        score = pl.col("quality_score") if "quality_score" in df.columns else pl.lit(None, dtype=pl.Float64)
        return df.select(pl.col(self.id_column).cast(pl.String).alias("id"), score.alias("quality_score"))


def cluster_table(store: LoadedStore, labels: np.ndarray, quality: pl.DataFrame) -> pl.DataFrame:
    """One row per doc in a multi-doc cluster: which member is kept and how similar the others are.

    The kept member is an indexed doc if the cluster has one (it is already published), else the one
    with the highest quality_score, then the lowest id. `cluster` is the kept member's id."""
    n = len(store.ids)
    in_cluster = np.flatnonzero(np.bincount(labels, minlength=n)[labels] > 1)
    members = pl.DataFrame({
        "id": np.array(store.ids, dtype=object)[in_cluster].tolist(), "doc": in_cluster,
        "label": labels[in_cluster], "current": store.current[in_cluster],
    }, schema={"id": pl.String, "doc": pl.Int64, "label": pl.Int64, "current": pl.Boolean})
    members = members.join(quality, on="id", how="left").with_columns((~pl.col("current")).alias("indexed"))
    ranked = best_first(members, "id").sort(["label", "indexed"], descending=[False, True], maintain_order=True)
    first = ranked.group_by("label", maintain_order=True).first().select(
        "label", pl.col("id").alias("cluster"), pl.col("doc").alias("kept_doc"))
    clusters = members.join(first, on="label").with_columns(
        pl.len().over("label").alias("size"),
        (pl.col("doc") == pl.col("kept_doc")).alias("kept"),
        pl.col("indexed").any().over("label").alias("cluster_has_indexed"),
        pl.when(pl.col("current")).then(pl.lit("current")).otherwise(pl.lit("indexed")).alias("source"))
    jk = [store.jaccard(int(d), int(k)) for d, k in zip(clusters["doc"], clusters["kept_doc"], strict=True)]
    return (clusters.with_columns(pl.Series("jaccard_to_kept", jk, dtype=pl.Float64))
            .select("id", "cluster", "size", "kept", "jaccard_to_kept", "source", "cluster_has_indexed",
                    "quality_score")
            .sort(["cluster", "kept", "id"], descending=[False, True, False]))
