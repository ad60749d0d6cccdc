"""Topic taxonomies: a weighted tree of subjects > topics > subtopics, the seeds of a dataset.

phi-1.5's diversity came from ~20K topics used as prompt seeds. A `Taxonomy` is loaded from YAML, CSV
(a path column) or a markdown outline, saved back, grown through the LLM engine (`grow`), and sampled
by weight with per-topic quotas (`allocate`, `sample`), with a coverage report (`coverage`).

Topic ids are stable: a hash of the topic's path, so the same outline always gives the same ids
whatever order it is loaded in (an explicit `id` in a file wins).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import heapq
import io
import json
import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from textbookgen.journal import DONE_STATUSES
from textbookgen.jsonl import decode_utf8
from textbookgen.yamlfile import yaml_problem

if TYPE_CHECKING:
    from textbookgen.engine import ChatRequest

PATH_SEP = " > "
# Keys that group children rather than name a topic (Khan Academy tables of contents, generic outlines).
CONTAINER_KEYS = frozenset(
    {
        "children",
        "topics",
        "subtopics",
        "chapters",
        "sections",
        "subsections",
        "units",
        "lessons",
        "items",
        "textbook",
        "courses",
        "subjects",
    }
)
NATIVE_KEYS = frozenset({"name", "id", "weight", "meta", "children", "topics", "quota"})
# What a node with a `name` may hold besides NATIVE_KEYS: any other key is a typo (`weigth`), not a topic.
NODE_KEYS = NATIVE_KEYS | CONTAINER_KEYS | {"description"}
_PATH_SEPS = (" > ", ">", " / ", "/", " | ", "|", "::")


class TaxonomyError(ValueError):
    """A taxonomy file could not be read; the message names the file and, where known, the line."""


class TopicError(TaxonomyError):
    """A problem with one topic, named by its path; `Taxonomy.load` adds the file and the topic's line."""

    def __init__(self, path: tuple[str, ...], problem: str) -> None:
        super().__init__(f"topic {PATH_SEP.join(path)!r}: {problem}")
        self.path = path


@dataclass
class Topic:
    """One node of the tree. `path` is the names from the top-level subject down to this node."""

    name: str
    path: tuple[str, ...]
    id: str = ""
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    children: list[Topic] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = topic_id(self.path)

    @property
    def path_str(self) -> str:
        return PATH_SEP.join(self.path)

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def add(self, name: str, weight: float = 1.0, meta: dict[str, Any] | None = None) -> Topic:
        child = Topic(name=name, path=(*self.path, name), weight=weight, meta=dict(meta or {}))
        self.children.append(child)
        return child

    def walk(self) -> Iterator[Topic]:
        yield self
        for child in self.children:
            yield from child.walk()


def topic_id(path: Iterable[str]) -> str:
    """Stable id of a topic: 12 hex of the sha1 of its case-folded path."""
    key = PATH_SEP.join(p.strip().casefold() for p in path)
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


