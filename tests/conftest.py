"""Shared fixtures: the public data beside the project root (skipped, saying why, where absent)."""

from __future__ import annotations

import os
from pathlib import Path

# Tests talk to local fakes only: no telemetry or download-count calls to the real Hub or S3.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
