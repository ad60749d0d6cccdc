"""Live run display: requests done and failed, dollars, tokens, request rate, 429s and concurrency.

Redrawn twice a second from the engine's counters by one asyncio task (no per-request display work,
no refresh thread), on stderr so stdout stays clean for pipes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RunProgress:
    """`stats()` returns the engine's counters: done, failed, cost_usd, input_tokens, output_tokens, sent,
    rate_limited, in_flight, concurrency, rpm_limit."""

    def __init__(self, total: int, stats: Callable[[], dict], *, description: str = "generating",
                 console: Console | None = None, interval_s: float = 0.5) -> None:
        self.stats = stats
        self.interval_s = interval_s
        self._window: deque[tuple[float, int]] = deque(maxlen=int(30 / interval_s))  # 30 s of samples
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console or Console(stderr=True), auto_refresh=False, transient=False)
        self._task_id = self._progress.add_task(description, total=total, info="")
        self._runner: asyncio.Task | None = None

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
        tokens = f"failed {s['failed']:,}  ${s['cost_usd']:.4f}  in {s['input_tokens']:,} out {s['output_tokens']:,} tok  "
        if s.get("batch"):  # provider batch API: no request rate to show, only what waits in batches
            info = tokens + f"in batches {s['in_flight']:,}"
        else:
            info = tokens + f"{rpm:,.0f}{limit} rpm  429s {s['rate_limited']}  in-flight {s['in_flight']}/{s['concurrency']}"
        self._progress.update(self._task_id, completed=s["done"], info=info)
        self._progress.refresh()

    async def _loop(self) -> None:
        while True:
            self._draw()
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
        self._draw()
        self._progress.stop()
