"""Reading the dbt exports (``dbt_project/models/feast/feast_*``) outside Feast.

An export is a Parquet file under the home's features folder in the local profile, and a
relation in Postgres's ``feast`` schema in production. Training reads ``feast_interactions``,
the service its catalogue (``feast_items``) and the drift monitor ``feast_user_attributes``;
none of them through the local DuckDB warehouse, whose file lock a running dbt may hold. (In
production the read goes through ``recloop.postgres_warehouse`` alone: the serving image
carries no DuckDB warehouse code.)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from recloop.settings import Settings

READ_ATTEMPTS = 4  # reads of a local export that the feature pipeline replaced mid-read


class ExportMissing(LookupError):
    """The feature pipeline has not written this export yet."""


def location(settings: Settings, name: str) -> str:
    """Where the export ``name`` is read from: its Parquet file, or its Postgres relation."""
    from recloop.features.store import FEAST_SCHEMA

    if settings.profile == "production":
        return f"{FEAST_SCHEMA}.{name}"
    return str(settings.features_dir / f"{name}.parquet")


def read_export(settings: Settings, name: str, query: str) -> Any:
    """The rows of ``query`` (``{relation}`` standing for the export) as a DataFrame. Raises
    ExportMissing, naming the location, before the feature pipeline has written it."""
    where = location(settings, name)
    if settings.profile == "production":
        from psycopg.errors import UndefinedTable

        from recloop import postgres_warehouse

        try:
            return postgres_warehouse.read_frame(settings, query.format(relation=where), None)
        except UndefinedTable:
            raise ExportMissing(f"{where} does not exist") from None
    import duckdb

    path = Path(where)
    if not path.exists():
        raise ExportMissing(f"{where} does not exist")
    # dbt rewrites the file while other processes read it (the next hour's features run
    # beside a training run): DuckDB writes a new file and renames it over the old one, and a
    # read that spans the rename can find the new file's bytes where the old footer pointed
    # ("TProtocolException: Invalid data", seen in the demo). A read that fails while the
    # file changed under it is repeated; one that fails on an unchanged file is an error.
    for attempt in range(READ_ATTEMPTS):
        before = _identity(path)
        try:
            with duckdb.connect() as con:
                return con.execute(query.format(relation=f"read_parquet('{where}')")).df()
        except duckdb.Error:
            if attempt + 1 == READ_ATTEMPTS or _identity(path) == before:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")  # the loop returns or raises


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Which file ``path`` is now (inode, size, mtime); None while it is being replaced."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
