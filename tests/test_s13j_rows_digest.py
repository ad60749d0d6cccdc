"""`rows_digest`, which every push computes for its commit's rows record, read 65,536 rows at a time: a whole row
group of long documents decoded at once (1.04 GB of shards: 1.45 GB peak RSS), and a push over shards a commit had
already recorded decoded them all again. Batches are now cut by bytes, with the same digests, and a split whose
very shards the head's history recorded takes that record's digest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub.utils import disable_progress_bars
from test_hub import build

from textbookgen import hub as hub_module
from textbookgen.hub import ROWS_MARK, push

disable_progress_bars()
REPO = "tester/digest"


def reference_digest(paths: list[Path]) -> str:
    """`rows_digest` as it read files before (65,536-row batches across a file's row groups)."""
    import hashlib
    import json

    columns: dict[str, hub_module._ColumnHash] = {}
    rows = 0
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
            rows += batch.num_rows
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                columns.setdefault(name, hub_module._ColumnHash()).update(column)
    digest = hashlib.sha256(f"{rows}\n".encode())
    for name, column in columns.items():
        digest.update(json.dumps([name, *column.hexdigests()]).encode("utf-8"))
    return digest.hexdigest()


def shards(folder: Path, rows: int = 3_000, n: int = 3) -> list[Path]:
    """`n` shards of long texts, nested and dictionary columns with nulls, several row groups of unequal rows."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        ids = range(k * rows, (k + 1) * rows)
        table = pa.table({
            "id": pa.array([f"doc-{i}" for i in ids], pa.large_string()),
            "text": [None if i % 97 == 0 else f"{i} " + "lorem ipsum " * (50 + i % 400) for i in ids],
            "tokens": pa.array([None if i % 11 == 0 else i * 3 for i in ids], pa.int32()),
            "score": [i / 7 if i % 5 else None for i in ids],
            "tags": [[f"t{i % 3}", None] if i % 4 else None for i in ids],
            "meta": [{"model": "m", "turns": [{"role": "user", "n": i}]} if i % 6 else None for i in ids],
            "template": pa.array([["qa", "exercises"][i % 2] for i in ids]).dictionary_encode(),
            "ok": [i % 3 == 0 for i in ids],
        })  # fmt: skip
        path = folder / f"train-{k:05d}-of-{n:05d}.parquet"
        pq.write_table(table, path, row_group_size=rows // 3 + k, compression="zstd")
        paths.append(path)
    return paths


def test_the_digest_is_the_one_before_whatever_the_batch_bytes(tmp_path, monkeypatch):
    paths = shards(tmp_path)
    before = reference_digest(paths)
    for batch_bytes in (1, 64 * 1024, 10**9):
        monkeypatch.setattr(hub_module, "DIGEST_BATCH_BYTES", batch_bytes, raising=False)
        assert hub_module.rows_digest(paths) == before
    assert hub_module.rows_digest(paths[:2]) != before


def test_no_batch_holds_much_more_than_the_batch_bytes(tmp_path, monkeypatch):
    path = tmp_path / "one-group.parquet"
    texts = [f"{i} " + "word " * 1_000 for i in range(2_000)]  # ~10 MB of text in one row group
    pq.write_table(pa.table({"text": texts}), path, row_group_size=len(texts))
    before = reference_digest([path])
    seen: list[int] = []
    update = hub_module._ColumnHash.update

    def spy(self, column):
        seen.append(column.nbytes)
        return update(self, column)

    monkeypatch.setattr(hub_module._ColumnHash, "update", spy)
    monkeypatch.setattr(hub_module, "DIGEST_BATCH_BYTES", 256 * 1024, raising=False)
    assert hub_module.rows_digest([path]) == before
    assert len(seen) > 20 and max(seen) < 2 * 256 * 1024


def test_a_push_over_recorded_shards_decodes_none(hub, tmp_path, monkeypatch):
    push(build(tmp_path / "a", shards=2), REPO, token=hub.token, endpoint=hub.endpoint)
    first = hub.commits(REPO)[-1].message
    again = tmp_path / "b"  # the same shards elsewhere: no digest of this process is kept for them
    shutil.copytree(tmp_path / "a", again)
    with (again / "README.md").open("a", encoding="utf-8") as card:
        card.write("\nA note on the card.\n")
    decoded: list[list[Path]] = []
    digest = hub_module.rows_digest
    monkeypatch.setattr(hub_module, "rows_digest", lambda paths: decoded.append(paths) or digest(paths))
    push(again, REPO, token=hub.token, endpoint=hub.endpoint)
    commit = hub.commits(REPO)[-1]
    assert commit.title == "textbookgen: same rows and recipe, card and files updated"
    assert commit.message == first and first.startswith(ROWS_MARK) and len(first.splitlines()) == 3
    assert decoded == []
