"""Dataset card: Hub metadata, a body that tells how the data was made, and plots, from one template.

`render_card` reads the shards that `write_dataset` wrote, so the numbers in the card are the data's own
(rows, tokens, topics, lengths, quality scores); the recipe and the build manifest add what the data
cannot tell (model, sampling, seeds, curation removals, cost, time). The YAML header is built as a
`huggingface_hub.DatasetCardData` and checked by parsing the rendered card back, so a card that would
be refused by the Hub fails here first.

Manifest keys read (all optional, missing ones are left out of the card): `recipe_hash`, `created_at`,
`versions` {package: version}, `provider`, `model`, `seed`, `sampling` {temperature, top_p,
max_tokens}, `taxonomy` {topics, leaves, depth, source, grown_to}, `templates` {name: hash},
`web_samples` {source, extracts}, `counts` {requests, ok, truncated, failed, ...}, `tokens` {input,
output}, `cost_usd`, `curation` {stage: {in, kept, dropped: {reason: n}}} (the stats of
`textbookgen.curation.curate`), `decontamination` {benchmark: removed}, `timings` {stage: seconds},
`journal_summary` {...}.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import posixpath
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeAlias

import jinja2
import jinja2.meta
import jinja2.nodes
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from textbookgen.dataset import SCHEMA, check_rows, split_rows, splits_of
from textbookgen.errors import redact as redact_text

if TYPE_CHECKING:
    from textbookgen.recipe import Recipe

log = logging.getLogger(__name__)

ASSETS_DIR = "assets"
#: Beside README.md, not published: the card metadata `render_card` filled in by default ({key: value}).
DEFAULTS_FILE = ".card_defaults.json"


def _cards_dir() -> Path:
    """The project's card templates: the repository's `datasets_cards/`, which a wheel carries inside the
    package (pyproject.toml maps it to `textbookgen/datasets_cards`)."""
    packaged = Path(__file__).with_name("datasets_cards")
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "datasets_cards"


#: The project's card templates; a template elsewhere can still `{% extends "_base.md" %}`.
CARDS_DIR = _cards_dir()
#: The card of a recipe without `card_template`, so every built dataset has one.
BASE_TEMPLATE = CARDS_DIR / "_base.md"
PLOTS = {
    "topic_coverage": "Documents per subject and documents per topic",
    "length_histogram": "Document length",
    "quality_histogram": "Quality score",
}
#: What each column holds, for the card's field table.
FIELD_DOCS = {
    "text": "the generated document",
    "id": "stable id: hash of the generation request",
    "topic_path": "taxonomy path of the seed topic, ' > '-joined",
    "topic_id": "stable id of the seed topic",
    "template": "prompt template name",
    "template_hash": "hash of the prompt template's text",
    "audience": "intended reader the prompt asked for",
    "style": "writing style the prompt asked for",
    "format": "document format the prompt asked for",
    "seed_extract_id": "id of the web extract that seeded the prompt (null when none)",
    "model": "model that wrote the document",
    "finish_reason": "why generation stopped (`stop`, `length`, ...)",
    "input_tokens": "prompt tokens billed",
    "output_tokens": "completion tokens billed",
    "quality_score": "quality classifier score (null when not scored)",
    "provenance": "JSON: request parameters and template variables",
}
SIZE_CATEGORIES = [
    (1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
    (10**11, "10B<n<100B"), (10**12, "100B<n<1T"),
]  # fmt: skip
SECRET_KEY_RE = re.compile(r"(?i)(api[_-]?key|secret|password|passwd|authorization|(^|[_-])token$|credential)")
SECRET_VALUE_RE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_\-]{16,}|sk-ant-[A-Za-z0-9_\-]{16,})")


#: Language names a recipe may use -> the ISO 639-1 codes the Hub's `language:` metadata expects.
LANGUAGE_CODES = {
    "english": "en", "french": "fr", "german": "de", "spanish": "es", "italian": "it", "portuguese": "pt",
    "dutch": "nl", "russian": "ru", "chinese": "zh", "japanese": "ja", "korean": "ko", "arabic": "ar",
    "hindi": "hi", "bengali": "bn", "turkish": "tr", "polish": "pl", "swedish": "sv", "ukrainian": "uk",
    "vietnamese": "vi", "indonesian": "id", "greek": "el", "czech": "cs", "hebrew": "he", "persian": "fa",
    "finnish": "fi", "danish": "da", "norwegian": "no", "romanian": "ro", "hungarian": "hu", "thai": "th",
}  # fmt: skip


def language_code(language: str) -> str:
    """ISO 639-1 code for a language name or code ("English" -> "en"; "en", "pt-BR" stay as they are)."""
    key = language.strip().lower()
    if key in LANGUAGE_CODES:
        return LANGUAGE_CODES[key]
    if re.fullmatch(r"[a-z]{2,3}([-_][a-z0-9]{2,8})?", key):
        return language.strip()
    raise ValueError(f"recipe language {language!r} is neither an ISO 639 code nor a known language name")


def size_category(n: int) -> str:
    """The Hub's `size_categories` bucket for `n` rows."""
    for bound, name in SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>1T"


#: A URL in a published string: its query string's credentials are redacted (`errors.redact`), the prose
#: around it is not (that redaction also takes "bearer X" and starred text, which a system prompt may hold).
URL_RE = re.compile(r"\b[a-z][a-z0-9+.\-]*://\S+", re.IGNORECASE)


