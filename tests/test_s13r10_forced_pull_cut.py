"""Review of 973ef02's `--force` over an edit that kept an old mtime: the forced pull deleted the client's download
metadata of the edited file before any download. A forced pull cut short (a network error) left the edit, the
folder marked incomplete, and no trace that a pull wrote the file: the rerun it asks for, unforced, refused the
file as one "which no pull of <repo> wrote". The forced pull now keeps the metadata and dates the file after it
(the client's own rule then fetches it again), so the rerun names it as edited since a pull wrote it."""

from __future__ import annotations

import os
import time

import huggingface_hub
import pytest
from huggingface_hub.utils import disable_progress_bars
from test_hub import build

from textbookgen.dataset import PULL_INCOMPLETE
from textbookgen.hub import pull, push

disable_progress_bars()
REPO = "tester/quickstart"


def _cut(*args: object, **kwargs: object) -> None:
    raise ConnectionError("network down")


def test_a_forced_pull_cut_short_leaves_an_edited_file_known_as_pulled(hub, tmp_path, monkeypatch):
    push(build(tmp_path / "a"), REPO, token=hub.token, endpoint=hub.endpoint)
    out = pull(REPO, tmp_path / "copy", token=hub.token, endpoint=hub.endpoint)
    recipe = out / "recipe.yaml"
    recipe.write_text("my recipe\n", encoding="utf-8")
    earlier = time.time() - 3600  # as `cp -p` or `mv` of an older file leaves it
    os.utime(recipe, (earlier, earlier))
    push(build(tmp_path / "b", n=25, seed=4), REPO, token=hub.token, endpoint=hub.endpoint)  # recipe unchanged
    with monkeypatch.context() as m:
        m.setattr(huggingface_hub, "snapshot_download", _cut)
        with pytest.raises(ConnectionError):
            pull(REPO, out, token=hub.token, endpoint=hub.endpoint, force=True)
    assert recipe.read_text("utf-8") == "my recipe\n"
    assert (out / PULL_INCOMPLETE).is_file()
    with pytest.raises(ValueError, match=r"holds recipe\.yaml, edited since a pull wrote it: the pull would "
                                         r"overwrite it with the repo's"):
        pull(REPO, out, token=hub.token, endpoint=hub.endpoint)
    pull(REPO, out, token=hub.token, endpoint=hub.endpoint, force=True)
    assert recipe.read_bytes() == hub.read(REPO, "recipe.yaml")
    assert not (out / PULL_INCOMPLETE).exists()
