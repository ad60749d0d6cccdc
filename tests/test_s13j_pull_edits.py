"""A re-pull overwrote a pulled file the user had edited since, and deleted an edited pulled file the new head
lacks: a file counted as the pull's whenever the client's download metadata of it existed. A pulled file is now
the pull's to replace or delete only while its bytes are those the metadata records (its etag: the LFS sha256,
or git's blob id); an edited one is refused, named, before anything is written, unless `--force`."""

from __future__ import annotations

import os
import time

import pytest
from huggingface_hub.utils import disable_progress_bars
from test_hub import build
from test_s13c_pull_overwrite import snapshot
from typer.testing import CliRunner

from textbookgen.hub import pull, push

disable_progress_bars()
REPO = "tester/quickstart"


def test_cli_repull_refuses_to_overwrite_an_edited_pulled_file_unless_forced(hub, tmp_path, monkeypatch):
    from textbookgen.cli import app

    monkeypatch.setenv("HF_TOKEN", hub.token)
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "copy", token=hub.token, endpoint=hub.endpoint)
    (out / "README.md").write_text("my edit\n", encoding="utf-8")  # within the second the client trusts
    push(build(tmp_path / "b", n=25, seed=4), REPO, token=hub.token, endpoint=hub.endpoint)
    before = snapshot(out)
    runner = CliRunner()
    res = runner.invoke(app, ["pull", REPO, "-o", str(out), "--endpoint", hub.endpoint])
    assert res.exit_code == 1
    assert res.output.splitlines()[-1] == (
        f"error: {out} holds README.md, edited since a pull wrote it: the pull would overwrite it with the "
        "repo's; move them away, pull into another folder, or pass --force (force=True)")
    assert snapshot(out) == before
    res = runner.invoke(app, ["pull", REPO, "-o", str(out), "--force", "--endpoint", hub.endpoint])
    assert res.exit_code == 0, res.output
    assert (out / "README.md").read_bytes() == hub.read(REPO, "README.md")


def test_an_edited_file_is_refused_at_the_same_head_too(hub, tmp_path):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "copy", token=hub.token, endpoint=hub.endpoint)
    shard = out / "data/train-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-8] + b"mine!PAR")  # the client sees the mtime move: it would fetch it
    later = time.time() + 10
    os.utime(shard, (later, later))
    with pytest.raises(ValueError, match=r"holds data/train-00000-of-00001\.parquet, edited since a pull wrote it"):
        pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    assert shard.read_bytes().endswith(b"mine!PAR")


def test_a_repull_keeps_an_edited_pulled_file_the_new_head_lacks_unless_forced(hub, tmp_path):
    push(build(tmp_path / "a", shards=2), REPO, token=hub.token, endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "copy", token=hub.token, endpoint=hub.endpoint)
    gone = out / "data/train-00001-of-00002.parquet"
    gone.write_bytes(gone.read_bytes() + b"\n")
    push(build(tmp_path / "b", n=25, seed=4), REPO, token=hub.token, endpoint=hub.endpoint)  # one shard now
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"holds data/train-00001-of-00002\.parquet, edited since a pull wrote it: "
                                         r"the pull would delete it \(tester/quickstart@[0-9a-f]{12} lacks it\); "):
        pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    assert snapshot(out) == before
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint, force=True)
    assert sorted(p.name for p in (out / "data").glob("train-*")) == ["train-00000-of-00001.parquet"]


def test_unedited_pulled_files_are_still_replaced_and_removed(hub, tmp_path):
    push(build(tmp_path / "a", shards=2), REPO, token=hub.token, endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "copy", token=hub.token, endpoint=hub.endpoint)
    for path in out.rglob("*"):  # touched (mtime moved), not edited: the bytes tell
        if path.is_file() and ".cache" not in path.parts:
            later = time.time() + 10
            os.utime(path, (later, later))
    push(build(tmp_path / "b", n=25, seed=4), REPO, token=hub.token, endpoint=hub.endpoint)
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    assert (out / "README.md").read_bytes() == hub.read(REPO, "README.md")
    assert sorted(p.name for p in (out / "data").glob("train-*")) == ["train-00000-of-00001.parquet"]
