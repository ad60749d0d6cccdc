"""A folder pulled before the pull record (`hub.PULL_RECORD`) existed has the client's metadata of every file it
pulled but no record naming the repo: each re-pull of it was refused, saying no pull of the repo wrote the files
it had pulled. Such a file is now the repo's when the commit its metadata names is one of the repo's."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub.utils import disable_progress_bars
from test_hub import build

from textbookgen.hub import PULL_RECORD, pull, push
from textbookgen.testing.fakehub import FakeHub

disable_progress_bars()
REPO = "tester/quickstart"


def legacy_pull(hub: FakeHub, repo_id: str, out: Path) -> Path:
    """A pull as a textbookgen without the record left the folder."""
    out = pull(repo_id, out, token=hub.token, endpoint=hub.endpoint)
    (out / PULL_RECORD).unlink()
    return out


def test_a_folder_pulled_without_the_record_is_repulled(hub, tmp_path):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    out = legacy_pull(hub, REPO, tmp_path / "copy")
    push(build(tmp_path / "b", n=25, seed=4), REPO, token=hub.token, endpoint=hub.endpoint)
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    assert (out / "README.md").read_bytes() == hub.read(REPO, "README.md")
    assert (out / PULL_RECORD).read_text("utf-8") == f"{REPO}\n"


def test_without_the_record_the_users_own_file_and_another_repos_are_still_refused(hub, tmp_path):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    push(build(tmp_path / "b", n=25, seed=4), "tester/other", token=hub.token, endpoint=hub.endpoint)
    out = legacy_pull(hub, "tester/other", tmp_path / "copy")
    with pytest.raises(ValueError, match=rf"copy holds README\.md, .*which no pull of {REPO} wrote"):
        pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "recipe.yaml").write_text("mine: true\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"mine holds recipe\.yaml, which no pull of {REPO} wrote"):
        pull(REPO, mine, token=hub.token, endpoint=hub.endpoint)
    assert (mine / "recipe.yaml").read_text("utf-8") == "mine: true\n"
