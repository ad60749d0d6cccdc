"""What `textbookgen dedup | decontaminate | filter | classifier ...` do, on any parquet/jsonl corpus."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import polars as pl
from pydantic import ValidationError

from textbookgen.curation.base import ROW, StageStats, Step, input_rows
from textbookgen.curation.config import BenchmarkSource, ClassifierConfig, CurationConfig
from textbookgen.curation.corpus_io import (
    STATS_SUFFIX,
    Corpus,
    CorpusWriter,
    RowsKept,
    check_output,
    mark_workdir,
    read_corpus,
    typed,
    write_corpus,
)
from textbookgen.curation.groups import run_out_of_core
from textbookgen.curation.stream import ELSEWHERE, SCORE_ELSEWHERE, numbered, row_schema, rows_out
from textbookgen.jsonl import decode_utf8
from textbookgen.yamlfile import read_yaml

if TYPE_CHECKING:
    from textbookgen.curation.classifier import QualityCut


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> CurationConfig:
    """A CurationConfig from YAML (the file itself or its `curation:` block), with dotted overrides; the
    file's relative paths (benchmarks, classifier model) are read against its folder, as a build reads a
    recipe's."""
    data: dict[str, Any] = {}
    if path is not None:
        label = f"--config {path}"
        if not Path(path).is_file():
            raise ValueError(f"{label}: {'is a folder' if Path(path).is_dir() else 'no such file'}; give a YAML file")
        raw = read_yaml(decode_utf8(Path(path).read_bytes(), label), label, ValueError).data or {}
        data = raw.get("curation", raw) if isinstance(raw, dict) else raw
        if not isinstance(data, dict):
            raise ValueError(f"--config {path}: must hold a mapping of curation settings, not a {type(data).__name__}")
        _check_file_settings(data, label)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    cfg = CurationConfig.model_validate(data)
    return cfg.with_paths_from(Path(path).parent) if path is not None else cfg


def _check_file_settings(data: dict[str, Any], label: str) -> None:
    """The --config file's own settings, checked before the command's options are applied: an error there names
    the file and the dotted key (`--config c.yaml: filters.min_wordz: ...`), not an option that does not exist."""
    try:
        CurationConfig.model_validate(copy.deepcopy(data))
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"{label}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def parse_benchmark(spec: str) -> BenchmarkSource:
    """`name=path` for a named loader (textbookgen.benchmarks), a bare path for a generic file/folder."""
    name, sep, path = spec.partition("=")
    if sep and "/" not in name and not Path(spec).exists():
        return BenchmarkSource(name=name, path=path)
    return BenchmarkSource(path=spec)


def run_steps(input_path: str | Path, output_path: str | Path, steps: list[Step], workdir: str | Path | None,
              text_column: str = "text", id_column: str = "id") -> dict[str, Any]:
    """Read a corpus, run the steps in order, write the kept rows, and `<output>.stats.json`, never holding the
    corpus (`groups.run_out_of_core`): dedup steps (`dedup_steps`) run as `dedup_out_of_core`; steps that each judge a document
    on its own (`filter_steps`, `decontaminate_steps`, `SeedCopy`, `DropTruncated`), and the quality score (with
    the cut right after it, `score_steps`), resume a killed run from the chunks it finished: see
    `stream.stream_out_of_core`, `stream.score_out_of_core`; a cut alone runs as `cut_out_of_core`. A list
    mixing those (`pipeline.build_steps`') runs them a group at a time: `groups.run_groups`. A list holding a step of
    any other kind (one's own `Step` that is no `RowStep`) runs on the corpus read whole."""
    from textbookgen.curation.near_dedup import MinHashDedup

    check_output(output_path, input_path)
    work = Path(workdir) if workdir is not None else Path(str(output_path) + ".work")
    if work.exists() and not work.is_dir():
        raise ValueError(f"--workdir {work}: is a file; give a folder (default: <output>.work)")
    incremental = [s for s in steps if isinstance(s, MinHashDedup) and s.index is not None]
    for option, folder in [("--workdir", work), *(("--index", s.index) for s in incremental)]:
        _check_outside(option, folder, input_path)  # type: ignore[arg-type]
    for step in incremental:
        step.check_index()
    stats = run_out_of_core(input_path, output_path, steps, work, text_column, id_column,
                            ELSEWHERE if workdir is not None else SCORE_ELSEWHERE)
    if stats is None:
        from textbookgen.curation.pipeline import run_pipeline

        df = read_corpus(input_path, text_column, id_column)
        mark_workdir(work)
        df, stats = run_pipeline(df, steps, work)
        write_corpus(df, output_path)
    Path(str(output_path) + STATS_SUFFIX).write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _check_outside(option: str, folder: Path, input_path: str | Path) -> None:
    """Raise ValueError if `folder` (one a step writes parquet reports or an index into) is the input or
    inside it: a later run on that input would read them as corpus files."""
    src = Path(input_path).resolve()
    if folder.resolve() == src or src in folder.resolve().parents:
        raise ValueError(f"{option} {folder}: is inside the input {input_path}, whose files are all read as "
                         "the corpus; put it elsewhere")


