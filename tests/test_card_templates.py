"""Each project card describes the method of its own recipe: the TinyStories card does not claim phi-1.5's."""

from __future__ import annotations

from test_dataset import sample_documents

from textbookgen.card import CARDS_DIR, render_card
from textbookgen.dataset import write_dataset


def test_the_tiny_stories_card_describes_the_tinystories_method(tmp_path):
    write_dataset(sample_documents(30), tmp_path)
    text = render_card(tmp_path, CARDS_DIR / "tiny-stories.md", {"name": "tiny-stories"}, {}).read_text()
    method = text.split("## How it was made", 1)[1].split("\n## ", 1)[0]
    assert "phi-1.5" not in method
    assert "verb, noun and adjective" in method and "narrative feature" in method