@dataclass
class Taxonomy:
    """A forest of top-level subjects under one name."""

    name: str
    topics: list[Topic] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- structure -------------------------------------------------------------------------
    def walk(self) -> Iterator[Topic]:
        for t in self.topics:
            yield from t.walk()

    def leaves(self) -> list[Topic]:
        return [t for t in self.walk() if t.is_leaf]

    def __len__(self) -> int:
        return sum(1 for _ in self.walk())

    def get(self, topic_id_: str) -> Topic:
        for t in self.walk():
            if t.id == topic_id_:
                return t
        raise KeyError(topic_id_)

    def depth(self) -> int:
        return max((len(t.path) for t in self.walk()), default=0)

    def add(self, name: str, weight: float = 1.0, meta: dict[str, Any] | None = None) -> Topic:
        topic = Topic(name=name, path=(name,), weight=weight, meta=dict(meta or {}))
        self.topics.append(topic)
        return topic

    def merge_duplicates(self) -> int:
        """Merge siblings with the same name (an outline listing a discipline as a bullet and again as
        a heading): one topic, children joined. Returns how many nodes were merged away."""
        merged = 0

        def fold(nodes: list[Topic]) -> list[Topic]:
            nonlocal merged
            by_name: dict[str, Topic] = {}
            out: list[Topic] = []
            for n in nodes:
                key = n.name.casefold()
                if key in by_name:
                    by_name[key].children.extend(n.children)
                    by_name[key].meta = {**n.meta, **by_name[key].meta}
                    merged += 1
                else:
                    by_name[key] = n
                    out.append(n)
            for n in out:
                n.children = fold(n.children)
            return out

        self.topics = fold(self.topics)
        return merged

    def dedupe_ids(self) -> None:
        """Make ids unique (same path twice in an outline): later twins get a `~n` suffix."""
        seen: Counter[str] = Counter()
        for t in self.walk():
            seen[t.id] += 1
            if seen[t.id] > 1:
                t.id = f"{t.id}~{seen[t.id]}"

    def content_hash(self) -> str:
        """Hash of the tree's names, ids, weights and metadata (what sampling depends on)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    # ---- probabilities, allocation, sampling --------------------------------------------------
    def leaf_probabilities(self, weighting: str = "hierarchical") -> tuple[list[Topic], np.ndarray]:
        """Probability of each leaf. `hierarchical`: weights are relative among siblings, so each
        subject gets its share whatever its number of leaves; `flat`: proportional to leaf weight."""
        check_weights(self)
        leaves: list[Topic] = []
        probs: list[float] = []

        def visit(nodes: list[Topic], mass: float) -> None:
            total = sum(n.weight for n in nodes)  # > 0 below a sampled parent (check_weights)
            for n in nodes:
                share = mass * n.weight / total if total > 0 else 0.0
                if n.is_leaf:
                    leaves.append(n)
                    probs.append(share)
                else:
                    visit(n.children, share)

        if weighting == "hierarchical":
            visit(self.topics, 1.0)
        elif weighting == "flat":
            leaves = self.leaves()
            probs = [t.weight for t in leaves]
        else:
            raise ValueError(f"weighting must be 'hierarchical' or 'flat', not {weighting!r}")
        p = np.asarray(probs, dtype=np.float64)
        if not leaves or p.sum() <= 0:
            raise ValueError(f"taxonomy {self.name!r} has no leaf with a positive weight")
        return leaves, p / p.sum()

    def allocate(
        self,
        n: int,
        seed: int,
        *,
        weighting: str = "hierarchical",
        max_per_topic: int | None = None,
        min_per_topic: int = 0,
    ) -> dict[str, int]:
        """Samples per leaf id, summing to `n`: the counts of `sample` (same arguments)."""
        counts = Counter(t.id for t in self.sample(
            n, seed, weighting=weighting, max_per_topic=max_per_topic, min_per_topic=min_per_topic
        ))
        return dict(counts)

    def sample(
        self,
        n: int,
        seed: int,
        *,
        weighting: str = "hierarchical",
        max_per_topic: int | None = None,
        min_per_topic: int = 0,
    ) -> list[Topic]:
        """`n` leaves whose element i depends on (seed, i) only, never on `n`: a larger build extends a
        smaller one, so the journal replays the answers already paid for.

        Fixed counts come first, interleaved: each leaf's `meta.quota`, and `min_per_topic` of every
        other leaf. The rest follows the weights by `weighted_sequence`: every prefix (a build stopped
        by its budget, the first 2,000 prompts) gives each leaf about its share, a leaf's repeats are
        evenly spaced, and a leaf that reaches `max_per_topic` drops out, its share going to the others.
        A leaf's phase is drawn from its id, so a leaf added, removed or reweighted changes no other leaf's
        count beyond the share it takes or gives back."""
        leaves, p = self.leaf_probabilities(weighting)
        fixed = {i: t.meta["quota"] for i, t in enumerate(leaves) if "quota" in t.meta}
        rest = n - sum(fixed.values())
        free = np.asarray([i for i in range(len(leaves)) if i not in fixed], dtype=np.int64)
        if rest < 0 or (rest > 0 and not len(free)):
            raise ValueError(f"topic quotas ({sum(fixed.values())}) do not fit {n} samples")
        if max_per_topic is not None and max_per_topic * len(free) < rest:
            raise ValueError(f"max_per_topic={max_per_topic} x {len(free)} topics < {rest} samples")
        if min_per_topic * len(free) > rest:
            raise ValueError(f"min_per_topic={min_per_topic} x {len(free)} topics > {rest} samples")
        head_counts = np.zeros(len(leaves), dtype=np.int64)
        head_counts[free] = min_per_topic
        for i, q in fixed.items():
            head_counts[i] = q
        head = _interleave(head_counts, np.random.default_rng([seed, 0x5A3]))
        cap = np.full(len(free), (max_per_topic if max_per_topic is not None else n) - min_per_topic)
        phases = np.array([keyed_uniform(seed, "topic", leaves[int(i)].id) for i in free])
        tail = free[weighted_sequence(n - len(head), p[free], phases, cap=cap)]
        return [leaves[int(i)] for i in (*head, *tail)]

    def coverage(self, topic_ids: Iterable[str]) -> Coverage:
        """How many samples each leaf got (e.g. the `topic_id` column of prompts or documents)."""
        counts = Counter(topic_ids)
        leaves = self.leaves()
        per_subject: Counter[str] = Counter()
        by_id = {t.id: t for t in self.walk()}
        for tid, c in counts.items():
            if tid in by_id:
                per_subject[by_id[tid].path[0]] += c
        leaf_counts = [counts.get(t.id, 0) for t in leaves]
        covered = sum(1 for c in leaf_counts if c > 0)
        return Coverage(
            n_samples=sum(counts.values()),
            n_leaves=len(leaves),
            covered=covered,
            share=covered / len(leaves) if leaves else 0.0,
            min_per_topic=min(leaf_counts, default=0),
            max_per_topic=max(leaf_counts, default=0),
            per_subject=dict(per_subject.most_common()),
            unknown=sum(c for tid, c in counts.items() if tid not in by_id),
        )

    def use(
        self, topic_ids: Iterable[str], tokens: Iterable[int] | None = None, *, depth: int | None = None
    ) -> list[TopicUse]:
        """Samples (and tokens, parallel to `topic_ids`) per leaf, or per branch at `depth` (its leaves
        summed; a leaf above that depth is a branch of its own), in tree order: what `coverage` sums up,
        for a report that shows which parts of a 20K-topic tree a build left thin."""
        ids = list(topic_ids)
        counts = Counter(ids)
        toks: Counter[str] = Counter()
        for tid, n in zip(ids, tokens if tokens is not None else [0] * len(ids), strict=True):
            toks[tid] += int(n or 0)
        rows: dict[tuple[str, ...], TopicUse] = {}
        for t in self.leaves():
            key = t.path if depth is None else t.path[:depth]
            row = rows.get(key)
            if row is None:
                row = rows[key] = TopicUse(PATH_SEP.join(key), t.id if depth is None else topic_id(key))
            row.leaves += 1
            row.covered += counts[t.id] > 0
            row.samples += counts[t.id]
            row.tokens += toks[t.id]
        return list(rows.values())

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def node(t: Topic) -> dict[str, Any]:
            d: dict[str, Any] = {"name": t.name, "id": t.id}
            if t.weight != 1.0:
                d["weight"] = t.weight
            if t.meta:
                d["meta"] = t.meta
            if t.children:
                d["children"] = [node(c) for c in t.children]
            return d

        out: dict[str, Any] = {"name": self.name}
        if self.meta:
            out["meta"] = self.meta
        out["topics"] = [node(t) for t in self.topics]
        return out

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        format: str | None = None,
        select: str | None = None,
        name: str | None = None,
        sep: str | None = None,
    ) -> Taxonomy:
        """Load YAML (`.yaml/.yml`), CSV (`.csv`, a `path` column) or a markdown outline (`.md`);
        `.gz` is read transparently. `select` is a dotted key path into a YAML file's subtree. `builtin:NAME` is a
        shipped topic list, as in a recipe's taxonomy.source and the `topics` commands."""
        path = _builtin_file(path) if isinstance(path, str) and path.startswith("builtin:") else Path(path)
        fmt = format or _format_of(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise TaxonomyError(f"{path}: taxonomy file not found") from None
        except IsADirectoryError:
            raise TaxonomyError(f"{path}: is a folder, not a taxonomy file") from None
        except OSError as e:
            raise TaxonomyError(f"{path}: cannot be read ({e.strerror or e})") from None
        if path.suffix == ".gz":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as e:
                raise TaxonomyError(f"{path}: not a readable gzip file ({e})") from None
        text = decode_utf8(raw, path, error=TaxonomyError)
        default_name = name or path.name.split(".")[0].replace("_", " ").replace("-", " ")
        if fmt == "yaml":
            tax = _from_yaml_text(text, path, select=select, name=default_name)
        elif fmt == "csv":
            tax = _from_csv_text(text, path, name=default_name, sep=sep)
        elif fmt == "markdown":
            tax = _from_markdown(text, name=default_name)
        elif fmt == "text":
            tax = _from_lines(text, name=default_name)
        else:
            raise TaxonomyError(f"{path}: unknown taxonomy format {fmt!r} (yaml, csv, markdown or txt)")
        if name:
            tax.name = name
        if not tax.topics:
            raise TaxonomyError(f"{path}: no topics found")
        try:
            _check_quotas(tax)
            check_weights(tax)
        except TopicError as e:
            raise _located(e, path, text if fmt == "yaml" else "") from None
        except ValueError as e:
            raise TaxonomyError(f"{path}: {e}") from None
        tax.merge_duplicates()
        tax.dedupe_ids()
        return tax

    def save(self, path: str | Path, *, format: str | None = None) -> Path:
        """Write YAML (everything), CSV (one row per node: path, id, weight, meta), markdown or text (names)."""
        path = Path(path)
        fmt = format or save_format(path)
        if fmt == "yaml":
            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # the same text, twice as fast on a 20K tree
            text = yaml.dump(self.to_dict(), Dumper=dumper, sort_keys=False, allow_unicode=True, width=110)
        elif fmt == "csv":
            text = self._to_csv()
        elif fmt == "text":
            text = "".join(f"{'  ' * (len(t.path) - 1)}{t.name}\n" for t in self.walk())
        else:
            text = self._to_markdown()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode("utf-8")
        partial = path.with_name(f".{path.name}.partial")  # a kill mid-write never leaves half a file at `path`
        try:
            partial.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    def names_only_losses(self) -> str:
        """What markdown and plain text, which hold names only, would drop ("" for nothing): a weight other
        than 1, a quota, a description or other metadata, an id of one's own (not the hash of the path)."""
        topics = list(self.walk())
        weighted = [t for t in topics if t.weight != 1.0]
        quotas = sum("quota" in t.meta for t in topics)
        described = sum(bool(set(t.meta) - {"quota"}) for t in topics)
        own_ids = sum(not t.id.startswith(topic_id(t.path)) for t in topics)  # a path twin's gets a `~n`
        lost = [
            f"the weights of {len(weighted):,} topic{'s' * (len(weighted) > 1)} (e.g. "
            f"{weighted[0].path_str!r}: {weighted[0].weight:g})" if weighted else "",
            f"{quotas:,} quota{'s' * (quotas > 1)}" if quotas else "",
            f"the descriptions or metadata of {described:,} topic{'s' * (described > 1)}" if described else "",
            f"{own_ids:,} id{'s' * (own_ids > 1)} of your own" if own_ids else "",
        ]
        return ", ".join(x for x in lost if x)

    def _to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "id", "weight", "meta"])
        for t in self.walk():
            w.writerow(
                [t.path_str, t.id, f"{t.weight:g}", json.dumps(t.meta, sort_keys=True) if t.meta else ""]
            )
        return buf.getvalue()

    def _to_markdown(self) -> str:
        lines = [f"# {self.name}", ""]

        def bullets(t: Topic, depth: int) -> None:
            for c in t.children:
                lines.append(f"{'  ' * depth}- {c.name}")
                bullets(c, depth + 1)

        for t in self.topics:
            lines += [f"## {t.name}", ""]
            bullets(t, 0)
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"