def cut_out_of_core(corpus: Corpus, output_path: str | Path | RowsKept, cut: QualityCut, work: Path,
                    carried: str | None = None, with_rows: str | None = None) -> dict[str, Any]:
    """`run_pipeline` and `write_corpus` for a QualityCut of the `quality_score` an earlier step gave: pass 1 keeps
    the scores (8 bytes a document: a top share needs them all), pass 2 writes the kept rows a chunk at a time and
    keeps the report rows of those cut, as `QualityCut.run` writes them. A file without the column gives its rows
    null scores, as the corpus read whole does. `carried`, `with_rows`: see `stream.numbered`, `stream.rows_out`."""
    schema = corpus.schema()
    if "quality_score" not in schema:
        raise ValueError(f"{cut.name}: no file of {corpus.path} has a 'quality_score' column (columns: "
                         f"{list(schema)}); run the quality score first")
    scores = [typed(chunk, schema)["quality_score"] for chunk in corpus.chunks(["quality_score"])]
    st = StageStats(cut.name, n_in=sum(len(s) for s in scores))
    keep = cut.keep(pl.concat(scores).fill_null(0.0).to_numpy(), st)
    st.kept = int(keep.sum())
    st.check()
    mark_workdir(work)
    dropped, start = [], 0
    with CorpusWriter.to(output_path, row_schema(schema, carried, with_rows)) as out:
        for chunk in numbered(corpus.chunks(), schema, carried):
            end = start + chunk.height
            dropped.append(cut.dropped(chunk, keep[start:end]))
            out.write(rows_out(chunk.filter(pl.Series(keep[start:end])), with_rows))
            start = end
    (work / cut.name).mkdir(parents=True, exist_ok=True)
    cut.write_dropped(dropped, work / cut.name)
    return {cut.name: st.as_dict()}


def dedup_out_of_core(corpus: Corpus, output_path: str | Path | RowsKept, steps: list[Step], work: Path,
                      carried: str | None = None, with_rows: str | None = None) -> dict[str, Any]:
    """`run_pipeline` and `write_corpus` for exact and MinHash dedup, holding per-doc ids, quality scores
    and exact keys but never the texts: a first pass over the corpus keeps those (and finds bad input
    before any work), MinHash reads the surviving texts again a shard at a time, and a last pass writes
    the kept rows. The kept rows, stats, clusters and pairs are those of the in-memory steps. `carried`,
    `with_rows`: see `stream.numbered`, `stream.rows_out`."""
    from textbookgen.curation.exact import ExactDedup, first_per_key, write_report

    docs = _doc_table(corpus, any(isinstance(s, ExactDedup) for s in steps), carried)
    mark_workdir(work)
    alive = np.ones(docs.height, dtype=bool)
    stats: dict[str, Any] = {}
    for step in steps:
        st = StageStats(step.name, n_in=int(alive.sum()))
        (work / step.name).mkdir(parents=True, exist_ok=True)
        rows = None if alive.all() else np.flatnonzero(alive)
        live = docs if rows is None else docs[rows]  # no copy of the doc table for the first step
        if isinstance(step, ExactDedup):
            keep = first_per_key(live)
            write_report(live, keep, corpus.id_column, work / step.name)
            st.dropped["exact_duplicate"] = int((~keep).sum())
        else:
            quality = live["quality_score"] if "quality_score" in live.columns else None
            keep = step.dedup(live[corpus.id_column], _live_texts(corpus, alive), quality,  # type: ignore[attr-defined]
                              work / step.name, st, input_rows(live))
        alive[slice(None) if rows is None else rows] = keep
        st.kept = int(alive.sum())
        if st.n_in - st.kept != sum(st.dropped.values()):
            raise RuntimeError(f"{step.name}: dropped counts {dict(st.dropped)} do not explain {st.n_in} -> {st.kept}")
        stats[step.name] = st.as_dict()
    schema = corpus.schema()
    with CorpusWriter.to(output_path, row_schema(schema, carried, with_rows)) as out:
        for chunk in _alive(numbered(corpus.chunks(), schema, carried), alive):
            out.write(rows_out(chunk, with_rows))
    return stats


