"""MinHash near-dedup: datasketch bit-compatibility, planted near-copies of real text, sciphi textbook
near-duplicates, the incremental store, and resuming a killed run."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import textwrap
import tracemalloc
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import xxhash
from datasketch import LeanMinHash, MinHash

from textbookgen.curation import minhash, near_dedup
from textbookgen.curation.config import MinHashConfig
from textbookgen.curation.lsh import PAIRWISE_MAX, candidate_pairs, connected_components
from textbookgen.curation.minhash import BLOCK, MinHasher, shingle_jaccard, sorted_distinct, xxh32_slices
from textbookgen.curation.near_dedup import MinHashDedup, SignParams
from textbookgen.curation.normalize import simplify_text, word_shingles


def read_texts(path: Path, field: str, limit: int | None = None) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)[field] for line in f][:limit]


@pytest.fixture(scope="module")
def real_docs(shared_data: Path) -> list[str]:
    wiki = read_texts(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "eng_Latn")
    c4 = read_texts(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "text")
    return [d for d in wiki[:300] + c4[:300] if len(d.split()) >= 150]


def datasketch_sig(shingles: list[bytes], **kw) -> np.ndarray:
    m = MinHash(num_perm=128, seed=1, scheme="affine32", **kw)
    m.update_batch(shingles)
    return m.hashvalues


def test_signatures_bit_identical_to_datasketch(real_docs):
    ours, ours_sha1 = MinHasher(), MinHasher(hash_name="sha1")
    for text in real_docs[:80]:
        sh = word_shingles(text, 5)
        assert np.array_equal(ours.signature(text), datasketch_sig(sh, hashfunc=xxhash.xxh32_intdigest))
        assert np.array_equal(ours_sha1.signature(text), datasketch_sig(sh))  # datasketch's default hashfunc
    a, b = real_docs[0], " ".join(real_docs[0].split()[:-40])
    la, lb = (LeanMinHash(hashvalues=ours.signature(t), seed=1, scheme="affine32") for t in (a, b))
    assert la.jaccard(lb) == pytest.approx(shingle_jaccard(a, b), abs=0.1)


def test_vectorised_xxh32_equals_xxhash(real_docs):
    """`xxh32_slices` (xxh32 in numpy over slices of one buffer) is xxhash's xxh32 on every length 0..200
    (under and over a 16-byte stripe, every tail of lanes and bytes), on any bytes and real UTF-8 text."""
    rng = random.Random(5)
    pieces = ["a", "Zz", "é", "ß", "ñ", "漢字", "かな", "😀", "👍🏽", " ", "0", "हि", "ไทย"]
    parts = [bytes(rng.randrange(256) for _ in range(n)) for n in range(201)]
    parts += ["".join(rng.choice(pieces) for _ in range(n)).encode()[:n] for n in range(201)]
    parts += [d.encode()[i : i + n] for d in real_docs[:20] for i, n in ((0, 7), (3, 16), (40, 33), (99, 200))]
    buf = b"".join(parts)
    ends = np.cumsum([len(p) for p in parts])
    for seed in (0, 1, 2**32 - 1):
        expected = [xxhash.xxh32_intdigest(p, seed) for p in parts]
        assert xxh32_slices(buf, ends - [len(p) for p in parts], ends, seed).tolist() == expected


@pytest.mark.parametrize("hash_name", ["xxh32", "sha1"])
def test_batch_signing_equals_one_text_at_a_time(monkeypatch, real_docs, hash_name):
    """`sign_many` (what shard workers run: texts signed in batches, blocks of shingles crossing texts)
    gives each text's `sign`, hence datasketch's signature, whatever the texts' lengths."""
    monkeypatch.setattr(minhash, "BLOCK", 100)  # blocks end inside texts and span several
    monkeypatch.setattr(minhash, "BATCH_CHARS", 5_000)  # several batches
    texts = ["", " ", "x", "a b c d", "a b c d e", "a b c d e f", "東京は日本の首都", "naïve 👍🏽 ½ x"] + real_docs[:30]
    random.Random(0).shuffle(texts)
    hasher = MinHasher(hash_name=hash_name)
    kw = {"hashfunc": xxhash.xxh32_intdigest} if hash_name == "xxh32" else {}
    sig, hashes, offsets = hasher.sign_many(iter(texts), len(texts))
    assert offsets.tolist()[0] == 0 and offsets.size == len(texts) + 1 == sig.shape[0] + 1
    for i, text in enumerate(texts):
        one_sig, one_set = hasher.sign(text)
        assert np.array_equal(sig[i], one_sig) and np.array_equal(hashes[offsets[i] : offsets[i + 1]], one_set)
        assert np.array_equal(sig[i], datasketch_sig(word_shingles(text, 5), **kw))
    assert np.array_equal(hasher.signatures(texts), sig)
    monkeypatch.setattr(minhash, "simplify_bytes", lambda t: t.lower().encode())  # spaces not single: empty words
    sig, hashes, offsets = hasher.sign_many(texts, len(texts))
    assert all(np.array_equal(sig[i], hasher.signature(t)) for i, t in enumerate(texts))
    assert all(np.array_equal(hashes[offsets[i] : offsets[i + 1]], sorted_distinct(hasher.text_hashes(t)))
               for i, t in enumerate(texts))
    assert [len(x) for x in hasher.sign_many([], 0)] == [0, 0, 1]
    with pytest.raises(ValueError, match="2 texts for the 3 announced"):
        hasher.sign_many(["a", "b"], 3)