@dataclass
class TopicUse:
    """Samples and tokens of one leaf topic, or of a branch (its leaves summed)."""

    path: str
    id: str
    leaves: int = 0
    covered: int = 0
    samples: int = 0
    tokens: int = 0


@dataclass
class Coverage:
    """Samples per topic: how much of the taxonomy a set of prompts or documents touches."""

    n_samples: int
    n_leaves: int
    covered: int
    share: float
    min_per_topic: int
    max_per_topic: int
    per_subject: dict[str, int]
    unknown: int = 0

    def summary(self) -> str:
        return (
            f"{self.n_samples} samples over {self.covered}/{self.n_leaves} leaf topics "
            f"({self.share:.1%} covered; {self.min_per_topic}-{self.max_per_topic} per topic)"
        )


def keyed_bits(*key: object) -> int:
    """64 bits that depend on `key` only (blake2b of its parts): a draw named by what it is for (a topic,
    a mix cell, a prompt), not by its place in a random stream, so adding, removing or reordering other
    options, topics or prompts leaves it as it was."""
    text = "\x1f".join(str(k) for k in key)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def keyed_uniform(*key: object) -> float:
    """A uniform number in (0, 1) named by `key` (see `keyed_bits`)."""
    return (keyed_bits(*key) + 0.5) / 2.0**64


def weighted_sequence(
    n: int, p: np.ndarray, start: np.ndarray, *, cap: np.ndarray | None = None
) -> np.ndarray:
    """`n` bin indices in which bin b's j-th sample sits at time (j + start_b) / p_b, with `start` uniform
    in [0, 1) (the caller draws it per bin by name, `keyed_uniform`): the times do not depend on `n`, so
    the sequence for n is a prefix of the sequence for n + k (a larger build extends a smaller one), and a
    bin's times depend on its own weight only, up to a common scale (another bin reweighted or added moves
    no other bin's samples among themselves). Every prefix is a systematic sample: each bin gets the floor or
    ceil of its share at that time, and a bin whose share is below one sample gets in with that probability,
    so the first 2,000 prompts of a 20K-topic build still cover every subject in proportion (a fixed
    offset, as in Sainte-Lague, would give them all to the heaviest topics). A bin that reaches its `cap`
    drops out. Zero-weight bins are used, evenly, only once every other bin is full."""
    p = np.asarray(p, dtype=np.float64)
    cap = np.full(len(p), n, dtype=np.int64) if cap is None else np.asarray(cap, dtype=np.int64)
    counts = np.zeros(len(p), dtype=np.int64)
    heap = [(_time(0, start[b], p[b]), 0, start[b], b) for b in range(len(p)) if cap[b] > 0]
    heapq.heapify(heap)
    out = np.empty(n, dtype=np.int64)
    for k in range(n):
        if not heap:
            raise ValueError("per-topic caps leave no room for the remaining samples")
        *_, b = heapq.heappop(heap)
        out[k] = b
        counts[b] += 1
        if counts[b] < cap[b]:
            c = int(counts[b])
            heapq.heappush(heap, (_time(c, start[b], p[b]), c, start[b], b))
    return out


def _time(count: int, start: float, weight: float) -> float:
    return (count + start) / weight if weight > 0 else math.inf


def _interleave(counts: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Bin indices with these counts, spread out: bin b's j-th copy sits at (j + u_b) / counts[b]."""
    c = np.asarray(counts, dtype=np.int64)
    bins = np.flatnonzero(c)
    owner = np.repeat(bins, c[bins])
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(c[bins]) - c[bins], c[bins])
    position = (rank + rng.random(len(c))[owner]) / c[owner]
    order = np.lexsort((rng.random(len(owner)), position))
    return [int(owner[k]) for k in order]


# ---- loaders ------------------------------------------------------------------------------------
def _builtin_file(source: str) -> Path:
    """The file of the shipped topic list `builtin:NAME`; a TaxonomyError naming the built-ins if there is none."""
    from textbookgen.recipe import builtin_topics  # recipe imports this module

    try:
        return builtin_topics(source)
    except ValueError as err:
        raise TaxonomyError(str(err)) from None


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    return {".yaml": "yaml", ".yml": "yaml", ".csv": "csv", ".md": "markdown", ".markdown": "markdown",
            ".txt": "text"}.get(
        ext, ext.lstrip(".") or "unknown"
    )


