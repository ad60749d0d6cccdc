"""A push said "train rows changed, same count" when only the parquet writer's bytes changed (the same rows written
by another writer or with other options). A push's commit description now records each split's `rows_digest` with
a digest of the shards holding those rows, and a later push compares rows by it, reading no remote shard."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub.utils import disable_progress_bars
from test_card import MANIFEST, RECIPE
from test_dataset import sample_documents

from textbookgen import hub as hub_module
from textbookgen.card import CARDS_DIR, render_card
from textbookgen.dataset import check_rows, existing_shards, write_dataset
from textbookgen.hub import push

disable_progress_bars()
REPO = "tester/rows"


def build(folder: Path, seed: int = 0, cdc: bool = True, shards: int = 1) -> Path:
    docs = sample_documents(40, seed=seed)
    write_dataset(docs, folder, content_defined_chunking=cdc, max_shard_bytes=check_rows(docs.lazy())[1] // shards + 1)
    write_dataset(sample_documents(10, seed=50), folder, split="test")
    render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST)
    return folder


def split_digest(folder: Path, split: str) -> str:
    return hub_module.rows_digest(existing_shards(folder, split))


def test_the_same_rows_in_another_writers_bytes_are_not_called_changed(hub, tmp_path):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    other = build(tmp_path / "b", cdc=False, shards=2)  # polars' writer, two shards: other bytes, the same rows
    assert (other / "data/train-00000-of-00002.parquet").is_file()
    start = len(hub.requests)
    push(other, REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: train same rows, shards rewritten (40)"
    downloads = {p.rsplit("/", 1)[-1] for m, p, _ in hub.requests[start:] if m == "GET" and "/resolve/" in p}
    assert downloads == {"README.md", "recipe.yaml"}  # no shard is read to tell


def test_the_record_is_found_behind_a_later_commit_that_left_the_shards_alone(hub, tmp_path):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    hub.commit_files(REPO, {"notes.md": b"edited on the Hub\n"})  # the head is no push of ours now
    push(build(tmp_path / "b", cdc=False, shards=2), REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: train same rows, shards rewritten (40)"


def test_other_rows_in_another_writers_bytes_are_still_changed(hub, tmp_path):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    push(build(tmp_path / "b", seed=7, cdc=False), REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: train rows changed, same count (40)"


def test_the_record_is_in_the_commit_description_and_no_published_file_changes(hub, tmp_path):
    folder = build(tmp_path / "a")
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    description = hub.commits(REPO)[-1].message
    assert description.startswith(hub_module.ROWS_MARK)
    assert [line.split()[:2] for line in description.splitlines()[1:]] == [["test", split_digest(folder, "test")],
                                                                         ["train", split_digest(folder, "train")]]
    for name in ("manifest.json", "recipe.yaml", "data/train-00000-of-00001.parquet"):
        assert hub.read(REPO, name) == (folder / name).read_bytes()


def test_rows_digest_tells_rows_apart_not_their_layout(tmp_path):
    docs = sample_documents(30, seed=1)
    one, three = tmp_path / "one", tmp_path / "three"
    write_dataset(docs, one)
    write_dataset(docs, three, content_defined_chunking=False, max_shard_bytes=check_rows(docs.lazy())[1] // 3 + 1)
    write_dataset(docs.with_columns(docs["input_tokens"].reverse()), tmp_path / "moved")
    assert len(existing_shards(three)) == 3 and split_digest(three, "train") == split_digest(one, "train")
    assert split_digest(tmp_path / "moved", "train") != split_digest(one, "train")
