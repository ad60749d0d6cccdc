"""BudgetGate, the line where attempts wait for room in the budgets: turns in arrival order (a big request is not
passed over by small ones), one waiter woken per release instead of all of them, and a turn handed on when the
waiter it falls to is cancelled (Ctrl-C, a stopping run), so nobody behind it is stranded."""

from __future__ import annotations

import asyncio
from collections import Counter

from textbookgen.engine import BudgetGate


class Budget:
    """Units of room and the attempts that take some, waiting at a gate for it as the engine's do."""

    def __init__(self) -> None:
        self.gate, self.free = BudgetGate(), 0
        self.taken: list[str] = []
        self.looks: Counter[str] = Counter()  # how often each attempt checked for room

    async def take(self, name: str, need: int) -> None:
        async with self.gate:
            self.looks[name] += 1
            while self.free < need:
                await self.gate.room()
                self.looks[name] += 1
            self.free -= need
            self.taken.append(name)

    def release(self, units: int) -> None:
        self.free += units
        self.gate.open()


async def settle() -> None:
    """Let every task that can run, run: a fixed number of loop turns, no clock."""
    for _ in range(100):
        await asyncio.sleep(0)


def test_room_goes_in_arrival_order_and_a_big_request_is_not_passed_over():
    async def main() -> None:
        budget = Budget()
        tasks = [asyncio.create_task(budget.take(name, need)) for name, need in (("a", 1), ("big", 3), ("b", 1),
                                                                                 ("c", 1))]
        await settle()
        budget.release(1)
        await settle()
        budget.release(1)  # room for b, not for big: b waits its turn
        await settle()
        assert budget.taken == ["a"]
        budget.release(2)
        await settle()
        assert budget.taken == ["a", "big"] and budget.gate.waiting == 2
        budget.release(2)
        await asyncio.gather(*tasks)
        assert budget.taken == ["a", "big", "b", "c"] and budget.gate.waiting == 0

    asyncio.run(main())


def test_a_release_wakes_the_first_in_line_alone():
    """50 attempts wait for 2 units each; 10 releases of 1 unit let 5 through. The first in line looks once when its
    turn comes and once per release: 16 looks in all, where waking every waiter at each release made hundreds."""

    async def main() -> None:
        budget = Budget()
        tasks = [asyncio.create_task(budget.take(f"w{i}", 2)) for i in range(50)]
        await settle()
        for _ in range(10):
            budget.release(1)
            await settle()
        assert budget.taken == [f"w{i}" for i in range(5)]
        assert sum(budget.looks.values()) == 1 + 10 + 5 and budget.gate.waiting == 45
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert budget.gate.waiting == 0

    asyncio.run(main())


def test_the_first_in_line_cancelled_while_waiting_for_room_hands_its_turn_on():
    """A big request blocks a small one that fits; cancelled, its turn passes on with no release needed."""

    async def main() -> None:
        budget = Budget()
        big = asyncio.create_task(budget.take("big", 5))
        small = asyncio.create_task(budget.take("small", 1))
        await settle()
        budget.release(1)
        await settle()
        assert budget.taken == []
        big.cancel()
        await asyncio.wait_for(small, 30)  # a stranded turn fails here instead of hanging
        assert budget.taken == ["small"] and budget.gate.waiting == 0

    asyncio.run(main())


def test_a_waiter_cancelled_as_its_turn_comes_hands_it_on():
    """The turn falls to b, which is cancelled before it runs (Ctrl-C at that moment): c gets it."""

    async def main() -> None:
        budget = Budget()
        async with budget.gate:  # this test is first in line
            b = asyncio.create_task(budget.take("b", 1))
            c = asyncio.create_task(budget.take("c", 1))
            await settle()
            budget.free = 2
        b.cancel()  # its turn has come (the line handed it on when the block ended), but it has not run yet
        await asyncio.wait_for(c, 30)
        assert b.cancelled() and budget.taken == ["c"] and budget.gate.waiting == 0

    asyncio.run(main())
