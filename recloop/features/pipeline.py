"""The feature pipeline, step by step: the same functions the Airflow DAG's tasks call.

dbt build (models and their tests) -> Great Expectations gate -> Feast apply -> materialise
the interval into the online store. A failure at any step raises before the next one, so a
failing gate leaves the online store as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from recloop.features import store
from recloop.features.dbt import project_var, run_dbt
from recloop.features.gate import GateReport, mark_building, run_gate
from recloop.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class PipelineReport:
    start: datetime | None
    end: datetime
    seconds: dict[str, float] = field(default_factory=dict)
    gate: GateReport | None = None


def build_features(
    settings: Settings, end: datetime, *, full_refresh: bool = False, echo: bool = True
) -> None:
    command = ["build", *(["--full-refresh"] if full_refresh else [])]
    mark_building(settings, end)  # the exports are about to hold an unchecked batch
    # Never as of a time before what is already published: a rerun of an older interval (a
    # cleared DAG run, an explicit window) would rebuild the table marts (the catalogue, user
    # attributes) without everything newer, and the service and training read their exports.
    # The incremental marts keep their rows either way; the gate still checks the interval.
    published = store.published_until(settings)
    as_of = max(end, published) if published is not None else end
    if as_of != end:
        log.info("dbt builds as of %s, the end already published (the interval ends %s)",
                 as_of.isoformat(), end.isoformat())  # fmt: skip
    run_dbt(settings, command, as_of=as_of, echo=echo)


def publish_features(settings: Settings, start: datetime | None, end: datetime) -> None:
    store.apply(settings)
    # Also the span whose change points dbt recomputes when late events arrive (store.py).
    store.materialize(settings, start, end, float(project_var("late_arrival_hours")))


def run_pipeline(
    settings: Settings,
    start: datetime | None,
    end: datetime,
    *,
    full_refresh: bool = False,
    echo: bool = True,
) -> PipelineReport:
    """Every step for the interval (start, end]; raises at the first failing one."""
    report = PipelineReport(start=start, end=end)
    with _timed(report, "dbt"):
        build_features(settings, end, full_refresh=full_refresh, echo=echo)
    with _timed(report, "gate"):
        report.gate = run_gate(settings, start, end)
    with _timed(report, "feast"):
        publish_features(settings, start, end)
    return report


@contextmanager
def _timed(report: PipelineReport, step: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    report.seconds[step] = time.perf_counter() - started
    log.info("%s done in %.1f s", step, report.seconds[step])
