"""The CLI as a newcomer meets it: one spelling of the output option works everywhere, help text flows at any
terminal width, and click's usage errors are bad input like any other (one `error:` line, exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from textbookgen.cli import _flow, app

# the output option's documented name, first in help; the other spelling works too
OUTPUT_NAME = {
    "pull": "--out", "generate": "--out", "topics coverage": "--out",
    "publish": "--output", "dedup": "--output", "decontaminate": "--output", "filter": "--output",
    "classifier train": "--output", "classifier score": "--output", "classifier label": "--output",
    "journal": "--export",
}


def _commands(cmd=None, path: tuple[str, ...] = ()):
    """(path, click command) of the root and every group and command under it."""
    cmd = cmd or typer.main.get_command(app)
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_output_option_takes_out_and_output_with_the_documented_name_first():
    found = {}
    for path, cmd in _commands():
        for param in cmd.params:
            names = getattr(param, "opts", [])
            if {"--out", "--output"} & set(names):
                found[" ".join(path)] = names
    assert {k: v[0] for k, v in found.items()} == OUTPUT_NAME
    assert all({"--out", "--output", "-o"} <= set(v) for v in found.values()), found


def test_dedup_takes_out(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": " ".join("xyz"[i] + chr(97 + j) for j in range(26))}) + "\n" for i in range(3)))
    res = CliRunner().invoke(app, ["dedup", str(src), "--out", str(tmp_path / "o.jsonl"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3


def test_help_paragraphs_are_joined_keeping_paragraphs_lists_and_no_rewrap_blocks():
    text = "First line\n    goes on.\n\n    Second\n    paragraph:\n    - item one\n      continued\n    2. two\n\n    \b\n     a\n     b"
    assert _flow(text) == "First line goes on.\n\nSecond paragraph:\n- item one continued\n2. two\n\n\b\n a\n b"
    for path, cmd in _commands():
        for paragraph in (cmd.help or "").split("\n\n"):
            assert "\n" not in paragraph, (path, paragraph)


@pytest.mark.parametrize("width", [80, 120])
def test_help_descriptions_fill_the_terminal_width(width):
    """No ragged short line inside a paragraph: rich wraps each once, at the terminal's width."""
    for path, _ in _commands():
        out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(width)}).output
        lines = []
        for line in out.splitlines()[2:]:  # after the usage line
            if line.lstrip().startswith("╭"):
                break
            lines.append(line.strip())
        for line, after in zip(lines, lines[1:], strict=False):
            if line and after:  # a line that a paragraph goes on after
                assert len(line) > width - 20, (path, width, line)


def _one_line_error(res, *fragments: str) -> None:
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert res.output.startswith("error: ") and len(res.output.splitlines()) == 1, res.output
    assert all(f in res.output for f in fragments), res.output


@pytest.fixture()
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "x"}\n')
    return path


@pytest.mark.parametrize("args, fragments", [
    (["generate", "P", "--concurrency", "abc"], ["'--concurrency'", "(see '", "generate --help')"]),
    (["generate"], ["Missing argument"]),
    (["generate", "P", "P"], ["unexpected extra argument"]),
    (["generate", "P", "--bogus"], ["No such option: --bogus"]),
    (["dedup", "P"], ["Missing option '--output'"]),
    (["nosuch"], ["No such command 'nosuch'"]),
    (["topics", "grow", "builtin:stories", "g.yaml"], ["Missing option '--target'"]),
    (["plan", "P", "--price", "oops"], ["--price expects MODEL=IN,OUT"]),
    (["validate", "P", "--set", "oops"], ["--set expects KEY=VALUE"]),
])
def test_usage_errors_are_bad_input_one_line_exit_1(prompts, args, fragments):
    """Click exits 2 for them, which `generate` and `build` document as a stopped run to resume."""
    res = CliRunner().invoke(app, [str(prompts) if a == "P" else a for a in args], env={"OPENAI_API_KEY": "sk-test"})
    _one_line_error(res, *fragments)


def test_a_group_with_no_command_still_prints_its_help_and_exits_1():
    """It exited 2, which this CLI's scripts read as "stopped: rerun to resume"."""
    for args in ([], ["topics"], ["classifier"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1 and "error:" not in res.output and "Usage:" in res.output, (args, res.output)
    assert "grow" in CliRunner().invoke(app, ["topics"]).output
