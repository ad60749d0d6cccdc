"""The rows records of merged pull requests only word a push's commit message, yet a refused or missing listing of
pull requests (a Hub or mirror without discussions, a 500, a missing refs/pr/N) failed a plain push after its
uploads; and the lookup read every merged pull request's details and history before the newest one, which held the
record. A failed lookup now counts as no record, and merged pull requests are read newest first until one has it."""

from __future__ import annotations

import types

import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.utils import disable_progress_bars
from test_s13c_same_rows import build

from textbookgen.hub import hub_errors, push

disable_progress_bars()
REPO = "tester/merged"


@pytest.mark.parametrize("status", [403, 404, 500])
def test_a_refused_listing_of_pull_requests_leaves_the_push_to_main_as_it_was(hub, tmp_path, status):
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(REPO, repo_type="dataset")
    api.upload_folder(repo_id=REPO, folder_path=str(build(tmp_path / "a")), repo_type="dataset")  # no rows record
    hub.inject("GET", r"/discussions$", status, times=5)
    push(build(tmp_path / "b", cdc=False, shards=2), REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: train rows changed, same count (40)"


def test_a_merged_pull_requests_missing_ref_counts_as_no_record(hub, tmp_path):
    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)
    push(build(tmp_path / "proposal", seed=7), REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    HfApi(endpoint=hub.endpoint, token=hub.token).merge_pull_request(REPO, 1, repo_type="dataset")
    hub.inject("GET", r"/commits/refs(/|%2F)pr", 404, times=5)
    push(build(tmp_path / "again", seed=7, cdc=False, shards=2), REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: train rows changed, same count (40)"


def test_merged_pull_requests_are_read_newest_first_until_one_holds_the_record(hub, tmp_path):
    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    for num in range(1, 7):
        push(build(tmp_path / f"p{num}", seed=10 + num), REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
        api.merge_pull_request(REPO, num, repo_type="dataset")
    start = len(hub.requests)
    push(build(tmp_path / "again", seed=16, cdc=False, shards=2), REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: train same rows, shards rewritten (40)"
    asked = [p for m, p, _ in hub.requests[start:] if m == "GET"]
    assert [p.rsplit("/", 1)[-1] for p in asked if "/discussions/" in p] == ["6"]  # #6's merge commit only
    assert [p for p in asked if "/commits/refs" in p] == [f"/api/datasets/{REPO}/commits/refs/pr/6"]


@pytest.mark.parametrize("missing", [False, True])
def test_a_newer_merged_pull_request_without_its_ref_does_not_hide_an_older_ones_record(hub, tmp_path, missing):
    """A 404 on one merged pull request's refs/pr/N (#2, another writer's) ended the lookup of all older ones, so
    #1's record of the same rows was never read and the push was worded "rows changed"."""
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)
    push(build(tmp_path / "proposal", seed=7), REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    api.merge_pull_request(REPO, 1, repo_type="dataset")
    api.create_commit(REPO, [CommitOperationAdd("notes.txt", b"a note\n")], commit_message="a note",
                      repo_type="dataset", create_pr=True)  # no rows record
    api.merge_pull_request(REPO, 2, repo_type="dataset")
    if missing:
        hub.inject("GET", r"/commits/refs(/|%2F)pr(/|%2F)2$", 404, times=5)
    push(build(tmp_path / "again", seed=7, cdc=False, shards=2), REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: train same rows, shards rewritten (40)"


def test_hub_errors_catch_the_errors_of_the_http_library_the_client_speaks(monkeypatch):
    """huggingface_hub 1 speaks httpx: with httpx2 installed beside it (another SDK's), `hub_errors` caught httpx2's
    errors only, and a timeout of the client escaped as a traceback."""
    from huggingface_hub.utils import _http

    class TransportError(Exception):
        pass

    class TimeoutException(TransportError):
        pass
    httpx = types.ModuleType("httpx")  # stands in for httpx, as huggingface_hub 1's `_http` imports it
    httpx.TransportError, httpx.TimeoutException = TransportError, TimeoutException
    monkeypatch.delattr(_http, "httpx2", raising=False)
    monkeypatch.setattr(_http, "httpx", httpx, raising=False)
    with pytest.raises(ConnectionError, match=r"the Hub at http://hub did not answer within 5 s \(TimeoutException\)"):
        with hub_errors(REPO, "http://hub", timeout=5):
            raise TimeoutException("timed out")
    with pytest.raises(ConnectionError, match=r"cannot reach the Hub at http://hub \(TransportError: refused\)"):
        with hub_errors(REPO, "http://hub"):
            raise TransportError("refused")
