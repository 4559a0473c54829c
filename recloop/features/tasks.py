"""What each task of the recloop_features DAG does, as plain functions of the interval.

The DAG file only wires these together; each takes ISO timestamps (what Airflow passes
between tasks) and reads the settings from the environment of the worker.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from recloop.settings import load_settings


def interval(start: str | None, end: str) -> dict[str, str | None]:
    """The interval to process: the data interval (the hour before ``end`` when the run has
    none), or everything up to its end when the online store was never loaded (the first run
    of a home backfills)."""
    from recloop.features import store

    first = not store.has_materialized(load_settings())
    if start is None:
        start = (datetime.fromisoformat(end) - timedelta(hours=1)).isoformat()
    return {"start": None if first else start, "end": end}


def _bounds(window: dict[str, str | None]) -> tuple[datetime | None, datetime]:
    """The (start, end) datetimes of a window passed between tasks as ISO strings."""
    start = datetime.fromisoformat(window["start"]) if window["start"] else None
    return start, datetime.fromisoformat(window["end"])


def ingest_events(window: dict[str, str | None]) -> dict[str, Any]:
    """Make the raw layer current: the warehouse and its view over the sealed event log."""
    from recloop import warehouse
    from recloop.eventlog import count_events

    settings = load_settings()
    warehouse.init_warehouse(settings)
    start, end = _bounds(window)
    return {"events_in_interval": count_events(settings, start, end)}


def build(window: dict[str, str | None]) -> None:
    from recloop.features.pipeline import build_features

    build_features(load_settings(), _bounds(window)[1])


def validate(window: dict[str, str | None]) -> dict[str, Any]:
    from recloop.features.gate import run_gate

    report = run_gate(load_settings(), *_bounds(window))
    return {"expectations": report.evaluated, "rows": report.rows, "data_docs": report.docs}


def publish(window: dict[str, str | None]) -> None:
    from recloop.features.pipeline import publish_features

    publish_features(load_settings(), *_bounds(window))
