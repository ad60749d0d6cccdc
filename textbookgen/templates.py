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
import traceback
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from textbookgen.jsonl import decode_utf8
from textbookgen.taxonomy import keyed_bits, keyed_uniform

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
        from jinja2.exceptions import SecurityError, UndefinedError

        try:
            return _compiled(self.source).render(**variables).strip() + "\n"
        except TemplateError:  # ours, from compiling the source (a ValueError)
            raise
        except SecurityError as e:
            raise TemplateError(f"{self._where(e)}: unsafe operation blocked ({e})") from None
        except UndefinedError as e:  # called by hand (a notebook), render may lack a variable a build gives it
            not_given = set(variable_names()) - set(variables)
            given = ", ".join(sorted(variables)) or "nothing"
            hint = (f" (render was given: {given}; textbookgen.templates.variables() gives a template all of them)"
                    if any(str(e) == f"'{name}' is undefined" for name in not_given) else "")
            raise TemplateError(f"{self._where(e)}: {e}{hint}") from None
        except JinjaError as e:
            raise TemplateError(f"{self._where(e)}: {e}") from None
        except (ArithmeticError, LookupError, TypeError, ValueError) as e:  # Python's, in an expression
            raise TemplateError(f"{self._where(e)}: {type(e).__name__}: {e}") from None

    def _where(self, err: Exception) -> str:
        """`origin:line` of a render error: Jinja maps the template's frame in the traceback to its line."""
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == "<template>"]
        return f"{self.origin}:{frames[-1].lineno}" if frames else f"template {self.name!r} ({self.origin})"


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
        raise TemplateError(f"{e.lineno}: {e.message}") from None


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
    """A built-in by name, also as its origin spells it (`builtin:NAME`, `builtin:FILE`: what provenance and
    cards print), or a `.j2`/`.jinja` file (relative to `base_dir`). The file is parsed now, so a syntax
    error is reported with its file and line before any prompt is rendered."""
    builtins = builtin_templates()
    if ref in builtins:
        return builtins[ref]
    if ref.startswith("builtin:"):
        spelled = {**{f"builtin:{name}": t for name, t in builtins.items()}, **{t.origin: t for t in builtins.values()}}
        if ref not in spelled:
            raise TemplateError(f"template {ref!r}: no such built-in (the built-ins: {', '.join(builtins)})")
        return spelled[ref]
    path = Path(ref)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise TemplateError(
            f"template {ref!r}: neither a built-in ({', '.join(builtins)}) nor a file ({path})"
        )
    try:
        source = decode_utf8(path.read_bytes(), path, error=TemplateError)
    except TemplateError as e:
        raise TemplateError(f"{e}: save it as UTF-8") from None
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
    """One cell of a mix: template x audience x style x format, with its probability. `entry` names the
    mix entry in draws: its template, with `#2`, `#3` for a template's later entries."""

    template: str
    audience: str
    style: str
    format: str
    weight: float
    max_tokens: int | None = None
    entry: str = ""

    @property
    def names(self) -> tuple[str, str, str, str]:
        """What names the cell in draws (never its place in the mix): entry, audience, style, format."""
        return (self.entry or self.template, self.audience, self.style, self.format)


def expand_mix(entries: list[dict[str, Any]]) -> list[Combo]:
    """Weighted product per mix entry: P = w_entry/sum(w) x P(audience) x P(style) x P(format).
    Each entry gives `template`, `weight`, and `audiences`/`styles`/`formats` as {name: weight}."""
    shares = _norm({str(i): float(e.get("weight", 1.0)) for i, e in enumerate(entries)}, "entry")
    combos: list[Combo] = []
    seen: dict[str, int] = {}
    for i, e in enumerate(entries):
        w = shares[str(i)]
        seen[e["template"]] = seen.get(e["template"], 0) + 1
        entry = e["template"] + (f"#{seen[e['template']]}" if seen[e["template"]] > 1 else "")
        dims = [
            _norm(e.get(k) or {default: 1.0}, k)
            for k, default in (("audiences", "general"), ("styles", "academic"), ("formats", "markdown"))
        ]
        for a, wa in dims[0].items():
            for s, ws in dims[1].items():
                for f, wf in dims[2].items():
                    combos.append(
                        Combo(e["template"], a, s, f, w * wa * ws * wf, e.get("max_tokens"), entry)
                    )
    return [c for c in combos if c.weight > 0]


