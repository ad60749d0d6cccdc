"""textbookgen.jsonl: the one JSON Lines reader behind prompts, benchmarks, web samples and corpora."""

from __future__ import annotations

import bz2
import gzip

import pytest

from textbookgen.jsonl import decode_utf8, iter_jsonl, iter_jsonl_lines


class MyError(ValueError):
    pass


def test_plain_gz_and_bz2_skip_blank_lines_and_number_lines(tmp_path):
    data = b'{"a": 1}\n\n   \r\n{"a": 2}\r\n'
    (tmp_path / "p.jsonl").write_bytes(data)
    (tmp_path / "g.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "b.jsonl.bz2").write_bytes(bz2.compress(data))
    for name in ("p.jsonl", "g.jsonl.gz", "b.jsonl.bz2"):
        assert list(iter_jsonl(tmp_path / name)) == [(1, {"a": 1}), (4, {"a": 2})]


def test_only_newline_splits_lines(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text('{"t": "a\u2028b"}\n{"t": "c"}\n', encoding="utf-8")
    assert [row["t"] for _, row in iter_jsonl(path)] == ["a\u2028b", "c"]


def test_bad_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": oops}\n')
    with pytest.raises(MyError, match=r"bad\.jsonl:3: invalid JSON \(Expecting value at column 7\)"):
        list(iter_jsonl(path, error=MyError))


def test_non_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "latin.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": "ok"}\n{"a": "caf\xe9"}\n'))
    with pytest.raises(ValueError, match=r"latin\.jsonl\.gz:2: not valid UTF-8 \(invalid continuation byte at byte 10\)"):
        list(iter_jsonl(path))


def test_non_object_lines(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"a": 1}\n"just text"\n[1]\n')
    with pytest.raises(MyError, match=r"s\.jsonl:2: each line must be a JSON object, got str"):
        list(iter_jsonl(path, error=MyError))
    assert [v for _, v in iter_jsonl(path, objects_only=False)] == [{"a": 1}, "just text", [1]]


def test_lines_from_memory_are_named_by_where():
    with pytest.raises(MyError, match=r"^https://x/y\.jsonl:2: invalid JSON"):
        list(iter_jsonl_lines([b"{}\n", b"{\n"], "https://x/y.jsonl", error=MyError))


def test_a_leading_utf8_bom_is_skipped_and_lines_still_counted(tmp_path):
    """Windows tools start files with a byte order mark: json rejected the first line ("Unexpected UTF-8 BOM")."""
    bom = b"\xef\xbb\xbf"
    path = tmp_path / "w.jsonl.gz"
    path.write_bytes(gzip.compress(bom + b'{"a": 1}\n{"a": "caf\xe9"}\n'))
    with pytest.raises(ValueError, match=r"w\.jsonl\.gz:2: not valid UTF-8"):
        list(iter_jsonl(path))
    assert list(iter_jsonl_lines([bom + b'{"a": 1}\n', b'{"a": 2}\n'], "mem")) == [(1, {"a": 1}), (2, {"a": 2})]
    with pytest.raises(ValueError, match=r"mem:2: invalid JSON"):
        list(iter_jsonl_lines([b'{"a": 1}\n', bom + b'{"a": 2}\n'], "mem"))  # a BOM is a mark at the start only
    assert decode_utf8(bom + b"key: v\n", "c.yaml") == "key: v\n"
    with pytest.raises(ValueError, match=r"c\.yaml:2: not valid UTF-8"):
        decode_utf8(bom + b"a\n\xff", "c.yaml")


def test_a_line_cut_short_is_placed_at_its_end(tmp_path):
    """`{"id": "y", "text": ` then a newline was reported "at column 1": the newline was parsed as a next line."""
    path = tmp_path / "b.jsonl"
    path.write_text('{"id": "x", "text": "a"}\n{"id": "y", "text": \n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: invalid JSON \(Expecting value at column 21\)"):
        list(iter_jsonl(path))
