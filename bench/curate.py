"""Heuristic filter and decontamination throughput: one process against a pool of workers, same rows.

Documents: wikipedia_en_1k, c4_en_sample_1k and SciPhi textbook sections (split at headings, >= 50 words),
cycled to --docs. Decontamination runs against every shipped benchmark in full (about 39k items, 5.5M
13-grams: the index a real build carries). Each step runs with workers=1 and then workers=--workers on
the same rows (the default start method: fork on Linux), best of --repeats; the kept rows, counts and
reports must be identical, and the table says so. CPU time is read from getrusage and /proc: "all" is
this process and its workers together (the pool's overhead shows there), "busiest process" is the one
that worked longest, i.e. the wall time where each process has a core to itself, and the CPU-bound
speedup is the serial run's CPU over it. On a busy machine the wall-clock speedup is capped by the
cores left over: with the kernel's autogroup scheduling a whole session shares one fair slice, however
many processes it runs. With --spawn, decontamination also runs through `map_rows` on spawned workers, each given the
step pickled once by the pool initializer (the size is printed: what pickling it per chunk would send
every chunk).

Memory is the peak PSS summed over this process and its workers, sampled every 0.25 s from /proc (Linux):
PSS counts a page shared by k processes as 1/k, so the copy-on-write sharing of a forked index shows.
There is no peer column: the field notes give no published datatrove throughput for these steps.

    python bench/curate.py                   # 4,000 docs, 2 workers, best of 3
    python bench/curate.py --docs 1000 --spawn

Last line: filters_docs_per_s=<serial>-><pool> decontam_docs_per_s=<serial>-><pool> identical=<yes|no>
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import re
import resource
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from textbookgen.curation.base import map_rows
from textbookgen.curation.config import BenchmarkSource, DecontaminationConfig, FilterConfig
from textbookgen.curation.decontaminate import Decontaminate, _match_rows, load_benchmark_texts
from textbookgen.curation.filters import HeuristicFilter

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


def skip_without(files: list[Path]) -> None:
    """Exit 0 with one line where the shared data is absent: only developer and CI machines have
    ../shared/data, and without it there is nothing to measure."""
    if missing := [f for f in files if not f.exists()]:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        print(f"skipped: {Path(__file__).name} reads the shared data: {missing[0]} not found{more}")
        raise SystemExit(0)


def read(path: Path, field: str) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)[field] for line in f]


def corpus(n_docs: int) -> pl.DataFrame:
    docs = read(WIKIPEDIA, "eng_Latn") + read(C4, "text")
    for book in read(SCIPHI, "text"):
        docs += [s for s in re.split(r"\n(?=#{1,3} )", book) if len(s.split()) >= 50]
    texts = [docs[i % len(docs)] for i in range(n_docs)]
    return pl.DataFrame({"id": [f"d{i:07d}" for i in range(n_docs)], "text": texts})


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
        self.peak, self.child_cpu, self.own_cpu, self._stop = 0.0, {}, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        """Reading PSS walks a process's page tables: its own CPU time is kept, to be left out."""
        me = os.getpid()
        while not self._stop.wait(0.25):
            kids = children(me)
            self.peak = max(self.peak, pss_mb(me) + sum(pss_mb(c) for c in kids))
            for c in kids:
                self.child_cpu[c] = max(self.child_cpu.get(c, 0.0), cpu_of(c))
        self.own_cpu = time.thread_time()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each setting; the fastest is reported")
    ap.add_argument("--spawn", action="store_true", help="also decontaminate on spawned workers (slow to start)")
    args = ap.parse_args()
    skip_without(DATA_FILES)
    df = corpus(args.docs)
    words = df["text"].str.split(" ").list.len().mean()
    t = time.perf_counter()
    items = [t for n, p in BENCHMARKS.items() for t in load_benchmark_texts(BenchmarkSource(name=n, path=str(p)))]
    decon = Decontaminate(DecontaminationConfig(), texts=items, chunk_size=args.chunk_size)
    print(f"{df.height:,} docs (mean {words:.0f} words), {len(items):,} benchmark items, "
          f"{len(decon.index.hashes):,} indexed 13-grams, index built in {time.perf_counter() - t:.1f} s; "
          f"pickled step {len(pickle.dumps(decon, protocol=5)) / 2**20:.0f} MiB")

    rows, rates, identical = [], {}, True
    filters = HeuristicFilter(FilterConfig(), chunk_size=args.chunk_size)
    for name, step, report in (("filters", filters, "dropped.parquet"),
                               ("decontamination", decon, "contamination.parquet")):
        runs = {}
        for workers in (1, args.workers):
            step.workers = workers
            runs[workers] = best_of(args.repeats, lambda step=step, report=report: step_outputs(step, df, report))
        serial, pooled = runs[1], runs[args.workers]
        ok = same(serial.result, pooled.result)
        identical &= ok
        rates[name] = serial, pooled
        rows.append((name, "1", "-", serial, serial, "-"))
        rows.append((name, str(args.workers), "fork", pooled, serial, "yes" if ok else "NO"))

    if args.spawn:
        texts = df["text"]
        here = list(map_rows(_match_rows, decon, [texts], 1, args.chunk_size))
        spawned = timed(lambda: list(map_rows(_match_rows, decon, [texts], args.workers, args.chunk_size,
                                              start_method="spawn")))
        identical &= spawned.result == here
        rows.append(("decontamination (map_rows)", str(args.workers), "spawn", spawned,
                     rates["decontamination"][0], "yes" if spawned.result == here else "NO"))

    print("\n| step | workers | start | docs/s | wall speedup | CPU s, all | CPU s, busiest process "
          f"| CPU-bound speedup | peak PSS MiB | identical to serial |\n|{'---|' * 10}")
    for name, w, start, run, serial, ok in rows:
        print(f"| {name} | {w} | {start} | {df.height / run.wall:,.0f} | {serial.wall / run.wall:.2f}x "
              f"| {run.cpu:,.1f} | {run.busiest:,.1f} | {serial.busiest / run.busiest:.2f}x "
              f"| {run.peak_mb:,.0f} | {ok} |")
    f, d = rates["filters"], rates["decontamination"]
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"filters_docs_per_s={df.height / f[0].wall:.0f}->{df.height / f[1].wall:.0f} "
          f"decontam_docs_per_s={df.height / d[0].wall:.0f}->{df.height / d[1].wall:.0f} "
          f"identical={'yes' if identical else 'no'}")


if __name__ == "__main__":
    main()
