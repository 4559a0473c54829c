"""The warehouse that ingest lands raw users and items in, and that dbt reads.

``local``: a DuckDB file under the settings' home, schema ``raw``, tables ``users`` and
``items`` keyed by their ids (re-ingesting replaces a row, never duplicates it), and a view
``raw.events`` over the event log's sealed files. DuckDB admits one writing process per file:
only ingest and dbt write it, the serving process never does.

The production profile's warehouse is Postgres (``recloop.postgres_warehouse``, the same
schemas and tables). ``init_warehouse``, ``upsert``, ``read_frame`` and ``summary`` serve both
profiles; ``connect`` and the view refreshes are the local file's own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import duckdb

from recloop.contracts import duckdb_columns, to_table
from recloop.eventlog.local import events_sql
from recloop.postgres_warehouse import KEYS, RAW_SCHEMA, TABLES, WarehouseUnavailable
from recloop.settings import Settings

__all__ = [
    "KEYS", "RAW_SCHEMA", "TABLES", "WarehouseUnavailable",
    "connect", "init_warehouse", "read_frame", "summary", "upsert",
]  # fmt: skip


def connect(
    settings: Settings, *, read_only: bool = False, wait_seconds: float = 0.0
) -> duckdb.DuckDBPyConnection:
    """A connection to the local warehouse. ``wait_seconds``: how long to keep trying while
    another process writes it (a reader in another DAG waits for dbt to finish instead of
    failing its task); the error after that names the holder."""
    if settings.profile != "local":
        raise WarehouseUnavailable(
            "warehouse.connect opens the local DuckDB file; the production profile's warehouse "
            "is Postgres: use read_frame, or recloop.postgres_warehouse.connect"
        )
    if read_only and not settings.warehouse_path.exists():
        raise WarehouseUnavailable(
            f"no warehouse at {settings.warehouse_path}: run `recloop init` and ingest first"
        )
    settings.ensure_home()
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            con = duckdb.connect(str(settings.warehouse_path), read_only=read_only)
            break
        except duckdb.IOException as error:
            if time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            detail = str(error).split(". See also")[0]
            raise WarehouseUnavailable(
                f"warehouse {settings.warehouse_path} cannot be opened: {detail} "
                "(DuckDB admits one writing process per file; wait for it to finish)"
            ) from None
    con.execute("SET TimeZone = 'UTC'")
    return con


def init_warehouse(settings: Settings) -> None:
    """Create the raw schema and tables (idempotent)."""
    if settings.profile == "production":
        from recloop import postgres_warehouse

        postgres_warehouse.init_warehouse(settings)
        return
    with connect(settings, wait_seconds=300) as con:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {RAW_SCHEMA}")
        for table, contract in TABLES.items():
            columns = ", ".join(f"{name} {kind}" for name, kind in duckdb_columns(contract).items())
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {RAW_SCHEMA}.{table} "
                f"({columns}, PRIMARY KEY ({KEYS[table]}))"
            )
        refresh_events_view(con, settings)
        refresh_monitoring_views(con, settings)


def refresh_monitoring_views(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Views ``monitoring.<table>`` over the hourly Parquet files the metrics DAG writes
    (``monitoring.store``), for tables that have any; hours may differ in columns."""
    from monitoring.store import TABLES, glob

    con.execute("CREATE SCHEMA IF NOT EXISTS monitoring")
    for table in TABLES:
        if any((settings.monitoring_dir / table).glob("hour=*.parquet")):
            pattern = glob(settings, table).replace("'", "''")
            con.execute(
                f"CREATE OR REPLACE VIEW monitoring.{table} AS SELECT * FROM "
                f"read_parquet('{pattern}', union_by_name = true)"
            )