def test_simplify_text_matches_datatrove_rules(real_docs):
    assert simplify_text("Héllo, WÖRLD!  It's 1998… x_y\t“ok”") == "hello world it s 0 x y ok"
    accents = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f\ufe00-\ufe0f\U000e0100-\U000e01ef]")

    cjk = re.compile("[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]"
                     "[\u3099\u309a]*")

    def reference(t: str) -> str:  # the plain per-character version our byte-table fast path must equal
        t = cjk.sub(r" \g<0> ", accents.sub("", unicodedata.normalize("NFD", t.lower())))
        t = re.sub(r"\d+", "0", t)
        t = "".join(c if c.isalnum() or c.isspace() or unicodedata.category(c)[0] == "M" else " " for c in t)
        return " ".join(t.replace("_", " ").split())

    samples = real_docs + ["x ١٢٣ y", "a\u00a0b\u2003c\x85d\x80e\x03f", "naïve ½ ² Ǆ ﬁ Å Ω 한국어", "a\u034fb e\u0301",
                           "東京は日本の首都です。ｶﾀｶﾅ, abc漢字123", "हिन्दी की, क़िला।", "ภาษาไทย", "اللُّغَة", "がぱ I ❤️ u",
                           "  00 0  ٠٠ 12,5 --  x  ", "...", "", "e\u0301\u0301e\u0300 ΣΑΣ Σ"]
    assert sum(not d.isascii() for d in samples) > 20
    assert [simplify_text(d) for d in samples] == [reference(d) for d in samples]


def test_combining_marks_stay_in_their_words():
    """Vowel signs, viramas and harakat are combining marks (Mn/Mc): made spaces, they split words and
    merged different ones (की/के/को/का all became क), so decontamination matched unrelated text."""
    assert simplify_text("हिन्दी भाषा भारत की राजभाषा है।") == "हिन्दी भाषा भारत की राजभाषा है"
    assert len(set(simplify_text("की के को का कि").split())) == 5
    assert simplify_text("ภาษาไทย คือ") == "ภาษาไทย คือ"
    assert simplify_text("اللُّغَة العربية") == "اللُّغَة العربية"
    assert simplify_text("தமிழ் மொழி") == unicodedata.normalize("NFD", "தமிழ் மொழி")  # whole words, in NFD
    assert simplify_text("がか") != simplify_text("かか") and len(simplify_text("がか").split()) == 2  # dakuten
    assert simplify_text("Crème brûlée, Ελληνικά") == "creme brulee ελληνικα"  # accents still stripped
    assert simplify_text("I ❤️ it") == "i it"  # a variation selector is not a word


def test_chinese_near_duplicates_found_per_character():
    """Chinese puts no spaces between words: each character is a word, so 1% of characters changed
    leaves most shingles (a whole clause as one word would change nearly all of them)."""
    rng = random.Random(0)
    clauses = ["光合作用是植物利用光能把二氧化碳和水转化为有机物的过程", "这个过程主要发生在叶绿体中", "叶绿素能够吸收红光和蓝光",
               "植物因此呈现绿色", "光反应阶段产生氧气和能量分子", "暗反应阶段则固定二氧化碳", "温度和光照强度都会影响反应速率"]
    doc = "，".join(rng.choice(clauses) + str(i) for i in range(60)) + "。"
    chars = list(doc)
    for i in rng.sample([i for i, c in enumerate(chars) if "\u4e00" <= c <= "\u9fff"], 10):
        chars[i] = "的"
    edited = "".join(chars)
    assert simplify_text("叶绿素，能够 ab12") == "叶 绿 素 能 够 ab0"
    assert shingle_jaccard(doc, edited) > 0.8
    out, stats = MinHashDedup(MinHashConfig(workers=1))(pl.DataFrame({"id": ["zh1", "zh2"], "text": [doc, edited]}))
    assert out["id"].to_list() == ["zh1"] and stats.dropped["near_duplicate"] == 1


def test_large_document_signed_in_blocks():
    """A document of more shingles than one block gives datasketch's signature, and memory for the
    (shingles x permutations) products stays at one block whatever the document's length."""
    rng = random.Random(2)
    text = " ".join(f"w{rng.randrange(50_000)}" for _ in range(BLOCK + 5_000))
    hasher = MinHasher()
    assert np.array_equal(hasher.signature(text), datasketch_sig(word_shingles(text, 5), hashfunc=xxhash.xxh32_intdigest))
    mixed = np.random.default_rng(0).integers(0, 2**32, size=8 * BLOCK, dtype=np.uint32)
    tracemalloc.start()
    try:
        hasher.signature_of_hashes(mixed)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * BLOCK * hasher.num_perm * 4  # one block's products: 32 MiB; all at once: 256 MiB


