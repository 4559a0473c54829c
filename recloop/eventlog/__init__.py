"""The append-only event log: one interface, a backend per profile.

``open_event_log(settings)`` is the only way code gets a log; the profile picks the backend
(local files under ``<home>/events`` or a Postgres table), nothing else does.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from recloop.eventlog.base import (
    AppendResult,
    EventLog,
    EventLogBusy,
    EventLogError,
    InvalidEvents,
)
from recloop.settings import Settings

__all__ = [
    "AppendResult",
    "EventLog",
    "EventLogBusy",
    "EventLogError",
    "InvalidEvents",
    "count_events",
    "open_event_log",
    "read_events",
]


def open_event_log(settings: Settings, **options: object) -> EventLog:
    """Open the profile's event log for writing and reading."""
    if settings.profile == "production":
        from recloop.eventlog.postgres import PostgresEventLog

        return PostgresEventLog(settings.postgres_url.get_secret_value(), **options)  # type: ignore[arg-type]
    from recloop.eventlog.local import LocalEventLog

    config = settings.event_log
    return LocalEventLog(
        settings.events_dir,
        seal_seconds=config.seal_seconds,
        segment_max_bytes=config.segment_max_bytes,
        fsync=config.fsync,
        **options,  # type: ignore[arg-type]
    )


def read_events(settings: Settings, start: datetime | None, end: datetime | None) -> pa.Table:
    """Events with ``start <= ts < end`` from the profile's log (the local log: sealed segments
    only), sorted by ts then event_id, without taking the writer's lock (the service keeps
    writing while the metrics DAG reads)."""
    if settings.profile == "production":
        from recloop.eventlog.postgres import PostgresEventLog

        with PostgresEventLog(settings.postgres_url.get_secret_value()) as log:
            return log.read(start, end)
    from recloop.eventlog.local import read_events as read_local

    return read_local(settings.events_dir, start, end)


def count_events(settings: Settings, start: datetime | None, end: datetime | None) -> int:
    """How many events the profile's log holds with ``start <= ts < end`` (the local log:
    sealed segments only), without taking the writer's lock."""
    if settings.profile == "production":
        from recloop.eventlog.postgres import PostgresEventLog

        with PostgresEventLog(settings.postgres_url.get_secret_value()) as log:
            return log.count(start, end)
    from recloop.eventlog.local import count_events as count_local

    return count_local(settings.events_dir, start, end)
