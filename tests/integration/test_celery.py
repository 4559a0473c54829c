"""Airflow's CeleryExecutor for scale-out: `recloop_features` through two Celery workers on the
running Redis (broker) and Postgres (metadata, result backend), and both workers run its tasks.

Each test has its own Airflow metadata database and its own Celery namespace (queue and broker
key prefix), both removed afterwards, so parallel or leftover runs never share a task. The tasks
run on recloop's production backends too (a Postgres database and a Redis database of the
test's own: tests/production.py), so the whole production profile runs here.

The features DAG is a chain of five tasks, so the two idle workers would compete for each one
and either might win them all. The test makes the split certain with Celery's remote control:
the worker that takes the first task is then unsubscribed from the queue (as
``airflow celery remove-queue`` would do it), and the rest of the run can only go to the other.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from recloop import warehouse
from recloop.airflow_local import AirflowError, LocalAirflow
from recloop.features import store
from recloop.ingest import ingest_simulation
from recloop.postgres_warehouse import database_url
from recloop.sources.simulator import WorldConfig
from serving.launch import free_port
from tests.production import postgres_admin, production_settings

DAG = "recloop_features"
TASKS = {"plan", "ingest_events", "dbt_build", "validate", "publish"}

pytestmark = [pytest.mark.production, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def namespace():
    """A fresh name for this test's Airflow metadata database and Celery namespace (its broker
    keys go with the test's Redis database); the database is dropped afterwards. Skips when
    Postgres is unreachable."""
    connection = postgres_admin()
    name = f"recloop_celery_{uuid.uuid4().hex[:12]}"
    yield name
    connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    connection.close()


def first_worker(airflow: LocalAirflow, timeout: float = 300.0) -> tuple[str, str]:
    """(run id, worker) of the scheduled run that unpausing starts, once a worker has taken
    one of its tasks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in airflow.runs(DAG):
            if run["run_type"] != "scheduled":
                continue
            if run["state"] == "failed":
                airflow.wait(DAG, run["dag_run_id"])  # raises, naming the failed tasks
            for task in airflow.task_instances(DAG, run["dag_run_id"]):
                if task["hostname"]:
                    return run["dag_run_id"], task["hostname"]
        time.sleep(0.5)
    raise AirflowError(f"no task of {DAG} started within {timeout:.0f} s")


def test_features_run_on_two_celery_workers(tmp_path: Path, namespace: str) -> None:
    import psycopg

    with production_settings(tmp_path / "var") as settings:
        ingest_simulation(settings, WorldConfig(users=80, items=50, days=3, seed=3))
        # What every task reads: the production profile on this test's databases.
        task_env = {
            "RECLOOP_PROFILE": "production",
            "RECLOOP_POSTGRES_URL": settings.postgres_url.get_secret_value(),
            "RECLOOP_REDIS_URL": settings.redis_url.get_secret_value(),
        }
        airflow = LocalAirflow(settings, free_port(), extra_env=task_env, workers=2,
                               database=namespace, namespace=namespace)  # fmt: skip
        assert airflow.executor == "celery"  # the production profile's default
        workers = airflow.worker_names
        try:
            airflow.start()
            airflow.wait_for_dags([DAG])
            airflow.wait_for_workers()
            airflow.unpause(DAG)  # runs the latest hourly interval at once
            run_id, first = first_worker(airflow)
            assert first in workers
            airflow.remove_queue(first)
            airflow.wait(DAG, run_id, timeout=420)
            tasks = airflow.task_instances(DAG, run_id)
        finally:
            airflow.stop()
        # The run published features to Feast's Redis online store: a user's latest values.
        latest = warehouse.read_frame(
            settings,
            "SELECT user_id, interactions_all_time FROM marts.user_features "
            "ORDER BY observed_at DESC, user_id LIMIT 1",
        )
        values = (
            store.open_store(settings)
            .get_online_features(
                features=["user_features:interactions_all_time"],
                entity_rows=[{"user_id": latest.user_id[0]}],
            )
            .to_dict()
        )
        assert values["interactions_all_time"] == [latest.interactions_all_time[0]]

    ran_on = {task["task_id"]: task["hostname"] for task in tasks}
    assert {task["task_id"]: task["state"] for task in tasks} == dict.fromkeys(TASKS, "success")
    assert set(ran_on.values()) == set(workers), ran_on
    # What the REST API showed is Airflow's metadata in Postgres, and each task went through
    # Celery with its result in the Postgres result backend.
    metadata = database_url(settings, namespace)
    with psycopg.connect(metadata, connect_timeout=10) as connection:
        recorded = dict(connection.execute(
            "SELECT task_id, hostname FROM task_instance WHERE dag_id = %s AND run_id = %s",
            [DAG, run_id],
        ).fetchall())  # fmt: skip
        results = connection.execute(
            "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'"
        ).fetchone()[0]
    assert recorded == ran_on
    assert results >= len(TASKS)