def save_format(path: str | Path) -> str:
    """The format `save` writes for this file name; a TaxonomyError for one it cannot write (checked
    before paid work such as `grow`, not after)."""
    fmt = _format_of(Path(path))
    if fmt not in ("yaml", "csv", "markdown", "text"):
        raise TaxonomyError(
            f"{path}: unknown taxonomy format {fmt!r} (write .yaml, .csv, .md or .txt, optionally .gz)"
        )
    return fmt


def _clean_name(name: Any) -> str:
    s = str(name).strip()
    s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", s)  # markdown links -> text
    s = re.sub(r"(\*\*|__|`)", "", s)
    s = re.sub(r"\s+", " ", s)
    return s.rstrip(":").strip()


class _TopicLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader, except that a key repeated in one mapping merges its values, as same-name siblings
    are merged (`Taxonomy.merge_duplicates`), where PyYAML keeps the last one and drops the first's branch."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        if len(set(keys)) == len(keys):
            return super().construct_mapping(node, deep=deep)
        self.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                raise yaml.constructor.ConstructorError(None, None, "found unhashable key", key_node.start_mark)
            value = self.construct_object(value_node, deep=True)  # complete now, to be merged
            out[key] = _merged(out[key], value) if key in out else value
        return out


def _merged(first: Any, second: Any) -> Any:
    """Two values of one topic: mappings and lists joined (children; a list and a mapping too, the list as the
    mapping's `children`), else the one holding children, else the first (its weight, as merged siblings keep
    the first's)."""
    if isinstance(first, list) and isinstance(second, dict):  # the mapping's weight is the second's: dropped
        return first + [{k: v for k, v in second.items() if k != "weight"}]
    if isinstance(first, dict) and isinstance(second, list):
        second = {"children": second}
    if isinstance(first, dict) and isinstance(second, dict):
        return {**first, **{k: _merged(first[k], v) if k in first else v for k, v in second.items()}}
    if isinstance(first, list) and isinstance(second, list):
        return first + second
    return second if isinstance(second, (dict, list)) and not isinstance(first, (dict, list)) else first


