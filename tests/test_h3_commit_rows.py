"""A push's default message said "same rows" whenever each split had as many rows as the Hub's card said, even
when the rows themselves were new: it now says so only when the shards are the Hub's byte for byte (the sha256
of each LFS object, read with the head's info: no request per file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from huggingface_hub.utils import disable_progress_bars
from test_card import MANIFEST, RECIPE
from test_dataset import sample_documents

from textbookgen.card import CARDS_DIR, render_card
from textbookgen.dataset import write_dataset
from textbookgen.hub import push
from textbookgen.testing.fakehub import FakeHub

disable_progress_bars()
REPO = "tester/rows"


def build(folder: Path, train_seed: int, test_seed: int | None = None, max_shard_bytes: int = 500 * 1000**2) -> Path:
    write_dataset(sample_documents(40, seed=train_seed), folder, max_shard_bytes=max_shard_bytes)
    if test_seed is not None:
        write_dataset(sample_documents(10, seed=test_seed), folder, split="test")
    render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST)
    return folder


@pytest.fixture()
def hub():
    with FakeHub() as h:
        yield h


def test_new_rows_of_the_same_count_are_not_called_the_same_rows(hub, tmp_path):
    push(build(tmp_path / "a", train_seed=0, test_seed=50), REPO, token=hub.token, endpoint=hub.endpoint)
    push(build(tmp_path / "b", train_seed=7, test_seed=50), REPO, token=hub.token, endpoint=hub.endpoint)
    # train: 40 other rows; test: the same shard, byte for byte, so it goes unmentioned
    assert hub.commits(REPO)[-1].title == "textbookgen: train rows changed, same count (40)"


def test_the_same_shards_are_the_same_rows(hub, tmp_path):
    folder = build(tmp_path / "a", train_seed=0)
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    render_card(folder, CARDS_DIR / "_base.md", RECIPE, MANIFEST)  # the card changes, the shards do not
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: same rows and recipe, card and files updated"


def test_a_shard_the_hub_keeps_outside_lfs_is_not_claimed_the_same(hub, tmp_path):
    folder = build(tmp_path / "a", train_seed=0)
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    shard = "data/train-00000-of-00001.parquet"
    other = build(tmp_path / "b", train_seed=7)  # 40 other rows, committed as a regular file (same bytes: test_h9)
    hub.commit_files(REPO, {shard: (other / shard).read_bytes()})
    render_card(folder, CARDS_DIR / "_base.md", RECIPE, MANIFEST)
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: train rows changed, same count (40)"


def test_comparing_shards_sends_no_request_per_file(hub, tmp_path):
    def repush_requests(folder: Path, repo: str) -> list[tuple[str, str]]:
        push(folder, repo, token=hub.token, endpoint=hub.endpoint)
        render_card(folder, CARDS_DIR / "_base.md", RECIPE, MANIFEST)
        start = len(hub.requests)
        push(folder, repo, token=hub.token, endpoint=hub.endpoint)
        assert hub.commits(repo)[-1].title == "textbookgen: same rows and recipe, card and files updated"
        return [(method, re.sub("[0-9a-f]{40}", "SHA", path.replace(repo, "REPO")))
                for method, path, _ in hub.requests[start:]]

    one = repush_requests(build(tmp_path / "one", train_seed=0), "tester/one")
    many = build(tmp_path / "many", train_seed=0, max_shard_bytes=3_000)
    assert len(list((many / "data").glob("train-*.parquet"))) == 20
    assert repush_requests(many, "tester/many") == one
    assert not [p for _, p in one if "/paths-info/" in p or "/tree/" in p]
