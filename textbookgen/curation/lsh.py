"""LSH banding, candidate pairs one band at a time, exact-Jaccard verification and union-find clusters.

Candidates come from sorting one band's keys at a time (datatrove's sorted buckets, in memory): ~25
bytes a doc while a band is sorted, and nothing kept but the pairs, where a polars frame of every
(doc, band, key) holds ~300 B/doc and datasketch's MinHashLSH ~5 kB/doc of Python objects (field notes 6.2).
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


def bucket_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Doc pairs (a, b), a < b, that share a key of one band (`keys[doc]`), each once.

    Small buckets give every pair (so a false collision with the bucket's min doc cannot hide a true
    pair); buckets above PAIRWISE_MAX give star edges to their min doc (text-dedup's trick against N^2)."""
    order = np.argsort(keys, kind="stable")  # docs of equal keys stay ascending
    sorted_keys = keys[order]
    same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])  # i: sorted i and i+1 share a bucket
    del sorted_keys
    if same.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    head = np.concatenate(([True], np.diff(same) != 1))
    starts = same[head]
    sizes = np.diff(np.append(np.flatnonzero(head), same.size)) + 1
    a_parts, b_parts = [], []
    for size in np.unique(sizes[sizes <= PAIRWISE_MAX]).tolist():
        members = order[starts[sizes == size][:, None] + np.arange(size)]
        i, j = np.triu_indices(size, k=1)
        a_parts.append(members[:, i].ravel())
        b_parts.append(members[:, j].ravel())
    big = sizes > PAIRWISE_MAX
    if big.any():
        first, rest = starts[big], sizes[big] - 1
        within = np.arange(rest.sum()) - np.repeat(np.cumsum(rest) - rest, rest)
        a_parts.append(np.repeat(order[first], rest))
        b_parts.append(order[np.repeat(first, rest) + 1 + within])
    return np.concatenate(a_parts).astype(np.int64), np.concatenate(b_parts).astype(np.int64)


def candidate_pairs(n: int, band_keys: Callable[[int], np.ndarray], bands: int) -> pl.DataFrame:
    """Distinct (a, b) doc pairs, a < b, sorted, that share a key in some band; `band_keys(j)` gives the
    keys of band j of docs 0..n-1, asked for one band at a time."""
    codes = np.zeros(0, dtype=np.int64)
    for band in range(bands):
        a, b = bucket_pairs(band_keys(band))
        codes = np.union1d(codes, a * n + b)
    return pl.DataFrame({"a": codes // max(n, 1), "b": codes % max(n, 1)}, schema={"a": pl.Int64, "b": pl.Int64})


def verify_pairs(pairs: pl.DataFrame, jaccards: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 threshold: float) -> pl.DataFrame:
    """Candidate pairs with their exact Jaccard (`jaccards(a, b)`, elementwise); those >= threshold survive."""
    j = jaccards(pairs["a"].to_numpy(), pairs["b"].to_numpy())
    return pairs.with_columns(pl.Series("jaccard", j, dtype=pl.Float64)).filter(pl.col("jaccard") >= threshold)


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
