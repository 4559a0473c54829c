"""What each task of the recloop_features DAG does, as plain functions of the interval.

The DAG file only wires these together; each takes ISO timestamps (what Airflow passes
between tasks) and reads the settings from the environment of the worker.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from recloop.settings import load_settings


def interval(
    start: str | None, end: str, conf: dict[str, Any] | None = None
) -> dict[str, str | None]:
    """The interval ``(start, end]`` a run processes.

    ``conf`` (a triggered run's) naming ``start`` or ``end`` gives the window explicitly, as
    ``recloop features run --start --end`` does: it is kept as given (no start: everything up
    to the end). Otherwise:

    - the online store was never loaded (the first run of a home, or every run so far
      failed): everything up to ``end`` (a backfill);
    - else from the end of the last interval published (``store.published_until``), not from
      the run's own data interval: an hour whose gate failed (or whose run was skipped) is
      validated again with this one and published when they pass, so its rows never go out
      unchecked and its change points reach the online store. The gate therefore stays failed
      until the failing rows are fixed (or an operator runs the window past them explicitly);
    - a rerun of an interval already published (``end`` at or before that end: an old DAG run
      cleared) keeps its own window (the data interval, or the hour before ``end``); it
      publishes nothing older than what the online store holds (``store.materialize``).
    """
    from recloop.features import store

    conf = conf or {}
    if conf.get("start") is not None or conf.get("end") is not None:
        end = _instant(conf.get("end") or end)
        given = _instant(conf["start"]) if conf.get("start") is not None else None
        if given is not None and datetime.fromisoformat(given) >= datetime.fromisoformat(end):
            raise ValueError(f"the run's conf asks for an empty interval ({given}, {end}]")
        return {"start": given, "end": end}
    end = _instant(end)
    published = store.published_until(load_settings())
    if published is None:
        return {"start": None, "end": end}
    if published < datetime.fromisoformat(end):
        return {"start": published.isoformat(), "end": end}
    if start is None:
        start = (datetime.fromisoformat(end) - timedelta(hours=1)).isoformat()
    return {"start": _instant(start), "end": end}


def _instant(value: str | datetime) -> str:
    """An ISO timestamp in UTC (a naive one is read as UTC, as the CLI reads its options)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


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
