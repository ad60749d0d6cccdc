"""Generation engine benchmark: our Generator vs a naive asyncio.gather, against the provider emulator.

Both run in this process against the same emulator, which runs in a *subprocess* so that its CPU is
not counted as the engine's. The emulator enforces 6,000 RPM, 2M input TPM and 400K output TPM,
quantised to one-second buckets (`window_s=1`, as OpenAI enforces high per-minute limits), with a
lognormal latency of median 0.8 s. The naive baseline is what most scripts do: `asyncio.gather`
under a semaphore, with the SDK's retries (honouring Retry-After). With the OpenAI wire format a 429'd
request counts against the RPM limit, as OpenAI's rate-limit guide says ("unsuccessful requests contribute
to your per-minute limit"); with Anthropic's it does not.

    python bench/generation.py                  # 5,000 prompts, ~3 minutes
    python bench/generation.py --prompts 1000   # quicker
    python bench/generation.py --processes 4    # 4 engine processes sharing one key (no baselines)
    python bench/generation.py --processes 4 --separate-budgets   # ...and the same with a budget per process
    python bench/generation.py --no-headers --rpm 1200 --latency 0.02 --prompts 600 --skip-baseline
                                                # a proxy that enforces an RPM limit but sends no limit headers

Two baselines: the SDK's default retries (2), and 7 retries, the engine's 8 attempts (so that what the
engine adds is not just more retries).

Prints a table and, as its last line:
`utilization=<achieved RPM / limit> rate_limited=<429 share of requests> cpu_ms_per_request=<engine
processes' CPU ms per request> duplicates_billed=<n> failed=<prompts without an answer> wall_s=<s>` for the
engine, then the same six for each baseline, prefixed `naive_` (default retries) and `naive8_` (8 attempts), or
with --processes --separate-budgets for the processes with a budget each, prefixed `separate_`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

RPM, INPUT_TPM, OUTPUT_TPM = 6000, 2_000_000, 400_000


def serve(args: argparse.Namespace) -> None:
    """The emulator process: print its base URL, serve until stdin closes."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    def responder(body: dict) -> str:  # ~40-60 output tokens, so requests (not output tokens) bind
        prompt = body["messages"][-1]["content"]
        return (f"{prompt.split(':')[-1].strip().capitalize()} is studied by observing, measuring and "
                "explaining. A good textbook section starts from a concrete example, states the rule, "
                "and then checks the rule against a new case.")

    cfg = EmulatorConfig(latency_median_s=args.latency, latency_sigma=0.5, rpm=args.rpm, input_tpm=INPUT_TPM,
                         output_tpm=OUTPUT_TPM, window_s=1.0, reserve_max_tokens=False, responder=responder,
                         seed=0, send_headers=not args.no_headers)

    async def main() -> None:
        async with Emulator(cfg) as emu:
            print(emu.base_url, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


def emulator_call(base: str, path: str) -> dict:
    method = "POST" if path.endswith("reset") else "GET"
    with urllib.request.urlopen(urllib.request.Request(base + path, method=method, data=b"" if method == "POST"
                                                       else None), timeout=30) as r:
        return json.loads(r.read())


def make_prompts(n: int) -> list[str]:
    subjects = ["photosynthesis", "plate tectonics", "prime numbers", "supply and demand", "the water cycle",
                "binary search", "Newton's laws", "cell division", "the French revolution", "entropy"]
    return [f"Write one short textbook paragraph for grade {6 + i % 7} students, item {i}, on the topic: "
            f"{subjects[i % len(subjects)]}" for i in range(n)]


MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
# the baselines: name -> the SDK's max_retries (2: its default; 7: the engine's 8 attempts, so that what the
# engine adds is not just more retries)
NAIVE = {"naive gather+semaphore": 2, "naive, 8 attempts": 7}


async def naive(provider: str, base: str, prompts: list[str], concurrency: int, max_tokens: int,
                retries: int = 2) -> dict:
    """The baseline: gather everything under a semaphore; the SDK's retries (2 by default, honouring
    Retry-After; 7 gives it the engine's 8 attempts)."""
    import anthropic
    import openai

    sem = asyncio.Semaphore(concurrency)
    if provider == "openai":
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-bench", max_retries=retries)

        async def call(prompt: str) -> str | None:
            r = await client.chat.completions.create(
                model=MODELS[provider], messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens)
            return r.choices[0].message.content
    else:
        client = anthropic.AsyncAnthropic(base_url=base, api_key="sk-ant-bench", max_retries=retries)

        async def call(prompt: str) -> str | None:
            r = await client.messages.create(
                model=MODELS[provider], messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens)
            return r.content[0].text

    async def one(prompt: str):
        async with sem:
            try:
                return await call(prompt)
            except (openai.APIError, anthropic.APIError):
                return None

    results = await asyncio.gather(*(one(p) for p in prompts))
    await client.close()
    return {"ok": sum(r is not None for r in results), "failed": sum(r is None for r in results)}


def ours(provider: str, base: str, prompts: list[str], concurrency: int, max_tokens: int, journal: Path) -> dict:
    from textbookgen.engine import ChatRequest, Generator

    gen = Generator(provider, MODELS[provider], base_url=base + "/v1" if provider == "openai" else base,
                    api_key="sk-bench", journal=journal, concurrency=concurrency, progress=True)
    responses = gen.run([ChatRequest(messages=[{"role": "user", "content": p}], max_tokens=max_tokens)
                         for p in prompts])
    return {"ok": sum(r.status in ("ok", "truncated") for r in responses),
            "failed": sum(r.status not in ("ok", "truncated") for r in responses), "retries": gen.stats["retries"]}


def ours_processes(args: argparse.Namespace, base: str, tmp: Path, shared: bool = True) -> dict:
    """`args.processes` engine processes on one API key, as a team runs several builds at once: each its own
    journal and every N-th prompt, none told of the others; they keep one rate budget on this host
    (textbookgen.sharedlimits, in a fresh folder), or with `shared=False` one each, sharing the key only through its
    rate-limit headers."""
    tmp.mkdir()
    env = {**os.environ, "TEXTBOOKGEN_LIMITS_DIR": str(tmp / "limits"), "TEXTBOOKGEN_SHARE_LIMITS": "1" if shared else "0"}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(i), "--processes", str(args.processes),
                               "--base", base, "--journal", str(tmp / f"journal{i}.sqlite"), "--prompts",
                               str(args.prompts), "--provider", args.provider, "--concurrency", str(args.concurrency),
                               "--max-tokens", str(args.max_tokens)], stdout=subprocess.PIPE, text=True, env=env)
             for i in range(args.processes)]
    results = [json.loads(p.communicate()[0].splitlines()[-1]) for p in procs]
    return {**{k: sum(r[k] for r in results) for k in ("ok", "failed", "retries")},
            "worker_cpu_s": sum(r["cpu_s"] for r in results)}


