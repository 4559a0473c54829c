"""Which interval a recloop_features run processes (recloop.features.tasks.interval): from the
end of the last interval published, so that an hour whose gate failed (or whose run was
skipped) is validated again with the next one instead of being left behind unpublished while
the next gate approves the exports that still hold its rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from recloop.features import store, tasks


def at(hour: int) -> datetime:
    return datetime(2026, 3, 2, hour, tzinfo=UTC)


@pytest.fixture
def published(monkeypatch, tmp_path):
    """Set what the online store holds up to (None: never loaded)."""
    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path / "var"))
    state: dict[str, datetime | None] = {"until": None}
    monkeypatch.setattr(store, "published_until", lambda settings, *_: state["until"])

    def set_until(until: datetime | None) -> None:
        state["until"] = until

    return set_until


def window(start: datetime | None, end: datetime, conf=None) -> tuple[str | None, str]:
    args = (start.isoformat() if start else None, end.isoformat(), *([conf] if conf else []))
    got = tasks.interval(*args)
    return got["start"], got["end"]


def test_the_first_run_of_a_home_backfills(published) -> None:
    published(None)
    assert window(at(10), at(11)) == (None, at(11).isoformat())


def test_an_hourly_run_starts_where_the_last_publish_ended(published) -> None:
    published(at(10))
    assert window(at(10), at(11)) == (at(10).isoformat(), at(11).isoformat())


def test_a_failed_or_skipped_hour_is_validated_again_with_the_next(published) -> None:
    # (10, 11] failed its gate, so nothing was published after 10: the run of (11, 12] checks
    # and publishes (10, 12], rows of the failed hour included.
    published(at(10))
    assert window(at(11), at(12)) == (at(10).isoformat(), at(12).isoformat())
    # A manual or asset-triggered run (no data interval) catches up the same way.
    assert window(None, at(12)) == (at(10).isoformat(), at(12).isoformat())


def test_a_rerun_of_a_published_interval_keeps_its_window(published) -> None:
    published(at(12))  # (10, 11] was published long ago and its DAG run is cleared
    assert window(at(10), at(11)) == (at(10).isoformat(), at(11).isoformat())
    assert window(None, at(11)) == (at(10).isoformat(), at(11).isoformat())
    assert window(at(11), at(12)) == (at(11).isoformat(), at(12).isoformat())


def test_a_trigger_conf_window_is_kept_as_given(published) -> None:
    published(at(10))
    conf = {"start": "2026-03-02T11:00:00+00:00", "end": "2026-03-02T12:00:00Z"}
    assert window(None, at(15), conf) == (at(11).isoformat(), at(12).isoformat())
    # No start: everything up to the end, as `recloop features run --end` (naive times: UTC).
    assert window(None, at(15), {"end": "2026-03-02T13:00"}) == (None, at(13).isoformat())
    with pytest.raises(ValueError, match="empty interval"):
        window(None, at(15), {"start": at(12).isoformat(), "end": at(12).isoformat()})
    # Other keys are not a window.
    assert window(at(14), at(15), {"hour": 3}) == (at(10).isoformat(), at(15).isoformat())


def test_dbt_never_builds_as_of_before_what_is_published(published, monkeypatch) -> None:
    """A rerun of an older interval must not rebuild the table marts (the catalogue the
    service reads) without the items created since: dbt builds as of the later of the
    interval's end and what the online store already holds."""
    from recloop.features import pipeline

    built: list[datetime] = []
    monkeypatch.setattr(pipeline, "mark_building", lambda settings, end: None)
    monkeypatch.setattr(pipeline, "run_dbt",
                        lambda settings, command, as_of, echo: built.append(as_of))  # fmt: skip
    settings = tasks.load_settings()
    pipeline.build_features(settings, at(11))  # nothing published yet: as of the end
    published(at(14))
    pipeline.build_features(settings, at(11))  # a rerun of an old hour
    pipeline.build_features(settings, at(15))  # the next hour
    assert built == [at(11), at(14), at(15)]


def test_publishing_reaches_back_over_the_span_dbt_recomputes(published, monkeypatch) -> None:
    """dbt recomputes the change points of the last late_arrival_hours (24) when late events
    arrive: a run that loads past what the online store holds loads that whole span, so a
    recomputed newest row goes online; a rerun of an older interval still loads nothing."""
    from types import SimpleNamespace

    windows: list[tuple[datetime, datetime]] = []
    feature_store = SimpleNamespace(
        materialize=lambda start_date, end_date, feature_views: windows.append(
            (start_date, end_date)
        )
    )
    monkeypatch.setattr(store, "open_store", lambda settings: feature_store)
    settings = tasks.load_settings()
    published(at(14))
    store.materialize(settings, at(14), at(15), 24)  # the next hour
    store.materialize(settings, at(10), at(12), 24)  # an older interval again: nothing
    assert windows == [(datetime(2026, 3, 1, 15, tzinfo=UTC), at(15))]