def _from_yaml_text(text: str, path: Path, *, select: str | None, name: str) -> Taxonomy:
    try:
        data = yaml.load(text, Loader=_TopicLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise TaxonomyError(f"{path}{where}: not valid YAML: {yaml_problem(e)}") from None
    if select:
        for key in select.split("."):
            if not isinstance(data, dict) or key not in data:
                raise TaxonomyError(f"{path}: select={select!r}: key {key!r} not found")
            data = data[key]
    meta: dict[str, Any] = {}
    if isinstance(data, dict) and "topics" in data and set(data) <= {"name", "meta", "topics", "description"}:
        name = str(data.get("name") or name)
        meta = dict(data.get("meta") or {})
        data = data["topics"]
    try:
        topics = _yaml_nodes(data, ())
    except TopicError as e:
        raise _located(e, path, text) from None
    except TaxonomyError as e:
        raise TaxonomyError(f"{path}: {e}") from None
    tax = Taxonomy(name=name, topics=topics, meta=meta)
    return _unwrap_single_root(tax)


def _yaml_nodes(value: Any, parent: tuple[str, ...]) -> list[Topic]:
    """Read any common YAML shape: native nodes ({name, weight, children}), mappings of
    name -> weight | subtree | list, lists of names, lists of one-key mappings (tables of contents)."""
    out: list[Topic] = []
    if value is None:
        return out
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                out.append(_native_node(item, parent))
            elif isinstance(item, dict):
                out.extend(_yaml_nodes(item, parent))
            elif isinstance(item, (str, int, float)) and not isinstance(item, bool):
                out.append(Topic(name=_clean_name(item), path=(*parent, _clean_name(item))))
            else:
                raise TaxonomyError(f"under {PATH_SEP.join(parent) or 'the root'}: unexpected item {item!r}")
        return out
    if isinstance(value, dict):
        if isinstance(value.get("name"), str):
            return [_native_node(value, parent)]
        for key, sub in value.items():
            if str(key).strip().lower() in CONTAINER_KEYS:
                out.extend(_yaml_nodes(sub, parent))
                continue
            nm = _clean_name(key)
            path = (*parent, nm)
            if isinstance(sub, bool):
                raise TopicError(path, f"weight must be a number, not {sub!r}")
            if isinstance(sub, (int, float)):
                out.append(Topic(name=nm, path=path, weight=float(sub)))
            elif sub is None:
                out.append(Topic(name=nm, path=path))
            elif isinstance(sub, str):
                out.append(Topic(name=nm, path=path, meta={"description": sub}))
            else:
                node = Topic(name=nm, path=path)
                node.children = _yaml_nodes(_own_fields(node, sub) if isinstance(sub, dict) else sub, path)
                out.append(node)
        return out
    if isinstance(value, str):
        return [Topic(name=_clean_name(value), path=(*parent, _clean_name(value)))]
    raise TaxonomyError(f"unexpected value {value!r}")


def _own_fields(node: Topic, sub: dict[Any, Any]) -> dict[Any, Any]:
    """In a nested mapping (`Physics: {weight: 2, quota: 3, Optics: ...}`), the keys that are the topic's own fields
    go onto `node`: weight and quota always (a quota used to become a child topic named "quota"), a description
    where it is text; the rest, its children, are returned."""
    children = {}
    for key, value in sub.items():
        field_name = str(key).strip().lower()
        if field_name == "weight":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TopicError(node.path, f"weight must be a number, not {value!r}")
            node.weight = float(value)
        elif field_name == "quota" or (field_name == "description" and isinstance(value, str)):
            node.meta[field_name] = value  # a bad quota is named by _check_quotas
        else:
            children[key] = value
    return children


def _native_node(d: dict[str, Any], parent: tuple[str, ...]) -> Topic:
    """A {name, weight, quota, id, meta, description, children} node; its children may sit under any
    container key (subtopics, chapters...)."""
    nm = _clean_name(d["name"])
    path = (*parent, nm)
    unknown = [str(k) for k in d if str(k).strip().lower() not in NODE_KEYS]
    if unknown:
        raise TopicError(path, f"unknown key {unknown[0]!r} (a topic takes name, weight, quota, id, meta, "
                               "description, and its children under children or topics)")
    weight = d.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TopicError(path, f"weight must be a number, not {weight!r}")
    meta = dict(d.get("meta") or {})
    for key in ("quota", "description"):
        if key in d:
            meta[key] = d[key]
    t = Topic(name=nm, path=path, id=str(d.get("id") or ""), weight=float(weight), meta=meta)
    for key, sub in d.items():
        if str(key).strip().lower() in CONTAINER_KEYS:
            t.children.extend(_yaml_nodes(sub, path))
    return t


def _check_quotas(tax: Taxonomy) -> None:
    """A quota is a count of samples, an integer >= 0: anything else would only fail (or silently
    over-allocate the other topics) when the build samples."""
    for t in tax.walk():
        q = t.meta.get("quota")
        if "quota" in t.meta and (isinstance(q, bool) or not isinstance(q, int) or q < 0):
            raise TopicError(t.path, f"quota must be an integer >= 0, not {q!r}")


def check_weights(tax: Taxonomy) -> None:
    """Weights are relative shares: a negative, NaN or infinite one has no meaning (it used to be
    clamped to 0 or to make its siblings uniform, silently), and children all weighing 0 below a
    parent that is sampled would leave its share nowhere. Raises a TopicError (a ValueError) naming the topic."""

    def visit(nodes: list[Topic], parent: tuple[str, ...]) -> None:
        for n in nodes:
            if not (math.isfinite(n.weight) and n.weight >= 0):
                raise TopicError(n.path, f"weight must be a finite number >= 0, not {n.weight!r}")
        if nodes and sum(n.weight for n in nodes) <= 0 and parent:
            raise TopicError(parent, "every topic below it has weight 0, so nothing there can be sampled: give "
                                     f"one a weight above 0, or give {parent[-1]!r} itself weight 0 to leave it out")
        if nodes and sum(n.weight for n in nodes) <= 0:
            raise ValueError(f"taxonomy {tax.name!r}: every topic has weight 0: give one a weight above 0")
        for n in nodes:
            if n.weight > 0 and n.children:
                visit(n.children, n.path)

    visit(tax.topics, ())


def _located(err: TopicError, path: Path, yaml_text: str) -> TaxonomyError:
    """`err` prefixed with the file and, in a YAML file, the line of its topic."""
    line = _yaml_line(yaml_text, err.path) if yaml_text else None
    return TaxonomyError(f"{path}{f':{line}' if line else ''}: {err}")


def _yaml_line(text: str, path: tuple[str, ...]) -> int | None:
    """The line of the topic at `path` in a YAML taxonomy: each name in turn, as a key (`Optics:`), a list item
    or a node's `name:`, at or below the line of the name above it (a parent comes before its children). The
    values PyYAML constructs carry no line; this search runs only for an error message. None if not found."""
    lines = text.splitlines()
    start, found = 0, None
    for name in path:
        quoted = re.compile(rf"""^\s*(?:-\s+)?(?:name:\s*)?(["']?){re.escape(name)}\1\s*(?::|$)""")
        found = next((i for i in range(start, len(lines)) if quoted.match(lines[i])), None)
        if found is None:
            return None
        start = found + 1
    return None if found is None else found + 1


def _unwrap_single_root(tax: Taxonomy) -> Taxonomy:
    """A file with one root node holding everything (an H1 title, `title:`, a book name) names the
    taxonomy; its children become the top-level subjects."""
    if len(tax.topics) == 1 and tax.topics[0].children:
        root = tax.topics[0]
        tax = Taxonomy(name=root.name, topics=root.children, meta=tax.meta)
        for t in tax.walk():
            t.path = t.path[1:]
            t.id = topic_id(t.path) if t.id == topic_id((root.name, *t.path)) else t.id
    return tax


def _from_csv_text(text: str, path: Path, *, name: str, sep: str | None) -> Taxonomy:
    numbered = _csv_rows(text, path)
    if not numbered or "path" not in numbered[0][1]:
        raise TaxonomyError(f"{path}:1: CSV needs a 'path' column (found {numbered[0][1] if numbered else []})")
    header = numbered[0][1]
    rows: list[tuple[int, dict[str, str]]] = []
    for lineno, cells in numbered[1:]:
        if len(cells) > len(header):
            raise TaxonomyError(f"{path}:{lineno}: {len(cells)} fields, the header has {len(header)} "
                                "(a comma in a name needs the name in double quotes)")
        rows.append((lineno, dict(zip(header, cells, strict=False))))
    if sep is None:
        sep = next((s for s in _PATH_SEPS if any(s in r.get("path", "") for _, r in rows)), PATH_SEP)
    tax = Taxonomy(name=name)
    index: dict[tuple[str, ...], Topic] = {}
    for lineno, r in rows:
        parts = tuple(_clean_name(p) for p in r.get("path", "").split(sep) if p.strip())
        if not parts:
            raise TaxonomyError(f"{path}:{lineno}: empty path")
        node = None
        for depth in range(1, len(parts) + 1):
            key = parts[:depth]
            node = index.get(key)
            if node is None:
                parent = index.get(key[:-1]) if depth > 1 else None
                node = parent.add(key[-1]) if parent else tax.add(key[-1])
                index[key] = node
        assert node is not None
        if r.get("weight"):
            try:
                node.weight = float(r["weight"])
            except ValueError:
                raise TaxonomyError(f"{path}:{lineno}: weight {r['weight']!r} is not a number") from None
        if r.get("id"):
            node.id = r["id"]
        if r.get("meta"):
            try:
                node.meta.update(json.loads(r["meta"]))
            except json.JSONDecodeError as e:
                raise TaxonomyError(f"{path}:{lineno}: meta is not JSON ({e.msg})") from None
        for k, v in r.items():
            if k not in {"path", "id", "weight", "meta"} and v:
                node.meta[k] = int(v) if k == "quota" and re.fullmatch(r"-?\d+", v) else v
    return tax


def _csv_rows(text: str, path: Path) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) of each non-blank CSV row, header first (lower-cased); a row whose
    quote never closes is an error naming the line it starts on (it would swallow every row below it)."""
    reader = csv.reader(io.StringIO(text), strict=True)
    out: list[tuple[int, list[str]]] = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return out
        except csv.Error as e:
            problem = "a quote is never closed" if "unexpected end of data" in str(e) else f"not valid CSV ({e})"
            raise TaxonomyError(f"{path}:{start}: {problem}") from None
        if any(c.strip() for c in cells) or (not out and cells):
            cells = [c.strip() for c in cells]
            out.append((start, [c.lower() for c in cells] if not out else cells))


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)(?:[-*+\u2022]|\d+[.)])\s+(.+)$")


def _from_markdown(text: str, *, name: str) -> Taxonomy:
    """Headings are levels by their `#` count; nested bullets (any indent width) hang below the
    last heading. Paragraphs, code blocks and front matter are ignored."""
    root = Topic(name=name, path=())
    heads: list[tuple[int, Topic]] = [(0, root)]
    bullets: list[tuple[int, Topic]] = []
    in_code = False
    h1_count = 0
    for raw in text.splitlines():
        line = raw.expandtabs(4).rstrip()
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code or not line.strip():
            continue
        m = _HEADING.match(line)
        if m:
            level = len(m.group(1))
            h1_count += level == 1
            while heads[-1][0] >= level:
                heads.pop()
            parent = heads[-1][1]
            node = parent.add(_clean_name(m.group(2)))
            heads.append((level, node))
            bullets = []
            continue
        m = _BULLET.match(line)
        if m:
            indent = len(m.group(1))
            while bullets and bullets[-1][0] >= indent:
                bullets.pop()
            parent = bullets[-1][1] if bullets else heads[-1][1]
            nm = _clean_name(m.group(2))
            if nm:
                bullets.append((indent, parent.add(nm)))
    tax = Taxonomy(name=name, topics=root.children)
    if h1_count == 1 and len(tax.topics) == 1:
        return _unwrap_single_root(tax)
    return tax


def _from_lines(text: str, *, name: str) -> Taxonomy:
    """A plain topic list: one topic a line, nested by indentation (any width; a tab is 4 spaces); a
    bullet or number in front of a name is not part of it."""
    root = Topic(name=name, path=())
    stack: list[tuple[int, Topic]] = [(-1, root)]
    for raw in text.splitlines():
        line = raw.expandtabs(4).rstrip()
        nm = _clean_name(_LIST_PREFIX.sub("", line.strip(), count=1))
        if not nm:
            continue
        indent = len(line) - len(line.lstrip())
        while stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, stack[-1][1].add(nm)))
    return Taxonomy(name=name, topics=root.children)


# ---- near-duplicate names -----------------------------------------------------------------------
_ARTICLES = re.compile(r"^(the|a|an)\s+")
_ACCENTS = re.compile(r"[\u0300-\u036f]")  # combining diacritics of Latin, Greek and Cyrillic letters


@lru_cache(maxsize=1 << 18)
def name_key(name: str) -> str:
    """Normal form for duplicate detection: case, accents, punctuation, '&', leading articles and
    simple plurals do not make two topic names different. Letters of every script count, and so do
    '+', '#' and '.' inside or after a word ("C", "C++" and "C#" differ); the key is empty only for
    a name without letters or digits."""
    s = _ACCENTS.sub("", unicodedata.normalize("NFKD", name))
    s = unicodedata.normalize("NFKC", s).casefold()
    s = re.sub(r"['\u2019`]", "", s.replace("&", " and "))
    s = "".join(c if c in "+#." or unicodedata.category(c)[0] in "LMN" else " " for c in s)
    words = [w.lstrip("+#.").rstrip(".") for w in s.split()]
    s = _ARTICLES.sub("", " ".join(w for w in words if w))
    return " ".join(_singular(w) if w.isalpha() else w for w in s.split())


def _singular(w: str) -> str:
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


# Framing that names a topic's overview rather than another topic ("Intro to X", "X basics", on name_key forms).
_FRAMING = re.compile(
    r"^(?:(?:intro|introduction|overview) (?:to|of)|(?:basic|fundamental|essential) of) (?:the )?"
    r"|(?: (?:basic|fundamental|(?:an )?introduction|(?:an )?overview|101|for beginner))+$"
)


def core_key(name: str) -> str:
    """`name_key` without the framing of an overview: 'Intro to X', 'Introduction to X', 'Basics of X',
    'X basics' and 'X: an overview' all give X's key (a name that is nothing but framing keeps it)."""
    key = name_key(name)
    return _FRAMING.sub("", key).strip() or key


