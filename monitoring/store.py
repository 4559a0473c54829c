"""Where hourly results live: warehouse tables ``monitoring.<table>``, one hour at a time.

Tables: ``online_metrics`` (monitoring.online), ``off_policy`` (monitoring.ope), ``alarms``
and ``decisions``. A rerun of an hour rewrites that hour (idempotent).

``local``: one Parquet file per table and hour under the monitoring folder, which the DuckDB
warehouse's views ``monitoring.*`` read (``recloop.warehouse.refresh_monitoring_views``, on
every features run); the metrics DAG writes no database file that dbt or the service holds,
so it never waits on a lock. ``production``: Postgres tables in the warehouse database,
shared by every worker (the cooldown check reads what any worker wrote); an hour is replaced
in one transaction, and a column a later hour brings is added to the table.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from recloop.settings import Settings

TABLES = ("online_metrics", "off_policy", "alarms", "decisions")


def hour_key(end: datetime) -> str:
    """What names an hour's rows (its end): to the minute for an hour that ends on the minute,
    as scheduled hours do; to the microsecond otherwise, so a demo's simulated hours, which
    end seconds apart, never share a key (the later would replace the earlier). Keys sort in
    time order either way. The key is the end's UTC clock reading: an hour given in another
    offset is the same hour, and must replace (never overwrite another hour's) rows."""
    if end.tzinfo is None:
        raise ValueError("end: must carry a time zone (UTC expected)")
    end = end.astimezone(UTC)
    if end.second == 0 and end.microsecond == 0:
        return end.strftime("%Y%m%dT%H%M")
    return end.strftime("%Y%m%dT%H%M%S%f")


def table_dir(settings: Settings, table: str) -> Path:
    if table not in TABLES:
        raise ValueError(f"table: {table!r} is not one of {', '.join(TABLES)}")
    return settings.monitoring_dir / table


def write(settings: Settings, table: str, end: datetime, frame: pd.DataFrame) -> Path:
    """Write one hour of a table (atomically: a reader sees the old hour or the new one).
    An empty frame removes the hour: a rerun that finds no alarm clears the old ones."""
    folder = table_dir(settings, table)
    if settings.profile == "production":
        _write_postgres(settings, table, hour_key(end), frame)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"hour={hour_key(end)}.parquet"
    if frame.empty:
        path.unlink(missing_ok=True)
        return path
    partial = path.with_suffix(".parquet.partial")
    frame.to_parquet(partial, index=False)
    os.replace(partial, path)
    return path


def read(settings: Settings, table: str) -> pd.DataFrame:
    """Every hour written so far, oldest first (an empty frame before the first)."""
    if settings.profile == "production":
        return _read_postgres(settings, table)
    files = sorted(table_dir(settings, table).glob("hour=*.parquet"))
    frames = [pd.read_parquet(path) for path in files]
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_all(settings: Settings) -> dict[str, pd.DataFrame]:
    """Every table, each read once (the dashboard and the MLflow run share them)."""
    return {table: read(settings, table) for table in TABLES}


def glob(settings: Settings, table: str) -> str:
    return str(table_dir(settings, table) / "hour=*.parquet")


# ---------------------------------------------------------------------------------------------
# Production: Postgres tables in the warehouse database

SCHEMA = "monitoring"
HOUR = "hour_key"  # which hour wrote the row (what a rerun replaces)
ORDER = "row_order"  # the row's place within its hour


def _postgres_type(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "boolean"
    if pd.api.types.is_integer_dtype(series):
        return "bigint"
    if pd.api.types.is_float_dtype(series):
        return "double precision"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "timestamptz"
    return "text"


def _plain(value: Any) -> Any:
    """A cell as psycopg takes it: None for missing, Python scalars, JSON text for containers."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    if value is None or (not hasattr(value, "__len__") and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value.item() if hasattr(value, "item") else value


def _write_postgres(settings: Settings, table: str, key: str, frame: pd.DataFrame) -> None:
    from psycopg import sql

    from recloop import postgres_warehouse

    relation = sql.Identifier(SCHEMA, table)
    with postgres_warehouse.connect(settings) as con, con.transaction():
        con.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        con.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({} text NOT NULL, {} integer NOT NULL)").format(
                relation, sql.Identifier(HOUR), sql.Identifier(ORDER)
            )
        )
        con.execute(
            sql.SQL("DELETE FROM {} WHERE {} = %s").format(relation, sql.Identifier(HOUR)), [key]
        )
        if frame.empty:
            return
        existing = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                [SCHEMA, table],
            ).fetchall()
        )
        for column in frame.columns:
            kind = _postgres_type(frame[column])
            if column not in existing:
                change = sql.SQL("ADD COLUMN {} {}")
            elif existing[column] == "bigint" and kind == "double precision":
                # An hour with a missing value turns counts into floats: widen, never round.
                change = sql.SQL("ALTER COLUMN {} TYPE {}")
            else:
                continue
            con.execute(
                sql.SQL("ALTER TABLE {} ").format(relation)
                + change.format(sql.Identifier(column), sql.SQL(kind))
            )
        names = [HOUR, ORDER, *frame.columns]
        insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            relation,
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() * len(names)),
        )
        rows = [
            [key, n, *(_plain(value) for value in row)]
            for n, row in enumerate(frame.itertuples(index=False, name=None))
        ]
        with con.cursor() as cursor:
            cursor.executemany(insert, rows)


def _read_postgres(settings: Settings, table: str) -> pd.DataFrame:
    from psycopg.errors import UndefinedTable

    from recloop import warehouse

    table_dir(settings, table)  # the same check of the table's name as the local files
    try:
        frame = warehouse.read_frame(
            settings, f"SELECT * FROM {SCHEMA}.{table} ORDER BY {HOUR}, {ORDER}"
        )
    except UndefinedTable:
        return pd.DataFrame()
    frame = frame.drop(columns=[HOUR, ORDER])
    for column in frame.columns:
        if frame[column].map(lambda value: isinstance(value, datetime)).any():
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame
