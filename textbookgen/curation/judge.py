"""LLM judge: an additive 0-5 educational-value score per document, through the engine.

The rubric is FineWeb-Edu's (Llama-3-70B-Instruct annotations; Yuan et al.'s additive prompt): one
point per criterion met, then "Educational score: <n>". Scores label a sample for the fastText
classifier (`classifier train --labelled ... --min-positive 3`: FineWeb-Edu kept int_score >= 3).
Requests go through `textbookgen.engine.Generator`, so they are journaled (a killed labelling run
resumes without paying twice), rate-limited and budgeted like generation.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import polars as pl

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

_SCORE = re.compile(r"educational score\s*[:=]?\s*\**\s*([0-5])(?:\s*/\s*5)?\b", re.IGNORECASE)


def parse_score(completion: str | None) -> int | None:
    """The last "Educational score: n" (0-5) in a completion, or None if there is none."""
    if not completion:
        return None
    found = _SCORE.findall(completion)
    return int(found[-1]) if found else None


class EducationalJudge:
    """Builds one request per document and parses the scores: `score(texts) -> [0..5 | None]`."""

    def __init__(self, generator: Any, prompt: str = FINEWEB_EDU_PROMPT, max_chars: int = 2000,
                 max_tokens: int = 256, temperature: float = 0.0) -> None:
        if "{text}" not in prompt:
            raise ValueError("judge prompt must contain {text}")
        self.generator, self.prompt = generator, prompt
        self.max_chars, self.max_tokens, self.temperature = max_chars, max_tokens, temperature

    def requests(self, texts: list[str], ids: list[str] | None = None) -> list[Any]:
        from textbookgen.engine import ChatRequest

        ids = ids or [str(i) for i in range(len(texts))]
        return [ChatRequest(messages=[{"role": "user", "content": self.prompt.replace("{text}", t[: self.max_chars])}],
                            max_tokens=self.max_tokens, temperature=self.temperature,
                            metadata={"purpose": "judge", "doc_id": i})
                for t, i in zip(texts, ids, strict=True)]

    def judge(self, texts: list[str], ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Per document: score (None when the call failed or no score could be parsed), status, rationale."""
        out = []
        for resp in self.generator.run(self.requests(texts, ids)):
            score = parse_score(resp.text) if resp.status in ("ok", "truncated") else None
            status = resp.status if resp.status != "ok" else ("ok" if score is not None else "unparsed")
            out.append({"score": score, "status": status, "rationale": (resp.text or "")[:1000],
                        "cost_usd": resp.cost_usd})
        return out

    def score(self, texts: list[str], ids: list[str] | None = None) -> list[int | None]:
        return [r["score"] for r in self.judge(texts, ids)]


def label_corpus(df: pl.DataFrame, judge: EducationalJudge, sample: int | None = None, seed: int = 0,
                 text_column: str = "text", id_column: str = "id") -> tuple[pl.DataFrame, dict[str, Any]]:
    """Judge a (sampled) corpus: rows with `label` (0-5) for those scored, and counts for the manifest."""
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    if sample is not None and sample < df.height:
        df = df.sample(sample, seed=seed, shuffle=True)
    ids = df[id_column].cast(pl.String).to_list() if id_column in df.columns else None
    results = judge.judge(df[text_column].to_list(), ids)
    labelled = df.with_columns(
        pl.Series("label", [r["score"] for r in results], dtype=pl.Int64),
        pl.Series("judge_status", [r["status"] for r in results], dtype=pl.String),
        pl.Series("judge_rationale", [r["rationale"] for r in results], dtype=pl.String),
    )
    scored = labelled.filter(pl.col("label").is_not_null())
    failed = labelled.filter(pl.col("label").is_null())["judge_status"].to_list()
    stats = {"in": df.height, "kept": scored.height, "dropped": dict(Counter(failed)),
             "score_counts": dict(Counter(scored["label"].to_list())),
             "cost_usd": round(sum(r["cost_usd"] for r in results), 6)}
    return scored, stats
