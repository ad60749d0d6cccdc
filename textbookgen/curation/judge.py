"""LLM judge: an additive 0-5 educational-value score per document, through the engine.

The rubric is FineWeb-Edu's (Llama-3-70B-Instruct annotations; Yuan et al.'s additive prompt): one
point per criterion met, then "Educational score: <n>". Scores label a sample for the fastText
classifier (`classifier train --labelled ... --min-positive 3`: FineWeb-Edu kept int_score >= 3).
Requests go through `textbookgen.engine.Generator`, so they are journaled (a killed labelling run
resumes without paying twice), rate-limited and budgeted like generation, live or (`batch=True`, `classifier label
--batch`) through the provider's batch API at half price.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import polars as pl
import xxhash

FINEWEB_EDU_PROMPT = """Below is an extract from a web page. Evaluate whether the page has a high educational \
value and could be useful in an educational setting for teaching from primary school to grade school levels \
using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction \
of each criterion:

- Add 1 point if the extract provides some basic information relevant to educational topics, even if it \
includes some irrelevant or non-academic content like advertisements and promotional material.
- Add another point if the extract addresses certain elements pertinent to education but does not align \
closely with educational standards. It might mix educational content with non-educational material, offering \
a superficial overview of potentially useful topics, or presenting information in a disorganized manner and \
incoherent writing style.
- Award a third point if the extract is appropriate for educational use and introduces key concepts relevant \
to school curricula. It is coherent though it may not be comprehensive or could include some extraneous \
information. It may resemble an introductory section of a textbook or a basic tutorial that is suitable for \
learning but has notable limitations like treating concepts that are too complex for grade school students.
- Grant a fourth point if the extract highly relevant and beneficial for educational purposes for a level \
not higher than grade school, exhibiting a clear and consistent writing style. It could be similar to a \
chapter from a textbook or a tutorial, offering substantial educational content, including exercises and \
solutions, with minimal irrelevant information, and the concepts aren't too advanced for grade school \
students. The content is coherent, focused, and valuable for structured learning.
- Bestow a fifth point if the extract is outstanding in its educational value, perfectly suited for teaching \
either at primary school or grade school. It follows detailed reasoning, the writing style is easy to follow \
and offers profound and thorough insights into the subject matter, devoid of any non-educational or complex \
content.

The extract:
{text}

After examining the extract:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Educational score: <total points>\""""

#: "Educational score: n", with what follows the number: a scale ("/5", "out of 10") or decimals
_SCORE = re.compile(r"educational score\s*[:=]?[\s*]*(-?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+))?", re.IGNORECASE)
#: answer tokens: FineWeb-Edu asks for a justification of up to 100 words, then the score
MAX_TOKENS = 256
#: an OpenAI reasoning model's hidden reasoning comes out of the same max_tokens, before any text: at 256 most
#: answers would come back empty, billed
REASONING_MAX_TOKENS = 4096
#: the column beside `label` saying how each document fared; it marks a file of 0-5 judge scores for `classifier train`
JUDGE_STATUS = "judge_status"
#: how many unscored documents the stats show (id, why, the answer's start), to see what the parser missed
UNSCORED_EXAMPLES = 5


def read_score(answer: str | None) -> tuple[int | None, str]:
    """(score, status) of the last "Educational score: n" in an answer: ("ok") an integer 0-5 (3.0 too), "/5" or
    "out of 5" allowed; ("out_of_range") any other number, such as 7, 4.5 or 3/10, which is no 0-5 score and must not
    become one; ("unparsed") none at all (a refusal, JSON, a score in words)."""
    found = _SCORE.findall(answer or "")
    if not found:
        return None, "unparsed"
    value, scale = float(found[-1][0]), found[-1][1]
    if not value.is_integer() or not 0 <= value <= 5 or scale not in ("", "5"):
        return None, "out_of_range"
    return int(value), "ok"


def unscored(resp: Any) -> str | None:
    """The judge's `answer_check` (engine.Generator): why a paid answer gives no 0-5 score ("score_unparsed",
    "score_out_of_range"), None when it gives one, so a judge that ignores the asked format stops a live run early
    (the engine checks no batch answers: a batch is paid as it is submitted)."""
    score, status = read_score(resp.answer)
    return None if score is not None else f"score_{status}"


def parse_score(completion: str | None) -> int | None:
    """The last "Educational score: n" (an integer 0-5) in a completion, or None if there is none."""
    return read_score(completion)[0]


def sampling_for(model: str) -> tuple[float | None, int]:
    """(temperature, max_tokens) for a judge model: 0 and `MAX_TOKENS`, or for OpenAI's reasoning models (gpt-5,
    o-series), which refuse any temperature but their default, None (not sent) and `REASONING_MAX_TOKENS`."""
    from textbookgen.recipe import REASONING_MODELS

    if REASONING_MODELS.match(model.rsplit("/", 1)[-1]):
        return None, REASONING_MAX_TOKENS
    return 0.0, MAX_TOKENS


def sample_rows(texts: pl.Series, n: int, seed: int = 0) -> list[int]:
    """The rows (ascending) of the `n` texts that hash lowest under `seed`. Paid labels stay in the sample: a
    larger `n` keeps every row of a smaller one (their answers are replayed from the journal, so only the new
    rows are paid), the corpus's row order does not matter, and rows added to it displace only those they
    outrank (a random draw of 200 shared 2 rows with the draw of 100 from 100k documents)."""
    ranks = [xxhash.xxh3_64_intdigest(t.encode("utf-8", "surrogatepass"), seed=seed) for t in texts]
    return sorted(sorted(range(len(ranks)), key=ranks.__getitem__)[:n])


class EducationalJudge:
    """Builds one request per document and parses the scores: `score(texts) -> [0..5 | None]`. Gives the generator
    `unscored` as its answer_check unless it has one."""

    def __init__(self, generator: Any, prompt: str = FINEWEB_EDU_PROMPT, max_chars: int = 2000,
                 max_tokens: int = MAX_TOKENS, temperature: float | None = 0.0) -> None:
        if "{text}" not in prompt:
            raise ValueError("judge prompt must contain {text}")
        self.generator, self.prompt = generator, prompt
        if getattr(generator, "answer_check", None) is None:
            generator.answer_check = unscored
        self.max_chars, self.max_tokens, self.temperature = max_chars, max_tokens, temperature

    def requests(self, texts: list[str], ids: list[str] | None = None) -> list[Any]:
        from textbookgen.engine import ChatRequest

        ids = ids or [str(i) for i in range(len(texts))]
        return [ChatRequest(messages=[{"role": "user", "content": self.prompt.replace("{text}", t[: self.max_chars])}],
                            max_tokens=self.max_tokens, temperature=self.temperature,
                            metadata={"purpose": "judge", "doc_id": i})
                for t, i in zip(texts, ids, strict=True)]

    def judge(self, texts: list[str], ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Per document: score (None when the call failed or the answer has no 0-5 score), status (see
        `judge_status`) and rationale (a failure's error), both read past a leading reasoning block (its guesses
        are no answer)."""
        out = []
        for resp in self.generator.run(self.requests(texts, ids)):
            answered = resp.status in ("ok", "truncated")
            score, status = read_score(resp.answer) if answered else (None, "")
            out.append({"score": score, "status": judge_status(resp.status, resp.error_class, status),
                        "rationale": (resp.answer if answered else resp.error or "")[:1000], "cost_usd": resp.cost_usd})
        return out

    def score(self, texts: list[str], ids: list[str] | None = None) -> list[int | None]:
        return [r["score"] for r in self.judge(texts, ids)]


