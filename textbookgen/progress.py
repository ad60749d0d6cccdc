"""Live run display: requests done and failed, dollars, tokens, request rate, 429s and concurrency.

Redrawn twice a second from the engine's counters by one asyncio task (no per-request display work,
no refresh thread), on stderr so stdout stays clean for pipes. Once this run has paid for a few answers it
also projects what the whole run will have cost (`project`), and where a budget is set, whether the run
stays within it or where it will stop.

A batch run (`batch=True`) waits hours between answers: its line shows what the provider's last poll said of
the running batches (answered and failed there, not collected yet, so in no count, cost or budget; what the
answered part costs so far; how long the oldest has run). Without a live line (no terminal, or progress off)
`PollLog` gives that as a plain line per poll, at most once a minute, for a user tailing a log.

A stage of several runs (a build's generate stage, a window of prompts a run) draws one line over all of them
(`StageProgress`): its requests done and its spend projected over the whole stage, not a line per run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from textbookgen.engine import spent
from textbookgen.journal import PERMANENT_ERRORS

MIN_ANSWERS = 5  # requests this run has finished before it projects the rest from them
POLL_LOG_S = 60.0  # the least time between two of `PollLog`'s lines
LOG_WIDTH = 1000  # columns of the line where it goes to a file (rich's default there is 80: the line was cut)

log = logging.getLogger("textbookgen.progress")


@dataclass(frozen=True, slots=True)
class Projection:
    """What the whole run will have spent (USD, output tokens) and what each request left costs, on average."""

    usd: float
    output_tokens: float
    usd_each: float
    output_tokens_each: float


def project(s: Mapping[str, Any], total: int) -> Projection | None:
    """Spent so far (timed-out attempts at their worst case, as the budgets count them) plus, for each of the
    `total` requests not finished yet, the average of those this run sent and finished. Journal replays and
    reused answers are in what is spent, not in the average (they were free this time). None until
    MIN_ANSWERS requests have finished."""
    finished = s["done"] - s["replayed"]
    if finished < MIN_ANSWERS:
        return None
    left = max(0, total - s["done"])
    usd_each = (s["cost_usd"] - s["replayed_usd"]) / finished
    out_each = (s["output_tokens"] - s["replayed_output_tokens"]) / finished
    usd, used = spent(s)
    return Projection(usd=usd + usd_each * left, output_tokens=used + out_each * left,
                      usd_each=usd_each, output_tokens_each=out_each)


def budget_outlook(projected: float, spent: float, each: float, done: int, total: int, budget: float) -> str:
    """Whether the projection stays within the budget ("ok"), else roughly where the run will stop: the share of
    its requests finished by then."""
    if projected <= budget:
        return "ok"
    stop = done + max(0.0, budget - spent) / each if each > 0 else done
    return f"reached at ~{min(stop, total) / max(total, 1):.0%}"


def projection_note(s: Mapping[str, Any], total: int) -> tuple[str, str]:
    """The projection's words beside the cost and beside the output tokens ("" where there is none yet; the
    tokens are projected only under a token budget)."""
    p = project(s, total)
    if p is None:
        return "", ""
    usd, used = spent(s)
    cost = f" (~${p.usd:.4f} projected"
    if s["max_cost_usd"] is not None:
        given = s.get("max_cost_usd_given", s["max_cost_usd"])
        left = (f" (${s['max_cost_usd']:.4f} left after earlier runs)"
                if f"{given:.4f}" != f"{s['max_cost_usd']:.4f}" else "")  # a stage's sums differ in the last bits
        cost += f", budget ${given:.4f}{left} " + budget_outlook(
            p.usd, usd, p.usd_each, s["done"], total, s["max_cost_usd"])
    tokens = ""
    if s["max_output_tokens"] is not None:
        given = s.get("max_output_tokens_given", s["max_output_tokens"])
        left = f" ({s['max_output_tokens']:,} left after earlier runs)" if given != s["max_output_tokens"] else ""
        tokens = f" (~{p.output_tokens:,.0f} projected, budget {given:,}{left} " + budget_outlook(
            p.output_tokens, used, p.output_tokens_each, s["done"], total, s["max_output_tokens"]) + ")"
    return cost + ")", tokens


def duration(seconds: float) -> str:
    """`1h 04m`, `4m 10s`, `42s`."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def batch_note(s: Mapping[str, Any], total: int) -> str:
    """`in batches 9,000 (6,512 answered there, 12 failed, ~$0.8123 so far; oldest 1h 04m)`: the requests in running
    batches and what the provider's last polls said of them. Their cost so far is this run's average cost per
    request times the answered ones ("~") once it has collected a few, else the answered share of the batches' worst
    case ("up to"): their usage is known only once a batch ends."""
    note = f"in batches {s['in_flight']:,}"
    if not s["in_flight"]:
        return note
    answered, failed = s.get("batch_answered", 0), s.get("batch_failed", 0)
    parts = [f"{answered:,} answered there"] + ([f"{failed:,} failed"] if failed else [])
    if answered:
        p = project(s, total)
        parts.append(f"~${answered * p.usd_each:.4f} so far" if p is not None
                     else f"up to ${s.get('batch_answered_worst_usd', 0.0):.4f} so far")
    return f"{note} ({', '.join(parts)}; oldest {duration(s.get('batch_oldest_s', 0.0))})"


