"""Publish your own corpus: a Hub dataset folder with every column as given, and a card that describes it.

Recipe builds get their dataset folder from the build. A corpus curated with the curation commands (web text,
any columns) gets one here: parquet files of one schema are sharded as they are; other input is streamed
through the curation reader into one typed parquet file first. Either way it is sharded by
`dataset.write_dataset(as_given=True)` (no column added, none dropped, none recast) and described by
`datasets_cards/corpus.md`, which claims nothing the data does not show (no synthetic tags, no sources).
`textbookgen push` then publishes the folder like any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

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
    from textbookgen.curation.corpus_io import Corpus, CorpusWriter, new_path
    from textbookgen.dataset import validate_split, write_dataset
    from textbookgen.hub import PROVENANCE_FILES

    folder, src = Path(out), Path(input_path)
    validate_split(split)
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
    staged = None
    try:
        scan = _parquet_scan(corpus.files, schema, text_column)
        if scan is None:  # JSON, or parquet files of several schemas: one typed file, so shards stream from it
            staged = new_path(folder, ".publish-", ".parquet")
            with CorpusWriter(staged, schema) as writer:
                for chunk in corpus.chunks():
                    writer.write(chunk.drop(_ROW))
            scan = pl.scan_parquet(staged)
        write_dataset(scan, folder, split, as_given=True)
    except BaseException:
        if staged is not None:
            staged.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a failed first publish leaves no empty folder behind
        raise
    if staged is not None:
        staged.unlink()
    return render_corpus_card(folder, text_column, name=name, license=license, language=language,
                              repo_id=repo_id, curation=curation)


def _parquet_scan(files: list[Path], schema: pl.Schema, text_column: str) -> pl.LazyFrame | None:
    """The input itself when it is parquet files of one schema with text in every row: the shards then stream
    from it, and publishing needs no staged copy of the corpus (its size again in free disk). None otherwise;
    the reader then stages it, and names the file of a null text."""
    import polars as pl

    if any(f.suffix != ".parquet" for f in files) or any(pl.read_parquet_schema(f) != schema for f in files):
        return None
    scan = pl.scan_parquet(files)
    return None if scan.select(pl.col(text_column).null_count()).collect().item() else scan


def curation_report(path: str | Path) -> dict:
    """A curation command's stats file ({stage: {in, kept, dropped: {reason: n}}}); ValueError naming it if not."""
    try:
        report = json.loads(Path(path).read_text("utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"--stats {path}: not JSON ({err})") from None
    if not isinstance(report, dict) or not all(isinstance(v, dict) and "kept" in v for v in report.values()):
        raise ValueError(f"--stats {path}: not a curation report ({{stage: {{in, kept, dropped}}}}, a "
                         "<output>.stats.json)")
    return report