def test_candidate_pairs_and_union_find():
    keys = np.array([[7, 5], [7, 1], [9, 2], [3, 5], [4, 6]], dtype=np.uint64)  # (doc, band)
    pairs = candidate_pairs(5, lambda band: keys[:, band], 2)
    assert pairs.rows() == [(0, 1), (0, 3)]
    labels = connected_components(5, pairs)
    assert labels[0] == labels[1] == labels[3] and len({labels[0], labels[2], labels[4]}) == 3


def polars_candidate_pairs(keys: np.ndarray) -> list[tuple[int, int]]:
    """The candidates as the (doc, band, key) polars frame gave them before one band at a time: all
    pairs of a bucket of up to PAIRWISE_MAX docs, star edges to the min doc of a larger one."""
    n, b = keys.shape
    lf = pl.DataFrame({"doc": np.repeat(np.arange(n, dtype=np.int64), b), "band": np.tile(np.arange(b), n),
                       "key": keys.reshape(-1)}).lazy()
    shared = lf.with_columns(pl.len().over(["band", "key"]).alias("size")).filter(pl.col("size") > 1)
    small = shared.filter(pl.col("size") <= PAIRWISE_MAX).select("band", "key", "doc")
    pairs = (small.join(small, on=["band", "key"], suffix="_b").filter(pl.col("doc") < pl.col("doc_b"))
             .select(pl.col("doc").alias("a"), pl.col("doc_b").alias("b")))
    star = (shared.filter(pl.col("size") > PAIRWISE_MAX)
            .with_columns(pl.col("doc").min().over(["band", "key"]).alias("root"))
            .filter(pl.col("doc") != pl.col("root")).select(pl.col("root").alias("a"), pl.col("doc").alias("b")))
    return pl.concat([pairs, star]).unique().sort(["a", "b"]).collect().rows()


@pytest.mark.parametrize("seed", range(4))
def test_candidates_band_by_band_are_the_polars_frames(seed):
    """Sorting one band's keys at a time gives the very pairs of the whole (doc, band, key) frame, with
    buckets of every size: pairs, the PAIRWISE_MAX edge, and star buckets."""
    rng = np.random.default_rng(seed)
    n, bands = 3000, 6
    keys = rng.integers(0, 2**64, size=(n, bands), dtype=np.uint64)
    for band in range(bands):  # buckets of 2..40 docs, some sharing docs across bands
        for size in (2, 3, PAIRWISE_MAX, PAIRWISE_MAX + 1, 40, *rng.integers(2, 30, size=30).tolist()):
            keys[rng.choice(n, size=size, replace=False), band] = rng.integers(2**64, dtype=np.uint64)
    ours = candidate_pairs(n, lambda band: keys[:, band], bands)
    assert ours.rows() == polars_candidate_pairs(keys) and ours.height > 2000


def edit_words(text: str, frac: float, rng: random.Random) -> str:
    """Replace a fraction of the words at random positions (the Jaccard falls with the fraction)."""
    words = text.split()
    for i in rng.sample(range(len(words)), int(len(words) * frac)):
        words[i] = rng.choice(["alpha", "bravo", "charlie", "delta", "echo"]) + str(rng.randrange(1000))
    return " ".join(words)


def test_planted_near_copies_found_at_known_jaccard(real_docs, tmp_path):
    rng = random.Random(7)
    originals = real_docs[:240]
    rows = [{"id": f"orig{i:04d}", "text": t} for i, t in enumerate(originals)]
    planted = []  # (copy id, original id, exact jaccard)
    for i, frac in enumerate([0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12] * 15):
        copy = edit_words(originals[i], frac, rng)
        if frac == 0.0:  # verbatim copy with case/punctuation/whitespace noise: still J = 1 after simplify
            copy = copy.upper().replace(" ", "  ").replace(".", " .")
        rows.append({"id": f"copy{i:04d}", "text": copy})
        planted.append((f"copy{i:04d}", f"orig{i:04d}", shingle_jaccard(copy, originals[i])))
    df = pl.DataFrame(rows)
    out, stats = MinHashDedup(MinHashConfig(threshold=0.8, workers=1, shard_size=200))(df, tmp_path)
    clusters = pl.read_parquet(tmp_path / "clusters.parquet")
    cluster_of = dict(zip(clusters["id"], clusters["cluster"], strict=True))
    together = [cluster_of.get(c) is not None and cluster_of.get(c) == cluster_of.get(o) for c, o, _ in planted]
    high = [t for t, (_, _, j) in zip(together, planted, strict=True) if j >= 0.85]
    near = [t for t, (_, _, j) in zip(together, planted, strict=True) if 0.8 <= j < 0.85]
    low = [t for t, (_, _, j) in zip(together, planted, strict=True) if j < 0.75]
    assert len(high) >= 40 and all(high)
    assert not near or sum(near) >= 0.8 * len(near)
    assert len(low) >= 20 and not any(low)  # verified: below the threshold is never a duplicate
    assert (clusters["jaccard_to_kept"] >= 0.8).all()
    # every cluster keeps exactly one doc; distinct originals all survive
    assert clusters.group_by("cluster").agg(pl.col("kept").sum())["kept"].to_list() == [1] * clusters["cluster"].n_unique()
    kept = set(out["id"])
    assert all(f"orig{i:04d}" in kept or f"copy{i:04d}" in kept for i in range(len(originals)))
    assert all(f"orig{i:04d}" in kept for i in range(120, len(originals)))
    assert stats.dropped["near_duplicate"] == df.height - out.height


