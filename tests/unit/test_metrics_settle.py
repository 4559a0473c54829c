"""The scheduled metrics hour waits for its clicks (monitoring.tasks.settled)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from monitoring.tasks import settled

WINDOW = {"start": "2026-01-05T09:00:00+00:00", "end": "2026-01-05T10:00:00+00:00"}
END = datetime(2026, 1, 5, 10, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _settings(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("RECLOOP_MONITORING__ATTRIBUTION_SECONDS", "600")
    monkeypatch.setenv("RECLOOP_EVENT_LOG__SEAL_SECONDS", "60")


def test_the_scheduled_hour_waits_for_its_attribution_window_and_the_seal() -> None:
    assert not settled(WINDOW, explicit=False, now=END)
    assert not settled(WINDOW, explicit=False, now=END + timedelta(seconds=659))
    assert settled(WINDOW, explicit=False, now=END + timedelta(seconds=660))


def test_an_explicit_window_goes_at_once_and_says_its_clicks_may_be_missing(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="monitoring.tasks"):
        assert settled(WINDOW, explicit=True, now=END + timedelta(seconds=5))
    assert "clicks still to come are not counted" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monitoring.tasks"):
        assert settled(WINDOW, explicit=True, now=END + timedelta(hours=1))
    assert caplog.text == ""


def test_the_production_log_has_no_seal_to_wait_for(monkeypatch) -> None:
    monkeypatch.setenv("RECLOOP_PROFILE", "production")
    assert settled(WINDOW, explicit=False, now=END + timedelta(seconds=600))
    assert not settled(WINDOW, explicit=False, now=END + timedelta(seconds=599))
