"""`rows_digest` sized a row group's batches from its first 256 rows: short ones, then one long text repeated, were
decoded 65,536 rows at a time (a 93 KB file's digest peaked at 1.03 GB RSS). Batches now hold at most
`DIGEST_BATCH_ROWS` rows, with the same digests."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from test_s13j_rows_digest import reference_digest

from textbookgen import hub as hub_module

TEXT = "".join(chr(97 + (i * 7919) % 26) for i in range(4096))  # one long text, 4 KB


def test_short_first_rows_then_long_ones_are_decoded_at_most_the_row_cap_at_a_time(tmp_path, monkeypatch):
    path = tmp_path / "short_then_long.parquet"
    rows = [f"s{i}" for i in range(hub_module.PROBE_ROWS)] + [TEXT] * 20_000
    pq.write_table(pa.table({"text": rows}), path, row_group_size=len(rows))
    before = reference_digest([path])
    seen: list[int] = []
    update = hub_module._ColumnHash.update

    def spy(self, column):
        seen.append(len(column))
        return update(self, column)

    monkeypatch.setattr(hub_module._ColumnHash, "update", spy)
    assert hub_module.rows_digest([path]) == before
    assert sum(seen) == len(rows) and max(seen) <= 4096