def redact(obj: Any) -> Any:
    """Copy of `obj` with secret-looking keys and token-looking strings replaced, for files we publish; a URL
    keeps its address but not the credentials of its query string (a presigned URL's signature). Other text is
    published as written: the recipe.yaml copy must rebuild the same prompts."""
    if isinstance(obj, Mapping):
        return {
            k: "<redacted>" if SECRET_KEY_RE.search(str(k)) and isinstance(v, str) and v else redact(v)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return URL_RE.sub(lambda m: redact_text(m[0]), SECRET_VALUE_RE.sub("<redacted>", obj))
    return obj


def hf_dtype(pa_type: pa.DataType) -> str:
    """The `datasets` dtype name of a scalar Arrow type; raise ValueError for one it has none for.

    Large and view strings and binaries are declared as the plain ones: `datasets` casts them on load.
    """
    t = pa.types
    if t.is_string(pa_type) or t.is_large_string(pa_type) or t.is_string_view(pa_type):
        return "string"
    if t.is_binary(pa_type) or t.is_large_binary(pa_type) or t.is_binary_view(pa_type):
        return "binary"
    if t.is_null(pa_type) or t.is_boolean(pa_type) or t.is_integer(pa_type):
        return str(pa_type)  # null, bool, int8 ... uint64: Arrow's names are datasets' names
    if t.is_floating(pa_type):
        return f"float{pa_type.bit_width}"
    if t.is_decimal(pa_type) and pa_type.bit_width in (128, 256):
        return f"decimal{pa_type.bit_width}({pa_type.precision}, {pa_type.scale})"
    if t.is_date(pa_type):
        return f"date{pa_type.bit_width}"
    if t.is_time(pa_type):
        return f"time{pa_type.bit_width}[{pa_type.unit}]"
    if t.is_timestamp(pa_type):
        return f"timestamp[{pa_type.unit}, tz={pa_type.tz}]" if pa_type.tz else f"timestamp[{pa_type.unit}]"
    if t.is_duration(pa_type):
        return f"duration[{pa_type.unit}]"
    raise ValueError(f"Arrow type {pa_type} has no `datasets` feature; cast the column to a simpler type")


def hf_feature(pa_type: pa.DataType) -> dict:
    """The card's YAML of one column type, in the form `datasets` reads: `dtype:`, `list:` or `struct:`.

    Lists of any kind are declared `list` (`datasets` casts large lists on load); a dictionary-encoded
    (categorical) column is its values' type, as `datasets` reads it.
    """
    if pa.types.is_struct(pa_type):
        return {"struct": [{"name": field.name, **hf_feature(field.type)} for field in pa_type]}
    if pa.types.is_dictionary(pa_type):
        return hf_feature(pa_type.value_type)
    if _is_list(pa_type):
        item = hf_feature(pa_type.value_type)
        if list(item) in (["dtype"], ["struct"]):  # `datasets`' short forms: `list: int32`, `list: [fields]`
            item = next(iter(item.values()))
        feature: dict[str, Any] = {"list": item}
        if pa.types.is_fixed_size_list(pa_type):
            feature["length"] = pa_type.list_size
        return feature
    return {"dtype": hf_dtype(pa_type)}


def type_label(pa_type: pa.DataType) -> str:
    """A column type for the card's field table: `string`, `list<int32>`, `struct<a: int64>`."""
    if pa.types.is_struct(pa_type):
        return f"struct<{', '.join(f'{field.name}: {type_label(field.type)}' for field in pa_type)}>"
    if pa.types.is_dictionary(pa_type):
        return type_label(pa_type.value_type)
    if _is_list(pa_type):
        return f"list<{type_label(pa_type.value_type)}>"
    return hf_dtype(pa_type)


def _is_list(pa_type: pa.DataType) -> bool:
    return pa.types.is_list(pa_type) or pa.types.is_large_list(pa_type) or pa.types.is_fixed_size_list(pa_type)


def features(schema: pa.Schema) -> list[dict]:
    """The card's `dataset_info.features` for the shards' Arrow schema; a ValueError names the column.

    Declared from the schema the shards have, so `load_dataset` reads every column as written.
    """
    out = []
    for field in schema:
        try:
            out.append({"name": field.name, **hf_feature(field.type)})
        except ValueError as err:
            raise ValueError(f"column {field.name!r}: {err}") from None
    return out


#: `datasets`' ArrowWriter pools single-row tables up to this many rows (`config.DEFAULT_MAX_BATCH_SIZE`), or
#: this many where a feature holds binary (`config.ARROW_RECORD_BATCH_SIZE_FOR_BINARY_DATASETS`)
_POOLED_ROWS, _POOLED_BINARY_ROWS = 1000, 100


def _holds_binary(pa_type: pa.DataType) -> bool:
    """Whether a card type (`card_type`) is or holds binary, at any depth."""
    t = pa.types
    if t.is_struct(pa_type):
        return any(_holds_binary(field.type) for field in pa_type)
    if t.is_fixed_size_list(pa_type) or _is_list(pa_type):
        return _holds_binary(pa_type.value_type)
    return hf_dtype(pa_type) == "binary"


def card_type(pa_type: pa.DataType) -> pa.DataType:
    """The Arrow type `datasets` builds a column as from its card feature (`hf_feature`): plain strings,
    binaries and lists, dictionaries decoded; other types as they are."""
    t = pa.types
    if t.is_struct(pa_type):
        return pa.struct([pa.field(field.name, card_type(field.type)) for field in pa_type])
    if t.is_dictionary(pa_type):
        return card_type(pa_type.value_type)
    if t.is_fixed_size_list(pa_type):
        return pa.list_(card_type(pa_type.value_type), pa_type.list_size)
    if _is_list(pa_type):
        return pa.list_(card_type(pa_type.value_type))
    return {"string": pa.string(), "binary": pa.binary()}.get(hf_dtype(pa_type), pa_type)


def _list_offsets(array: pa.Array) -> pa.Array:
    """A list array's offsets, its null rows as null offsets (`datasets.table._combine_list_array_offsets_with_mask`)."""
    if not array.null_count:
        return array.offsets
    nulls = pa.nulls(len(array), array.offsets.type)
    return pa.concat_arrays([pc.replace_with_mask(array.offsets[:-1], array.is_null(), nulls), array.offsets[-1:]])


def _cast_like_datasets(array: pa.Array, to: pa.DataType) -> pa.Array:
    """`array` cast to `to` by the steps `datasets.table.cast_array_to_feature` takes for a card's features:
    it rebuilds structs and lists itself, so their buffers (and `nbytes`) differ from `Array.cast`'s."""
    t = pa.types
    if t.is_struct(array.type):
        children = dict(zip([field.name for field in array.type], array.flatten(), strict=True))
        cast = [_cast_like_datasets(children[field.name], field.type) for field in to]
        return pa.StructArray.from_arrays(cast, names=[field.name for field in to], mask=array.is_null())
    if t.is_list(array.type) or t.is_large_list(array.type):
        values = _cast_like_datasets(array.values, to.value_type)
        if t.is_list(array.type) and values.type == array.values.type:
            return array
        return pa.ListArray.from_arrays(_list_offsets(array), values)
    if t.is_fixed_size_list(array.type):
        size = array.type.list_size
        values = array.values[array.offset * size : (array.offset + len(array)) * size]
        return pa.FixedSizeListArray.from_arrays(_cast_like_datasets(values, to.value_type), size,
                                                 mask=array.is_null())  # fmt: skip
    return array if array.type == to else array.cast(to)


def _as_loaded(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` as `datasets` loads it under the card's features (`schema`): untouched where its schema is
    already that, else every column cast (`datasets.table.table_cast`)."""
    if table.schema == schema:
        return table
    columns = [
        pa.chunked_array([_cast_like_datasets(chunk, field.type) for chunk in table[field.name].chunks])
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _record_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The shard's record batches as `datasets`' parquet builder reads them: batches of its first row
    group's size, one row group at a time, so only one row group is in memory."""
    with open(path, "rb") as f:
        fragment = pds.ParquetFileFormat().make_fragment(f)
        if fragment.row_groups:
            size = fragment.row_groups[0].num_rows
            if size == 0:  # datasets' batches are its size: load_dataset fails on it alike
                raise ValueError(f"{path}: its first row group holds no rows, which datasets.load_dataset cannot "
                                 "read; write the shard again (or remove it, if it holds none)")
            yield from fragment.to_batches(batch_size=size, batch_readahead=0, fragment_readahead=0)


def _written_bytes(tables: list[pa.Table]) -> int:
    """`Table.nbytes` of tables as `datasets`' ArrowWriter measures them: concatenated into one chunk."""
    return pa.concat_tables(tables).combine_chunks().nbytes if tables else 0


def split_num_bytes(paths: Iterable[Path], schema: pa.Schema) -> int:
    """A split's `num_bytes` as `datasets.load_dataset` records it for a folder or repo with our card: the
    sum of `Table.nbytes` of each table its ArrowWriter writes, once cast to the card's features (so
    4-byte string offsets, a validity bitmap where a batch has nulls). Single-row batches are pooled as
    that writer pools them (`_POOLED_ROWS`, `_POOLED_BINARY_ROWS`, or until the next larger batch; a new cache shard only starts
    with the pool empty, so it changes nothing). `schema`: the shards' (`shared_schema`)."""
    loaded = pa.schema([pa.field(field.name, card_type(field.type)) for field in schema])
    pooled = _POOLED_BINARY_ROWS if any(_holds_binary(field.type) for field in loaded) else _POOLED_ROWS
    total = 0
    pool: list[pa.Table] = []
    for path in paths:
        for batch in _record_batches(path):
            table = _as_loaded(pa.Table.from_batches([batch]), loaded)
            if table.num_rows == 1:
                pool.append(table)
                if len(pool) >= pooled:
                    total, pool = total + _written_bytes(pool), []
            else:
                total, pool = total + _written_bytes(pool) + _written_bytes([table]), []
    return total + _written_bytes(pool)


def dataset_info(splits: dict[str, list[Path]], schema: pa.Schema, as_given: bool = False) -> dict:
    """The card's `dataset_info` block: features, split sizes, download and dataset sizes.

    Reads parquet footers and one pass per split over its row groups (`split_num_bytes`), never a whole
    shard into memory; `num_bytes` and `dataset_size` equal what `datasets` records for the same shards.
    Documents (not `as_given`, a user's corpus) are checked as `write_dataset` checks them (`check_rows`:
    id and text, no nulls, no duplicate ids), for a split added by hand beside the ones a build wrote.
    """
    declared = features(schema)  # first: it names a column of a type `datasets` lacks
    for name, paths in splits.items():
        if not as_given:
            try:
                check_rows(pl.scan_parquet(paths))
            except ValueError as e:
                raise ValueError(f"split {name!r} ({paths[0].parent}): {e}") from None
    rows = split_rows(splits)
    split_info = [
        {"name": name, "num_bytes": split_num_bytes(paths, schema), "num_examples": rows[name]}
        for name, paths in splits.items()
    ]
    return {
        "features": declared,
        "splits": split_info,
        "download_size": sum(p.stat().st_size for paths in splits.values() for p in paths),
        "dataset_size": sum(s["num_bytes"] for s in split_info),
    }


def shared_schema(out_dir: Path, splits: dict[str, list[Path]]) -> pa.Schema:
    """The one Arrow schema of every shard (footers only), which the card declares for every split.

    Shards that differ (a split written with `keep_extra`, another without) would load with columns
    silently null-filled, or not at all; a ValueError names the shard and the columns.
    """
    shards = [p for paths in splits.values() for p in paths]
    first = pq.read_schema(shards[0])
    for path in shards[1:]:
        schema = pq.read_schema(path)
        if not schema.equals(first, check_metadata=False):
            theirs = {f"{f.name}: {type_label(f.type)}" for f in schema}
            ours = {f"{f.name}: {type_label(f.type)}" for f in first}
            raise ValueError(
                f"{path.relative_to(out_dir)} has columns {sorted(theirs - ours)} and lacks {sorted(ours - theirs)} "
                f"of {shards[0].relative_to(out_dir)}; write every split with the same columns (keep_extra)"
            )
    return first


def document_table(splits: dict[str, list[Path]]) -> pl.LazyFrame:
    """Every column the card needs, with the text reduced to its word and character counts: a lazy scan of the
    shards, which `document_figures` reduces to small results (a collected table of every row's strings took
    several GB at millions of documents)."""
    light = [c for c in SCHEMA if c not in ("text", "provenance")]
    return pl.scan_parquet([p for paths in splits.values() for p in paths]).select(
        *light,
        pl.col("text").str.count_matches(r"\S+").alias("words"),
        pl.col("text").str.len_chars().alias("chars"),
    )


@dataclass(frozen=True)
class DocumentFigures:
    """What the card's stats and plots read of the documents: a few numeric columns (8 bytes a row or less each)
    and small aggregates, never a row's strings. `tables` holds `data_stats`' aggregates (empty where only
    the plots were asked for): `totals` (one row), `templates`, `audience`, `style`, `format`, `models`."""

    words: pl.Series  # words of every document, in order
    chars: int | None  # characters of all documents; None where the frame has no `chars`
    tokens: pl.Series  # output tokens of the documents that have them
    scores: pl.Series  # quality scores of the scored documents
    per_topic: pl.DataFrame  # topic_path, len: documents of each topic (a null topic is none)
    tables: dict[str, pl.DataFrame]


#: What `data_stats` and `plot_all` take: a documents frame (`document_table`'s columns), or its figures.
Documents: TypeAlias = "DocumentFigures | pl.DataFrame | pl.LazyFrame"

#: `collect_all` without common-subplan elimination: sharing the scan would cache every column the queries read,
#: strings included, in memory: the table this avoids. Each query reads only its columns of the shards.
_SEPARATE_SCANS = pl.QueryOptFlags(comm_subplan_elim=False)


def document_figures(docs: Documents, stats: bool = True) -> DocumentFigures:
    """`docs` (`document_table`'s frame, lazy or not; or figures already collected, returned as they are)
    reduced to what the card's plots need and, with `stats`, `data_stats` too: one `collect_all` of
    streaming queries, each collecting a small result or one numeric column."""
    if isinstance(docs, DocumentFigures):
        return docs
    lf = docs.lazy()
    lengths = ["words", "chars"] if stats or "chars" in lf.collect_schema() else ["words"]  # one pass over the text
    queries = {
        "lengths": lf.select(lengths),
        "tokens": lf.select(pl.col("output_tokens").drop_nulls()),
        "scores": lf.select(pl.col("quality_score").drop_nulls()),
        "per_topic": lf.filter(pl.col("topic_path").is_not_null()).group_by("topic_path").len(),
        **(_stats_queries(lf) if stats else {}),
    }
    frames = dict(zip(queries, pl.collect_all(list(queries.values()), engine="streaming", optimizations=_SEPARATE_SCANS),
                      strict=True))  # fmt: skip
    lengths = frames.pop("lengths")
    return DocumentFigures(
        words=lengths["words"],
        chars=_total(lengths["chars"]) if "chars" in lengths.columns else None,
        tokens=frames.pop("tokens")["output_tokens"],
        scores=frames.pop("scores")["quality_score"],
        per_topic=frames.pop("per_topic"),
        tables=frames,
    )


def _stats_queries(lf: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
    """`data_stats`' aggregates of the documents, each a small result: totals, and counts per template, per
    audience, style and format (nulls a group of their own), and the models."""
    extract = pl.col("seed_extract_id")
    return {
        "totals": lf.select(
            pl.len().alias("rows"),
            pl.col("input_tokens").cast(pl.Int64).sum(),
            pl.col("output_tokens").cast(pl.Int64).sum(),
            (pl.col("finish_reason") == "length").sum().alias("truncated"),
            extract.is_not_null().sum().alias("seeded"),
            extract.drop_nulls().n_unique().alias("distinct_extracts"),
        ),
        "templates": lf.group_by("template", "template_hash").len(),
        **{col: lf.group_by(col).len() for col in ("audience", "style", "format")},
        "models": lf.select(pl.col("model").unique()),
    }


def _total(counts: pl.Series) -> int:
    """The sum of a count column as a Python int: a UInt32 sum (word and character counts) wraps past 2**32,
    which a corpus of a few million documents passes."""
    return int(counts.cast(pl.Int64).sum() or 0)


def recipe_fields(recipe: Recipe | Mapping) -> tuple[dict, set[str]]:
    """The recipe as data, with its local paths made portable (`portable_recipe`), and the keys its author
    chose: a Recipe's fields set in its file (not its defaults), or every key of a dict."""
    if isinstance(recipe, Mapping):
        return dict(recipe), set(recipe)
    return portable_recipe(recipe), set(recipe.model_fields_set)


def portable_path(path: str | None, base: Path) -> str | None:
    """A local path as a published file gives it: as written where relative (to the recipe's folder); an
    absolute one relative to `base` (the recipe's folder) where inside it, else its file name only, so the
    machine's layout (a home folder, a user name) stays on the machine and the recipe reruns with its files
    placed beside it. None stays None; built-in names and remote sources (`builtin:x`, `hf:org/name`, URLs) are
    never absolute paths, so they stay as written too. `portable_paths` names several at once, apart."""
    if path is None:
        return path
    outside = _outside(path, base)
    if outside is not None:
        return outside.name
    p = Path(path).expanduser()
    return p.resolve().relative_to(base.resolve()).as_posix() if p.is_absolute() else path


def _outside(path: str, base: Path) -> Path | None:
    """The resolved file of an absolute `path` outside `base`; None for any other path."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        return None
    resolved = p.resolve()
    return None if resolved.is_relative_to(base.resolve()) else resolved


def portable_paths(paths: Iterable[str | None], base: Path) -> dict[str, str]:
    """{path: as published} of the local paths a build publishes together (`portable_path` of each), except
    that files outside `base` that would publish under one name (two `lesson.j2` of different folders, or one
    beside a `lesson.j2` of the recipe's folder) keep as many of their last folders as tell them apart
    (`a/lesson.j2`, `b/lesson.j2`): a published recipe must name each of its files once. The names depend on
    the set of paths, not their order, so every build of the recipe publishes the same ones."""
    written = [p for p in dict.fromkeys(paths) if p is not None]
    files = {p: _outside(p, base) for p in written}
    named = {p: str(portable_path(p, base)) for p, f in files.items() if f is None}
    by_name: dict[str, set[Path]] = {}
    for f in files.values():
        if f is not None:
            by_name.setdefault(f.name, set()).add(f)
    taken = {posixpath.normpath(Path(name).as_posix()) for name in named.values()}  # `./a.j2` names `a.j2`
    for group in by_name.values():
        depth = _depth_apart(group, taken)
        named.update({p: _tail(f, depth) for p, f in files.items() if f in group})
    return named


def _depth_apart(files: set[Path], taken: set[str]) -> int:
    """The fewest last parts of the paths `files` that name each apart and none as a name in `taken` (normalised
    paths: the names of the recipe's folder; all of them where no fewer do)."""
    most = max(len(f.parts) - 1 for f in files)
    for depth in range(1, most):
        tails = {_tail(f, depth) for f in files}
        if len(tails) == len(files) and not tails & taken:
            return depth
    return most


def _tail(path: Path, depth: int) -> str:
    """The last `depth` parts of an absolute path, as a relative POSIX path."""
    return PurePosixPath(*path.parts[1:][-depth:]).as_posix()


def published_paths(recipe: Recipe) -> dict[str, str]:
    """{local path as the recipe gives it: as its build publishes it} (`portable_paths`) of every file and
    folder of the recipe that `portable_recipe` rewrites."""
    return portable_paths([container[key] for container, key in _path_fields(recipe.public_dict())],
                          recipe.base_dir)


def _path_fields(data: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(mapping, key) of every local path of a recipe's data: the taxonomy, web samples and their language model,
    template files, card template, output folder, benchmarks and classifier model."""
    fields = [(data["taxonomy"], "source"), *((entry, "template") for entry in data["mix"]), (data, "card_template"),
              (data, "output")]
    web = data.get("web_samples")
    if web:
        fields.append((web, "source"))
        if web.get("language_filter"):
            fields.append((web["language_filter"], "model"))
    curation = data.get("curation") or {}
    fields += [(bench, "path") for bench in (curation.get("decontamination") or {}).get("benchmarks") or []]
    if curation.get("classifier"):
        fields.append((curation["classifier"], "model_path"))
    return fields


def portable_recipe(recipe: Recipe) -> dict[str, Any]:
    """`recipe.public_dict()` with every local path made portable, each file under a name of its own
    (`published_paths`)."""
    data = recipe.public_dict()
    fields = _path_fields(data)
    names = portable_paths([container[key] for container, key in fields], recipe.base_dir)
    for container, key in fields:
        if container[key] is not None:
            container[key] = names[container[key]]
    return data


def portable_manifest(manifest: Mapping, recipe: Recipe) -> dict[str, Any]:
    """A copy of a build's manifest with its local paths as in `portable_recipe`: the taxonomy and web-sample
    sources, and the output folder where a note names it (a budget reached: "every run in FOLDER")."""
    out, base, names = json.loads(json.dumps(manifest, default=str)), recipe.base_dir, published_paths(recipe)
    for part in ("taxonomy", "web_samples"):
        if isinstance(out.get(part), dict) and out[part].get("source") is not None:
            source = out[part]["source"]
            out[part]["source"] = names.get(source) or portable_path(source, base)  # as recipe.yaml names it
    folder = str(recipe.output_dir())
    here = portable_path(folder, base) or folder
    if out.get("notes"):
        out["notes"] = [note.replace(folder, here) for note in out["notes"]]
    if isinstance(out.get("incomplete"), dict) and out["incomplete"].get("why"):
        out["incomplete"]["why"] = out["incomplete"]["why"].replace(folder, here)
    return out


def card_metadata(recipe: Mapping, chosen: Collection[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The card's descriptive metadata, and the part of it that is textbookgen's defaults.

    A value the user chose (a recipe key in `chosen`, or the recipe's `card:` block) is theirs; the
    rest (a Recipe's default license and language, the recipe name as `pretty_name`, text-generation,
    ...) are defaults, which a push leaves to the Hub's card where it has the key (`hub.merge_card`).
    """
    card = recipe.get("card") or {}
    language = recipe.get("language") or card.get("language") or "en"
    metadata = {
        "license": recipe.get("license") or "other",
        "language": [language_code(x) for x in ([language] if isinstance(language, str) else language)],
        "annotations_creators": ["machine-generated"],
        "language_creators": ["machine-generated"],
        "multilinguality": ["monolingual"],
        "source_datasets": card.get("source_datasets") or ["original"],
        "task_categories": card.get("task_categories") or ["text-generation"],
        "task_ids": card.get("task_ids") or ["language-modeling"],
        "pretty_name": card.get("pretty_name") or recipe.get("name"),
    }
    given = {k for k in ("license", "language") if k in chosen and recipe.get(k)}
    given |= {k for k in metadata if card.get(k)}
    return metadata, {k: v for k, v in metadata.items() if k not in given}


def card_data(
    metadata: Mapping[str, Any], recipe: Mapping, splits: dict[str, list[Path]], info: dict, n_rows: int
) -> DatasetCardData:
    """Hub metadata: `metadata` plus size, tags and `configs` so `load_dataset` finds the splits."""
    card = recipe.get("card") or {}
    tags = ["synthetic", "textbookgen", *(recipe.get("tags") or []), *(card.get("tags") or [])]
    return DatasetCardData(
        **metadata,
        size_categories=[size_category(n_rows)],
        tags=list(dict.fromkeys(tags)),
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"data/{name}-*"} for name in splits],
            }
        ],
        dataset_info=info,
    )


def card_defaults(out_dir: str | Path) -> dict[str, Any]:
    """The card metadata `render_card` filled in by default; {} where unknown (a pulled folder, a
    hand-written card), so every key of such a card counts as chosen."""
    path = Path(out_dir) / DEFAULTS_FILE
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def data_stats(docs: Documents) -> dict:
    """Figures the card reports, computed from the documents themselves (`document_figures` of `docs`)."""
    figures = document_figures(docs)
    tables = figures.tables
    if "totals" not in tables:
        raise ValueError("data_stats: these document figures were collected for the plots only; "
                         "collect them with document_figures(docs, stats=True)")
    totals = tables["totals"].row(0, named=True)
    rows = totals["rows"]
    topics = figures.per_topic

    def mix(col: str) -> list[dict]:
        counts = tables[col]
        if counts[col].is_null().all():
            return []
        counts = counts.group_by(pl.col(col).fill_null("(none)")).agg(pl.col("len").sum())  # as a "(none)" value
        counts = counts.sort(["len", col], descending=[True, False])
        return [{"name": r[col], "n": r["len"], "share": r["len"] / rows} for r in counts.iter_rows(named=True)]

    templates = tables["templates"]
    templates = (
        templates.sort(["len", "template", "template_hash"], descending=[True, False, False]).iter_rows(named=True)
        if not templates["template"].is_null().all()
        else []
    )
    return {
        "rows": rows,
        "chars": figures.chars,
        "words": _total(figures.words),
        "input_tokens": int(totals["input_tokens"] or 0),
        "output_tokens": int(totals["output_tokens"] or 0),
        "median_words": float(figures.words.median() or 0),
        "median_output_tokens": float(figures.tokens.median() or 0),
        "topics": topics.height,
        "subjects": _subject_counts(topics).height,
        "docs_per_topic_median": float(topics["len"].median() or 0),
        "seeded_share": totals["seeded"] / rows if rows else 0.0,
        "distinct_extracts": totals["distinct_extracts"],
        "truncated": int(totals["truncated"] or 0),
        "models": sorted(m for m in tables["models"]["model"].to_list() if m),
        "templates": [{"name": r["template"], "hash": r["template_hash"], "n": r["len"]} for r in templates],
        "audiences": mix("audience"),
        "styles": mix("style"),
        "formats": mix("format"),
        "quality": _quality(figures.scores),
    }


def _quality(scores: pl.Series) -> dict[str, Any]:
    """How many documents are scored, and their mean and median score (None where none is)."""
    return {
        "n": scores.len(),
        "mean": math.fsum(scores.to_numpy()) / scores.len() if scores.len() else None,  # exact: no chunk order
        "median": float(scores.median()) if scores.len() else None,
    }


def _subject_counts(per_topic: pl.DataFrame) -> pl.DataFrame:
    """subject, len: documents per subject (a topic path's first part), of documents per topic; largest first,
    ties by name."""
    return (
        per_topic.group_by(pl.col("topic_path").str.split(" > ").list.first().alias("subject"))
        .agg(pl.col("len").cast(pl.Int64).sum()).sort(["len", "subject"], descending=[True, False])
    )  # fmt: skip


_BAR_STYLE = {"color": "#3b6ea5", "edgecolor": "white"}  # the bars of every plot


def plot_all(docs: Documents, assets: Path, quality_cut: Mapping | None = None) -> dict[str, str]:
    """Draw the card's PNGs of `docs` (`document_figures`) into `assets`; return {plot name: path relative to the
    repo root}.

    `quality_cut`: the manifest's `curation.quality_filter` stats, whose threshold is drawn on the score
    histogram: it shows only the documents kept, so without the line the cut would not show at all."""
    import matplotlib

    matplotlib.use("Agg")

    figures = document_figures(docs, stats=False)
    assets.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    if (fig := _topic_coverage_figure(figures.per_topic)) is not None:
        made["topic_coverage"] = _save(fig, assets / "topic_coverage.png")
    if (fig := _length_figure(figures)) is not None:
        made["length_histogram"] = _save(fig, assets / "length_histogram.png")
    if (fig := _quality_figure(figures.scores, quality_cut)) is not None:
        made["quality_histogram"] = _save(fig, assets / "quality_histogram.png")
    return {name: f"{ASSETS_DIR}/{Path(path).name}" for name, path in made.items()}


def _topic_coverage_figure(per_topic: pl.DataFrame) -> Any:
    """Documents per subject (the 25 largest) beside the spread of documents per topic; None without topics."""
    import matplotlib.pyplot as plt

    if not per_topic.height:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    _subjects_panel(left, _subject_counts(per_topic))
    _per_topic_panel(right, per_topic)
    return fig


def _subjects_panel(ax: Any, subjects: pl.DataFrame) -> None:
    """Bars of documents per subject, largest on top: the first 25, names cut at 45 characters."""
    top = subjects.head(25)
    labels = [s if len(s) <= 45 else s[:44] + "…" for s in top["subject"].to_list()]
    ax.barh(labels[::-1], top["len"].to_list()[::-1], **_BAR_STYLE)
    _count_axis(ax.xaxis, 0, int(top["len"].max()))
    ax.set_xlabel("documents")
    shown = f"top {top.height} of {subjects.height:,} subjects" if subjects.height > top.height \
        else counted(subjects.height, "subject")
    ax.set_title(f"Documents per subject ({shown})")


def _per_topic_panel(ax: Any, per_topic: pl.DataFrame) -> None:
    """Histogram of documents per topic: a bin per count over a short span, 60 bins over a wide one."""
    counts = per_topic["len"].to_numpy()
    lo, hi = int(counts.min()), int(counts.max())
    bins = [b - 0.5 for b in range(lo, hi + 2)] if hi - lo <= 60 else 60
    ax.hist(counts, bins=bins, **_BAR_STYLE)
    _count_axis(ax.yaxis)
    _count_axis(ax.xaxis, lo, hi)
    ax.set_xlabel("documents per topic")
    ax.set_ylabel("topics")
    ax.set_title(counted(len(counts), "distinct topic"))


def _length_figure(figures: DocumentFigures) -> Any:
    """Histogram of document lengths in output tokens, or in words where the tokens are unknown (a user's
    corpus); None without documents."""
    import matplotlib.pyplot as plt

    lengths, label = figures.tokens, "output tokens"
    if lengths.len() == 0 or lengths.max() == 0:
        lengths, label = figures.words, "words"
    if not lengths.len():
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    values = lengths.to_numpy()
    ax.hist(values, bins=_bins(values), **_BAR_STYLE)
    _count_axis(ax.yaxis)
    _count_axis(ax.xaxis, int(values.min()), int(values.max()))  # tokens and words are whole numbers
    median = float(lengths.median())
    ax.axvline(median, color="#c0392b", linestyle="--", label=f"median {median:,.0f}")
    ax.set_xlabel(f"{label} per document")
    ax.set_ylabel("documents")
    ax.set_title(f"Document length ({label}), {counted(len(values), 'document')}")
    ax.legend()
    return fig


def _quality_figure(scores: pl.Series, quality_cut: Mapping | None) -> Any:
    """Histogram of quality scores with their median and the curation's cut, if any; None where none is scored."""
    import matplotlib.pyplot as plt

    if not scores.len():
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(scores.to_numpy(), bins=_bins(scores.to_numpy()), **_BAR_STYLE)
    _count_axis(ax.yaxis)
    ax.axvline(float(scores.median()), color="#c0392b", linestyle="--", label=f"median {scores.median():.3g}")
    if quality_cut and quality_cut.get("threshold") is not None:
        dropped = sum((quality_cut.get("dropped") or {}).values())
        ax.axvline(float(quality_cut["threshold"]), color="#2c3e50", linestyle=":",
                   label=f"quality cut {quality_cut['threshold']:.3g} ({counted(dropped, 'document')} below it dropped)")
    ax.set_xlabel("quality score")
    ax.set_ylabel("documents")
    ax.set_title(f"Quality score, {counted(scores.len(), 'scored document')}")
    ax.legend()
    return fig


def _bins(values: np.ndarray, most: int = 60) -> int:
    """numpy's "auto" bin count, at most `most`: 50 fixed bins left 50 documents a comb of 1s and 0s."""
    return max(1, min(most, len(np.histogram_bin_edges(values, bins="auto")) - 1))


def _count_axis(axis: Any, lo: int | None = None, hi: int | None = None) -> None:
    """Whole-number ticks on an axis of counts. Matplotlib relaxes `integer=True` when fewer than two
    whole numbers fall in range (one topic count: ticks 0.6 ... 1.4), so a short span gets its ticks set."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    if lo is not None and hi is not None and hi - lo <= 10:
        axis.set_major_locator(FixedLocator(range(lo, hi + 1)))
    else:
        axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    # No timestamps in the PNG, so an unchanged dataset gives byte-identical plots (and no-op commits).
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return str(path)


def curation_rows(manifest: Mapping) -> tuple[list[dict], list[dict]]:
    """Curation stages as table rows, and per-benchmark rows {benchmark, items, removed}.

    Benchmarks come from a decontamination stage's `benchmark_items` {name: items checked} and its
    dropped reasons (benchmark names), or from an explicit manifest `decontamination` {name: removed}.
    """
    rows = []
    removed: dict[str, int] = {k: int(v) for k, v in (manifest.get("decontamination") or {}).items()}
    items: dict[str, int] = {}
    for stage, st in (manifest.get("curation") or {}).items():
        if not isinstance(st, Mapping):
            continue
        dropped = {k: int(v) for k, v in (st.get("dropped") or {}).items()}
        n_in, kept = st.get("in"), st.get("kept")
        total = sum(dropped.values()) if dropped else (n_in - kept if n_in is not None and kept is not None else 0)
        details = {k: v for k, v in st.items() if k not in ("in", "kept", "dropped", "benchmark_items")}
        rows.append({"stage": stage, "in": n_in, "kept": kept, "dropped": total,
                     "reasons": {k: v for k, v in dropped.items() if v}, "details": details})  # fmt: skip
        if "decontam" in stage.lower():
            items.update({k: int(v) for k, v in (st.get("benchmark_items") or {}).items()})
            if not manifest.get("decontamination"):
                for reason, n in dropped.items():
                    removed[reason] = removed.get(reason, 0) + n
    names = list(dict.fromkeys([*items, *removed]))
    return rows, [{"benchmark": b, "items": items.get(b), "removed": removed.get(b, 0)} for b in names]


def _fmt_int(v: Any) -> str:
    return f"{int(v):,}" if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else "–"


def _fmt_pct(v: Any) -> str:
    """A share as a percentage to 0.1%, never rounded to all or none: 2,499 seeded documents of 2,500 are
    ">99.9%", not "100.0%" (a card that says all were seeded), one of 2,500 is "<0.1%", not "0.0%"."""
    if not isinstance(v, (int, float)) or math.isnan(v):
        return "–"
    text = f"{100 * v:.1f}%"
    if text == "100.0%" and v < 1:
        return ">99.9%"
    return "<0.1%" if text in ("0.0%", "-0.0%") and v > 0 else text


def counted(n: Any, noun: str, plural: str | None = None) -> str:
    """`n` and its noun in the number it takes: "1 document", "1,234 documents" ("1 documents" reads as a slip
    in a card a Hub visitor reads); an unknown count is "– documents"."""
    return f"{_fmt_int(n)} {noun if n == 1 else plural or noun + 's'}"


#: The most characters of a value `_fmt_kv` shows; a longer one keeps its end, where a path or URL names its file.
KV_CHARS = 60


def _fmt_kv(d: Any, sep: str = ": ", join: str = "; ") -> str:
    """`k: v; k: v` of a mapping's scalar, non-null values (nested ones are in manifest.json); a key a template
    filled from a manifest without it (a Jinja Undefined) is left out like a null one."""
    if not isinstance(d, Mapping):
        return str(d)
    def short(v: Any) -> str:
        return "…" + v[1 - KV_CHARS:] if isinstance(v, str) and len(v) > KV_CHARS else str(v)

    return join.join(f"{k}{sep}{short(v)}" for k, v in d.items()
                     if v is not None and not isinstance(v, (Mapping, list, jinja2.Undefined)))


class _Fields(dict):
    """A recipe, or a section of one, dumped from its model: every field is a key (defaults filled in), so a name
    it lacks is a template's typo, not a value that this build happens not to have."""


def _complete_fields(data: Any, model: Any) -> Any:
    """`data` (the dump of `model`) with each dict that holds a pydantic model's fields as a `_Fields`."""
    from pydantic import BaseModel

    if isinstance(model, BaseModel) and isinstance(data, dict):
        return _Fields({k: _complete_fields(v, getattr(model, k, None)) for k, v in data.items()})
    if isinstance(model, (list, tuple)) and isinstance(data, list) and len(model) == len(data):
        return [_complete_fields(v, m) for v, m in zip(data, model, strict=True)]
    return data


class _CardUndefined(jinja2.ChainableUndefined):
    """Lenient where a card's data may lack a value (a key a manifest has for some builds only, a lookup into a
    null section: empty text, as ChainableUndefined gives), strict where only a typo gives one: a name the card's
    context does not have, or a field the recipe does not have (`_Fields`). Those were rendered as empty text,
    leaving a section of the card silently blank; `is defined` and `default` still test them without error."""

    __slots__ = ()
    assigned: frozenset[str] = frozenset()  # the template's own names (`_assigned`): unset in some branch, not typos

    def _strict(self) -> bool:
        top_level = self._undefined_obj is jinja2.utils.missing and self._undefined_hint is None
        unknown = self._undefined_name is not None and self._undefined_name not in self.assigned
        return (top_level and unknown) or isinstance(self._undefined_obj, _Fields)

    @property
    def _undefined_message(self) -> str:
        if not isinstance(self._undefined_obj, _Fields):
            return super()._undefined_message
        near = difflib.get_close_matches(str(self._undefined_name), list(self._undefined_obj), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"the recipe has no field {self._undefined_name!r} here{hint}"

    def _check(self) -> None:
        if self._strict():
            self._fail_with_undefined_error()

    def __str__(self) -> str:
        self._check()
        return super().__str__()

    def __iter__(self) -> Iterator[Any]:
        self._check()
        return super().__iter__()

    def __bool__(self) -> bool:
        self._check()
        return super().__bool__()

    def __len__(self) -> int:
        self._check()
        return super().__len__()

    def __eq__(self, other: Any) -> bool:
        self._check()
        return super().__eq__(other)

    def __ne__(self, other: Any) -> bool:
        self._check()
        return super().__ne__(other)

    __hash__ = jinja2.ChainableUndefined.__hash__


def _template_line(err: BaseException, template_path: Path) -> str:
    """`file:line` of the template code that raised `err` (Jinja's traceback names the template's own lines)."""
    where = str(template_path)
    tb = err.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.endswith(".py") and Path(name).is_file():
            where = f"{name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _write_card(out_dir: Path, template_path: str | Path, context: dict[str, Any], defaults: dict[str, Any],
                what: str) -> Path:
    """Render the template, check the card the Hub will parse, write README.md and the defaults it filled in.
    A name the template uses that its data cannot have (`_CardUndefined`) raises ValueError naming file and line."""
    try:
        text = re.sub(r"\n{3,}", "\n\n", load_card_template(template_path).render(**context))
    except jinja2.UndefinedError as err:
        raise ValueError(f"card template {_template_line(err, Path(template_path))}: {err.message}") from None
    validate_card_text(text)
    readme = out_dir / "README.md"
    readme.write_text(text, encoding="utf-8")
    (out_dir / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("wrote %s card %s with %d plot(s)", what, readme, len(context["plots"]))
    return readme


def _fresh_plots(docs: Documents, out_dir: Path, quality_cut: Mapping | None = None) -> dict[str, str]:
    """The card's plots of `docs` under out_dir/assets, and no stale one left from an earlier render."""
    plots = plot_all(docs, out_dir / ASSETS_DIR, quality_cut)
    for stale in (out_dir / ASSETS_DIR).glob("*.png"):
        if f"{ASSETS_DIR}/{stale.name}" not in plots.values():
            stale.unlink()
    return plots


def _split_rows(info: Mapping, splits: Mapping[str, list[Path]], built: Collection[str] | None = None
                ) -> list[dict[str, Any]]:
    """The card's table of splits: rows, shards and bytes on disk, and `added` where the split is not one of
    `built` (None: every split is)."""
    return [{"name": s["name"], "rows": s["num_examples"], "shards": len(splits[s["name"]]),
             "bytes": sum(p.stat().st_size for p in splits[s["name"]]),
             "added": built is not None and s["name"] not in built} for s in info["splits"]]


def render_card(
    out_dir: str | Path, template_path: str | Path, recipe: Recipe | Mapping, manifest: dict,
    built: str | Collection[str] | None = None,
) -> Path:
    """Write `out_dir/README.md` (+ `assets/*.png`, `recipe.yaml`, `manifest.json`, `journal_summary.json`).

    `out_dir` must hold the shards written by `textbookgen.dataset.write_dataset`. Returns the README path.
    Pass the Recipe itself rather than its dict where you have it: the metadata it only has by default
    (license, language) is then recorded as such in `DEFAULTS_FILE`, and a push keeps the Hub's values
    for it. Raises ValueError if the rendered card's metadata does not validate.

    `built`: the splits the recipe's build wrote, or the one split's name (None: every split of the folder; a name
    is not read as the collection of its letters, which took `rain` for part of `train`). Another split, added to
    the folder by hand, is published and loads with them (the metadata lists it), but the card says it was not
    built by the recipe and counts it in none of its figures: documents, tokens, topics, plots, templates.
    """
    out_dir = Path(out_dir)
    template_path = Path(template_path)
    if not template_path.is_file():
        raise FileNotFoundError(f"card template not found: {template_path}")
    built = [built] if isinstance(built, str) else built
    splits = splits_of(out_dir)
    if not splits:
        raise FileNotFoundError(f"no data/{{split}}-NNNNN-of-NNNNN.parquet shards under {out_dir}; write them first")
    own = {name: paths for name, paths in splits.items() if built is None or name in built}
    if not own:
        raise FileNotFoundError(f"no shards of the built split(s) {sorted(built or [])} under {out_dir}/data "
                                f"(it has {sorted(splits)}); write them first")
    schema = shared_schema(out_dir, splits)
    docs = document_figures(document_table(own))  # once, for the stats and the plots
    if not isinstance(recipe, Mapping):
        manifest = portable_manifest(manifest, recipe)
    source = recipe
    recipe, chosen = recipe_fields(recipe)
    recipe = _complete_fields(redact(recipe), source)
    manifest = redact(dict(manifest))

    info = dataset_info(splits, schema)
    metadata, defaults = card_metadata(recipe, chosen)
    data = card_data(metadata, recipe, splits, info, sum(s["num_examples"] for s in info["splits"]))
    plots = _fresh_plots(docs, out_dir, (manifest.get("curation") or {}).get("quality_filter"))
    stages, decontam = curation_rows(manifest)
    files = _write_provenance(out_dir, recipe, manifest)

    context = {
        "card_data": data.to_yaml(),
        "recipe": recipe,
        "manifest": manifest,
        "stats": data_stats(docs),
        "splits": _split_rows(info, splits, built),
        "fields": [{"name": f.name, "dtype": type_label(f.type), "doc": FIELD_DOCS.get(f.name, "")} for f in schema],
        "curation": stages,
        "decontamination": decontam,
        "plots": [{"name": k, "path": v, "title": PLOTS[k]} for k, v in plots.items()],
        "files": files,
        "repo_id": (recipe.get("hub") or {}).get("repo_id") or f"<user>/{recipe.get('name', 'dataset')}",
    }
    return _write_card(out_dir, template_path, context, defaults, "dataset")


def card_template_of(recipe: Recipe) -> Path | None:
    """The recipe's `card_template`, else the base template every project card extends; None where that is
    not there either (a broken install), so the build still finishes, cardless."""
    if recipe.card_template:
        return recipe.resolve(recipe.card_template)
    return BASE_TEMPLATE if BASE_TEMPLATE.is_file() else None


def load_card_template(template_path: str | Path) -> jinja2.Template:
    """Compile a card template (UTF-8, Jinja); a file that is not one raises ValueError naming file and line."""
    template_path = Path(template_path)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(template_path.parent), str(CARDS_DIR)]),
        undefined=_CardUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["int"] = _fmt_int
    env.filters["counted"] = counted
    env.filters["kv"] = _fmt_kv
    env.filters["pct"] = _fmt_pct
    env.filters["filesize"] = lambda n: f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
    env.filters["usd"] = lambda v: f"${v:,.4f}" if isinstance(v, (int, float)) else "–"
    try:
        template = env.get_template(template_path.name)
        assigned = _compile_referenced(env, template_path.name, template_path)
    except jinja2.TemplateNotFound:
        raise FileNotFoundError(f"card template not found: {template_path}") from None
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"card template {err.filename or template_path}:{err.lineno}: {err.message}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"card template {template_path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    env.undefined = type("_CardUndefined", (_CardUndefined,), {"__slots__": (), "assigned": frozenset(assigned)})
    return template


def _compile_referenced(env: jinja2.Environment, name: str, origin: Path, seen: set[str] | None = None) -> set[str]:
    """Compile every template `name` extends, includes or imports, transitively. Jinja looks them up only
    at render time, which for a build is after the paid generation: a missing `_base.md` must fail first.
    Returns the names all of them assign (`_assigned`)."""
    seen = set() if seen is None else seen
    source = env.loader.get_source(env, name)[0]  # type: ignore[union-attr]
    ast = env.parse(source)
    assigned = _assigned(ast)
    for ref in jinja2.meta.find_referenced_templates(ast):
        if ref is None or ref in seen:  # a name computed at render time cannot be checked here
            continue
        seen.add(ref)
        try:
            env.get_template(ref)
        except jinja2.TemplateNotFound:
            searched = ", ".join(env.loader.searchpath)  # type: ignore[union-attr]
            raise FileNotFoundError(f"card template {origin}: uses {ref!r}, which is not in {searched}") from None
        assigned |= _compile_referenced(env, ref, origin, seen)
    return assigned


def _assigned(ast: jinja2.nodes.Template) -> set[str]:
    """The names a template sets (`{% set %}`, a loop's or `with`'s variables), defines (macros) or imports. One
    used where the template left it unset (set inside an `if` only) is the template's logic, not a typo of the
    card's data: it renders empty, as before, while a name neither the data nor the template has is an error."""
    nodes = jinja2.nodes
    names = {n.name for n in ast.find_all(nodes.Name) if n.ctx == "store"}
    names |= {m.name for m in ast.find_all(nodes.Macro)} | {i.target for i in ast.find_all(nodes.Import)}
    return names | {n if isinstance(n, str) else n[1] for f in ast.find_all(nodes.FromImport) for n in f.names}


# Whoever pulls the dataset reads this copy, not the file the build read: say how the two differ.
RECIPE_HEADER = (
    "# The recipe this dataset was built from, every field with the value the build used (defaults filled in).\n"
    "# manifest.json's recipe_hash is of the original recipe file (and any --set/--price), not of this copy.\n"
    "# Local paths (taxonomy.source, web_samples.source, templates, card_template, output, ...) are relative to\n"
    "# the recipe's folder; one that was outside it is given by its file name only: to rebuild, place the files\n"
    "# beside this copy, or point the fields at them.\n"
)


def _write_provenance(out_dir: Path, recipe: Mapping, manifest: Mapping) -> list[str]:
    """Copy the recipe, manifest and journal summary next to the data; return their repo paths."""
    (out_dir / "recipe.yaml").write_text(
        RECIPE_HEADER + yaml.safe_dump(json.loads(json.dumps(recipe, default=str)), sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    files = ["recipe.yaml", "manifest.json"]
    summary = manifest.get("journal_summary")
    if summary:
        (out_dir / "journal_summary.json").write_text(
            json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
        )
        files.append("journal_summary.json")
    return files


def validate_card_text(text: str) -> DatasetCard:
    """Parse a card as the Hub client does and check its `configs`; raise ValueError naming the problem."""
    try:
        card = DatasetCard(text, ignore_metadata_errors=False)
    except Exception as err:  # the client raises several types for bad YAML / bad fields
        raise ValueError(f"dataset card metadata does not validate: {err}") from err
    configs = card.data.to_dict().get("configs") or []
    if not configs:
        raise ValueError("dataset card has no `configs:`; load_dataset would have to guess the splits")
    for config in configs:
        if "config_name" not in config:
            raise ValueError(f"dataset card config without config_name: {config}")
        for entry in config.get("data_files") or []:
            split = entry.get("split") if isinstance(entry, Mapping) else None
            if split is None or not re.match(r"^\w+(\.\w+)*$", split) or not entry.get("path"):
                raise ValueError(f"dataset card config {config['config_name']!r}: bad data_files entry {entry}")
    return card


# ---- the card of a user's own corpus (`textbookgen publish`) ---------------------------------------
#: The card of a corpus published as given: it describes the data, and claims nothing about its origin.
CORPUS_TEMPLATE = CARDS_DIR / "corpus.md"


def corpus_metadata(name: str, license: str | None, language: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A corpus card's descriptive metadata, and the part of it that is defaults (as `card_metadata`).

    Nothing about how the text was made (no `*_creators`, `source_datasets`, `synthetic`): the tool
    does not know it. An unset license is `unknown`, not a guess.
    """
    metadata = {
        "license": license or "unknown",
        "language": [language_code(language or "en")],
        "task_categories": ["text-generation"],
        "task_ids": ["language-modeling"],
        "pretty_name": name,
    }
    given = {k for k, v in (("license", license), ("language", language)) if v}
    return metadata, {k: v for k, v in metadata.items() if k not in given}


def corpus_table(splits: dict[str, list[Path]], text_column: str, schema: pa.Schema) -> pl.LazyFrame:
    """What `plot_all` and `corpus_stats` need of every row, lazily (as `document_table`): the text's word and
    character counts, the corpus's `quality_score` where it has a numeric one (`textbookgen classifier score`),
    and the build columns the plots look for, null."""
    score = schema.field("quality_score").type if "quality_score" in schema.names else None
    numeric = score is not None and (pa.types.is_integer(score) or pa.types.is_floating(score))
    lf = pl.scan_parquet([p for paths in splits.values() for p in paths])
    return lf.select(
        pl.col(text_column).str.count_matches(r"\S+").alias("words"),
        pl.col(text_column).str.len_chars().alias("chars"),
        (pl.col("quality_score").cast(pl.Float64) if numeric else pl.lit(None, pl.Float64)).alias("quality_score"),
        pl.lit(None, pl.String).alias("topic_path"),
        pl.lit(None, pl.Int64).alias("output_tokens"),
    )


def corpus_stats(docs: Documents) -> dict:
    """Lengths and quality scores of a corpus, from `corpus_table` (or its `document_figures`)."""
    figures = document_figures(docs, stats=False)
    words = figures.words
    return {
        "rows": words.len(),
        "words": _total(words),
        "chars": figures.chars or 0,
        "words_median": float(words.median() or 0),
        "words_min": int(words.min() or 0),
        "words_max": int(words.max() or 0),
        "empty": int((words == 0).sum()),
        "quality": _quality(figures.scores),
    }


def corpus_card_data(metadata: Mapping[str, Any], splits: Mapping[str, list[Path]], info: dict,
                     n_rows: int) -> DatasetCardData:
    """A corpus card's Hub metadata: `metadata` plus its size and the `configs` `load_dataset` finds the splits by
    (no tags: `card_data`'s `synthetic` and `textbookgen` would claim an origin)."""
    return DatasetCardData(
        **metadata,
        size_categories=[size_category(n_rows)],
        configs=[{"config_name": "default",
                  "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}],  # fmt: skip
        dataset_info=info,
    )


def _curation_tables(curation: Collection[Mapping]) -> tuple[list[dict], list[dict]]:
    """The card's curation and benchmark rows (`curation_rows`) of each curation command's stats, in order."""
    stages, decontam = [], []
    for stats in curation:
        rows, benchmarks = curation_rows({"curation": stats})
        stages += rows
        decontam += benchmarks
    return stages, decontam


def render_corpus_card(
    out_dir: str | Path,
    text_column: str = "text",
    *,
    name: str | None = None,
    license: str | None = None,
    language: str | None = None,
    repo_id: str | None = None,
    curation: Collection[Mapping] = (),
    template_path: str | Path = CORPUS_TEMPLATE,
) -> Path:
    """Write `out_dir/README.md` (+ `assets/*.png`) for shards written with `write_dataset(as_given=True)`.

    The card states what the data holds (columns, splits, lengths) and nothing it cannot know: no
    generator, no synthetic tags; `curation` (the `<output>.stats.json` of curation commands, in the
    order they ran) is reported only where given. Raises ValueError naming the column if `text_column`
    is absent or not text, or if the metadata does not validate.
    """
    out_dir = Path(out_dir)
    splits = splits_of(out_dir)
    if not splits:
        raise FileNotFoundError(f"no data/{{split}}-NNNNN-of-NNNNN.parquet shards under {out_dir}; write them first")
    schema = shared_schema(out_dir, splits)
    if text_column not in schema.names:
        raise ValueError(f"{out_dir}: no text column {text_column!r} in the shards (columns: {schema.names}); "
                         "pass --text-column")
    info = dataset_info(splits, schema, as_given=True)  # first: it names a column of a type `datasets` lacks
    if hf_feature(schema.field(text_column).type) != {"dtype": "string"}:
        raise ValueError(f"{out_dir}: column {text_column!r} holds {type_label(schema.field(text_column).type)}, "
                         "not text; pass --text-column")
    name = name or out_dir.resolve().name
    docs = document_figures(corpus_table(splits, text_column, schema), stats=False)  # once, for stats and plots
    metadata, defaults = corpus_metadata(name, license, language)
    data = corpus_card_data(metadata, splits, info, docs.words.len())
    plots = _fresh_plots(docs, out_dir)
    stages, decontam = _curation_tables(curation)
    context = {
        "card_data": data.to_yaml(),
        "name": name,
        "text_column": text_column,
        "stats": corpus_stats(docs),
        "splits": _split_rows(info, splits),
        "fields": [{"name": f.name, "dtype": type_label(f.type)} for f in schema],
        "curation": stages,
        "decontamination": decontam,
        "plots": [{"name": k, "path": v, "title": PLOTS[k]} for k, v in plots.items()],
        "repo_id": repo_id or f"<user>/{name}",
    }
    return _write_card(out_dir, template_path, context, defaults, "corpus")


def check_split_columns(out_dir: str | Path, split: str, schema: pa.Schema) -> None:
    """Raise ValueError unless `schema` (of a split about to be written) is that of the folder's other
    splits: the card declares one set of columns for all of them, as `load_dataset` reads them."""
    others = {s: paths for s, paths in splits_of(out_dir).items() if s != split}
    if not others:
        return
    theirs = shared_schema(Path(out_dir), others)
    if not schema.equals(theirs, check_metadata=False):
        def labels(s: pa.Schema) -> str:
            return ", ".join(f"{f.name}: {type_label(f.type)}" for f in s)

        raise ValueError(f"split {split!r} would have columns ({labels(schema)}) unlike split(s) {sorted(others)} "
                         f"of {out_dir} ({labels(theirs)}); every split needs the same columns and types")
