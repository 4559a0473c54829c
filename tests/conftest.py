"""Shared fixtures: every test gets its own state folder, and no RECLOOP_* leaks in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recloop.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def ml100k_path() -> Path:
    """Where the real MovieLens-100K lies: RECLOOP_ML100K, or ../shared beside the checkout."""
    return Path(os.environ.get("RECLOOP_ML100K", REPO.parent / "shared" / "datasets" / "ml-100k"))


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("RECLOOP_") and name != "RECLOOP_ML100K":
            monkeypatch.delenv(name)
    # A recloop.yaml in the working directory must not change what tests see.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "var")


@pytest.fixture
def ml100k() -> Path:
    path = ml100k_path()
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens-100K not found at {path} (set RECLOOP_ML100K to its folder)")
    return path