def test_keeps_highest_quality_then_the_first_in_input_order(real_docs, tmp_path):
    """Ids are labels, not an order: the lowest id kept an edited copy over its original (or "f:10" over
    "f:9"); a tie on quality keeps the first occurrence, as datatrove and text-dedup do."""
    text = real_docs[5]
    df = pl.DataFrame({"id": ["c", "a", "b", "d"],
                       "text": [text, text + " extra", text + " more", real_docs[6]],
                       "quality_score": [0.9, None, 0.9, 0.1]})
    out, _ = MinHashDedup(MinHashConfig(workers=1))(df, tmp_path)
    assert sorted(out["id"]) == ["c", "d"]  # quality 0.9 ties between c and b: c comes first
    clusters = pl.read_parquet(tmp_path / "clusters.parquet")
    assert clusters.filter(pl.col("kept"))["id"].to_list() == ["c"] and set(clusters["cluster"]) == {"c"}


@pytest.mark.parametrize("stage", ["exact", "near"])
def test_a_nan_quality_score_is_no_score_not_the_best(real_docs, tmp_path, stage):
    """A NaN quality_score (a scorer's failed row in a user's parquet) sorted above every real score: the
    unscored copy was kept over its original scored 0.9."""
    from textbookgen.curation.exact import ExactDedup

    text = real_docs[5]
    df = pl.DataFrame({"id": ["a", "b", "c"], "text": [text, text if stage == "exact" else text + " extra", real_docs[6]],
                       "quality_score": [float("nan"), 0.9, 0.1]})
    step = ExactDedup() if stage == "exact" else MinHashDedup(MinHashConfig(workers=1))
    out, _ = step(df, tmp_path)
    assert out["id"].to_list() == ["b", "c"]


def test_exact_duplicates_are_reported_with_the_doc_kept_in_their_place(tmp_path):
    from textbookgen.curation.exact import ExactDedup, exact_key

    df = pl.DataFrame({"id": [10, 9, 11, 3], "text": ["Same text.", "other", "SAME  text.", "same text."]})
    out, stats = ExactDedup()(df, tmp_path)
    assert out["id"].to_list() == [10, 9] and stats.dropped["exact_duplicate"] == 2
    report = pl.read_parquet(tmp_path / "duplicates.parquet")
    assert report.rows() == [(11, 2, 10, 0, exact_key("Same text.")), (3, 3, 10, 0, exact_key("Same text."))]
    assert report.schema == {"id": pl.Int64, "row": pl.Int64, "kept_id": pl.Int64, "kept_row": pl.Int64,
                             "exact_key": pl.String}


