"""Review of 4179509 (a push's message says "same rows" by the shards' bytes). A shard the Hub keeps in git itself,
not in LFS (a repo whose .gitattributes sends no parquet to LFS), was compared by an LFS sha256 it does not have:
a push of the very same bytes was committed as "train rows changed, same count". Git's blob id, which the head's
info gives for such a file, tells the same bytes from other ones (other bytes: test_h3_commit_rows)."""

from __future__ import annotations

import pytest
from huggingface_hub.utils import disable_progress_bars
from test_card import MANIFEST, RECIPE
from test_h3_commit_rows import build

from textbookgen.card import CARDS_DIR, render_card
from textbookgen.hub import push
from textbookgen.testing.fakehub import FakeHub

disable_progress_bars()
REPO = "tester/regular"
SHARD = "data/train-00000-of-00001.parquet"


@pytest.fixture()
def hub():
    with FakeHub() as h:
        yield h


def test_a_shard_kept_in_git_with_the_same_bytes_is_the_same_rows(hub, tmp_path):
    folder = build(tmp_path / "a", train_seed=0)
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    hub.commit_files(REPO, {SHARD: (folder / SHARD).read_bytes()})  # the same bytes, committed as a regular file
    render_card(folder, CARDS_DIR / "_base.md", RECIPE, MANIFEST)  # the card changes, the rows do not
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: same rows and recipe, card and files updated"

