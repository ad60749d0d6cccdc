"""Shared fixtures: the public data beside the project root (skipped, saying why, where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the project root; a user's clone has none, so tests skip there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (only developer and CI machines have it)")
    return SHARED_DATA
