"""Heuristic filter and decontamination throughput: one process against a pool of workers, same rows.

Documents: wikipedia_en_1k, c4_en_sample_1k and SciPhi textbook sections (split at headings, >= 50 words),
shuffled (seed 0) and cycled to --docs. Decontamination runs against every shipped benchmark in full (about
39k items, 5.9M n-grams of 5-13 words: the index a real build carries). Each step runs with workers=1 and then
workers=--workers on the same rows (the default start method: fork on Linux), best of --repeats; the kept
rows, counts and reports must be identical, and the table says so. CPU time is read from getrusage and
/proc: "all" is this process and its workers together (the pool's overhead shows there), "busiest process"
is the one that worked longest, i.e. the wall time where each process has a core to itself, and the
CPU-bound speedup is the serial run's CPU over it. On a busy machine the wall-clock speedup is capped by the
cores left over: with the kernel's autogroup scheduling a whole session shares one fair slice, however many
processes it runs. With --spawn, decontamination also runs through `map_rows` on spawned workers, each given
the step pickled once by the pool initializer (the size is printed: what pickling it per chunk would send
every chunk).

Memory is the peak PSS summed over this process and its workers, sampled every 0.25 s from /proc (Linux):
PSS counts a page shared by k processes as 1/k, so the copy-on-write sharing of a forked index shows.
The filters run before the decontamination index is built, so their memory is their own; the
decontamination rows' memory includes what the peer loaded (spaCy), printed as the PSS before the index.

Peer (`pip install -e ".[bench]"`): datatrove's GopherQualityFilter + GopherRepetitionFilter on the same
documents, set to our thresholds (the lines printed under "datatrove peer" say what still differs; its
C4 and FineWeb filters are not run: ours has none of their rules but C4's "lorem ipsum"). Serially the
filters' `filter()` is called on each Document in this process (datatrove's fastest serial path: no
reader, writer or stats; it also gives each document's failing rule); the pool is its own pipeline, a
LocalPipelineExecutor with one task per worker (ParquetReader over one shard each -> filters -> ParquetWriter
of the kept documents), forked like ours (its default, forkserver, imports datatrove and spaCy again in
every worker). spaCy's blank English tokenizer is loaded before timing. The table gives the share of
documents on which its keep/drop decision agrees with ours, and the disagreements follow by rule pair.

    python bench/curate.py                   # 4,000 docs, 2 workers, best of 3
    python bench/curate.py --docs 1000 --spawn

Last line: filters_docs_per_s=<serial>-><pool> datatrove_docs_per_s=<serial>-><pool> (or none)
decontam_docs_per_s=<serial>-><pool> identical=<yes|no> agreement=<share of docs, or none>
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import pickle
import platform
import random
import re
import resource
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from shared_data import skip_without  # bench/ is on the path

from textbookgen.curation.base import map_rows
from textbookgen.curation.config import BenchmarkSource, DecontaminationConfig, FilterConfig
from textbookgen.curation.decontaminate import Decontaminate, _match_rows, load_benchmark_texts
from textbookgen.curation.filters import STOP_WORDS, HeuristicFilter

try:
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from loguru import logger
except ImportError:
    LocalPipelineExecutor = None

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKIPEDIA = DATA / "wikipedia_en_1k" / "wikipedia.jsonl.gz"
C4 = DATA / "c4_en_sample_1k" / "c4_sample.jsonl.gz"
SCIPHI = DATA / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz"
GAUNTLET = DATA / "llmfoundry_eval_gauntlet"
BENCHMARKS = {
    "arc_easy": GAUNTLET / "arc_easy.jsonl.gz", "arc_challenge": GAUNTLET / "arc_challenge.jsonl.gz",
    "boolq": GAUNTLET / "boolq.jsonl.gz", "winogrande": GAUNTLET / "winogrande.jsonl.gz",
    "piqa": GAUNTLET / "piqa.jsonl.gz", "siqa": DATA / "siqa_3choice", "openbookqa": GAUNTLET / "openbook_qa.jsonl.gz",
    "mmlu": DATA / "mmlu" / "mmlu_dev_test_csv.tar.gz", "hellaswag": DATA / "hellaswag",
    "gsm8k": DATA / "gsm8k" / "test.jsonl.gz", "humaneval": DATA / "humaneval" / "HumanEval.jsonl.gz",
    "mbpp": DATA / "opencompass_data_formulamonks" / "mbpp__mbpp.jsonl.gz",
}
DATA_FILES = [WIKIPEDIA, C4, SCIPHI, *BENCHMARKS.values()]


def read(path: Path, field: str) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)[field] for line in f]


def corpus(n_docs: int) -> tuple[pl.DataFrame, list[str]]:
    """The documents, and the source of each (for the disagreement examples), in a seeded shuffled order so
    that a small --docs is the same mix as the whole (in file order, 1,000 documents were all Wikipedia)."""
    docs = [("wikipedia", t) for t in read(WIKIPEDIA, "eng_Latn")] + [("c4", t) for t in read(C4, "text")]
    for book in read(SCIPHI, "text"):
        docs += [("sciphi", s) for s in re.split(r"\n(?=#{1,3} )", book) if len(s.split()) >= 50]
    random.Random(0).shuffle(docs)
    picked = [docs[i % len(docs)] for i in range(n_docs)]
    df = pl.DataFrame({"id": [f"d{i:07d}" for i in range(n_docs)], "text": [t for _, t in picked]})
    return df, [s for s, _ in picked]


def cpu_model() -> str:
    """The machine in the output: timings from a shared 2-core box are not speed conclusions."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def pss_mb(pid: int) -> float:
    """Proportional set size of one process (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def cpu_of(pid: int) -> float:
    """utime + stime of a live process, in seconds (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Peak PSS of this process plus its children, and each child's CPU time, sampled on a thread."""

    def __enter__(self) -> Sampler:
        """One sample here and one at the exit, outside the timed CPU: a step quicker than the sampling
        period still gets a peak (it printed 0)."""
        self.peak, self.child_cpu, self.own_cpu, self._stop = 0.0, {}, 0.0, threading.Event()
        self._take()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        """Reading PSS walks a process's page tables: its own CPU time is kept, to be left out."""
        while not self._stop.wait(0.25):
            self._take()
        self.own_cpu = time.thread_time()

    def _take(self) -> None:
        me = os.getpid()
        kids = children(me)
        self.peak = max(self.peak, pss_mb(me) + sum(pss_mb(c) for c in kids))
        for c in kids:
            self.child_cpu[c] = max(self.child_cpu.get(c, 0.0), cpu_of(c))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()


def cpu_seconds() -> tuple[float, float]:
    """CPU time of this process, and of its finished children (the pool's workers, once shut down)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


@dataclass
class Run:
    result: object
    wall: float  # seconds
    cpu: float  # CPU seconds, this process and its workers
    busiest: float  # CPU seconds of the busiest process: the wall time given a free core each
    peak_mb: float


def timed(fn) -> Run:
    with Sampler() as sampler:
        t, (me0, kids0) = time.perf_counter(), cpu_seconds()
        result = fn()
        wall, (me1, kids1) = time.perf_counter() - t, cpu_seconds()
    me = me1 - me0 - sampler.own_cpu
    return Run(result, wall, me + kids1 - kids0, max([me, *sampler.child_cpu.values()]), sampler.peak)


def best_of(repeats: int, fn) -> Run:
    """The fastest of `repeats` calls (the machine is shared; others only add time), with the highest
    peak memory seen."""
    runs = [timed(fn) for _ in range(repeats)]
    best = min(runs, key=lambda r: r.wall)
    best.peak_mb = max(r.peak_mb for r in runs)
    return best


def step_outputs(step, df: pl.DataFrame, report: str):
    """The step's kept rows, stats and report file, in a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp:
        out, stats = step(df, Path(tmp))
        return out, stats.as_dict(), pl.read_parquet(Path(tmp) / report)


def same(a, b) -> bool:
    return a[0].equals(b[0]) and a[1] == b[1] and a[2].equals(b[2])


# What still differs once datatrove's filters are given our thresholds (printed with the table)
PEER_DIFFERENCES = (
    "words: ours split on whitespace; datatrove tokenizes with spaCy's English tokenizer and leaves "
    "punctuation tokens out of the word count and mean word length",
    "ours judges prose only (code fences, display math and heading marks cut; code documents exempt); "
    "datatrove judges the whole text",
    "stop words: both count distinct ones; ours lower-cased and stripped of punctuation, datatrove's "
    "case-sensitive",
    "words with a letter: ours drops above a 0.4 share without one, datatrove below a minimum share with "
    "one, set to 0.6 to match (Gopher's paper and datatrove's default: 0.8, which drops textbook exercise "
    "lists of inline math)",
    "duplicate lines: ours over stripped non-empty lines, characters over the lines' characters; datatrove "
    "over lines split on newlines, characters over the text's",
    "duplicate paragraphs: datatrove's character share rule (0.2) is off, ours has none",
    "n-grams: characters over ours' prose length, datatrove's text length; ours' top n-gram must recur",
    "bullets: ours •●○▪-*– over non-empty lines, datatrove • and - over all lines (ellipses likewise)",
    "ours only: boilerplate phrases, code rules; datatrove's C4 and FineWeb filters not run",
)


def peer_filters(cfg: FilterConfig) -> list:
    """datatrove's Gopher filters with our thresholds; quality first, as our rules run, so the first
    failing rules compare."""
    return [
        GopherQualityFilter(
            min_doc_words=cfg.min_words, max_doc_words=cfg.max_words,
            min_avg_word_length=cfg.prose_min_mean_word_len, max_avg_word_length=cfg.prose_max_mean_word_len,
            max_symbol_word_ratio=cfg.prose_max_symbol_word_ratio,
            max_bullet_lines_ratio=cfg.prose_max_bullet_line_frac,
            max_ellipsis_lines_ratio=cfg.prose_max_ellipsis_line_frac,
            max_non_alpha_words_ratio=round(1 - cfg.prose_max_non_alpha_word_frac, 6),
            min_stop_words=cfg.prose_min_stop_words, stop_words=sorted(STOP_WORDS),
        ),
        GopherRepetitionFilter(
            dup_line_frac=cfg.max_duplicate_line_frac, dup_para_frac=cfg.max_duplicate_para_frac,
            dup_line_char_frac=cfg.max_duplicate_line_char_frac, dup_para_char_frac=None,
            top_n_grams=tuple(sorted(cfg.max_top_ngram_char_frac.items())),
            dup_n_grams=tuple(sorted(cfg.max_dup_ngram_char_frac.items())),
        ),
    ]


def peer_reasons(filters: list, df: pl.DataFrame) -> list[str | None]:
    """Each document's first failing datatrove rule (None: kept), from the filters' `filter()`."""
    reasons = []
    for doc_id, text in zip(df["id"], df["text"], strict=True):
        doc, reason = Document(text=text, id=doc_id), None
        for f in filters:
            verdict = f.filter(doc)
            if not (verdict[0] if isinstance(verdict, tuple) else verdict):
                reason = verdict[1] if isinstance(verdict, tuple) else f.name
                break
        reasons.append(reason)
    return reasons


def write_shards(df: pl.DataFrame, folder: Path, n: int) -> None:
    """One parquet file per task: datatrove's readers split the work by file."""
    folder.mkdir()
    size = -(-df.height // n)
    for i in range(n):
        df.slice(i * size, size).write_parquet(folder / f"{i:05d}.parquet")


def peer_pipeline(filters: list, shards: Path, workers: int) -> set[str]:
    """The ids datatrove's own pipeline keeps: reader -> filters -> writer, one task per worker, forked.
    Its log lines (to stderr, and to files) are kept out of the table."""
    with tempfile.TemporaryDirectory() as tmp:
        executor = LocalPipelineExecutor(
            [ParquetReader(str(shards), glob_pattern="*.parquet"), *filters, ParquetWriter(f"{tmp}/kept")],
            tasks=workers, workers=workers, logging_dir=f"{tmp}/logs", start_method="fork",
        )
        logger.remove()
        with contextlib.redirect_stderr(io.StringIO()):
            executor.run()
        kept = list(Path(tmp, "kept").glob("*.parquet"))
        return set(pl.read_parquet(kept)["id"]) if kept else set()


def agreement(report: pl.DataFrame, peer: list[str | None], df: pl.DataFrame, sources: list[str]) -> float:
    """Print where the keep/drop decisions differ, by (our rule, datatrove's rule), with an example of each;
    return the share of documents on which they agree. `report` is our dropped.parquet, read by column name
    (it also has each document's input row)."""
    ours = dict(report.select("id", "reason").iter_rows())  # dropped id -> our first failing rule
    pairs, examples = Counter(), {}
    for i, (doc_id, text) in enumerate(zip(df["id"], df["text"], strict=True)):
        mine, theirs = ours.get(doc_id), peer[i]
        if (mine is None) != (theirs is None):
            pair = (mine or "kept", theirs or "kept")
            pairs[pair] += 1
            examples.setdefault(pair, f"{doc_id} ({sources[i]}, {len(text.split())} words): "
                                      f"{' '.join(text.split())[:80]!r}")
    share = 1 - sum(pairs.values()) / df.height
    print(f"\ndatatrove peer: keep/drop agree on {df.height - sum(pairs.values()):,} of {df.height:,} docs "
          f"({share:.1%}); ours drops {sum(r is not None for r in ours.values()):,}, datatrove "
          f"{sum(r is not None for r in peer):,}")
    if pairs:
        print("\n| ours | datatrove | docs | first example |\n|---|---|---:|---|")
        for (mine, theirs), n in pairs.most_common():
            print(f"| {mine} | {theirs} | {n} | {examples[mine, theirs]} |")
    print("\nWhat still differs with our thresholds set on datatrove's filters:")
    print("\n".join(f"- {line}" for line in PEER_DIFFERENCES))
    return share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each setting; the fastest is reported")
    ap.add_argument("--spawn", action="store_true", help="also decontaminate on spawned workers (slow to start)")
    args = ap.parse_args()
    skip_without(DATA_FILES)
    df, sources = corpus(args.docs)
    words = df["text"].str.split(" ").list.len().mean()
    mix = ", ".join(f"{n:,} {s}" for s, n in Counter(sources).items())
    print(f"{df.height:,} docs (mean {words:.0f} words; {mix}) on {cpu_model()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")

    # rows: step, workers, start, run, the same code's serial run, identical to it, agrees with ours
    rows, rates, identical = [], {}, True

    def measure(name: str, step, report: str) -> None:
        nonlocal identical
        runs = {}
        for workers in (1, args.workers):
            step.workers = workers
            runs[workers] = best_of(args.repeats, lambda: step_outputs(step, df, report))
        serial, pooled = runs[1], runs[args.workers]
        ok = same(serial.result, pooled.result)
        identical &= ok
        rates[name] = serial, pooled
        rows.append((name, "1", "-", serial, serial, "-", "-"))
        rows.append((name, str(args.workers), "fork", pooled, serial, "yes" if ok else "NO", "-"))

    cfg = FilterConfig()
    measure("filters", HeuristicFilter(cfg, chunk_size=args.chunk_size), "dropped.parquet")
    share = None
    if LocalPipelineExecutor is None:
        print('datatrove peer skipped: not installed (pip install -e ".[bench]")')
    else:
        peer_reasons(peer_filters(cfg), df.head(1))  # loads spaCy's tokenizer; forked workers inherit it
        serial = best_of(args.repeats, lambda: peer_reasons(peer_filters(cfg), df))
        with tempfile.TemporaryDirectory() as tmp:
            write_shards(df, Path(tmp, "shards"), args.workers)
            shards = Path(tmp, "shards")
            pooled = best_of(args.repeats, lambda: peer_pipeline(peer_filters(cfg), shards, args.workers))
        peer_kept = {i for i, r in zip(df["id"], serial.result, strict=True) if r is None}
        share = agreement(rates["filters"][0].result[2], serial.result, df, sources)
        ok = "yes" if pooled.result == peer_kept else "NO"
        rates["datatrove"] = serial, pooled
        rows.append(("filters, datatrove filter()", "1", "-", serial, serial, "-", f"{share:.1%}"))
        rows.append(("filters, datatrove executor", str(args.workers), "fork", pooled, serial, ok,
                     f"{share:.1%}"))

    before_index, t = pss_mb(os.getpid()), time.perf_counter()
    items = [t for n, p in BENCHMARKS.items() for t in load_benchmark_texts(BenchmarkSource(name=n, path=str(p)))]
    decon = Decontaminate(DecontaminationConfig(), texts=items, chunk_size=args.chunk_size)
    print(f"\n{len(items):,} benchmark items, {len(decon.index.hashes):,} indexed n-grams (5-13 words), index built in "
          f"{time.perf_counter() - t:.1f} s; pickled step {len(pickle.dumps(decon, protocol=5)) / 2**20:.0f} MiB;"
          f" this process {before_index:,.0f} MiB PSS before it")
    measure("decontamination", decon, "contamination.parquet")

    if args.spawn:
        texts = df["text"]
        here = list(map_rows(_match_rows, decon, [texts], 1, args.chunk_size))
        spawned = timed(lambda: list(map_rows(_match_rows, decon, [texts], args.workers, args.chunk_size,
                                              start_method="spawn")))
        identical &= spawned.result == here
        rows.append(("decontamination (map_rows)", str(args.workers), "spawn", spawned,
                     rates["decontamination"][0], "yes" if spawned.result == here else "NO", "-"))

    print("\n| step | workers | start | docs/s | wall speedup | CPU s, all | CPU s, busiest process "
          f"| CPU-bound speedup | peak PSS MiB | identical to serial | keep/drop agrees with ours |\n|{'---|' * 11}")
    for name, w, start, run, serial, ok, agrees in rows:
        print(f"| {name} | {w} | {start} | {df.height / run.wall:,.0f} | {serial.wall / run.wall:.2f}x "
              f"| {run.cpu:,.1f} | {run.busiest:,.1f} | {serial.busiest / run.busiest:.2f}x "
              f"| {run.peak_mb:,.0f} | {ok} | {agrees} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; speedups are against the same "
          "code's serial run")

    def rate(name: str) -> str:
        if name not in rates:
            return "none"
        return f"{df.height / rates[name][0].wall:.0f}->{df.height / rates[name][1].wall:.0f}"

    print(f"filters_docs_per_s={rate('filters')} datatrove_docs_per_s={rate('datatrove')} "
          f"decontam_docs_per_s={rate('decontamination')} identical={'yes' if identical else 'no'} "
          f"agreement={'none' if share is None else f'{share:.4f}'}")


if __name__ == "__main__":
    main()
