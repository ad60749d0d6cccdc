"""The card's key/value cells (`kv`, e.g. the web samples row) show a long value's end, where a path or URL
names its file, so a reader can tell the source; a short value shows whole."""

from __future__ import annotations

from textbookgen.card import load_card_template


def test_a_long_source_shows_its_file_name_and_a_short_one_shows_whole(tmp_path):
    (tmp_path / "t.md").write_text("{{ web | kv }}")
    source = "https://data.example.org/crawls/2024-10/en/seed_extracts_part_0007.jsonl.gz"
    cell = load_card_template(tmp_path / "t.md").render(
        web={"source": source, "dataset": "hf:HuggingFaceFW/fineweb-edu", "extracts": 969, "nested": {"a": 1}}
    )
    shown = cell.split("; ")[0].removeprefix("source: ")
    assert shown.startswith("…") and source.endswith(shown[1:]) and "seed_extracts_part_0007.jsonl.gz" in shown
    assert len(shown) <= 60  # a table cell, not the whole URL
    assert cell.endswith("; dataset: hf:HuggingFaceFW/fineweb-edu; extracts: 969")
