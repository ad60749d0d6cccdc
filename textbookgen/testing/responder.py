"""The emulator's default completion text: deterministic, textbook-like, and list-aware.

A dry run of the pipeline needs answers that behave like a model's where the pipeline looks at them:
prose of about the requested length on the prompt's topic, and, when the prompt asks for N items
(topics, subtopics, questions), N *distinct* plausible items, so taxonomy growth can reach its target.
Everything is derived from a seed (the request's hash), so the same request always gets the same text.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import string
import uuid
from collections.abc import Callable
from itertools import chain
from typing import Any

from rstr.xeger import Xeger

CHARS_PER_TOKEN = 4

_NUMBER_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "hundred": 100,
}
_LIST_NOUNS = (
    r"(?:sub-?)?(?:topics?|areas?|fields?|subjects?|concepts?|ideas?|items?|questions?|examples?|titles?|"
    r"themes?|categories|category|branches|branch|chapters?|sections?|lessons?|units?|skills?|terms?|"
    r"entries|entry|names?|problems?|exercises?|facts?|headings?|keywords?|points?|aspects?|domains?)"
)
_LIST_RE = re.compile(
    r"\b(\d{1,4}|" + "|".join(_NUMBER_WORDS) + r")\s+(?:[\w-]+\s+){0,3}?" + _LIST_NOUNS + r"\b",
    re.IGNORECASE,
)
_SUBJECT_RES = (
    re.compile(r"\b(?:of|about|on|for|within|covering|under|in)\s+(?:the\s+(?:topic|field|subject)\s+(?:of\s+)?)?"
               r"[\"'“«]([^\"'”»\n]{2,120})[\"'”»]", re.IGNORECASE),
    re.compile(r"\b(?:topic|subject|field)\s*:\s*([^\n.;]{2,120})", re.IGNORECASE),
    re.compile(r"\b(?:of|about|on|within|covering|under)\s+(?:the\s+(?:topic|field|subject|area)\s+(?:of\s+)?)?"
               r"([A-Za-z][^\n.;:?!,(]{1,80})", re.IGNORECASE),
)
_STOP_TAIL = re.compile(r"\s+(?:for|as|in|with|that|which|suitable|aimed|formatted|written|using|one|each)\b.*$",
                        re.IGNORECASE)

_LEADING_WORDS = {
    "explain", "describe", "discuss", "write", "define", "summarize", "summarise", "teach", "introduce",
    "tell", "me", "please", "briefly", "a", "an", "the", "what", "is", "are", "how", "why", "does", "do",
}
_CONCEPTS = (
    "foundations", "history", "key principles", "core definitions", "measurement", "mathematical models",
    "experimental methods", "applications", "common misconceptions", "case studies", "ethics",
    "open problems", "classification", "structure", "dynamics", "equilibrium", "energy", "information",
    "feedback loops", "scaling laws", "statistics", "visualization", "computation", "algorithms",
    "symmetry", "conservation", "variation", "evolution", "networks", "systems thinking", "interfaces",
    "materials", "tools and instruments", "standards", "safety", "economics", "policy", "society",
    "environmental impact", "design trade-offs", "optimization", "uncertainty", "error analysis",
    "boundary conditions", "limits", "approximations", "notation", "proof techniques", "data collection",
    "field work", "laboratory practice", "modern research", "future directions", "careers", "pioneers",
    "landmark discoveries", "terminology", "problem solving", "estimation", "cause and effect",
    "comparison with related fields", "regional variation", "cultural context", "communication",
    "teaching strategies", "reasoning patterns", "practical exercises", "worked examples", "simulation",
    "signals", "patterns", "cycles", "transformations", "interactions", "constraints", "resources",
    "reliability", "failure modes", "maintenance", "quality control", "risk assessment", "innovation",
)
_PATTERNS = (
    "{C} of {X}", "{X}: {c}", "Introduction to {c} in {X}", "{C} and {c2} in {X}",
    "The role of {c} in {X}", "{C} in modern {X}", "Advanced {c} of {X}", "{X} and {c}",
)
_OPENERS = (
    "{X} is a subject that rewards careful, step-by-step study.",
    "To understand {X}, it helps to begin with {c}.",
    "Few topics connect as many ideas as {X} does.",
    "In this section we study {X}, starting from {c} and building toward {c2}.",
)
_SENTENCES = (
    "The central idea is that {c} shapes how we reason about {x}.",
    "Consider a simple example: when we change one quantity, {c} tells us what to expect next.",
    "Historically, the study of {c} began with careful observation and only later became precise.",
    "A common mistake is to confuse {c} with {c2}; the difference matters in practice.",
    "We can summarise the argument in three steps: state the assumption, apply {c}, and check the result.",
    "Notice how {c2} follows naturally once {c} is understood.",
    "Students often find it useful to draw a diagram that relates {c} to {c2}.",
    "In real applications, {c} is rarely isolated, so we must account for {c2} as well.",
    "This explains why experts in {x} pay close attention to {c}.",
    "Let us work through a short exercise to make the idea concrete.",
    "Suppose we measure the same system twice; any difference points to {c}.",
    "The key takeaway is that {c} provides a reliable lens on {x}.",
    "Each new case can be checked against the rule, which builds confidence in the method.",
    "By comparing several examples, we see a pattern emerge around {c2}.",
    "Careful definitions prevent confusion when {c} and {c2} appear together.",
    "Ask yourself what would happen if {c} were absent; the answer reveals its importance.",
)


def estimate_tokens(text: str) -> int:
    """Token count estimate used for both billing and rate limits (~4 characters a token, like tiktoken on prose)."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN)) if text else 0


def prompt_tokens(text: str) -> int:
    """A prompt's billed tokens: `estimate_tokens` for English, about a token per Chinese, Japanese or Korean
    character (as the providers' tokenizers count them), so that a dry run of a CJK build shows its real input
    cost. Each UTF-8 byte beyond one per character counts half a wide character: 2 for CJK, 1 for é."""
    wide = (len(text.encode("utf-8", "surrogatepass")) - len(text)) // 2
    return estimate_tokens(text) + wide - wide // CHARS_PER_TOKEN if text else 0


def prompt_text(messages: list[dict[str, Any]], system: Any = None) -> str:
    """All text of a chat request (system + messages), whatever the content shape (str or content blocks)."""
    parts = [_content_text(system)] if system else []
    parts += [_content_text(m.get("content")) for m in messages if isinstance(m, dict)]
    return "\n".join(p for p in parts if p)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def requested_count(prompt: str) -> int | None:
    """N when the prompt asks for N items ("List 20 subtopics of ...", "Give ten questions ..."), else None."""
    m = _LIST_RE.search(prompt)
    if not m:
        return None
    word = m.group(1).lower()
    n = int(word) if word.isdigit() else _NUMBER_WORDS[word]
    return n if 1 <= n <= 2000 else None


def subject_of(prompt: str) -> str:
    """The topic a prompt is about: a quoted phrase, `Topic: X`, or the phrase after of/about/on."""
    for rx in _SUBJECT_RES:
        m = rx.search(prompt)
        if m:
            subject = _STOP_TAIL.sub("", m.group(1)).strip(" \"'“”.:-")
            if subject and not subject.lower().startswith(("the following", "this", "it ")):
                return subject[:80]
    first_line = prompt.strip().splitlines()[0] if prompt.strip() else ""
    words = re.findall(r"[A-Za-z][A-Za-z-]+", first_line)
    while words and words[0].lower() in _LEADING_WORDS:
        words.pop(0)
    return " ".join(words[:6]) if words else "the subject"