class NameIndex:
    """Names seen so far; `is_duplicate` says whether a new name repeats one of them: an exact match on
    `name_key` anywhere, the same `core_key` anywhere but in the parent being grown ('Introduction to X'
    is X's first chapter under X, and X again in another branch), or a fuzzy match (rapidfuzz
    token-sort ratio) among `scope`."""

    def __init__(self, names: Iterable[str] = (), threshold: float = 90.0):
        self.threshold = threshold
        self.keys: set[str] = set()
        self.cores: Counter[str] = Counter()
        for n in names:
            self.add(n)

    def is_duplicate(self, name: str, scope: Iterable[str] = (), parent: str | None = None) -> bool:
        from rapidfuzz import fuzz, process

        key = name_key(name)
        if not key or key in self.keys:
            return True
        core = core_key(name)
        scope = list(scope)
        if self.cores[core] > (parent is not None and core_key(parent) == core) or core in {
            core_key(s) for s in scope if s != parent
        }:
            return True
        scope_keys = [name_key(s) for s in scope]
        return (
            process.extractOne(key, scope_keys, scorer=fuzz.token_sort_ratio, score_cutoff=self.threshold)
            is not None
        )

    def add(self, name: str) -> None:
        self.keys.add(name_key(name))
        self.cores[core_key(name)] += 1


# ---- list parsing (LLM answers) -----------------------------------------------------------------
# a bullet, "1." / "1)", "a)" / "(a)", or "A." before a word that is no lowercase one ("E. coli" is a name)
_LIST_PREFIX = re.compile(r"^\s*(?:[-*+\u2022\u2013]|\(?\d{1,3}[.):]|\(?[a-zA-Z]\)|[a-zA-Z]\.(?=\s+[^\sa-z]))\s+")


# Chatter around a plain-text list: refusals, "Sure, here are...", a closing "I hope this helps".
_CHATTER = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry\b|i can(?:no|')t|i am (?:not able|unable)|i'?m (?:not able|unable)|"
    r"as an ai|unfortunately|sure\b|certainly|of course|okay\b|here (?:are|is)\b|i hope)",
    re.I,
)
# A label in front of a plain-text list: "Subtopics: Acids, Bases", "Topics of Chemistry: ...".
_LABEL = re.compile(r"^(?:sub-?)?(?:topics?|subjects?|chapters?|answer|list|output)\b[^:\n]{0,40}:\s*", re.I)
_JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(?!\s*:)')
_JSON_NAME = re.compile(r'"(?:name|title|topic|subtopic)"\s*:\s*"((?:[^"\\]|\\.)*)"')
_NAME_KEYS = ("name", "title", "topic", "subtopic")
_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+")
_BOLD_NUMBER = re.compile(r"^(\s*)(?:\*\*|__)(?=\d{1,3}[.)]\s)")  # "**1. Acids**" is item 1
# "Topic 3: Acids" / "Subtopic 2 - Redox": a numbering word in front of the name
_ITEM_LABEL = re.compile(r"^(?:sub-?)?(?:topics?|subjects?|chapters?|sections?|units?|parts?)\s*\d{1,3}\s*[:.)\u2013\u2014-]\s*", re.I)