class PollLog:
    """A plain line after a round of batch polls, at most once every `interval_s`, where no live line is drawn: on
    stderr when progress was asked for (the live line is not drawn without a terminal, so a redirected run showed
    nothing for hours), else at INFO on the `textbookgen.progress` logger."""

    def __init__(self, total: int, stats: Callable[[], dict], *, description: str, to_stderr: bool,
                 interval_s: float = POLL_LOG_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.stats, self.description, self.to_stderr = total, stats, description, to_stderr
        self.interval_s, self.clock = interval_s, clock
        self._last: float | None = None

    def __call__(self) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            return
        self._last = now
        s = self.stats()
        line = (f"{self.description}: {s['done']:,}/{self.total:,} done, failed {s['failed']:,}, "
                f"${s['cost_usd']:.4f} journaled; {batch_note(s, self.total)}")
        if self.to_stderr:
            print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)
        else:
            log.info("%s", line)


class RunProgress:
    """`stats()` returns the engine's counters: done, failed, cost_usd, input_tokens, output_tokens, sent,
    rate_limited, in_flight, concurrency, rpm_limit, budget_held (requests waiting for room in a budget); for the
    projection replayed, replayed_usd, replayed_output_tokens, abandoned_usd, abandoned_output_tokens, max_cost_usd,
    max_output_tokens (what this run may spend), and the budgets as given, max_cost_usd_given and
    max_output_tokens_given (less what earlier runs spent, they are the former). A batch run's also have batch (True)
    and what the last polls said of its running batches: batch_answered, batch_failed, batch_answered_worst_usd and
    batch_oldest_s (`BatchRunner.waiting`)."""

    def __init__(self, total: int, stats: Callable[[], dict], *, description: str = "generating",
                 console: Console | None = None, interval_s: float = 0.5) -> None:
        self.stats = stats
        self.interval_s = interval_s
        self._window: deque[tuple[float, int]] = deque(maxlen=int(30 / interval_s))  # 30 s of samples
        console = console or Console(stderr=True)
        if not (console.is_terminal or console.is_jupyter) and "COLUMNS" not in os.environ:
            console.width = LOG_WIDTH  # a log file gets the final line whole, not its first 80 columns
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, auto_refresh=False, transient=False)
        self._task_id = self._progress.add_task(description, total=total, info="")
        self.total = total
        self._runner: asyncio.Task | None = None

    @property
    def visible(self) -> bool:
        """Whether the live line is drawn as it changes (rich draws it only on a terminal or in Jupyter; elsewhere
        only its last state, at the end)."""
        console = self._progress.console
        return console.is_jupyter or (console.is_terminal and not console.is_dumb_terminal)

    def start(self) -> None:
        self._progress.start()
        self._runner = asyncio.get_running_loop().create_task(self._loop(), name="progress")

    def _draw(self) -> None:
        s = self.stats()
        now = time.monotonic()
        self._window.append((now, s["sent"]))
        t0, n0 = self._window[0]
        rpm = (s["sent"] - n0) / (now - t0) * 60 if now > t0 else 0.0
        limit = f"/{s['rpm_limit']:,.0f}" if s.get("rpm_limit") else ""
        cost, out = projection_note(s, self.total)
        tokens = (f"failed {s['failed']:,}  ${s['cost_usd']:.4f}{cost}  in {s['input_tokens']:,} "
                  f"out {s['output_tokens']:,} tok{out}  ")
        if s.get("batch"):  # provider batch API: no request rate to show, only what waits in batches
            info = tokens + batch_note(s, self.total)
        else:
            info = tokens + f"{rpm:,.0f}{limit} rpm  429s {s['rate_limited']}  in-flight {s['in_flight']}/{s['concurrency']}"
            if s.get("budget_held"):  # waiting for answers in flight to settle below their worst case
                info += f"  held for budget {s['budget_held']}"
        self._progress.update(self._task_id, completed=s["done"], info=info)
        self._progress.refresh()

    async def _loop(self) -> None:
        while True:
            self._draw()
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        await self._halt()
        self._progress.stop()

    async def _halt(self) -> None:
        """Stop redrawing, and draw the last state."""
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
            self._runner = None
        self._draw()


