"""Plans: what a build will ask for and what it will cost, before a single paid token.

From the rendered prompts: counts per topic and template, how diverse the prompts are (exact
duplicates, prompts repeating a topic x mix cell, distinct word 4-grams), input tokens (no tokenizer:
characters weighed by script, `input_token_estimates`, expected and at most), expected output tokens
(each template's typical answer length: an expectation) and the most output max_tokens allows (an upper
bound), the cost under the price table for the recipe's model and a few alternatives, and the wall time
the rate limits and concurrency allow. Calls an output folder's journals answer already are free and not
counted again (`journal_states`, `estimate_grow_left`).
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from rich.markup import escape

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from textbookgen.recipe import GrowConfig
    from textbookgen.taxonomy import Taxonomy

# Models compared in every plan (those the price table knows), beside the recipe's own.
ALTERNATIVES = (
    "gpt-4o-mini",
    "gpt-4.1-nano",
    "gpt-5-mini",
    "claude-haiku-4-5",
    "gpt-4.1",
    "claude-sonnet-4-5",
)
DECODE_TOKENS_PER_S = 60.0  # typical hosted-API streaming speed, for the concurrency-bound time
FIRST_TOKEN_S = 1.0
NGRAM_SAMPLE = 20_000  # prompts read for the distinct 4-gram ratio (the first ones: a build's prefix)
GROWTH_SAMPLE = 2_000  # the plan's first prompts (roots) against a stand-in grown tree's (`grown_prompt_tokens`)
PLAN_WINDOW = 100_000  # prompts a plan reads at a time (from prompts.parquet's scan): its memory follows this window
# Input tokens a character costs, by script: (name, regex class, expected, at most). No model tokenizer is loaded
# (tiktoken is not a dependency). At most: GPT-2's byte-level BPE, measured on prose of each script and rounded
# up; its 50K mostly-English vocabulary splits other scripts into more pieces than the providers' 100K-200K ones
# (and no byte-level BPE gives more tokens than UTF-8 bytes: 3 for a CJK, Hangul or Indic character). Expected:
# 4 characters a token for English (15% over GPT-2 on prompts), about half GPT-2's rate for other scripts.
# Characters in none of these (emoji, typographic quotes, symbols) count 1 expected, 2 at most.
SCRIPTS = (
    ("latin", "[A-Za-z ]", 0.25, 0.3),  # GPT-2: 0.22-0.25 on prompts and English prose
    ("ascii", "[\\x00-\\x1f!-@\\[-`{-\\x7f]", 0.25, 1.0),  # digits, punctuation, newlines: tables, lists, code
    ("accented", "[\u00c0-\u024f\u1e00-\u1eff]", 0.5, 1.0),  # é, ß, ệ (Vietnamese)
    ("cjk", "[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
     "\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f]", 1.0, 2.2),  # GPT-2: Chinese 2.10, Japanese 1.53
    ("hangul", "[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]", 1.3, 3.0),  # GPT-2: Korean syllables 2.68
    ("indic", "[\u0900-\u0fff\u1000-\u109f\u1780-\u17ff]", 1.0, 2.2),  # GPT-2: Hindi 1.91, Thai 2.00
    # GPT-2: Russian 1.19, Greek 1.28, Hebrew 1.25, Arabic 1.09
    ("alphabet", "[\u0370-\u08ff\u10a0-\u10ff\u1200-\u139f]", 0.6, 1.4),
)
OTHER_CHAR = (1.0, 2.0)
# the SCRIPTS row of each script a language is written in (websamples' names), for text the plan cannot read
_SCRIPT_ROW = {"Latin": "latin", "Han": "cjk", "Kana": "cjk", "Hangul": "hangul",
               **dict.fromkeys(("Cyrillic", "Arabic", "Greek", "Hebrew", "Georgian", "Armenian", "Ethiopic"), "alphabet"),
               **dict.fromkeys(("Devanagari", "Bengali", "Thai", "Tamil", "Telugu", "Kannada", "Malayalam", "Gujarati",
                                "Gurmukhi", "Khmer", "Lao", "Myanmar", "Sinhala"), "indic")}
TOKEN_BASIS = (
    "no tokenizer: characters weighed by script, English at 4 characters a token (at most 3.3, and a token for "
    "each digit or punctuation mark), Chinese and Japanese at 1 token a character (at most 2.2), Korean 1.3 (3), "
    "Hindi or Thai 1 (2.2), Russian, Greek or Arabic 0.6 (1.4); the 'at most' rates are GPT-2 BPE's, rounded up"
)
MIX_CELL = ("topic_id", "template", "audience", "style", "format")
# the prompts' columns a plan's figures read (`make_plan`): not their provenance, as large as the prompts
PLAN_COLUMNS = ("prompt", "system", "template", "topic_path", "audience", "max_tokens", "seed_extract_id")
# What the documents stage does with a prompt, given the output folder's journal (`journal_states`)
JOURNAL_STATES = ("answered", "refused", "batch", "new")
_SQL_VARS = 900  # stay under SQLite's bound-parameter limit


@dataclass
class ModelEstimate:
    model: str
    cost_usd: float
    cost_usd_max: float
    priced: bool


@dataclass
class Plan:
    """A build's size, tokens, cost and time, as printed by `textbookgen build --plan`."""

    recipe: str
    model: str
    provider: str
    n_prompts: int
    n_leaves: int
    topics_used: int
    per_template: dict[str, int]
    per_audience: dict[str, int]
    per_subject: dict[str, int]
    top_topics: list[tuple[str, int]]
    with_web_extract: int
    input_tokens: int  # expected; `input_tokens_max` at most (`input_token_estimates`)
    output_tokens_expected: int
    output_tokens_max: int
    estimates: list[ModelEstimate]
    time_s: float
    time_basis: str
    grow: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    batch: bool = False  # documents through the provider's batch API: half price, within 24 h
    budget_usd: float | None = None  # budget.max_cost_usd: for the whole build, growth and documents
    spent_usd: float = 0.0  # already paid in the output folder's journals, which the budget counts
    diversity: dict[str, Any] = field(default_factory=dict)  # prompt_diversity(prompts)
    # what the output folder's journal answers already: prompts per JOURNAL_STATES, the new ones' cost
    journal: dict[str, Any] | None = None
    input_tokens_max: int = 0  # the input at most (SCRIPTS' upper rates), which the worst case is priced at

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_time(
    n_requests: int,
    input_tokens: int,
    output_tokens: int,
    *,
    rpm: int | None,
    input_tpm: int | None,
    output_tpm: int | None,
    concurrency: int,
    tpm: int | None = None,
) -> tuple[float, str]:
    """Seconds for the run: the slowest of the rate limits and the concurrency bound (whole waves of
    `concurrency` requests: a run of 3 requests still takes one request's latency)."""
    per_request = FIRST_TOKEN_S + (output_tokens / max(n_requests, 1)) / DECODE_TOKENS_PER_S
    bounds = {
        f"concurrency {concurrency} x ~{per_request:.0f} s/request": math.ceil(n_requests / concurrency)
        * per_request
    }
    if rpm:
        bounds[f"{rpm} requests/min"] = 60.0 * n_requests / rpm
    if input_tpm:
        bounds[f"{input_tpm} input tokens/min"] = 60.0 * input_tokens / input_tpm
    if output_tpm:
        bounds[f"{output_tpm} output tokens/min"] = 60.0 * output_tokens / output_tpm
    if tpm:
        bounds[f"{tpm} tokens/min"] = 60.0 * (input_tokens + output_tokens) / tpm
    basis, seconds = max(bounds.items(), key=lambda kv: kv[1])
    return seconds, basis


