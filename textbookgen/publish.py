"""Publish your own corpus: a Hub dataset folder with every column as given, and a card that describes it.

Recipe builds get their dataset folder from the build. A corpus curated with the curation commands (web text,
any columns) gets one here: parquet files of one schema are sharded by `dataset.write_dataset(as_given=True)`
as they are; other input (JSON, parquet of several schemas) is streamed through the curation reader into the
same shards, with no copy of it staged. Either way no column is added, none dropped, none recast, and the
folder is described by `datasets_cards/corpus.md`, which claims nothing the data does not show (no synthetic
tags, no sources). `textbookgen push` then publishes the folder like any other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

    from textbookgen.curation.corpus_io import Corpus

log = logging.getLogger(__name__)

#: The id column the corpus reader is made to invent, and that is dropped again: the input goes out as it is.
_ROW = "\0publish_row"


def publish(
    input_path: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    text_column: str = "text",
    name: str | None = None,
    license: str | None = None,
    language: str | None = None,
    repo_id: str | None = None,
    stats: list[str | Path] | None = None,
) -> Path:
    """Write `input_path` as split `split` of the dataset folder `out` and (re)render its card; return the card.
    `stats`: curation commands' `<output>.stats.json`, in the order they ran, reported in the card. Bad input
    raises ValueError naming the option, and leaves no new folder behind."""
    import polars as pl

    from textbookgen.card import check_split_columns, language_code, render_corpus_card
    from textbookgen.curation.corpus_io import Corpus
    from textbookgen.dataset import validate_split, write_dataset
    from textbookgen.hub import PROVENANCE_FILES, check_repo_id

    folder, src = Path(out), Path(input_path)
    validate_split(split)
    if repo_id is not None:
        try:
            check_repo_id(repo_id)
        except ValueError as err:  # the card's load_dataset line would name no repo (a URL, a bare name)
            raise ValueError(f"--repo-id: {err}") from None
    if language is not None:
        try:
            language_code(language)
        except ValueError:
            raise ValueError(f"--language {language}: neither an ISO 639 code nor a known language name") from None
    if folder.resolve() == src.resolve() or src.resolve() in folder.resolve().parents:
        raise ValueError(f"--output {out}: is the input {input_path} or inside it; write the dataset elsewhere")
    built = next((n for n in PROVENANCE_FILES if (folder / n).exists()), None)
    if built:
        raise ValueError(f"--output {out}: holds {built} of a textbookgen build, which a push would publish with "
                         "this corpus; publish into a new folder")
    curation = [curation_report(f) for f in stats or []]
    corpus = Corpus(src, text_column, _ROW)
    schema = pl.Schema({k: v for k, v in corpus.schema().items() if k != _ROW})
    check_split_columns(folder, split, pl.DataFrame(schema=schema).to_arrow().schema)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        scan = _parquet_scan(corpus.files, schema, text_column)
        if scan is None:  # JSON, or parquet files of several schemas: typed by the reader, a chunk at a time
            _write_chunks(corpus, schema, folder, split)
        else:
            write_dataset(scan, folder, split, as_given=True)
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a failed first publish leaves no empty folder behind
        raise
    return render_corpus_card(folder, text_column, name=name, license=license, language=language,
                              repo_id=repo_id, curation=curation)


def _write_chunks(corpus: Corpus, schema: pl.Schema, folder: Path, split: str) -> None:
    """The shards `write_dataset(as_given=True)` writes of the corpus typed by `schema`, from the corpus read
    twice a chunk at a time (its rows and bytes first, which plan the shards): a staged copy of it needed its
    size again in free disk. One shard is held at a time, as `write_dataset` holds one of a LazyFrame."""
    import polars as pl

    from textbookgen import dataset
    from textbookgen.curation.corpus_io import typed

    def chunks() -> Iterator[pl.DataFrame]:  # each one arrow chunk, as a staged copy's row groups read back:
        # the shards' pages are cut where they were (CDC pages follow the chunks), so the bytes are the same
        return (typed(chunk.drop(_ROW), schema).rechunk() for chunk in corpus.chunks())

    rows = size = 0
    for chunk in chunks():
        n, b = dataset.check_rows(chunk.lazy(), as_given=True)
        rows, size = rows + n, size + b
    if not rows:  # its error: a split with no rows cannot be loaded
        dataset.write_dataset(pl.DataFrame(schema=schema), folder, split, as_given=True)
    n_shards = dataset.plan_shards(rows, size, dataset.DEFAULT_MAX_SHARD_BYTES)
    row_group_rows = max(1, int(dataset.DEFAULT_ROW_GROUP_BYTES // max(size / rows, 1)))
    (folder / "data").mkdir(exist_ok=True)
    paths: list[Path] = []
    parts: list[pl.DataFrame] = []
    held = 0  # rows in `parts`, the next shard's
    for chunk in chunks():
        while chunk.height:
            if len(paths) == n_shards:
                raise _changed(corpus.path)
            want = (len(paths) + 1) * rows // n_shards - len(paths) * rows // n_shards
            parts.append(chunk.head(want - held))
            held, chunk = held + parts[-1].height, chunk.slice(want - held)
            if held == want:
                paths.append(folder / "data" / f"{split}-{len(paths):05d}-of-{n_shards:05d}.parquet")
                dataset.write_shard_atomically(pl.concat(parts), paths[-1], 9, row_group_rows, True)
                parts, held = [], 0
    if len(paths) < n_shards:
        raise _changed(corpus.path)
    dataset.remove_stale_shards(folder, split, paths)
    log.info("wrote %d rows of split %r in %d shard(s) to %s", rows, split, n_shards, folder / "data")


def _changed(path: Path) -> ValueError:
    return ValueError(f"{path}: its rows changed while it was published (read twice); publish it again")


def _parquet_scan(files: list[Path], schema: pl.Schema, text_column: str) -> pl.LazyFrame | None:
    """The input itself when it is parquet files of one schema with text in every row: `write_dataset` shards
    it as it is. None otherwise; the reader then types it (`_write_chunks`), and names the file of a null text."""
    import polars as pl

    if any(f.suffix != ".parquet" for f in files) or any(pl.read_parquet_schema(f) != schema for f in files):
        return None
    scan = pl.scan_parquet(files)
    return None if scan.select(pl.col(text_column).null_count()).collect().item() else scan


def curation_report(path: str | Path) -> dict:
    """A curation command's stats file ({stage: {in, kept, dropped: {reason: n}}}); ValueError naming it if not."""
    try:
        report = json.loads(Path(path).read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--stats {path}: not JSON ({err})") from None
    if not isinstance(report, dict) or not all(isinstance(v, dict) and "kept" in v for v in report.values()):
        raise ValueError(f"--stats {path}: not a curation report ({{stage: {{in, kept, dropped}}}}, a "
                         "<output>.stats.json)")
    return report
