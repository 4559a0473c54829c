"""Training: candidates from the point-in-time training set -> MLflow registry -> gate.

Runs daily at 03:00 UTC (unless the setting `airflow.timed_schedules` turns the clocks off),
and whenever the metrics DAG emits the asset `retrain_requested` (a detected
degradation, or a challenger whose off-policy estimate beats the champion). One mapped task
per candidate kind (the settings' `training.models`) trains, evaluates on the protocols and
registers a version; `judge` picks the challenger and runs the promotion gate. The asset
`champion_model` is updated only when the champion changed (the metrics DAG updates it too
when it promotes on online evidence): the UI's asset view lists every change. The service
follows the MLflow alias itself, not the asset.
"""

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from recloop.settings import load_settings

RETRAIN_REQUESTED = Asset(name="retrain_requested", uri="recloop://retrain_requested")
CHAMPION_MODEL = Asset(name="champion_model", uri="recloop://champion_model")


# Whether the clocks start runs is a setting (airflow.timed_schedules), read from the
# environment and config file as the file is parsed: the demo turns them off.
TIMED = load_settings().airflow.timed_schedules
DAILY = CronTriggerTimetable("0 3 * * *", timezone="UTC")


@dag(
    dag_id="recloop_training",
    schedule=AssetOrTimeSchedule(timetable=DAILY, assets=RETRAIN_REQUESTED)
    if TIMED
    else RETRAIN_REQUESTED,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5), "owner": "recloop"},
    tags=["recloop", "training"],
    doc_md=__doc__,
)
def recloop_training():
    @task
    def begin() -> dict:
        from training import tasks

        return tasks.begin()

    @task
    def candidates(plan: dict) -> list:
        return plan["recipes"]

    # One training at a time: each uses every core. Under the CeleryExecutor the `training`
    # queue's workers take it (bigger machines: docker/compose.yaml's training-worker); the
    # local executor ignores queues.
    @task(queue="training", max_active_tis_per_dagrun=1)
    def train(the_recipe: dict, plan: dict) -> dict:
        from training import tasks

        return tasks.train(the_recipe, plan)

    @task
    def judge(summaries: list, plan: dict) -> dict:
        from training import tasks

        return tasks.judge(summaries, plan)

    @task.short_circuit
    def champion_changed(report: dict) -> bool:
        return bool(report["champion_changed"])

    @task(outlets=[CHAMPION_MODEL])
    def announce(report: dict) -> str:
        return str(report["champion_version"])

    plan = begin()
    summaries = train.partial(plan=plan).expand(the_recipe=candidates(plan))
    report = judge(summaries, plan)
    champion_changed(report) >> announce(report)


recloop_training()
