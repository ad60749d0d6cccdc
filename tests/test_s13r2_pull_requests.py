"""A push onto another user's pull request (`refs/pr/N` of a repo one may only read) is answered 403; it was
reported as "push to your own namespace or an organization you write to", advice that does not apply to a pull
request. The refusal now says who may push onto it and how to open one's own."""

from __future__ import annotations

import pytest
from huggingface_hub.utils import disable_progress_bars
from test_hub import build

from textbookgen.hub import push

disable_progress_bars()
REPO = "them/data"


def test_a_push_onto_someone_elses_pull_request_says_who_may_push_onto_it(hub, tmp_path):
    repo = hub.add_repo(REPO)
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint, create_pr=True)
    repo.pulls[1].author = "someone"  # the fake has one token: the pull request is now another reader's
    start = len(hub.requests)
    with pytest.raises(PermissionError) as err:
        push(build(tmp_path / "b", seed=4), REPO, token=hub.token, endpoint=hub.endpoint, revision="refs/pr/1")
    assert str(err.value) == (f"no write access to refs/pr/1 of {REPO} (403): a pull request takes commits from its "
                              "author and the repo's writers; open your own with create_pr (--create-pr)")
    assert not [p for m, p, _ in hub.requests[start:] if m == "PUT" or p.endswith("/commit/refs/pr/1")]
    assert [c.title for c in hub.commits(REPO, branch="refs/pr/1")][-1].startswith("textbookgen: first upload")
