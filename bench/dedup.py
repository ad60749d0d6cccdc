"""MinHash dedup benchmark: signature speed against datasketch, and cluster precision/recall at scale.

1. Speed (one core each, same documents, same shingles): our numpy signatures against datasketch's
   bulk path (`MinHash.generator`: one initialised MinHash copied per document, then `update_batch`) with
   its default hashfunc (sha1) and with xxh32 (the setting that is bit-identical to ours; checked here on
   every timed document). Timed from shingles (what update_batch takes) and end to end from raw text
   (shingling included for both; ours signs in batches of texts, as the dedup workers do).
2. Quality: a corpus of real documents (Wikipedia, C4, WebText, DCLM, SciPhi textbook sections) padded
   to --docs with documents built from runs of real sentences, plus planted near-copies (word edits,
   sentence drops/insertions) spread over Jaccard 0.5-1. Ground truth is the exact word-5-gram Jaccard
   (sets of shingle bytes, no hashing) of each planted pair, plus any other pair we report that is
   verified >= the threshold. Precision = predicted same-cluster pairs with exact J >= threshold;
   recall = ground-truth pairs found in one cluster.
3. Memory (--memory): `textbookgen dedup` (exact + MinHash) on synthetic corpora of 500-word documents
   (Zipf pseudo-words, 10 % planted near-copies with 0-8 % of words replaced), written as parquet, each
   size in a fresh process; against datasketch `MinHashLSH` (threshold 0.8, 128 perms, signatures from
   `MinHash.generator`, query then insert) fed the same file row group by row group, also in a fresh
   process. Peak RSS: the main process's own (VmHWM as it exits) and that plus each worker's own (VmHWM
   read from /proc every 0.05 s).

    python bench/dedup.py                  # 100k documents, 2 workers
    python bench/dedup.py --docs 20000     # quicker
    python bench/dedup.py --memory --docs 50000,200000 [--baseline ../before]   # ../before: older checkout
    # (sizes above one shard, 20,000: a smaller corpus is signed without workers, so kb_per_doc from it
    # to a larger one counts the workers' start as growth)

Last line: speedup_vs_datasketch_xxh32_end_to_end=<x> precision=<p> recall=<r> docs_per_s=<n> peak_rss_mb=<m>
(the like-for-like speedup: same signatures, shingling timed in both; the table has the other three);
with --memory: kb_per_doc_ours=<peak growth per doc, all processes, smallest to largest size>
kb_per_doc_datasketch=<...> (and kb_per_doc_ours_baseline=<...> with --baseline)
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl
import xxhash
from datasketch import MinHash
from shared_data import skip_without  # bench/ is on the path

from textbookgen.curation.config import MinHashConfig
from textbookgen.curation.minhash import MinHasher
from textbookgen.curation.near_dedup import MinHashDedup
from textbookgen.curation.normalize import word_shingles

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PROSE = {  # real documents, the text field of each file
    DATA / "wikipedia_en_1k" / "wikipedia.jsonl.gz": "eng_Latn",
    DATA / "c4_en_sample_1k" / "c4_sample.jsonl.gz": "text",
    DATA / "dclm_human_quality_labels" / "majority_data.jsonl.gz": "text",
    DATA / "webtext_snippets" / "webtext.test.jsonl.gz": "text",
    DATA / "webtext_snippets" / "webtext.valid.jsonl.gz": "text",
}
SCIPHI = DATA / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz"
DATA_FILES = [*PROSE, SCIPHI]  # what the default run reads; --memory makes its own corpora
_SENT = re.compile(r"(?<=[.!?])\s+")


def read(path: Path, field: str) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)[field] for line in f]


def real_documents() -> list[str]:
    docs = [d for path, field in PROSE.items() for d in read(path, field)]
    for book in read(SCIPHI, "text"):
        docs += [s for s in re.split(r"\n(?=#{1,3} )", book) if len(s.split()) >= 50]
    # exact copies across sources and variants (SciPhi ships the same book 3 times) would be ground truth
    # we did not plant: keep one of each near-identical source document
    seen, out = set(), []
    for d in docs:
        key = xxhash.xxh3_64_intdigest(" ".join(d.split()[:40]).lower().encode())
        if key not in seen and len(d.split()) >= 20:
            seen.add(key)
            out.append(d)
    return out


def build_corpus(n_docs: int, dup_frac: float, seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    """(documents, planted (original, copy) index pairs). Originals are real docs, then docs made of
    runs of consecutive real sentences taken from random places (distinct, real prose)."""
    rng = np.random.default_rng(seed)
    real = real_documents()
    sentences = [s for d in real for s in _SENT.split(d.replace("\n", " ")) if len(s.split()) >= 4]
    n_orig = n_docs - int(n_docs * dup_frac)
    docs = [real[i] for i in rng.permutation(len(real))[:n_orig]]
    while len(docs) < n_orig:
        parts = []
        for _ in range(int(rng.integers(3, 7))):  # 3-6 runs of 4-10 consecutive sentences
            start = int(rng.integers(0, len(sentences) - 10))
            parts += sentences[start : start + int(rng.integers(4, 11))]
        docs.append(" ".join(parts))
    vocab = [w for s in sentences[:20000] for w in s.split()]
    planted = []
    for orig in rng.choice(n_orig, size=n_docs - n_orig, replace=False):
        docs.append(edit(docs[int(orig)], rng, vocab, sentences))
        planted.append((int(orig), len(docs) - 1))
    return docs, planted


def edit(text: str, rng: np.random.Generator, vocab: list[str], sentences: list[str]) -> str:
    """A near-copy: substitute a random 0-8 % of words, and sometimes drop or add a sentence."""
    words = text.split()
    k = int(len(words) * rng.uniform(0.0, 0.08))
    for i in rng.choice(len(words), size=k, replace=False):
        words[int(i)] = vocab[int(rng.integers(len(vocab)))]
    out = " ".join(words)
    r = rng.random()
    if r < 0.2:
        out = out + " " + sentences[int(rng.integers(len(sentences)))]
    elif r < 0.4:
        sents = _SENT.split(out)
        if len(sents) > 3:
            del sents[int(rng.integers(len(sents)))]
            out = " ".join(sents)
    return out


def exact_jaccard(a: str, b: str) -> float:
    sa, sb = set(word_shingles(a, 5)), set(word_shingles(b, 5))
    return len(sa & sb) / len(sa | sb)


def rate(fn, items) -> float:
    t = time.perf_counter()
    for x in items:
        fn(x)
    return len(items) / (time.perf_counter() - t)


def rate_all(fn, items) -> float:
    """Items/s of `fn(items)`: a peer that takes the whole batch at once."""
    t = time.perf_counter()
    fn(items)
    return len(items) / (time.perf_counter() - t)


def datasketch_signatures(shingle_lists: Iterable[list[bytes]], hashfunc=None) -> list[np.ndarray]:
    """datasketch's own path for many documents, `MinHash.generator` (what `MinHash.bulk` runs): one
    initialised MinHash copied per document. A new MinHash per document re-derives the 128 permutations each
    time, which halved the peer's speed in this bench before 2026-11-26."""
    kw = {"hashfunc": hashfunc} if hashfunc else {}
    return [m.hashvalues for m in MinHash.generator(shingle_lists, num_perm=128, seed=1, scheme="affine32", **kw)]


