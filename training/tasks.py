"""What each task of the recloop_training DAG does, as plain functions of plain data.

Each task reads the settings itself (Airflow passes only small JSON between tasks). ``begin``
reads the point-in-time training set from the feature store and keeps it with the run's
parent MLflow run (artifact ``training_data``); the mapped training tasks and ``judge`` read
that copy, so every task sees the same rows even when an hourly features run rewrites the
export meanwhile.
"""

from __future__ import annotations

from typing import Any

from recloop.settings import load_settings


def begin() -> dict[str, Any]:
    from training.pipeline import begin as begin_run

    return begin_run(load_settings())


def train(the_recipe: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    from training.pipeline import train_recipe

    return train_recipe(load_settings(), the_recipe, plan, show_progress=True)


def judge(summaries: list[dict[str, Any]], plan: dict[str, Any]) -> dict[str, Any]:
    from training.pipeline import judge as judge_run

    return judge_run(load_settings(), list(summaries), plan).to_dict()
