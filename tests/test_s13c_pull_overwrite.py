"""A pull replaced a user's own file that has a repo file's name (the client overwrites whatever is there): it is
now refused before anything is written, naming the file, unless an earlier pull of that repo wrote it, it holds
the repo's bytes already, or `--force` (`force=True`) is given."""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub.utils import disable_progress_bars
from test_hub import build
from typer.testing import CliRunner

from textbookgen.hub import pull, push

disable_progress_bars()
REPO = "tester/quickstart"


def snapshot(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_cli_pull_refuses_to_overwrite_the_users_own_files_and_writes_nothing_unless_forced(hub, tmp_path, monkeypatch):
    from textbookgen.cli import app

    monkeypatch.setenv("HF_TOKEN", hub.token)
    push(build(tmp_path / "build"), REPO, token=hub.token, endpoint=hub.endpoint)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes on this dataset\n", encoding="utf-8")
    (mine / "recipe.yaml").write_text("mine: true\n", encoding="utf-8")
    before = snapshot(mine)
    runner = CliRunner()
    res = runner.invoke(app, ["pull", REPO, "-o", str(mine), "--endpoint", hub.endpoint])
    assert res.exit_code == 1
    assert res.output.splitlines()[-1] == (
        f"error: {mine} holds README.md, recipe.yaml, which no pull of {REPO} wrote: the pull would overwrite them "
        "with the repo's; move them away, pull into another folder, or pass --force (force=True)")
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == ["README.md", "recipe.yaml"]
    res = runner.invoke(app, ["pull", REPO, "-o", str(mine), "--force", "--endpoint", hub.endpoint])
    assert res.exit_code == 0, res.output
    assert (mine / "README.md").read_bytes() == hub.read(REPO, "README.md")


def test_a_repull_replaces_what_the_earlier_pull_of_that_repo_wrote(hub, tmp_path):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "copy", token=hub.token, endpoint=hub.endpoint)
    (out / "README.md").write_bytes((out / "README.md").read_bytes())  # rewritten, not edited: the pull's file
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    push(build(tmp_path / "b", n=25, seed=4), REPO, token=hub.token, endpoint=hub.endpoint)
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    assert (out / "README.md").read_bytes() == hub.read(REPO, "README.md")
    assert (out / "notes.txt").read_text("utf-8") == "mine\n"


def test_files_of_a_pull_of_another_repo_are_not_this_repos_to_replace(hub, tmp_path):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    push(build(tmp_path / "b", n=25, seed=4), "tester/other", token=hub.token, endpoint=hub.endpoint)
    out = pull("tester/other", tmp_path / "copy", token=hub.token, endpoint=hub.endpoint)
    before = snapshot(out)
    with pytest.raises(ValueError, match=rf"copy holds README\.md, assets/\S+\.png, assets/\S+\.png, \.\.\., "
                                         rf"which no pull of {REPO} wrote"):
        pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    assert snapshot(out) == before


def test_a_file_that_already_holds_the_repos_bytes_is_no_conflict(hub, tmp_path):
    folder = build(tmp_path / "a")
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    copy = tmp_path / "copy"
    shutil.copytree(folder / "data", copy / "data")  # the very shards the repo has, copied by hand
    (copy / ".gitattributes").write_bytes(hub.read(REPO, ".gitattributes"))  # a regular (git) file
    pull(REPO, copy, token=hub.token, endpoint=hub.endpoint)
    assert (copy / "README.md").read_bytes() == hub.read(REPO, "README.md")
