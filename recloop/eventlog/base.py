"""The event log interface every backend implements, and its errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pyarrow as pa

from recloop.contracts import Event, FieldError, Rejection


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
    either appended whole or not at all. Events whose ``event_id`` is already logged with the
    same content (``CONTENT_FIELDS``) are counted as duplicates and not written again. An
    ``event_id`` already logged (or being logged by a concurrent append, or earlier in the
    same batch) with other content is a client's bug, not a retry: the batch is refused whole
    with ``InvalidEvents`` naming the row and ``event_id``, rather than acknowledged as a
    duplicate while its payload is dropped.
    """

    def append(self, events: Iterable[Event | Mapping[str, Any]]) -> AppendResult: ...

    def read(self, start: datetime | None = None, end: datetime | None = None) -> pa.Table:
        """Events with ``start <= ts < end`` (bounds optional), sorted by ts and event_id."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> EventLog: ...

    def __exit__(self, *exc: object) -> None: ...


# What an event means, compared when its event_id is seen again. A retry must repeat these; a
# payment API's idempotency key works the same way (same key, other request: an error).
# Not compared:
# - logged_at: the log's own arrival time, different on every try by construction.
# - propensity, slot_propensities, model_version, policy: how the logging policy came to
#   show the item, not what happened. Clients' feedback never carries them, and impressions
#   are logged only by the service, under fresh random ids.
# - context: free-form request metadata (device, hour, a client's "sent_at" or retry
#   counter) that an honest retry may legitimately change; comparing it would turn retries
#   into errors, and comparing JSON exactly needs a canonical form that jsonb does not keep.
CONTENT_FIELDS = ("event_type", "user_id", "item_id", "ts", "value", "request_id", "position")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def utc_micros(ts: datetime) -> int:
    """``ts`` (time zone aware) as integer microseconds since the Unix epoch, exactly."""
    return (ts - EPOCH) // _MICROSECOND


def event_content(event: Event) -> tuple:
    """An event's ``CONTENT_FIELDS`` normalised as a stored row reads back: the type as its
    string, ts as UTC microseconds, value as a float or None. Equal tuples, same meaning."""
    value = event.value
    return (
        str(event.event_type),  # a StrEnum: its value
        event.user_id,
        event.item_id,
        utc_micros(event.ts),
        None if value is None else float(value),
        event.request_id,
        event.position,
    )


def stored_content(
    event_type: str,
    user_id: str,
    item_id: str,
    ts: datetime | int,
    value: float | None,
    request_id: str | None,
    position: int | None,
) -> tuple:
    """``event_content`` of a stored row (ts as a datetime, or as microseconds already)."""
    return (
        event_type,
        user_id,
        item_id,
        ts if isinstance(ts, int) else utc_micros(ts),
        None if value is None else float(value),
        request_id,
        position,
    )


def differing_fields(first: tuple, second: tuple) -> str:
    """The content fields two contents disagree on, as "(event_type, item_id differ)"."""
    names = [name for name, a, b in zip(CONTENT_FIELDS, first, second, strict=True) if a != b]
    return f"({', '.join(names)} {'differs' if len(names) == 1 else 'differ'})"


def conflict(index: int, event: Event, reason: str) -> Rejection:
    """A rejection of row ``index`` at ``event_id`` (the API turns it into a 422)."""
    return Rejection(index, event.model_dump(mode="json"), (FieldError("event_id", reason),))


def batch_conflicts(events: Sequence[Event], contents: Sequence[tuple]) -> dict[int, Rejection]:
    """Rows that repeat an earlier row's event_id with other content, by index."""
    first: dict[int, int] = {}
    found = {}
    for index, event in enumerate(events):
        earlier = first.setdefault(event.event_id.int, index)
        if earlier != index and contents[earlier] != contents[index]:
            found[index] = repeat_conflict(index, earlier, event, contents)
    return found


def repeat_conflict(index: int, earlier: int, event: Event, contents: Sequence[tuple]) -> Rejection:
    """Row ``index`` repeats row ``earlier``'s event_id with other content."""
    detail = differing_fields(contents[earlier], contents[index])
    return conflict(index, event, f"repeats row {earlier}'s event_id with other content {detail}")


def logged_conflict(
    index: int, event: Event, content: tuple, logged: tuple | None, where: str = "already logged"
) -> Rejection:
    """Row ``index`` reuses an event_id logged (``where``) with other content, ``logged``
    when known."""
    detail = "" if logged is None else " " + differing_fields(logged, content)
    return conflict(index, event, f"{where} with other content{detail}")


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
