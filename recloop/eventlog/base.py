"""The event log interface every backend implements, and its errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa

from recloop.contracts import Event, Rejection


@dataclass(frozen=True)
class AppendResult:
    """What one append did: events written, and events skipped as already logged."""

    appended: int
    duplicates: int


class EventLogError(RuntimeError):
    """The event log could not do what was asked; nothing was acknowledged."""


class EventLogBusy(EventLogError):
    """Another process is writing this log (the local backend admits one writer process)."""


class InvalidEvents(EventLogError, ValueError):
    """A batch broke the event contract; none of it was appended."""

    def __init__(self, rejections: list[Rejection]):
        self.rejections = rejections
        shown = "; ".join(f"row {r.index}: {r.reason}" for r in rejections[:5])
        more = f" (and {len(rejections) - 5} more)" if len(rejections) > 5 else ""
        super().__init__(f"{len(rejections)} event(s) break the contract: {shown}{more}")


class EventLog(Protocol):
    """Append-only, durable, idempotent on ``event_id``.

    ``append`` returns only once the new events are durable; a batch is validated whole and
    either appended whole or not at all. Events whose ``event_id`` is already logged are
    counted as duplicates and not written again.
    """

    def append(self, events: Iterable[Event | Mapping[str, Any]]) -> AppendResult: ...

    def read(self, start: datetime | None = None, end: datetime | None = None) -> pa.Table:
        """Events with ``start <= ts < end`` (bounds optional), sorted by ts and event_id."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> EventLog: ...

    def __exit__(self, *exc: object) -> None: ...


def ts_filter(
    start: datetime | None, end: datetime | None, placeholder: str
) -> tuple[str, list[datetime]]:
    """``WHERE start <= ts < end`` (either bound may be missing) with the driver's
    ``placeholder`` (DuckDB ``?``, psycopg ``%s``), and its parameters."""
    where, params = [], []
    if start is not None:
        where.append(f"ts >= {placeholder}")
        params.append(start)
    if end is not None:
        where.append(f"ts < {placeholder}")
        params.append(end)
    return (f"WHERE {' AND '.join(where)}" if where else ""), params