def language_rates(language: str, scripts: Sequence[str] | None = None) -> tuple[float, float]:
    """Input tokens a character of `language`'s prose costs (expected, at most): the SCRIPTS row of the script it is
    written in (`scripts`, else the language's by name; the first, for Japanese and Korean). A language of no known
    script is expected at English's rate and bounded by the costliest script's. For text the plan could not read,
    such as the extracts of a web source it could not reach: a Chinese extract costs four times an English one."""
    from textbookgen.websamples import language_scripts

    known = scripts or language_scripts(language)
    if not known:
        return SCRIPTS[0][2], max(most for *_, most in SCRIPTS)
    row = _SCRIPT_ROW.get(known[0], "latin")
    return next((expected, most) for name, _, expected, most in SCRIPTS if name == row)


def input_token_estimates(texts: pl.Series, messages: int = 1) -> tuple[pl.Series, pl.Series]:
    """Input tokens of each request text (expected, at most): its characters weighed by script (`SCRIPTS`), plus
    the engine's overhead for `messages` messages. 4 characters a token, the engine's own estimate, is right for
    English but a quarter to a ninth of what Chinese, Japanese or Korean text costs."""
    text = pl.col("t").fill_null("")
    counts = pl.DataFrame({"t": texts}, schema={"t": pl.String}).select(
        text.str.len_chars().cast(pl.Int64).alias("n"),
        *[text.str.count_matches(rx).cast(pl.Int64).alias(name) for name, rx, _, _ in SCRIPTS],
    )
    other = counts["n"] - counts.select([name for name, *_ in SCRIPTS]).sum_horizontal()
    overhead = 4 * messages + 3
    result = []
    for col, fallback in ((2, OTHER_CHAR[0]), (3, OTHER_CHAR[1])):
        tokens = other * fallback
        for script in SCRIPTS:
            tokens = tokens + counts[script[0]] * script[col]
        result.append((tokens.ceil() + overhead).cast(pl.Int64))
    return result[0], result[1]