def test_sciphi_textbook_near_duplicates_clustered(shared_data, tmp_path):
    rows = [json.loads(line) for line in gzip.open(
        shared_data / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz", "rt", encoding="utf-8")]
    df = pl.DataFrame({"id": [f"{i:02d}-{r['variant']}-{Path(r['path']).stem}" for i, r in enumerate(rows)],
                       "text": [r["text"] for r in rows]})
    out, stats = MinHashDedup(MinHashConfig(workers=1))(df, tmp_path)
    clusters = pl.read_parquet(tmp_path / "clusters.parquet")
    assert clusters["cluster"].n_unique() == 1
    members = sorted(clusters["id"])
    assert all("Aerodynamics_of_Viscous_Fluids" in m for m in members) and len(members) == 3
    assert {m.split("-")[1] for m in members} == {"rag_wiki", "sample"}
    assert out.height == len(rows) - 2 and stats.dropped["near_duplicate"] == 2


def test_new_shard_dedups_against_indexed_ones(real_docs, tmp_path):
    rng = random.Random(3)
    cfg = MinHashConfig(workers=1)
    old = pl.DataFrame({"id": [f"old{i}" for i in range(60)], "text": real_docs[:60]})
    MinHashDedup(cfg, incremental=True)(old, tmp_path)
    new_texts = [edit_words(real_docs[i], 0.01, rng) for i in range(10)] + real_docs[60:80]
    new = pl.DataFrame({"id": [f"new{i}" for i in range(30)], "text": new_texts})
    out, stats = MinHashDedup(cfg, incremental=True)(new, tmp_path)
    assert stats.dropped["near_duplicate_of_indexed"] == 10
    assert sorted(out["id"]) == sorted(f"new{i}" for i in range(10, 30))
    assert stats.extra["indexed_docs"] == 60


def test_only_kept_docs_are_indexed_for_later_runs(real_docs, tmp_path):
    """x and y are near-duplicates, y and z too, x and z are not: y was dropped in the first run, so
    it was never published and must not take z down in the next."""
    rng = random.Random(4)
    x = real_docs[0]
    y = edit_words(x, 0.015, rng)
    z = edit_words(y, 0.015, rng)
    assert shingle_jaccard(x, y) >= 0.8 and shingle_jaccard(y, z) >= 0.8 > shingle_jaccard(x, z)
    cfg = MinHashConfig(workers=1)
    first, _ = MinHashDedup(cfg, incremental=True)(pl.DataFrame({"id": ["a_x", "b_y"], "text": [x, y]}), tmp_path)
    assert first["id"].to_list() == ["a_x"]
    out, stats = MinHashDedup(cfg, incremental=True)(pl.DataFrame({"id": ["c_z"], "text": [z]}), tmp_path)
    assert out["id"].to_list() == ["c_z"] and stats.extra["indexed_docs"] == 1


def test_a_doc_given_again_with_its_indexed_text_is_the_indexed_doc(real_docs, tmp_path):
    """b_x was kept and indexed: given again (same id, same text) it is not a duplicate of itself, and it
    stays its cluster's member even beside a near-copy that would win on id."""
    x = real_docs[0]
    cfg = MinHashConfig(workers=1)
    MinHashDedup(cfg, incremental=True)(pl.DataFrame({"id": ["b_x"], "text": [x]}), tmp_path)
    again = pl.DataFrame({"id": ["a_copy", "b_x", "c"], "text": [x + " Thanks for reading.", x, real_docs[1]]})
    out, stats = MinHashDedup(cfg, incremental=True)(again, tmp_path)
    assert out["id"].to_list() == ["b_x", "c"] and stats.dropped["near_duplicate_of_indexed"] == 1
    assert stats.extra["already_indexed"] == 1 and stats.extra["indexed_docs"] == 0
    out, stats = MinHashDedup(cfg, incremental=True)(again, tmp_path)  # the same batch again: the same output
    assert out["id"].to_list() == ["b_x", "c"] and stats.extra["already_indexed"] == 2


def test_only_the_newest_version_of_a_rewritten_doc_is_indexed(real_docs, tmp_path):
    """x was indexed with T1, then rewritten to T2: a later y close to T1 is no duplicate of anything
    indexed, and x itself is never compared with its own old text."""
    t1, t2 = real_docs[10], real_docs[20]
    cfg = MinHashConfig(workers=1)
    step = MinHashDedup(cfg, incremental=True)
    step(pl.DataFrame({"id": ["x"], "text": [t1]}), tmp_path)
    out, _ = step(pl.DataFrame({"id": ["x"], "text": [t2 + " " + t1[:200]]}), tmp_path)
    assert out["id"].to_list() == ["x"]
    out, stats = step(pl.DataFrame({"id": ["y"], "text": [t1 + " extra"]}), tmp_path)
    assert out["id"].to_list() == ["y"] and stats.dropped["near_duplicate_of_indexed"] == 0
    index = pl.read_parquet(next(tmp_path.glob("minhash-*")) / "index.parquet")
    assert index["id"].to_list() == ["x", "y"]
    assert index["text_hash"][0] == xxhash.xxh3_128_hexdigest((t2 + " " + t1[:200]).encode())


def test_a_new_threshold_dedups_against_the_index_without_signing_it_again(real_docs, tmp_path):
    """Another threshold means another banding, and the store's folder is named by it: the run started an
    empty index beside the old one and kept every near-copy of an indexed doc. The index now moves to
    the new banding's store, its shards re-banded, not signed again; and back again."""
    rng = random.Random(5)
    MinHashDedup(MinHashConfig(workers=1), index=tmp_path)(
        pl.DataFrame({"id": [f"old{i}" for i in range(60)], "text": real_docs[:60]}))
    new = pl.DataFrame({"id": [f"new{i}" for i in range(15)],
                        "text": [edit_words(real_docs[i], 0.01, rng) for i in range(5)] + real_docs[60:70]})
    out, stats = MinHashDedup(MinHashConfig(workers=1, threshold=0.75), index=tmp_path)(new)
    assert stats.dropped["near_duplicate_of_indexed"] == 5 and stats.extra["indexed_docs"] == 60
    assert stats.extra["bands"] == 21 and stats.extra["shards_signed"] == 1  # this run's docs only
    assert [p.parent.name for p in tmp_path.glob("minhash-*/index.parquet")] == [
        SignParams.from_config(MinHashConfig(threshold=0.75)).tag]
    again = pl.DataFrame({"id": ["x"], "text": [real_docs[65] + " Thanks for reading."]})
    out, stats = MinHashDedup(MinHashConfig(workers=1), index=tmp_path)(again)
    assert out.height == 0 and stats.dropped["near_duplicate_of_indexed"] == 1 and stats.extra["indexed_docs"] == 70
    assert len(list(tmp_path.glob("minhash-*/index.parquet"))) == 1


@pytest.mark.parametrize("change", [{"num_perm": 64}, {"ngram": 4}, {"seed": 2}, {"hash_name": "sha1"}])
def test_an_index_of_other_signatures_is_refused_not_left_behind(real_docs, tmp_path, change):
    MinHashDedup(MinHashConfig(workers=1), index=tmp_path)(pl.DataFrame({"id": ["a", "b"], "text": real_docs[:2]}))
    made = sorted(tmp_path.rglob("*"))
    step = MinHashDedup(MinHashConfig(workers=1, **change), index=tmp_path)
    for run in (lambda: step(pl.DataFrame({"id": ["c"], "text": real_docs[2:3]})), lambda: step.check_index()):
        with pytest.raises(ValueError) as err:
            run()
        message = str(err.value)
        assert message.startswith(f"{tmp_path}: its index holds 2 documents signed with num_perm=128, seed=1, "
                                  "ngram=5, hash_name=xxh32, bands=16x8")
        (key, value), = change.items()
        assert f"this run's {key}={value} cannot compare" in message and "start a new index" in message
        assert len(message.splitlines()) == 1 and sorted(tmp_path.rglob("*")) == made  # nothing made


def test_an_index_signed_by_other_normalisation_code_is_refused(monkeypatch, real_docs, tmp_path):
    real = minhash.simplify_bytes
    monkeypatch.setattr(minhash, "simplify_bytes", lambda t: t.lower().encode())
    MinHashDedup(MinHashConfig(workers=1), index=tmp_path)(pl.DataFrame({"id": ["a"], "text": real_docs[:1]}))
    monkeypatch.setattr(minhash, "simplify_bytes", real)
    with pytest.raises(ValueError, match="holds 1 documents .* which this textbookgen's text normalisation"):
        MinHashDedup(MinHashConfig(workers=1), index=tmp_path)(pl.DataFrame({"id": ["b"], "text": real_docs[1:2]}))


def test_a_folder_of_several_indexes_is_refused(real_docs, tmp_path):
    """Runs before the check above left one index per setting in a folder: a run cannot use them all."""
    for n, cfg in enumerate([MinHashConfig(workers=1), MinHashConfig(workers=1, ngram=4)]):
        MinHashDedup(cfg, index=tmp_path / str(n))(pl.DataFrame({"id": [f"d{n}"], "text": real_docs[n : n + 1]}))
    (other,) = (tmp_path / "1").glob("minhash-*")
    other.rename(tmp_path / "0" / other.name)
    with pytest.raises(ValueError, match=r"0: holds 2 indexes \(minhash-.*: 1 documents; minhash-.*: 1 documents\)"):
        MinHashDedup(MinHashConfig(workers=1), index=tmp_path / "0")(pl.DataFrame({"id": ["x"], "text": ["x"]}))


CJK = "光合作用是植物利用光能把二氧化碳和水转化为葡萄糖和氧气的过程。" * 6


def test_signatures_of_other_normalisation_code_are_never_reused(monkeypatch, tmp_path, caplog):
    """A store signed before 6aa12a1 (a CJK clause was one word) silently missed this near-duplicate in
    the same workdir: the store is keyed by the signing code, so new code signs anew and says so."""
    df = pl.DataFrame({"id": ["a", "b"], "text": [CJK + "叶绿素吸收光。", CJK + "叶绿素吸收热。"]})
    cfg = MinHashConfig(workers=1)
    real = minhash.simplify_bytes
    monkeypatch.setattr(minhash, "simplify_bytes", lambda t: t.lower().encode())  # no CJK split, as before
    _, old = MinHashDedup(cfg)(df, tmp_path)
    assert old.kept == 2
    monkeypatch.setattr(minhash, "simplify_bytes", real)
    _, new = MinHashDedup(cfg)(df, tmp_path)
    assert new.kept == 1 and new.extra["shards_signed"] == 1
    stores = sorted(tmp_path.glob("minhash-*"))
    assert len(stores) == 2
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "ignoring" in warned[0] and "normalisation" in warned[0]
    _, again = MinHashDedup(cfg)(df, tmp_path)  # said once, when the new store is made
    assert again.extra["shards_signed"] == 0 and len(caplog.records) == 1


@pytest.mark.parametrize("change", [
    lambda t: t.casefold(),  # casefold for lower: ß -> ss, ﬁ -> fi
    lambda t: unicodedata.normalize("NFKC", t),  # half-width kana, ½, ²
    lambda t: re.sub("[ा-्]", " ", t),  # Devanagari vowel signs and virama as spaces (before e3ba8f3)
    lambda t: re.sub("[ً-ْ]", "", t),  # Arabic harakat stripped
    lambda t: re.sub("[゙゚]", "", unicodedata.normalize("NFD", t)),  # kana voicing marks stripped
    lambda t: t.replace("_", "u").replace("**", " pow "),  # code tokens
], ids=["casefold", "nfkc", "devanagari", "arabic", "kana", "code"])
def test_any_change_to_normalisation_makes_a_new_store(monkeypatch, change):
    before = SignParams.from_config(MinHashConfig())
    real = minhash.simplify_bytes
    monkeypatch.setattr(minhash, "simplify_bytes", lambda t: real(change(t)))
    after = SignParams.from_config(MinHashConfig())
    assert after.tag != before.tag and after.tag.startswith(before.setting)


KILLER = textwrap.dedent("""
    import os, signal, sys
    import polars as pl
    from textbookgen.curation.config import MinHashConfig
    from textbookgen.curation.near_dedup import MinHashDedup
    done = []
    def on_shard(key):
        done.append(key)
        if len(done) == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # die mid-run, no cleanup
    df = pl.read_parquet(sys.argv[1])
    MinHashDedup(MinHashConfig(workers=1, shard_size=50), on_shard=on_shard)(df, __import__("pathlib").Path(sys.argv[2]))
""")


def test_killed_run_resumes(real_docs, tmp_path):
    rng = random.Random(5)
    texts = real_docs[:300] + [edit_words(real_docs[i], 0.01, rng) for i in range(0, 300, 10)]
    df = pl.DataFrame({"id": [f"d{i:04d}" for i in range(len(texts))], "text": texts})
    df.write_parquet(tmp_path / "in.parquet")
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path / "in.parquet"), str(work)],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == -9, proc.stderr
    shard_root = next(work.glob("minhash-*")) / "shards"
    finished = {p.name: (p / "sig.npy").stat().st_mtime_ns for p in shard_root.iterdir() if (p / "DONE").exists()}
    assert len(finished) == 3 and not (work / "clusters.parquet").exists()
    (shard_root / ".tmp-killed").mkdir()  # what a kill during a shard write leaves behind

    resigned = []
    step = MinHashDedup(MinHashConfig(workers=1, shard_size=50), on_shard=resigned.append)
    out, stats = step(df, work)
    assert len(resigned) == stats.extra["shards"] - 3 and not set(resigned) & set(finished)
    assert all((shard_root / k / "sig.npy").stat().st_mtime_ns == t for k, t in finished.items())
    assert not list(shard_root.glob(".tmp-*"))
    fresh, _ = MinHashDedup(MinHashConfig(workers=1, shard_size=50))(df, tmp_path / "fresh")
    assert out["id"].to_list() == fresh["id"].to_list() and out.height < df.height


