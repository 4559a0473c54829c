"""The production warehouse: the Postgres database that ``postgres_url`` names.

The same layout as the local DuckDB file, so that dbt's sources read alike in both profiles:
schema ``raw`` with tables ``users`` and ``items`` keyed by their ids (re-ingesting updates a
row, never duplicates it) and a view ``raw.events`` over the event log's table
(``public.events``, written by ``recloop.eventlog.postgres``). dbt builds its schemas
(staging, intermediate, marts, feast) beside it. The database is created when missing and set
to UTC, so that dbt's ``date_trunc('hour', ts)`` and Feast's timestamps mean UTC whatever the
server's default time zone.

Other tenants of the same server keep their own namespaces: MLflow the schema ``mlflow`` and
Feast's registry the schema ``feast_registry`` (``search_path`` set in their URLs), Airflow
its own database.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from recloop.contracts import Item, User, postgres_columns, to_record
from recloop.settings import Settings

# The raw layer both warehouses share (recloop.warehouse imports it): schema, tables, keys.
RAW_SCHEMA = "raw"
TABLES: dict[str, Any] = {"users": User, "items": Item}
KEYS = {"users": "user_id", "items": "item_id"}
#: Schemas the production profile's other tenants keep their tables in (see the docstring).
TENANT_SCHEMAS = ("mlflow", "feast_registry")


class WarehouseUnavailable(RuntimeError):
    pass


def _connect_url(url: str, **options: Any):
    import psycopg

    try:
        return psycopg.connect(url, **options)
    except psycopg.OperationalError as error:
        raise WarehouseUnavailable(f"cannot connect to the production warehouse: {error}") from None


def database_url(settings: Settings, database: str, driver: str = "") -> str:
    """``postgres_url`` with another database on the same server (same user and options), and
    a SQLAlchemy driver when given (``psycopg``)."""
    url = urlsplit(settings.postgres_url.get_secret_value())
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return urlunsplit(url._replace(scheme=scheme, path=f"/{database}"))


def create_database(settings: Settings, database: str) -> bool:
    """Create ``database`` on the server of ``postgres_url`` unless it exists (through the
    server's ``postgres`` database); True when it was created."""
    import psycopg
    from psycopg import sql

    with _connect_url(database_url(settings, "postgres"), autocommit=True) as con:
        if con.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            return False
        try:
            con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except psycopg.errors.DuplicateDatabase:  # created meanwhile by another process
            return False
        return True


def ensure_database(settings: Settings) -> None:
    """Create the settings' database when missing, and make UTC its time zone when it is not
    yet."""
    from psycopg import sql

    database = settings.postgres_connection().database
    create_database(settings, database)
    with _connect_url(settings.postgres_url.get_secret_value(), autocommit=True) as con:
        # Sessions that do not set it themselves (dbt's, Feast's) take the database's default.
        if con.execute("SHOW TimeZone").fetchone()[0] not in ("UTC", "Etc/UTC"):
            con.execute(
                sql.SQL("ALTER DATABASE {} SET timezone TO 'UTC'").format(sql.Identifier(database))
            )


def ensure_schema(settings: Settings, schema: str) -> None:
    """One tenant's schema (Feast's registry, MLflow), which may be needed before ``recloop
    init`` ran: their tables cannot be created in a schema that is missing."""
    if schema not in TENANT_SCHEMAS:
        raise ValueError(f"schema: {schema!r} is not one of {', '.join(TENANT_SCHEMAS)}")
    with connect(settings) as con:
        # Looked up first: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even when the
        # schema exists, which a serving role need not have.
        if not con.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone():
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")


def connect(settings: Settings):
    """A psycopg connection to the warehouse, in UTC."""
    con = _connect_url(settings.postgres_url.get_secret_value())
    con.execute("SET TimeZone = 'UTC'")
    return con


def init_warehouse(settings: Settings) -> None:
    """Create the database, the event log's table, the raw schema and tables (idempotent)."""
    from recloop.eventlog.postgres import PostgresEventLog

    settings.ensure_home()  # dbt's target, Feast's config and model folders still live there
    ensure_database(settings)
    with PostgresEventLog(settings.postgres_url.get_secret_value()) as log:
        events_table = log.table
    with connect(settings) as con, con.transaction():
        for schema in (RAW_SCHEMA, *TENANT_SCHEMAS):
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for table, contract in TABLES.items():
            columns = ", ".join(
                f"{name} {kind}" for name, kind in postgres_columns(contract).items()
            )
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {RAW_SCHEMA}.{table} "
                f"({columns}, PRIMARY KEY ({KEYS[table]}))"
            )
        con.execute(f"CREATE OR REPLACE VIEW {RAW_SCHEMA}.events AS SELECT * FROM {events_table}")


def upsert(settings: Settings, table: str, rows: Sequence[Any]) -> int:
    """Insert or update contract rows by key; returns the number of rows written."""
    if not rows:
        return 0
    names = list(TABLES[table].model_fields)
    key = KEYS[table]
    updates = ", ".join(f"{name} = excluded.{name}" for name in names if name != key)
    statement = (
        f"INSERT INTO {RAW_SCHEMA}.{table} ({', '.join(names)}) "
        f"VALUES ({', '.join(['%s'] * len(names))}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )
    records = [to_record(row) for row in rows]
    with connect(settings) as con, con.transaction(), con.cursor() as cursor:
        cursor.executemany(statement, [[record[name] for name in names] for record in records])
    return len(rows)


_PLACEHOLDER = re.compile(r"\$([A-Za-z_]\w*)")


def read_frame(
    settings: Settings, query: str, params: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """The rows of a query as a DataFrame. Placeholders are written ``$name``, as DuckDB
    reads them, so one query text serves both profiles."""
    with connect(settings) as con, con.cursor() as cursor:
        cursor.execute(_PLACEHOLDER.sub(r"%(\1)s", query), dict(params or {}))
        columns = [column.name for column in cursor.description or []]
        return pd.DataFrame(cursor.fetchall(), columns=columns)


def fetchall(settings: Settings, query: str) -> list[tuple[Any, ...]]:
    with connect(settings) as con:
        return con.execute(query).fetchall()