def parse_list(text: str, *, truncated: bool = False) -> list[str]:
    """Item names from an LLM's list answer: JSON (array, or an object holding one), numbered or
    bulleted lines, or one comma-separated line. Descriptions (4+ words after ': ' or ' - ') are dropped.
    JSON cut off mid-way gives only the names it finished; `truncated` (the answer hit max_tokens)
    drops the last item of a plain-text list, which may be cut mid-name."""
    text = (text or "").strip("\r\n").rstrip()  # the first line keeps its indent: nesting is relative
    fenced = re.search(r"```(?:json|yaml|markdown|md)?[ \t]*\n(.*?)```", text, re.S)
    if fenced:
        text = fenced.group(1).strip("\r\n").rstrip()
    items = _json_items(text)
    if items is None and text.lstrip().startswith(("[", "{")):
        items = _complete_json_strings(text)
    if items is None:
        items = _text_items(text)
        if truncated:
            items = items[:-1]
    out: list[str] = []
    for it in items:
        it = re.sub(r"(\*\*|__|`)", "", str(it)).strip().strip('"').strip("'")
        head, *tail = re.split(r":\s+|\s+[-\u2013\u2014]\s+", it, maxsplit=1)
        if tail and len(tail[0].split()) >= 4:  # "Name: a description of it" -> "Name"
            it = head
        it = _clean_name(it).rstrip(".").strip()
        if it and len(it) <= 120 and len(it.split()) <= 16:
            out.append(it)
    return out


def _text_items(text: str) -> list[str]:
    """Items of a plain-text answer: its outermost bulleted or numbered lines (nested bullets describe
    an item, they are not siblings of it; a numbered markdown heading counts as a numbered line), else
    the rows of a markdown table, else its headings of the most used level, else one comma-separated
    line, else its lines; sentences (ending in . ! ?), refusals, chatter and a leading label are not items."""
    raw = [part for ln in text.splitlines() if ln.strip() for part in _split_numbered_run(ln.expandtabs(4).rstrip())]
    heading_level = {i: len(m.group(1)) for i, ln in enumerate(raw) if (m := _MD_HEADING.match(ln))}
    raw = [_MD_HEADING.sub("", ln) if i in heading_level else _BOLD_NUMBER.sub(r"\1", ln) for i, ln in enumerate(raw)]
    listed = [ln for ln in raw if _LIST_PREFIX.match(ln)]
    if listed:
        outer = min(len(ln) - len(ln.lstrip()) for ln in listed)
        return [
            _ITEM_LABEL.sub("", _LIST_PREFIX.sub("", ln, count=1))
            for ln in listed
            if len(ln) - len(ln.lstrip()) == outer
        ]
    cells = _table_items(raw)
    if cells:
        return cells
    if heading_level:
        levels = Counter(heading_level.values())
        level = max(levels, key=lambda lv: (levels[lv], lv))
        return [raw[i].strip() for i, lv in heading_level.items() if lv == level]
    lines = [_LABEL.sub("", ln.strip()) for ln in raw if not _CHATTER.match(ln.strip())]
    if len(lines) == 1 and re.search(r"[,;]", lines[0]):
        return re.split(r"\s*[;,]\s*(?:and\s+)?", lines[0].rstrip("."))
    return [ln for ln in lines if ln and not ln.endswith((":", ".", "!", "?"))]


_INLINE_NUMBER = re.compile(r"(?:(?<=\s)|^)\(?(\d{1,3})[.)]\s+")


def _split_numbered_run(line: str) -> list[str]:
    """'1. Acids 2. Bases 3. Salts' (a numbered list run together on one line, as small models write it)
    as one line per item; a line whose numbers do not count up by one ('Python 3. Basics') stays whole."""
    marks = list(_INLINE_NUMBER.finditer(line))
    numbers = [int(m.group(1)) for m in marks]
    if len(marks) < 2 or numbers != list(range(numbers[0], numbers[0] + len(marks))):
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    cuts = [m.start() for m in marks]
    head = line[: cuts[0]].strip()
    items = [indent + line[a:b].strip() for a, b in zip(cuts, [*cuts[1:], len(line)], strict=True)]
    return [indent + head, *items] if head else items


def _table_items(lines: list[str]) -> list[str]:
    """Names of a markdown table's rows: each row's first cell that is not a number (the header row,
    above the |---| line, is not a row)."""
    rows = [ln.strip().strip("|").split("|") for ln in lines if ln.strip().startswith("|")]
    if len(rows) < 2 or not any(all(re.fullmatch(r"\s*:?-{3,}:?\s*", c) for c in r) for r in rows):
        return []
    body = rows[[all(re.fullmatch(r"\s*:?-{3,}:?\s*", c) for c in r) for r in rows].index(True) + 1 :]
    return [next((c.strip() for c in r if c.strip() and not re.fullmatch(r"\s*[\d.#]+\s*", c)), "") for r in body]


def _complete_json_strings(text: str) -> list[str]:
    """The names a JSON answer finished before it was cut off: the complete strings of its array."""
    start = text.find("[")
    if start < 0:
        return []
    body = text[start + 1 :]
    found = _JSON_NAME.findall(body) if body.lstrip().startswith("{") else _JSON_STRING.findall(body)
    return [_unescape(s) for s in found]


def _unescape(s: str) -> str:
    """A JSON string's content as text; kept as it is when its escapes are not valid JSON."""
    try:
        return json.loads(f'"{s}"', strict=False)
    except json.JSONDecodeError:
        return s


def _json_items(text: str) -> list[Any] | None:
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        return None
    names = (_dict_name(d) if isinstance(d, dict) else d for d in data)
    return [n for n in names if isinstance(n, str)]  # numbers, null, booleans and lists are not names


def _dict_name(d: dict[str, Any]) -> Any:
    """The name of one JSON list item: its name/title/topic/subtopic key, else its only string value
    ({"subtopic_name": "Acids", "depth": 2})."""
    named = next((d[k] for k in _NAME_KEYS if d.get(k)), None)
    if named is not None:
        return named
    strings = [v for v in d.values() if isinstance(v, str) and v.strip()]
    return strings[0] if len(strings) == 1 else ""


# ---- growth through the engine -------------------------------------------------------------------
GROW_PROMPT = (
    "You are designing the table of contents of a large library of textbooks.\n"
    'List {k} distinct subtopics of "{topic}" (within: {path}) that a textbook chapter could each be '
    "written about. Make them specific, non-overlapping and varied, from foundations to applications.\n"
    "{siblings}"
    'Answer with JSON only: {{"subtopics": ["...", "..."]}}'
)
MAX_SIBLINGS_IN_PROMPT = 12