def test_process_parallel_matches_serial(real_docs, tmp_path):
    df = pl.DataFrame({"id": [f"d{i}" for i in range(120)], "text": real_docs[:120]})
    serial = MinHashDedup(MinHashConfig(workers=1, shard_size=40))(df, tmp_path / "a")[0]
    parallel = MinHashDedup(MinHashConfig(workers=2, shard_size=40))(df, tmp_path / "b")[0]
    assert serial["id"].to_list() == parallel["id"].to_list()
    sigs = [np.load(p) for p in sorted((tmp_path / "a").glob("minhash-*/shards/*/sig.npy"))]
    sigs_b = [np.load(p) for p in sorted((tmp_path / "b").glob("minhash-*/shards/*/sig.npy"))]
    assert all(np.array_equal(x, y) for x, y in zip(sigs, sigs_b, strict=True))


def planted_corpus(shared_data: Path) -> pl.DataFrame:
    """Wikipedia + C4 (2,000 real docs) and 420 planted copies: word edits of 0-15 % (J from 1 to ~0.5),
    exact copies in capitals (exact dedup's), chains x -> y -> z, and one doc copied 30 times (buckets
    above PAIRWISE_MAX give star edges); ids in random order, quality scores with nulls, rows shuffled."""
    rng = random.Random(11)
    docs = [d for d in read_texts(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "eng_Latn")
            + read_texts(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "text") if len(d.split()) >= 30]
    texts = list(docs)
    for i in range(300):
        frac = rng.choice([0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15])
        copy = edit_words(docs[rng.randrange(len(docs))], frac, rng)
        texts.append(copy.upper() if frac == 0.0 and i % 2 else copy)
    for i in range(30):  # chains: each link is a near-copy of the one before
        texts.append(edit_words(texts[-1] if i % 3 else docs[rng.randrange(len(docs))], 0.02, rng))
    texts += [edit_words(docs[7], rng.choice([0.0, 0.01, 0.02]), rng) for _ in range(30)]
    rng.shuffle(texts)
    ids = [f"{rng.getrandbits(32):08x}-{i}" for i in range(len(texts))]
    quality = [None if rng.random() < 0.2 else round(rng.random(), 2) for _ in texts]
    return pl.DataFrame({"id": ids, "text": texts, "quality_score": quality},
                        schema={"id": pl.String, "text": pl.String, "quality_score": pl.Float64})


