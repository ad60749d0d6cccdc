"""The Hub pages a commit history (50 commits a page, `p`/`limit`, a `Link: <...>; rel="next"` header), a tree
(`cursor`) and the pull requests (`p`), but the fake answered each in one response, so no test met a second page;
and a push read a repo's whole history (`HfApi.list_repo_commits`: every page) to find main's head in a pull
request's history or a rows record near the top. The fake now pages like the Hub (`FakeHub(page_size=3)` here),
and a push reads the history a page at a time, up to the page that answers it."""

from __future__ import annotations

import base64
import math

import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import disable_progress_bars, get_session
from test_s13c_same_rows import build

from textbookgen.hub import ROWS_MARK, _proposes_onto, _RowRecords, pull, push
from textbookgen.testing.fakehub import FakeHub

disable_progress_bars()
REPO = "tester/long"
PAGE = 3


@pytest.fixture
def paged():
    """A fake Hub whose every listing has pages of `PAGE` entries."""
    with FakeHub(page_size=PAGE) as h:
        yield h


def commit_pages(hub: FakeHub, start: int, ref: str = "") -> list[str]:
    """The commit-history page requests (of `ref` only, if given) since request `start`."""
    return [p for m, p, _ in hub.requests[start:] if m == "GET" and "/commits/" in p and p.endswith(ref)]


def long_repo(hub: FakeHub, commits: int) -> HfApi:
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(REPO, repo_type="dataset")
    for n in range(commits):
        hub.commit_files(REPO, {f"notes/{n}.md": b"note %d\n" % n}, title=f"note {n}")
    return api


def test_the_fake_pages_a_commit_history_as_the_hub_does(paged):
    api = long_repo(paged, 10)
    start = len(paged.requests)
    listed = [c.commit_id for c in api.list_repo_commits(REPO, repo_type="dataset")]
    assert listed == [c.oid for c in reversed(paged.commits(REPO))] and len(listed) == 11
    assert len(commit_pages(paged, start)) == math.ceil(11 / PAGE)
    answer = get_session().get(f"{paged.endpoint}/api/datasets/{REPO}/commits/main", params={"p": 1, "limit": 4})
    assert [c["id"] for c in answer.json()] == listed[4:8]
    assert answer.headers["X-Total-Count"] == "11"
    assert answer.links["next"]["url"] == f"{paged.endpoint}/api/datasets/{REPO}/commits/main?p=2&limit=4"
    last = get_session().get(answer.links["next"]["url"])
    assert [c["id"] for c in last.json()] == listed[8:] and "next" not in last.links
    assert get_session().get(f"{paged.endpoint}/api/datasets/{REPO}/commits/main?p=x").status_code == 400


def test_the_fake_pages_a_tree_by_cursor_and_the_pull_requests_by_index(paged):
    api = long_repo(paged, 7)
    start = len(paged.requests)
    listed = {e.path for e in api.list_repo_tree(REPO, repo_type="dataset", recursive=True)}
    assert listed == {".gitattributes", "notes", *(f"notes/{n}.md" for n in range(7))}
    assert len([p for _, p, _ in paged.requests[start:] if "/tree/" in p]) == math.ceil(9 / PAGE)
    for n in range(5):
        api.create_commit(REPO, [CommitOperationAdd(f"p{n}.txt", b"%d" % n)], commit_message=f"proposal {n}",
                          repo_type="dataset", create_pr=True)
    start = len(paged.requests)
    assert [d.num for d in api.get_repo_discussions(REPO, repo_type="dataset")] == [5, 4, 3, 2, 1]
    assert len([p for _, p, _ in paged.requests[start:] if p.endswith("/discussions")]) == math.ceil(5 / PAGE)


def test_main_s_head_is_looked_for_in_a_pull_request_s_history_up_to_the_page_holding_it(paged):
    api = long_repo(paged, 10)
    head = api.repo_info(REPO, repo_type="dataset").sha
    api.create_commit(REPO, [CommitOperationAdd("p.txt", b"p")], commit_message="proposal", repo_type="dataset",
                      create_pr=True)
    for n in range(4):
        paged.commit_files(REPO, {f"p{n}.txt": b"%d" % n}, branch="refs/pr/1")
    pr = next(iter(api.get_repo_discussions(REPO, repo_type="dataset")))
    start = len(paged.requests)
    assert _proposes_onto(api, REPO, pr, head)  # head is the 6th of 16 commits: on the 2nd page of 6
    assert len(commit_pages(paged, start)) == 2
    newer = paged.commit_files(REPO, {"later.md": b"later\n"})  # main moved on: not in the pull request's history
    start = len(paged.requests)
    assert not _proposes_onto(api, REPO, pr, newer)
    assert len(commit_pages(paged, start)) == math.ceil(16 / PAGE)  # all of it, to be sure


