"""`rows_digest` sized its batches from the parquet footer alone, which counts a dictionary-encoded column's pages,
not its decoded rows: 200,000 copies of one 4 KB text (a file of 89 KB) were decoded 65,536 rows (268 MB) at a
time, 1.74 GB RSS. Batches are now sized from a first small batch's decoded bytes too, with the same digests."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from test_s13j_rows_digest import reference_digest, shards

from textbookgen import hub as hub_module

TEXT = "".join(chr(97 + (i * 7919) % 26) for i in range(4096))  # one long text, 4 KB


def decoded_batches(path, monkeypatch) -> list[int]:
    """The decoded bytes of each batch `rows_digest` hashes of `path`, with 256 KiB batches asked for."""
    before = reference_digest([path])
    seen: list[int] = []
    update = hub_module._ColumnHash.update

    def spy(self, column):
        seen.append(column.dictionary_decode().nbytes if pa.types.is_dictionary(column.type) else column.nbytes)
        return update(self, column)

    monkeypatch.setattr(hub_module._ColumnHash, "update", spy)
    monkeypatch.setattr(hub_module, "DIGEST_BATCH_BYTES", 256 * 1024)
    assert hub_module.rows_digest([path]) == before
    return seen


def test_a_dictionary_encoded_repeated_text_is_decoded_a_few_batch_bytes_at_a_time(tmp_path, monkeypatch):
    path = tmp_path / "repeated.parquet"
    pq.write_table(pa.table({"text": [TEXT] * 20_000}), path, row_group_size=20_000)  # dictionary-encoded pages
    group = pq.ParquetFile(path).metadata.row_group(0)
    assert group.total_byte_size < 64 * 1024  # the footer's estimate: the 80 MB of rows look small
    seen = decoded_batches(path, monkeypatch)
    assert len(seen) > 100 and max(seen) <= 256 * 1024 + len(TEXT) + 16


def test_an_arrow_dictionary_column_of_a_repeated_text_too(tmp_path, monkeypatch):
    path = tmp_path / "dictionary.parquet"
    column = pa.array([TEXT] * 20_000).dictionary_encode()  # read back as a DictionaryArray (the arrow schema)
    pq.write_table(pa.table({"text": column, "n": pa.array(range(20_000), pa.int32())}), path)
    seen = decoded_batches(path, monkeypatch)
    assert max(seen) <= 256 * 1024 + len(TEXT) + 16


def test_the_digests_of_ordinary_shards_are_the_ones_recorded_before(tmp_path):
    paths = shards(tmp_path, rows=1_500)
    assert hub_module.rows_digest(paths) == reference_digest(paths)