def write_parts(df: pl.DataFrame, folder: Path) -> Path:
    """Two files of one corpus: parquet with ids and scores in small row groups, then jsonl of texts alone
    (their ids are made up as "part-1:<row>")."""
    folder.mkdir(parents=True, exist_ok=True)
    df.head(1500).write_parquet(folder / "part-0.parquet", row_group_size=400)
    df.slice(1500).select("text").write_ndjson(folder / "part-1.jsonl")
    return folder


def rows_checked(clusters: pl.DataFrame, ids: list) -> pl.DataFrame:
    """`clusters` less its `row` column (added after the digests below were taken), once each of this run's
    docs is checked to be reported at its id's row of the input `ids` (an indexed doc at none)."""
    where = {str(i): row for row, i in enumerate(ids)}
    expected = [where[i] if source == "current" else None for i, source in clusters.select("id", "source").rows()]
    assert clusters["row"].to_list() == expected
    return clusters.drop("row")


def digest(*values) -> str:
    """sha256 of the frames' rows (floats written exactly) and of any other JSON-able values."""
    rows = [v.rows() if isinstance(v, pl.DataFrame) else v for v in values]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# What the in-memory implementation (corpus read whole, every shingle set loaded; replaced 2026-11-26 by
# out-of-core dedup) gave on `planted_corpus`: only a change to what dedup decides may change these. Since
# then: a tie on quality keeps the first doc in input order, not the lowest id (the same pairs and clusters;
# 5 of 189 clusters keep another member).
STEP_DIGEST = "9642af92e72c79a6"
COMMAND_DIGEST = "3fbd81600ff8a6cc"
INCREMENTAL_DIGEST = "15d90674b6b8bd93"


