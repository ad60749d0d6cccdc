"""Review of the pull's edit checks (4e57fd7, b3d72df), through the real client against the fake Hub.

- A repo folder whose name ends in `.metadata` (`notes.metadata/a.txt`) puts a directory of that name among the
  client's download metadata: the pull took it for the metadata of a pulled file `notes`, deleted the user's
  own `notes` as stale and then failed on unlinking the directory, leaving the folder marked incomplete.
- In a folder pulled before the pull record existed, a download metadata file that is not UTF-8 (corrupt)
  failed the pull with a bare UnicodeDecodeError naming no file; the client itself drops such metadata, so the
  file is not known to be the pull's and is refused as the user's, named.
- `--force` promises the repo's bytes over pulled files edited since, but the client keeps a file whose mtime is
  no newer than its metadata (an edit that kept an old mtime: `cp -p`, `mv`, a restore) where the metadata names
  the pulled commit or the file's etag: a forced pull left the edit in place. A forced pull now drops the
  client's metadata of such a file (its bytes are not the recorded etag), so the client fetches it again."""

from __future__ import annotations

import os
import time

import pytest
from huggingface_hub.utils import disable_progress_bars
from test_hub import build
from test_s13c_pull_overwrite import snapshot

from textbookgen.dataset import PULL_INCOMPLETE
from textbookgen.hub import PULL_RECORD, pull, push

disable_progress_bars()
REPO = "tester/quickstart"


def test_a_repo_folder_named_like_metadata_is_no_pulled_file(hub, tmp_path):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    hub.commit_files(REPO, {"notes.metadata/a.txt": b"kept beside the data\n"})
    out = tmp_path / "copy"
    out.mkdir()
    (out / "notes").write_text("my own notes\n", encoding="utf-8")
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    assert (out / "notes").read_text("utf-8") == "my own notes\n"
    assert (out / "notes.metadata/a.txt").read_bytes() == b"kept beside the data\n"
    assert not (out / PULL_INCOMPLETE).exists()
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint)  # a re-pull too
    assert (out / "notes").read_text("utf-8") == "my own notes\n"


def test_corrupt_metadata_in_a_folder_pulled_before_the_record_is_refused_naming_the_file(hub, tmp_path):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "copy", token=hub.token, endpoint=hub.endpoint)
    (out / PULL_RECORD).unlink()  # as an older textbookgen left it
    (out / ".cache/huggingface/download/README.md.metadata").write_bytes(b"\xff\xfe garbled\n")
    (out / "README.md").write_text("my card\n", encoding="utf-8")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"holds README\.md, which no pull of tester/quickstart wrote: the pull "
                                         r"would overwrite it"):
        pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    assert snapshot(out) == before


def test_a_forced_pull_replaces_an_edit_that_kept_an_old_mtime(hub, tmp_path):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "copy", token=hub.token, endpoint=hub.endpoint)
    shard, recipe = out / "data/train-00000-of-00001.parquet", out / "recipe.yaml"
    shard.write_bytes(shard.read_bytes()[:-8] + b"mine!PAR")
    recipe.write_text("my recipe\n", encoding="utf-8")
    earlier = time.time() - 3600  # as `cp -p` or `mv` of an older file leaves it
    for path in (shard, recipe):
        os.utime(path, (earlier, earlier))
    push(build(tmp_path / "b", n=25, seed=4), REPO, token=hub.token, endpoint=hub.endpoint)  # recipe unchanged
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint, force=True)
    assert recipe.read_bytes() == hub.read(REPO, "recipe.yaml")
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint)  # and a pull after it passes
    shard.write_bytes(shard.read_bytes()[:-8] + b"mine!PAR")
    os.utime(shard, (earlier, earlier))
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint, force=True)  # at the same head
    assert shard.read_bytes() == hub.read(REPO, "data/train-00000-of-00001.parquet")
