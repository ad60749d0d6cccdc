"""YAML files read for people: parsed once, with the line of every field, and errors in one line.

Recipes and trainer configs report each problem as `<file>:<line>: <field>: <message>`. PyYAML gives the
values or the line marks, not both, so the text is composed into nodes once (for the marks) and the values
are constructed from those same nodes. A key repeated within one mapping, which PyYAML keeps silently
(the last wins), is an error here: it is almost always a paste that overrides the first setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[Any, ...]


@dataclass
class YamlDoc:
    data: Any  # None for an empty file
    lines: dict[Loc, int]  # 1-based line of the document (at ()), each key and each list item, by location


def read_yaml(text: str, path: Path | str, error: type[Exception]) -> YamlDoc:
    """Parse `text` (the contents of `path`); raise `error("<path>:<line>: ...")` on bad YAML or repeated keys."""
    loader = yaml.SafeLoader(text)
    lines: dict[Loc, int] = {}
    dupes: list[str] = []
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDoc(None, {})
        lines[()] = node.start_mark.line + 1
        _index(node, (), lines, dupes)  # before constructing, which expands merge keys (`<<: *base`) in place
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{path}{line}: not valid YAML: {yaml_problem(e)}") from None
    finally:
        loader.dispose()
    if dupes:
        raise error("\n".join(f"{path}:{d}" for d in dupes))
    return YamlDoc(data, lines)


# The usual cause of PyYAML's parser errors, which say what the parser expected rather than what is wrong
_HINTS = (
    ("mapping values are not allowed here", "a key indented deeper than the key above it, or a value holding ': ' "
                                            "that needs quotes"),
    ("expected <block end>", "this line is indented to no key above it, or a quote or bracket above is never closed"),
    ("expected ',' or '}'", "a { } is not closed, or a value in it holding ':' or ',' needs quotes"),
    ("expected ',' or ']'", "a [ ] is not closed, or a value in it holding ':' or ',' needs quotes"),
    ("could not find expected ':'", "a key without its ':', or a quote above is never closed"),
)


def yaml_problem(err: yaml.YAMLError, in_file: bool = True) -> str:
    """PyYAML's error in one line, without its dump of the text (which names "<unicode string>")."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context, mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and mark is not None:
        problem += f" ({context} at line {mark.line + 1})" if in_file else f" ({context} at column {mark.column + 1})"
    if "'\\t'" in problem:
        problem += "; indent with spaces, not tabs"
    return problem + next((f"; {hint}" for start, hint in _HINTS if problem.startswith(start)), "")


def dotted(loc: Loc) -> str:
    return ".".join(str(x) for x in loc)


def key_path(name: str) -> Loc:
    """`data.datasets.0.weight` -> ("data", "datasets", 0, "weight"): the shape of pydantic's error locations."""
    return tuple(int(k) if k.isdigit() else k for k in name.strip().split("."))


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int], dupes: list[str]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            field = (*loc, k.value)
            if k.value in seen:
                dupes.append(f"{k.start_mark.line + 1}: {dotted(field)}: duplicate key")
            seen.add(k.value)
            lines[field] = k.start_mark.line + 1
            _index(v, field, lines, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*loc, i)] = item.start_mark.line + 1
            _index(item, (*loc, i), lines, dupes)
