"""Airflow: every DAG file imports cleanly (DagBag), and `airflow dags test recloop_features`
runs for real (SQLite metadata) on simulator data and on MovieLens-100K, after which the
online store serves what the marts hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from recloop.features import store
from recloop.settings import Settings

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
RECLOOP = str(Path(sys.executable).with_name("recloop"))


def airflow_environment(tmp_path: Path, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "RECLOOP_HOME": str(home),
    }


DAGBAG = """
import json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "errors": {path: str(error) for path, error in bag.import_errors.items()},
    "dags": {
        dag_id: {"file": dag.fileloc, "tags": sorted(dag.tags),
                 "timetable": type(dag.timetable).__name__,
                 "retries": {task.task_id: task.retries for task in dag.tasks}}
        for dag_id, dag in bag.dags.items()
    },
}))
"""


def dagbag(tmp_path: Path, **env: str) -> dict:
    # A child process: Airflow reads its configuration once, at import.
    result = subprocess.run(
        [sys.executable, "-c", DAGBAG, str(REPO / "dags")],
        env={**airflow_environment(tmp_path, tmp_path / "var"), **env},
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_dagbag_imports_every_dag_with_tags_and_retries(tmp_path: Path) -> None:
    bag = dagbag(tmp_path)
    assert bag["errors"] == {}
    assert set(bag["dags"]) >= {"recloop_features", "recloop_training"}
    assert len(bag["dags"]) == len(list((REPO / "dags").glob("*.py")))
    for dag_id, dag in bag["dags"].items():
        assert Path(dag["file"]).stem == dag_id, "a DAG file is named after its DAG"
        assert "recloop" in dag["tags"]
        for task_id, retries in dag["retries"].items():
            assert retries >= 1, f"{dag_id}.{task_id} has no retries"
    # On their clocks by default: features and metrics hourly, training daily or on its asset.
    assert bag["dags"]["recloop_features"]["timetable"] == "CronTriggerTimetable"
    assert bag["dags"]["recloop_metrics"]["timetable"] == "CronTriggerTimetable"
    assert bag["dags"]["recloop_training"]["timetable"] == "AssetOrTimeSchedule"


@pytest.mark.integration
def test_the_clocks_can_be_turned_off_leaving_the_assets(tmp_path: Path) -> None:
    """The demo's setting: no run starts on the clock, training still starts on its asset."""
    bag = dagbag(tmp_path, RECLOOP_AIRFLOW__TIMED_SCHEDULES="false")
    assert bag["errors"] == {}
    timetables = {dag_id: dag["timetable"] for dag_id, dag in bag["dags"].items()}
    assert timetables == {"recloop_features": "NullTimetable",
                          "recloop_metrics": "NullTimetable",
                          "recloop_training": "AssetTriggeredTimetable"}  # fmt: skip


def recloop(home: Path, *args: str) -> None:
    """Run the recloop CLI on a home, as an operator would before the DAGs."""
    subprocess.run([RECLOOP, *args, "--json"], env={**os.environ, "RECLOOP_HOME": str(home)},
                   check=True, capture_output=True)  # fmt: skip


def this_hour() -> datetime:
    # Run now, as an operator would: the first run of a home backfills from the beginning.
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def run_dag(
    tmp_path: Path,
    home: Path,
    logical_date: datetime,
    dag_id: str = "recloop_features",
    tasks: int = 5,
    extra_env: dict[str, str] | None = None,
) -> str:
    env = {**airflow_environment(tmp_path, home), **(extra_env or {})}
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    result = subprocess.run(
        [AIRFLOW, "dags", "test", dag_id, logical_date.isoformat()],
        env=env,
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    finished = [line for line in output.splitlines() if "DagRun Finished" in line]
    assert result.returncode == 0 and finished and "state=success" in finished[0], output[-4000:]
    # A run before the DAG's start date "succeeds" with no task run: count the tasks.
    assert output.count("new_state=success") == tasks, output[-4000:]
    return output


def assert_online_matches_marts(home: Path, end: datetime) -> None:
    settings = Settings(home=home)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute(
            "SELECT user_id, interactions_all_time, recent_item_ids FROM marts.user_features "
            "WHERE observed_at <= ? QUALIFY row_number() OVER "
            "(PARTITION BY user_id ORDER BY observed_at DESC) = 1 ORDER BY user_id LIMIT 20",
            [end],
        ).fetchall()
    assert len(rows) == 20
    feature_store = store.open_store(settings)
    values = feature_store.get_online_features(
        features=["user_features:interactions_all_time", "user_features:recent_item_ids"],
        entity_rows=[{"user_id": row[0]} for row in rows],
    ).to_dict()
    assert values["interactions_all_time"] == [row[1] for row in rows]
    assert values["recent_item_ids"] == [list(row[2]) for row in rows]


@pytest.mark.integration
@pytest.mark.slow
def test_dags_test_on_simulator_data(tmp_path: Path) -> None:
    home = tmp_path / "var"
    recloop(home, "simulate", "--users", "80", "--items", "50", "--days", "3")
    now = this_hour()
    run_dag(tmp_path, home, now)
    assert_online_matches_marts(home, now)


@pytest.mark.integration
@pytest.mark.dataset
@pytest.mark.slow
def test_dags_test_on_movielens_100k(ml100k: Path, tmp_path: Path) -> None:
    home = tmp_path / "var"
    recloop(home, "ingest", "movielens", str(ml100k))
    now = this_hour()
    run_dag(tmp_path, home, now)
    assert_online_matches_marts(home, now)


@pytest.mark.integration
@pytest.mark.slow
def test_training_dag_after_the_feature_dag(tmp_path: Path) -> None:
    """recloop_features, then recloop_training: candidates registered, a champion set."""
    import mlflow

    from training import registry

    home = tmp_path / "var"
    recloop(home, "simulate", "--users", "120", "--items", "60", "--days", "6")
    now = this_hour()
    run_dag(tmp_path, home, now)
    kinds = ["popularity", "ease", "two_tower"]
    # begin, candidates, one train per kind, judge, champion_changed, announce
    run_dag(tmp_path, home, now, dag_id="recloop_training", tasks=5 + len(kinds), extra_env={
        "RECLOOP_TRAINING__MODELS": json.dumps(kinds),
        "RECLOOP_TRAINING__MODEL_CONFIG_OVERRIDES": json.dumps({"two_tower": {"epochs": 2}}),
    })  # fmt: skip
    settings = Settings(home=home)
    # Both URIs: given the tracking URI alone, a client takes the registry URI that an earlier
    # test in this process set globally (training.registry.configure), another test's home.
    client = mlflow.MlflowClient(settings.tracking_uri(), settings.tracking_uri())
    versions = client.search_model_versions(f"name='{registry.MODEL_NAME}'")
    assert sorted(v.tags["kind"] for v in versions) == sorted(kinds)
    champion = client.get_model_version_by_alias(registry.MODEL_NAME, registry.CHAMPION)
    run = client.get_run(champion.run_id)
    assert "P1.ndcg_at_10" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model_card.md", "plots"}