def _norm(d: dict[str, float], dim: str) -> dict[str, float]:
    """Shares summing to 1; weights that cannot be shares are an error, not an entry dropped silently."""
    total = sum(d.values())
    if not d or not all(math.isfinite(v) and v >= 0 for v in d.values()) or total <= 0:
        raise ValueError(f"mix {dim} weights must be >= 0 with a positive sum (finite numbers), got {d}")
    return {k: v / total for k, v in d.items()}


MAX_SKIPS = 16  # how many more cells a prompt whose exact text came earlier may try (`render_prompts`)


class MixSchedule:
    """The mix cell of every prompt, topic by topic: the mix entry of each prompt of a topic in turn
    (`_Turns` over the entries), then the cell of each entry's prompts in turn (over the entry's audience x
    style x format cells). Every prompt of a topic, the first or the 26th, has cell c with probability w_c,
    so shares follow the weights without bias however often topics repeat; a topic's cells are spread, a
    cell coming back only after about 1 / w_c of the topic's prompts (26K topics x 100K prompts: no topic
    had a cell twice); and the draws are named by topic, entry and cell, so a mix edit moves only the
    prompts it implies: a weight w -> 2w about those the cell gains, a new audience or style of an entry
    only that entry's prompts (one schedule over all cells would also trade prompts between entries), and
    reordering the mix none.

    A prompt is named by its series (topic and cell) and its number in the series (how many times the
    topic had the cell before): the build draws its extract, story words and request seed from that name,
    not from its position, so a prompt that an edit moves keeps them, and the journal replays its answer."""

    def __init__(self, combos: list[Combo], seed: int) -> None:
        self.combos, self.seed = combos, seed
        members: dict[str, list[int]] = {}
        for b, c in enumerate(combos):
            members.setdefault(c.names[0], []).append(b)
        self._entries = [(e,) for e in members]
        self._members = list(members.values())
        self._entry_weights = np.array([sum(combos[b].weight for b in m) for m in self._members])
        self._cells = [[combos[b].names[1:] for b in m] for m in self._members]
        self._cell_weights = [np.array([combos[b].weight for b in m]) for m in self._members]
        self._topics: dict[str, _Topic] = {}

    def next(self, topic_id: str, *, retry: bool = False) -> tuple[Combo, tuple[str, ...], int]:
        """The cell, series and number of the topic's next prompt. `retry`: the next cell of the topic's
        last entry instead, for a prompt that came out a duplicate: the entry keeps its share, and the
        cell's next prompt in its series may carry a web extract."""
        topic = self._topics.get(topic_id)
        if topic is None:
            topic = self._topics[topic_id] = _Topic(len(self._members))
        if not retry or topic.entry < 0:
            topic.entry = topic.entries.next(self.seed, (topic_id,), self._entries, self._entry_weights)
        e = topic.entry
        within = topic.within[e]
        key = (topic_id, self._entries[e][0])
        b = self._members[e][within.next(self.seed, key, self._cells[e], self._cell_weights[e])]
        uses = topic.uses.get(b, 0)
        topic.uses[b] = uses + 1
        return self.combos[b], (topic_id, *self.combos[b].names), uses


def prompt_key(series: tuple[str, ...], k: int) -> int:
    """A prompt's 64-bit key, from its name (`MixSchedule`): what its story words and request seed come from."""
    return keyed_bits(*series, k)


class _Topic:
    """Where one topic is in its schedule: its entries' turns, each entry's cells' turns, each cell's uses."""

    __slots__ = ("entries", "entry", "uses", "within")

    def __init__(self, n_entries: int) -> None:
        self.entries = _Turns()
        self.within = [_Turns() for _ in range(n_entries)]
        self.entry = -1
        self.uses: dict[int, int] = {}


