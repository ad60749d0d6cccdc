"""Review of the pull's checks (973ef02): a pulled file the new head lacks whose download metadata cannot be read
(corrupt) was refused as "edited since a pull wrote it", which nothing shows (the bytes a pull wrote are not
known); the refusal now says what is known: its download metadata cannot be read."""

from __future__ import annotations

import pytest
from huggingface_hub.utils import disable_progress_bars
from test_hub import build
from test_s13c_pull_overwrite import snapshot

from textbookgen.hub import pull, push

disable_progress_bars()
REPO = "tester/quickstart"


def test_a_stale_pulled_file_with_unreadable_metadata_is_refused_as_such(hub, tmp_path):
    push(build(tmp_path / "a", shards=2), REPO, token=hub.token, endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "copy", token=hub.token, endpoint=hub.endpoint)
    meta = out / ".cache/huggingface/download/data/train-00001-of-00002.parquet.metadata"
    meta.write_bytes(b"\xff\xfe garbled\n")
    push(build(tmp_path / "b", n=25, seed=4), REPO, token=hub.token, endpoint=hub.endpoint)  # one shard now
    before = snapshot(out)
    with pytest.raises(ValueError) as refused:
        pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    message = str(refused.value)
    assert "holds data/train-00001-of-00002.parquet, whose download metadata " in message
    assert f"(in {out}/.cache/huggingface/download) cannot be read: the pull would delete it (tester/quickstart@" \
        in message
    assert "edited since" not in message
    assert snapshot(out) == before
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint, force=True)
    assert sorted(p.name for p in (out / "data").glob("train-*")) == ["train-00000-of-00001.parquet"]
