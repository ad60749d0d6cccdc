"""MinHash signatures computed with numpy, bit-identical to `datasketch.MinHash` (2.x, `affine32`).

datasketch 2.0 changed its default permutation scheme to `affine32`: each 32-bit shingle hash is mixed
by the MurmurHash3 finalizer (fmix32) and then permuted by h -> a*h + b mod 2^32 (a odd), with (a, b)
drawn from `np.random.RandomState(seed)`. We take (a, b) from datasketch itself and do the same uint32
arithmetic on (permutations x shingles) matrices of at most `BLOCK` shingles, hashing the shingle *bytes* with
xxh32 (or sha1, datasketch's default hashfunc). Many texts are signed at once (`sign_many`, `signatures`):
their shingles are slices of one buffer, hashed by xxh32 written in numpy (`xxh32_slices`, equal to
`xxhash.xxh32_intdigest`), with no Python call or bytes object per shingle. So

    MinHash(num_perm=128, seed=1, scheme="affine32", hashfunc=xxhash.xxh32_intdigest).update_batch(s)

has exactly our `MinHasher().signature_of_shingles(s)` as `hashvalues` (tests/test_dedup.py checks it),
and `LeanMinHash(hashvalues=sig, seed=1, scheme="affine32")` interoperates with datasketch LSH indexes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
import xxhash

from textbookgen.curation.normalize import batch_shingle_spans, shingle_spans, simplify_bytes, word_shingles

HashName = Literal["xxh32", "sha1"]
_M1, _M2 = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)
BLOCK = 1 << 10  # shingles per (shingles x num_perm) matrix: 512 KiB at 128 permutations stays in cache
# (3x faster than 32 MiB blocks when a batch of texts is signed at once), whatever the doc size
BATCH_CHARS = 1 << 16  # characters of text signed together (~11k shingles of prose: its arrays stay in cache)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (a bijection that avalanches weak hashes), in uint32."""
    h = h ^ (h >> np.uint32(16))
    h = h * _M1
    h = h ^ (h >> np.uint32(13))
    h = h * _M2
    return h ^ (h >> np.uint32(16))


_P1, _P2, _P3, _P4, _P5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393  # xxh32's primes
_U32 = 0xFFFFFFFF


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _round(acc: np.ndarray, lane: np.ndarray) -> np.ndarray:
    """xxh32's stripe round: rotl(acc + lane * P2, 13) * P1."""
    return _rotl(acc + lane * np.uint32(_P2), 13) * np.uint32(_P1)


def xxh32_slices(buf: bytes, starts: np.ndarray, ends: np.ndarray, seed: int = 0) -> np.ndarray:
    """`xxhash.xxh32_intdigest(buf[s:e], seed)` of every slice, in numpy uint32 arithmetic: one pass of
    array operations per 16-byte stripe (slices sorted by stripe count, so each pass works on a prefix)
    and per tail lane and byte, instead of one Python call per slice."""
    padded = buf + bytes(4)
    u8 = np.frombuffer(padded, dtype=np.uint8)
    u32 = np.ndarray((len(padded) - 3,), dtype="<u4", buffer=padded, strides=(1,))  # the lane at each byte
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(ends, dtype=np.int64) - starts
    acc = np.full(starts.size, (seed + _P5) & _U32, dtype=np.uint32)
    stripes = lengths >> 4
    (long,) = np.nonzero(stripes)
    if long.size:
        order = long[np.argsort(-stripes[long], kind="stable")]
        remaining = -stripes[order]  # ascending: the slices with a k-th stripe are a prefix
        pos = starts[order]
        init = (seed + _P1 + _P2, seed + _P2, seed, seed - _P1)
        v = [np.full(order.size, x & _U32, dtype=np.uint32) for x in init]
        for k in range(int(-remaining[0])):
            m = int(np.searchsorted(remaining, -k, side="left"))
            at = pos[:m] + 16 * k
            for j in range(4):
                v[j][:m] = _round(v[j][:m], u32[at + 4 * j])
        acc[order] = _rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)
    acc += lengths.astype(np.uint32)
    pos, rest = starts + (stripes << 4), lengths & 15
    for j in range(3):  # up to three 4-byte lanes
        (sel,) = np.nonzero(rest >= 4 * (j + 1))
        acc[sel] = _rotl(acc[sel] + u32[pos[sel] + 4 * j] * np.uint32(_P3), 17) * np.uint32(_P4)
    pos, rest = pos + (rest & ~3), rest & 3
    for j in range(3):  # up to three bytes
        (sel,) = np.nonzero(rest > j)
        acc[sel] = _rotl(acc[sel] + u8[pos[sel] + j].astype(np.uint32) * np.uint32(_P5), 11) * np.uint32(_P1)
    acc ^= acc >> np.uint32(15)
    acc *= np.uint32(_P2)
    acc ^= acc >> np.uint32(13)
    acc *= np.uint32(_P3)
    return acc ^ (acc >> np.uint32(16))


