"""A `create_pr` push whose answer was lost (the Hub opened the pull request, the client saw an error) opened a
second pull request with the same files on its rerun. A rerun now finds the open one that holds exactly its files,
prints its URL and pushes nothing; a build with other files still opens its own."""

from __future__ import annotations

import logging

import pytest
from huggingface_hub import HfApi
from huggingface_hub.utils import disable_progress_bars
from test_hub import build
from typer.testing import CliRunner

from textbookgen.hub import push

disable_progress_bars()
REPO = "tester/proposals"


def open_pulls(hub) -> list[int]:
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    return sorted(d.num for d in api.get_repo_discussions(REPO, repo_type="dataset", discussion_status="open"))


def test_a_rerun_after_a_lost_answer_finds_the_pull_request_it_opened(hub, tmp_path, monkeypatch, caplog):
    from textbookgen.cli import app

    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)
    folder = build(tmp_path / "proposal", n=80, seed=3)
    hub.inject("POST", r"/commit/", 502, after=True)  # the pull request is opened; a proxy loses the answer
    with pytest.raises(ConnectionError):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    assert open_pulls(hub) == [1]
    opened = hub.commits(REPO, branch="refs/pr/1")

    monkeypatch.setenv("HF_TOKEN", hub.token)
    commits_before = sum(1 for r in hub.requests if r[0] == "POST" and "/commit/" in r[1])
    with caplog.at_level(logging.WARNING, logger="textbookgen.hub"):
        res = CliRunner().invoke(app, ["push", str(folder), REPO, "--create-pr", "--endpoint", hub.endpoint])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == f"{hub.endpoint}/datasets/{REPO}/discussions/1"
    assert "pull request #1 of tester/proposals" in caplog.text and "already holds these files" in caplog.text
    assert open_pulls(hub) == [1] and hub.commits(REPO, branch="refs/pr/1") == opened
    assert sum(1 for r in hub.requests if r[0] == "POST" and "/commit/" in r[1]) == commits_before


def test_a_build_with_other_files_still_opens_its_own_pull_request(hub, tmp_path, caplog):
    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)
    push(build(tmp_path / "one", n=80, seed=3), REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    with caplog.at_level(logging.INFO, logger="textbookgen.hub"):
        url = push(build(tmp_path / "two", n=70, seed=4), REPO, token=hub.token, endpoint=hub.endpoint,
                   create_pr=True)
    assert url == f"{hub.endpoint}/datasets/{REPO}/discussions/2" and open_pulls(hub) == [1, 2]
    assert "open pull request(s) #1 of tester/proposals hold other files" in caplog.text


def test_a_pull_request_with_one_file_more_is_not_taken_for_this_push(hub, tmp_path):
    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)
    folder = build(tmp_path / "proposal", n=80, seed=3)
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    hub.commit_files(REPO, {"notes.txt": b"a reviewer's note\n"}, branch="refs/pr/1")
    url = push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    assert url.endswith("/discussions/2") and open_pulls(hub) == [1, 2]
