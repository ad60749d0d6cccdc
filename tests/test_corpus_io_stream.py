"""JSON lines corpora are read a batch of lines at a time, with the rows, types and errors of a whole-file read."""

from __future__ import annotations

import gzip
import io
import json
import random
import tracemalloc
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.curation import corpus_io
from textbookgen.curation.corpus_io import Corpus, read_corpus, read_records


def whole_file_read(path: Path) -> pl.DataFrame:
    """What the reader did before it streamed: polars on the whole file, else Python's parse of its lines."""
    raw = path.read_bytes()
    raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
    try:
        return pl.read_ndjson(io.BytesIO(raw), infer_schema_length=None)
    except Exception:
        return pl.DataFrame([json.loads(x) for x in raw.splitlines() if x.strip()], infer_schema_length=None)


def lines(rows: list[object]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" if isinstance(r, dict) else r for r in rows)  # type: ignore[misc]


def doc(i: int, **fields: object) -> dict:
    return {"text": f"doc {i}", **fields}


# each: rows whose types differ from one batch of 4 lines to the next (or lines polars cannot read)
CASES = {
    "int then float": [doc(i, v=i) for i in range(9)] + [doc(9, v=0.5)],
    "nulls then ints": [doc(i, v=None) for i in range(6)] + [doc(i, v=i) for i in range(6, 10)],
    "a field from batch 3": [doc(i) for i in range(8)] + [doc(8, late="x", n=[1, 2])],
    "float to string keeps the JSON text": [doc(i, v="s") for i in range(5)] + [doc(5, v=1.5e20), doc(6, v=0.1)],
    "struct fields united": [doc(i, meta={"a": i}) for i in range(4)] + [doc(4, meta={"b": "x", "a": None})],
    "list widened": [doc(i, tags=[i]) for i in range(4)] + [doc(4, tags=[0.5]), doc(5, tags=[])],
    "bool and int (python's types)": [doc(i, v=i) for i in range(4)] + [doc(4, v=True)],
    "NaN (python only)": [doc(i) for i in range(5)] + [b'{"text": "nan", "v": NaN}\n'],
    "duplicate key (polars keeps the first)": [b'{"text": "a", "text": "b"}\n'] * 6,
    "blank lines and a blank batch": [doc(0), b"\n", b"  \r\n", b"\n", b"\n", b"\n", b"\n", doc(1), b"\n"],
    "no final newline": [doc(0), doc(1), b'{"text": "last"}'],
    "columns in polars' order (the longer row's first)": [doc(i, y=[[i]]) for i in range(4)] + [doc(4, x=1, v=[0.5])],
    "struct fields in polars' order, a row type seen again": [
        doc(0, v={"a": 2.5, "c": {"d": 1}}), doc(1), doc(2), doc(3, z={"c": {"e": "y"}, "a": None}),
        doc(4, v={"c": {"e": "y"}, "a": None}), doc(5, v={"a": 2.5, "c": {"d": 1}})],
}


def write(path: Path, raw: bytes) -> Path:
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(raw))
    elif path.name.endswith(".zst"):
        with pa.output_stream(str(path), compression="zstd") as out:
            out.write(raw)
    else:
        path.write_bytes(raw)
    return path


@pytest.mark.parametrize("case", CASES)
def test_batches_have_the_whole_files_rows_and_types(tmp_path, case):
    path = write(tmp_path / "c.jsonl", lines(CASES[case]))
    whole = whole_file_read(path)
    assert read_records(path).equals(whole)
    corpus = Corpus(path, chunk_rows=4)
    chunks = list(corpus.chunks())
    assert max(c.height for c in chunks) <= 4
    assert pl.concat(chunks).drop("id").equals(whole) and corpus.schema() == read_corpus(path).schema