def sha1_hash32(data: bytes) -> int:
    """datasketch's default hashfunc: the first 4 bytes of SHA-1, little-endian."""
    return int.from_bytes(hashlib.sha1(data).digest()[:4], "little")


_HASHES = {"xxh32": xxhash.xxh32_intdigest, "sha1": sha1_hash32}


def affine32_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) exactly as datasketch 2.x draws them for scheme="affine32"."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


class MinHasher:
    """Text -> uint32[num_perm] MinHash signature of its word n-gram shingles."""

    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 5, hash_name: HashName = "xxh32"):
        self.num_perm, self.seed, self.ngram, self.hash_name = num_perm, seed, ngram, hash_name
        self._hash = _HASHES[hash_name]
        self.a, self.b = affine32_permutations(num_perm, seed)

    def shingle_hashes(self, shingles: Sequence[bytes]) -> np.ndarray:
        """The fmix32-mixed 32-bit hashes of the shingles (the set whose MinHash we take)."""
        h = np.fromiter(map(self._hash, shingles), dtype=np.uint32, count=len(shingles))
        return fmix32(h)

    def signature_of_hashes(self, mixed: np.ndarray) -> np.ndarray:
        """min over shingles of a*h + b (uint32 wrap-around), a block of shingles at a time so that
        memory does not grow with the document (an empty document gives all 2^32 - 1, as datasketch)."""
        sig = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        buffer = np.empty((self.num_perm, min(mixed.size, BLOCK)), dtype=np.uint32)
        for start in range(0, mixed.size, BLOCK):
            block = mixed[start : start + BLOCK]
            m = np.multiply(self.a[:, None], block[None, :], out=buffer[:, : block.size])
            m += self.b[:, None]
            np.minimum(sig, m.min(axis=1), out=sig)
        return sig

    def signature_of_shingles(self, shingles: Sequence[bytes]) -> np.ndarray:
        return self.signature_of_hashes(self.shingle_hashes(shingles))

    def batch_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The mixed shingle hashes of all `texts` (those of `shingle_hashes(word_shingles(t))`, text after
        text) and each text's offset into them (the total last). The texts' simplified bytes are joined,
        each shingle is a slice of the join, and xxh32 hashes all slices at once (`xxh32_slices`)."""
        buf, starts, ends, offsets = batch_shingle_spans([simplify_bytes(t) for t in texts], self.ngram)
        if self.hash_name == "xxh32":
            return fmix32(xxh32_slices(buf, starts, ends)), offsets
        view, hash_fn = memoryview(buf), self._hash
        h = np.fromiter((hash_fn(view[s:e]) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)),
                        dtype=np.uint32, count=starts.size)
        return fmix32(h), offsets

    def batch_signatures(self, mixed: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """`signature_of_hashes` of each text's hashes `mixed[offsets[i]:offsets[i + 1]]` (none empty), a
        block of shingles at a time: one (permutations x shingles) product and one `minimum.reduceat`
        along its rows per block (rows, not columns: each text's minimum is a contiguous run, 2x faster)."""
        sig = np.full((offsets.size - 1, self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        buffer = np.empty((self.num_perm, min(mixed.size, BLOCK)), dtype=np.uint32)
        a, b = self.a[:, None], self.b[:, None]
        for lo in range(0, mixed.size, BLOCK):
            block = mixed[lo : lo + BLOCK]
            first, last = np.searchsorted(offsets, lo, side="right") - 1, np.searchsorted(offsets, lo + block.size)
            m = np.multiply(a, block[None, :], out=buffer[:, : block.size])
            m += b
            cuts = np.maximum(offsets[first:last], lo) - lo
            np.minimum(sig[first:last], np.minimum.reduceat(m, cuts, axis=1).T, out=sig[first:last])
        return sig

    def text_hashes(self, text: str) -> np.ndarray:
        """`shingle_hashes(word_shingles(text))`. One text alone is hashed a shingle at a time: the numpy
        calls of `batch_hashes` cost ~130 us a batch, more than hashing up to ~2,000 shingles one by one."""
        data = simplify_bytes(text)
        starts, ends = shingle_spans(data, self.ngram)
        return self.shingle_hashes([data[s:e] for s, e in zip(starts, ends, strict=True)])

    def signature(self, text: str) -> np.ndarray:
        return self.signature_of_hashes(self.text_hashes(text))

    def sign(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(signature, sorted distinct shingle hashes): the second gives exact Jaccard for verification."""
        mixed = self.text_hashes(text)
        return self.signature_of_hashes(mixed), sorted_distinct(mixed)

    def sign_many(self, texts: Iterable[str], count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`sign` of each of `count` texts: (signatures, their sorted distinct shingle hashes text after text,
        each text's offset into those, the total last). Texts are signed in batches of about `BATCH_CHARS`
        characters, so numpy's per-call cost is shared by many texts and memory stays at one batch's (the
        signatures are filled in place: concatenating per-batch ones held them twice)."""
        sig = np.empty((count, self.num_perm), dtype=np.uint32)
        sets, sizes, done = [], np.zeros(count + 1, dtype=np.int64), 0
        for batch in _batches(texts, BATCH_CHARS):
            if done + len(batch) > count:
                raise ValueError(f"sign_many: more than the {count} texts announced")
            mixed, offsets = self.batch_hashes(batch)
            sig[done : done + len(batch)] = self.batch_signatures(mixed, offsets)
            doc = np.repeat(np.arange(len(batch), dtype=np.uint64), np.diff(offsets))
            keys = np.sort((doc << np.uint64(32)) | mixed)  # by text, then hash
            keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
            sets.append(keys.astype(np.uint32))
            sizes[done + 1 : done + 1 + len(batch)] = np.bincount((keys >> np.uint64(32)).astype(np.int64),
                                                                   minlength=len(batch))
            done += len(batch)
        if done != count:
            raise ValueError(f"sign_many: {done} texts for the {count} announced")
        hashes = np.concatenate(sets) if sets else np.zeros(0, dtype=np.uint32)
        return sig, hashes, np.cumsum(sizes)

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """`signature` of every text, signed in batches as `sign_many` does."""
        sigs = [self.batch_signatures(*self.batch_hashes(batch)) for batch in _batches(texts, BATCH_CHARS)]
        return np.concatenate(sigs) if sigs else np.empty((0, self.num_perm), dtype=np.uint32)


def _batches(texts: Iterable[str], chars: int) -> Iterator[list[str]]:
    """Consecutive lists of texts of about `chars` characters in all (a longer text is a list alone)."""
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """np.unique for small arrays, ~4x faster (numpy 2's np.unique hashes, then sorts)."""
    if values.size == 0:
        return values
    s = np.sort(values)
    return s[np.concatenate(([True], s[1:] != s[:-1]))]


def jaccard_sorted(x: np.ndarray, y: np.ndarray) -> float:
    """Jaccard of two sorted distinct hash arrays (32-bit shingle hashes: exact up to hash collisions)."""
    if x.size == 0 and y.size == 0:
        return 1.0
    inter = np.intersect1d(x, y, assume_unique=True).size
    return inter / (x.size + y.size - inter)


def shingle_jaccard(a: str, b: str, ngram: int = 5) -> float:
    """Exact Jaccard of two texts' word n-gram shingle sets (bytes; no hashing): the ground truth."""
    sa, sb = set(word_shingles(a, ngram)), set(word_shingles(b, ngram))
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0
