"""`textbookgen build RECIPE`: taxonomy -> prompts -> generate -> curate -> dataset -> card -> push.

Each stage hashes its inputs (config, upstream outputs) and is skipped when a previous run recorded
the same hash and its outputs are still there, byte for byte. Generation goes through the engine's
journal, so a killed build resumes without paying twice. The budget (`max_cost_usd`, `max_output_tokens`)
is for the whole build: taxonomy growth and documents, over every run in the output folder (its journals
say what was paid).
With no provider credentials, or `--plan`, the build stops after rendering prompts and prints a plan
(counts, tokens, cost, time). Decontamination benchmarks are loaded once, when first needed: before the
first paid request, or before curation; a rerun whose stages are all current needs none of them (it can
run offline).

Layout of the output folder: taxonomy.yaml, prompts.parquet, journal.sqlite, documents.parquet,
curated.parquet, dataset/ (the Hub repo: data/, README.md, recipe.yaml, manifest.json), manifest.json,
plan.json, .build/ (stage state, grow journal, curation workdir).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from textbookgen.errors import redact
from textbookgen.journal import lock_file
from textbookgen.parquet_rows import (
    ROW_GROUP_ROWS,
    ParquetRows,
    column_values,
    parquet_file,
    rewrite_parquet,
    row_count,
    write_rows,
)
from textbookgen.plan import language_rates, prompt_diversity
from textbookgen.recipe import (
    BudgetConfig,
    GrowConfig,
    Recipe,
    RecipeError,
    caps_problem,
    forced_repeats,
    grown_caps_problems,
)
from textbookgen.taxonomy import GROW_PROMPT, Taxonomy, TaxonomyError, Topic, siblings_line, subtopics_schema
from textbookgen.templates import (
    MAX_SKIPS,
    Combo,
    MixSchedule,
    Template,
    expand_mix,
    load_template,
    prompt_key,
    provenance,
    simple_words,
    variables,
)
from textbookgen.websamples import (
    Extract,
    KeyedExtracts,
    WebSampleError,
    WebSamples,
    hub_offline,
    hub_reachable,
    make_language_filter,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from textbookgen.curation.decontaminate import ItemTexts
    from textbookgen.curation.seed_copy import SeedExtracts
    from textbookgen.engine import ChatRequest, ChatResponse, Generator, Spend
    from textbookgen.llm import _Keys
    from textbookgen.progress import StageProgress

STAGES = ("taxonomy", "prompts", "generate", "curate", "dataset", "card", "push")
#: The split of the dataset a build writes, and its card describes.
SPLIT = "train"
#: The curate stage's copy of the documents' seed extracts, in .build (`Build.open_seed_extracts`), removed once
#: the stage ends.
SEED_EXTRACTS = "seed_extracts.sqlite"
STATE_VERSION = 1
PACKAGES = (
    "textbookgen",
    "openai",
    "anthropic",
    "tenacity",
    "jinja2",
    "pydantic",
    "polars",
    "pyarrow",
    "numpy",
    "bm25s",
    "ftfy",
    "rapidfuzz",
    "datasketch",
    "huggingface-hub",
    "fasttext-numpy2-wheel",
)
PROMPT_SCHEMA = {
    "index": pl.Int64,
    "topic_id": pl.String,
    "topic_path": pl.String,
    "template": pl.String,
    "template_hash": pl.String,
    "audience": pl.String,
    "style": pl.String,
    "format": pl.String,
    "language": pl.String,
    "seed_extract_id": pl.String,
    "system": pl.String,
    "prompt": pl.String,
    "max_tokens": pl.Int64,
    "request_seed": pl.Int64,
    "input_tokens_est": pl.Int64,
    "provenance": pl.String,
}
DOC_SCHEMA = {
    "id": pl.String,
    "text": pl.String,
    "topic_path": pl.String,
    "topic_id": pl.String,
    "template": pl.String,
    "template_hash": pl.String,
    "audience": pl.String,
    "style": pl.String,
    "format": pl.String,
    "seed_extract_id": pl.String,
    "model": pl.String,
    "finish_reason": pl.String,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "quality_score": pl.Float64,
    "provenance": pl.String,
}


Unfinished = Literal["failed", "budget"]  # why requests went unanswered: some failed; the budget kept some back


class BuildError(RuntimeError):
    """A stage could not run; the message says which and why. `unfinished`: set where requests left without an
    answer stopped the build ("failed", or "budget": it kept them back), so the command line exits as
    `generate` does."""

    def __init__(self, message: str, unfinished: Unfinished | None = None) -> None:
        super().__init__(message)
        self.unfinished = unfinished


@dataclass
class BuildResult:
    out_dir: Path
    manifest: dict[str, Any]
    planned: bool = False
    plan: Any = None
    # stage -> "ran" | "skipped" | "planned" | "off" | "held" (push: the dataset is incomplete)
    stages: dict[str, str] = field(default_factory=dict)
    unfinished: Unfinished | None = None  # None: every request has its answer
    incomplete: str | None = None  # what is missing and what to do, where `unfinished`


# ---- prompts ------------------------------------------------------------------------------------
def request_seed(seed: int, key: int) -> int:
    """The per-request seed, from the prompt's key (`templates.prompt_key`), not its position, so an edit that
    moves a prompt keeps its journal entry; repeated prompts are distinct requests (two prompts sharing a seed,
    about 3 pairs in 100K, still differ in text)."""
    return (seed * 1_000_003 + key) % (2**31 - 1)


def document_requests(prompts: pl.DataFrame, recipe: Recipe) -> list[ChatRequest]:
    """The generate stage's requests, one per prompt; `plan` reads the journal with the same ones (same keys)."""
    from textbookgen.engine import ChatRequest

    s = recipe.sampling
    return [
        ChatRequest(
            messages=[{"role": "user", "content": row["prompt"]}],
            max_tokens=row["max_tokens"],
            temperature=s.temperature,
            top_p=s.top_p,
            seed=row["request_seed"],
            system=row["system"],
            metadata={"prompt_index": row["index"], "topic_id": row["topic_id"]},
        )
        for row in prompts.iter_rows(named=True)
    ]


# ---- documents ----------------------------------------------------------------------------------
def _documents_of(
    prompts: pl.DataFrame, responses: Sequence[ChatResponse], recipe: Recipe
) -> tuple[pl.DataFrame, int]:
    """The documents table (DOC_SCHEMA) of the answers with text, one per request key, and how many of them
    began with a reasoning block, left out of the document."""
    from textbookgen.engine import split_reasoning

    rows = []
    reasoned = 0
    origins = _published_origins(recipe)
    for row, resp in zip(prompts.iter_rows(named=True), responses, strict=True):
        reasoning, text = split_reasoning(resp.text)
        if resp.status not in ("ok", "truncated") or not text.strip():
            continue
        reasoned += reasoning is not None
        rows.append(_document_row(row, resp, text, recipe, origins))
    docs = pl.DataFrame(rows, schema=DOC_SCHEMA).unique("id", keep="first", maintain_order=True)
    return docs, reasoned


def _published_origins(recipe: Recipe) -> dict[str, str]:
    """{a template file's origin in the provenance: its path as the published recipe.yaml names it}. A built-in's
    origin (`builtin:qa.j2`) stays as it is: it names no file of the machine, and says the template was shipped."""
    from textbookgen.card import published_paths

    names = published_paths(recipe)
    templates = {e.template: load_template(e.template, recipe.base_dir) for e in recipe.mix if e.template in names}
    return {t.origin: names[ref] for ref, t in templates.items() if not t.origin.startswith("builtin:")}


def _document_row(row: dict[str, Any], resp: ChatResponse, text: str, recipe: Recipe,
                  origins: Mapping[str, str]) -> dict[str, Any]:
    """A document's row: the answer's text, its prompt's columns, and its provenance (the template's variables
    and the request's parameters). `origins`: the template files' published paths (`_published_origins`)."""
    from textbookgen.card import portable_path

    prov = json.loads(row["provenance"])
    origin = prov["origin"]  # a template file's, published as recipe.yaml names it
    prov["origin"] = origins.get(origin) or portable_path(origin, recipe.base_dir)
    # The extract's text stays in prompts.parquet; the published row names it by id only (web text
    # keeps its own licence, and a 1,000-character copy per document would bloat the dataset).
    prov["variables"]["web_extract"] = row["seed_extract_id"]
    # Nothing of the recipe file beyond what made this request: its hash (the manifest's) changes with any
    # field, the output folder included, and would make every row of an unchanged document differ.
    prov.update(
        request_key=resp.key,
        prompt_index=row["index"],
        request_seed=row["request_seed"],
        recipe=recipe.name,
        temperature=recipe.sampling.temperature,
        top_p=recipe.sampling.top_p,
        max_tokens=row["max_tokens"],
    )
    return {
        "id": resp.key,
        "text": text,
        "topic_path": row["topic_path"],
        "topic_id": row["topic_id"],
        "template": row["template"],
        "template_hash": row["template_hash"],
        "audience": row["audience"],
        "style": row["style"],
        "format": row["format"],
        "seed_extract_id": row["seed_extract_id"],
        "model": recipe.model,
        "finish_reason": resp.finish_reason or "",
        "input_tokens": resp.input_tokens,
        "output_tokens": resp.output_tokens,
        "quality_score": None,
        "provenance": json.dumps(prov, sort_keys=True, ensure_ascii=False),
    }