def test_random_type_mixes_read_as_whole_files(tmp_path, monkeypatch):
    """Batches give polars' whole-file types, column and struct field orders and values, or its failure;
    every other file has no objects in its rows (their types are found a batch at a time)."""
    flat = [[None, 1, 2.5, 2**64], [None, "s", 1, 0.5, [1]], [None, True, 1], [None, [1], [0.5], [], ["a"]]]
    nested = [[None, "s", {"a": 1}], [None, {"a": 1}, {"b": "x"}, {"a": 2.5, "c": {"d": 1}}, {"c": {"e": "y"}, "a": None}, {}],
              [None, [{"a": 1}], [{"b": 2, "a": 3}], [], [{"c": [1]}]]]
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 3)
    rng = random.Random(0)
    for k in range(200):
        field_kinds = {f: rng.choice(flat if k % 2 else flat + nested) for f in "uvwxyz"}
        rows = []
        for i in range(rng.randint(1, 30)):
            fields = [(f, rng.choice(field_kinds[f])) for f in rng.sample("uvwxyz", rng.randint(0, 6))]
            fields.insert(rng.randint(0, len(fields)), ("text", f"doc {i}"))
            rows.append(dict(fields))
        path = write(tmp_path / f"r{k}.jsonl", lines(rows))
        try:
            whole = whole_file_read(path)
        except pl.exceptions.PolarsError:
            with pytest.raises(ValueError, match=f"r{k}.jsonl: not a readable .jsonl file"):
                read_records(path)
            continue
        chunks = pl.concat(Corpus(path, chunk_rows=rng.randint(1, 5)).chunks()).drop("id")
        assert read_records(path).equals(whole) and chunks.equals(whole) and chunks.schema == whole.schema, rows


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.jsonl.zst", "gzip-inside.jsonl"])
def test_jsonl_is_parsed_a_batch_at_a_time(tmp_path, monkeypatch, name):
    """Neither the file's bytes nor its lines are ever held whole: polars gets at most `chunk_rows` lines at
    once (and a row with the types so far), and what Python allocates stays under a tenth of the file (it
    held it all before)."""
    raw = lines([doc(i, body="word " * 200) for i in range(8_000)])
    path = write(tmp_path / name, raw)
    if name.startswith("gzip"):
        path.write_bytes(gzip.compress(raw))
    seen = _count_ndjson_rows(monkeypatch)
    tracemalloc.start()
    try:
        rows = sum(chunk.height for chunk in Corpus(path, chunk_rows=50).chunks())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == 8_000 and seen and max(seen) <= 51
    assert peak < len(raw) / 10, f"{peak:,} bytes held reading a {len(raw):,}-byte file"
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 50)
    seen.clear()
    assert read_records(path).height == 8_000 and max(seen) <= 51


@pytest.mark.parametrize("name", ["late.jsonl", "late.jsonl.gz"])
@pytest.mark.parametrize(("bad", "message"), [(b'{"text": oops}\n', "invalid JSON"),
                                              (b'{"text": "caf\xe9"}\n', "not valid UTF-8")])
