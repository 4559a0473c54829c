"""The production event log: one Postgres table, idempotent through its primary key.

Durability is Postgres's: a transaction is acknowledged only after its WAL record is flushed
(``synchronous_commit`` on, the default), so ``append`` returns after the commit. Unlike the
local backend it admits any number of writer processes: uniqueness of ``event_id`` is the
table's constraint, not an in-memory set.

Same id, other content: the rows the INSERT skipped (``ON CONFLICT DO NOTHING``) are read
back in the same transaction and compared on ``base.CONTENT_FIELDS``; any that differs rolls
the whole batch back and raises ``InvalidEvents`` at ``event_id`` (a retry with the same
content stays a duplicate). A concurrent transaction inserting the same id holds the INSERT
until it ends, so the read-back sees its committed row: the check holds across writer
processes too. Repeats within the batch are compared before anything is sent.

Each thread gets a connection of its own: the service appends feedback from BentoML's thread
pool and impressions from a writer thread at once, and two transactions on one shared
connection interleave (psycopg: "transaction rollback at the wrong nesting level"; found by
the production serving benchmark, whose feedback load failed). Separate connections also let
Postgres commit concurrent appends together.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa

from recloop.contracts import LOGGED_AT, Event, validate_rows
from recloop.eventlog.base import (
    CONTENT_FIELDS,
    AppendResult,
    EventLogError,
    InvalidEvents,
    batch_conflicts,
    event_content,
    logged_conflict,
    stored_content,
    ts_filter,
)

DEFAULT_TABLE = "events"

_POSTGRES_TYPES = {
    "event_id": "uuid PRIMARY KEY",
    "ts": "timestamptz NOT NULL",
    "user_id": "text NOT NULL",
    "item_id": "text NOT NULL",
    "event_type": "text NOT NULL",
    "value": "double precision",
    "request_id": "text",
    "position": "integer",
    "propensity": "double precision",
    "slot_propensities": "double precision[]",
    "model_version": "text",
    "policy": "text",
    "context": "jsonb NOT NULL DEFAULT '{}'::jsonb",
}

# Added to the contract after the first release; an older table gets them on first use.
_ADDED_COLUMNS = ("slot_propensities",)


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"table: {name!r} is not a plain SQL identifier")
    return name


class PostgresEventLog:
    """Event log in a Postgres table (created on first use)."""

    def __init__(self, url: str, *, table: str = DEFAULT_TABLE, schema: str = "public"):

        self.table = f"{_identifier(schema)}.{_identifier(table)}"
        missing = set(Event.model_fields) - set(_POSTGRES_TYPES)
        if missing:  # the contract grew: this table definition must grow with it
            raise EventLogError(f"no Postgres column type for {sorted(missing)}")
        self._url = url
        self._local = threading.local()  # this thread's connection
        self._connections: list[Any] = []  # every thread's, to close
        self._lock = threading.Lock()
        conn = self._connection()
        columns = ", ".join(f"{name} {kind}" for name, kind in _POSTGRES_TYPES.items())
        with conn.transaction():
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_identifier(schema)}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ({columns}, "
                f"{LOGGED_AT} timestamptz NOT NULL DEFAULT now())"
            )
            # Columns the contract gained after the table was made (NULL in older rows).
            for name in _ADDED_COLUMNS:
                conn.execute(
                    f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS {name} "
                    f"{_POSTGRES_TYPES[name]}"
                )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {_identifier(table)}_ts_idx ON {self.table} (ts)"
            )

    def _connection(self):
        """The calling thread's connection, opened on its first use."""
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(self._url, autocommit=False)
            except psycopg.OperationalError as error:
                raise EventLogError(f"cannot connect to the event log database: {error}") from None
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def append(self, events: Iterable[Event | Mapping[str, Any]]) -> AppendResult:
        checked = validate_rows(Event, events)
        if checked.rejected:
            raise InvalidEvents(checked.rejected)
        batch: list[Event] = checked.valid
        contents = [event_content(event) for event in batch]
        rejected = batch_conflicts(batch, contents)
        if rejected:
            raise InvalidEvents(list(rejected.values()))
        rows = [
            (
                event.event_id,
                event.ts,
                event.user_id,
                event.item_id,
                event.event_type.value,
                event.value,
                event.request_id,
                event.position,
                event.propensity,
                event.slot_propensities,
                event.model_version,
                event.policy,
                json.dumps(event.context),
            )
            for event in batch
        ]
        if not rows:
            return AppendResult(0, 0)
        names = ", ".join(_POSTGRES_TYPES)
        placeholders = ", ".join(["%s"] * len(_POSTGRES_TYPES))
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {self.table} ({names}) VALUES ({placeholders}) "
                "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                rows,
                returning=True,
            )
            skipped: list[int] = []  # indices of the rows whose event_id was there already
            index = 0
            while True:  # one result per row, in order
                if not cursor.fetchall():
                    skipped.append(index)
                index += 1
                if not cursor.nextset():
                    break
            if skipped:
                # Raised inside the transaction: it rolls back, nothing of the batch stays.
                self._refuse_conflicts(cursor, batch, contents, skipped)
        return AppendResult(appended=len(rows) - len(skipped), duplicates=len(skipped))

    def _refuse_conflicts(
        self, cursor: Any, batch: list[Event], contents: list[tuple], skipped: list[int]
    ) -> None:
        """Raise ``InvalidEvents`` for the skipped rows whose stored event has other content
        (a skipped repeat of a row inserted by this batch reads that row: the same content)."""
        cursor.execute(
            f"SELECT event_id, {', '.join(CONTENT_FIELDS)} FROM {self.table} "
            "WHERE event_id = ANY(%s)",
            [list({batch[index].event_id for index in skipped})],
        )
        stored = {row[0]: stored_content(*row[1:]) for row in cursor.fetchall()}
        rejected = []
        for index in skipped:
            logged = stored.get(batch[index].event_id)
            if logged is not None and logged != contents[index]:
                rejected.append(logged_conflict(index, batch[index], contents[index], logged))
        if rejected:
            raise InvalidEvents(rejected)

    def read(self, start: datetime | None = None, end: datetime | None = None) -> pa.Table:
        """Events with ``start <= ts < end``, sorted by ts then event_id, as Arrow."""
        clause, params = ts_filter(start, end, "%s")
        columns = [*_POSTGRES_TYPES, LOGGED_AT]
        select = ", ".join(
            f"{name}::text" if name in ("event_id", "context") else name for name in columns
        )
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cursor:
            cursor.execute(
                f"SELECT {select} FROM {self.table} {clause} ORDER BY ts, event_id", params
            )
            rows = cursor.fetchall()
        return pa.Table.from_pylist([dict(zip(columns, row, strict=True)) for row in rows])

    def count(self, start: datetime | None = None, end: datetime | None = None) -> int:
        """How many events have ``start <= ts < end``."""
        clause, params = ts_filter(start, end, "%s")
        conn = self._connection()
        with conn.transaction():
            query = f"SELECT count(*) FROM {self.table} {clause}"
            return conn.execute(query, params).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def __enter__(self) -> PostgresEventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