def speed(docs: list[str], n: int, passes: int = 3) -> dict[str, float]:
    """Signatures/s on one core: ours vs datasketch (sha1 default, and xxh32), on the same documents, best of
    `passes` (the first warms caches)."""
    sample = docs[:n]
    shingles = [word_shingles(d, 5) for d in sample]
    ours = MinHasher()
    xxh = xxhash.xxh32_intdigest
    theirs = datasketch_signatures(shingles, xxh)
    identical = all(np.array_equal(ours.signature_of_shingles(s), t) for s, t in zip(shingles, theirs, strict=True))
    identical &= bool(np.array_equal(ours.signatures(sample), np.stack(theirs)))  # the batch path dedup runs
    runs = {
        "ours_from_shingles": lambda: rate(ours.signature_of_shingles, shingles),
        "ds_sha1_from_shingles": lambda: rate_all(datasketch_signatures, shingles),
        "ds_xxh32_from_shingles": lambda: rate_all(lambda sh: datasketch_signatures(sh, xxh), shingles),
        "ours_end_to_end": lambda: rate_all(ours.signatures, sample),  # in batches, as the shard workers sign
        "ds_sha1_end_to_end": lambda: rate_all(lambda ds: datasketch_signatures(word_shingles(d, 5) for d in ds),
                                               sample),
        "ds_xxh32_end_to_end": lambda: rate_all(
            lambda ds: datasketch_signatures((word_shingles(d, 5) for d in ds), xxh), sample),
    }
    best = dict.fromkeys(runs, 0.0)
    for _ in range(passes):  # interleaved; the best pass of each is reported (the machine is shared: others
        for k, run in runs.items():  # only add time)
            best[k] = max(best[k], run())
    return {"identical_to_datasketch_xxh32": identical, **best}


