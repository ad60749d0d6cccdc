"""Spend journaled at no price (a model neither the price table nor --price knew) is no cost: a later run that has the
price counts those tokens at it, in its budget, stats and replayed costs, and so do journal summaries; a cost
journaled at a known price stands when the price changes. Real openai client against the loopback emulator."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from textbookgen.build import journal_spend
from textbookgen.cli import app
from textbookgen.engine import ChatRequest, Generator, spent
from textbookgen.journal import Journal
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0)
MODEL = "my/llm"
PRICE = {MODEL: (1000.0, 1000.0)}  # $0.001 a token, input and output
UNPRICED = ("unpriced_input_tokens", "unpriced_output_tokens", "abandoned_unpriced_input_tokens",
            "abandoned_unpriced_output_tokens")  # journal schema 9


def answer(body: dict) -> str:
    """30 output tokens (4 characters each) for every prompt."""
    return "abc " * 30


def ask(n: int, prefix: str = "Explain topic") -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix} {i}"}], max_tokens=60) for i in range(n)]


def gen_for(emu: Emulator, journal, **kw) -> Generator:
    return Generator("openai", MODEL, base_url=emu.openai_base_url, api_key="sk-test", journal=journal,
                     concurrency=1, **{**FAST, **kw})


def billed_usd(emu: Emulator) -> float:
    """What the emulator billed so far, at PRICE."""
    return (emu.input_tokens + emu.output_tokens) / 1000


def test_a_dollar_budget_given_with_the_price_counts_what_a_run_at_no_price_spent(tmp_path):
    """The reviewer's case: 2 prompts at no price, then 4 with --price and a $0.15 budget. The rerun counted the 2
    at $0 and paid 2 more (4 calls, ~$0.16 at that price, over the budget); it now counts them and stays within."""
    journal = tmp_path / "j.sqlite"
    with Emulator(EmulatorConfig(latency_median_s=0.001, latency_sigma=0.0, responder=answer)) as emu:
        first = gen_for(emu, journal).run(ask(2))
        assert [r.cost_usd for r in first] == [0.0, 0.0]
        earlier = billed_usd(emu)
        gen = gen_for(emu, journal, prices=PRICE, max_cost_usd=0.15)
        out = gen.run(ask(4))
        paid = billed_usd(emu)
    assert earlier == pytest.approx(0.08)  # 2 x (10 input + 30 output tokens)
    assert paid <= 0.15
    assert gen.stats["replayed_usd"] == pytest.approx(earlier)
    assert spent(gen.stats).usd == pytest.approx(paid) == pytest.approx(sum(r.cost_usd for r in out))
    assert [r.status for r in out].count("skipped_budget") == 2
    with Journal(journal, read_only=True) as j:
        assert j.summary(PRICE)["cost_usd"] == pytest.approx(paid)
        unpriced = j.summary()  # the table does not price my/llm: those tokens are named, not counted as $0 spent
        assert unpriced["cost_usd"] == 0.0 and unpriced["unpriced_tokens"] == 80
    assert journal_spend(journal, PRICE).usd == pytest.approx(paid)  # a build's spent_before agrees with the engine


def test_a_price_change_reprices_only_what_was_journaled_at_no_price(tmp_path):
    """A call made at no price counts at the price each later run has; one made at a known price stands at it (the
    price in force billed it), whatever price a later run is given."""
    journal, dearer = tmp_path / "j.sqlite", {MODEL: (5000.0, 5000.0)}
    with Emulator(EmulatorConfig(latency_median_s=0.001, latency_sigma=0.0, responder=answer)) as emu:
        gen_for(emu, journal).run(ask(1))  # at no price
        priced = gen_for(emu, journal, prices=PRICE).run(ask(2))
        gen = gen_for(emu, journal, prices=dearer)
        again = gen.run(ask(2))
    assert [r.cost_usd for r in priced] == pytest.approx([0.04, 0.04])  # the first counted at PRICE too
    assert [r.cost_usd for r in again] == pytest.approx([0.2, 0.04])  # at no price: now at 5x; the second stands
    assert gen.stats["cost_usd"] == pytest.approx(0.24)
    with Journal(journal, read_only=True) as j:
        assert j.summary(dearer)["cost_usd"] == pytest.approx(0.24)


def test_an_abandoned_attempt_at_no_price_counts_at_its_worst_case_once_priced(tmp_path):
    """An attempt abandoned on a timeout at no price was journaled at $0; a priced rerun counts its worst case
    (its prompt and max_tokens), so a budget it fills sends nothing."""
    journal = tmp_path / "j.sqlite"
    cfg = EmulatorConfig(latency_median_s=0.001, latency_sigma=0.0, hang_s=30.0, responder=answer,
                         faults=[Fault("timeout", first=1, match="SLOW")])
    with Emulator(cfg) as emu:
        requests = ask(1) + ask(1, "SLOW")  # one answered first: the server is reached, the timeout is no outage
        first = gen_for(emu, journal, timeout_s=0.5, max_attempts=1).run(requests)
        assert [r.status for r in first] == ["ok", "failed"]
        with Journal(journal, read_only=True) as j:
            tokens = j.summary()
        worst = (tokens["abandoned_input_tokens"] + tokens["abandoned_output_tokens"]) / 1000  # at PRICE
        assert worst >= 0.06  # max_tokens=60 of output at $0.001, and the prompt
        gen = gen_for(emu, journal, prices=PRICE, max_cost_usd=0.04 + worst + 0.01)
        out = gen.run(requests)
    assert out[1].status == "skipped_budget" and gen.stats["sent"] == 0
    assert gen.stats["abandoned_usd"] == pytest.approx(worst)
    with Journal(journal, read_only=True) as j:
        assert j.summary(PRICE)["abandoned_usd"] == pytest.approx(worst)


def test_a_journal_from_before_schema_9_takes_its_0_dollar_rows_for_unpriced(tmp_path):
    """An older journal did not say which $0 was no price: rows of $0 with tokens count at the price a run has now,
    read-only (a build's spent_before) as after the migration (the run's own record), so the two agree."""
    journal = tmp_path / "j.sqlite"
    with Emulator(EmulatorConfig(latency_median_s=0.001, latency_sigma=0.0, responder=answer)) as emu:
        gen_for(emu, journal).run(ask(2))
        with sqlite3.connect(journal) as db:  # as schema 8 wrote it
            present = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
            for column in present & set(UNPRICED):
                db.execute(f"ALTER TABLE requests DROP COLUMN {column}")
            db.execute("PRAGMA user_version=8")
        db.close()
        shutil.copy(journal, tmp_path / "unmigrated.sqlite")
        gen = gen_for(emu, journal, prices=PRICE)
        gen.run(ask(2))
    assert gen.stats["cost_usd"] == pytest.approx(0.08) and gen.stats["sent"] == 0
    assert journal_spend(tmp_path / "unmigrated.sqlite", PRICE).usd == pytest.approx(0.08)


def test_answers_collected_from_a_batch_at_no_price_count_at_the_batch_price_once_priced(tmp_path):
    """A batch bills half the list price: its answers at no price count at half the price a later run has."""
    journal = tmp_path / "j.sqlite"
    with Emulator(EmulatorConfig(batch_latency_s=0.02, responder=answer)) as emu:
        gen_for(emu, journal, batch=True, batch_poll_s=0.02).run(ask(2))
        gen = gen_for(emu, journal, prices=PRICE)
        out = gen.run(ask(2))
    assert gen.stats["sent"] == 0 and [r.cost_usd for r in out] == pytest.approx([0.02, 0.02])
    with Journal(journal, read_only=True) as j:
        assert j.summary(PRICE)["cost_usd"] == pytest.approx(0.04)


def test_the_cli_reports_and_budgets_what_a_run_at_no_price_spent_once_given_the_price(tmp_path):
    """`generate` on 2 prompts at no price, then on 4 with --price and --max-cost: the rerun reported $0.0690 spent
    and paid 2 more, over the budget; `journal --price` prices the same tokens."""
    def prompts(name: str, n: int):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"prompt": f"Explain topic {i}"}) + "\n" for i in range(n)))
        return str(path)

    journal, runner, env = str(tmp_path / "j.sqlite"), CliRunner(), {"OPENAI_API_KEY": "sk-test"}
    common = ["--model", MODEL, "--journal", journal, "--max-tokens", "60", "--concurrency", "1", "--no-progress"]
    with Emulator(EmulatorConfig(latency_median_s=0.001, latency_sigma=0.0, responder=answer)) as emu:
        first = runner.invoke(app, ["generate", prompts("two.jsonl", 2), "--base-url", emu.openai_base_url, *common],
                              env=env)
        second = runner.invoke(app, ["generate", prompts("four.jsonl", 4), "--base-url", emu.openai_base_url, *common,
                                     "--price", f"{MODEL}=1000,1000", "--max-cost", "0.15"], env=env)
        paid = billed_usd(emu)
    assert first.exit_code == 0, first.output
    assert second.exit_code == 4 and paid <= 0.15, second.output  # the budget stopped it
    assert "; $0.0800; journal" in second.output
    summary = runner.invoke(app, ["journal", journal, "--price", f"{MODEL}=1000,1000"])
    assert json.loads(summary.output)["cost_usd"] == pytest.approx(paid)


def test_classifier_label_counts_what_a_run_at_no_price_spent_once_given_the_price(tmp_path):
    """`classifier label` takes the same path: its earlier labels at no price count in a later --max-cost."""
    import polars as pl

    texts = [f"Text {i} about cells and how they divide." for i in range(4)]
    for n in (2, 4):
        pl.DataFrame({"id": [str(i) for i in range(n)], "text": texts[:n]}).write_parquet(tmp_path / f"in{n}.parquet")
    runner, env, journal = CliRunner(), {"OPENAI_API_KEY": "sk-test"}, str(tmp_path / "labels.journal")

    def label(n: int, url: str, *more: str):
        return runner.invoke(app, ["classifier", "label", str(tmp_path / f"in{n}.parquet"), "-o",
                                   str(tmp_path / f"labels{n}.jsonl"), "--base-url", url, "--model", MODEL,
                                   "--journal", journal, "--concurrency", "1", *more], env=env)

    with Emulator(EmulatorConfig(latency_median_s=0.001, latency_sigma=0.0)) as emu:  # its answers give a score
        assert label(2, emu.openai_base_url).exit_code == 0
        earlier = billed_usd(emu)
        budget = 1.5 * earlier  # room for one more label at most, beside the two paid
        again = label(4, emu.openai_base_url, "--price", f"{MODEL}=1000,1000", "--max-cost", f"{budget:.6f}")
        paid = billed_usd(emu)
    assert again.exit_code == 4 and paid <= budget, again.output
    stats = json.loads(again.output[again.output.index("{"):again.output.rindex("}") + 1])
    assert stats["cost_usd"] == pytest.approx(paid, rel=1e-4)


def test_a_builds_budget_counts_what_its_journals_spent_at_no_price(tmp_path):
    """A build's budget counts every journal's spend (`BudgetedGenerator`, `spent_before`) at the prices its
    engine counts its own record at: those spent at no price included, else the two disagreed and the remainder
    grew by what the engine counted that the journals' summaries did not."""
    from textbookgen.build import BudgetedGenerator
    from textbookgen.recipe import BudgetConfig

    journal = tmp_path / "journal.sqlite"
    with Emulator(EmulatorConfig(latency_median_s=0.001, latency_sigma=0.0, responder=answer)) as emu:
        gen_for(emu, journal).run(ask(2))
        gen = gen_for(emu, journal, prices=PRICE, max_cost_usd=0.15, refuse_unpriced=False)
        budgeted = BudgetedGenerator(gen, BudgetConfig.model_construct(max_cost_usd=0.15, max_output_tokens=None),
                                     {"generate": journal})
        out = budgeted.run(ask(4))
        paid = billed_usd(emu)
    assert paid <= 0.15 and budgeted.skipped == 2
    assert budgeted.spent().usd == pytest.approx(paid) == pytest.approx(sum(r.cost_usd for r in out))


def test_an_attempt_a_killed_run_left_on_the_wire_at_no_price_counts_once_priced(tmp_path):
    """A killed run's attempt on the wire at no price (USD None) is moved to the abandoned attempts as one at no
    price, so a priced reader counts its worst case, before the next run locks the journal as after."""
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        j.add_pending([("k1", "openai", MODEL, '{"max_tokens": 64}', "{}")])
        j.write_results([], on_wire=[(None, 64, 40, "k1")])  # then killed
    with Journal(path, read_only=True) as j:
        assert j.summary(PRICE)["abandoned_usd"] == pytest.approx(0.104)
    with Journal(path) as j:
        j.lock_for_run()
        assert j.summary(PRICE)["abandoned_usd"] == pytest.approx(0.104)
        assert j.summary()["unpriced_tokens"] == 104
