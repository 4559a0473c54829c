"""Time of the whole feature pipeline, on MovieLens or on N simulated events.

`feature_pipeline_s` is dbt build from scratch (models, data tests, unit tests) + the Great
Expectations gate + Feast apply and materialisation, for one interval covering all the data;
the three stages are reported too, and `feature_pipeline_rerun_s` is the same interval again
(incremental: nothing new to add). The reference, measured in the same run, is the time
DuckDB takes to scan the whole event log once: the floor of any pipeline that reads it.
Loading the data (ingest or simulation) is not part of the figure.

    .venv/bin/python -m benchmarks.pipeline --data ../shared/datasets/ml-100k --json
    .venv/bin/python -m benchmarks.pipeline --simulate-events 1000000 --json

``--production`` runs it on the production profile (Postgres warehouse and event log, dbt-postgres,
Feast's Postgres offline store and Redis online store, in a database and a Redis database of
the benchmark's own); the reference is then the same scan of the event log's Postgres table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb

from benchmarks.production import add_production_options, production_settings
from benchmarks.results import Row, add_output_options, publish
from recloop.eventlog.local import events_sql
from recloop.features.pipeline import run_pipeline
from recloop.ingest import ingest_movielens, ingest_simulation
from recloop.settings import Settings
from recloop.sources.simulator import WorldConfig

# The default world's traffic is about 180 events per user over 40 days.
EVENTS_PER_USER = 180
DAYS = 40


def load(settings: Settings, data: Path | None, simulate_events: int | None) -> str:
    if data is not None:
        ingest_movielens(settings, data)
        return f"MovieLens at {data.name}"
    users = max(50, round(simulate_events / EVENTS_PER_USER))
    report = ingest_simulation(
        settings, WorldConfig(users=users, items=max(30, int(users * 0.4)), days=DAYS)
    )
    return f"simulator, {report.events:,} events"


SCAN = "SELECT count(*), count(DISTINCT user_id), max(ts) + INTERVAL '8 days' FROM {}"


def scan(settings: Settings) -> tuple[float, object]:
    """Seconds of one scan of the whole event log, and its newest time plus 8 days."""
    started = time.perf_counter()
    if settings.profile == "production":
        from recloop.postgres_warehouse import fetchall

        row = fetchall(settings, SCAN.format("raw.events"))[0]
    else:
        with duckdb.connect() as con:
            row = con.execute(SCAN.format(events_sql(settings.events_dir))).fetchone()
    return time.perf_counter() - started, row[2]


def measure(settings: Settings, data: Path | None, simulate_events: int | None) -> list[Row]:
    what = load(settings, data, simulate_events)
    scans = [scan(settings) for _ in range(3)]
    end = scans[0][1]
    first = run_pipeline(settings, None, end, echo=False).seconds
    again = run_pipeline(settings, None, end, echo=False).seconds
    if settings.profile == "production":
        what = f"{what}, production"
        reference = ("Postgres scan of the event log", min(s for s, _ in scans))
    else:
        reference = ("DuckDB scan of the event log", min(s for s, _ in scans))
    rows = [
        Row("pipeline", f"feature_pipeline_s ({what})", sum(first.values()), "s", *reference,
            protocol="dbt build + GE gate + Feast apply/materialise, one interval, from scratch"),
        Row("pipeline", f"feature_pipeline_rerun_s ({what})", sum(again.values()), "s",
            *reference, protocol="the same interval again (incremental)"),
    ]  # fmt: skip
    for stage, seconds in first.items():
        stage_protocol = f"the {stage} stage of feature_pipeline_s"
        metric = f"feature_pipeline_{stage}_s ({what})"
        rows.append(Row("pipeline", metric, seconds, "s", *reference, protocol=stage_protocol))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a MovieLens folder")
    source.add_argument("--simulate-events", type=int, help="simulate about this many events")
    parser.add_argument("--production", action="store_true", help="on Postgres and Redis")
    add_production_options(parser)
    add_output_options(parser)
    args = parser.parse_args()
    if args.production:
        with production_settings(args.server, args.redis) as settings:
            rows = measure(settings, args.data, args.simulate_events)
    else:
        with tempfile.TemporaryDirectory() as root:
            rows = measure(Settings(home=Path(root) / "var"), args.data, args.simulate_events)
    publish(rows, args, lambda row: f"{row.metric}: {row.value:.1f} s ({row.ratio:.1f} x scan)")


if __name__ == "__main__":
    main()