class ArrivalClock:
    """Polls the emulator's counters (every 50 ms, from a thread) to time the sending window: from the
    first request reaching the server to the last. Achieved RPM = billed requests over that window,
    the rate the server saw; the last answers' latency tail is reported apart, as wall time."""

    def __init__(self, base: str) -> None:
        self.base, self.samples, self._stop = base, [], threading.Event()
        self.cpu_s = 0.0  # this thread's own CPU, taken out of the engine's
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), emulator_call(self.base, "/_emulator/stats")["received"]))
            self._stop.wait(0.05)
        self.cpu_s = time.thread_time()

    def __enter__(self) -> ArrivalClock:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def window_s(self) -> float:
        final = self.samples[-1][1]
        first = next(t for t, n in self.samples if n > 0)
        last = next(t for t, n in self.samples if n == final)
        return max(last - first, 1e-9)


def measure(name: str, base: str, fn, limit_rpm: float) -> dict:
    emulator_call(base, "/_emulator/reset")
    with ArrivalClock(base) as clock:
        cpu0, t0 = time.process_time(), time.monotonic()
        result = fn()
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    cpu += result.pop("worker_cpu_s", 0.0) - clock.cpu_s  # engines in worker processes: their CPU
    stats = emulator_call(base, "/_emulator/stats")
    n = result["ok"] + result["failed"]
    rpm = stats["billed"] / clock.window_s() * 60
    return {"name": name, **result, "wall_s": wall, "window_s": clock.window_s(), "rpm": rpm,
            "utilization": rpm / limit_rpm, "wall_rpm": stats["billed"] / wall * 60,
            "http_requests": stats["received"], "http_429": stats["rate_limited"],
            "rate_limited": stats["rate_limited"] / max(1, stats["received"]),
            "cpu_ms_per_request": cpu * 1000 / n, "duplicates_billed": stats["duplicates"],
            "billed": stats["billed"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=256, help="same for both (the engine's ceiling)")
    p.add_argument("--latency", type=float, default=0.8)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--provider", choices=sorted(MODELS), default="openai", help="wire format and client")
    p.add_argument("--rpm", type=int, default=RPM, help="the emulator's requests-per-minute limit")
    p.add_argument("--no-headers", action="store_true", help="the emulator sends no rate-limit headers (a proxy "
                   "with an RPM limit: only its 429s say where the limit is)")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--processes", type=int, default=1, help="engine processes sharing one key (>1: no baselines; "
                   "CPU ms/req counts every engine process, their imports left out)")
    p.add_argument("--separate-budgets", action="store_true", help="with --processes: also run them with a rate "
                   "budget each (TEXTBOOKGEN_SHARE_LIMITS=0), as before budgets were shared on a host")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--journal", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return serve(args)
    import anthropic  # noqa: F401 - import cost (about a second of CPU) is paid before measuring
    import openai  # noqa: F401

    import textbookgen.engine  # noqa: F401

    if args.worker is not None:  # one of --processes: its share of the prompts; its counters and the engine's
        mine = make_prompts(args.prompts)[args.worker::args.processes]  # CPU as a JSON line
        cpu0 = time.process_time()
        result = ours(args.provider, args.base, mine, args.concurrency, args.max_tokens, Path(args.journal))
        return print(json.dumps({**result, "cpu_s": time.process_time() - cpu0}))
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--latency", str(args.latency), "--rpm",
                               str(args.rpm), *(["--no-headers"] if args.no_headers else [])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base = server.stdout.readline().strip()
        prompts = make_prompts(args.prompts)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            if args.processes > 1:
                rows.append(measure(f"textbookgen x{args.processes} procs", base,
                                    lambda: ours_processes(args, base, Path(tmp) / "shared"), args.rpm))
                if args.separate_budgets:
                    rows.append(measure(f"x{args.processes}, budget each", base,
                                        lambda: ours_processes(args, base, Path(tmp) / "separate", False), args.rpm))
            else:
                rows.append(measure("textbookgen Generator", base, lambda: ours(
                    args.provider, base, prompts, args.concurrency, args.max_tokens, Path(tmp) / "journal.sqlite"),
                    args.rpm))
        if not args.skip_baseline and args.processes == 1:
            for name, retries in NAIVE.items():
                rows.append(measure(name, base, lambda r=retries: asyncio.run(
                    naive(args.provider, base, prompts, args.concurrency, args.max_tokens, r)), args.rpm))
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    print(f"\n{args.provider}: {args.prompts} prompts in {args.processes} process(es); emulator limits {args.rpm:,} RPM, "
          f"{INPUT_TPM:,} input TPM, {OUTPUT_TPM:,} output TPM (1 s buckets"
          f"{'; no rate-limit headers' if args.no_headers else ''}); latency median {args.latency} s; concurrency "
          f"{args.concurrency}\n")
    header = (f"{'':24} {'ok':>5} {'failed':>6} {'send s':>6} {'RPM':>6} {'util':>5} {'wall s':>6} "
              f"{'wall RPM':>8} {'HTTP':>5} {'429s':>5} {'429 share':>9} {'CPU ms/req':>10} {'dup billed':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:24} {r['ok']:>5} {r['failed']:>6} {r['window_s']:>6.1f} {r['rpm']:>6.0f} "
              f"{r['utilization']:>5.2f} {r['wall_s']:>6.1f} {r['wall_rpm']:>8.0f} {r['http_requests']:>5} "
              f"{r['http_429']:>5} {r['rate_limited']:>9.3f} {r['cpu_ms_per_request']:>10.2f} "
              f"{r['duplicates_billed']:>10}")
    print("\nRPM/util: billed requests per minute while requests were arriving at the server (first to last"
          " arrival); wall RPM also counts start-up and the last answers' latency.")
    print(summary_line(rows, ["", "separate_"] if args.processes > 1 else None))


def summary_line(rows: list[dict], prefixes: list[str] | None = None) -> str:
    """The last line: the engine's figures, then each baseline's under its prefix (naive_, naive8_; with
    --processes, separate_ for --separate-budgets)."""
    prefixes = prefixes or ["", *(f"naive{'' if retries == 2 else retries + 1}_" for retries in NAIVE.values())]
    return " ".join(
        f"{prefix}utilization={r['utilization']:.3f} {prefix}rate_limited={r['rate_limited']:.4f} "
        f"{prefix}cpu_ms_per_request={r['cpu_ms_per_request']:.2f} {prefix}duplicates_billed={r['duplicates_billed']} "
        f"{prefix}failed={r['failed']} {prefix}wall_s={r['wall_s']:.1f}"
        for prefix, r in zip(prefixes, rows, strict=False))


if __name__ == "__main__":
    main()