def test_dedup_step_results_are_those_of_the_in_memory_store(shared_data, tmp_path, monkeypatch):
    """The kept docs, clusters and verified pairs of the step (frame in, frame out) are bit-identical to
    those of the in-memory implementation, with shingle sets read in many small batches."""
    monkeypatch.setattr(near_dedup, "JACCARD_BATCH", 20_000)  # ~10 docs' shingles: hundreds of batches
    df = planted_corpus(shared_data)
    out, stats = MinHashDedup(MinHashConfig(workers=2, shard_size=700))(df, tmp_path)
    clusters, pairs = (pl.read_parquet(tmp_path / f) for f in ("clusters.parquet", "pairs.parquet"))
    assert stats.extra["verified_pairs"] > 300 and clusters.height > 150 and clusters["size"].max() > PAIRWISE_MAX
    assert digest(out["id"].to_list(), rows_checked(clusters, df["id"].to_list()), pairs) == STEP_DIGEST


def test_dedup_command_streams_the_corpus_with_the_in_memory_results(shared_data, tmp_path, monkeypatch):
    """`textbookgen dedup` reads the corpus in chunks of 128 rows (parquet row groups of 400, and a jsonl
    file with made-up ids): its output rows, stats, clusters and pairs are bit-identical to those of
    reading the corpus whole."""
    from typer.testing import CliRunner

    from textbookgen.cli import app
    from textbookgen.curation import corpus_io

    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 128)
    folder = write_parts(planted_corpus(shared_data), tmp_path / "in")
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(app, ["dedup", str(folder), "-o", str(out), "--workers", "2", "--shard-size", "700"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    work = tmp_path / "out.parquet.work" / "minhash_dedup"
    assert stats["exact_dedup"]["dropped"]["exact_duplicate"] > 10
    clusters = rows_checked(pl.read_parquet(work / "clusters.parquet"), corpus_io.read_corpus(folder)["id"].to_list())
    assert digest(pl.read_parquet(out), stats, clusters, pl.read_parquet(work / "pairs.parquet")) == COMMAND_DIGEST


def test_incremental_dedup_streams_with_the_in_memory_results(shared_data, tmp_path, monkeypatch):
    """Two incremental runs (the second holds docs of the first, some rewritten): the second's output,
    stats, clusters and index are bit-identical to the in-memory implementation's."""
    from typer.testing import CliRunner

    from textbookgen.cli import app
    from textbookgen.curation import corpus_io

    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 128)
    df = planted_corpus(shared_data)
    first, second = df.slice(0, 1400), pl.concat([df.slice(1000, 400).with_columns(
        pl.when(pl.int_range(400) % 7 == 0).then(pl.col("text") + " Revised.").otherwise(pl.col("text"))),
        df.slice(1400)])
    results = []
    for n, batch in enumerate([first, second]):
        src = tmp_path / f"b{n}.parquet"
        batch.write_parquet(src, row_group_size=300)
        out = tmp_path / f"o{n}.parquet"
        result = CliRunner().invoke(app, ["dedup", str(src), "-o", str(out), "--index", str(tmp_path / "idx"),
                                          "--workers", "1", "--shard-size", "500"])
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.output))
    work = tmp_path / "o1.parquet.work" / "minhash_dedup"
    index = pl.read_parquet(next((tmp_path / "idx").glob("minhash-*")) / "index.parquet")
    assert results[1]["minhash_dedup"]["already_indexed"] > 300 and results[1]["minhash_dedup"]["rewritten"] > 40
    clusters = rows_checked(pl.read_parquet(work / "clusters.parquet"), second["id"].to_list())
    assert digest(pl.read_parquet(tmp_path / "o1.parquet"), results, clusters, index) == INCREMENTAL_DIGEST


def test_only_candidates_shingle_sets_are_read_and_shards_are_memory_mapped(real_docs, tmp_path, monkeypatch):
    """The store loaded every doc's shingle hashes (1.9 kB a doc) to verify a few pairs: now a shard's
    arrays are memory-mapped, and only docs in candidate pairs have their shingle sets read."""
    rng = random.Random(8)
    texts = real_docs[:200] + [edit_words(real_docs[i], 0.01, rng) for i in range(10)]
    df = pl.DataFrame({"id": [f"d{i:03d}" for i in range(len(texts))], "text": texts})
    loads, read = [], []
    real_load, real_sets = np.load, near_dedup.StoreView.shingle_sets
    monkeypatch.setattr(np, "load", lambda f, *a, **kw: (loads.append((Path(f).name, kw.get("mmap_mode"))),
                                                         real_load(f, *a, **kw))[1])
    monkeypatch.setattr(near_dedup.StoreView, "shingle_sets",
                        lambda self, docs: (read.extend(docs.tolist()), real_sets(self, docs))[1])
    out, stats = MinHashDedup(MinHashConfig(workers=1, shard_size=64))(df, tmp_path)
    assert stats.dropped["near_duplicate"] == 10 and stats.extra["shards"] == 4
    assert {name for name, _ in loads} == {"keys.npy", "offsets.npy", "hashes.npy"}
    assert all(mode == "r" for _, mode in loads)
    assert set(range(10)) | set(range(200, 210)) <= set(read) and len(set(read)) < 40