#: The engine's counters that a stage adds up over its runs; the others (in flight, concurrency, rate limit, budgets
#: left) are the run's going on.
STAGE_SUMS = ("done", "sent", "failed", "cost_usd", "input_tokens", "output_tokens", "rate_limited", "replayed",
              "replayed_usd", "replayed_output_tokens", "abandoned_usd", "abandoned_output_tokens")
#: Summed besides where the stage counts what its journal held at its start (`Prepaid`): the runs' record of it.
PRIOR_SUMS = ("prior_abandoned_usd", "prior_abandoned_output_tokens")
#: The stage's prompts whose requests are looked up in the journal to check that `Prepaid` is the stage's own
#: (`Prepaid.agrees`): a key costs ~60 us (every prompt's: ~20 min at 20M), these ~16 ms, plus reading a one-row
#: slice of prompts.parquet for each (measured 8-10 ms a slice: ~2-3 s in all, at 400K as at 20M).
PREPAID_SAMPLE = 256
#: How unlikely the sample's answers, as few as found, may be were `Prepaid` the stage's own, for it to be taken.
PREPAID_ALPHA = 1e-3


def sample_at(total: int, size: int = PREPAID_SAMPLE) -> list[int]:
    """`size` row indexes of `total` (all where fewer), drawn at random over the whole range, ascending; the same
    each call (seeded), so a rerun draws the same line."""
    return sorted(random.Random(0).sample(range(total), min(size, total)))


def lower_tail(hits: int, draws: int, good: int, total: int) -> float:
    """The probability of at most `hits` good ones in `draws` drawn without replacement of `total`, `good` of
    them good (hypergeometric: exact for a sample of rows, where the binomial would be only conservative; a sample of
    all rows is an exact count)."""
    lo, hi = max(0, draws - (total - good)), min(hits, good, draws)
    if hi < lo:
        return 0.0
    ways = sum(math.comb(good, i) * math.comb(total - good, draws - i) for i in range(lo, hi + 1))
    return ways / math.comb(total, draws)


@dataclass(frozen=True, slots=True)
class Prepaid:
    """What a stage's journal held at its start (an earlier build run's): the rows a run answers from it (replays),
    and all it records as spent, abandoned attempts at their worst case (as the budgets count them)."""

    done: int = 0
    cost_usd: float = 0.0
    output_tokens: int = 0
    abandoned_usd: float = 0.0
    abandoned_output_tokens: int = 0

    @classmethod
    def of(cls, summary: Mapping[str, Any] | None, retry_failed: bool = False) -> Prepaid:
        """From a journal's `Journal.summary` (None: no journal yet, nothing prepaid): its answers and, unless
        `retry_failed`, its refusals (`engine.replays`), and what it spent."""
        if summary is None:
            return cls()
        refused = 0 if retry_failed else sum(summary["failures"].get(c, 0) for c in PERMANENT_ERRORS)
        return cls(summary["done"] + refused, summary["cost_usd"], summary["output_tokens"],
                   summary["abandoned_usd"], summary["abandoned_output_tokens"])

    def agrees(self, hits: int, sample: int, total: int, alpha: float = PREPAID_ALPHA) -> bool:
        """Whether this count can be the stage's own, of its `total` prompts, given that the journal answers `hits`
        of a random `sample` of them (`sample_at`; answered as the engine replays them, `engine.replays`): were it,
        as few hits or fewer come with probability at least `alpha` (`lower_tail`). The rows of another request set
        (another model, sampling, seed, template, max_tokens or topics) are in the count, not in the hits: an
        earlier build's, as many as the prompts, meet none of a sample's."""
        if self.done > total:
            return False
        return lower_tail(hits, sample, self.done, total) >= alpha  # 1 where nothing is counted


