"""Which field of a web-sample source holds the text. A Hub dataset whose text is not in a `text` column
(`content`, `raw_content`, ...) used to be streamed to its end, every row skipped, before failing with "no
extract survived"; it now finds the column as a local file does, or names the columns from the first row.
A jsonl row without the `text_field` asked for names the fields it has."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest

from textbookgen.websamples import WebSampleError, WebSamples

DOC = "Rivers carry water from the hills to the sea, and towns grew along them for trade and farming. " * 4


class _Stream:
    """A streamed Hub split: rows on demand, counting how many were read."""

    def __init__(self, rows: list[dict[str, Any]], repeat: int) -> None:
        self.rows, self.repeat, self.read = rows, repeat, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _ in range(self.repeat):
            for row in self.rows:
                self.read += 1
                yield row


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    def serve(rows: list[dict[str, Any]], repeat: int = 1000) -> _Stream:
        stream = _Stream(rows, repeat)
        monkeypatch.setattr("textbookgen.websamples.hub_reachable", lambda timeout=3.0: True)
        monkeypatch.setattr(datasets, "load_dataset", lambda repo, config=None, split=None, streaming=False: stream)
        return stream

    return serve


def test_a_hub_dataset_with_its_text_in_another_column_is_read(hub):
    stream = hub([{"content": f"Document {i}. {DOC}", "score": 0.9, "tokens": 120} for i in range(10)], repeat=1)
    samples = WebSamples.load("hf:org/code-like", limit=5, min_chars=100)
    assert len(samples) == 5 and stream.read <= 20


def test_a_hub_dataset_with_several_text_columns_asks_for_text_field_at_once(hub):
    stream = hub([{"id": "doc-1", "content": DOC}])
    with pytest.raises(WebSampleError, match=r"hf:org/ids: cannot tell which column holds the text \(\['id', "
                       r"'content'\]\); set text_field"):
        WebSamples.load("hf:org/ids", limit=5)
    assert stream.read == 1


def test_a_hub_text_field_that_is_not_there_names_the_columns(hub):
    stream = hub([{"url": "https://example.com", "raw_content": DOC, "quality": "high"}])
    with pytest.raises(WebSampleError) as err:
        WebSamples.load("hf:org/redpajama-like", text_field="text", limit=5)
    assert str(err.value) == "hf:org/redpajama-like: no column 'text' (columns: ['url', 'raw_content', 'quality'])"
    assert stream.read == 1  # not the whole stream


def test_a_jsonl_row_without_the_text_field_names_its_fields(tmp_path: Path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"id": 1, "article_body": "' + DOC + '"}\n')
    with pytest.raises(WebSampleError) as err:
        WebSamples.load(path, text_field="body")
    assert str(err.value) == f"{path}:1: no field 'body' (fields: ['id', 'article_body']); set text_field to the text's"
