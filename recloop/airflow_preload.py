"""Run an Airflow command with the libraries recloop's tasks import already imported.

Every task instance runs in a process forked from the one that executes it: under the
LocalExecutor the scheduler's executor workers are forked from the scheduler and fork each
task; under the CeleryExecutor each task is forked from its Celery worker. What that process
imported before Airflow started is already in every task's memory, while a task that imports
it itself pays for it on every run: on these 2 cores Feast alone takes 13 s or more, Great
Expectations 5 s, and the hourly features run has five tasks, three of them Feast's.

``python -m recloop.airflow_preload scheduler --skip-serve-logs`` is ``airflow scheduler
--skip-serve-logs`` after those imports. ``recloop.airflow_local`` starts the LocalExecutor's
scheduler and the Celery workers so, and ``docker/compose.yaml`` its Celery workers (with the
CeleryExecutor the scheduler runs no task, so it starts plain).

Only libraries are imported, no recloop module that reads settings, and none of them opens a
connection or starts a Python thread at import, so forking stays safe (torch comes in with
Feast, which imports it; its thread pools start only when it first computes, which neither
the scheduler nor a worker ever does).
"""

from __future__ import annotations

import importlib
import sys

# What the DAGs' tasks import (recloop.features, monitoring, training): Feast, Great
# Expectations, dbt's Python API, MLflow, and what those stand on.
PRELOAD = ("feast", "great_expectations", "dbt.cli.main", "mlflow", "duckdb", "pyarrow", "pandas")


def main() -> int:
    for name in PRELOAD:
        importlib.import_module(name)
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *sys.argv[1:]]
    return airflow_main()


if __name__ == "__main__":
    sys.exit(main())
