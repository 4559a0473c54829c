"""The Feast feature store, configured from the settings.

``feature_store.yaml`` is rendered per profile into ``<home>/feast/`` (local: DuckDB offline
store over the dbt Parquet exports, SQLite online store, file registry; production: SQL
registry on Postgres, Redis online store, Postgres offline store). The declarations in
``feature_repo/`` name their files by bare file name; ``definitions`` resolves those against
the settings' features folder, so no path is written twice and importing the repo reads no
settings.
"""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from recloop.settings import Settings, write_rendered_config

log = logging.getLogger(__name__)

PROJECT = "recloop"
#: The dbt schema of the relations Feast reads in production (dbt_project.yml: models/feast).
FEAST_SCHEMA = "feast"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def feast_dir(settings: Settings) -> Path:
    return settings.home / "feast"


# materialize() commits each view's state MATERIALIZING to the registry while it writes, and
# by default every other process then refuses to read that view, online or historical: the
# hourly features run made a concurrent training task (and could make the service) fail. With
# this, readers keep the last materialised values meanwhile, on the file registry as on the
# SQL one (Feast warns that it "typically has no effect" on a file registry: it does, since
# the state is committed to the file every process reads, as test_feast_store shows).
SERVE_WHILE_MATERIALIZING = {"serve_features_while_materializing": True}


class _FileRegistryWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "`serve_features_while_materializing` is enabled but" not in record.getMessage()


logging.getLogger("feast.repo_config").addFilter(_FileRegistryWarning())


def config(settings: Settings) -> dict[str, Any]:
    """The feature_store.yaml content for the settings' profile."""
    if settings.profile == "local":
        return {
            "project": PROJECT,
            "provider": "local",
            "registry": {
                "registry_type": "file",
                "path": str(feast_dir(settings) / "registry.db"),
                **SERVE_WHILE_MATERIALIZING,
            },
            "offline_store": {"type": "duckdb"},
            "online_store": {"type": "sqlite", "path": str(feast_dir(settings) / "online.db")},
            "entity_key_serialization_version": 3,
        }
    postgres = settings.postgres_connection()
    redis = urlsplit(settings.redis_url.get_secret_value())
    redis_options = [f"db={redis.path.lstrip('/')}"] if redis.path.lstrip("/") else []
    if redis.password:
        redis_options.append(f"password={redis.password}")
    if redis.scheme == "rediss":
        redis_options.append("ssl=true")
    return {
        "project": PROJECT,
        "provider": "local",
        # Feast's SQL registry on SQLite is broken upstream (feast#5565); on Postgres it works.
        # Its tables live in their own schema (recloop.postgres_warehouse.TENANT_SCHEMAS).
        "registry": {"registry_type": "sql", "path": settings.sqlalchemy_url("feast_registry"),
                     "cache_ttl_seconds": 60, **SERVE_WHILE_MATERIALIZING},
        "offline_store": {
            "type": "postgres", "host": postgres.host, "port": postgres.port,
            "database": postgres.database, "user": postgres.user,
            "password": postgres.password, "db_schema": FEAST_SCHEMA,
            "sslmode": postgres.sslmode,
        },
        "online_store": {
            "type": "redis",
            "connection_string": ",".join(
                [f"{redis.hostname}:{redis.port or 6379}", *redis_options]
            ),
        },
        "entity_key_serialization_version": 3,
    }  # fmt: skip


def render_config(settings: Settings) -> Path:
    """Write ``<home>/feast/feature_store.yaml`` (owner-only: it may hold a password)."""
    return write_rendered_config(feast_dir(settings) / "feature_store.yaml", config(settings))


def open_store(settings: Settings):
    from feast import FeatureStore

    path = render_config(settings)
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    if settings.profile == "production":
        from recloop.postgres_warehouse import ensure_schema

        ensure_schema(settings, "feast_registry")
    return FeatureStore(repo_path=str(settings.features_dir), fs_yaml_file=path)


