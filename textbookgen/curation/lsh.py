"""LSH banding, candidate pairs with polars, exact-Jaccard verification and union-find clusters.

Band keys live in a polars frame (doc, band, key), not in a dict per band: the group-by that finds
colliding keys runs in Rust at ~100k docs/s and ~300 B/doc (field notes 6.2), where datasketch's
MinHashLSH holds ~5 kB/doc of Python objects.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import xxhash

PAIRWISE_MAX = 16  # buckets up to this size give all pairs; larger ones give star edges to their min doc


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 key per (doc, band): xxh3-64 of the band's bytes (spurious collisions ~ N^2 / 2^65)."""
    n = signatures.shape[0]
    view = np.ascontiguousarray(signatures[:, : bands * rows]).reshape(n, bands, rows)
    keys = np.empty((n, bands), dtype=np.uint64)
    for i in range(n):
        row = view[i]
        for j in range(bands):
            keys[i, j] = xxhash.xxh3_64_intdigest(row[j].tobytes())
    return keys


def band_frame(keys: np.ndarray, doc_offset: int = 0) -> pl.DataFrame:
    """Long form (doc, band, key) of a (docs x bands) key matrix."""
    n, b = keys.shape
    return pl.DataFrame({
        "doc": np.repeat(np.arange(doc_offset, doc_offset + n, dtype=np.int64), b),
        "band": np.tile(np.arange(b, dtype=np.int16), n),
        "key": keys.reshape(-1),
    })


def candidate_pairs(bands: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Distinct (a, b) doc pairs, a < b, that share a band key.

    Small buckets give every pair (so a false collision with the bucket's min doc cannot hide a true
    pair); buckets above PAIRWISE_MAX give star edges to their min doc (text-dedup's trick against N^2)."""
    lf = bands.lazy() if isinstance(bands, pl.DataFrame) else bands
    shared = (lf.with_columns(pl.len().over(["band", "key"]).alias("size"))
              .filter(pl.col("size") > 1))
    small = shared.filter(pl.col("size") <= PAIRWISE_MAX).select("band", "key", "doc")
    pairs = (small.join(small, on=["band", "key"], suffix="_b")
             .filter(pl.col("doc") < pl.col("doc_b"))
             .select(pl.col("doc").alias("a"), pl.col("doc_b").alias("b")))
    star = (shared.filter(pl.col("size") > PAIRWISE_MAX)
            .with_columns(pl.col("doc").min().over(["band", "key"]).alias("root"))
            .filter(pl.col("doc") != pl.col("root"))
            .select(pl.col("root").alias("a"), pl.col("doc").alias("b")))
    return pl.concat([pairs, star]).unique().sort(["a", "b"]).collect()


def verify_pairs(pairs: pl.DataFrame, jaccard: Callable[[int, int], float], threshold: float) -> pl.DataFrame:
    """Candidate pairs with their exact Jaccard; only those >= threshold survive."""
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    j = np.fromiter((jaccard(int(x), int(y)) for x, y in zip(a, b, strict=True)), dtype=np.float64, count=len(a))
    return pairs.with_columns(pl.Series("jaccard", j)).filter(pl.col("jaccard") >= threshold)


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return int(x)

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return
        if self.size[rx] < self.size[ry]:
            rx, ry = ry, rx
        self.parent[ry] = rx
        self.size[rx] += self.size[ry]



def connected_components(n: int, edges: pl.DataFrame) -> np.ndarray:
    """Component label (a representative doc index) of every doc 0..n-1, via union-find over edges."""
    uf = UnionFind(n)
    a, b = edges["a"].to_list(), edges["b"].to_list()
    for x, y in zip(a, b, strict=True):
        uf.union(x, y)
    labels = np.arange(n, dtype=np.int64)
    for x in set(a) | set(b):
        labels[x] = uf.find(x)
    return labels