def subtopics_schema(k: int) -> dict:
    """OpenAI-style structured output for a grow answer: exactly the JSON the prompt asks for."""
    schema = {
        "type": "object",
        "properties": {"subtopics": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": k}},
        "required": ["subtopics"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "subtopics", "strict": True, "schema": schema}}


def siblings_line(names: list[str]) -> str:
    """'It sits beside: A; B; ...' so the model keeps the subtopics inside this topic's own ground."""
    if not names:
        return ""
    return f"It sits beside these topics, which are covered elsewhere: {'; '.join(names[:MAX_SIBLINGS_IN_PROMPT])}.\n"


def _siblings_line(t: Topic, parents: dict[int, Topic], tax: Taxonomy) -> str:
    parent = parents.get(id(t))
    return siblings_line([c.name for c in (parent.children if parent else tax.topics) if c is not t])


@dataclass
class GrowReport:
    """What `grow` did: leaves before/after, LLM calls, names dropped as near-duplicates."""

    leaves_before: int
    leaves_after: int
    calls: int = 0
    rounds: int = 0
    duplicates_dropped: int = 0
    failed_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


#: Subtopics asked per grow call: a fixed number (not one that follows the target) keeps a grow's requests the
#: same when its target is raised, so the journal answers them, and asks for real chapters in every round.
PER_CALL = 10


def grow(
    tax: Taxonomy,
    generator: Any,
    target: int,
    *,
    per_call: int = PER_CALL,
    max_depth: int | None = None,
    seed: int = 0,
    temperature: float = 0.7,
    max_tokens: int = 1024,
    similarity: float = 90.0,
    max_rounds: int = 8,
    prompt: str = GROW_PROMPT,
    structured: bool = True,
    log: Callable[[str], None] | None = None,
) -> GrowReport:
    """Expand leaves through the engine until the taxonomy has `target` leaves (in place).

    Each round asks for `k` subtopics of the leaves with the largest sampling share (shallowest
    first), so growth stays balanced across subjects. With `structured`, requests carry a JSON schema
    (structured output where the provider has it); answers are parsed robustly either way. Names equal
    to any existing name (after `name_key`) or fuzzy-close to a sibling are dropped. The last round
    trims so the count lands exactly on `target`. `log` hears one line per round (the engine's progress
    line starts again with each). Requests are deterministic, so a crashed grow resumes from the engine's
    journal without paying twice. A round whose requests the budget kept back (status skipped_budget) is the last:
    the taxonomy stays short of `target`, and the caller says the budget stopped it.
    """
    if per_call < 2:
        raise ValueError(f"per_call must be >= 2 (a single subtopic is not a split), got {per_call}")
    report = GrowReport(leaves_before=len(tax.leaves()), leaves_after=0)
    names = NameIndex((t.name for t in tax.walk()), threshold=similarity)
    attempts: Counter[str] = Counter()
    for rnd in range(max_rounds):
        leaves, probs = tax.leaf_probabilities("hierarchical")
        if len(leaves) >= target:
            break
        cands = _expandable(leaves, probs, attempts, max_depth)
        if not cands:
            break
        need = target - len(leaves)
        chosen = cands[: math.ceil(need / (per_call - 1) * 1.15)]  # a split adds per_call - 1 leaves, or fewer
        requests = _grow_requests(tax, chosen, attempts, rnd, prompt=prompt, k=per_call, max_tokens=max_tokens,
                                  temperature=temperature, seed=seed, structured=structured)
        if log is not None:
            log(f"round {rnd + 1}: {len(chosen):,} topics x {per_call} subtopics ({len(leaves):,} of {target:,} leaves)")
        responses = generator.run(requests)
        report.rounds += 1
        _account(report, responses)
        _attach_answers(chosen, responses, names, report, need, per_call)
        if any(r.status == "skipped_budget" for r in responses):
            break  # the budget is reached: every later round would come back skipped too
    tax.dedupe_ids()
    report.leaves_after = len(tax.leaves())
    return report


def _expandable(leaves: list[Topic], probs: np.ndarray, attempts: Counter[str], max_depth: int | None) -> list[Topic]:
    """The leaves a round may expand, shallowest and then most sampled first (growth stays balanced across
    subjects): those above `max_depth` not yet asked three times."""
    order = sorted(range(len(leaves)), key=lambda i: (len(leaves[i].path), -probs[i], leaves[i].id))
    return [
        leaves[i]
        for i in order
        if (max_depth is None or len(leaves[i].path) < max_depth) and attempts[leaves[i].id] < 3
    ]


def _grow_requests(tax: Taxonomy, chosen: list[Topic], attempts: Counter[str], rnd: int, *, prompt: str, k: int,
                   max_tokens: int, temperature: float, seed: int, structured: bool) -> list[ChatRequest]:
    """One request for `k` subtopics per chosen topic, seeded by its attempts so far: a rerun asks the same (the
    journal answers it), a topic asked again gets a new answer."""
    from textbookgen.engine import ChatRequest

    parents = {id(c): p for p in tax.walk() for c in p.children}
    requests = []
    for t in chosen:
        attempts[t.id] += 1
        content = prompt.format(
            k=k, topic=t.name, path=t.path_str, siblings=_siblings_line(t, parents, tax)
        )
        requests.append(
            ChatRequest(
                messages=[{"role": "user", "content": content}],
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed * 1_000_003 + attempts[t.id],
                response_format=subtopics_schema(k) if structured else None,
                metadata={"stage": "taxonomy.grow", "topic_id": t.id, "round": rnd},
            )
        )
    return requests


def _attach_answers(chosen: list[Topic], responses: list[Any], names: NameIndex, report: GrowReport, need: int,
                    k: int) -> None:
    """Add each answer's new names under its topic, in order, until `need` more leaves are reached."""
    for t, resp in zip(chosen, responses, strict=True):
        if not _answered(resp):
            continue
        room = need + 1  # expanding a leaf removes it as a leaf
        if room < 2:
            break
        fresh = _new_names(t, resp, names, report)[: min(room, k)]  # asked for k: a longer answer must not widen the tree
        if len(fresh) < 2:  # a single child is not a split: keep the leaf as it is
            continue
        for nm in fresh:  # only attached names are taken: the others stay free for later answers
            t.add(nm, meta={"grown": True})
            names.add(nm)
        need -= len(fresh) - 1


def _new_names(t: Topic, resp: Any, names: NameIndex, report: GrowReport) -> list[str]:
    """The names an answer about `t` gives, in order, less near-duplicates (`NameIndex.is_duplicate`: of a name in
    the taxonomy, of `t`, of an earlier name of the answer), which are counted in `report.duplicates_dropped`."""
    fresh: list[str] = []
    for nm in parse_list(resp.answer, truncated=resp.status == "truncated"):
        if names.is_duplicate(nm, scope=[*fresh, t.name], parent=t.name):
            report.duplicates_dropped += 1
            continue
        fresh.append(nm)
    return fresh


def _answered(resp: Any) -> bool:
    """An answer with text to parse; a cut-off (truncated) one still holds the names it finished."""
    return resp.status in DONE_STATUSES and bool(resp.answer)


def _account(report: GrowReport, responses: list[Any]) -> None:
    """Count every answer of a round, including those not needed once the target is reached:
    the provider bills them all."""
    report.calls += len(responses)
    for resp in responses:
        report.input_tokens += resp.input_tokens or 0
        report.output_tokens += resp.output_tokens or 0
        report.cost_usd += resp.cost_usd or 0.0
        report.failed_calls += not _answered(resp)