def test_a_bad_line_late_in_the_file_is_named_before_any_output(tmp_path, monkeypatch, name, bad, message):
    """Found by the first pass over a streamed file (which never holds it), the error names file and line."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 10)
    good = [doc(i, body=f"doc {i} " + "word " * 30) for i in range(95)]
    path = write(tmp_path / name, lines([*good, bad, doc(95)]))
    result = CliRunner().invoke(app, ["dedup", str(path), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 1 and f"{name}:96: {message}" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not list(tmp_path.glob("out.jsonl*"))
    with pytest.raises(ValueError, match=f"{name}:96: {message}"):
        read_corpus(path)


@pytest.mark.parametrize(("name", "indent"), [("a.json", None), ("a.json", 2), ("a.json.gz", None)])
def test_a_json_array_is_parsed_a_batch_at_a_time(tmp_path, monkeypatch, name, indent):
    """A file that is one JSON array was read whole (its bytes, text and Python objects: 2.2 GB peak RSS for a
    500 MB array); its records now go to polars `chunk_rows` at a time, with the types of a JSON lines file."""
    rows = [doc(i, body="word " * 200, n=i, tags=["a"] * (i % 3), meta={"k": i}) for i in range(3_000)]
    raw = json.dumps(rows, indent=indent).encode()
    path = write(tmp_path / name, raw)
    expected = pl.read_ndjson(io.BytesIO(lines(rows)))
    monkeypatch.setattr(corpus_io, "ARRAY_BLOCK", 1 << 16)  # the file is a few of them
    seen = _count_ndjson_rows(monkeypatch)
    tracemalloc.start()
    try:
        got = pl.concat(Corpus(path, chunk_rows=50).chunks()).drop("id")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.equals(expected) and max(seen) <= 51
    assert peak < len(raw) / 4, f"{peak:,} bytes held reading a {len(raw):,}-byte array"
    assert [c.height for c in Corpus(path, chunk_rows=1_000).chunks()] == [1_000] * 3
    assert read_records(path).equals(got)


def test_a_json_array_reads_the_same_cut_into_blocks_anywhere(tmp_path, monkeypatch):
    """Decoded a block at a time: a record, a number, a string or a UTF-8 character cut at a block's end reads
    as in one piece, and a bad array fails where `json.loads` says, naming the record."""
    values = [1, -12345678901234567890, 0.5, 1e300, True, None, "é日本\u2028x", 'a\\"b', [1, [2, {}]], {"x": {"y": "ü"}}]
    rng = random.Random(0)
    for k in range(60):
        rows = [{f"k{j}": rng.choice(values) for j in range(rng.randint(0, 3))} for _ in range(rng.randint(0, 5))]
        text = json.dumps(rows, indent=rng.choice([None, 1]), ensure_ascii=k % 3 == 0)
        if k % 2 and len(text) > 2:
            i = rng.randrange(1, len(text))
            text = text[:i] + rng.choice(["x", ",", "]", '"', "{", "}"]) + text[i + 1:]
        path = tmp_path / f"a{k}.json"
        path.write_text(text, encoding="utf-8")
        try:
            expected, error = json.loads(text), None
        except json.JSONDecodeError as err:
            expected, error = None, err
        for block in (1, 2, 3, 7, 1 << 20):
            monkeypatch.setattr(corpus_io, "ARRAY_BLOCK", block)
            if error is None and all(isinstance(r, dict) for r in expected):
                assert [json.loads(line) for line in corpus_io._array_lines(path)] == expected, (text, block)
                continue
            with pytest.raises(ValueError, match=rf"a{k}.json: invalid JSON array \(line \d+, column \d+, record "
                                                 r"\d+: ") as raised:
                list(corpus_io._array_lines(path))
            if error is not None and "not an object" not in str(raised.value):
                assert f"(line {error.lineno}, column {error.colno}," in str(raised.value), (text, block)
                assert error.msg in str(raised.value), (text, block)


@pytest.mark.parametrize(("text", "message"), [
    ('[{"text": "a"},\n{"text": oops}]', r"\(line 2, column 10, record 2: Expecting value\)"),
    ('[{"text": "a"},\n 5]', r"\(line 2, column 2, record 2: not an object \(int\)\)"),
    ('[{"text": "a"} {"text": "b"}]', r"\(line 1, column 16, record 1: Expecting ',' delimiter\)"),
    ('[{"text": "a"}] x', r"\(line 1, column 17, record 1: Extra data\)"),
])
def test_a_bad_json_array_is_named_by_line_and_record_before_any_output(tmp_path, text, message):
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"a.json: invalid JSON array " + message):
        read_records(path)
    result = CliRunner().invoke(app, ["dedup", str(path), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "a.json: invalid JSON array" in result.output and not list(tmp_path.glob("out.jsonl*"))
    path.write_bytes(b'[{"text": "a"},\n{"text": "caf\xe9"}]')
    with pytest.raises(ValueError, match=r"a.json:2: not valid UTF-8"):
        list(Corpus(path).chunks())


def test_a_json_array_of_rows_polars_cannot_read_is_still_read(tmp_path):
    """A bool among ints: polars refuses the records, Python reads them (as for JSON lines)."""
    path = tmp_path / "a.json"
    path.write_text(json.dumps([doc(0, v=1), doc(1, extra=True, v=True), doc(2)]))
    assert [c.height for c in Corpus(path, chunk_rows=2).chunks()] == [2, 1]
    assert read_records(path).columns == ["text", "v", "extra"]


def test_a_corrupt_compressed_file_is_one_clear_error(tmp_path):
    for name in ("bad.jsonl.gz", "bad.jsonl.zst"):
        path = write(tmp_path / name, lines([doc(i) for i in range(100)]))
        path.write_bytes(path.read_bytes()[:40])
        with pytest.raises(ValueError, match=f"{name}: not a readable .jsonl.(gz|zst) file"):
            list(Corpus(path).chunks())


def test_a_folder_includes_zstd_jsonl(tmp_path):
    from textbookgen.curation.corpus_io import corpus_files

    write(tmp_path / "a.jsonl.zst", b'{"text": "one"}\n')
    write(tmp_path / "b.jsonl.gz", b'{"text": "two"}\n')
    write(tmp_path / "c.ndjson.zst", b'{"text": "three"}\n')
    assert [p.name for p in corpus_files(tmp_path)] == ["a.jsonl.zst", "b.jsonl.gz", "c.ndjson.zst"]


def test_an_empty_jsonl_shard_is_a_shard_with_no_rows(tmp_path):
    """An empty (or all-blank) JSON lines file stopped the run as one without the text field, where an
    empty parquet file was already read as no rows; an input with no documents at all is still an error."""
    folder = tmp_path / "c"
    folder.mkdir()
    write(folder / "a.jsonl", b"")
    write(folder / "b.jsonl.gz", b"\n \n")
    write(folder / "c.jsonl", lines([doc(0, id=7), doc(1, id=8)]))
    whole = read_corpus(folder)
    assert whole.rows() == [("doc 0", 7), ("doc 1", 8)]
    corpus = Corpus(folder, chunk_rows=1)
    assert pl.concat(corpus.chunks()).equals(whole) and corpus.schema() == whole.schema
    for f in ("c.jsonl", "b.jsonl.gz"):
        (folder / f).unlink()
    for read in (read_corpus, lambda p: list(Corpus(p).chunks()), lambda p: Corpus(p).schema()):
        with pytest.raises(ValueError, match=r"c: no documents \(every corpus file is empty or blank\)"):
            read(folder)
    write(folder / "a.jsonl", b"{}\n{}\n")  # rows without fields are no empty file
    with pytest.raises(ValueError, match=r"a.jsonl: no 'text' field \(fields: \[\]\)"):
        list(Corpus(folder).chunks())


def test_a_parquet_file_without_the_text_field_names_the_fields_it_has(tmp_path):
    """Dedup reads only the columns it needs: the error named none ("fields: []")."""
    pl.DataFrame({"doc": ["x"], "content": ["y"]}).write_parquet(tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"c.parquet: no 'text' field \(fields: \['doc', 'content'\]\)"):
        list(Corpus(tmp_path / "c.parquet").chunks(["quality_score"]))


@pytest.mark.parametrize(("values", "kind"), [([["a", "b"]], r"List\(String\)"), ([b"\xff\xfe"], "Binary")])
def test_a_text_column_that_is_not_text_is_named(tmp_path, values, kind):
    """It was a bare "cannot cast List type" or "invalid utf8", naming neither the file nor the column."""
    path = tmp_path / "t.parquet"
    pl.DataFrame({"text": values}).write_parquet(path)
    for read in (read_corpus, lambda p: list(Corpus(p).chunks(["quality_score"]))):
        with pytest.raises(ValueError, match=rf"t.parquet: column 'text' holds {kind} values, not text \("):
            read(path)
    pl.DataFrame({"text": ["x"], "id": [[1]]}).write_parquet(path)
    with pytest.raises(ValueError, match=r"t.parquet: column 'id' holds List\(Int64\) values, not ids"):
        read_corpus(path)


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.jsonl.gz", "bom.jsonl.zst"])
def test_a_utf8_bom_is_no_part_of_the_first_line(tmp_path, monkeypatch, name):
    """Windows tools write a byte order mark: the file was rejected ("Unexpected UTF-8 BOM")."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 3)
    rows = [doc(i, id=i) for i in range(7)]
    path = write(tmp_path / name, b"\xef\xbb\xbf" + lines(rows))
    expected = pl.DataFrame(rows)
    assert read_corpus(path).equals(expected) and pl.concat(Corpus(path).chunks()).equals(expected)
    assert corpus_io.jsonl_schema(path, 3) is not None  # read by polars a batch at a time, not parsed whole
    nested = write(tmp_path / "nested.jsonl", b"\xef\xbb\xbf" + lines([doc(0, m={"a": 1})]))
    array = write(tmp_path / "array.json", b"\xef\xbb\xbf" + json.dumps([doc(0)]).encode())
    assert read_corpus(nested)["m"].to_list() == [{"a": 1}] and read_corpus(array)["text"].to_list() == ["doc 0"]


def _count_ndjson_rows(monkeypatch) -> list[int]:
    """The row counts of every `pl.read_ndjson` call from now on: how many lines polars got at once."""
    seen: list[int] = []
    read_ndjson = pl.read_ndjson

    def counting(source, **kwargs):
        df = read_ndjson(source, **kwargs)
        seen.append(df.height)
        return df

    monkeypatch.setattr(pl, "read_ndjson", counting)
    return seen