def definitions(settings: Settings) -> list[Any]:
    """Every object of feature_repo/, with its file sources resolved for the profile.

    ``local``: into the features folder, where dbt-duckdb writes the Parquet exports.
    ``production``: each file source becomes a Postgres source of the same name over the dbt
    relation named as the file (``feast_user_features.parquet`` -> ``feast.feast_user_features``),
    so the declarations are written once for both profiles.
    """
    from feast import FileSource

    from feature_repo import data_sources, entities, feature_services, feature_views

    declared = [
        entities.user, entities.item,
        data_sources.user_features_source, data_sources.item_features_source,
        data_sources.user_activity_push,
        feature_views.user_features, feature_views.item_features,
        feature_views.user_recent_activity,
        feature_services.training, feature_services.serving,
    ]  # fmt: skip
    # One deep copy of the whole list, so that a view and its source stay the same object.
    resolved = copy.deepcopy(declared)
    swapped: dict[int, Any] = {}

    def resolve(source: Any) -> Any:
        if not isinstance(source, FileSource):
            return source
        if id(source) not in swapped:
            if settings.profile == "production":
                swapped[id(source)] = _postgres_source(source)
            else:
                source.file_options.uri = str(settings.features_dir / Path(source.path).name)
                swapped[id(source)] = source
        return swapped[id(source)]

    for index, thing in enumerate(resolved):
        resolved[index] = thing = resolve(thing)
        for attribute in ("batch_source", "data_source"):
            if getattr(thing, attribute, None) is not None:
                setattr(thing, attribute, resolve(getattr(thing, attribute)))
        stream = getattr(thing, "stream_source", None)
        if stream is not None and getattr(stream, "batch_source", None) is not None:
            stream.batch_source = resolve(stream.batch_source)
    return resolved


def _postgres_source(source: Any) -> Any:
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
        PostgreSQLSource,
    )

    return PostgreSQLSource(
        name=source.name,
        table=f"{FEAST_SCHEMA}.{Path(source.path).stem}",
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column,
        field_mapping=source.field_mapping,
        description=source.description,
        tags=source.tags,
        owner=source.owner,
    )


def apply(settings: Settings) -> None:
    """Register every definition (idempotent)."""
    open_store(settings).apply(definitions(settings))


#: The views loaded from the dbt exports (the push view is written by the service).
BATCH_VIEWS = ("user_features", "item_features")


def materialize(
    settings: Settings, start: datetime | None, end: datetime, recomputed_hours: float = 0.0
) -> None:
    """Load the batch views' latest values with start < observed_at <= end into the online store.

    Without a start, from the beginning (a backfill). Not Feast's materialize_incremental: with
    no earlier run it starts at the wall clock less the TTL, which silently loads nothing for a
    backfill of older data; the interval is what decides what is loaded.

    Never from before the end of what was already loaded (``published_until``): Feast writes
    each entity's latest row *in the interval*, and the SQLite online store (local profile)
    replaces a row whatever its timestamp (Redis keeps the newer), so rerunning an earlier
    interval (clearing an old DAG run, ``recloop features run`` without ``--start``) rolled an
    entity changed since back to its older values. Rows up to that end were loaded by the
    runs that got there; an interval that ends there or before loads nothing.

    An interval that reaches past that end loads from ``recomputed_hours`` before its end at
    the latest (the pipeline passes dbt's ``late_arrival_hours``): dbt recomputes the change
    points of that span when late events arrive, and an entity whose newest row was
    recomputed would otherwise keep the old value online until its next change. This cannot
    roll anything back: the span reaches the newest rows, and each entity's latest row in it
    is its latest of all. (Redis skips a row whose timestamp equals the stored one's, so in
    production a recomputed row keeps its old values online when its ``observed_at`` is the
    one already there; SQLite replaces it.)
    """
    feature_store = open_store(settings)
    loaded = published_until(settings, feature_store)
    if loaded is not None:
        if loaded >= end:
            log.info("the online store already holds the batch views up to %s: nothing of "
                     "(%s, %s] is newer", loaded.isoformat(), start, end.isoformat())  # fmt: skip
            return
        start = max(start, loaded) if start is not None else loaded
        start = min(start, end - timedelta(hours=recomputed_hours))
    feature_store.materialize(
        start_date=start or EPOCH, end_date=end, feature_views=list(BATCH_VIEWS)
    )


def materialization_intervals(
    settings: Settings, feature_store: Any = None
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Each batch view's materialised intervals, as Feast's registry records them (empty
    before the view was applied or loaded)."""
    from feast.errors import FeatureViewNotFoundException

    feature_store = feature_store or open_store(settings)
    intervals: dict[str, list[tuple[datetime, datetime]]] = {}
    for name in BATCH_VIEWS:
        try:
            view = feature_store.get_feature_view(name)
        except FeatureViewNotFoundException:
            intervals[name] = []
            continue
        intervals[name] = [
            (start.astimezone(UTC), end.astimezone(UTC))
            for start, end in view.materialization_intervals
        ]
    return intervals


def published_until(settings: Settings, feature_store: Any = None) -> datetime | None:
    """The end of the newest interval loaded into the online store for every batch view
    (None: some view was never loaded). A features run publishes only after its gate passed,
    so this is where the next run starts (``recloop.features.tasks.interval``)."""
    ends = [max((end for _, end in spans), default=None)
            for spans in materialization_intervals(settings, feature_store).values()]  # fmt: skip
    return None if any(end is None for end in ends) else min(ends)


def has_materialized(settings: Settings) -> bool:
    """Whether the batch views were ever loaded into the online store (else: backfill)."""
    return published_until(settings) is not None