class _Turns:
    """Options (named by tuples) in turn by weight: a systematic schedule, option o's j-th turn at time
    (j + u_o) / w_o, seen from its first turn. The first option is an exponential race (`_race`, P = w_o)
    with u = 0; every other option has a uniform u drawn from (seed, key, o). Started this way (the Palm
    version of the stationary schedule) the k-th turn is o with probability w_o for every k, where the
    plain schedule would favour heavy options early; each option gets the floor or ceil of its share of the
    time; and an option's times depend on its own weight only, up to a common scale."""

    __slots__ = ("phase", "turns")

    def __init__(self) -> None:
        self.turns: np.ndarray | None = None
        self.phase: np.ndarray | None = None

    def next(self, seed: int, key: tuple[str, ...], options: list[tuple[str, ...]], weights: np.ndarray) -> int:
        """The next option's index; `key` names the schedule (topic, or topic and entry) in the draws."""
        if self.turns is None:
            i = _race(seed, key, options, weights)
            self.turns = np.zeros(len(options), dtype=np.int32)
        else:
            if self.phase is None:  # drawn at the second turn (many schedules have one turn only)
                draws = np.array([keyed_uniform(seed, "phase", *key, *o) for o in options])
                self.phase = np.where(self.turns > 0, 0.0, draws)
            i = int(np.argmin((self.turns + self.phase) / weights))
        self.turns[i] += 1
        return i


def _race(seed: int, key: tuple[str, ...], options: list[tuple[str, ...]], weights: np.ndarray) -> int:
    """An exponential race at each level of the options' names in turn (for cells: audience, style, format):
    name n wins with time -ln(u_n) / w_n, u_n drawn from (seed, key, level, n), w_n the weight of its
    options. P = w_o, and an edit moves only what it must: a new style takes prompts from the other
    styles only (one race over all cells would also trade prompts between audiences)."""
    cands = list(range(len(options)))
    for level in range(len(options[0])):
        mass: dict[str, float] = {}
        for i in cands:
            mass[options[i][level]] = mass.get(options[i][level], 0.0) + float(weights[i])
        win = min(mass, key=lambda n: -math.log(keyed_uniform(seed, "first", *key, level, n)) / mass[n])
        cands = [i for i in cands if options[i][level] == win]
    return cands[0]


class TopicPath(list):
    """A topic's path, from its subject down: a list to index, join or loop over, that prints as "A > B > C"
    (`{{ topic_path }}` printed a Python list into the prompt)."""

    def __str__(self) -> str:
        return " > ".join(self)


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
        "topic_path": TopicPath(topic_path),
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


def template_variables(template: Template) -> set[str]:
    """The names a template reads from its variables (what tells its prompts apart)."""
    from jinja2 import meta

    return meta.find_undeclared_variables(_environment().parse(template.source))


@cache
def variable_names() -> tuple[str, ...]:
    """The names `variables` gives every template, in its order."""
    table = {"t": ""}
    return tuple(variables(topic_path=("t",), audience="t", style="t", format="t", web_extract=None, language="",
                           words=[], audiences=table, styles=table, formats=table))


def undeclared_variables(template: Template) -> list[str]:
    """`N: 'name' is undefined ...` (N the line), once for each name the template reads that rendering does not give
    it (nor sets itself, nor Jinja provides): StrictUndefined fails on one only when a prompt is rendered,
    after a build may have paid to grow its taxonomy. A name only tested with `is defined` is allowed."""
    from difflib import get_close_matches

    from jinja2 import meta, nodes

    env = _environment()
    tree = env.parse(template.source)
    given = variable_names()
    tested = {t.node.name for t in tree.find_all(nodes.Test)
              if t.name in ("defined", "undefined") and isinstance(t.node, nodes.Name)}
    unknown = meta.find_undeclared_variables(tree) - set(given) - set(env.globals) - tested
    lines: dict[str, int] = {}
    for name in tree.find_all(nodes.Name):
        if name.name in unknown:
            lines.setdefault(name.name, name.lineno)
    out = []
    for name, line in sorted(lines.items(), key=lambda kv: (kv[1], kv[0])):
        close = get_close_matches(name, given, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"a template gets {', '.join(given)}"
        out.append(f"{line}: '{name}' is undefined ({hint})")
    return out
