"""Reading the dbt exports (``dbt_project/models/feast/feast_*``) outside Feast.

An export is a Parquet file under the home's features folder in the local profile, and a
relation in Postgres's ``feast`` schema in production. Training reads ``feast_interactions``,
the service its catalogue (``feast_items``) and the drift monitor ``feast_user_attributes``;
none of them through the local DuckDB warehouse, whose file lock a running dbt may hold. (In
production the read goes through ``recloop.postgres_warehouse`` alone: the serving image
carries no DuckDB warehouse code.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recloop.settings import Settings


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

    if not Path(where).exists():
        raise ExportMissing(f"{where} does not exist")
    with duckdb.connect() as con:
        return con.execute(query.format(relation=f"read_parquet('{where}')")).df()
