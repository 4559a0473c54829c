"""Hourly online metrics: estimate -> publish, and decide -> (maybe) request retraining.

Each run waits until its hour's clicks can all have arrived (`settle`: the attribution window
and the event log's seal after the hour's end; a run triggered for an explicit window goes at
once), then reads what the service logged in its hour (and the week before it) and writes the
online metrics with intervals, the off-policy estimates of the challenger, and the alarms
(monitoring.hourly). `publish` logs the hour to MLflow (experiment `online-metrics`) and
redraws the dashboard under the home's `monitoring/`. `decide` feeds a candidate whose
off-policy gain over the champion's own slates has its lower bound above zero
(`challenger_wins`) to the promotion gate, which may move the `champion` alias at once; when
an alarm of another configured kind fires (a degradation of the champion's CTR, drifted
request features) or the gate refused the winner, `request_retraining` updates the asset
`retrain_requested`, which schedules `recloop_training`: the loop closes through the asset.
A promotion on online evidence updates the asset `champion_model`, as the training DAG's does.

Runs hourly (unless the setting `airflow.timed_schedules` turns the clocks off, as the demo
does, triggering a run per simulated hour). Trigger with {"start": ISO, "end": ISO} to
estimate another hour than the run's interval.
"""

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, Param, dag, task

from recloop.settings import load_settings

RETRAIN_REQUESTED = Asset(name="retrain_requested", uri="recloop://retrain_requested")
CHAMPION_MODEL = Asset(name="champion_model", uri="recloop://champion_model")


# Whether the clocks start runs is a setting (airflow.timed_schedules), read from the
# environment and config file as the file is parsed: the demo turns them off.
TIMED = load_settings().airflow.timed_schedules


@dag(
    dag_id="recloop_metrics",
    schedule="@hourly" if TIMED else None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1), "owner": "recloop"},
    params={
        "start": Param(None, type=["null", "string"], description="Hour start (ISO, UTC)."),
        "end": Param(None, type=["null", "string"], description="Hour end (ISO, UTC)."),
    },
    tags=["recloop", "monitoring"],
    doc_md=__doc__,
)
def recloop_metrics():
    @task
    def plan(params=None, data_interval_start=None, data_interval_end=None, dag_run=None) -> dict:
        from monitoring.tasks import hour

        end = data_interval_end or dag_run.run_after
        start = data_interval_start or end
        return hour(params.get("start"), params.get("end"), start.isoformat(), end.isoformat())

    # The scheduled hour is estimated once its clicks can all have arrived (its attribution
    # window and the event log's seal after its end); rescheduling frees the worker slot.
    @task.sensor(poke_interval=60, timeout=2 * 3600, mode="reschedule")
    def settle(window: dict, params=None) -> bool:
        from monitoring import tasks

        return tasks.settled(window, explicit=bool(params.get("start") or params.get("end")))

    @task
    def estimate(window: dict) -> dict:
        from monitoring import tasks

        return tasks.estimate(window)

    @task
    def publish(window: dict) -> dict:
        from monitoring import tasks

        return tasks.publish(window)

    @task
    def decide(window: dict) -> dict:
        from monitoring import tasks

        return tasks.decide(window)

    @task.short_circuit
    def retraining_wanted(decision: dict) -> bool:
        return bool(decision["requested"])

    @task(outlets=[RETRAIN_REQUESTED])
    def request_retraining(window: dict) -> str:
        return window["end"]

    @task.short_circuit
    def champion_changed(decision: dict) -> bool:
        return decision["promoted"] is not None

    @task(outlets=[CHAMPION_MODEL])
    def announce(decision: dict) -> str:
        return str(decision["promoted"])

    window = plan()
    estimated = estimate(window)
    settle(window) >> estimated
    published = publish(window)
    decision = decide(window)
    # The decision does not wait on MLflow: a tracking server down must not stop the loop.
    estimated >> [published, decision]
    retraining_wanted(decision) >> request_retraining(window)
    champion_changed(decision) >> announce(decision)


recloop_metrics()
