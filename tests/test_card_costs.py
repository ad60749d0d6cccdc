"""The card's cost rows add up to what the build spent: attempts the provider billed but whose answer could not
be read (a cut connection, an unreadable body) are part of it, counted at worst case, growth or no growth."""

from __future__ import annotations

from test_dataset import sample_documents

from textbookgen.card import CARDS_DIR, render_card
from textbookgen.dataset import write_dataset

MANIFEST = {
    "cost_usd": 0.079,
    "tokens": {"input": 56915, "output": 117377},
    "counts": {"requests": 200, "ok": 152, "failed": 18, "truncated": 30, "documents": 182, "curated": 152},
    "journal_summary": {"requests": 200, "cost_usd": 0.079, "abandoned_usd": 0.0065, "abandoned_output_tokens": 10200},
    "build_cost_usd": {"generate": 0.0855, "taxonomy": 0.0, "total": 0.0855},
}


def test_the_card_shows_the_whole_build_cost_with_billed_attempts_that_gave_no_answer(tmp_path):
    write_dataset(sample_documents(30), tmp_path)
    text = render_card(tmp_path, CARDS_DIR / "quickstart.md", {"name": "quickstart"}, MANIFEST).read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[-1].rstrip(" |") for line in text.splitlines()
            if line.startswith("| ")}  # fmt: skip
    assert rows["cost, generation journal (all runs of this build; journal_summary.json)"] == "$0.0790"
    abandoned = next(v for k, v in rows.items() if k.startswith("billed attempts without a readable answer"))
    assert abandoned == "$0.0065"
    assert rows["cost, whole build (growth and documents: what budget.max_cost_usd counts)"] == "$0.0855"
    assert not any(k.startswith("cost, taxonomy growth") for k in rows)  # no growth: no growth row


def test_a_build_without_such_attempts_or_growth_has_one_cost_line(tmp_path):
    write_dataset(sample_documents(30), tmp_path)
    clean = {**MANIFEST, "journal_summary": {"requests": 200, "cost_usd": 0.079, "abandoned_usd": 0.0},
             "build_cost_usd": {"generate": 0.079, "taxonomy": 0.0, "total": 0.079}}  # fmt: skip
    text = render_card(tmp_path, CARDS_DIR / "quickstart.md", {"name": "quickstart"}, clean).read_text()
    assert "whole build" not in text and "billed attempts" not in text