def _request_tokens(prompts: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """`input_token_estimates` of the document requests: the system prompt and the prompt, one message."""
    texts = prompts.select(pl.concat_str([pl.col("system").fill_null(""), pl.col("prompt")]))
    return input_token_estimates(texts.to_series())


def prompt_diversity(prompts: pl.DataFrame | pl.LazyFrame) -> dict[str, Any]:
    """How varied the prompts are, the worry behind Cosmopedia's audience/style/seed permutations:
    `duplicate_prompts`, prompts whose exact text came earlier (each is a second request for the same
    document); `repeated_cells`, prompts whose topic x template x audience x style x format came earlier
    (told apart only by a web extract or the story words: near-duplicate documents); `distinct_4grams`,
    distinct word 4-grams / all 4-grams over the first NGRAM_SAMPLE prompts (lower is more repetitive);
    and the fewest and most prompts a sampled topic got. Read PLAN_WINDOW prompts at a time: the texts and
    cells are counted by their 64-bit hashes (8 bytes a prompt; two distinct ones share a hash with odds
    ~N^2 / 2^65, 1e-5 at 20M prompts, and then count as one)."""
    from textbookgen.build import prompt_windows

    lf = prompts.lazy()
    n, texts, cells, per_topic = 0, [], [], pl.DataFrame(schema={"topic_id": pl.String, "len": pl.Int64})
    for window in prompt_windows(lf.select("prompt", *MIX_CELL), PLAN_WINDOW):
        n += window.height
        texts.append(window["prompt"].hash())
        cells.append(window.select(pl.struct(MIX_CELL).hash()).to_series())
        per_topic = _summed(per_topic, window.group_by("topic_id").len(), "topic_id")
    if not n:
        return {}
    dup = n - pl.concat(texts).n_unique()
    repeated = n - pl.concat(cells).n_unique()
    seen: set[tuple[str, ...]] = set()  # prompts share their template's words: few distinct grams to keep
    total = 0
    for text in lf.select("prompt").head(NGRAM_SAMPLE).collect()["prompt"].to_list():
        words = text.lower().split()
        grams = list(zip(words, words[1:], words[2:], words[3:], strict=False))
        total += len(grams)
        seen.update(grams)
    return {
        "duplicate_prompts": dup,
        "duplicate_prompt_rate": dup / n,
        "repeated_cells": repeated,
        "repeated_cell_rate": repeated / n,
        "distinct_4grams": len(seen) / total if total else 0.0,
        "ngram_sample": min(n, NGRAM_SAMPLE),
        "per_topic_min": int(per_topic["len"].min()),
        "per_topic_max": int(per_topic["len"].max()),
    }


def _summed(total: pl.DataFrame, counts: pl.DataFrame, key: str) -> pl.DataFrame:
    """Two tables of counts (`key`, `len`) as one, each key's counts added: a window's `group_by(key).len()` into
    the running total."""
    both = pl.concat([total.cast({"len": pl.Int64}), counts.cast({"len": pl.Int64})])
    return both.group_by(key, maintain_order=True).agg(pl.col("len").sum())


@dataclass
class _Totals:
    """What a plan adds up over the prompts, a window at a time (`add`): counts, tokens, each column's counts
    (`groups`: key, len), the requests over the dollar budget at worst, and the journal's states and the new
    prompts' tokens."""

    n: int = 0
    input_tokens: int = 0
    input_tokens_max: int = 0
    output_expected: int = 0
    output_max: int = 0
    with_web_extract: int = 0
    groups: dict[str, pl.DataFrame] = field(default_factory=dict)
    over_budget: int = 0
    worst_usd: float = 0.0
    states: dict[str, int] = field(default_factory=lambda: dict.fromkeys(JOURNAL_STATES, 0))
    new: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # input expected and most, output expected and most

    def add(self, window: pl.DataFrame, expected_tokens: dict[str, int],
            worst: tuple[float, float, float, float] | None, states: list[str] | None) -> None:
        """One window of prompts; `worst`: the documents' price factor (batch: half), the model's input and output
        price and the budget (`_unaffordable`), None without a dollar budget; `states`: the window's
        `journal_states`."""
        tokens, exp = _request_tokens(window), _expected_output(window, expected_tokens)
        self.n += window.height
        self.input_tokens += int(tokens[0].sum())
        self.input_tokens_max += int(tokens[1].sum())
        self.output_expected += int(exp.sum())
        self.output_max += int(window["max_tokens"].sum())
        self.with_web_extract += int(window["seed_extract_id"].is_not_null().sum())
        subjects = window.with_columns(pl.col("topic_path").str.split(" > ").list.first().alias("s"))
        for col in ("topic_path", "template", "audience", "s"):
            counts = subjects.group_by(col).len()
            self.groups[col] = _summed(self.groups[col], counts, col) if col in self.groups else counts
        if worst is not None:
            docs, price_in, price_out, budget = worst
            cost = docs * (tokens[0] * price_in + window["max_tokens"] * price_out) / 1e6
            self.over_budget += int((cost > budget).sum())
            self.worst_usd = max(self.worst_usd, float(cost.max()))
        if states is not None:
            new = pl.Series(states, dtype=pl.String) == "new"
            for i, values in enumerate((tokens[0], tokens[1], exp, window["max_tokens"])):
                self.new[i] += int(values.filter(new).sum())
            for state in states:
                self.states[state] += 1

    def counts(self, col: str) -> pl.DataFrame:
        """`col`'s counts, most first (then by name)."""
        g = self.groups.get(col, pl.DataFrame(schema={col: pl.String, "len": pl.Int64}))
        return g.sort(["len", col], descending=[True, False])


def make_plan(
    prompts: pl.DataFrame | pl.LazyFrame,
    recipe: Any,
    *,
    n_leaves: int,
    expected_tokens: dict[str, int],
    grow: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    extra_input_tokens: tuple[int, int] = (0, 0),
    spent_usd: float = 0.0,
    journal: list[str] | None = None,
    diversity: dict[str, Any] | None = None,
) -> Plan:
    """`prompts` is the prompts stage's table (columns prompt, template, topic_path, audience,
    max_tokens, seed_extract_id, system; its own estimate input_tokens_est, 4 characters a token, is not read:
    `input_token_estimates` weighs each script), a frame or prompts.parquet's scan, read PLAN_WINDOW prompts at a
    time. `extra_input_tokens`: prompt text the table lacks (web extracts of a source the plan could not reach),
    expected and at most. `spent_usd`: what the output folder's journals
    already hold as paid (the budget counts it). `journal`: each prompt's `journal_states`, where the output
    folder has a journal: the plan then says what is answered already and what the rest costs. `diversity`: the
    prompts' `prompt_diversity` where the caller has it (a build's manifest), instead of another pass over them."""
    from textbookgen.build import prompt_windows
    from textbookgen.pricing import BATCH_DISCOUNT, PRICES, estimate_cost, is_priced, price_of

    docs = BATCH_DISCOUNT if recipe.provider.batch else 1.0  # the documents go through the batch API
    budget = recipe.budget.max_cost_usd
    worst = (docs, *price_of(recipe.model, recipe.price_table()), budget) if budget is not None else None
    t = _Totals()
    for window in prompt_windows(prompts.lazy().select(PLAN_COLUMNS), PLAN_WINDOW):
        t.add(window, expected_tokens, worst, journal[t.n : t.n + window.height] if journal is not None else None)
    n = t.n
    growth = grow or {}
    # prompts drawn from the roots, where the build will draw them from the grown tree (`grown_prompt_tokens`)
    in_tok = int(t.input_tokens + n * growth.get("prompt_input_tokens", 0.0)) + extra_input_tokens[0]
    in_max = int(t.input_tokens_max + n * growth.get("prompt_input_tokens_max", 0.0)) + extra_input_tokens[1]
    out_exp, out_max = t.output_expected, t.output_max
    grow_in = int(growth.get("input_tokens", 0))
    grow_in_max = int(growth.get("input_tokens_max", grow_in))  # estimate_grow's is an English prompt's, over GPT-2's
    grow_out = int(growth.get("output_tokens", 0))
    grow_out_max = int(growth.get("output_tokens_max", grow_out))
    # growth runs on taxonomy.grow.model whichever model writes the documents; unset, on that model
    grow_model = recipe.taxonomy.grow.model if grow else None
    models = [recipe.model, *[m for m in ALTERNATIVES if m != recipe.model and m in PRICES]]
    estimates = []
    table = recipe.price_table()  # the recipe's prices (and --price) over the list prices
    for m in models:
        gm = grow_model or m
        grow_cost = estimate_cost(gm, grow_in, grow_out, table)
        grow_cost_max = estimate_cost(gm, grow_in_max, grow_out_max, table)
        estimates.append(
            ModelEstimate(
                model=m,
                priced=is_priced(m, table),
                cost_usd=docs * estimate_cost(m, in_tok, out_exp, table) + grow_cost,
                cost_usd_max=docs * estimate_cost(m, in_max, out_max, table) + grow_cost_max,
            )
        )
    lim = recipe.limits
    seconds, basis = estimate_time(
        n + int(growth.get("calls", 0)),
        in_tok + grow_in,
        out_exp + grow_out,
        rpm=lim.rpm,
        input_tpm=lim.input_tpm,
        output_tpm=lim.output_tpm,
        concurrency=lim.concurrency,
        tpm=lim.tpm,
    )
    counts = t.counts("topic_path")
    return Plan(
        recipe=recipe.name,
        model=recipe.model,
        provider=recipe.provider.name,
        n_prompts=n,
        n_leaves=n_leaves,
        topics_used=counts.height,
        per_template=_counts(t.counts("template")),
        per_audience=_counts(t.counts("audience")),
        per_subject=_counts(t.counts("s")),
        top_topics=[(r[0], int(r[1])) for r in counts.head(8).iter_rows()],
        with_web_extract=t.with_web_extract,
        input_tokens=in_tok,
        input_tokens_max=in_max,
        output_tokens_expected=out_exp,
        output_tokens_max=out_max,
        estimates=estimates,
        time_s=seconds,
        time_basis=basis,
        grow=grow,
        notes=[*(notes or []), *_unaffordable(t, recipe)],
        batch=recipe.provider.batch,
        budget_usd=recipe.budget.max_cost_usd,
        spent_usd=spent_usd,
        diversity=prompt_diversity(prompts) if diversity is None else diversity,
        journal=_journal_counts(t, recipe) if journal is not None else None,
    )


def _unaffordable(t: _Totals, recipe: Any) -> list[str]:
    """Requests whose worst case (prompt and max_tokens, at the model's price) is over the dollar budget: the
    engine sends requests in order, each once its worst case fits, so the build stops at the first of them and
    can never finish. The recipe refuses a max_tokens whose output alone is over it; a long prompt can tip it.
    The prompt counts at its expected tokens: the engine learns prompt sizes from real usage. `t`: the plan's
    totals, which counted them (`_Totals.add`)."""
    budget = recipe.budget.max_cost_usd
    if budget is None or not t.over_budget:
        return []
    return [f"budget.max_cost_usd {usd(budget)}: {t.over_budget:,} request(s) cost more than that at worst (prompt "
            f"and max_tokens at {recipe.model}'s price, up to {usd(t.worst_usd)}), so the build would stop at "
            "the first of them and never finish; lower max_tokens or raise the budget"]


def _expected_output(prompts: pl.DataFrame, expected_tokens: dict[str, int]) -> pl.Series:
    """Each prompt's expected answer length: its template's typical one, within its max_tokens."""
    return prompts.select(
        pl.min_horizontal(
            pl.col("template").replace_strict(expected_tokens, default=800, return_dtype=pl.Int64),
            pl.col("max_tokens"),
        ).alias("e")
    )["e"]


def _journal_counts(t: _Totals, recipe: Any) -> dict[str, Any]:
    """Prompts per journal state, and what the new ones cost at the recipe model's price (expected, most), from
    the plan's totals (`_Totals.add`)."""
    from textbookgen.pricing import BATCH_DISCOUNT, estimate_cost, is_priced

    tin, tin_max, out_exp, out_max = t.new
    docs = BATCH_DISCOUNT if recipe.provider.batch else 1.0
    table = recipe.price_table()
    return {
        **t.states,
        "priced": is_priced(recipe.model, table),
        "new_cost_usd": docs * estimate_cost(recipe.model, tin, out_exp, table),
        "new_cost_usd_max": docs * estimate_cost(recipe.model, tin_max, out_max, table),
    }


def journal_states(
    prompts: pl.DataFrame | pl.LazyFrame, recipe: Any, journal: Path, *, retry_failed: bool = False
) -> list[str]:
    """What the documents stage would do with each prompt, read from the output folder's journal (nothing is
    written): "answered" (its answer is replayed, or one the same request got under another max_tokens that
    stopped within this one is reused: free), "refused" (a refusal for good is replayed, free and without a
    document, unless `retry_failed`), "batch" (in a batch already submitted: paid, the build collects it) or
    "new" (sent and paid), the engine's rules (`engine.replays`, `engine.fits`). PLAN_WINDOW prompts' requests at a
    time (each request's state is its own), the prompts' provenance not read."""
    from textbookgen.build import document_requests, prompt_windows

    p = recipe.provider.name
    requested = prompts.lazy().drop("provenance", strict=False)  # the one column no request reads
    return [state for window in prompt_windows(requested, PLAN_WINDOW)
            for state, _ in _lookup(journal, p, recipe.model, document_requests(window, recipe), retry_failed)]


def _lookup(
    journal: Path, provider: str, model: str, requests: list[Any], retry_failed: bool, *, text: bool = False
) -> list[tuple[str, dict[str, Any] | None]]:
    """Each request's `journal_states` state, and the journal row that answers it (its status, and with `text`
    its text and finish_reason) where it is "answered" or "refused"."""
    from textbookgen.engine import canonical_request, fits, replays
    from textbookgen.journal import Journal, request_key, reuse_key

    canon = [canonical_request(provider, model, r) for r in requests]
    keys = [request_key(c) for c in canon]
    answer = "text, finish_reason" if text else "text IS NOT NULL AND text != '' AS text"
    with Journal(journal, read_only=True) as j:
        rows = _select(j, f"key, status, error_class, {answer}", "key", list(dict.fromkeys(keys)))
        waiting = {k for b in j.open_batches(provider, model) for k in b["keys"]}
        unanswered = {reuse_key(c) for c, k in zip(canon, keys, strict=True)
                      if k not in rows or not replays(rows[k], retry_failed)}
        try:
            stops = _select(j, f"reuse_key, status, output_tokens, request, {answer}", "reuse_key",
                            list(unanswered), "status = 'ok' AND finish_reason = 'stop' AND reused_from IS NULL",
                            many=True)
        except sqlite3.OperationalError:  # a version-1 journal, read as it is, has no reuse keys
            stops = {}
    found: list[tuple[str, dict[str, Any] | None]] = []
    for c, k in zip(canon, keys, strict=True):
        row = rows.get(k)
        if row is not None and replays(row, retry_failed):
            found.append(("refused" if row["status"] == "failed" else "answered", row))
        elif k in waiting:
            found.append(("batch", None))
        else:
            reused = next((s for s in stops.get(reuse_key(c), ()) if fits(s, c["max_tokens"])), None)
            found.append(("new", None) if reused is None else ("answered", reused))
    return found


def _schema_tokens(req: Any, provider: str, model: str) -> int:
    """The input tokens a request's structured-output schema adds to its prompt on `provider`'s `model`, as the
    engine estimates them: the schema, and on Anthropic the tool-use system prompt it brings (313 tokens a call)."""
    from dataclasses import replace

    from textbookgen.engine import estimate_input_tokens

    plain = replace(req, response_format=None)
    return estimate_input_tokens(req, provider, model) - estimate_input_tokens(plain, provider, model)


class _GrowReplay:
    """A stand-in for the engine under `taxonomy.grow`, sending nothing: what a grow journal holds is answered
    from it (free), any other call gets `per_call` made-up names (as if the call paid for them) and is counted
    at its prompt's tokens, the answer length `estimate_grow` expects, and max_tokens at most."""

    def __init__(self, journal: Path, provider: str, model: str, per_call: int, retry_failed: bool) -> None:
        self.journal, self.provider, self.model = journal, provider, model
        self.per_call, self.retry_failed = per_call, retry_failed
        self.answered = self.calls = self.input_tokens = self.input_tokens_max = self.output_tokens_max = 0

    def run(self, requests: list[Any]) -> list[Any]:
        from textbookgen.engine import ChatResponse

        found = (_lookup(self.journal, self.provider, self.model, requests, self.retry_failed, text=True)
                 if _holds_requests(self.journal) else [("new", None)] * len(requests))
        new = [r for r, (state, _) in zip(requests, found, strict=True) if state == "new"]
        expected, most = input_token_estimates(pl.Series([r.messages[0]["content"] for r in new], dtype=pl.String))
        schemas = sum(_schema_tokens(r, self.provider, self.model) for r in new)  # as `estimate_grow` counts it
        self.calls += len(new)
        self.input_tokens += int(expected.sum()) + schemas
        self.input_tokens_max += int(most.sum()) + schemas
        self.output_tokens_max += sum(r.max_tokens for r in new)
        self.answered += len(requests) - len(new)
        return [
            ChatResponse(key="", text=row["text"], finish_reason=row["finish_reason"], status=row["status"])
            if row is not None
            else ChatResponse(key="", text=self._names(req), finish_reason="stop", status="ok")
            for req, (_, row) in zip(requests, found, strict=True)
        ]

    def _names(self, req: Any) -> str:
        """`per_call` names no near-duplicate check drops, about as long as grown names are (six words)."""
        import hashlib
        import json

        def name(i: int) -> str:
            digest = hashlib.sha256(f"{req.metadata['topic_id']}/{i}".encode()).digest()
            return " ".join("".join(chr(97 + b % 26) for b in digest[w * 5 : w * 5 + 5]).title() for w in range(6))

        return json.dumps({"subtopics": [name(i) for i in range(self.per_call)]})


def estimate_grow_left(
    roots: Taxonomy, cfg: GrowConfig, journal: Path, *, provider: str, model: str, seed: int,
    prices: Mapping[str, tuple[float, float]] | None = None, retry_failed: bool = False,
) -> dict[str, Any]:
    """`build.estimate_grow` for growth that a journal answers in part (a rerun after a budget stop, a crash or a
    Ctrl-C): `taxonomy.grow` is replayed on a copy of `roots`, grown by `cfg` as the build grows it, the journal
    answering what it holds (`replay_growth`, then `grow_left`)."""
    _, replay = replay_growth(roots, cfg, journal, provider=provider, model=model, seed=seed,
                              retry_failed=retry_failed)
    return grow_left(len(roots.leaves()), cfg, journal, replay, prices)


def grow_left(leaves_before: int, cfg: GrowConfig, journal: Path, replay: _GrowReplay,
              prices: Mapping[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """What a growth `replay` (`replay_growth`) leaves to pay for: `calls` and the tokens are those still to pay
    for, `answered` those the journal answers (free), `paid_usd` what the journal paid (the budget counts it), its
    tokens billed at no price counted at `prices` (the recipe's, --price), as the budget counts them.
    Calls past the journal's answers are counted as `estimate_grow` counts them: each answer brings per_call new
    names."""
    from textbookgen.build import journal_summary
    from textbookgen.engine import spent

    return {
        "leaves_before": leaves_before,
        "target": cfg.target,
        "calls": replay.calls,
        "answered": replay.answered,
        "input_tokens": replay.input_tokens,
        "input_tokens_max": replay.input_tokens_max,
        "output_tokens": replay.calls * (12 * cfg.per_call + 10),  # estimate_grow's answer: ~12 tokens a name
        "output_tokens_max": replay.output_tokens_max,
        "paid_usd": spent(journal_summary(journal, prices)).usd if _holds_requests(journal) else 0.0,
    }


def replay_growth(
    roots: Taxonomy, cfg: GrowConfig, journal: Path, *, provider: str, model: str, seed: int, retry_failed: bool
) -> tuple[Taxonomy, _GrowReplay]:
    """`taxonomy.grow` on a copy of `roots` as the build grows it, answered by `_GrowReplay`: the stand-in tree
    (the journal's names where it holds them, made-up ones elsewhere) and what its calls cost. A plan replays
    once and reads both (`grow_left`, `grown_prompt_tokens`)."""
    import copy

    from textbookgen.taxonomy import grow

    tax = copy.deepcopy(roots)
    replay = _GrowReplay(journal, provider, model, cfg.per_call, retry_failed)
    grow(tax, replay, cfg.target, per_call=cfg.per_call, max_depth=cfg.max_depth, seed=seed,
         temperature=cfg.temperature, max_tokens=cfg.max_tokens, similarity=cfg.similarity)
    return tax, replay


def grown_prompt_tokens(recipe: Any, grown: Taxonomy, roots_prompts: pl.DataFrame | pl.LazyFrame,
                        web: Any) -> dict[str, float]:
    """What a document prompt's input tokens gain, on average (expected and at most), from drawing its topic from
    the grown taxonomy rather than from the roots a plan draws from (a plan grows nothing): a grown name is longer
    than a root's, the root becomes part of its path, and with fewer prompts a topic, fewer run its web-extract
    share over the one asked. Measured on the first GROWTH_SAMPLE prompts of both trees with the same web samples
    `web` (None: topic-only): `roots_prompts`, the plan's prompts (drawn from the roots with the per-topic caps
    lifted: its first rows are the ones a shorter render would give), and `grown`, the stand-in tree
    (`replay_growth`: the grow journal's names where it holds them, made-up names of grown names' length
    elsewhere), rendered under the recipe's caps."""
    from textbookgen.build import render_prompts

    before = _request_tokens(roots_prompts.lazy().head(GROWTH_SAMPLE).collect())
    after = _request_tokens(render_prompts(recipe, grown, web, limit=GROWTH_SAMPLE))
    if not before[0].len() or not after[0].len():
        return {"prompt_input_tokens": 0.0, "prompt_input_tokens_max": 0.0}
    return {"prompt_input_tokens": float(after[0].mean() - before[0].mean()),
            "prompt_input_tokens_max": float(after[1].mean() - before[1].mean())}


def _holds_requests(journal: Path) -> bool:
    """Whether there is a journal to read: an empty file (`touch`ed, or one a run never got to) is none yet."""
    return journal.is_file() and journal.stat().st_size > 0


def _select(
    journal: Any, columns: str, by: str, values: list[str], where: str = "1", *, many: bool = False
) -> dict[str, Any]:
    """Journal rows whose `by` column is one of `values` (a few columns, not the answers' text), as dicts
    keyed by it: one row each, or with `many` a list. The engine's own lookups (`Journal.rows`,
    `natural_stops`) go by requests the journal holds; a plan's new requests are not in it."""
    found: dict[str, Any] = {}
    for start in range(0, len(values), _SQL_VARS):
        chunk = values[start : start + _SQL_VARS]
        cursor = journal.db.execute(
            f"SELECT {columns} FROM requests WHERE {by} IN ({','.join('?' * len(chunk))}) AND {where}", chunk
        )
        names = [d[0] for d in cursor.description]
        for record in cursor:
            row = dict(zip(names, record, strict=True))
            if many:
                found.setdefault(row[by], []).append(row)
            else:
                found[row[by]] = row
    return found


def _counts(g: pl.DataFrame) -> dict[str, int]:
    """A column's counts (`_Totals.counts`: key, len) as a dict, most first."""
    return {str(k): int(v) for k, v in g.iter_rows()}


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def usd(x: float) -> str:
    """Dollars as a user would write them: cents for $1 and up, 4 significant digits below ($0.005)."""
    return f"${x:,.2f}" if x >= 1 else f"${x:.4g}"


def _budget_line(plan: Plan) -> str:
    """What budget.max_cost_usd covers (the whole build), and whether the recipe's model fits in it."""
    assert plan.budget_usd is not None
    line = (
        f"Budget: budget.max_cost_usd {usd(plan.budget_usd)} covers the whole build (taxonomy growth and "
        f"documents, every run in this output folder: ${plan.spent_usd:,.4f} paid there so far); the build "
        "stops sending requests when it is reached."
    )
    own = plan.estimates[0] if plan.estimates else None
    if own is None or not own.priced:
        return line
    j = plan.journal  # with one, what is paid and what the rest should cost, not the whole build from scratch
    grown = (plan.grow or {}).get("paid_usd", 0.0)  # paid growth, which the estimates leave out (free to replay)
    if j and j["priced"]:
        expected = plan.spent_usd + j["new_cost_usd"]
        how = f"${expected:,.2f} (${plan.spent_usd:,.2f} paid, ${j['new_cost_usd']:,.2f} for the rest)"
    elif grown:
        expected = own.cost_usd + grown
        how = f"{usd(expected)} ({usd(grown)} paid for growth, {usd(own.cost_usd)} for the rest)"
    else:
        expected, how = own.cost_usd, f"${own.cost_usd:,.2f}"
    if expected > plan.budget_usd:
        line += f" [yellow]The expected {how} is over it: the build would stop short.[/yellow]"
    return line


def _journal_line(plan: Plan) -> str:
    """How much of the build the output folder's journal answers already, and what the rest should cost."""
    j = plan.journal
    assert j is not None
    line = (
        f"Journal: {j['answered']:,} of {plan.n_prompts:,} prompts already answered in the journal (free), "
        f"{j['new']:,} new, "
    )
    if j["priced"]:
        line += f"{usd(j['new_cost_usd'])} expected for the rest (at most {usd(j['new_cost_usd_max'])})"
    else:
        line += f"$0 expected for the rest ({plan.model} has no price)"
    if j["batch"]:
        line += f"; {j['batch']:,} wait in batches already submitted (paid; the build collects them)"
    if j["refused"]:
        line += (f"; {j['refused']:,} were refused for good, replayed without a document "
                 "(`build --retry-failed` sends them again)")
    return line + "."


def _diversity_line(d: dict[str, Any], grow: dict[str, Any] | None = None) -> str:
    """How varied the plan's prompts are. Where the build grows the taxonomy (`grow`), they are drawn from the
    roots, many to a topic: their repeats are not the build's, drawn from the grown topics, and adding topics is
    no advice to a recipe that grows them; the build's own repeats, where counted (`recipe.forced_repeats` on the
    stand-in grown tree), are."""
    where = (f"Diversity of these prompts, drawn from the {grow['leaves_before']:,} root topics (not the build's, "
             f"drawn from {grow['target']:,} grown topics; its manifest counts its own): " if grow else "Diversity: ")
    line = (
        f"{where}{d['duplicate_prompts']:,} exact duplicate prompts ({d['duplicate_prompt_rate']:.2%}); "
        f"{d['repeated_cells']:,} repeat a topic x template x audience x style x format "
        f"({d['repeated_cell_rate']:.2%}); distinct word 4-grams {d['distinct_4grams']:.1%} "
        f"(first {d['ngram_sample']:,} prompts); {d['per_topic_min']:,}-{d['per_topic_max']:,} prompts per topic used."
    )
    if grow and grow.get("repeated_prompts"):
        line += (f" [yellow]At least {grow['repeated_prompts']:,} of the build's prompts repeat an earlier one word "
                 f"for word (up to {grow['per_topic_max']:,} prompts a grown topic over {grow['mix_cells']:,} mix "
                 "cells, and no web extracts): raise taxonomy.grow.target, add audiences, styles or formats, "
                 "web_samples, or lower samples.[/yellow]")
    elif d["duplicate_prompts"] and not grow:
        line += (" [yellow]Duplicate prompts ask twice for the same document: add topics (taxonomy.grow), "
                 "audiences, styles or formats, web_samples, or lower samples.[/yellow]")
    return line


def print_plan(plan: Plan, console: Any = None, *, how_to_run: str) -> None:
    """Render the plan with rich tables (to stdout: in plan mode the plan is the command's output)."""
    from rich.console import Console
    from rich.table import Table

    from textbookgen.recipe import REASONING_MODELS

    console = console or Console()
    console.print(
        f"\n[bold]Plan for recipe {plan.recipe!r}[/bold]: {plan.n_prompts:,} prompts over "
        f"{plan.topics_used:,} of {plan.n_leaves:,} leaf topics; {plan.with_web_extract:,} seeded "
        f"with a web extract."
    )
    if plan.grow:
        g = plan.grow
        answered = (f" still to pay for; {g['answered']:,} answered by the grow journal (free, "
                    f"{usd(g['paid_usd'])} paid there)") if g.get("answered") else ""
        console.print(
            f"Taxonomy growth: {g['leaves_before']:,} -> {g['target']:,} leaves, about "
            f"{g['calls']:,} LLM calls{answered} (included below)."
        )
    t = Table(title="Prompts per template and audience", show_edge=False)
    t.add_column("template")
    t.add_column("prompts", justify="right")
    for k, v in plan.per_template.items():
        t.add_row(k, f"{v:,}")
    a = Table(show_edge=False)
    a.add_column("audience")
    a.add_column("prompts", justify="right")
    for k, v in plan.per_audience.items():
        a.add_row(k, f"{v:,}")
    sub = Table(title="Prompts per subject", show_edge=False)
    sub.add_column("subject")
    sub.add_column("prompts", justify="right")
    for k, v in list(plan.per_subject.items())[:25]:
        sub.add_row(k, f"{v:,}")
    if len(plan.per_subject) > 25:
        sub.add_row(f"... {len(plan.per_subject) - 25} more", "")
    tt = Table(title="Most sampled topics", show_edge=False)
    tt.add_column("topic")
    tt.add_column("prompts", justify="right")
    for k, v in plan.top_topics:
        tt.add_row(k, f"{v:,}")
    console.print(t, a, sub, tt)
    if plan.diversity:
        console.print(_diversity_line(plan.diversity, plan.grow))
    console.print(
        f"Tokens: ~{plan.input_tokens:,} input (at most {plan.input_tokens_max:,}); "
        f"~{plan.output_tokens_expected:,} output expected (each template's typical answer length), at most "
        f"{plan.output_tokens_max:,} (every answer reaching max_tokens: the upper bound the worst case is priced "
        f"at). Input basis: {TOKEN_BASIS}."
    )
    api = "batch API for the documents: half the list price" if plan.batch else "list prices, standard API"
    c = Table(title=f"Estimated cost ({api})", show_edge=False)
    for col, just in (("model", "left"), ("expected", "right"), ("worst case", "right")):
        c.add_column(col, justify=just)
    thinkers = [e.model for e in plan.estimates if REASONING_MODELS.match(e.model.rsplit("/", 1)[-1])]
    for e in plan.estimates:
        name = f"[bold]{e.model}[/bold] (recipe)" if e.model == plan.model else e.model
        name += " *" if e.model in thinkers else ""
        if e.priced:
            c.add_row(name, f"${e.cost_usd:,.2f}", f"${e.cost_usd_max:,.2f}")
        else:
            c.add_row(name, "no price: counts as $0", "(`prices:` or --price)")
    console.print(c)
    if thinkers:
        console.print("* a reasoning model: its hidden reasoning is billed as output besides the answer, so expect "
                      "more than 'expected' (max_tokens holds both: the worst case still bounds it).")
    if plan.journal is not None:
        console.print(_journal_line(plan))
    if plan.budget_usd is not None:
        console.print(_budget_line(plan))
    if plan.batch:
        console.print("Time: within the providers' 24 h batch window (often an hour or two); live, it would be "
                      f"~{_duration(plan.time_s)} (bound by {plan.time_basis}).")
    else:
        console.print(f"Time: ~{_duration(plan.time_s)} (bound by {plan.time_basis}).")
    for note in plan.notes:
        console.print(f"[yellow]Note:[/yellow] {note}")
    # unwrapped, and not read as markup nor emoji codes: a command broken over lines (inside a quoted path, too),
    # with a `[...]` in it taken for a style or a `:cd:` shown as an emoji is not the command that runs the build
    console.print(f"\n[bold]To run it for real:[/bold] {escape(how_to_run)}", soft_wrap=True, highlight=False,
                  emoji=False)