def distinct_items(subject: str, n: int, rng: random.Random) -> list[str]:
    """n distinct plausible item names under `subject` (taxonomy children, questions, ...)."""
    concepts = list(_CONCEPTS)
    rng.shuffle(concepts)
    items: list[str] = []
    seen: set[str] = set()
    i = 0
    while len(items) < n:
        c, c2 = concepts[i % len(concepts)], concepts[(i * 7 + 3) % len(concepts)]
        pattern = _PATTERNS[(i // len(concepts) + rng.randrange(len(_PATTERNS))) % len(_PATTERNS)]
        item = pattern.format(C=c.capitalize(), c=c, c2=c2, X=subject, x=subject.lower())
        item = item[:1].upper() + item[1:]
        if i >= len(concepts) * len(_PATTERNS):
            item = f"{item} (part {i // (len(concepts) * len(_PATTERNS)) + 1})"
        if item.lower() not in seen:
            seen.add(item.lower())
            items.append(item)
        i += 1
    return items


class _Deck:
    """Draws without replacement, reshuffling when empty: a document rarely repeats a phrase."""

    def __init__(self, items: tuple[str, ...], rng: random.Random) -> None:
        self.items, self.rng, self.left = items, rng, []
        self.rounds = 0

    def draw(self) -> str:
        if not self.left:
            self.left = list(self.items)
            self.rng.shuffle(self.left)
            self.rounds += 1
        return self.left.pop()


class _Writer:
    """Composes textbook-like sentences about one topic. Every part of a sentence (noun phrase, verb,
    object, modifier, worked number example, handcrafted sentence) is drawn from its own deck without
    replacement, so one document rarely repeats a run of five words (Gopher's duplicated n-gram
    rules pass) and documents on different topics are far from near-duplicates."""

    def __init__(self, subject: str, rng: random.Random) -> None:
        topic = subject.rsplit(" > ", 1)[-1]
        x = topic.lower() if topic[:1].isupper() and topic[1:2].islower() else topic
        self.fill = {"X": topic, "x": x}
        self.rng = rng
        self.d = {name: _Deck(items, rng) for name, items in (
            ("concept", _CONCEPTS), ("sentence", _SENTENCES), ("noun", _G_NOUNS), ("adjective", _G_ADJECTIVES),
            ("verb", _G_VERBS), ("object", _G_OBJECTS), ("relation", _G_RELATIONS), ("modifier", _G_MODIFIERS),
            ("setting", _G_SETTINGS), ("example", _G_EXAMPLES), ("question", _QUESTIONS),
            ("problem", _PROBLEMS), ("answer", _ANSWERS))}

    def _format(self, deck: str, **extra: Any) -> str:
        c = self.d["concept"]
        a = self.rng.randint(10, 99)
        b = self.rng.randint(2, a - 1)
        text = self.d[deck].draw().format(c=c.draw(), c2=c.draw(), a=a, b=b, **self.fill, **extra)
        return text[:1].upper() + text[1:]

    def opener(self) -> str:
        c = self.d["concept"]
        text = self.rng.choice(_OPENERS).format(c=c.draw(), c2=c.draw(), **self.fill)
        return text[:1].upper() + text[1:]

    def sentence(self) -> str:
        """Mostly determiner + adjective + noun, verb, object, modifier (~10^9 combinations)."""
        d, rng = self.d, self.rng
        if (d["sentence"].rounds == 0 or d["sentence"].left) and rng.random() < 0.25:  # each at most once
            return self._format("sentence")
        noun = d["noun"].draw().format(c=d["concept"].draw(), **self.fill)
        subject = f"{rng.choice(('the', 'this', 'a', 'one', 'every', 'each'))} {d['adjective'].draw()} {noun}"
        obj = d["object"].draw().format(c=d["concept"].draw(), c2=d["concept"].draw(), r=d["relation"].draw(),
                                        **self.fill)
        modifier = d["modifier"].draw().format(adj=d["adjective"].draw(), setting=d["setting"].draw())
        sentence = f"{subject} {d['verb'].draw()} {obj}{modifier}."
        if rng.random() < 0.12 and d["example"].rounds <= 1:
            sentence += " " + self._format("example")
        return sentence[:1].upper() + sentence[1:]

    def paragraphs(self, budget_chars: int, n_words: int | None = None, opener: bool = True) -> str:
        """Whole sentences up to budget_chars (or about n_words), a paragraph break every 4-6 sentences."""
        text = self.opener() if opener else self.sentence()
        words = len(text.split())
        paragraph_len, paragraph_target = 1, self.rng.randint(4, 6)
        while n_words is None or words < n_words:
            sentence = self.sentence()
            if len(text) + 1 + len(sentence) > budget_chars:
                break
            words += len(sentence.split())
            if paragraph_len >= paragraph_target:
                text += "\n\n" + sentence
                paragraph_len, paragraph_target = 1, self.rng.randint(4, 6)
            else:
                text += " " + sentence
                paragraph_len += 1
        return text

    def exercises(self, n: int, budget_chars: int, heading: bool = False) -> str:
        """n exercises, each a problem, a worked solution and a final answer."""
        per_item = max(200, budget_chars // max(1, n))
        items = [f"Exercise {i}. {self._format('problem')}\nSolution. "
                 f"{self.paragraphs(per_item - 120, opener=False)}\nAnswer: {self._format('answer')}"
                 for i in range(1, n + 1)]
        return ("Exercises\n\n" if heading else "") + "\n\n".join(items)

    def questions(self, n: int, budget_chars: int) -> str:
        """n questions, each followed by an answer of a few sentences."""
        per_item = max(160, budget_chars // max(1, n))
        return "\n\n".join(f"Q{i}: {self._format('question')}\nA: {self.paragraphs(per_item - 60, opener=False)}"
                            for i in range(1, n + 1))


def prose(subject: str, n_tokens: int, rng: random.Random, n_words: int | None = None) -> str:
    """Textbook-style paragraphs about `subject`: whole sentences up to n_tokens (or about n_words)."""
    return _Writer(subject, rng).paragraphs(max(1, n_tokens) * CHARS_PER_TOKEN, n_words)


_QUESTIONS = (
    "What is the role of {c} in {x}?", "How does {c} relate to {c2}?", "Why is {c} important when studying {x}?",
    "What would change if {c} were removed?", "How can we measure {c} in practice?",
    "What is a common mistake about {c}?", "How did ideas about {c} develop over time?",
    "When does {c} stop being a good approximation?", "How are {c} and {c2} different?",
    "Which example best illustrates {c}?", "What evidence supports {c}?", "How would you explain {c} to a friend?",
    "What links {x} to {c}?", "Can {c} be observed directly?", "What are the limits of {c}?",
    "How does {c} show up in everyday life?",
)
_PROBLEMS = (
    "Explain how {c} applies to a simple case in {x}.",
    "A student claims that {c} and {c2} are the same thing. Identify the mistake.",
    "Estimate the effect of doubling {c} in a system with {a} parts.",
    "Describe an experiment that would test {c}.", "Compare {c} with {c2} using one concrete example.",
    "Using {c}, predict what happens when {c2} changes by {a} percent.",
    "List two consequences of {c} for {x} and justify each.",
    "A table shows {b} measurements of {c}; describe how you would summarise them.",
    "Why might {c} fail in an unusual setting? Give a reason.",
    "Combine {c} and {c2} to solve a problem with {a} units.",
    "Sketch a diagram that connects {c} to {c2}.", "Give a real-world example of {c} and explain it.",
)
_ANSWERS = (
    "about {b} percent.", "{c} dominates in this case.", "the claim confuses {c} with {c2}.",
    "roughly {a} units.", "the effect grows, but slowly.", "{b} of the {a} cases fit the rule.",
    "the two agree within {b} percent.", "it depends on {c}, as shown above.", "no; {c} is the limiting factor.",
    "yes, provided {c} stays constant.", "the result is {a}.", "the trend reverses after {b} steps.",
)


_G_ADJECTIVES = (
    "careful", "simple", "classic", "second", "first", "standard", "closer", "useful", "formal", "quick",
    "general", "modern", "familiar", "surprising", "practical", "historical", "typical", "basic", "detailed",
    "broader", "rough", "clear", "older", "newer", "small", "central", "common", "rigorous", "informal",
    "graphical", "numerical", "everyday", "well-known", "overlooked", "short", "longer",
)
_G_NOUNS = (
    "observer", "approach", "example", "model of {c}", "definition", "argument", "pattern", "experiment",
    "diagram", "student of {x}", "record", "study of {c}", "change in {c}", "explanation", "look at {c}",
    "result", "analogy", "case", "counterexample", "mechanism", "experience", "treatment", "estimate",
    "table", "observation", "assumption", "perspective", "rule", "exam question", "data set", "version",
    "sketch", "account", "derivation", "exercise", "survey", "lecture", "proof", "chart", "textbook",
)
_G_VERBS = (
    "shows", "suggests", "explains", "connects", "depends on", "reveals", "limits", "clarifies",
    "relates to", "builds on", "challenges", "supports", "illustrates", "predicts", "sheds light on",
    "helps measure", "constrains", "highlights", "reframes", "summarizes", "anticipates", "rests on",
    "complements", "extends", "questions", "simplifies", "organizes", "motivates",
)
_G_OBJECTS = (
    "{c} in {x}", "the {r} of {c}", "the {r} between {c} and {c2}", "how {c} changes",
    "why {c} matters", "{c} and {c2}", "the {r} behind {c}", "{c} within {x}", "the {r} of {x}",
    "what {c} implies", "{c} versus {c2}", "the {r} linking {c} to {c2}",
)
_G_RELATIONS = (
    "role", "limits", "history", "structure", "origins", "vocabulary", "evidence", "balance", "link",
    "contrast", "tension", "logic", "cost", "scope", "purpose", "measurement", "meaning", "boundaries",
    "consequences", "foundations", "mechanics", "trade-offs", "symmetry", "dynamics",
)
_G_MODIFIERS = (
    "", "", "", "", " in {adj} {setting}", " for {adj} {setting}", " under {adj} {setting}",
    " across {adj} {setting}", " in most {setting}", ", even in {adj} {setting}", " beyond {adj} {setting}",
    " within {setting}", ", as later sections show", " to first approximation", " quite directly",
)
_G_SETTINGS = (
    "cases", "conditions", "settings", "classrooms", "laboratories", "applications", "situations",
    "problems", "systems", "contexts", "regions", "periods", "experiments", "models", "examples",
    "communities", "environments", "scales",
)
_G_EXAMPLES = (
    "For example, raising {c} by {a} percent shifts a typical outcome by about {b} percent.",
    "In one classroom study, {b} of {a} students first confused {c} with a related idea.",
    "A quick calculation with {a} units and a factor of {b} makes this concrete.",
    "Try it with {b} cases: the pattern holds in nearly all of them.",
    "Records covering {a} years contain roughly {b} clear instances.",
    "Sketching {b} points on a graph is usually enough to see the trend.",
    "Suppose {a} samples are taken; about {b} of them will show the effect.",
    "With {b} groups of {a} measurements each, the averages agree closely.",
    "A survey of {a} practitioners found {b} who rely on {c} daily.",
    "Doubling {c} from {b} to twice that value changes little below {a} units.",
    "Out of {a} historical cases, {b} fit the simple rule exactly.",
    "Our table lists {b} values; the largest is {a}.",
)


def forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool a request forces the model to call, as {"name": ..., "schema": ...}, else None.

    Anthropic: tool_choice {"type": "tool", "name": ...}, or {"type": "any"} (the first tool); OpenAI:
    {"type": "function", "function": {"name": ...}}, or "required" (the first tool). "auto", "none" and
    anything else leave the model free to answer in text."""
    tools = [_tool_spec(t) for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if choice == "required" or (isinstance(choice, dict) and choice.get("type") == "any"):
        return tools[0] if tools else None
    if not isinstance(choice, dict):
        return None
    if choice.get("type") == "tool":
        name = choice.get("name")
    elif choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
    else:
        return None
    return next((t for t in tools if t["name"] == name), None)


def _tool_spec(tool: dict[str, Any]) -> dict[str, Any]:
    """{"name", "schema"} of an Anthropic tool or an OpenAI function tool."""
    function = tool.get("function")
    if tool.get("type") == "function" and isinstance(function, dict):
        return {"name": function.get("name"), "schema": function.get("parameters") or {"type": "object"}}
    return {"name": tool.get("name"), "schema": tool.get("input_schema") or {"type": "object"}}


def required_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema the answer must follow, else None (free text): OpenAI's `response_format`
    json_schema, Anthropic's `output_config.format` json_schema (what `messages.parse(output_format=...)`
    sends), or a forced tool's parameters."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
    output_format = (body.get("output_config") or {}).get("format") or {}
    if output_format.get("type") == "json_schema":
        return output_format.get("schema") or {"type": "object"}
    tool = forced_tool(body)
    return tool["schema"] if tool is not None else None


def wants_json(body: dict[str, Any], prompt: str) -> bool:
    fmt = body.get("response_format") or {}
    return fmt.get("type") in ("json_object", "json_schema") or bool(re.search(r"\bJSON\b", prompt))


_NEST_DEPTH = 6  # containers deep: from here on only what the schema requires is filled, so recursive models end
_MAX_DEPTH = 48  # a schema whose required fields still nest this deep has no finite instance: stop, unfilled
_TEXT_KEY = re.compile(r"^(?:text|content|body|definition|description|summary|answer|solution|explanation)$",
                       re.IGNORECASE)
_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date-time": lambda r: f"20{r.randint(10, 29)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T"
                           f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00Z",
    "date": lambda r: f"20{r.randint(10, 29)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    "time": lambda r: f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00",
    "duration": lambda r: f"PT{r.randint(1, 59)}M",
    "email": lambda r: f"{r.choice(_STORY_NAMES).lower()}{r.randint(1, 99)}@example.com",
    "uri": lambda r: f"https://example.com/notes/{r.randint(1, 9999)}",
    "url": lambda r: f"https://example.com/notes/{r.randint(1, 9999)}",
    "hostname": lambda r: f"host{r.randint(1, 99)}.example.com",
    "ipv4": lambda r: f"192.0.2.{r.randint(1, 254)}",
    "ipv6": lambda r: f"2001:db8::{r.randint(1, 0xFFFF):x}",
    "uuid": lambda r: str(uuid.UUID(int=r.getrandbits(128), version=4)),
}


def from_schema(schema: dict[str, Any], subject: str, n: int | None, rng: random.Random,
                score: int | None = None) -> Any:
    """A valid instance of a JSON schema, as a provider's structured outputs answer: `$ref` (to `$defs`, or
    any JSON pointer into the schema, recursive models too), `allOf`, `anyOf`/`oneOf` (Optional, unions),
    nested objects, arrays of objects, tuples (`prefixItems`), dicts (`additionalProperties`), enum/const
    (Literal), string formats and lengths, numeric bounds and multiples, item counts. Lists of strings are
    distinct plausible items; `n` (the count the prompt asks for) sizes the arrays not inside another array;
    numeric properties named like score/rating/grade get `score` when given (and reason-like strings a
    justification of it)."""
    return _Instance(schema, subject, rng, score).value(schema, n, 0)


class _Instance:
    """One instance of a root schema, drawn from `rng`; `depth` counts the objects and arrays around a value."""

    def __init__(self, root: dict[str, Any], subject: str, rng: random.Random, score: int | None) -> None:
        self.root, self.subject, self.rng, self.score = root, subject, rng, score
        self.open: list[str] = []  # the $refs being filled around the current value: a recursive model's

    def value(self, schema: Any, n: int | None, depth: int, name: str = "") -> Any:
        """An instance of `schema`; `name` is the property it fills (scores and text fields go by name)."""
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if ref is None:
            return self._fill(self._resolved(schema), n, depth, name)
        if ref in self.open and depth >= _NEST_DEPTH:
            # only the required fields are filled down here, and one of them holds this model again: there is no
            # finite instance (`Node(left: Node, right: Node)`); filling on would double at every level
            return {}
        self.open.append(ref)
        try:
            return self._fill(self._resolved(schema), n, depth, name)
        finally:
            self.open.pop()

    def _fill(self, schema: dict[str, Any], n: int | None, depth: int, name: str) -> Any:
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.rng.choice(schema["enum"])
        options = schema.get("anyOf") or schema.get("oneOf")
        if options:
            return self.value(self._option(options, depth), n, depth, name)
        kind = self._kind(schema, depth)
        if kind == "object":
            return self._object(schema, n, depth)
        if kind == "array":
            return self._array(schema, n, depth, name)
        if kind == "integer":
            return self._integer(schema, name)
        if kind == "number":
            return self._number(schema, name)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema, name)

    def _resolved(self, schema: Any) -> dict[str, Any]:
        """`schema` with its `$ref` followed (its own keywords kept beside the target's) and its `allOf` merged."""
        schema = schema if isinstance(schema, dict) else {}
        for _ in range(64):  # a chain of refs longer than this loops
            if "$ref" in schema:
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                schema = {**self._pointer(schema["$ref"]), **rest}
            elif schema.get("allOf"):
                merged = {k: v for k, v in schema.items() if k != "allOf"}
                for part in map(self._resolved, schema["allOf"]):
                    if "properties" in part:
                        merged["properties"] = {**merged.get("properties", {}), **part["properties"]}
                    if "required" in part:
                        merged["required"] = [*merged.get("required", []), *part["required"]]
                    merged.update({k: v for k, v in part.items() if k not in merged})
                schema = merged
            else:
                return schema
        return {}

    def _pointer(self, ref: str) -> dict[str, Any]:
        """The subschema a local `$ref` ("#", "#/$defs/Term") points to; {} (any value) when it points nowhere."""
        node: Any = self.root
        path = ref.removeprefix("#").strip("/")
        for part in path.split("/") if path else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node if isinstance(node, dict) else {}

    def _option(self, options: list[Any], depth: int) -> Any:
        """A branch of anyOf/oneOf: any but null; null where allowed for a model inside itself (an optional
        parent of a tree node) and deep down, where a scalar branch is preferred."""
        filled = [o for o in options if self._resolved(o).get("type") != "null"] or options
        recursive = any(isinstance(o, dict) and o.get("$ref") in self.open for o in filled)
        if len(filled) < len(options) and (recursive or depth >= _NEST_DEPTH):
            return {"type": "null"}
        if depth < _NEST_DEPTH:
            return self.rng.choice(filled)
        scalars = [o for o in filled if self._kind(self._resolved(o), depth) not in ("object", "array")]
        # else a branch that is not a model being filled around it (`Union[Expr, Num]`: Num), or the tree never ends
        ending = [o for o in filled if not (isinstance(o, dict) and o.get("$ref") in self.open)]
        return (scalars or ending or filled)[0]

    def _kind(self, schema: dict[str, Any], depth: int) -> str:
        """The JSON type to produce: the declared one (of a list, null only deep down), else the one implied."""
        kind = schema.get("type")
        if isinstance(kind, list):
            types = [k for k in kind if k != "null"]
            return "null" if not types or ("null" in kind and depth >= _NEST_DEPTH) else types[0]
        if kind:
            return kind
        if "properties" in schema or isinstance(schema.get("additionalProperties"), dict):
            return "object"
        return "array" if "items" in schema or "prefixItems" in schema else "string"

    def _object(self, schema: dict[str, Any], n: int | None, depth: int) -> dict[str, Any]:
        """Every property (only the required ones deep down); a dict schema gets a few distinct keys."""
        if depth > _MAX_DEPTH:
            return {}
        props, required = schema.get("properties") or {}, set(schema.get("required") or ())
        deep = depth >= _NEST_DEPTH
        out = {k: self.value(v, n, depth + 1, k) for k, v in props.items() if not deep or k in required}
        extra = schema.get("additionalProperties")
        if not props and isinstance(extra, dict):
            count = _clamped(0 if deep else 3, schema.get("minProperties"), schema.get("maxProperties"))
            out = {key: self.value(extra, None, depth + 1, key)
                   for key in distinct_items(self.subject, count, self.rng)}
        return out

    def _array(self, schema: dict[str, Any], n: int | None, depth: int, name: str) -> list[Any]:
        """`n` items (two fewer each level of nesting without it, none deep down), within minItems..maxItems;
        a tuple's items in order; strings distinct; uniqueItems kept."""
        if depth > _MAX_DEPTH:
            return []
        prefix = schema.get("prefixItems") or []
        items = schema.get("items")
        if prefix and not isinstance(items, dict):
            wanted = len(prefix)
        else:
            wanted = n or (0 if depth >= _NEST_DEPTH else max(1, 5 - depth // 2 * 2))
        count = _clamped(wanted, schema.get("minItems"), schema.get("maxItems"))
        out = [self.value(s, None, depth + 1, name) for s in prefix[:count]]
        item_schema = self._resolved(items if isinstance(items, dict) else {})
        if count > len(out) and _plain_string(item_schema):
            return out + [_fit_length(s, item_schema)
                          for s in distinct_items(self.subject, count - len(out), self.rng)]
        if schema.get("uniqueItems") and item_schema.get("enum"):  # a set of Literals: drawn without repeats
            return out + self.rng.sample(item_schema["enum"], min(count - len(out), len(item_schema["enum"])))
        seen = {json.dumps(v, sort_keys=True) for v in out}
        for _ in range(10 * count):
            if len(out) >= count:
                break
            value = self.value(item_schema, None, depth + 1, name)
            key = json.dumps(value, sort_keys=True)
            if schema.get("uniqueItems") and key in seen:
                continue
            seen.add(key)
            out.append(value)
        return out

    def _integer(self, schema: dict[str, Any], name: str) -> int:
        """A score by name (within the bounds), else a draw within the bounds, a multiple of multipleOf."""
        lo, hi = _integer_bounds(schema)
        if self.score is not None and _SCORE_KEY.search(name):
            return _clamped(self.score, lo, hi)
        if lo is None:
            lo = 1 if hi is None or hi >= 1 else hi - 9
        if hi is None:
            hi = lo + 9 if lo > 1 else 10
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            return self.rng.randint(-(-lo // step), max(-(-lo // step), hi // step)) * step
        return self.rng.randint(lo, max(lo, hi))

    def _number(self, schema: dict[str, Any], name: str) -> float:
        """As `_integer`, for numbers: drawn strictly inside the bounds, to 3 decimals where that stays inside."""
        lo = _first_number(schema, "minimum", "exclusiveMinimum")
        hi = _first_number(schema, "maximum", "exclusiveMaximum")
        if self.score is not None and _SCORE_KEY.search(name) and _inside(float(self.score), schema):
            return float(self.score)
        if lo is None:
            lo = 0.0 if hi is None or hi >= 1 else hi - 1.0
        if hi is None:
            hi = lo + 1.0
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            first, last = math.ceil(lo / step), math.floor(hi / step)
            candidates = [k * step for k in range(first, max(first, last) + 1)[:1000] if _inside(k * step, schema)]
            if candidates:
                return float(self.rng.choice(candidates))
        exact = lo + (hi - lo) * self.rng.uniform(0.05, 0.95)
        return round(exact, 3) if _inside(round(exact, 3), schema) else exact

    def _string(self, schema: dict[str, Any], name: str) -> str:
        """A string its `pattern` matches, a formatted value (date, uuid, ...), a justification of the score, a
        sentence or two for a text-like field, else a plausible item name; within minLength..maxLength."""
        if isinstance(schema.get("pattern"), str):
            drawn = _matching(schema["pattern"], schema, self.rng)
            if drawn is not None:
                return drawn
        fmt = _FORMATS.get(schema.get("format", ""))
        if fmt is not None:
            return fmt(self.rng)
        if self.score is not None and _REASON_KEY.search(name):
            text = _justification(self.score, self.rng)
        elif _TEXT_KEY.search(name):
            text = _Writer(self.subject, self.rng).paragraphs(240, opener=False)
        else:
            text = distinct_items(self.subject, 1, self.rng)[0]
        return _fit_length(text, schema)


_PATTERN_TRIES = 60  # draws from a pattern before its lengths are given up on (a draw that matches is kept)


def _matching(pattern: str, schema: dict[str, Any], rng: random.Random) -> str | None:
    """A string that `pattern` matches (searched, as JSON Schema reads a pattern), drawn by rstr's `xeger`:
    structured outputs keep a schema's pattern (`Field(pattern=...)`, an id like "ABC-1234"). One within the
    schema's lengths where a few draws find one; None where the pattern is not Python regex syntax or no draw
    matches it (a lookaround xeger spells out)."""
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError):
        return None
    lo, hi = schema.get("minLength") or 0, schema.get("maxLength")
    # how far open repeats run (tries of each), anywhere up to it or all of it: drawn anywhere in 1..51, `[a-z]+`
    # met a minLength of 50 in 2 of 51 draws, and 64% of answers were too short for a strict client
    plan = [(3, False), (max(3, lo), False), (max(1, lo // 2), False), (max(1, lo // 4), False), (1, False)]
    if lo:  # one open repeat past its one least character to make up minLength, or two, three or four of them
        plan += [(max(1, lo // k - 1), True) for k in (1, 2, 3, 4)]
    found = None
    for i in range(_PATTERN_TRIES):
        spread, full = plan[i % len(plan)]
        try:
            text = _Xeger(rng, spread, full).xeger(pattern)
        except (_TooLong, KeyError, IndexError):  # a backreference to a group this draw skipped (`(?:(a)|b)\1`),
            continue  # a class of no printable character (`[^\x00-\x7f]`)
        if compiled.search(text) is None:
            continue
        found = text
        if lo <= len(text) and (hi is None or len(text) <= hi):
            break
    return found


_PATTERN_CHARS = 100_000  # the longest draw from a pattern: `(a{60000}){60000}` would take 3.6 GB
_NONWORD = "".join(sorted(set(string.printable).difference(string.ascii_letters + string.digits + "_")))  # `\W`


class _TooLong(Exception):
    """A draw past _PATTERN_CHARS: the pattern is given up on, as one xeger cannot spell."""


class _Xeger(Xeger):
    """rstr's xeger with open repeats (`+`, `*`, `{2,}`) run at most `spread` past their least count (`full`: all
    of it), not up to 100: beside a maxLength, a draw of `[a-z]+-[a-z]+` must be short to fit. Also: the same draw in every process
    (rstr spells `[^...]` and `\\W` from a set, whose order follows the process's string hash seed, so an
    emulator answer changed between runs), a least count over rstr's 100 (`[A-Z]{150}` raised ValueError), and
    the syntax rstr does not know (atomic groups, possessive repeats, `(?(1)a|b)`: KeyError, a 500)."""

    def __init__(self, rng: random.Random, spread: int, full: bool = False) -> None:
        super().__init__(rng, nonword=_NONWORD)
        self.spread, self.full = spread, full
        self._cases = {
            **self._cases,
            "atomic_group": lambda x: "".join(self._handle_state(i) for i in x),
            "possessive_repeat": lambda x: self._handle_repeat(*x),
            "groupref_exists": lambda x: "".join(
                self._handle_state(i) for i in (x[1] if x[0] in self._cache else x[2] or ())),
        }

    def _handle_in(self, value: Any) -> Any:
        candidates = list(chain(*(self._handle_state(i) for i in value)))
        if candidates and candidates[0] is False:  # a negated class: printable characters but these, in order
            candidates = sorted(set(string.printable).difference(candidates[1:]))
        return self._random.choice(candidates)

    def _handle_repeat(self, start_range: int, end_range: int, value: Any) -> str:
        most = max(start_range, min(end_range, start_range + self.spread))
        times = most if self.full else self._random.randint(start_range, most)
        result = []
        size = 0
        for _ in range(times):
            piece = "".join(self._handle_state(i) for i in value)
            size += len(piece)
            if size > _PATTERN_CHARS:
                raise _TooLong
            result.append(piece)
        return "".join(result)


def _plain_string(schema: dict[str, Any]) -> bool:
    """A string schema with nothing but lengths to keep: distinct item names fit it."""
    return schema.get("type", "string") == "string" and not any(
        k in schema for k in ("enum", "const", "format", "pattern", "anyOf", "oneOf", "properties", "items"))


def _fit_length(text: str, schema: dict[str, Any]) -> str:
    """`text` repeated up to minLength and cut at maxLength (without a trailing space where it can)."""
    lo, hi = schema.get("minLength") or 0, schema.get("maxLength")
    while len(text) < lo:
        text = f"{text} {text}"
    if hi is not None and len(text) > hi:
        cut = text[:hi]
        text = cut.rstrip() if len(cut.rstrip()) >= lo else cut
    return text


def _clamped(value: int, lo: int | None, hi: int | None) -> int:
    """`value` within lo..hi, either of which may be absent (the lower bound wins a clash)."""
    value = value if hi is None else min(value, hi)
    return value if lo is None else max(value, lo)


def _first_number(schema: dict[str, Any], *keys: str) -> float | None:
    """The first of `keys` that holds a number (a boolean is draft-4 exclusiveness, not a bound)."""
    return next((float(schema[k]) for k in keys if isinstance(schema.get(k), (int, float))
                 and not isinstance(schema[k], bool)), None)


def _integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """The smallest and largest integers the schema's minimum/maximum (exclusive or not) allow, or None."""
    lo, xlo = _first_number(schema, "minimum"), _first_number(schema, "exclusiveMinimum")
    hi, xhi = _first_number(schema, "maximum"), _first_number(schema, "exclusiveMaximum")
    lows = ([math.ceil(lo)] if lo is not None else []) + ([math.floor(xlo) + 1] if xlo is not None else [])
    highs = ([math.floor(hi)] if hi is not None else []) + ([math.ceil(xhi) - 1] if xhi is not None else [])
    return max(lows, default=None), min(highs, default=None)


def _inside(value: float, schema: dict[str, Any]) -> bool:
    """Whether `value` keeps the schema's minimum/maximum and exclusive bounds."""
    lo, hi = _first_number(schema, "minimum"), _first_number(schema, "maximum")
    xlo, xhi = _first_number(schema, "exclusiveMinimum"), _first_number(schema, "exclusiveMaximum")
    return ((lo is None or value >= lo) and (hi is None or value <= hi)
            and (xlo is None or value > xlo) and (xhi is None or value < xhi))


_SCORE_KEY = re.compile(r"score|rating|grade|points|quality", re.IGNORECASE)
_REASON_KEY = re.compile(r"reason|justif|explan|rationale|comment", re.IGNORECASE)
_JUDGE_RE = re.compile(
    r"(?:\b(?:score|rating)\b|\brate\s+(?:the|this|each|its|how|on)\b|\bevaluate\b)"
    r".{0,200}?(?:\bscale\b|\bpoints?\b|score\s*:|\b\d+\s*(?:-|to|–)\s*\d+\b)", re.IGNORECASE | re.DOTALL)
_SCALE_RE = re.compile(r"\b(\d{1,2})\s*(?:-|to|–|and)\s*(\d{1,3})\b")
_DOC_LABEL_RE = re.compile(r"\b(extract|text|document|passage|sample|content)\s*:[ \t]*\n?", re.IGNORECASE)
_EDU_WORDS = frozenset(
    "because therefore example examples define definition theorem concept concepts students learn learning "
    "explain explains equation process principle principles study understand understanding lesson chapter "
    "science history mathematics problem solution method analysis evidence experiment observe describes "
    "important consider shows result results function energy system structure".split())
_SPAM_WORDS = frozenset(
    "buy click free subscribe casino discount offer cookie cookies login sign price sale cheap deal deals "
    "winner bonus shipping cart order unsubscribe viagra loan bitcoin follow share like".split())


def judge_score(text: str, lo: int = 0, hi: int = 5) -> int:
    """A deterministic quality score in [lo, hi] from surface cues of educational value, like a rater
    would give: textbook-like explanation scores high; short, spammy or boilerplate text low."""
    words = re.findall(r"[A-Za-z']+", text.lower())
    if not words:
        return lo
    edu = sum(w in _EDU_WORDS for w in words) / len(words)
    spam = sum(w in _SPAM_WORDS for w in words) / len(words)
    sentences = max(1, len(re.findall(r"[.!?](?:\s|$)", text)))
    avg_sentence = len(words) / sentences
    alpha = len(words) / max(1, len(text.split()))
    value = (min(1.0, len(words) / 250) * 1.5 + min(1.0, edu / 0.04) * 2.0 + alpha * 1.0
             + (0.5 if 8 <= avg_sentence <= 35 else 0.0) - min(1.0, spam / 0.03) * 3.0)
    return max(lo, min(hi, lo + round(value / 5.0 * (hi - lo))))


def _judged_span(prompt: str) -> tuple[int, int]:
    """Where the judged document lies in a judging prompt: from its label ("The extract:", "Text:") to the
    paragraph that refers back to it (FineWeb-Edu's "After examining the extract:", "Rate the text above
    ..."), else to the end; without a label, the longest paragraph. The document is data, whatever it
    says: a date range, a heading line or "JSON" in it is not an instruction."""
    label = _DOC_LABEL_RE.search(prompt)
    if label:
        word = re.escape(label.group(1))
        closing = re.compile(rf"\n[ \t]*\n(?=[^\n]{{0,80}}\b{word}\b[^\n]{{0,80}}:[ \t]*(?:\n|$)"  # After ... extract:
                             rf"|[ \t]*(?:now[ \t]+)?(?:rate|score|evaluate|grade|judge|assess)\b[^\n]*\b{word}\b)",
                             re.IGNORECASE)
        ends = [m.start() for m in closing.finditer(prompt, label.end())]
        end = ends[-1] if ends else len(prompt)
        if len(prompt[label.end():end].strip()) > 20:
            return label.end(), end
    spans = [(m.start(), m.end()) for m in re.finditer(r"(?:[^\n]|\n(?![ \t]*\n))+", prompt)] or [(0, 0)]
    return max(spans, key=lambda s: s[1] - s[0])


def _judged_text(prompt: str) -> str:
    start, end = _judged_span(prompt)
    return prompt[start:end]


def _justification(score: int, rng: random.Random) -> str:
    good = ("The extract explains its concepts clearly and coherently, with examples a student could follow.",
            "It is well organized and stays focused on educational content.")
    poor = ("The extract is mostly promotional or fragmentary and offers little educational value.",
            "It lacks coherent explanation and would not help a student learn.")
    return " ".join(rng.sample(good if score >= 3 else poor, 2))


def _judge(prompt: str, body: dict[str, Any], rng: random.Random) -> str:
    """An LLM-judge answer: a short justification and a score in the rubric's scale and format (the prompt
    less the judged document: FineWeb-Edu's rubric names no range, so 0-5, whatever dates the page has)."""
    start, end = _judged_span(prompt)
    rubric = prompt[:start] + prompt[end:]
    scales = [(int(a), int(b)) for a, b in _SCALE_RE.findall(rubric) if int(a) < int(b) <= 100]
    lo, hi = scales[0] if scales else (0, 5)
    score = judge_score(prompt[start:end], lo, hi)
    if wants_json(body, rubric):
        return json.dumps({"reason": _justification(score, rng), "score": score})
    label = re.search(r"([A-Z][A-Za-z ]{0,30}score)\s*:\s*<", rubric)
    return f"{_justification(score, rng)}\n\n{label.group(1) if label else 'Score'}: {score}"


_STORY_NAMES = ("Lily", "Max", "Tom", "Mia", "Ben", "Sam", "Zoe", "Leo", "Ava", "Finn", "Rosa", "Kai", "Nina",
                "Omar", "Ella", "Jack", "Lucy", "Noah", "Ruby", "Theo")
_STORY_ANIMALS = ("cat", "dog", "bird", "frog", "duck", "bunny", "bear", "fish", "puppy", "kitten", "mouse", "owl",
                  "pig", "goat", "hen", "fox")
_STORY_PLACES = ("park", "garden", "pond", "yard", "beach", "farm", "forest", "kitchen", "hill", "street", "school",
                 "river", "barn", "shop")
_STORY_THINGS = ("ball", "kite", "box", "hat", "cup", "boat", "drum", "apple", "book", "car", "sock", "leaf",
                 "shell", "spoon", "bell", "flower")
_STORY_FEELINGS = ("happy", "sad", "glad", "sleepy", "brave", "proud", "scared", "excited", "calm", "silly")
_STORY_BEGIN = ("{name} had a little {animal}.", "One day, {name} went to the {place}.",
                "There was a {feeling} {animal} who lived near the {place}.", "{name} woke up early one morning.")
_STORY_END = ("It was a very good day.", "At night, {name} was {feeling} and tired.", "{name} said thank you.",
              "Now {name} knew what to do.", "They went home with big smiles.")
_STORY_SENTENCES = (
    "The sun was warm and bright.",
    "{name} saw a {color} {thing} on the ground.", "\"Look!\" said {name}.", "The {animal} ran to the {thing}.",
    "{name} felt {feeling}.", "They played all day long.", "Then it began to rain.",
    "{name} and {friend} sat under a big tree.", "The {animal} did not want to go home.",
    "\"Can I help?\" asked {friend}.", "They looked for the {thing} in the {place}.",
    "{friend} found it near a rock.", "Everyone clapped and smiled.",
    "The {animal} gave a soft little yawn.", "{name} learned something new about {x}.",
    "Mom said, \"You did a good job.\"", "The wind made the leaves dance.", "{friend} shared a snack.",
    "{name} gave the {thing} to {friend}.", "The {animal} hopped and hopped.",
    "Soon the sky was {color}.", "They sang a happy song.", "Birds were singing in the {place}.",
    "{friend} laughed out loud.", "The {thing} was too high to reach.", "{name} tried again and again.",
)
_STORY_COLORS = ("red", "blue", "green", "yellow", "pink", "orange", "purple", "gray")
_STORY_WORDS_RE = re.compile(r'\b(verb|noun|adjective)\s+"([^"]+)"', re.IGNORECASE)
_PARAGRAPHS_RE = re.compile(r"\b(\d{1,2})(?:\s*(?:to|-|–)\s*(\d{1,2}))?\s+paragraphs?\b", re.IGNORECASE)


def story(subject: str, prompt: str, budget_chars: int, rng: random.Random) -> str:
    """A very simple children's story (TinyStories style) that uses the words the prompt requires."""
    d = {k: _Deck(v, rng) for k, v in (("s", _STORY_SENTENCES), ("animal", _STORY_ANIMALS), ("place", _STORY_PLACES),
                                       ("thing", _STORY_THINGS), ("feeling", _STORY_FEELINGS),
                                       ("color", _STORY_COLORS))}
    name, friend = rng.sample(_STORY_NAMES, 2)
    required = dict((k.lower(), w) for k, w in _STORY_WORDS_RE.findall(prompt) if w.strip())
    m = _PARAGRAPHS_RE.search(prompt)
    n_paragraphs = rng.randint(int(m.group(1)), int(m.group(2) or m.group(1))) if m else rng.randint(3, 5)
    per_paragraph = max(1, min(6, budget_chars // max(1, 60 * n_paragraphs)))
    x = subject.rsplit(" > ", 1)[-1].lower()
    extra = []
    if required:
        extra.append(f"{name} liked to {required.get('verb', 'play')} with a {required.get('adjective', 'little')} "
                     f"{required.get('noun', 'ball')}.")
    def fill(template: str) -> str:
        return template.format(name=name, friend=friend, animal=d["animal"].draw(), x=x, place=d["place"].draw(),
                               thing=d["thing"].draw(), feeling=d["feeling"].draw(), color=d["color"].draw())

    paragraphs = []
    for p in range(n_paragraphs):
        sentences = [fill(d["s"].draw()) for _ in range(rng.randint(max(2, per_paragraph - 1), max(3, per_paragraph)))]
        if p == 0:
            sentences[:0] = [fill(rng.choice(_STORY_BEGIN)), *extra]
        if p == n_paragraphs - 1:
            sentences.append(fill(rng.choice(_STORY_END)))
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


_CODE_FUNCS = (
    ("count_{n}", "items, target", "Return how many elements of `items` are equal to `target`.",
     "    count = 0\n    for item in items:\n        if item == target:\n            count += 1\n    return count",
     lambda r: ([r.randint(0, 3) for _ in range(6)], r.randint(0, 3)), "O(n)"),
    ("sum_of_squares_{n}", "numbers", "Return the sum of the squares of `numbers`.",
     "    return sum(x * x for x in numbers)", lambda r: ([r.randint(-5, 9) for _ in range(4)],), "O(n)"),
    ("running_total_{n}", "numbers", "Return the list of prefix sums of `numbers`.",
     "    totals, total = [], 0\n    for x in numbers:\n        total += x\n        totals.append(total)\n"
     "    return totals", lambda r: ([r.randint(0, 9) for _ in range(5)],), "O(n)"),
    ("is_palindrome_{n}", "text", "Return True if `text` reads the same backwards, ignoring case and spaces.",
     "    cleaned = [c.lower() for c in text if not c.isspace()]\n    return cleaned == cleaned[::-1]",
     lambda r: (r.choice(["Never odd or even", "level", "python", "Step on no pets", "data"]),), "O(n)"),
    ("most_common_{n}", "items", "Return the most frequent element of `items` (the first one on a tie).",
     "    counts = {}\n    for item in items:\n        counts[item] = counts.get(item, 0) + 1\n"
     "    return max(items, key=lambda item: counts[item])",
     lambda r: ([r.choice("abc") for _ in range(7)],), "O(n)"),
    ("chunk_{n}", "items, size", "Split `items` into consecutive lists of at most `size` elements.",
     "    return [items[i:i + size] for i in range(0, len(items), size)]",
     lambda r: (list(range(r.randint(4, 7))), r.randint(2, 3)), "O(n)"),
    ("unique_{n}", "items", "Return the elements of `items` without repeats, keeping their first order.",
     "    seen = set()\n    result = []\n    for item in items:\n        if item not in seen:\n"
     "            seen.add(item)\n            result.append(item)\n    return result",
     lambda r: ([r.randint(1, 4) for _ in range(7)],), "O(n)"),
    ("clamp_{n}", "values, low, high", "Limit every number in `values` to the range [low, high].",
     "    return [min(max(v, low), high) for v in values]",
     lambda r: ([r.randint(-9, 19) for _ in range(5)], 0, 10), "O(n)"),
    ("differences_{n}", "numbers", "Return the differences between consecutive elements of `numbers`.",
     "    return [b - a for a, b in zip(numbers, numbers[1:])]",
     lambda r: ([r.randint(0, 20) for _ in range(5)],), "O(n)"),
    ("longest_word_{n}", "sentence", "Return the longest word in `sentence` (the first one on a tie).",
     "    return max(sentence.split(), key=len)",
     lambda r: (r.choice(["the quick brown fox", "data beats clever code", "read the docs first"]),), "O(n)"),
)


def _slug(subject: str) -> str:
    words = re.findall(r"[a-z]+", subject.rsplit(" > ", 1)[-1].lower())
    return "_".join(words[-2:]) or "items"


def _function(template: tuple[Any, ...], slug: str, rng: random.Random, with_body: bool = True) -> str:
    """A Python function with a docstring whose doctest examples were computed by running it."""
    name_fmt, params, doc, body, make_args, _ = template
    name = name_fmt.format(n=slug)
    namespace: dict[str, Any] = {}
    exec(f"def f({params}):\n{body}\n", namespace)  # our own fixed templates, to compute the examples
    examples = []
    for _ in range(2):
        args = make_args(rng)
        examples.append(f"    >>> {name}({', '.join(map(repr, args))})\n    {namespace['f'](*args)!r}")
    doctests = "\n".join(examples)
    return f'def {name}({params}):\n    """{doc}\n\n{doctests}\n    """\n' + (body if with_body else "    ...")


def code_document(subject: str, n_exercises: int | None, tail_exercises: int, budget_chars: int,
                  rng: random.Random) -> str:
    """N solved Python exercises, or a textbook section: prose, a worked function with doctests, more
    prose, then `tail_exercises` signatures with docstrings for the reader to complete."""
    writer, slug = _Writer(subject, rng), _slug(subject)
    funcs = list(_CODE_FUNCS)
    rng.shuffle(funcs)
    if n_exercises:
        per_item = max(200, budget_chars // n_exercises)
        parts = [f"Exercise {i}.\n\n```python\n{_function(t, slug, rng)}\n```\n\n"
                 f"{writer.paragraphs(max(120, per_item - 400), opener=False)} Time complexity: {t[5]}."
                 for i, t in enumerate(funcs[:n_exercises], 1)]
        return "\n\n".join(parts)
    prose_chars = max(200, (budget_chars - 900) // 2)
    return (f"{writer.paragraphs(prose_chars)}\n\n```python\n{_function(funcs[0], slug, rng)}\n```\n\n"
            f"{writer.paragraphs(prose_chars, opener=False)}\n\nExercises\n\n"
            + "\n\n".join(f"```python\n{_function(t, slug, rng, with_body=False)}\n```"
                            for t in funcs[1:1 + (tail_exercises or 2)]))


_WRITE_RE = re.compile(r"(?:^|[.!?:\n]\s*)(?:please\s+)?(?:write|compose|draft|create|produce|prepare)\b"
                       r"(?!\s+(?:a\s+|an\s+)?(?:list|json|array)\b)", re.IGNORECASE)
_NUMBER = r"(\d{1,3}|" + "|".join(_NUMBER_WORDS) + r")(?:\s*(?:to|-|–|or)\s*(\d{1,3}))?"
_EXERCISES_RE = re.compile(_NUMBER + r"\s+(?:[\w-]+\s+){0,3}?(?:exercises?|problems?)\b", re.IGNORECASE)
_QUESTIONS_RE = re.compile(_NUMBER + r"\s+(?:[\w-]+\s+){0,3}?questions?\b", re.IGNORECASE)
_JSON_KEY_RE = re.compile(r'\{\s*"(\w+)"\s*:\s*\[')


def _count(rx: re.Pattern[str], prompt: str, rng: random.Random) -> int | None:
    """N in "5 exercises", or a draw from "6 to 8 questions"."""
    m = rx.search(prompt)
    if not m:
        return None
    low = int(m.group(1)) if m.group(1).isdigit() else _NUMBER_WORDS[m.group(1).lower()]
    high = int(m.group(2)) if m.group(2) else low
    return rng.randint(low, high) if 1 <= low <= high <= 100 else None


def default_responder(body: dict[str, Any], seed: int, max_tokens: int) -> str:
    """The completion text for a chat request body (OpenAI or Anthropic shape), derived from `seed`.

    - a required JSON schema (see `required_schema`: response_format, output_config, a forced tool): an
      instance of the schema (lists of distinct items, scores);
    - a judging prompt ("score ... on a scale of 0 to 5", FineWeb-Edu's "Educational score:
      <points>"): a justification and a score that follows the judged text's educational cues;
    - a writing prompt for a story: a very simple children's story using the required words; for
      Python: prose with tested functions (doctests computed by running them) or N solved exercises;
    - a writing prompt ("Write ...") asking for N exercises or questions: that many worked exercises
      (problem, solution, answer) or questions with answers; other writing prompts: prose, ending
      with a few exercises when the prompt mentions exercises;
    - a request for N items ("List 20 subtopics of X"): N distinct items, numbered, or as JSON (an
      array, or {"key": [...]} when the prompt shows that shape) when JSON was asked for.
    Length: about 60-90% of max_tokens (capped at 700 tokens), or the "N words" the prompt asks for.
    """
    rng = random.Random(seed)
    prompt = prompt_text(body.get("messages") or [], body.get("system"))
    subject = subject_of(prompt)
    n = requested_count(prompt)
    judging = _JUDGE_RE.search(prompt) is not None and (n is None or "score" in prompt.lower())
    schema = required_schema(body)
    if schema is not None:
        score = judge_score(_judged_text(prompt)) if judging else None
        return json.dumps(from_schema(schema, subject, n, rng, score=score), ensure_ascii=False)
    if judging:
        return _judge(prompt, body, rng)
    writing = _WRITE_RE.search(prompt) is not None
    first_sentence = re.split(r"(?<=[.!?])\s|\n", prompt.strip(), maxsplit=1)[0]
    # What the first sentence asks to write decides the document: "Write 5 exercises ..." is a set of
    # exercises, "Write a question-and-answer text" a Q&A; "end with two exercises" later on is a tail.
    n_exercises = _count(_EXERCISES_RE, first_sentence, rng) if writing else None
    n_questions = _count(_QUESTIONS_RE, first_sentence, rng) if writing else None
    if writing and n_questions is None and re.search(r"question-and-answer|\bQ&A\b|\bFAQ\b", first_sentence, re.I):
        n_questions = _count(_QUESTIONS_RE, prompt, rng) or rng.randint(5, 8)
    tail_exercises = (_count(_EXERCISES_RE, prompt, rng) or 3) if writing and re.search(
        r"\bexercises?\b", prompt, re.IGNORECASE) else 0
    asks_list = n is not None and (not writing or requested_count(first_sentence) is not None)
    if asks_list and not (n_exercises or n_questions):
        items = distinct_items(subject, n, rng)
        if wants_json(body, prompt):
            key = _JSON_KEY_RE.search(prompt)
            if key or (body.get("response_format") or {}).get("type") == "json_object":
                return json.dumps({key.group(1) if key else "items": items}, ensure_ascii=False)
            return json.dumps(items, ensure_ascii=False)
        return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))
    asked = re.search(r"\b(\d{2,5})\s*(?:-\s*\d+\s*)?words\b", prompt, re.IGNORECASE)
    n_words = int(asked.group(1)) if asked else None
    budget = int(n_words * 6.5) if n_words else int(min(max_tokens, 700) * rng.uniform(0.6, 0.9)) * CHARS_PER_TOKEN
    writer = _Writer(subject, rng)
    if writing and re.search(r"\b(?:python|code|program|programming|function)\b", first_sentence, re.IGNORECASE):
        text = code_document(subject, n_exercises, tail_exercises, budget, rng)
    elif writing and re.search(r"\b(?:story|stories|tale|fable)\b", first_sentence, re.IGNORECASE):
        text = story(subject, prompt, budget, rng)
    elif n_exercises:
        text = writer.opener() + "\n\n" + writer.exercises(n_exercises, budget)
    elif n_questions:
        text = writer.opener() + "\n\n" + writer.questions(n_questions, budget)
    elif tail_exercises:
        text = writer.paragraphs(int(budget * 0.6), n_words and int(n_words * 0.6))
        text += "\n\n" + writer.exercises(tail_exercises, int(budget * 0.4), heading=True)
    else:  # as many words as asked for: max_tokens may cut it (finish_reason "length")
        text = writer.paragraphs(10**8 if n_words else budget, n_words)
    return json.dumps({"title": subject, "text": text}, ensure_ascii=False) if wants_json(body, prompt) else text


_EXTRACT_TAG = re.compile(r"<extract>\s*(.*?)\s*</extract>", re.DOTALL)


def seed_copying(responder: Callable[[dict[str, Any]], str], share: float) -> Callable[[dict[str, Any]], str]:
    """`responder` made to paste the prompt's web extract (the `<extract>` block of the shipped templates)
    into about `share` of its answers, after the first paragraph, as a model that copies its seed instead
    of writing new text would. Which answers copy depends on the request alone (its hash)."""

    def respond(body: dict[str, Any]) -> str:
        text = responder(body)
        found = _EXTRACT_TAG.search(prompt_text(body.get("messages") or [], body.get("system")))
        draw = int(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8], 16) / 2**32
        if found is None or draw >= share:
            return text
        head, sep, tail = text.partition("\n\n")
        return f"{head}\n\n{found.group(1)}{sep}{tail}"

    return respond
