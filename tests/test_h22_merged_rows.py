"""A pull request merged on the Hub left main with a merge commit that carries no rows record (the record is in the
pull request's own commits, on refs/pr/N, not in main's history), so the next push of the same rows in other bytes
said "rows changed". A push now reads the records of the pull requests merged into its head's history."""

from __future__ import annotations

from huggingface_hub import HfApi
from huggingface_hub.utils import disable_progress_bars
from test_s13c_same_rows import build

from textbookgen.hub import push

disable_progress_bars()
REPO = "tester/merged"


def propose_and_merge(hub, folder) -> None:
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    HfApi(endpoint=hub.endpoint, token=hub.token).merge_pull_request(REPO, 1, repo_type="dataset")
    assert hub.commits(REPO)[-1].title == "Merge pull request #1" and not hub.commits(REPO)[-1].message


def test_the_same_rows_as_a_merged_pull_request_in_other_bytes_are_not_called_changed(hub, tmp_path):
    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)
    propose_and_merge(hub, build(tmp_path / "proposal", seed=7))
    start = len(hub.requests)
    push(build(tmp_path / "again", seed=7, cdc=False, shards=2), REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: train same rows, shards rewritten (40)"
    downloads = {p.rsplit("/", 1)[-1] for m, p, _ in hub.requests[start:] if m == "GET" and "/resolve/" in p}
    assert downloads == {"README.md", "recipe.yaml"}  # no shard is read to tell


def test_other_rows_than_a_merged_pull_requests_are_still_changed(hub, tmp_path):
    push(build(tmp_path / "main"), REPO, token=hub.token, endpoint=hub.endpoint)
    propose_and_merge(hub, build(tmp_path / "proposal", seed=7))
    push(build(tmp_path / "other", seed=8, cdc=False), REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: train rows changed, same count (40)"

