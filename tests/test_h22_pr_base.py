"""A `create_pr` rerun took an open pull request that held exactly its files even where it was opened from an older
main, which changed since in a file this push sends: merged, it kept main's newer file (or conflicted). It took
another user's identical pull request too, reading every open one. A rerun now takes only one of its user's, opened
from main's current head."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi
from huggingface_hub.utils import disable_progress_bars
from test_hub import build

from textbookgen import hub as hub_module
from textbookgen.hub import HubInterrupted, push

disable_progress_bars()
REPO = "tester/proposals"


def lost_answer(hub, folder) -> None:
    """A `create_pr` push of `folder` whose pull request (#1) is opened while the client sees a 502."""
    hub.inject("POST", r"/commit/", 502, after=True)
    with pytest.raises(ConnectionError):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)


def test_a_pull_request_opened_from_an_older_main_is_not_taken(hub, tmp_path):
    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)
    folder = build(tmp_path / "proposal", n=80, seed=3)
    lost_answer(hub, folder)
    hub.commit_files(REPO, {"recipe.yaml": b"edited: on main since\n"})  # a file this push sends
    url = push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    assert url.endswith("/discussions/2")
    HfApi(endpoint=hub.endpoint, token=hub.token).merge_pull_request(REPO, 2, repo_type="dataset")
    assert hub.read(REPO, "recipe.yaml") == (folder / "recipe.yaml").read_bytes()


def test_a_pull_request_opened_from_mains_current_head_is_still_taken(hub, tmp_path):
    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)
    folder = build(tmp_path / "proposal", n=80, seed=3)
    lost_answer(hub, folder)
    hub.inject("GET", r"/whoami", 500)  # no user to filter by: every open pull request is looked at
    assert push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True).endswith("/discussions/1")


def test_another_users_identical_pull_request_is_neither_taken_nor_read(hub, tmp_path):
    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)
    folder = build(tmp_path / "proposal", n=80, seed=3)
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    hub.repo(REPO).pulls[1].author = "someone-else"
    start = len(hub.requests)
    url = push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    assert url.endswith("/discussions/2")
    assert not [p for m, p, _ in hub.requests[start:] if m == "GET" and "refs/pr/1" in p]


def test_ctrl_c_while_opening_a_pull_request_says_which_one_a_rerun_finds(hub, tmp_path, monkeypatch):
    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hub_module, "_commit", interrupted)
    with pytest.raises(HubInterrupted, match="while it is open and opened from main's current head"):
        push(build(tmp_path / "proposal", n=80, seed=3), REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
