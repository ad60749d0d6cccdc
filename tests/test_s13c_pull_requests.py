"""`push(create_pr=True)` / `textbookgen push --create-pr` opens a pull request (an org's repo the user cannot
write to), and a push onto an open `refs/pr/N` compares with the pull request's head, not main's. Before, a
`refs/pr/N` revision was refused and the fake Hub answered `create_pr` with 400."""

from __future__ import annotations

import logging

import pytest
from huggingface_hub import HfApi
from huggingface_hub.utils import disable_progress_bars
from test_hub import build, published
from typer.testing import CliRunner

from textbookgen.hub import push

disable_progress_bars()
REPO = "tester/quickstart"
THEIRS = "them/data"


def test_cli_create_pr_opens_a_pull_request_on_a_repo_it_cannot_write_and_prints_its_url(hub, tmp_path, monkeypatch):
    from textbookgen.cli import app

    monkeypatch.setenv("HF_TOKEN", hub.token)
    hub.add_repo(THEIRS)  # someone else's: the token's user may read it, not write to it
    folder = build(tmp_path / "build")
    runner = CliRunner()
    res = runner.invoke(app, ["push", str(folder), THEIRS, "--endpoint", hub.endpoint])
    assert res.exit_code == 1 and "no write access" in res.output
    res = runner.invoke(app, ["push", str(folder), THEIRS, "--create-pr", "--endpoint", hub.endpoint])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == f"{hub.endpoint}/datasets/{THEIRS}/discussions/1"
    assert [c.title for c in hub.commits(THEIRS)] == ["initial commit"]  # main is left alone
    opened = hub.commits(THEIRS, branch="refs/pr/1")[-1]
    assert opened.title == "textbookgen: first upload, train 60 rows, test 10 rows"
    assert {o["path"] for o in opened.operations} == set(published(folder))
    details = HfApi(endpoint=hub.endpoint, token=hub.token).get_discussion_details(THEIRS, 1, repo_type="dataset")
    assert details.is_pull_request and details.status == "open" and details.author == hub.user


def test_a_push_onto_an_open_pull_request_compares_with_its_head_not_mains(hub, tmp_path):
    small, large = build(tmp_path / "small", n=60), build(tmp_path / "large", n=80, seed=3)
    push(small, REPO, token=hub.token, endpoint=hub.endpoint)
    main = hub.commits(REPO)
    url = push(large, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    assert url == f"{hub.endpoint}/datasets/{REPO}/discussions/1"
    assert hub.commits(REPO, branch="refs/pr/1")[-1].title.startswith("textbookgen: train +20 rows (80)")
    pr_head = hub.commits(REPO, branch="refs/pr/1")[-1]

    # the pull request's own rows again: nothing to commit (against main, every shard would differ)
    push(large, REPO, token=hub.token, endpoint=hub.endpoint, revision="refs/pr/1")
    assert hub.commits(REPO, branch="refs/pr/1")[-1] == pr_head
    # main's rows: a commit onto the pull request (against main, nothing would differ and none would be made)
    url = push(small, REPO, token=hub.token, endpoint=hub.endpoint, revision="refs/pr/1")
    back = hub.commits(REPO, branch="refs/pr/1")[-1]
    assert back.parent == pr_head.oid and url.endswith(back.oid)
    assert back.title.startswith("textbookgen: train -20 rows (60)")
    assert hub.read(REPO, "data/train-00000-of-00001.parquet", revision="refs/pr/1") == \
        (small / "data/train-00000-of-00001.parquet").read_bytes()
    assert hub.commits(REPO) == main


def test_cli_push_onto_a_pull_request_that_is_closed_merged_or_missing_is_refused(hub, tmp_path, monkeypatch):
    from textbookgen.cli import app

    monkeypatch.setenv("HF_TOKEN", hub.token)
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    for seed in (1, 2):
        push(build(tmp_path / f"pr{seed}", n=30, seed=seed), REPO, token=hub.token, endpoint=hub.endpoint,
             create_pr=True)
    api.change_discussion_status(REPO, 1, "closed", repo_type="dataset")
    api.merge_pull_request(REPO, 2, repo_type="dataset")
    folder, before = build(tmp_path / "b", n=45, seed=9), len(hub.requests)
    runner = CliRunner()
    for ref, why in [("refs/pr/1", "pull request #1 of tester/quickstart is closed; open a new one"),
                     ("refs/pr/2", "pull request #2 of tester/quickstart is merged; open a new one"),
                     ("refs/pr/7", "dataset repo tester/quickstart has no pull request #7 (refs/pr/7)")]:
        res = runner.invoke(app, ["push", str(folder), REPO, "--revision", ref, "--endpoint", hub.endpoint])
        assert res.exit_code == 1 and why in res.output, res.output
    assert not [p for m, p, _ in hub.requests[before:] if m != "GET"]  # nothing uploaded or committed


def test_create_pr_goes_to_an_existing_repo_and_cannot_change_visibility(hub, tmp_path):
    folder = build(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match=f"dataset repo {REPO} not found"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    assert (("dataset", REPO) not in hub.repos) and hub.requests
    hub.requests.clear()
    with pytest.raises(ValueError, match="a pull request cannot change the repo's visibility"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True, private=True)
    with pytest.raises(ValueError, match="create_pr opens a new pull request against main"):
        push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True, revision="dev")
    assert hub.requests == []


def test_create_pr_with_nothing_changed_opens_no_pull_request(hub, tmp_path, caplog):
    folder = build(tmp_path / "a")
    head = push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    with caplog.at_level(logging.WARNING, logger="textbookgen.hub"):
        url = push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    assert url == head and not hub.repo(REPO).pulls
    assert "nothing differs from tester/quickstart's main" in caplog.text


def test_the_fake_hub_merges_a_pull_request_onto_main_and_refuses_a_conflicting_one(hub):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(REPO, repo_type="dataset")
    hub.commit_files(REPO, {"a.txt": b"a", "b.txt": b"b"})
    ops = [CommitOperationAdd("a.txt", b"a2"), CommitOperationAdd("c.txt", b"c"), CommitOperationDelete("b.txt")]
    first = api.create_commit(REPO, ops, commit_message="one", repo_type="dataset", create_pr=True)
    second = api.create_commit(REPO, [CommitOperationAdd("a.txt", b"a3")], commit_message="two", repo_type="dataset",
                               create_pr=True)
    hub.commit_files(REPO, {"d.txt": b"d"})  # main moves on, touching no file of the first pull request
    api.merge_pull_request(REPO, first.pr_num, repo_type="dataset")
    files = hub.repo(REPO).resolve("main").files
    assert {p: hub.read(REPO, p) for p in files if p != ".gitattributes"} == {"a.txt": b"a2", "c.txt": b"c",
                                                                             "d.txt": b"d"}
    details = api.get_discussion_details(REPO, second.pr_num, repo_type="dataset")
    assert details.conflicting_files == ["a.txt"] and details.target_branch == "refs/heads/main"
    with pytest.raises(HfHubHTTPError, match="has conflicts: a.txt"):
        api.merge_pull_request(REPO, second.pr_num, repo_type="dataset")
    assert api.get_discussion_details(REPO, first.pr_num, repo_type="dataset").status == "merged"
