"""Shared fixtures: the public data beside the project root (skipped, saying why, where absent)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Tests talk to local fakes only: no telemetry or download-count calls to the real Hub or S3.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
# Shared rate budgets (textbookgen.sharedlimits) go to a folder of the run's own, not the user's cache; set before
# the test modules are imported, as some copy os.environ for their subprocesses then. Each test gets its own too.
_RUN_LIMITS = os.environ["TEXTBOOKGEN_LIMITS_DIR"] = tempfile.mkdtemp(prefix="textbookgen-test-limits-")

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _run_rate_budgets():
    """The run's folder of shared rate budgets (set above) is removed at its end."""
    yield
    shutil.rmtree(_RUN_LIMITS, ignore_errors=True)


@pytest.fixture(autouse=True)
def _own_rate_budgets(tmp_path_factory, monkeypatch) -> None:
    """Each test's engines share rate budgets (textbookgen.sharedlimits) only among themselves: not with an
    earlier test's on a reused port, and nothing is written to the user's cache."""
    monkeypatch.setenv("TEXTBOOKGEN_LIMITS_DIR", str(tmp_path_factory.mktemp("limits")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the project root; a user's clone has none, so tests skip there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (only developer and CI machines have it)")
    return SHARED_DATA


@pytest.fixture()
def hub():
    """A local fake of the Hub (textbookgen.testing.fakehub) that the real huggingface_hub client talks to."""
    from textbookgen.testing.fakehub import FakeHub

    with FakeHub() as h:
        yield h
