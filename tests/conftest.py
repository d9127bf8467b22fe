"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

# Development data lives beside the repository, never inside it (see ../shared/data/README.md).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared development data folder; skips the test on machines that do not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared development data not found at {SHARED_DATA}")
    return SHARED_DATA