def refresh_events_view(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    # read_json's glob is expanded at query time, so once the log has a sealed segment the view
    # sees every later one. Before that it must be an empty typed relation (read_json fails on
    # a glob that matches nothing), hence re-creating it after writes and before dbt runs.
    source = events_sql(settings.events_dir)
    con.execute(f"CREATE OR REPLACE VIEW {RAW_SCHEMA}.events AS SELECT * FROM {source}")


def upsert(settings: Settings, table: str, rows: Sequence[Any]) -> int:
    """Insert or replace contract rows by key; returns the number of rows written."""
    if not rows:
        return 0
    if settings.profile == "production":
        from recloop import postgres_warehouse

        return postgres_warehouse.upsert(settings, table, rows)
    batch = to_table(TABLES[table], rows)
    with connect(settings) as con:
        con.register("batch", batch)
        con.execute(f"INSERT OR REPLACE INTO {RAW_SCHEMA}.{table} SELECT * FROM batch")
        con.unregister("batch")
    return len(rows)


def read_frame(
    settings: Settings, query: str, params: dict[str, Any] | None = None, *, wait_seconds: float = 0
) -> Any:
    """The rows of a query over the profile's warehouse, as a pandas DataFrame.

    Placeholders are written ``$name`` (DuckDB's syntax; the Postgres backend translates them),
    so one query text serves both profiles. ``wait_seconds``: see ``connect``.
    """
    if settings.profile == "production":
        from recloop import postgres_warehouse

        return postgres_warehouse.read_frame(settings, query, params)
    with connect(settings, read_only=True, wait_seconds=wait_seconds) as con:
        return con.execute(query, params or {}).df()


def summary(settings: Settings) -> dict[str, Any]:
    """Counts and a few telling figures of what the warehouse and event log hold."""
    if settings.profile == "production":
        from recloop import postgres_warehouse

        init_warehouse(settings)
        return _summary(lambda query: postgres_warehouse.fetchall(settings, query))
    with connect(settings) as con:
        refresh_events_view(con, settings)
        return _summary(lambda query: con.execute(query).fetchall())


def _summary(fetchall: Any) -> dict[str, Any]:
    # Plain SQL that DuckDB and Postgres read alike.
    counts = {
        table: fetchall(f"SELECT count(*) FROM {RAW_SCHEMA}.{table}")[0][0] for table in TABLES
    }
    by_type = dict(
        fetchall(f"SELECT event_type, count(*) FROM {RAW_SCHEMA}.events GROUP BY 1 ORDER BY 1")
    )
    span = fetchall(f"SELECT min(ts), max(ts) FROM {RAW_SCHEMA}.events")[0]
    # Click-through by slot, for logs that have impressions: position bias at a glance.
    ctr_by_position = fetchall(
        f"""
        WITH impressions AS (
            SELECT request_id, item_id, position FROM {RAW_SCHEMA}.events
            WHERE event_type = 'impression'
        ),
        clicks AS (
            SELECT DISTINCT request_id, item_id FROM {RAW_SCHEMA}.events
            WHERE event_type = 'click'
        )
        SELECT impressions.position, count(*) AS shown, count(clicks.item_id) AS clicked
        FROM impressions LEFT JOIN clicks USING (request_id, item_id)
        GROUP BY 1 ORDER BY 1
        """
    )
    top_items = fetchall(
        f"""
        SELECT items.item_id, items.title, count(*) AS interactions
        FROM {RAW_SCHEMA}.events AS events JOIN {RAW_SCHEMA}.items AS items USING (item_id)
        WHERE events.event_type IN ('click', 'rating')
        GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT 5
        """
    )
    return {
        "users": counts["users"],
        "items": counts["items"],
        "events": sum(by_type.values()),
        "events_by_type": by_type,
        "first_event_at": span[0].isoformat() if span[0] else None,
        "last_event_at": span[1].isoformat() if span[1] else None,
        "ctr_by_position": [
            {"position": p, "shown": s, "clicked": c, "ctr": c / s} for p, s, c in ctr_by_position
        ],
        "top_items": [{"item_id": i, "title": t, "interactions": n} for i, t, n in top_items],
    }