def test_a_push_reads_the_history_up_to_the_page_holding_the_rows_record(paged, tmp_path):
    long_repo(paged, 10)
    push(build(tmp_path / "a"), REPO, token=paged.token, endpoint=paged.endpoint)
    for n in range(4):
        paged.commit_files(REPO, {f"edited/{n}.md": b"edited on the Hub\n"})  # the record is 5th of 16 now
    start = len(paged.requests)
    push(build(tmp_path / "b", cdc=False, shards=2), REPO, token=paged.token, endpoint=paged.endpoint)
    assert paged.commits(REPO)[-1].title == "textbookgen: train same rows, shards rewritten (40)"
    assert len(commit_pages(paged, start)) == 2  # not the 6 pages of the whole history
    pulled = pull(REPO, tmp_path / "pulled", token=paged.token, endpoint=paged.endpoint)
    assert (pulled / "data/train-00001-of-00002.parquet").is_file()  # the paged tree, read by the pull


def test_a_rerun_create_pr_push_finds_its_pull_request_in_a_long_history(paged, tmp_path):
    long_repo(paged, 10)
    folder = build(tmp_path / "a")
    url = push(folder, REPO, token=paged.token, endpoint=paged.endpoint, create_pr=True)
    start = len(paged.requests)
    assert push(folder, REPO, token=paged.token, endpoint=paged.endpoint, create_pr=True) == url
    assert len(commit_pages(paged, start, "refs/pr/1")) == 1  # main's head: 2nd of its 12 commits
    assert len(paged.repo(REPO).pulls) == 1


def test_records_of_a_merged_pull_request_are_found_behind_pages_of_history_and_pull_requests(paged, tmp_path):
    api = long_repo(paged, 7)
    push(build(tmp_path / "main"), REPO, token=paged.token, endpoint=paged.endpoint)
    push(build(tmp_path / "proposal", seed=7), REPO, token=paged.token, endpoint=paged.endpoint, create_pr=True)
    api.merge_pull_request(REPO, 1, repo_type="dataset")
    for n in range(4):  # newer merged pull requests without a record: #1 is on the 2nd page of the list
        api.create_commit(REPO, [CommitOperationAdd(f"n{n}.txt", b"%d" % n)], commit_message=f"note {n}",
                          repo_type="dataset", create_pr=True)
        api.merge_pull_request(REPO, n + 2, repo_type="dataset")
    push(build(tmp_path / "again", seed=7, cdc=False, shards=2), REPO, token=paged.token, endpoint=paged.endpoint)
    assert paged.commits(REPO)[-1].title == "textbookgen: train same rows, shards rewritten (40)"


def _record(api: HfApi, n: int, key: tuple[str, str], rows: str) -> str:
    """Commit a file with a rows record for `key` in its description; its oid."""
    info = api.create_commit(REPO, [CommitOperationAdd(f"r{n}.txt", b"%d" % n)], commit_message=f"record {n}",
                             commit_description=f"{ROWS_MARK}\n{key[0]} {rows} {key[1]}", repo_type="dataset")
    return info.oid


def test_a_failed_history_page_is_not_taken_for_the_history_s_end():
    """After a page request fails, a later `get` must not answer from the pages read so far as if they were the
    whole history (the eager code re-read it: `history` stayed None)."""
    with FakeHub(page_size=2) as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo(REPO, repo_type="dataset")
        old, new = ("train", "a" * 64), ("train", "b" * 64)
        _record(api, 0, old, "1" * 64)
        for n in range(4):
            hub.commit_files(REPO, {f"f{n}": b"x"})
        head = _record(api, 1, new, "2" * 64)
        records = _RowRecords(api, REPO, head)
        assert records.get(new) == "2" * 64  # the first page holds it
        hub.inject("GET", "/commits/", 403)  # the next history page fails once (a 403 is not retried)
        try:
            records.get(old)
        except HfHubHTTPError:
            pass  # a failed read may raise ...
        assert records.get(old) == "1" * 64  # ... but a second ask reads the rest, not "no record"


@pytest.mark.parametrize("index", ["-1", "-3"])
def test_the_fake_refuses_a_negative_tree_cursor(index: str):
    with FakeHub(page_size=2) as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo(REPO, repo_type="dataset")
        hub.commit_files(REPO, {f"f{n}": b"x" for n in range(5)})
        cursor = base64.urlsafe_b64encode(index.encode()).decode()
        answer = get_session().get(f"{hub.endpoint}/api/datasets/{REPO}/tree/main", params={"cursor": cursor})
        assert answer.status_code == 400, (answer.json(), answer.headers.get("link"))