def _doc_table(corpus: Corpus, exact: bool, carried: str | None = None) -> pl.DataFrame:
    """Per doc, in corpus order: id, its row (ROW: its place, or where `carried` names a column of a mixed run's
    intermediate file, the row in the original input it holds), quality_score (if any file has one) and, for
    exact dedup, the `exact_key_columns` of its text."""
    from textbookgen.curation.exact import exact_key_columns

    parts = []
    for chunk in corpus.chunks(["quality_score", carried] if carried else ["quality_score"]):
        part = chunk.drop(corpus.text_column)
        if exact:
            part = part.with_columns(exact_key_columns(chunk[corpus.text_column]))
        parts.append(part)
    table = pl.concat(parts, how="diagonal_relaxed", rechunk=True)
    return table.rename({carried: ROW}) if carried else table.with_row_index(ROW)


def _alive(chunks: Iterator[pl.DataFrame], alive: np.ndarray) -> Iterator[pl.DataFrame]:
    """The rows of the corpus's chunks still in (`alive`, in corpus order), a chunk at a time."""
    start = 0
    for chunk in chunks:
        yield chunk.filter(pl.Series(alive[start : start + chunk.height]))
        start += chunk.height


def _live_texts(corpus: Corpus, alive: np.ndarray) -> Iterator[pl.Series]:
    """The texts of the docs still in, in corpus order, a chunk at a time."""
    return (chunk[corpus.text_column] for chunk in _alive(corpus.chunks(()), alive))


def dedup_steps(cfg: CurationConfig, index: str | Path | None = None) -> list[Step]:
    """Exact then MinHash dedup, each where its config enables it: a fresh dedup of the input, or with `index` an incremental one against
    the documents earlier runs with that index kept (see near_dedup). With an index MinHash goes first:
    exact dedup knows no index, so it could keep a copy that comes first and drop the indexed document
    itself, where MinHash keeps the indexed one and drops the copy (a verified Jaccard of 1)."""
    from textbookgen.curation.exact import ExactDedup
    from textbookgen.curation.near_dedup import MinHashDedup

    if not (cfg.exact.enabled or cfg.minhash.enabled):
        raise ValueError("dedup: exact.enabled and minhash.enabled are both off, so nothing would be removed: "
                         "turn one on (--exact, --minhash)")
    if index is not None and not cfg.minhash.enabled:
        raise ValueError("dedup: --index needs MinHash (minhash.enabled is off): the index keeps its signatures")
    exact: list[Step] = [ExactDedup(cfg.text_column, cfg.id_column)] if cfg.exact.enabled else []
    near: list[Step] = [MinHashDedup(cfg.minhash, cfg.text_column, cfg.id_column, index=index)] if (
        cfg.minhash.enabled) else []
    return [*near, *exact] if index is not None else [*exact, *near]


def decontaminate_steps(cfg: CurationConfig) -> list[Step]:
    from textbookgen.curation.decontaminate import Decontaminate

    if not cfg.decontamination.benchmarks:
        raise ValueError("decontaminate: give at least one --benchmark (name=path, or a jsonl/parquet file/folder)")
    return [Decontaminate(cfg.decontamination, cfg.text_column, cfg.id_column, workers=cfg.minhash.workers)]


def filter_steps(cfg: CurationConfig) -> list[Step]:
    from textbookgen.curation.filters import HeuristicFilter
    from textbookgen.curation.truncated import DropTruncated

    truncated: list[Step] = [DropTruncated()] if cfg.drop_truncated else []
    return [*truncated, HeuristicFilter(cfg.filters, cfg.text_column, cfg.id_column, workers=cfg.minhash.workers)]


