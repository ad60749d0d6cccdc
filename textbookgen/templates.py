"""Prompt templates: sandboxed Jinja2 with provenance, the built-in phi-1.5/phi-1 set, and mixes.

A template sees: `topic`, `topic_path` (list), `topic_path_str`, `topic_context` (the path above the
topic, "" for a top-level one), `subject`, `audience`, `style`,
`format` (their descriptions; `*_name` for the keys), `web_extract` (str or None), `language` and
`words` (three simple words: a verb, a noun, an adjective, for TinyStories-style stories). Templates
render in Jinja2's `SandboxedEnvironment` with `StrictUndefined`, so a recipe's template can neither
reach Python internals nor silently print an empty variable. Every rendered prompt carries its
template's content hash and variables.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

BUILTIN_DIR = Path(__file__).with_name("templates")

AUDIENCES: dict[str, str] = {
    "young_children": (
        "young children (about 5 to 8 years old): use very simple words, short sentences and everyday "
        "examples from their world, and no jargon"
    ),
    "middle_school": (
        "middle school students: use simple language and relatable examples, explain every new term, and "
        "avoid heavy notation"
    ),
    "high_school": (
        "high school students: be clear and concrete, introduce the proper terminology and notation "
        "gradually, and connect ideas to everyday life"
    ),
    "college": (
        "college students: be rigorous and in-depth, use proper terminology, and assume the usual prerequisites"
    ),
    "general": "a general adult audience without special background: be clear, accurate and engaging",
    "professionals": (
        "professionals and practitioners: focus on practical application, precision and real-world cases"
    ),
    "researchers": (
        "researchers and experts: be precise and thorough, and discuss subtleties, limitations, open "
        "questions and connections to other fields"
    ),
    "beginner_programmers": "beginner programmers who know only the basics of Python",
    "intermediate_programmers": "programmers comfortable with Python basics who want to write better code",
    "advanced_programmers": (
        "experienced programmers interested in efficient, idiomatic and well-designed code"
    ),
}

STYLES: dict[str, str] = {
    "academic": "rigorous and precise, in the tone of a well-written academic textbook",
    "narrative": "engaging and narrative, carrying the reader along with a story-like flow and vivid examples",
    "conversational": "friendly and conversational, as a good teacher speaking to one student",
    "socratic": "Socratic: lead the reader to each idea through questions before giving the answer",
    "step_by_step": "methodical, step by step, making every step of reasoning explicit",
    "problem_driven": "problem-driven: open with a concrete problem and develop the ideas needed to solve it",
    "dialogue": "include a dialogue between the characters",
    "moral": "have a clear moral value that the child can learn",
    "twist": "have a surprising plot twist",
    "bad_ending": "have a bad ending, where things do not turn out well",
    "foreshadowing": "use foreshadowing, hinting early at what will happen later",
    "conflict": "have a problem that the characters solve together",
}

FORMATS: dict[str, str] = {
    "markdown": "use Markdown, with headings, short paragraphs and lists where they help",
    "plain": "plain text paragraphs, no Markdown",
    "prose": "plain prose without a title, headings or lists",
    "code": "use Markdown for the prose and fenced ```python blocks for all code",
}

# Simple words a young child knows (TinyStories drew one verb, noun and adjective per story).
SIMPLE_WORDS: dict[str, tuple[str, ...]] = {
    "verb": (
        "jump",
        "run",
        "share",
        "hug",
        "climb",
        "find",
        "build",
        "swim",
        "sing",
        "hide",
        "help",
        "paint",
        "throw",
        "dig",
        "fly",
        "bake",
        "clean",
        "dance",
        "listen",
        "wait",
        "catch",
        "open",
        "float",
        "kick",
    ),
    "noun": (
        "ball",
        "tree",
        "box",
        "cat",
        "dog",
        "boat",
        "cake",
        "hat",
        "kite",
        "bird",
        "moon",
        "flower",
        "train",
        "rock",
        "shoe",
        "fish",
        "cup",
        "book",
        "bear",
        "garden",
        "rain",
        "sock",
        "key",
        "drum",
    ),
    "adjective": (
        "big",
        "small",
        "happy",
        "sad",
        "red",
        "soft",
        "loud",
        "quiet",
        "shiny",
        "brave",
        "silly",
        "warm",
        "cold",
        "fast",
        "slow",
        "tiny",
        "kind",
        "sleepy",
        "wet",
        "funny",
        "round",
        "bright",
    ),
}


class TemplateError(ValueError):
    """A template could not be loaded or rendered; the message names the template and the cause."""


@dataclass(frozen=True)
class Template:
    """A named Jinja2 template. `hash` is the sha256 (16 hex) of its source: the provenance key."""

    name: str
    source: str
    description: str = ""
    expected_output_tokens: int = 800
    max_tokens: int = 1500
    origin: str = "builtin"

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()[:16]

    def render(self, **variables: Any) -> str:
        from jinja2 import TemplateError as JinjaError
        from jinja2.exceptions import SecurityError

        try:
            return _compiled(self.source).render(**variables).strip() + "\n"
        except SecurityError as e:
            raise TemplateError(
                f"template {self.name!r} ({self.origin}): unsafe operation blocked ({e})"
            ) from None
        except JinjaError as e:
            raise TemplateError(f"template {self.name!r} ({self.origin}): {e}") from None


@cache
def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )


@cache
def _compiled(source: str) -> Any:
    from jinja2 import TemplateSyntaxError

    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"line {e.lineno}: {e.message}") from None


@cache
def builtin_templates() -> dict[str, Template]:
    index = yaml.safe_load((BUILTIN_DIR / "builtin.yaml").read_text(encoding="utf-8"))
    out = {}
    for name, spec in index.items():
        source = (BUILTIN_DIR / spec["file"]).read_text(encoding="utf-8")
        out[name] = Template(
            name=name,
            source=source,
            description=spec.get("description", ""),
            expected_output_tokens=int(spec.get("expected_output_tokens", 800)),
            max_tokens=int(spec.get("max_tokens", 1500)),
            origin=f"builtin:{spec['file']}",
        )
    return out


def load_template(ref: str, base_dir: Path | None = None) -> Template:
    """A built-in by name, or a `.j2`/`.jinja` file (relative to `base_dir`). The file is parsed
    now, so a syntax error is reported with its file and line before any prompt is rendered."""
    builtins = builtin_templates()
    if ref in builtins:
        return builtins[ref]
    path = Path(ref)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise TemplateError(
            f"template {ref!r}: neither a built-in ({', '.join(builtins)}) nor a file ({path})"
        )
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TemplateError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    try:
        _compiled(source)
    except TemplateError as e:
        raise TemplateError(f"{path}:{e}") from None
    return Template(name=path.stem.split(".")[0], source=source, origin=str(path))


def simple_words(seed: int, index: int) -> list[str]:
    rng = np.random.default_rng([seed, index, 0x3D])
    return [SIMPLE_WORDS[k][int(rng.integers(len(SIMPLE_WORDS[k])))] for k in ("verb", "noun", "adjective")]


@dataclass(frozen=True)
class Combo:
    """One cell of a mix: template x audience x style x format, with its probability."""

    template: str
    audience: str
    style: str
    format: str
    weight: float
    max_tokens: int | None = None


def expand_mix(entries: list[dict[str, Any]]) -> list[Combo]:
    """Weighted product per mix entry: P = w_entry/sum(w) x P(audience) x P(style) x P(format).
    Each entry gives `template`, `weight`, and `audiences`/`styles`/`formats` as {name: weight}."""
    shares = _norm({str(i): float(e.get("weight", 1.0)) for i, e in enumerate(entries)}, "entry")
    combos: list[Combo] = []
    for i, e in enumerate(entries):
        w = shares[str(i)]
        dims = [
            _norm(e.get(k) or {default: 1.0}, k)
            for k, default in (("audiences", "general"), ("styles", "academic"), ("formats", "markdown"))
        ]
        for a, wa in dims[0].items():
            for s, ws in dims[1].items():
                for f, wf in dims[2].items():
                    combos.append(Combo(e["template"], a, s, f, w * wa * ws * wf, e.get("max_tokens")))
    return [c for c in combos if c.weight > 0]


def _norm(d: dict[str, float], dim: str) -> dict[str, float]:
    """Shares summing to 1; weights that cannot be shares are an error, not an entry dropped silently."""
    total = sum(d.values())
    if not d or not all(math.isfinite(v) and v >= 0 for v in d.values()) or total <= 0:
        raise ValueError(f"mix {dim} weights must be >= 0 with a positive sum (finite numbers), got {d}")
    return {k: v / total for k, v in d.items()}


MIX_LOOKAHEAD = 256  # how far ahead `assign_cells` looks for a cell the topic has not had yet


def assign_cells(topic_ids: Sequence[str], combos: list[Combo], seed: int) -> list[Combo]:
    """The mix cell of each prompt, given its topic: the weighted sequence of cells (systematic, so
    every prefix follows the mix weights), except that a topic that already had the cell due at its
    position takes the nearest later cell it has not had (the two swap places), within MIX_LOOKAHEAD.
    Drawn independently of the topics, a topic asked for 4 times among 24 cells got the same
    (topic, template, audience, style, format) twice in about 1 case in 5: the same prompt twice unless a
    web extract told them apart (10.6% exact duplicate prompts on a 26K-topic, 100K-prompt build).
    Prompt i depends on (seed, topics[: i + 1]) only, so a larger build still extends a smaller one;
    without repeats the cells are those of the plain weighted sequence."""
    from textbookgen.taxonomy import weighted_sequence

    n = len(topic_ids)
    weights = np.array([c.weight for c in combos], dtype=np.float64)
    seq = weighted_sequence(n + MIX_LOOKAHEAD, weights, np.random.default_rng([seed, 0xC0]))
    had: dict[str, dict[int, int]] = {}
    for i, tid in enumerate(topic_ids):
        used = had.setdefault(tid, {})
        if seq[i] in used:
            j = _least_used_ahead(seq, i, used)
            seq[i], seq[j] = seq[j], seq[i]
        used[int(seq[i])] = used.get(int(seq[i]), 0) + 1
    return [combos[int(k)] for k in seq[:n]]


def _least_used_ahead(seq: np.ndarray, i: int, used: dict[int, int]) -> int:
    """Position of the first cell in seq[i : i + MIX_LOOKAHEAD] that the topic never had, else of the
    one it had least often (the earliest of those)."""
    best, best_uses = i, used[int(seq[i])]
    for j in range(i + 1, min(i + MIX_LOOKAHEAD + 1, len(seq))):
        uses = used.get(int(seq[j]), 0)
        if uses < best_uses:
            best, best_uses = j, uses
            if uses == 0:
                break
    return best


def variables(
    *,
    topic_path: tuple[str, ...],
    audience: str,
    style: str,
    format: str,
    web_extract: str | None,
    language: str,
    words: list[str],
    audiences: dict[str, str],
    styles: dict[str, str],
    formats: dict[str, str],
) -> dict[str, Any]:
    """The variables a template sees, descriptions resolved from the (built-in + recipe) tables."""
    return {
        "topic": topic_path[-1],
        "topic_path": list(topic_path),
        "topic_path_str": " > ".join(topic_path),
        "topic_context": " > ".join(topic_path[:-1]),
        "subject": topic_path[0],
        "audience": audiences[audience],
        "audience_name": audience,
        "style": styles[style],
        "style_name": style,
        "format": formats[format],
        "format_name": format,
        "web_extract": web_extract,
        "language": language,
        "words": words,
    }


def provenance(template: Template, vars_: dict[str, Any]) -> str:
    """JSON provenance of one rendered prompt (template name, origin and hash, and variables)."""
    return json.dumps(
        {
            "template": template.name,
            "template_hash": template.hash,
            "origin": template.origin,
            "variables": vars_,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
