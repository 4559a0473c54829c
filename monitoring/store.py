"""Where hourly results live: one Parquet file per table and hour under the monitoring folder.

Tables: ``online_metrics`` (monitoring.online), ``off_policy`` (monitoring.ope), ``alarms``
and ``decisions``. A rerun of an hour rewrites that hour's files (idempotent), and readers
(the dashboard, the cooldown check, the warehouse views ``monitoring.*`` that
``recloop.warehouse.refresh_monitoring_views`` declares over these files on every features
run) never wait on a lock: the metrics DAG writes no database file that dbt or the service
holds.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pandas as pd

from recloop.settings import Settings

TABLES = ("online_metrics", "off_policy", "alarms", "decisions")


def hour_key(end: datetime) -> str:
    return end.strftime("%Y%m%dT%H%M")


def table_dir(settings: Settings, table: str) -> Path:
    if table not in TABLES:
        raise ValueError(f"table: {table!r} is not one of {', '.join(TABLES)}")
    return settings.monitoring_dir / table


def write(settings: Settings, table: str, end: datetime, frame: pd.DataFrame) -> Path:
    """Write one hour of a table (atomically: a reader sees the old file or the new one).
    An empty frame removes the hour's file: a rerun that finds no alarm clears the old ones."""
    folder = table_dir(settings, table)
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
    files = sorted(table_dir(settings, table).glob("hour=*.parquet"))
    frames = [pd.read_parquet(path) for path in files]
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_all(settings: Settings) -> dict[str, pd.DataFrame]:
    """Every table, each read once (the dashboard and the MLflow run share them)."""
    return {table: read(settings, table) for table in TABLES}


def glob(settings: Settings, table: str) -> str:
    return str(table_dir(settings, table) / "hour=*.parquet")