class StageProgress(RunProgress):
    """One progress line over the engine runs of a stage (the generate stage's windows of prompts): requests done of
    the stage's `total`, and its spend projected over all of them, where each run drew a line of its own (400 at 20M
    documents, each counting and projecting one window). A run draws it (`Generator.stage_progress`: `run`, then
    `start` and `stop` as a RunProgress) and adds its final counters (`add`), also a run that drew nothing (the
    journal answered it whole). On a terminal the line stays up from the first run till `close`; elsewhere (a log)
    each run leaves the stage's state at its end, as its own line did: a line per run, as before.

    The budgets figure over the stage: the room left is the run's (its `max_cost_usd`, the budget less all counted
    outside it, less what it spent), so the stage may spend what it spent plus that room. `prepaid` (a resumed or
    raised build: what its journal held at the stage's start, `Prepaid`) is counted done and spent from the start,
    as a run counts its replays, and a run's replays are not counted again: the requests of later runs an earlier
    build paid for were else spent outside the stage (in each run's `spent_before`) yet projected again till their
    run replayed them, and the outlook foresaw a budget stop that never came. Without it (None) replays count as
    their run replays them. Input tokens count as their run replays them either way (the engine has no figure of
    the replayed ones). `prepaid` is the whole journal's (the summary the budget reads; the stage's request keys
    are known a window at a time), so the build takes it only where a sample of the stage's own request keys
    agrees with it (`Prepaid.agrees`), else passes None: another request set's answers in the same output folder
    (another model, sampling, seed, template, max_tokens or topics: a rebuild in the same folder) would else count
    done from the start (30/30 from the first window); a resumed build whose journal holds such answers too counts
    per run, and so does an unbudgeted build (no budget read to take the count from): there the projection may
    price again requests an earlier run paid for, till their run replays them. A few of those (too few for a sample
    of 256 to tell: a few percent of the prompts) may still count done, at most the total, and spent in the stage."""

    def __init__(self, total: int, *, description: str, console: Console | None = None,
                 interval_s: float = 0.5, prepaid: Prepaid | None = None) -> None:
        super().__init__(total, self._stats, description=description, console=console, interval_s=interval_s)
        self.prepaid = prepaid
        self._sums = STAGE_SUMS if prepaid is None else STAGE_SUMS + PRIOR_SUMS
        self._before: dict[str, float] = dict.fromkeys(self._sums, 0)  # the ended runs' counters, summed
        self._run: Callable[[], dict] | None = None  # the counters of the run going on
        self._rest: dict | None = None  # between runs: the last drawn run's state, none of its counters, its room
        self.closed = False  # `close`d: a later run draws its own line (`Generator._stage`)

    def run(self, stats: Callable[[], dict]) -> StageProgress:
        """This line for a run whose counters `stats()` gives (RunProgress's)."""
        self._run = stats
        return self

    def add(self, stats: Mapping[str, Any]) -> None:
        """Count a run that ended (its final stats)."""
        for key in self._sums:
            self._before[key] += stats[key]

    def count_kept(self, kept: int, summary: Mapping[str, Any]) -> None:
        """A run that ended kept `kept` answers to other runs' requests (an earlier run's batches it collected:
        its `orphans`), paid but in none of its counts: counted done and spent now, as `prepaid` (their run replays
        them), at what the journal (`summary`, read now) holds beyond the stage's count; only with `prepaid` (without
        it their run counts them). The room the run left is less what they cost, as the next run's (it reads the
        journals)."""
        p, b, now = self.prepaid, self._before, Prepaid.of(summary)
        self.prepaid = Prepaid(
            p.done + kept, now.cost_usd - (b["cost_usd"] - b["replayed_usd"]),
            now.output_tokens - (b["output_tokens"] - b["replayed_output_tokens"]),
            now.abandoned_usd - (b["abandoned_usd"] - b["prior_abandoned_usd"]),
            now.abandoned_output_tokens - (b["abandoned_output_tokens"] - b["prior_abandoned_output_tokens"]))
        before, after, rest = spent(asdict(p)), spent(asdict(self.prepaid)), self._rest
        if rest is not None and rest["max_cost_usd"] is not None:
            rest["max_cost_usd"] -= after.usd - before.usd
        if rest is not None and rest["max_output_tokens"] is not None:
            rest["max_output_tokens"] -= after.output_tokens - before.output_tokens

    def _stats(self) -> dict:
        """The stage's counters: the ended runs' plus the running one's (between runs: the last one's room); its
        budgets: what it spent plus the room the run has left."""
        run = self._run() if self._run is not None else self._rest
        s = {**run, **{key: self._before[key] + run[key] for key in self._sums}}
        if self.prepaid is not None:
            s = self._with_prepaid(s)
        usd, out = spent(s)
        run_usd, run_out = spent(run)
        if run["max_cost_usd"] is not None:
            s["max_cost_usd"] = run["max_cost_usd"] - run_usd + usd
        if run["max_output_tokens"] is not None:
            s["max_output_tokens"] = run["max_output_tokens"] - run_out + out
        return s

    def _with_prepaid(self, s: dict) -> dict:
        """The stage's counters `s` with `prepaid` in place of its runs' replays and earlier abandoned attempts (an
        earlier build's rows, in `prepaid` already); done at most the total (the journal may hold other requests)."""
        p = self.prepaid
        new = s["done"] - s["replayed"]
        done = min(self.total, p.done + new)
        return {**s, "done": done, "replayed": done - new,
                "cost_usd": p.cost_usd + s["cost_usd"] - s["replayed_usd"], "replayed_usd": p.cost_usd,
                "output_tokens": p.output_tokens + s["output_tokens"] - s["replayed_output_tokens"],
                "replayed_output_tokens": p.output_tokens,
                "abandoned_usd": p.abandoned_usd + s["abandoned_usd"] - s["prior_abandoned_usd"],
                "abandoned_output_tokens": (p.abandoned_output_tokens + s["abandoned_output_tokens"]
                                            - s["prior_abandoned_output_tokens"])}

    async def stop(self) -> None:
        """A run's end: its last state drawn (and, off a terminal, left as a line)."""
        await self._halt()
        final = self._run()
        usd, out = spent(final)
        self._rest = {**final, **dict.fromkeys(self._sums, 0), "in_flight": 0, "budget_held": 0,
                      "max_cost_usd": None if final["max_cost_usd"] is None else final["max_cost_usd"] - usd,
                      "max_output_tokens": None if final["max_output_tokens"] is None
                      else final["max_output_tokens"] - out}
        self._run = None
        if not self.visible:
            self._progress.stop()

    def close(self) -> None:
        """The stage's end (or its stop): on a terminal, the line left with every run counted; its display stopped
        whatever state a run left it in."""
        self.closed = True
        if self._progress.live.is_started:
            if self._rest is not None:
                self._draw()
            self._progress.stop()
