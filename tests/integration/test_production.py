"""The production profile for real: ingest into Postgres, dbt-postgres, the Great Expectations
gate over Postgres, Feast with its Postgres offline store, SQL registry and Redis online store,
and training registered in MLflow on Postgres, against the running Postgres and Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis

from recloop import postgres_warehouse, warehouse
from recloop.features import store
from recloop.features.gate import GateFailed
from recloop.features.pipeline import run_pipeline
from recloop.ingest import ingest_simulation
from recloop.settings import Settings
from recloop.sources.simulator import WorldConfig
from serving.launch import free_port, wait_ready
from tests.feature_reads import latest_rows, online
from tests.production import production_settings

pytestmark = [pytest.mark.production, pytest.mark.integration, pytest.mark.slow]

WORLD = WorldConfig(users=60, items=40, days=3, seed=21)
AS_OF = WORLD.start + timedelta(days=WORLD.days + 1)
KEY = "production-test-key"
COUNTED = ["staging.stg_events", "staging.quarantined_events", "marts.user_features",
           "marts.item_features", "marts.interactions"]  # fmt: skip


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    with production_settings(tmp_path_factory.mktemp("production") / "var") as settings:
        ingest_simulation(settings, WORLD)
        run_pipeline(settings, None, AS_OF, echo=False)
        yield settings


def counts(settings: Settings) -> dict[str, int]:
    return {
        relation: int(warehouse.read_frame(settings, f"SELECT count(*) AS n FROM {relation}").n[0])
        for relation in COUNTED
    }


def test_each_part_lives_in_postgres_or_redis(published: Settings) -> None:
    """Where the pipeline put things: the marts as Postgres tables, the views Feast reads and
    Feast's registry in their schemas, the online values in this test's Redis database.
    (test_feast_store.py checks the values themselves, on this profile too.)"""
    tables = warehouse.read_frame(
        published,
        "SELECT table_schema, count(*) AS n FROM information_schema.tables "
        "WHERE table_schema IN ('marts', 'feast', 'feast_registry') GROUP BY 1",
    )
    assert set(tables.table_schema) == {"marts", "feast", "feast_registry"}
    assert store.config(published)["online_store"]["type"] == "redis"
    assert redis.Redis.from_url(published.redis_url.get_secret_value()).dbsize() > 1
    user = latest_rows(published, "user_features", "user_id", AS_OF).iloc[0]
    values = online(published, [{"user_id": user.user_id, "item_id": "none"}])
    assert values["user_features__interactions_all_time"] == [user.interactions_all_time]


def test_a_rerun_of_the_same_interval_changes_nothing(published: Settings) -> None:
    before = counts(published)
    run_pipeline(published, None, AS_OF, echo=False)
    assert counts(published) == before
    assert before["staging.stg_events"] > 0 and before["staging.quarantined_events"] == 0


def test_training_registers_and_promotes_in_mlflow_on_postgres(published: Settings) -> None:
    from training import registry
    from training.pipeline import run_training

    report = run_training(published, kinds=["popularity", "ease"])
    assert report.decision["promote"], report.decision
    client = registry.configure(published)
    champion = client.get_model_version_by_alias(registry.MODEL_NAME, registry.CHAMPION)
    assert champion.tags["kind"] in {"popularity", "ease"}
    # MLflow's tables in their own schema of the warehouse database; artifacts under home.
    tables = warehouse.read_frame(
        published,
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'mlflow' "
        "AND table_name IN ('runs', 'model_versions', 'registered_model_aliases')",
    )
    assert int(tables.n[0]) == 3
    assert any((published.mlflow_dir / "artifacts").rglob("MLmodel"))


def test_two_service_workers_serve_from_redis_and_log_to_postgres(published) -> None:
    """The service in the production profile: the champion from MLflow on Postgres, fresh
    clicks through Feast's push source into Redis, impressions and feedback into the
    Postgres event log, from two worker processes (allowed only there)."""
    from training import registry

    champion = registry.configure(published).get_model_version_by_alias(
        registry.MODEL_NAME, registry.CHAMPION
    )
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RECLOOP_")},
        "RECLOOP_PROFILE": "production",
        "RECLOOP_HOME": str(published.home),
        "RECLOOP_POSTGRES_URL": published.postgres_url.get_secret_value(),
        "RECLOOP_REDIS_URL": published.redis_url.get_secret_value(),
        "RECLOOP_SERVING__API_KEYS": json.dumps([KEY]),
        "RECLOOP_SERVING__PORT": str(port),
        "RECLOOP_SERVING__WORKERS": "2",
    }
    log_path = published.home / "serve-production.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("recloop")), "serve"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            try:
                ready = wait_ready(url, process, timeout=240)
            except RuntimeError as error:
                raise AssertionError(f"{error}:\n{log_path.read_text()}") from None
            assert ready["models"]["champion"]["version"] == str(champion.version)
            # The catalogue comes from dbt's feast_items view on Postgres.
            counted = warehouse.read_frame(published, "SELECT count(*) AS n FROM marts.items")
            items = int(counted.n[0])
            assert ready["catalogue"]["error"] is None and ready["catalogue"]["items"] == items > 0
            with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30) as http:
                slates = [
                    http.post("/recommend", json={"user_id": f"u0000{n}", "k": 5}) for n in range(8)
                ]
                assert [response.status_code for response in slates] == [200] * 8
                new = http.post("/recommend", json={"user_id": "nobody", "k": 5}).json()
                top = new["items"][0]["item_id"]
                click = {"event_id": str(uuid.uuid4()), "ts": datetime.now(UTC).isoformat(),
                         "user_id": "nobody", "item_id": top, "event_type": "click"}  # fmt: skip
                ack = http.post("/feedback", json={"events": [click]}).json()
                assert ack == {"appended": 1, "duplicates": 0, "users_refreshed": 1}
                # Whichever worker answers, it reads the click back from Redis.
                for _ in range(4):
                    after = http.post("/recommend", json={"user_id": "nobody", "k": 5}).json()
                    assert after["served_by"] == "fresh_clicks", after
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    logged = warehouse.read_frame(
        published,
        "SELECT event_type, count(*) AS n FROM raw.events "
        "WHERE request_id = $request OR event_id = $click GROUP BY 1",
        {"request": slates[0].json()["request_id"], "click": click["event_id"]},
    )
    assert dict(zip(logged.event_type, logged.n, strict=True)) == {"impression": 5, "click": 1}

    # The metrics DAG's steps read the Postgres log and write the warehouse's monitoring tables.
    from monitoring import hourly, store

    end = datetime.now(UTC) + timedelta(minutes=1)
    summary = hourly.estimate(published, end - timedelta(hours=1), end)
    assert summary["champion_version"] == str(champion.version)
    hourly.decide(published, end - timedelta(hours=1), end)
    hourly.publish(published, end - timedelta(hours=1), end)
    metrics = store.read(published, "online_metrics")
    day = metrics[metrics.window == "day"]
    assert day.impressions.sum() == 5 * (8 + 1 + 4)  # every slate of the test, 5 items each
    assert (day.model_version == str(champion.version)).all()
    stored = warehouse.read_frame(published, "SELECT count(*) AS n FROM monitoring.decisions")
    assert int(stored.n[0]) == 1


def test_the_monitoring_tables_replace_an_hour_and_widen_columns(tmp_path) -> None:
    from monitoring import store

    with production_settings(tmp_path / "var") as settings:
        postgres_warehouse.init_warehouse(settings)
        first, second = (datetime(2026, 1, 1, h, tzinfo=UTC) for h in (10, 11))
        store.write(settings, "alarms", first, pd.DataFrame([{"kind": "degradation", "n": 3}]))
        store.write(settings, "alarms", second, pd.DataFrame([{"kind": "feature_drift"}]))
        assert list(store.read(settings, "alarms")["kind"]) == ["degradation", "feature_drift"]
        # A rerun of an hour that finds nothing clears that hour, and only that hour.
        store.write(settings, "alarms", second, pd.DataFrame())
        assert list(store.read(settings, "alarms")["kind"]) == ["degradation"]
        # A later hour's float where a count was: the column widens, nothing is rounded.
        store.write(
            settings, "alarms", second, pd.DataFrame([{"kind": "x", "n": 0.5, "at": first}])
        )
        rows = warehouse.read_frame(
            settings, "SELECT kind, n, at FROM monitoring.alarms ORDER BY kind"
        )
        assert list(rows.kind) == ["degradation", "x"] and list(rows.n) == [3.0, 0.5]
        assert store.read(settings, "alarms")["at"].iloc[1] == pd.Timestamp(first)
        with pytest.raises(ValueError, match="table: 'nope' is not one of"):
            store.read(settings, "nope")


def test_a_row_breaking_the_contract_stops_the_gate_and_is_quarantined(published) -> None:
    """Another writer puts a rating of 9 straight into the event table. dbt quarantines it with
    the reason, the gate fails naming the expectation, and Redis keeps its values."""
    user, item = "u00001", "i00001"
    before = online(published, [{"user_id": user, "item_id": item}])
    later = AS_OF + timedelta(hours=2)
    event_id = str(uuid.uuid4())
    with postgres_warehouse.connect(published) as con:
        con.execute(
            "INSERT INTO public.events (event_id, ts, user_id, item_id, event_type, value) "
            "VALUES (%s, %s, %s, %s, 'rating', 9)",
            [event_id, later - timedelta(minutes=30), user, item],
        )
    with pytest.raises(GateFailed, match=r"raw_events.*value"):
        run_pipeline(published, AS_OF, later, echo=False)
    quarantined = warehouse.read_frame(
        published,
        "SELECT rejection_reason FROM staging.quarantined_events WHERE event_id = $id",
        {"id": event_id},
    )
    assert list(quarantined.rejection_reason) == ["value: rating 9 is outside [0.5, 5]"]
    assert online(published, [{"user_id": user, "item_id": item}]) == before


def test_the_registries_create_their_schemas_before_init(tmp_path) -> None:
    """MLflow's and Feast's registries on a database that `recloop init` never saw: each
    creates its schema (their tables cannot be created in a missing one)."""
    import psycopg

    from training import registry

    with production_settings(tmp_path / "var") as settings:
        # A database made elsewhere, with a zone other than UTC: init's check must fix it.
        name = settings.postgres_connection().database
        server = settings.postgres_url.get_secret_value().rsplit("/", 1)[0]
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
            admin.execute(f"ALTER DATABASE \"{name}\" SET timezone TO 'America/New_York'")
        postgres_warehouse.ensure_database(settings)
        registry.configure(settings)
        store.apply(settings)
        schemas = warehouse.read_frame(
            settings,
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name IN ('experiments', 'feature_views') ORDER BY 1",
        )
        assert list(schemas.table_schema) == ["feast_registry", "mlflow"]
        # A session that sets no zone (dbt's, Feast's) gets UTC from the database.
        with psycopg.connect(settings.postgres_url.get_secret_value()) as con:
            assert con.execute("SHOW TimeZone").fetchone()[0] in ("UTC", "Etc/UTC")