@dataclass(slots=True)
class _Tally:
    """What the documents' requests came to: responses by status (in the order first met), tokens and cost; added
    up window by window (`add`), so the stage keeps these numbers, not the responses."""

    by_status: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, responses: Sequence[ChatResponse]) -> None:
        for resp in responses:
            self.by_status[resp.status] = self.by_status.get(resp.status, 0) + 1
            self.input_tokens += resp.input_tokens
            self.output_tokens += resp.output_tokens
            self.cost_usd += resp.cost_usd

    def stats(self, documents: int, reasoned: int) -> dict[str, Any]:
        """The generate stage's stats (state.json, the manifest): counts by status, tokens, cost, and the
        documents whose answer began with a reasoning block, left out."""
        counts = {
            "requests": sum(self.by_status.values()),
            **{s: self.by_status.get(s, 0) for s in ("ok", "truncated", "failed", "skipped_budget")},
            "documents": documents,
        }
        return {"counts": counts, "tokens": {"input": self.input_tokens, "output": self.output_tokens},
                "cost_usd": round(self.cost_usd, 6), "reasoning_stripped": reasoned}  # fmt: skip


def _incomplete_entry(counts: dict[str, int], why: str) -> dict[str, Any]:
    """The manifest's `incomplete` entry, which the card shows: requests, how many gave no document, and why."""
    missing = counts["failed"] + counts["skipped_budget"]
    return {
        "requests": counts["requests"], "missing": missing, "failed": counts["failed"],
        "not_sent": counts["skipped_budget"], "why": why,
    }  # fmt: skip


#: Prompts the generate stage turns into requests, sends and writes as documents at once: its memory follows this
#: window, not the corpus (a window of 50,000 is ~0.5 GB of prompts, requests and answers at 4 KB a document).
GENERATE_WINDOW = 50_000


def generate_window(recipe: Recipe) -> int:
    """Prompts per window of the generate stage: GENERATE_WINDOW, live or through the batch API. A batch build sends
    first, every window in one run of the engine (`Generator.run_windows`: a window is read only as a batch can go,
    so the jobs run side by side as far as the provider's queue allows, not one window's after the last's), then
    writes the documents a window at a time from the journal alone (`Generator.replay_only`: what that run left failed
    or pending is not sent again): its memory follows the window and the requests in flight, not the corpus."""
    return GENERATE_WINDOW


def prompt_windows(prompts: pl.DataFrame | pl.LazyFrame, size: int | None) -> Iterator[pl.DataFrame]:
    """The prompts `size` rows at a time (None: all in one), in order, each window read (from prompts.parquet, where `prompts` is its
    scan) only when the one before it is done."""
    lf, offset = prompts.lazy(), 0
    while not (window := lf.slice(offset, size).collect()).is_empty():
        yield window
        if size is None:
            return
        offset += size


@dataclass(slots=True)
class _Failures:
    """The failed responses as `_unfinished` tells of them, kept as counts: failed responses (repeats included), each
    failed request once by error class (in the order first met), and each class's first error, not the responses.
    `keys`: the failed requests' keys (~9 bytes each, `llm._Keys`), so a request failed in two windows counts once."""

    responses: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    keys: _Keys | None = None

    def add(self, responses: Sequence[ChatResponse]) -> None:
        from textbookgen.llm import _Keys

        failed = [r for r in responses if r.status == "failed"]
        if not failed:
            return
        if self.keys is None:
            self.keys = _Keys()
        self.responses += len(failed)
        unique = {r.key: r for r in failed}
        fresh = [r for r, seen in zip(unique.values(), self.keys.among(unique), strict=True) if not seen]
        self.keys.add(r.key for r in fresh)
        for r in fresh:
            self.classes[r.error_class] += 1
            self.examples.setdefault(r.error_class, r.error or "")


class _DocumentsWriter:
    """documents.parquet written a window at a time (DOC_SCHEMA, `ParquetRows`); `abort` drops it unfinished (the
    journal holds every paid answer). A document whose id an earlier one has is left out, as `unique("id",
    keep="first")` over all would: the ids written are kept as ~9 bytes each (`llm._Keys`), not the texts."""

    def __init__(self, path: Path) -> None:
        from textbookgen.llm import _Keys

        self.out = ParquetRows(path, DOC_SCHEMA)
        self.ids = _Keys()

    @property
    def rows(self) -> int:
        return self.out.rows

    def add(self, docs: pl.DataFrame) -> None:
        """Append a window's documents (`_documents_of`), those of ids written before left out."""
        if docs.is_empty():
            return
        fresh = docs.filter(~pl.Series(self.ids.among(docs["id"].to_list()), dtype=pl.Boolean))
        fresh = fresh.unique("id", keep="first", maintain_order=True)
        self.ids.add(fresh["id"].to_list())
        self.out.add(fresh)

    def close(self) -> None:
        self.out.close()

    def abort(self) -> None:
        self.out.abort()


# ---- rendering prompts --------------------------------------------------------------------------
#: Prompts rendered before they go on (to prompts.parquet's writer, or into `render_prompts`' frame): the renderer
#: holds this batch's rows, not the build's (~20 MB at 2 KB a prompt).
PROMPT_BATCH = 10_000


