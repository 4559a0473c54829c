"""Hourly feature pipeline: raw events -> dbt -> Great Expectations gate -> Feast.

Runs hourly (unless the setting `airflow.timed_schedules` turns the clocks off) and when
triggered. Each run processes everything since the last interval it published, up to its data
interval's end (the first run of a fresh home backfills everything), so an hour whose gate
failed is checked again with the next one and published once they pass. A trigger's conf may
name the window instead (`{"start": ISO, "end": ISO}`, kept as given). A failing gate stops the
run before Feast, so the online store keeps what it had; the failed expectations are in the
`validate` task's log and in the Data Docs. On success the run updates the asset `features`
(fresh features, in the UI's asset view; training starts on its own clock and on
`retrain_requested`, not on every features run).
"""

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, dag, task

from recloop.settings import load_settings

FEATURES = Asset(name="features", uri="recloop://features")


# Whether the clocks start runs is a setting (airflow.timed_schedules), read from the
# environment and config file as the file is parsed: the demo turns them off.
TIMED = load_settings().airflow.timed_schedules


@dag(
    dag_id="recloop_features",
    schedule="@hourly" if TIMED else None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "owner": "recloop"},
    tags=["recloop", "features"],
    doc_md=__doc__,
)
def recloop_features():
    @task
    def plan(data_interval_start=None, data_interval_end=None, dag_run=None) -> dict:
        from recloop.features.tasks import interval

        # A manual or asset-triggered run has no data interval: it processes what is new up
        # to when it was asked for. From the end of the last published interval, not the data
        # interval's start (catchup is off): see recloop.features.tasks.interval.
        end = data_interval_end or dag_run.run_after
        start = data_interval_start if data_interval_start not in (None, end) else None
        conf = dict(getattr(dag_run, "conf", None) or {})
        return interval(start.isoformat() if start else None, end.isoformat(), conf)

    @task
    def ingest_events(window: dict) -> dict:
        from recloop.features import tasks

        return tasks.ingest_events(window)

    @task
    def dbt_build(window: dict) -> None:
        from recloop.features import tasks

        tasks.build(window)

    @task
    def validate(window: dict) -> dict:
        from recloop.features import tasks

        return tasks.validate(window)

    @task(outlets=[FEATURES])
    def publish(window: dict) -> None:
        from recloop.features import tasks

        tasks.publish(window)

    window = plan()
    ingested = ingest_events(window)
    built = dbt_build(window)
    validated = validate(window)
    ingested >> built >> validated >> publish(window)


recloop_features()