class RssSampler(threading.Thread):
    """Peak of (a process + all its descendants) resident memory, sampled every `every` s from /proc:
    `peak_mb`, the largest sum of their VmRSS seen at once (a sample can miss a short peak), and
    `peaks_mb`, the sum of each process's own peak (its VmHWM as last read, which no sample misses; an
    upper bound, as the processes need not peak at once).

    (ru_maxrss of children is no use here: a spawned worker briefly holds the parent's pages between
    fork and exec, so it reports the parent's size.)"""

    def __init__(self, pid: int | None = None, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid or os.getpid(), every
        self.peak_mb, self.hwm, self.stop = 0.0, {}, threading.Event()

    @property
    def peaks_mb(self) -> float:
        return sum(self.hwm.values())

    @staticmethod
    def _tree(pid: int) -> list[int]:
        out = [pid]
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            for child in task.read_text().split():
                out += RssSampler._tree(int(child))
        return out

    @staticmethod
    def _status_mb(pid: int) -> tuple[float, float]:
        """(VmRSS, VmHWM) of a process in MB; zeros once it is gone."""
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
            return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
        except (FileNotFoundError, ProcessLookupError, KeyError, ValueError):
            return 0.0, 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                now = 0.0
                for pid in self._tree(self.pid):
                    rss, hwm = self._status_mb(pid)
                    now += rss
                    self.hwm[pid] = hwm or self.hwm.get(pid, 0.0)  # the latest: one read between fork and
                    # exec gives the parent's size
                self.peak_mb = max(self.peak_mb, now)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
            self.stop.wait(self.every)


def synthetic_corpus(path: Path, n_docs: int, words: int = 500, dup_frac: float = 0.1, seed: int = 0) -> None:
    """The field notes' corpus (A.1) at scale: 500 Zipf(1.07) pseudo-words from a 30k vocabulary per
    document, and `dup_frac` near-copies of random originals with 0-8 % of their words replaced."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, size=n)) for n in rng.integers(2, 11, size=30_000)])
    cdf = np.cumsum(1.0 / np.arange(1, vocab.size + 1) ** 1.07)
    cdf /= cdf[-1]
    n_orig = n_docs - int(n_docs * dup_frac)
    docs = [" ".join(vocab[np.searchsorted(cdf, rng.random(words))]) for _ in range(n_orig)]
    for src in rng.integers(0, n_orig, size=n_docs - n_orig):
        w = docs[int(src)].split()
        for j in rng.choice(len(w), size=int(len(w) * rng.uniform(0.0, 0.08)), replace=False):
            w[int(j)] = vocab[int(rng.integers(vocab.size))]
        docs.append(" ".join(w))
    order = rng.permutation(n_docs)  # copies spread over the file, not all in its last row groups
    pl.DataFrame({"id": [f"d{i:08d}" for i in range(n_docs)], "text": [docs[int(i)] for i in order],
                  "quality_score": rng.random(n_docs)}).write_parquet(path)


DATASKETCH_PEER = """
import sys, pyarrow.parquet as pq, xxhash
from datasketch import LeanMinHash, MinHash, MinHashLSH
from textbookgen.curation.normalize import word_shingles
lsh, dropped = MinHashLSH(threshold=float(sys.argv[2]), num_perm=128), 0
for batch in pq.ParquetFile(sys.argv[1]).iter_batches(batch_size=10_000, columns=["id", "text"]):
    shingles = (word_shingles(text, 5) for text in batch.column("text").to_pylist())
    signed = MinHash.generator(shingles, num_perm=128, seed=1, scheme="affine32", hashfunc=xxhash.xxh32_intdigest)
    for key, m in zip(batch.column("id").to_pylist(), signed):
        m = LeanMinHash(m)
        if lsh.query(m):
            dropped += 1
        else:
            lsh.insert(key, m, check_duplication=False)
print(f"dropped={dropped}")
"""
# run first in the measured process: its own peak at exit goes to stderr (VmHWM, not ru_maxrss, which
# keeps the high-water mark of the bench process it was forked from across the exec)
SELF_PEAK = ("import atexit, re, sys; atexit.register(lambda: print('self_peak_kb=' + re.search(r'VmHWM:\\s*(\\d+)', "
             "open('/proc/self/status').read()).group(1), file=sys.stderr))\n")


def measured(code: str, *args: str, pythonpath: str | None = None) -> tuple[float, float, float, str]:
    """(wall s, the main process's peak MB, the sum of every process's peak MB, stdout) of
    `python -c code args` in a fresh process (the main one's peak is read as it exits, exact), run in
    an empty folder so that `pythonpath` is not shadowed by a textbookgen package in the current one."""
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as cwd:
            proc = subprocess.Popen([sys.executable, "-c", SELF_PEAK + code, *args], stdout=out, stderr=err,
                                    text=True, env=env, cwd=cwd)
            sampler = RssSampler(proc.pid, every=0.05)
            sampler.start()
            proc.wait()
        wall = time.perf_counter() - t
        sampler.stop.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        log = err.read()
        if proc.returncode:
            raise SystemExit(f"{args[:2]}: exit {proc.returncode}\n{log[-2000:]}")
        main_mb = int(re.findall(r"self_peak_kb=(\d+)", log)[-1]) / 1024
        others = sum(mb for pid, mb in sampler.hwm.items() if pid != proc.pid)
        return wall, main_mb, main_mb + others, out.read()


def memory(sizes: list[int], workers: int, threshold: float, peer: bool, baseline: str | None) -> None:
    """`textbookgen dedup` and datasketch MinHashLSH on the same synthetic corpora, each in a fresh process;
    with `baseline`, also the `textbookgen` package found there (an older checkout), on the same corpus."""
    print("| docs | input MB | code | wall s | peak MB, main process | peak MB, all processes | kept |"
          "\n|---:|---:|---|---:|---:|---:|---:|")
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-dedup-mem-") as tmp:
            src = Path(tmp) / "in.parquet"
            synthetic_corpus(src, n)
            mb = src.stat().st_size / 2**20
            runs = [("ours", None), *([("ours, baseline", baseline)] if baseline else [])]
            for name, path in runs:
                r = measured("from textbookgen.cli import app; app(prog_name='textbookgen')", "dedup", str(src),
                             "-o", str(Path(tmp) / f"out-{len(rows)}.parquet"), "--workers", str(workers),
                             "--threshold", str(threshold), pythonpath=path)
                kept = f"{json.loads(r[3])['minhash_dedup']['kept']:,}"
                rows.append((n, name, r[2]))
                print(f"| {n:,} | {mb:,.0f} | {name} | {r[0]:.1f} | {r[1]:,.0f} | {r[2]:,.0f} | {kept} |", flush=True)
            if peer:
                r = measured(DATASKETCH_PEER, str(src), str(threshold))
                rows.append((n, "datasketch", r[2]))
                print(f"| {n:,} | {mb:,.0f} | datasketch MinHashLSH | {r[0]:.1f} | {r[1]:,.0f} | {r[2]:,.0f} | "
                      f"{n - int(r[3].strip().removeprefix('dropped=')):,} |", flush=True)
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()} on {os.cpu_count()} cores")
    growth = []
    for name in dict.fromkeys(r[1] for r in rows):
        mine = [r for r in rows if r[1] == name]
        (n0, _, m0), (n1, _, m1) = mine[0], mine[-1]
        growth.append(f"kb_per_doc_{re.sub(r'[^a-z]+', '_', name.lower()).strip('_')}={(m1 - m0) * 1024 / max(n1 - n0, 1):.2f}")
    print(" ".join(growth))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", default="100000", help="documents; with --memory, comma-separated sizes")
    ap.add_argument("--memory", action="store_true", help="peak RSS and wall time of `textbookgen dedup` "
                    "against datasketch MinHashLSH on synthetic corpora of each --docs size")
    ap.add_argument("--no-peer", action="store_true", help="with --memory: skip datasketch")
    ap.add_argument("--baseline", help="with --memory: also run the textbookgen package in this folder (e.g. a "
                    "`git worktree` of an older commit) on the same corpora")
    ap.add_argument("--dup-frac", type=float, default=0.1)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--speed-docs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.memory:
        memory([int(n) for n in args.docs.split(",")], args.workers, args.threshold, not args.no_peer, args.baseline)
        return
    args.docs = int(args.docs)
    skip_without(DATA_FILES)
    sampler = RssSampler()
    sampler.start()

    t0 = time.perf_counter()
    docs, planted = build_corpus(args.docs, args.dup_frac, args.seed)
    words = np.array([len(d.split()) for d in docs])
    print(f"corpus: {len(docs):,} docs ({len(planted):,} planted near-copies), words/doc median "
          f"{int(np.median(words))} mean {words.mean():.0f}, built in {time.perf_counter() - t0:.1f}s", flush=True)

    sp = speed(docs[: args.docs - len(planted)], args.speed_docs)
    print("\n| signatures/s, 1 core, num_perm=128, word 5-grams | ours (numpy, xxh32) | datasketch sha1 (default) "
          "| datasketch xxh32 |\n|---|---:|---:|---:|")
    for k in ("from_shingles", "end_to_end"):
        print(f"| {k.replace('_', ' ')} | {sp['ours_' + k]:,.0f} | {sp['ds_sha1_' + k]:,.0f} | "
              f"{sp['ds_xxh32_' + k]:,.0f} |")
    print(f"bit-identical to datasketch (xxh32 hashfunc) on all {args.speed_docs} timed docs: "
          f"{sp['identical_to_datasketch_xxh32']}", flush=True)

    df = pl.DataFrame({"id": [f"d{i:07d}" for i in range(len(docs))], "text": docs})
    cfg = MinHashConfig(threshold=args.threshold, workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        t1, c1 = time.perf_counter(), os.times()
        out, stats = MinHashDedup(cfg)(df, Path(tmp))
        wall, c2 = time.perf_counter() - t1, os.times()
        cpu = (c2.user + c2.system + c2.children_user + c2.children_system) - \
            (c1.user + c1.system + c1.children_user + c1.children_system)
        clusters = pl.read_parquet(Path(tmp) / "clusters.parquet")
    print(f"\ndedup: {stats.n_in:,} -> {stats.kept:,} docs in {wall:.1f}s with {args.workers} workers "
          f"({stats.n_in / wall:,.0f} docs/s wall; {cpu:.0f} CPU-s, {stats.n_in / cpu:,.0f} docs per CPU-s), bands x rows {stats.extra['bands']}x{stats.extra['rows']}, "
          f"{stats.extra['verified_pairs']:,} verified pairs, {stats.extra['clusters']:,} clusters", flush=True)

    # ground truth: exact Jaccard of every planted pair, and of every pair we put in one cluster
    idx = {f"d{i:07d}": i for i in range(len(docs))}
    members = clusters.group_by("cluster").agg(pl.col("id"))["id"].to_list()
    predicted = {tuple(sorted((idx[a], idx[b]))) for m in members for a, b in itertools.combinations(m, 2)}
    planted_j = {tuple(sorted(p)): exact_jaccard(docs[p[0]], docs[p[1]]) for p in planted}
    pred_j = {p: planted_j[p] if p in planted_j else exact_jaccard(docs[p[0]], docs[p[1]]) for p in predicted}
    truth = {p for p, j in planted_j.items() if j >= args.threshold} | \
        {p for p, j in pred_j.items() if j >= args.threshold}
    tp = sum(1 for p in predicted if pred_j[p] >= args.threshold)
    precision = tp / len(predicted) if predicted else 1.0
    recall = len(truth & predicted) / len(truth) if truth else 1.0
    js = np.array(list(planted_j.values()))
    print(f"planted pairs by exact Jaccard: <0.6 {int((js < 0.6).sum())}, 0.6-0.8 "
          f"{int(((js >= 0.6) & (js < 0.8)).sum())}, 0.8-0.9 {int(((js >= 0.8) & (js < 0.9)).sum())}, "
          f">=0.9 {int((js >= 0.9).sum())}")
    band = [p for p, j in planted_j.items() if args.threshold <= j < args.threshold + 0.05]
    print(f"ground-truth pairs (J >= {args.threshold}): {len(truth):,} ({len(truth) - int((js >= args.threshold).sum())}"
          f" not planted); predicted same-cluster pairs: {len(predicted):,}; recall in "
          f"[{args.threshold:g}, {args.threshold + 0.05:g}): {sum(p in predicted for p in band) / max(len(band), 1):.3f}")
    sampler.stop.set()
    sampler.join()
    print(f"peak RSS, bench process + workers (corpus and ground truth included): {sampler.peak_mb:,.0f} MB; "
          f"load average during the run: {os.getloadavg()[1]:.1f} on {os.cpu_count()} cores")
    ratio = {(k, h): sp[f"ours_{k}"] / sp[f"ds_{h}_{k}"] for k in ("end_to_end", "from_shingles")
             for h in ("xxh32", "sha1")}
    print("\n| speedup of ours over datasketch | vs xxh32 (same signatures) | vs sha1 (default, other signatures) |"
          "\n|---|---:|---:|")
    for k in ("end_to_end", "from_shingles"):
        print(f"| {k.replace('_', ' ')} | {ratio[k, 'xxh32']:.2f}x | {ratio[k, 'sha1']:.2f}x |")
    # the last line's speedup is the like-for-like one: same hash, same signatures, shingling timed in both
    print(f"speedup_vs_datasketch_xxh32_end_to_end={ratio['end_to_end', 'xxh32']:.2f} precision={precision:.4f} "
          f"recall={recall:.4f} docs_per_s={stats.n_in / wall:.0f} peak_rss_mb={sampler.peak_mb:.0f}")


if __name__ == "__main__":
    main()
