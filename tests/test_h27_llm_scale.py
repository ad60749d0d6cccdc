"""An `LLM` call at phi-1.5 scale (10-20M rows): the request keys it keeps to count a row repeated windows apart
once fit in ~9 bytes a key (a set of them took ~90: ~1 GB at 10M requests); after a budget stop a row whose prompt()
raises does not fail the call; and a row skipped on the budget in several windows is counted once in the stats."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tracemalloc

import pytest
from pydantic import BaseModel

from textbookgen.llm import LLM, REASK_SEED_STRIDE, _Keys
from textbookgen.testing.emulator import Emulator, EmulatorConfig

FAST = EmulatorConfig(latency_median_s=0.001)
COUNTS = ("total", "done", "sent", "ok", "failed", "replayed", "skipped_budget", "input_tokens", "output_tokens")


def key(i: int) -> str:
    """A request key as the journal makes them: a sha256 hex digest."""
    return hashlib.sha256(f"request {i}".encode()).hexdigest()


def test_the_call_keeps_a_request_key_in_a_few_bytes():
    """200k keys added a window (10k) at a time, each window's keys once more as a later window's replays: a
    set of 16-byte prefixes held ~91 bytes a key (~102 at its peak)."""
    keys = [key(i) for i in range(200_000)]
    _Keys().add(keys[:3])  # numpy's lazy imports are not the keys'
    tracemalloc.start()
    try:
        held = _Keys()
        for begin in range(0, len(keys), 10_000):
            held.add(keys[begin:begin + 10_000])
            held.add(keys[max(0, begin - 10_000):begin + 10_000])  # replayed repeats: kept once
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current / len(keys) < 12 and peak / len(keys) < 32, (current / len(keys), peak / len(keys))
    assert all(k in held for k in keys[::97]) and keys[-1] in held and keys[0] in held
    assert not any(key(i) in held for i in range(200_000, 201_000))
    assert 1 not in held and b"" not in held


def test_membership_over_the_whole_range_of_prefixes():
    """Prefixes at 2^63 and over (half of all keys) are found as the small ones are, one key at a time too."""
    held = _Keys()
    extremes = ["0" * 64, "f" * 64, "8" + "0" * 63, "7" + "f" * 63]
    for k in extremes:
        held.add([k])
    assert all(k in held for k in extremes)
    assert not any(k in held for k in ("0" * 15 + "1" + "0" * 48, "f" * 15 + "e" + "f" * 48, "8" + "0" * 14 + "1"))


def test_a_key_is_copied_a_logarithmic_number_of_times(monkeypatch):
    """Runs merged as a binary counter's bits: 512 windows of 1k keys copy each key ~log2(512) times (a recent array
    rebuilt on every add copied each key ~64 times at 2M keys, growing with keys / window)."""
    import numpy as np

    import textbookgen.llm as llm

    copies = 0
    merge = llm._merged

    def counted(kept, values):
        nonlocal copies
        copies += kept.size + values.size
        return merge(kept, values)

    monkeypatch.setattr(llm, "_prefixes", lambda values: values)  # uint64 prefixes straight in
    monkeypatch.setattr(llm, "_merged", counted)
    rng, held = np.random.default_rng(2), _Keys()
    for _ in range(512):
        held.add(rng.integers(0, 2**64 - 1, 1000, dtype=np.uint64))
    assert copies / 512_000 <= 10 and len(held._runs) <= 10, (copies / 512_000, len(held._runs))


class Lesson(LLM):
    def prompt(self, row):
        if row["topic"].startswith("BAD"):
            raise ValueError(f"no template for {row['topic']!r}")
        return f"Write a short textbook section on {row['topic']}." + " Be brief." * row.get("pad", 0)

    def parse(self, row, response):
        return {"i": row["i"], "words": len(response.split())}


def make(emu: Emulator, window: int = 4, **kw) -> Lesson:
    """A call that its output-token budget stops within its first windows (about 5 answers fit)."""
    kw.setdefault("max_output_tokens", 1000)
    return Lesson("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False, max_tokens=200,
                  max_error_rate=None, concurrency=1, window=window, **kw)


def test_a_prompt_that_raises_after_the_budget_stop_does_not_fail_the_call():
    """Row 30 was going to be skipped on the budget anyway: its prompt() error threw away the table of the
    windows answered before it (answers kept in the journal, but the call lost)."""
    rows = [{"topic": "BAD one" if i == 30 else f"topic {i}", "i": i} for i in range(40)]
    with Emulator(FAST) as emu:
        task = make(emu)
        table = task(rows)
    assert 0 < table.height < 16
    bad = [f for f in task.failures if f["row"] == 30]
    assert len(bad) == 1 and bad[0]["status"] == "skipped_budget" and bad[0]["key"] is None
    assert "prompt() raised ValueError: no template for 'BAD one'" in bad[0]["error"]
    assert [f["row"] for f in task.failures] == list(range(table.height, 40))  # every row accounted for, in order
    assert task.generator.stats["skipped_budget"] == 40 - table.height - 1  # the engine saw no request for row 30


def test_a_prompt_that_raises_after_the_stop_with_several_samples_keeps_the_rows_in_place():
    rows = [{"topic": "BAD" if i in (21, 22) else f"topic {i}", "i": i} for i in range(28)]
    with Emulator(FAST) as emu:
        task = make(emu, n=2, seed=1, temperature=1.0)
        task(rows)
    bad = [(f["row"], f["sample"]) for f in task.failures if f["key"] is None]
    assert bad == [(21, 0), (21, 1), (22, 0), (22, 1)]
    assert [(f["row"], f["sample"]) for f in task.failures] == sorted((f["row"], f["sample"]) for f in task.failures)


def test_a_prompt_that_raises_before_the_stop_still_fails_the_call():
    rows = [{"topic": "BAD one" if i == 2 else f"topic {i}", "i": i} for i in range(12)]
    with Emulator(FAST) as emu:
        with pytest.raises(ValueError, match="no template") as caught:
            make(emu)(rows)
        assert emu.billed == 0
    assert "prompt() on row 2" in "".join(getattr(caught.value, "__notes__", []))


def test_prompts_are_still_built_after_the_stop_for_the_answers_the_journal_holds():
    """Kept on purpose: a key comes from the rendered request, and a row after the stop can have an answer in the
    journal (here a row repeated after the stop; an earlier call's, with a journal file) or a request that fits."""
    built = 0

    class Counting(Lesson):
        def prompt(self, row):
            nonlocal built
            built += 1
            return super().prompt(row)

    rows = [{"topic": f"topic {i if i != 33 else 1}", "i": i} for i in range(40)]  # row 33 repeats row 1
    with Emulator(FAST) as emu:
        task = Counting("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False,
                        max_tokens=200, max_error_rate=None, concurrency=1, window=4, max_output_tokens=1000)
        table = task(rows)
    assert 0 < table.height < 16 and 33 in table["i"]
    assert built == 40


def without_error(failures: list[dict]) -> list[dict]:
    """The failures less their message (a later window's budget note says what the earlier ones used)."""
    return [{k: v for k, v in f.items() if k != "error"} for f in failures]


def test_a_row_skipped_in_several_windows_is_counted_once_as_in_one_window(caplog):
    """Rows 8-23 repeat four topics, skipped in each of the four windows they are in: skipped_budget counted 18
    for 12 distinct requests (6 answered, 6 skipped) and `total` 24, where one window counts 6 and 12."""
    rows = [{"topic": f"topic {i if i < 8 else i % 4 + 100}", "i": i} for i in range(24)]
    with Emulator(FAST) as emu, caplog.at_level(logging.ERROR):
        whole, parts = make(emu, window=10_000), make(emu, window=4)
        expected, table = whole(rows), parts(rows)
    assert table.equals(expected) and without_error(parts.failures) == without_error(whole.failures)
    for name in COUNTS:
        assert parts.generator.stats[name] == whole.generator.stats[name], name
    assert (parts.generator.stats["total"], parts.generator.stats["skipped_budget"]) == (12, 6)


def test_a_row_skipped_in_one_window_and_answered_in_a_later_one_is_counted_once():
    """Row 3's short request is skipped with the stop in the window of long ones, and its repeat, first in the next
    window, fits and is sent: counted once, as answered (it was counted skipped too, and twice in `total`)."""
    rows = [{"topic": f"topic {i}", "i": i, "pad": 300} for i in range(3)] + \
        [{"topic": "short", "i": i} for i in (3, 4)] + [{"topic": f"topic {i}", "i": i} for i in range(5, 8)]
    with Emulator(FAST) as emu:
        task = make(emu, window=4, max_output_tokens=None, max_cost_usd=5.75e-4)
        table = task(rows)
        stats = task.generator.stats
    assert 3 not in table["i"] and 4 in table["i"] and {"row": 3, "status": "skipped_budget"}.items() <= \
        next(f for f in task.failures if f["row"] == 3).items()
    distinct = len({r["topic"] for r in rows})
    assert stats["total"] == distinct == stats["done"] + stats["skipped_budget"]  # done: answered, or failed
    assert (stats["ok"], stats["skipped_budget"]) == (table.height, distinct - table.height)


class Answer(BaseModel):
    x: int


def reasked(body: dict) -> str:
    """No JSON at first; a re-ask (its seed past REASK_SEED_STRIDE) gets one: each row asked twice."""
    pad = " ".join(["word"] * 80)
    return json.dumps({"x": 1, "note": pad}) if (body.get("seed") or 0) >= REASK_SEED_STRIDE else "not json " + pad


class Question(LLM):
    def prompt(self, row):
        return f"Question about {row['topic']}."

    def parse(self, row, response):
        return {"i": row["i"], "x": response.x}


def test_re_asks_skipped_in_one_window_and_asked_in_the_next_are_counted_once(caplog):
    """A re-ask round skipped on the budget in one window, its repeat's re-ask run in the next: the counts of one
    window (found by review: total 11 against 8, skipped 6 against 3)."""
    rows = [{"topic": f"t{i % 4}", "i": i} for i in range(8)]

    def make_call(emu: Emulator, window: int) -> Question:
        return Question("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False,
                        max_tokens=200, max_error_rate=None, concurrency=1, window=window, response_format=Answer,
                        max_output_tokens=650)

    with Emulator(dataclasses.replace(FAST, responder=reasked)) as emu, caplog.at_level(logging.ERROR):
        whole, parts = make_call(emu, 10_000), make_call(emu, 4)
        expected, table = whole(rows), parts(rows)
    assert table.equals(expected) and without_error(parts.failures) == without_error(whole.failures)
    assert {k: parts.generator.stats[k] for k in COUNTS} == {k: whole.generator.stats[k] for k in COUNTS}