# label words of --labelled files (case-insensitive, a fastText `__label__` prefix allowed); anything else that
# is not a number is an error, so a typo or an unexpected class name is not silently read as a negative
POSITIVE_WORDS = ("hq", "positive", "pos", "true", "yes")
NEGATIVE_WORDS = ("cc", "lq", "negative", "neg", "false", "no")


class Labelled(NamedTuple):
    """Labelled examples and the source of each: "corpora" for --positive/--negative, else the file."""

    texts: list[str]
    labels: list[bool]
    sources: list[str]


def load_labelled(positive: list[str], negative: list[str], labelled: list[str], text_column: str = "text",
                  label_column: str = "label", min_positive: float = 1.0, purpose: str = "training") -> Labelled:
    """Texts and binary labels: whole corpora as positive/negative, and/or files with a label column
    (numbers, also as strings: >= `min_positive` is positive, e.g. 3 for a 0-5 judge score; booleans;
    or the words in POSITIVE_WORDS / NEGATIVE_WORDS). Missing or unreadable labels raise a ValueError."""
    out = Labelled([], [], [])
    for paths, y in ((positive, True), (negative, False)):
        for p in paths:
            t = read_corpus(p, text_column)[text_column].to_list()
            out.texts.extend(t)
            out.labels.extend([y] * len(t))
            out.sources.extend(["corpora"] * len(t))
    for p in labelled:
        df = read_corpus(p, text_column)
        if label_column not in df.columns:
            raise ValueError(f"{p}: no {label_column!r} column (columns: {df.columns})")
        out.labels.extend(read_labels(df[label_column], str(p), min_positive))
        out.texts.extend(df[text_column].to_list())
        out.sources.extend([str(p)] * df.height)
    if not out.texts:
        raise ValueError(f"classifier: no {purpose} data (give --positive/--negative or --labelled)")
    return out


def check_label_column(label_column: str, text_column: str) -> None:
    """Raise a ValueError naming --label-column when it is the text column (polars' own error names neither)."""
    if label_column == text_column:
        raise ValueError(f"--label-column {label_column}: is the text column too; name the column of labels")


def read_labels(col: pl.Series, source: str, min_positive: float) -> list[bool]:
    """One file's label column as booleans; a missing label is an error, not a negative."""
    missing = col.is_null() | (col.is_nan() if col.dtype.is_float() else False)
    if missing.any():
        first = int(missing.arg_true()[0])
        raise ValueError(f"{source}: {int(missing.sum())} of {len(col)} rows have no {col.name!r} (null or NaN; "
                         f"first at row {first + 1}): label or drop them")
    if col.dtype == pl.Boolean:
        return col.to_list()
    if col.dtype.is_numeric():
        return (col.cast(pl.Float64) >= min_positive).to_list()
    return [_text_label(v, min_positive, f"{source}: row {i + 1}") for i, v in enumerate(col.cast(pl.String))]


def _text_label(value: str, min_positive: float, where: str) -> bool:
    """A label written as text: a number (compared to `min_positive`) or a known class word."""
    word = value.strip().lower().removeprefix("__label__")
    if word in POSITIVE_WORDS:
        return True
    if word in NEGATIVE_WORDS:
        return False
    try:
        score = float(word)
    except ValueError:
        score = math.nan
    if math.isnan(score):  # not a number, or "nan", which float() reads but is no score
        raise ValueError(f"{where}: label {value!r} is neither a number nor a known class word (positive: "
                         f"{', '.join(POSITIVE_WORDS)}; negative: {', '.join(NEGATIVE_WORDS)})")
    return score >= min_positive


def score_steps(model: str, threshold: float | None, keep_top_percent: float | None, batch_size: int,
                text_column: str = "text", id_column: str = "id") -> list[Step]:
    from textbookgen.curation.classifier import QualityCut, QualityScore

    cfg = ClassifierConfig(enabled=True, model_path=model, threshold=threshold, keep_top_percent=keep_top_percent,
                           batch_size=batch_size)
    steps: list[Step] = [QualityScore(cfg, text_column)]
    if threshold is not None or keep_top_percent is not None:
        steps.append(QualityCut(cfg, id_column))
    return steps
