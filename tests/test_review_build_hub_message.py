"""A push's default commit message compares rows with what the Hub's card describes; a card that describes no
rows (a README written on the Hub before the first push) gives nothing to compare, and the message must not
claim the rows are the same."""

from __future__ import annotations

import pytest
from huggingface_hub.utils import disable_progress_bars
from test_card import RECIPE
from test_hub_commit_message import REPO, build

from textbookgen.hub import push
from textbookgen.testing.fakehub import FakeHub

disable_progress_bars()


@pytest.fixture()
def hub():
    with FakeHub() as h:
        yield h


def test_a_first_push_over_a_hand_written_readme_gives_the_rows(hub, tmp_path):
    hub.add_repo(REPO)
    hub.commit_files(REPO, {"README.md": b"# Textbooks\n\nComing soon.\n"}, title="Create README.md")
    push(build(tmp_path / "a", 60, 10, RECIPE), REPO, token=hub.token, endpoint=hub.endpoint)
    title = hub.commits(REPO)[-1].title
    assert title == "textbookgen: train 60 rows, test 10 rows", title