def judge_status(status: str, error_class: str | None, parsed: str) -> str:
    """One word for a document's outcome: "ok", "truncated" (cut at max_tokens; scored if the score came before
    the cut), the parser's "unparsed" / "out_of_range", "skipped_budget", or "failed: <error class>" (refusal,
    empty_answer, transient...)."""
    if status == "failed":
        return f"failed: {error_class}" if error_class else "failed"
    if status == "truncated" and parsed != "out_of_range":
        return "truncated"
    return parsed or status


def label_corpus(df: pl.DataFrame, judge: EducationalJudge, sample: int | None = None, seed: int = 0,
                 text_column: str = "text", id_column: str = "id") -> tuple[pl.DataFrame, dict[str, Any]]:
    """Judge a (sampled, see `sample_rows`) corpus: rows with `label` (0-5) for those scored, and counts for the
    manifest: why the others have none (with a few examples), and what the labels cost, each prompt once
    (`cost_usd`, earlier runs' answers replayed from the journal included; `paid_this_run_usd`)."""
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    rows = list(range(df.height))
    if sample is not None and sample < df.height:
        rows = sample_rows(df[text_column], sample, seed)
        df = df[rows]
    ids = df[id_column].cast(pl.String).to_list() if id_column in df.columns else None
    results = judge.judge(df[text_column].to_list(), ids)
    labelled = df.with_columns(
        pl.Series("label", [r["score"] for r in results], dtype=pl.Int64),
        pl.Series(JUDGE_STATUS, [r["status"] for r in results], dtype=pl.String),
        pl.Series("judge_rationale", [r["rationale"] for r in results], dtype=pl.String),
    )
    scored = labelled.filter(pl.col("label").is_not_null())
    unlabelled = labelled.filter(pl.col("label").is_null())
    run = judge.generator.stats
    stats = {"in": df.height, "kept": scored.height, "dropped": dict(Counter(unlabelled[JUDGE_STATUS])),
             "score_counts": dict(sorted(Counter(scored["label"].to_list()).items())),
             "unscored_examples": [{"id": ids[i] if ids else None, "row": rows[i], "status": r["status"],
                                    "answer": r["rationale"][:200]} for i, r in enumerate(results)
                                   if r["score"] is None and r["status"] != "skipped_budget"][:UNSCORED_EXAMPLES],
             "cost_usd": round(run["cost_usd"], 6),
             "paid_this_run_usd": round(run["cost_usd"] - run["replayed_usd"], 6)}
    return scored, stats
