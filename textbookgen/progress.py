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
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


class StageProgress(RunProgress):
    """One progress line over the engine runs of a stage (the generate stage's windows of prompts): requests done of
    the stage's `total`, and its spend projected over all of them, where each run drew a line of its own (400 at 20M
    documents, each counting and projecting one window). A run draws it (`Generator.stage_progress`: `run`, then
    `start` and `stop` as a RunProgress) and adds its final counters (`add`), also a run that drew nothing (the
    journal answered it whole). On a terminal the line stays up from the first run till `close`; elsewhere (a log)
    each run leaves the stage's state at its end, as its own line did: a line per run, as before.

    The budgets figure over the stage: each run may spend its `max_cost_usd` (the budget less all counted outside
    it, earlier runs' spend included), so the stage may spend that plus what its earlier runs spent, and the room
    left is the run's. Left: requests of later runs that an earlier build paid for (a resumed build) are counted
    as spent outside the stage, yet projected again until their run replays them, so the outlook may foresee a
    budget stop that does not come (the budget itself is enforced by the engine, right)."""

    def __init__(self, total: int, *, description: str, console: Console | None = None,
                 interval_s: float = 0.5) -> None:
        super().__init__(total, self._stats, description=description, console=console, interval_s=interval_s)
        self._before: dict[str, float] = dict.fromkeys(STAGE_SUMS, 0)  # the ended runs' counters, summed
        self._run: Callable[[], dict] | None = None  # the counters of the run going on
        self._rest: dict | None = None  # between runs: the last drawn run's state, none of its counters, its room
        self.closed = False  # `close`d: a later run draws its own line (`Generator._stage`)

    def run(self, stats: Callable[[], dict]) -> StageProgress:
        """This line for a run whose counters `stats()` gives (RunProgress's)."""
        self._run = stats
        return self

    def add(self, stats: Mapping[str, Any]) -> None:
        """Count a run that ended (its final stats)."""
        for key in STAGE_SUMS:
            self._before[key] += stats[key]

    def _stats(self) -> dict:
        """The stage's counters: the ended runs' plus the running one's (between runs: the last one's room)."""
        run = self._run() if self._run is not None else self._rest
        usd, out = spent(self._before)
        s = {**run, **{key: self._before[key] + run[key] for key in STAGE_SUMS}}
        if run["max_cost_usd"] is not None:
            s["max_cost_usd"] = run["max_cost_usd"] + usd
        if run["max_output_tokens"] is not None:
            s["max_output_tokens"] = run["max_output_tokens"] + out
        return s

    async def stop(self) -> None:
        """A run's end: its last state drawn (and, off a terminal, left as a line)."""
        await self._halt()
        final = self._run()
        usd, out = spent(final)
        self._rest = {**final, **dict.fromkeys(STAGE_SUMS, 0), "in_flight": 0, "budget_held": 0,
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