def render_prompts(
    recipe: Recipe,
    tax: Taxonomy,
    web: WebSamples | None,
    templates: dict[str, Template] | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> pl.DataFrame:
    """All prompts of a build, deterministic in (recipe, taxonomy, web samples): topics by weight with
    quotas (`Taxonomy.sample`), each topic's mix cells by weight (`MixSchedule`), a web extract per prompt
    (`KeyedExtracts`: no extract twice while unused ones remain, taken in this loop's order). A prompt's
    story words and request seed are drawn from its key (topic, cell, the cell's use by the topic), and its
    extract from the key and the extracts taken before it, not from its position, so an edit re-renders the
    prompts it changes (a cell's weight w -> 2w: about the prompts the cell gains; `web_samples.share` up:
    the prompts that gain an extract) and the later prompts whose extract those took or left free (a few
    percent more where the pool is much larger than the build; most once each extract is used many times),
    and raising `samples` adds prompts after the ones already paid for. A prompt whose exact text came
    earlier takes the next cell of its mix entry instead (up to MAX_SKIPS times; only the kept try takes
    its extract): a second request for the same prompt would pay for a near-copy. `limit` renders only the
    first prompts of the full build (the same rows, at a fraction of the cost). The whole table in memory: a
    build writes its prompts a batch at a time instead (`write_prompts`)."""
    batches = prompt_batches(recipe, tax, web, templates, limit=limit, progress=progress)
    return pl.concat([pl.DataFrame(schema=PROMPT_SCHEMA), *batches], rechunk=True)


def write_prompts(
    recipe: Recipe, tax: Taxonomy, web: WebSamples | None, path: Path, templates: dict[str, Template] | None = None,
    progress: bool = False,
) -> int:
    """`render_prompts`' table written to `path` as it is rendered, PROMPT_BATCH rows at a time, on this thread
    (Ctrl-C stops it at once), by `write_rows` (row groups of ROW_GROUP_ROWS whatever the batch, nothing at `path`
    changed where it fails); returns how many prompts it wrote. Memory follows a batch, not the build."""
    write_rows(prompt_batches(recipe, tax, web, templates, progress=progress), path, PROMPT_SCHEMA)
    return row_count(pl.scan_parquet(path))


def prompt_batches(
    recipe: Recipe, tax: Taxonomy, web: WebSamples | None, templates: dict[str, Template] | None = None, *,
    limit: int | None = None, progress: bool = False,
) -> Iterator[pl.DataFrame]:
    """`render_prompts`' rows, PROMPT_BATCH at a time, each batch rendered once the one before it is taken. The
    texts already rendered are kept as digests (`_SeenPrompts`), not as texts."""
    from rich.console import Console
    from rich.progress import track

    seed, tc = recipe.seed, recipe.taxonomy
    try:
        topics = tax.sample(
            recipe.samples, seed, weighting=tc.weighting, max_per_topic=tc.max_per_topic, min_per_topic=tc.min_per_topic
        )
    except ValueError as e:  # caps the grown taxonomy cannot meet: name the recipe fields, as validation does
        raise RecipeError(recipe.problem_text([caps_problem(recipe, e, len(tax.leaves()))])) from None
    cells = MixSchedule(expand_mix([e.model_dump() for e in recipe.mix]), seed)
    templates = templates or {e.template: load_template(e.template, recipe.base_dir) for e in recipe.mix}
    extracts = _keyed_extracts(recipe, web)
    rows: list[dict[str, Any]] = []
    seen = _SeenPrompts()
    console = Console(stderr=True)
    topics_it = track(topics[:limit], "rendering prompts", console=console, transient=True,
                      disable=not progress)
    tables = recipe.tables()  # the audiences, styles and formats every prompt's variables describe
    for i, topic in enumerate(topics_it):
        rendered = _render_unseen(recipe, topic, cells, templates, extracts, seen, tables)
        seen.add(rendered.prompt)
        if extracts is not None:
            extracts.take()  # only now, the kept try's pick: a skipped duplicate's extract stays free
        rows.append(_prompt_row(recipe, i, topic, rendered))
        if len(rows) == PROMPT_BATCH:
            yield pl.DataFrame(rows, schema=PROMPT_SCHEMA)
            rows = []
    if rows:
        yield pl.DataFrame(rows, schema=PROMPT_SCHEMA)


class _SeenPrompts:
    """The prompt texts rendered so far, as the first 8 bytes of each one's blake2b (~9 bytes a prompt where a set of
    the texts held each 1-2 KB text again): the newest in a set, the others in sorted runs merged as `llm._Keys` merges
    its own (each of size at least double the next: few runs to search). Two texts share a digest with odds 2^-64: a
    new prompt is taken for a repeat, and moves on to its next cell, with odds N / 2^64 at N prompts before it (~1e-5
    that any prompt of a 20M-prompt build does; ~1e-9 at 200,000)."""

    NEWEST = 1 << 16  # digests kept in the set before they become a run

    def __init__(self) -> None:
        self._newest: set[int] = set()
        self._runs: list[np.ndarray] = []

    def __contains__(self, text: str) -> bool:
        d = _text_digest(text)
        if d in self._newest:
            return True
        value = np.uint64(d)
        for run in self._runs:
            at = int(run.searchsorted(value))
            if at < run.size and run[at] == value:
                return True
        return False

    def add(self, text: str) -> None:
        self._newest.add(_text_digest(text))
        if len(self._newest) >= self.NEWEST:
            run = np.fromiter(self._newest, dtype=np.uint64, count=len(self._newest))
            run.sort()
            self._runs.append(run)
            self._newest = set()
            while len(self._runs) > 1 and self._runs[-1].size >= self._runs[-2].size:
                newest = self._runs.pop()
                self._runs[-1] = np.sort(np.concatenate([self._runs[-1], newest]))


def _text_digest(text: str) -> int:
    """A text's first 8 bytes of blake2b, as an unsigned integer (`_SeenPrompts`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _keyed_extracts(recipe: Recipe, web: WebSamples | None) -> KeyedExtracts | None:
    """Where the prompts' web extracts come from; None without web samples (every prompt topic-only)."""
    wc = recipe.web_samples
    if web is None or wc is None:
        return None
    r = wc.retrieval
    return KeyedExtracts(
        web, recipe.seed, share=wc.share, retrieval_share=r.share if r else 0.0, top_k=r.top_k if r else 20
    )


@dataclass(frozen=True, slots=True)
class _Rendered:
    """One prompt as rendered: its mix cell, template, variables and text, its key and its web extract."""

    cell: Combo
    template: Template
    variables: dict[str, Any]
    prompt: str
    key: int
    extract: Extract | None


def _render_unseen(recipe: Recipe, topic: Topic, cells: MixSchedule, templates: dict[str, Template],
                   extracts: KeyedExtracts | None, seen: _SeenPrompts,
                   tables: tuple[dict[str, str], dict[str, str], dict[str, str]]) -> _Rendered:
    """The topic's next prompt, or where its text came earlier the next cell of its mix entry, up to MAX_SKIPS
    times (a second request for the same prompt would pay for a near-copy); its extract is picked, not taken.
    `tables`: `recipe.tables()`, built once for all the prompts."""
    audiences, styles, formats = tables
    for attempt in range(MAX_SKIPS + 1):
        cell, series, k = cells.next(topic.id, retry=attempt > 0)
        key = prompt_key(series, k)
        tpl = templates[cell.template]
        pick = extracts.pick(series, k, " ".join(topic.path[-2:])) if extracts is not None else None
        extract = extracts.samples.extracts[pick] if extracts is not None and pick is not None else None
        v = variables(
            topic_path=topic.path,
            audience=cell.audience,
            style=cell.style,
            format=cell.format,
            web_extract=extract.text if extract else None,
            language=recipe.language,
            words=simple_words(recipe.seed, key),
            audiences=audiences,
            styles=styles,
            formats=formats,
        )
        prompt = tpl.render(**v)
        if prompt not in seen:
            break
    return _Rendered(cell, tpl, v, prompt, key, extract)


def _prompt_row(recipe: Recipe, index: int, topic: Topic, r: _Rendered) -> dict[str, Any]:
    """A prompt's row of prompts.parquet (PROMPT_SCHEMA): what the engine sends, its estimated input tokens, and
    where it came from."""
    from textbookgen.engine import ChatRequest, estimate_input_tokens

    max_tokens = r.cell.max_tokens or recipe.sampling.max_tokens or r.template.max_tokens
    est = estimate_input_tokens(
        ChatRequest(messages=[{"role": "user", "content": r.prompt}], system=recipe.system)
    )
    return {
        "index": index,
        "topic_id": topic.id,
        "topic_path": topic.path_str,
        "template": r.template.name,
        "template_hash": r.template.hash,
        "audience": r.cell.audience,
        "style": r.cell.style,
        "format": r.cell.format,
        "language": recipe.language,
        "seed_extract_id": r.extract.id if r.extract else None,
        "system": recipe.system,
        "prompt": r.prompt,
        "max_tokens": int(max_tokens),
        "request_seed": request_seed(recipe.seed, r.key),
        "input_tokens_est": int(est),
        "provenance": provenance(r.template, r.variables),
    }


def field_problem(recipe: Recipe, field: str, message: str) -> str:
    """A problem with the file a recipe field points at, in the form of the recipe's own problems
    (`recipe.yaml:LINE: field: message`, or the `--set` that set the field): the file's own line alone does
    not say which field of the recipe to fix."""
    return recipe.problem_text([(tuple(field.split(".")), message)])


def web_samples_problem(recipe: Recipe, err: WebSampleError) -> str:
    """A web-samples error as a recipe problem: of the field the message starts with (a language filter's),
    else of `web_samples.source`; secrets in a URL redacted."""
    message = redact(str(err))
    field, _, rest = message.partition(": ")
    if field.startswith("web_samples.") and rest:
        return field_problem(recipe, field, rest)
    return field_problem(recipe, "web_samples.source", message)


def open_web_samples(recipe: Recipe, *, progress: bool = False) -> WebSamples:
    """Load and clean the recipe's `web_samples` source (raises WebSampleError naming it)."""
    wc = recipe.web_samples
    assert wc is not None
    return WebSamples.load(
        wc.source if wc.is_remote else str(recipe.resolve(wc.source)),
        text_field=wc.text_field,
        split=wc.split,
        config=wc.config,
        limit=wc.limit,
        min_chars=wc.min_chars,
        max_chars=wc.max_chars,
        extract_chars=wc.extract_chars,
        language_filter=make_language_filter(wc.language_filter, recipe.language, recipe.base_dir),
        progress=progress,
    )


def estimate_grow(leaves: int, cfg: GrowConfig, *, provider: str | None = None, model: str = "") -> dict[str, int]:
    """Calls and tokens `taxonomy.grow` will need to go from `leaves` to `cfg.target` (same rounds) on `provider`'s
    `model`: output expected, and at most (every call answering `cfg.max_tokens`) for the worst case."""
    target = cfg.target
    calls = tokens_in = tokens_out = 0
    n = leaves
    while n < target:
        k = cfg.per_call
        m = min(n, math.ceil((target - n) / (k - 1) * 1.15))
        calls += m
        tokens_in += m * _grow_input_tokens(k, grown=n > leaves, provider=provider, model=model)
        tokens_out += m * (12 * k + 10)
        n = min(target, n + m * (k - 1))
    return {
        "leaves_before": leaves,
        "target": target,
        "calls": calls,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "output_tokens_max": calls * cfg.max_tokens,
    }


def _grow_input_tokens(k: int, grown: bool, *, provider: str | None = None, model: str = "") -> int:
    """Input tokens of one grow request: the real prompt for a topic with a name of typical length, and a
    sibling line naming the k - 1 topics beside it (as many as the prompt shows). Names a list starts from
    are short ("Algebra"); those an LLM grows run to six to nine words, in the path and the siblings. The
    JSON schema the build's growth asks for (structured output) is billed as input too, and on Anthropic the
    tool-use system prompt it brings (`engine.hidden_prompt_tokens`: 313 tokens a call, more than the prompt)."""
    from textbookgen.engine import ChatRequest, estimate_input_tokens

    name = "The role of a typical topic in its field" if grown else "A typical topic name"
    content = GROW_PROMPT.format(
        k=k, topic=name, path=f"Subject > Topic > {name}", siblings=siblings_line([name] * (k - 1))
    )
    messages = [{"role": "user", "content": content}]
    return estimate_input_tokens(ChatRequest(messages=messages, response_format=subtopics_schema(k)), provider, model)


# ---- the build's budget -------------------------------------------------------------------------
def _unread_extract_tokens(prompts: float, extract_chars: int, language: str,
                           scripts: Sequence[str] | None = None) -> tuple[int, int]:
    """Input tokens (expected, at most) of the web extracts `prompts` prompts will carry when the plan could not
    read the source: an extract is about 85% of `extract_chars` (cut at a sentence end) of `language` text (written
    in `scripts`, where the language filter names them), plus 40 tokens of English that introduce it."""
    expected, most = language_rates(language, scripts)
    latin = language_rates("English")
    return (int(prompts * (extract_chars * 0.85 * expected + 40)),
            math.ceil(prompts * (extract_chars * 0.85 * most + 40 * latin[1] / latin[0])))


def journal_summary(path: Path, prices: Mapping[str, tuple[float, float]] | None = None) -> dict[str, Any] | None:
    """A request journal's `Journal.summary()` at `prices` (tokens billed at no price priced now, as the engine
    does), read without writing; None where there is none yet."""
    if not path.is_file():
        return None
    from textbookgen.journal import Journal

    with Journal(path, read_only=True) as j:
        return j.summary(prices)


def journal_spend(path: Path, prices: Mapping[str, tuple[float, float]] | None = None) -> Spend:
    """(USD, output tokens) a request journal records as spent, abandoned attempts at their worst case, as the
    budgets count them (at `prices`, as the engine counts its own record); zeros where there is none yet."""
    from textbookgen.engine import Spend, spent

    summary = journal_summary(path, prices)
    return spent(summary) if summary else Spend(0.0, 0)


class BudgetedGenerator:
    """A stage's Generator held to what is left of the recipe's budget, which is for the whole build:
    every taxonomy-grow round and the documents, over every run in the output folder. `gen` is made with
    that budget; before its first run the journals say what was spent, and the engine counts that instead of its
    own journal's record of the requests it is given; each later run (the generate stage's next window) starts
    from what the run before it ended at (`_spent_after`), not from the journals read whole again (a scan of every
    row: minutes a window at 20M documents), unless that run collected or kept batch answers (the journals say those)."""

    def __init__(self, gen: Generator, budget: BudgetConfig, journals: dict[str, Path]) -> None:
        self.gen, self.budget, self.journals = gen, budget, journals
        self.skipped = 0  # requests the budget kept back, over every run
        self.stop_note: str | None = None  # the engine's word on which budget stopped it
        self.counted: Spend | None = None  # spent in the output folder after the last run, as the engine counted it

    @property
    def budgeted(self) -> bool:
        """Whether a dollar or token budget holds the runs: only then are the journals read before them."""
        return self.budget.max_cost_usd is not None or self.budget.max_output_tokens is not None

    def spent(self) -> Spend:
        """(USD, output tokens) spent in the output folder, every journal and every run, abandoned attempts
        at their worst case."""
        from textbookgen.engine import Spend

        spends = [journal_spend(p, self.gen.prices) for p in self.journals.values()]
        return Spend(sum(usd for usd, _ in spends), sum(out for _, out in spends))

    def read_journals(self) -> dict[str, dict[str, Any] | None]:
        """Each journal's summary (None: none yet), at the engine's prices, read before a run (the first, or one
        after a run that kept batch answers): its spend is kept as what that run counts spent (`counted`), so the
        journals are read once for the budget and for what else a stage wants of them (the generate stage's line:
        what an earlier build paid for). Valid only where no journal is written before that run."""
        from textbookgen.engine import Spend, spent

        summaries = {name: journal_summary(path, self.gen.prices) for name, path in self.journals.items()}
        spends = [spent(s) if s else Spend(0.0, 0) for s in summaries.values()]  # as `spent` adds them
        self.counted = Spend(sum(usd for usd, _ in spends), sum(out for _, out in spends))
        return summaries

    def run(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        gen = self.gen
        budgeted = self.budgeted and gen.replay_only is None  # a replay spends nothing: no read
        if budgeted:
            gen.spent_before = self.counted or self.spent()
        self.counted = None  # a run that raises leaves the journals to say it
        responses = gen.run(requests)
        if budgeted and not gen.batch and not (gen.stats["collected"] or gen.stats["orphans"]):
            # a run that collected batches (an interrupted --batch run's) may have kept answers to other windows'
            # requests in the journal (`_record_orphans`), paid but not in its stats: the journals say those
            self.counted = _spent_after(gen.spent_before, gen.stats)
        skipped = [r for r in responses if r.status == "skipped_budget"]
        self.skipped += len(skipped)
        self.stop_note = skipped[0].error if skipped else self.stop_note
        # once stopped, a later run (the generate stage's next window) whose first request does not fit either is
        # skipped at once: no pending rows, no second warning
        gen.budget_stopped = self.skipped > 0
        return responses


def _spent_after(before: Spend, stats: Mapping[str, Any]) -> Spend:
    """What the output folder has spent after a run that started from `before` (its `spent_before`), as the engine
    counts it: `before` less the run's record of its requests at its start (replayed answers, billed failures,
    earlier abandoned attempts: what `before` holds of them already), plus all the run counts at its end."""
    from textbookgen.engine import Spend, spent

    usd, out = spent(stats)
    return Spend(before.usd - stats["replayed_usd"] - stats["prior_abandoned_usd"] + usd,
                 before.output_tokens - stats["replayed_output_tokens"] - stats["prior_abandoned_output_tokens"] + out)


# ---- hashing and state --------------------------------------------------------------------------
def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def path_hash(path: Path) -> str:
    """Content hash of a file, or of a folder (relative names and bytes of every file, hidden ones aside)."""
    h = hashlib.sha256()
    files = (
        [path]
        if path.is_file()
        else sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    )
    for f in files:
        if f != path:
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _prompt_counts(prompts: pl.LazyFrame) -> tuple[int, int]:
    """The prompts, and those without a web extract, counted over the scan (one column read, a batch at a time)."""
    counts = prompts.select(pl.len(), pl.col("seed_extract_id").null_count()).collect(engine="streaming")
    return int(counts.item(0, 0)), int(counts.item(0, 1))


def _write_json(obj: Any, path: Path, sort_keys: bool = True) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _rel(p: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# ---- the build ----------------------------------------------------------------------------------
class Build:
    """One run of a recipe. `run()` executes the stages in order and returns a BuildResult."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        plan_only: bool = False,
        push: bool | None = None,
        progress: bool = True,
        console: Any = None,
        retry_failed: bool = False,
        push_incomplete: bool | None = None,
        options: str = "",
    ):
        """`options`: the command-line options this build was given (`--set ...`), for the command it prints."""
        from rich.console import Console

        self.recipe = recipe
        self.out = recipe.output_dir()
        self.meta_dir = self.out / ".build"
        self.plan_only = plan_only
        self.push = recipe.hub.push if push is None else push
        self.push_incomplete = recipe.hub.push_incomplete if push_incomplete is None else push_incomplete
        self.stage: str | None = None  # the stage running now (what an interrupted build was doing)
        self.unfinished: Unfinished | None = None
        self.progress = progress
        self.retry_failed = retry_failed
        self.options = options
        self.console = console or Console(stderr=True, soft_wrap=True)  # a log file gets URLs and paths whole
        self.state_path = self.meta_dir / "state.json"
        self.state: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.stage_status: dict[str, str] = {}
        self.notes: list[str] = recipe.notes()
        self.manifest: dict[str, Any] = {}
        self._web_stats: dict[str, Any] | None = None
        self._web_samples: WebSamples | None = None  # as the prompts stage loaded them (not where it was cached)
        self._benchmark_texts: list[ItemTexts] | None = None
        self._grown_standin: Taxonomy | None = None  # a plan's replayed growth (`_grow_plan`)

    # -- state --
    def _load_state(self) -> None:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        self.state = state if state.get("version") == STATE_VERSION else {"version": STATE_VERSION}

    def _cached(self, stage: str, input_hash: str) -> dict[str, Any] | None:
        st = self.state.get(stage)
        if not st or st.get("input_hash") != input_hash or not st.get("complete", True):
            return None
        for rel, h in st.get("outputs", {}).items():
            p = self.out / rel
            if not p.exists() or path_hash(p) != h:
                return None
        return st

    def _record(
        self,
        stage: str,
        input_hash: str,
        outputs: list[Path],
        stats: dict[str, Any],
        seconds: float,
        complete: bool = True,
    ) -> None:
        self.state[stage] = {
            "input_hash": input_hash,
            "complete": complete,
            "seconds": round(seconds, 3),
            "stats": stats,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "outputs": {p.relative_to(self.out).as_posix(): path_hash(p) for p in outputs},
            "output_hash": _hash([path_hash(p) for p in outputs]),
        }
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.state, self.state_path, sort_keys=False)  # curation stats keep the pipeline's order

    def _begin(self, stage: str) -> float:
        self.stage = stage
        self.console.print(f"[bold cyan]>> {stage}[/bold cyan]")
        return time.perf_counter()

    def _skip(self, stage: str, st: dict[str, Any]) -> None:
        self.console.print(f"[dim]>> {stage}: inputs unchanged, skipped[/dim]")
        self.stage_status[stage] = "skipped"
        self.timings[stage] = st.get("seconds", 0.0)

    def _done(self, stage: str, t0: float) -> float:
        seconds = time.perf_counter() - t0
        self.timings[stage] = round(seconds, 3)
        self.stage_status[stage] = "ran"
        return seconds

    # -- engine --
    def _generator(self, journal: Path, model: str | None = None, batch: bool = False) -> BudgetedGenerator:
        """The engine for one stage; `batch`: through the provider's batch API if the recipe asks for it
        (the documents stage only: taxonomy growth is a few calls whose answers the next level needs now).
        Every paid request goes through an engine made here, so the benchmarks are loaded first: one
        that cannot be read stops the build before anything is billed."""
        from textbookgen.engine import Generator, RateLimits

        self.benchmark_texts()
        r = self.recipe
        lim, p = r.limits, r.provider
        gen = Generator(
            provider=p.name,
            model=model or r.model,
            base_url=p.base_url,
            api_key=p.api_key(),
            journal=journal,
            limits=RateLimits(rpm=lim.rpm, input_tpm=lim.input_tpm, output_tpm=lim.output_tpm, tpm=lim.tpm),
            concurrency=lim.concurrency,
            max_cost_usd=r.budget.max_cost_usd,
            max_output_tokens=r.budget.max_output_tokens,
            prices=r.price_table(),
            progress=self.progress,
            timeout_s=p.timeout_s,
            max_attempts=p.max_attempts,
            max_error_rate=p.max_error_rate,
            retry_failed=self.retry_failed,
            batch=batch and p.batch,
            batch_size=p.batch_size,
            batch_poll_s=p.batch_poll_s,
        )
        return BudgetedGenerator(gen, r.budget, self.journals())

    def journals(self) -> dict[str, Path]:
        """The build's request journals, by stage: every dollar this output folder has paid is in one."""
        return {"taxonomy": self.meta_dir / "grow.sqlite", "generate": self.out / "journal.sqlite"}

    # -- run --
    def run(self) -> BuildResult:
        """Hold the output folder's lock (one build per folder) and run the stages."""
        try:
            self.meta_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BuildError(f"output: cannot create the output folder {self.out} ({e})") from None
        with open(self.meta_dir / "lock", "w") as lock:
            try:
                lock_file(lock)
            except OSError:
                raise BuildError(f"another build is running in {self.out} (lock {lock.name})") from None
            return self._run()

    def _run(self) -> BuildResult:
        r = self.recipe
        unpriced = r.unpriced_budget_problems(grows=False)  # `load_recipe` refuses it; a Recipe made otherwise,
        if unpriced:  # here, before growth pays; growth's own model: `stage_taxonomy`, where it knows it grows
            raise RecipeError(r.problem_text(unpriced))
        self._load_state()
        can_call = r.provider.has_credentials()
        planning = self.plan_only or not can_call
        if not can_call:
            self.notes.append(
                f"no credentials for provider {r.provider.name!r} (${r.provider.key_env} is not "
                "set and provider.base_url is not a local server): planning only."
            )
        if planning:  # a real build loads them when first needed (`benchmark_texts`)
            self.check_benchmarks(planning=True)
        else:
            for note in r.notes():  # said before paying, not only in the manifest
                self.console.print(f"[yellow]note:[/yellow] {note}")
        self.check_finish()
        tax, tax_hash, grow_plan = self.stage_taxonomy(can_grow=not planning)
        grown_recipe = r  # the caps below are lifted for the roots alone
        if grow_plan and (r.taxonomy.max_per_topic or r.taxonomy.min_per_topic):
            # The per-topic caps are meant for the grown tree; the roots alone cannot meet them.
            self.notes.append("per-topic caps are lifted in this plan (they apply to the grown taxonomy).")
            self.recipe = r = r.model_copy(
                update={"taxonomy": r.taxonomy.model_copy(update={"max_per_topic": None, "min_per_topic": 0})}
            )
        prompts, prompts_hash = self.stage_prompts(tax, tax_hash, planning)
        self._base_manifest(tax, prompts)
        if grow_plan:  # the plan's prompts name the roots; the build's will name the grown topics
            from textbookgen.plan import grown_prompt_tokens

            web = self._web_samples or (self.load_web_samples(planning) if self._web_stats else None)
            assert self._grown_standin is not None  # `_grow_plan` replayed the growth
            grow_plan.update(grown_prompt_tokens(grown_recipe, self._grown_standin, prompts, web))
            forced = forced_repeats(grown_recipe, self._grown_standin)  # the build's repeats, not the roots'
            if forced is not None:
                grow_plan.update(repeated_prompts=forced[0], per_topic_max=forced[2], mix_cells=forced[3])
        if planning:
            return self._plan(tax, prompts, grow_plan, can_call)
        docs, docs_hash = self.stage_generate(prompts, prompts_hash)
        self.manifest["coverage"] = asdict(tax.coverage(column_values(self.out / "documents.parquet", "topic_id")))
        curated, curated_hash = self.stage_curate(docs, docs_hash)
        self.manifest["counts"]["curated"] = row_count(curated)
        self.stage_dataset(curated, curated_hash)
        self._finish_manifest()
        self.stage_card()
        self.stage_push()
        self._finish_manifest()
        _write_json(self.manifest, self.out / "manifest.json")
        return BuildResult(
            self.out,
            self.manifest,
            stages=dict(self.stage_status),
            unfinished=self.unfinished,
            incomplete=self._incomplete(),
        )

    def _incomplete(self) -> str | None:
        """Where requests went unanswered: what is missing, what to do, and what became of the push."""
        if not self.unfinished:
            return None
        repo, dataset = self.recipe.hub.repo_id, _rel(self.out / "dataset")
        if self.stage_status.get("push") == "held":
            push = (
                f"{dataset} is written for inspection, but was not pushed to {repo}: finish the build first, "
                "or push it as it is with --push-incomplete (hub.push_incomplete: true)"
            )
        elif self.stage_status.get("push") == "ran":
            push = f"pushed to {repo} as asked (push_incomplete); its card says it is incomplete"
        else:
            push = f"{dataset} is written for inspection; its card says it is incomplete"
        inc = self.manifest["incomplete"]
        return (
            f"the dataset is incomplete, {inc['missing']:,} of {inc['requests']:,} requests gave no document: "
            f"{inc['why']} {push}."
        )

    def check_finish(self) -> None:
        """Check what the last stages need before anything is paid for: a repo to push to, a card
        template that compiles."""
        from textbookgen.card import card_template_of, load_card_template

        r = self.recipe
        if self.push and not r.hub.repo_id:
            raise BuildError("push: the recipe has no hub.repo_id; set it, or build with --no-push")
        template = card_template_of(r)
        if template is not None:
            load_card_template(template)

    def check_web_source(self) -> None:
        """Stop before paid growth where the prompts stage could not read `web_samples.source` for a reason
        found without reading it (as `check_benchmarks` does for the benchmarks): a Hub dataset with no
        `datasets` package, or the Hub not reachable. Offline mode is no exception, unlike for the benchmarks:
        web samples are streamed from the Hub, never read from the local cache."""
        from textbookgen.recipe import web_source_problems

        problems = web_source_problems(self.recipe)
        if problems:
            raise RecipeError(self.recipe.problem_text(problems))
        wc = self.recipe.web_samples
        if wc is not None and wc.source.startswith(("hf:", "hf://")) and not hub_reachable():
            why = "offline mode is set (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE) and web samples are streamed" \
                if hub_offline() else "the Hugging Face Hub is not reachable"
            raise BuildError(field_problem(
                self.recipe, "web_samples.source", f"{wc.source}: {why}, so the prompts could not get their web "
                "extracts; the build stopped before growing the taxonomy (no request sent). Point `source` at a "
                "local copy, or remove `web_samples:`"))

    def benchmark_texts(self) -> list[ItemTexts]:
        """The decontamination benchmarks' texts, loaded on first use: before the first paid request
        (`_generator`) or before curation, whichever comes first. Paid work always precedes curation,
        so checking there means an unreadable benchmark costs nothing, while a rerun whose generation
        and curation are current never loads them. Curation gets these texts: each is loaded once."""
        if self._benchmark_texts is None:
            self._benchmark_texts = self.check_benchmarks(planning=False)
        return self._benchmark_texts

    def check_benchmarks(self, planning: bool) -> list[ItemTexts]:
        """Load every decontamination benchmark and return their items' texts, in recipe order; a
        BuildError names the one that cannot be read. A plan downloads nothing: it reads local files
        (returning only theirs) and notes the Hub sources it cannot reach."""
        from textbookgen.curation.decontaminate import load_benchmark_texts

        cfg = self.recipe.resolved_curation().decontamination
        sources = list(enumerate(cfg.benchmarks if cfg.enabled else []))
        where = {i: f"curation.decontamination.benchmarks[{i}] ({b.path})" for i, b in sources}
        remote = [i for i, b in sources if b.path.startswith("hf://")]
        if remote and not hub_reachable() and (planning or not hub_offline()):  # offline mode: the cache
            if not planning:
                raise BuildError(
                    f"{where[remote[0]]}: the Hugging Face Hub is not reachable, so decontamination could "
                    "not run; the build stopped before sending any request. Point `path` at a local copy, "
                    "or remove the entry."
                )
            self.notes.append(
                f"{'; '.join(where[i] for i in remote)}: the Hugging Face Hub is not reachable; the real "
                "build loads every benchmark before generating and stops if one cannot be read."
            )
        texts: list[ItemTexts] = []
        for i, src in sources:
            if planning and i in remote:
                continue
            try:
                texts += load_benchmark_texts(src, cfg.min_item_words)
            except (ValueError, KeyError, OSError, ImportError) as e:
                raise BuildError(f"{where[i]}: cannot be loaded ({type(e).__name__}: {e})") from None
        return texts

    # -- stages --
    def stage_taxonomy(self, *, can_grow: bool) -> tuple[Taxonomy, str, dict[str, int] | None]:
        """The taxonomy the prompts are drawn from: the recipe's, grown to `taxonomy.grow.target` where it asks.
        A plan (`can_grow` false) grows nothing: it returns the roots and what growing them would take."""
        tc = self.recipe.taxonomy
        src = self.recipe.taxonomy_path()
        try:
            roots = Taxonomy.load(src, format=tc.format, select=tc.select, name=tc.name)
        except TaxonomyError as e:
            raise BuildError(field_problem(self.recipe, "taxonomy.source", str(e))) from None
        n_roots = len(roots.leaves())
        wants_grow = tc.grows(n_roots)
        input_hash = self._taxonomy_hash(src, wants_grow)
        out_path = self.out / "taxonomy.yaml"
        st = self._cached("taxonomy", input_hash)
        if st:
            self._skip("taxonomy", st)
            return Taxonomy.load(out_path), st["output_hash"], None
        # growth's model with no price under a dollar budget, caps no tree of grow.target topics meets: refused
        # before growth is paid, as `validate` does (`deferred_problems`); roots that need no growth need neither
        problems = [*self.recipe.unpriced_budget_problems(grows=True),
                    *grown_caps_problems(self.recipe, roots)] if wants_grow else []
        if problems:
            raise RecipeError(self.recipe.problem_text(problems))
        if wants_grow and can_grow:  # the prompts stage reads the web samples only after growth is paid
            self.check_web_source()
        t0 = self._begin("taxonomy")
        if wants_grow and not can_grow:
            plan = self._grow_plan(roots, n_roots)
            self._done("taxonomy", t0)
            self.stage_status["taxonomy"] = "planned"
            return roots, roots.content_hash(), plan
        stats: dict[str, Any] = {"root_leaves": n_roots}
        if wants_grow:
            stats["grow"] = self._grow(roots)
        roots.save(out_path)
        stats.update(leaves=len(roots.leaves()), nodes=len(roots), depth=roots.depth())
        self._record(
            "taxonomy",
            input_hash,
            [out_path],
            stats,
            self._done("taxonomy", t0),
            complete=not tc.grows(stats["leaves"]),  # short of grow.target: a rerun grows on
        )
        return roots, self.state["taxonomy"]["output_hash"], None

    def _taxonomy_hash(self, src: Path, wants_grow: bool) -> str:
        """The taxonomy stage's input hash: the source's bytes and the settings that shape the tree (not the
        per-topic weighting and caps, which only the prompts read); where it grows, who grows it, and the seed."""
        r, tc = self.recipe, self.recipe.taxonomy
        key = {
            "source": path_hash(src),
            "cfg": tc.model_dump(mode="json", exclude={"weighting", "max_per_topic", "min_per_topic"}),
        }
        if wants_grow:
            key["grow_by"] = [r.provider.name, tc.grow.model or r.model, r.seed]
        return _hash(key)

    def _grow_plan(self, roots: Taxonomy, n_roots: int) -> dict[str, int]:
        """What growing the roots would take, for a plan; a rerun pays only for the calls its journal does not
        answer. The growth is replayed once: its stand-in tree (`_grown_standin`) gives the grown topics' prompt
        tokens too (`plan.grown_prompt_tokens`)."""
        from textbookgen.plan import grow_left, replay_growth

        r, g = self.recipe, self.recipe.taxonomy.grow
        journal = self.journals()["taxonomy"]
        provider, model = r.provider.name, g.model or r.model
        self._grown_standin, replay = replay_growth(roots, g, journal, provider=provider, model=model, seed=r.seed,
                                                    retry_failed=self.retry_failed)
        plan = (grow_left(n_roots, g, journal, replay, r.price_table()) if journal.is_file()
                else estimate_grow(n_roots, g, provider=provider, model=model))
        self.notes.append(
            f"the taxonomy is not grown in a plan: prompts use the {n_roots:,} root topics; "
            f"the real build grows them to {g.target:,} first."
        )
        return plan

    def _grow(self, roots: Taxonomy) -> dict[str, Any]:
        """Grow the roots in place (`taxonomy.grow`), paid from the build's budget; return the grow report.
        A budget reached while growing stops the build: the prompts need the grown tree."""
        from textbookgen.taxonomy import grow

        g = self.recipe.taxonomy.grow
        gen = self._generator(self.journals()["taxonomy"], model=g.model)
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        report = grow(
            roots,
            gen,
            g.target,
            per_call=g.per_call,
            max_depth=g.max_depth,
            seed=self.recipe.seed,
            temperature=g.temperature,
            max_tokens=g.max_tokens,
            similarity=g.similarity,
        )
        if gen.skipped:
            raise BuildError(self._budget_reached("while growing the taxonomy", gen), "budget")
        self.console.print(
            f"   grew {report.leaves_before:,} -> {report.leaves_after:,} leaves in "
            f"{report.calls:,} calls ({report.duplicates_dropped:,} near-duplicates dropped)"
        )
        return asdict(report)

    def _web_identity(self) -> dict[str, Any] | None:
        wc = self.recipe.web_samples
        if wc is None:
            return None
        ident = wc.model_dump(mode="json")
        if not wc.is_remote:
            ident["content"] = path_hash(self.recipe.resolve(wc.source))
        model = wc.language_filter.model if wc.language_filter else None
        if model and not model.startswith(("hf:", "http://", "https://")):  # a model replaced in place re-filters
            ident["language_model"] = path_hash(self.recipe.resolve(model))
        return ident

    def load_web_samples(self, planning: bool) -> WebSamples | None:
        """The recipe's web samples. A plan goes on without a remote source it cannot read (it notes
        the missing extracts); a local file that the build would reject fails the plan too."""
        wc = self.recipe.web_samples
        if wc is None:
            return None
        try:
            return open_web_samples(self.recipe, progress=self.progress)
        except WebSampleError as e:
            if not (planning and wc.is_remote):
                raise BuildError(web_samples_problem(self.recipe, e)) from None
            self.notes.append(
                f"web samples unavailable ({redact(str(e))}); this plan uses topic-only prompts. The real build "
                "needs the source (or remove `web_samples:` from the recipe)."
            )
            return None

    def stage_prompts(self, tax: Taxonomy, tax_hash: str, planning: bool) -> tuple[pl.LazyFrame, str]:
        """Render prompts.parquet a batch at a time (`write_prompts`), unless its inputs are unchanged; returns a
        scan of it, which the later stages read a window at a time, and its hash."""
        r = self.recipe
        templates = {e.template: load_template(e.template, r.base_dir) for e in r.mix}
        key = {
            "taxonomy": tax_hash,
            "web": self._web_identity(),
            "templates": {k: t.hash for k, t in templates.items()},
            "recipe": r.model_dump(
                mode="json",
                include={
                    "mix",
                    "samples",
                    "seed",
                    "language",
                    "system",
                    "audiences",
                    "styles",
                    "formats",
                    "sampling",
                    "taxonomy",
                },
            ),
        }
        input_hash = _hash(key)
        out_path = self.out / "prompts.parquet"
        st = self._cached("prompts", input_hash)
        if st:
            self._skip("prompts", st)
            self._web_stats = st["stats"].get("web")
            return pl.scan_parquet(out_path), st["output_hash"]
        t0 = self._begin("prompts")
        web = self._web_samples = self.load_web_samples(planning)
        count = write_prompts(r, tax, web, out_path, templates, progress=self.progress)
        self._web_stats = (
            {"source": redact(r.web_samples.source), **web.stats, "hash": web.content_hash()} if web else None
        )
        stats = {"prompts": count, "web": self._web_stats}
        complete = web is not None or r.web_samples is None
        self._record("prompts", input_hash, [out_path], stats, self._done("prompts", t0), complete=complete)
        # a plan names the file once, in its last line, beside plan.json
        self.console.print(f"   {count:,} prompts" + ("" if planning else f" -> {_rel(out_path)}"))
        return pl.scan_parquet(out_path), self.state["prompts"]["output_hash"]

    def stage_generate(self, prompts: pl.DataFrame | pl.LazyFrame, prompts_hash: str) -> tuple[pl.LazyFrame, str]:
        """Send the prompts and make a document of every answer with text. A document is the answer without a
        leading reasoning block (`<think>...</think>`: a reasoning model served without a reasoning parser); the
        journal keeps the answer as the provider sent it. An answer with no text besides is a failed request.
        A window of prompts at a time (`generate_window`: built, sent, answered and appended to documents.parquet
        before the next is read), so memory follows the window, not the corpus; returns a scan of the documents."""
        r = self.recipe
        key = {
            "prompts": prompts_hash,
            "provider": r.provider.name,
            "model": r.model,
            "sampling": r.sampling.model_dump(mode="json"),
            "budget": r.budget.model_dump(mode="json"),
            # how answers become documents; 2: leading reasoning block set apart, an answer without text failed;
            # 3: a template file's path in the provenance relative to the recipe (`card.portable_path`);
            # 4: as the published recipe names it, apart from another file of its name (`card.published_paths`)
            "answers": 4,
        }
        input_hash = _hash(key)
        out_path = self.out / "documents.parquet"
        st = self._cached("generate", input_hash)
        if st:
            self._skip("generate", st)
            self.manifest.update(st["stats"])
            return pl.scan_parquet(out_path), st["output_hash"]
        t0 = self._begin("generate")
        gen = self._generator(self.journals()["generate"], batch=True)
        tally, failures, writer = _Tally(), _Failures(), _DocumentsWriter(out_path)
        reasoned = 0
        size = generate_window(r)
        stage = gen.gen.stage_progress = self._stage_progress(prompts, gen) if size is not None else None
        try:
            if r.provider.batch:  # sent whole first: the windows then only read the journal
                gen.gen.replay_only = self._send_batches(gen, prompts, size)
            for window in prompt_windows(prompts, size):
                responses = gen.run(document_requests(window, r))
                if stage is not None and stage.prepaid is not None and gen.gen.stats["orphans"]:  # kept answers
                    stage.count_kept(gen.gen.stats["orphans"], gen.read_journals()["generate"])
                tally.add(responses)
                failures.add(responses)
                docs, window_reasoned = _documents_of(window, responses, r)
                del responses
                writer.add(docs)
                reasoned += window_reasoned
            writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:  # taken off the Generator, as an LLM call restores what it sets on one
            gen.gen.stage_progress = gen.gen.replay_only = None
            if stage is not None:
                stage.close()
        stats = tally.stats(writer.rows, reasoned)
        counts = stats["counts"]
        complete = counts["failed"] == 0 and counts["skipped_budget"] == 0
        unfinished = None if complete else self._unfinished(failures, gen)
        if unfinished:
            self.notes.append(unfinished)
            self.unfinished = "failed" if counts["failed"] else "budget"
        self._record("generate", input_hash, [out_path], stats, self._done("generate", t0), complete=complete)
        if not writer.rows:  # curation and the dataset would have nothing to work on
            why = unfinished or "every answer was empty"
            raise BuildError(f"generate: no request gave a document: {why}", self.unfinished)
        self.manifest.update(stats)
        if unfinished:  # published: the card says the dataset is incomplete, and why
            self.manifest["incomplete"] = _incomplete_entry(counts, unfinished)
        self._print_generated(writer.rows, tally, reasoned)
        return pl.scan_parquet(out_path), self.state["generate"]["output_hash"]

    def _stage_progress(self, prompts: pl.DataFrame | pl.LazyFrame, gen: BudgetedGenerator) -> StageProgress | None:
        """One progress line over the generate stage's windows (None without progress): done of all its prompts
        (prompts.parquet's row count, its metadata), and its spend projected over all of them; what the generate
        journal holds from an earlier build run (a resumed or raised build: the summary the budget reads anyway,
        `read_journals`) counted done and spent from the start, once, where a sample of the stage's own requests
        agrees with it (`Prepaid.agrees`). Else (another model's, sampling's, seed's or template's answers in the
        same output folder: not the stage's), and in an unbudgeted build, whose journals no budget reads (a pass
        over every row: minutes at 20M documents), each window counts its own replays (`prepaid` None)."""
        if not self.progress:
            return None
        from textbookgen.progress import Prepaid, StageProgress

        total = row_count(prompts.lazy())
        prepaid = Prepaid.of(gen.read_journals()["generate"], self.retry_failed) if gen.budgeted else None
        if prepaid and prepaid.done and not (prepaid.done <= total
                                 and prepaid.agrees(*self._sampled_answers(prompts, total, gen.gen), total)):
            prepaid = None
        return StageProgress(total, description=f"{self.recipe.provider.name}:{self.recipe.model}", prepaid=prepaid)

    def _sampled_answers(self, prompts: pl.DataFrame | pl.LazyFrame, total: int, gen: Generator) -> tuple[int, int]:
        """(answered, drawn) of a random sample of the stage's prompts (`progress.sample_at`): their requests keyed
        as `gen` keys them, looked up in the generate journal, answered where the engine would replay them
        (`engine.replays`). Only the drawn rows are read (a one-row slice each of prompts.parquet), not every
        prompt's."""
        from textbookgen.engine import replays
        from textbookgen.journal import Journal
        from textbookgen.progress import sample_at

        lf = prompts.lazy()
        drawn = pl.concat([lf.slice(i, 1) for i in sample_at(total)]).collect()
        keys = [gen._key(req) for req in document_requests(drawn, self.recipe)]
        with Journal(self.journals()["generate"], read_only=True) as journal:
            rows = journal.rows(keys)
        return sum(key in rows and replays(rows[key], self.retry_failed) for key in keys), len(keys)

    def _send_batches(self, gen: BudgetedGenerator, prompts: pl.DataFrame | pl.LazyFrame, size: int) -> str:
        """A batch build's sending: every window's requests in one batch run (`Generator.run_windows`), which holds
        the requests in flight, not the corpus; the stage's windows then only read its outcomes from the journal
        (`Generator.replay_only`, with the note returned: the budget's, where it stopped the run). Held to the build's
        budget as a window's run is (what every journal says was spent: the stage line's read where it made one),
        and drawn as a run of its own."""
        engine, r = gen.gen, self.recipe
        if gen.budgeted:
            engine.spent_before = gen.counted or gen.spent()
        gen.counted = None  # a later run reads the journals: this run spent what no stats say
        stage, engine.stage_progress = engine.stage_progress, None
        try:
            note = engine.run_windows((document_requests(w, r) for w in prompt_windows(prompts, size)),
                                      row_count(prompts.lazy()))
        finally:
            engine.stage_progress = stage
        return note or "not sent: the build's batch run left it pending"

    def _print_generated(self, n_docs: int, tally: _Tally, reasoned: int) -> None:
        """The generate stage's summary line, and a word on the answers whose reasoning block was left out."""
        self.console.print(
            f"   {n_docs:,} documents ({tally.by_status}), {tally.input_tokens:,} in / {tally.output_tokens:,} out "
            f"tokens, ${tally.cost_usd:.4f}"
        )
        if reasoned:
            self.console.print(
                f"   {reasoned:,} answers began with a reasoning block (<think>...</think>): left out of the "
                "documents; the journal keeps the answers as sent"
            )

    def _unfinished(self, failures: _Failures, gen: BudgetedGenerator) -> str:
        """What to do about the requests that gave no answer: transient failures and empty answers are re-sent
        by a plain rerun; requests refused for good (400, refusal, content filter) only with `--retry-failed`,
        since the journal would replay the same refusal; those the budget kept back need a larger budget."""
        from textbookgen.journal import PERMANENT_ERRORS

        parts = []
        if failures.responses:
            classes = failures.classes
            permanent = sum(n for c, n in classes.items() if c in PERMANENT_ERRORS)
            kinds = ", ".join(f"{n} {c}" for c, n in classes.most_common())
            common = classes.most_common(1)[0][0]  # its example says what to do about most of them
            example = failures.examples[common]
            parts.append(
                f"{failures.responses} request(s) failed ({kinds}; e.g. {example[:300]})"
                + ("; a rerun re-sends the others (transient failures, empty answers)"
                   if permanent and permanent < classes.total() else "")
                + ("; a rerun re-sends them" if not permanent else "")
                + (
                    "; the journal replays the refused ones: fix the cause, then rerun with "
                    "`textbookgen build --retry-failed` to re-send them"
                    if permanent and not self.retry_failed
                    else ""
                )
            )
        if gen.skipped:
            parts.append(f"{gen.skipped} were not sent: " + self._budget_reached("", gen))
        return "; ".join(parts) + " (finished answers are replayed free)."

    def _budget_reached(self, when: str, gen: BudgetedGenerator) -> str:
        from textbookgen.plan import usd

        b, (spent, out) = self.recipe.budget, gen.spent()
        if (gen.stop_note or "").startswith("max_output_tokens"):
            what = f"budget.max_output_tokens {b.max_output_tokens:,} ({out:,} output tokens paid so far)"
        else:
            what = f"budget.max_cost_usd {usd(b.max_cost_usd or 0)} (${spent:,.4f} spent so far)"
        return (
            f"{what}, a budget of the whole build (taxonomy growth and documents, every run in "
            f"{_rel(self.out)}), was reached{' ' + when if when else ''}; every answer is kept: raise it and "
            "rerun to go on"
        )

    def stage_curate(self, docs: pl.LazyFrame, docs_hash: str) -> tuple[pl.LazyFrame, str]:
        """Curate documents.parquet (`docs`, its scan, as stage_generate wrote it) a chunk at a time
        (`curate_out_of_core`), as `curate` would the frame: its working memory follows a chunk, not the
        corpus. Returns a scan of curated.parquet, as curation wrote it."""
        r = self.recipe
        cfg = r.resolved_curation()
        input_hash = _hash(
            {
                "docs": docs_hash,
                "curation": cfg.model_dump(mode="json"),
                "benchmarks": [
                    path_hash(Path(b.path)) for b in cfg.decontamination.benchmarks if Path(b.path).exists()
                ],
            }
        )
        out_path = self.out / "curated.parquet"
        st = self._cached("curate", input_hash)
        if st:
            self._skip("curate", st)
            self.manifest["curation"] = st["stats"]
            return pl.scan_parquet(out_path), st["output_hash"]
        t0 = self._begin("curate")
        bench = self.benchmark_texts()
        seeded = cfg.seed_copy.enabled and r.web_samples is not None
        n_docs = row_count(docs)
        try:
            with self.open_seed_extracts() if seeded else nullcontext() as seeds:
                stats = self._curate(docs, n_docs, out_path, bench, seeds)
        finally:  # each curate writes its own copy, also after a failure or Ctrl-C
            (self.meta_dir / SEED_EXTRACTS).unlink(missing_ok=True)
        self._record("curate", input_hash, [out_path], stats, self._done("curate", t0))
        self.manifest["curation"] = stats
        curated_scan = pl.scan_parquet(out_path)
        self.console.print(f"   kept {row_count(curated_scan):,} of {n_docs:,} documents")
        return curated_scan, self.state["curate"]["output_hash"]

    def _curate(self, docs: pl.LazyFrame, n_docs: int, out_path: Path, bench: ItemTexts | None,
                seeds: Mapping[str, str] | None) -> dict:
        """Write curated.parquet from documents.parquet a chunk at a time; where nothing streams (no documents,
        no stage on) the frame is curated whole. Returns the curation's stats."""
        import shutil

        from textbookgen.curation import curate
        from textbookgen.curation.groups import BUILD_ELSEWHERE, curate_out_of_core
        from textbookgen.curation.stream import GROUPS, STORE, run_in

        cfg, work = self.recipe.resolved_curation(), self.meta_dir / "curation"
        stats = curate_out_of_core(self.out / "documents.parquet", out_path, cfg, work, bench, seeds) \
            if n_docs else None
        if stats is None:
            with run_in(work, BUILD_ELSEWHERE):  # a build on the same output at once is refused, not cut short
                for kept in (GROUPS, STORE):  # a killed streamed curate's copies of the corpus: none resumes them
                    shutil.rmtree(work / kept, ignore_errors=True)
                curated, stats = curate(docs.collect(), cfg, workdir=work, benchmark_texts=bench, seed_texts=seeds)
            write_rows([curated], out_path, curated.schema)
        else:  # rewritten as a frame curated whole is, so its hash (the dataset stage's key) is the same either way
            rewrite_parquet(out_path)
        return stats

    def open_seed_extracts(self) -> SeedExtracts:
        """The web extracts the documents were seeded with, by id, for the seed-copy check: read from
        the prompts that carried them (each prompt's provenance holds its extract's text), so no web
        source is read again, into `.build/seed_extracts.sqlite` a row group of prompts at a time (as a
        dict they would grow with the corpus: up to one extract of 1-3k characters per document). An
        extract's id is a hash of its text, so the documents' hash (part of the curate stage's input hash)
        covers these texts too. Only the extracts the documents name are kept."""
        from textbookgen.curation.seed_copy import SeedExtracts

        ids = (i for i in column_values(self.out / "documents.parquet", "seed_extract_id") if i is not None)
        return SeedExtracts.write(self.meta_dir / SEED_EXTRACTS, self._prompt_extracts(), ids)

    def _prompt_extracts(self) -> Iterator[tuple[str, str]]:
        """(extract id, text) of each seeded prompt in prompts.parquet, a row group at a time."""
        with parquet_file(self.out / "prompts.parquet") as f:
            for batch in f.iter_batches(columns=["seed_extract_id", "provenance"], batch_size=ROW_GROUP_ROWS):
                rows = (
                    pl.DataFrame(batch)
                    .filter(pl.col("seed_extract_id").is_not_null())
                    .select("seed_extract_id", pl.col("provenance").str.json_path_match("$.variables.web_extract"))
                    .drop_nulls()
                )
                yield from rows.iter_rows()

    def stage_dataset(self, curated: pl.LazyFrame, curated_hash: str) -> None:
        """The Hub dataset's shards, written from the scan of curated.parquet one shard at a time."""
        from textbookgen.dataset import write_dataset

        input_hash = _hash({"curated": curated_hash})
        data_dir = self.out / "dataset" / "data"
        st = self._cached("dataset", input_hash)
        if st:
            self._skip("dataset", st)
            return
        t0 = self._begin("dataset")
        write_dataset(curated, self.out / "dataset", split=SPLIT)
        self._record("dataset", input_hash, [data_dir], {"rows": row_count(curated)}, self._done("dataset", t0))

    def stage_card(self) -> None:
        from textbookgen.card import card_template_of, render_card

        r = self.recipe
        template = card_template_of(r)
        if template is None:
            self.console.print("   note: no card_template in the recipe and this install lacks datasets_cards/_base.md "
                               "(reinstall textbookgen): no dataset card written")
            return
        t0 = self._begin("card")
        # What this run did (ran/skipped) stays out of the published copy: an unchanged build re-renders
        # the same card, so a re-push makes no commit.
        published = json.loads(
            json.dumps({k: v for k, v in self.manifest.items() if k != "stages"}, sort_keys=True, default=str)
        )  # same order fresh or from state
        if "curation" in self.manifest:  # the card lists the stages in the order they ran (as state.json keeps them)
            published["curation"] = json.loads(json.dumps(self.manifest["curation"], default=str))
        readme = render_card(self.out / "dataset", template, r, published, built=[SPLIT])  # not a split added by hand
        self._done("card", t0)
        self.console.print(f"   {readme}")

    def stage_push(self) -> None:
        r = self.recipe
        if not self.push:
            self.stage_status["push"] = "off"
            return
        if not r.hub.repo_id:
            raise BuildError("push: the recipe has no hub.repo_id")
        if self.unfinished and not self.push_incomplete:  # a partial dataset is published only when asked
            self.stage_status["push"] = "held"
            self.console.print(f"[yellow]>> push: held, the dataset is incomplete (not pushed to {r.hub.repo_id})")
            return
        from textbookgen.hub import push

        t0 = self._begin("push")
        url = push(
            self.out / "dataset", r.hub.repo_id, private=r.hub.private, endpoint=os.environ.get("HF_ENDPOINT")
        )
        self._done("push", t0)
        self.manifest["hub"] = {"repo_id": r.hub.repo_id, "commit_url": url}
        self.console.print(f"   pushed: {url}")

    # -- manifest and plan --
    def _base_manifest(self, tax: Taxonomy, prompts: pl.LazyFrame) -> None:
        """The manifest's build-wide entries; the prompts' from their scan, a few columns at a time."""
        from textbookgen.card import published_paths
        from textbookgen.plan import PLAN_WINDOW

        r = self.recipe
        templates = {e.template: load_template(e.template, r.base_dir) for e in r.mix}
        names = published_paths(r)  # a file's key as recipe.yaml names it: two files of one stem stay apart
        count, nulls = _prompt_counts(prompts)
        self.manifest.update(
            {
                "recipe": r.name,
                "recipe_version": r.version,
                "recipe_hash": r.hash,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "provider": r.provider.name,
                "api": "batch" if r.provider.batch else "live",
                "model": r.model,
                "prices": r.model_prices(),  # USD per 1M tokens the costs are counted at (batch: half)
                "seed": r.seed,
                "seeds": {"recipe": r.seed, "request_seed": "(seed * 1000003 + prompt key) mod (2^31 - 1)"},
                "sampling": r.sampling.model_dump(mode="json"),
                "taxonomy": {
                    "source": r.taxonomy.source,
                    "topics": len(tax),
                    "leaves": len(tax.leaves()),
                    "depth": tax.depth(),
                    "hash": tax.content_hash(),
                    "grown_to": r.taxonomy.grow.target if self._grows(tax) else None,
                },
                "templates": {names.get(ref, t.name): t.hash for ref, t in templates.items()},
                "web_samples": self._web_stats,
                "prompts": {
                    "count": count,
                    "with_web_extract": count - int(nulls),
                    "prompt_coverage": asdict(tax.coverage(
                        t for w in prompt_windows(prompts.select("topic_id"), PLAN_WINDOW) for t in w["topic_id"]
                    )),
                    "diversity": prompt_diversity(prompts),
                },
                "versions": package_versions(),
            }
        )

    def _grows(self, tax: Taxonomy) -> bool:
        """Whether this build grows its taxonomy (a plan: would grow `tax`, the roots): a `grow.target` the roots
        already meet grows nothing, and the card must not say the model grew them."""
        grow = self.recipe.taxonomy.grow
        stats = self.state.get("taxonomy", {}).get("stats")
        if stats:
            return grow is not None and "grow" in stats
        return self.recipe.taxonomy.grows(len(tax.leaves()))

    def _finish_manifest(self) -> None:
        if "finished_at" in self.state.get("generate", {}):
            self.manifest["created_at"] = self.state["generate"]["finished_at"]  # stable across reruns
        self.manifest["timings"] = dict(self.timings)
        self.manifest["stages"] = dict(self.stage_status)
        from textbookgen.engine import spent

        prices = self.recipe.price_table()  # as the runs priced their tokens billed at no price
        summaries = {stage: journal_summary(p, prices) for stage, p in self.journals().items()}
        # what budget.max_cost_usd covers: every journal of the output folder, abandoned attempts at worst case
        cost = {stage: spent(s).usd if s else 0.0 for stage, s in summaries.items()}
        self.manifest["build_cost_usd"] = {**cost, "total": sum(cost.values())}
        if summaries["generate"]:
            # the journal's own path stays on this machine: the manifest and summary are published
            self.manifest["journal_summary"] = {**summaries["generate"], "path": self.journals()["generate"].name}
        if self.notes:
            self.manifest["notes"] = list(self.notes)

    def how_to_run(self, can_call: bool) -> str:
        """The command that runs this build for real, with its options in every form it gives (a copy without
        them builds another recipe: the shipped samples, into the shipped output folder)."""
        r = self.recipe
        path = shlex.quote(_rel(r.path)) if r.path else "RECIPE"  # a path with a space is one argument
        command = f"textbookgen build {path}{f' {self.options}' if self.options else ''}"
        if can_call:
            return command
        # a served model has no list price, and a dollar budget refuses a model without one: 0,0 is a free server
        free = " --price '<served model>=0,0'" if r.budget.max_cost_usd is not None else ""
        return (
            f"export {r.provider.key_env}=<your key> && {command}\n"
            f"  (or use a server of your own: {command} --set provider.name=openai-compatible "
            f"--set provider.base_url=http://127.0.0.1:8000/v1 --set 'model=<served model>'{free})"
        )

    def _plan(
        self, tax: Taxonomy, prompts: pl.LazyFrame, grow_plan: dict[str, int] | None, can_call: bool
    ) -> BuildResult:
        from textbookgen.plan import journal_states, make_plan, print_plan
        from textbookgen.templates import builtin_templates

        expected = {n: t.expected_output_tokens for n, t in builtin_templates().items()}
        wc = self.recipe.web_samples
        missing_web = (0, 0)
        count, nulls = _prompt_counts(prompts)
        if wc is not None and count and nulls == count:
            # the source was unreachable: count the extracts the real build will add to the prompts
            scripts = wc.language_filter.scripts if wc.language_filter else None
            missing_web = _unread_extract_tokens(count * wc.share, wc.extract_chars, self.recipe.language, scripts)
            self.notes.append(
                f"input tokens include ~{missing_web[0]:,} for the web extracts this plan could not load "
                f"({self.recipe.language} text)."
            )
        self._finish_manifest()
        journal = self.journals()["generate"]
        # what is paid for already, where these prompts are the ones the build sends (no growth or extracts due)
        states = (
            journal_states(prompts, self.recipe, journal, retry_failed=self.retry_failed)
            if journal.is_file() and not grow_plan and not missing_web[0]
            else None
        )
        plan = make_plan(
            prompts,
            self.recipe,
            n_leaves=len(tax.leaves()),
            expected_tokens=expected,
            grow=grow_plan,
            notes=self.notes,
            extra_input_tokens=missing_web,
            spent_usd=self.manifest["build_cost_usd"]["total"],
            journal=states,
            diversity=self.manifest["prompts"]["diversity"],
        )
        _write_json(plan.to_dict(), self.out / "plan.json")
        print_plan(plan, how_to_run=self.how_to_run(can_call))
        self.console.print(
            f"Prompts written to {_rel(self.out / 'prompts.parquet')}; plan to "
            f"{_rel(self.out / 'plan.json')}."
        )
        for s in STAGES[2:]:
            self.stage_status.setdefault(s, "planned")
        return BuildResult(self.out, self.manifest, planned=True, plan=plan, stages=dict(self.stage_status))


def build(
    recipe: Recipe,
    *,
    plan_only: bool = False,
    push: bool | None = None,
    progress: bool = True,
    console: Any = None,
    retry_failed: bool = False,
    push_incomplete: bool | None = None,
) -> BuildResult:
    """Run a recipe's build (see module docstring). `retry_failed`: re-send the requests the journals hold
    as refused for good (400, refusal, content filter) instead of replaying the refusal. A build whose
    requests did not all get an answer (`BuildResult.unfinished`) writes its dataset and card (which says
    so) but pushes it only with `push_incomplete` (default: the recipe's `hub.push_incomplete`)."""
    return Build(
        recipe,
        plan_only=plan_only,
        push=push,
        progress=progress,
        console=console,
        retry_failed=retry_failed,
        push_incomplete=push_incomplete,
    ).run()
