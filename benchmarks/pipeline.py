"""Time of the feature pipeline's stages, on MovieLens or on N simulated events.

Today the pipeline is its dbt stage (issue 3 adds the Great Expectations gate and Feast next;
their stages will join these rows, and `feature_pipeline_s` will be their sum). Reported:

- feature_pipeline_dbt_s: `dbt build` from scratch (models, data tests, unit tests);
- feature_pipeline_dbt_rerun_s: the same interval again (incremental: nothing to add);

each against the time DuckDB takes to scan the whole event log once in the same run (the
floor of any pipeline that reads it), as the reference. Loading the data (ingest or
simulation) is not part of the figure.

    .venv/bin/python -m benchmarks.pipeline --data ../shared/datasets/ml-100k --json
    .venv/bin/python -m benchmarks.pipeline --simulate-events 1000000 --json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb

from benchmarks.results import Row, record
from recloop.eventlog.local import events_sql
from recloop.features.dbt import run_dbt
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


def scan_seconds(settings: Settings) -> float:
    started = time.perf_counter()
    query = "SELECT count(*), count(DISTINCT user_id), max(ts) FROM {}"
    with duckdb.connect() as con:
        con.execute(query.format(events_sql(settings.events_dir))).fetchall()
    return time.perf_counter() - started


def timed_dbt(settings: Settings, as_of) -> float:
    started = time.perf_counter()
    run_dbt(settings, ["build"], as_of=as_of, echo=False)
    return time.perf_counter() - started


def measure(data: Path | None, simulate_events: int | None) -> list[Row]:
    with tempfile.TemporaryDirectory() as root:
        settings = Settings(home=Path(root) / "var")
        what = load(settings, data, simulate_events)
        with duckdb.connect() as con:
            (as_of,) = con.execute(
                f"SELECT max(ts) + INTERVAL 8 DAY FROM {events_sql(settings.events_dir)}"
            ).fetchone()
        scans = [scan_seconds(settings) for _ in range(3)]
        full = timed_dbt(settings, as_of)
        rerun = timed_dbt(settings, as_of)
    scan = min(scans)
    return [
        Row("pipeline", f"feature_pipeline_dbt_s ({what})", full, "s",
            "DuckDB scan of the event log", scan, protocol="dbt build from scratch, 2 threads"),
        Row("pipeline", f"feature_pipeline_dbt_rerun_s ({what})", rerun, "s",
            "DuckDB scan of the event log", scan, protocol="same interval again (incremental)"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a MovieLens folder")
    source.add_argument("--simulate-events", type=int, help="simulate about this many events")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    rows = measure(args.data, args.simulate_events)
    if not args.no_record:
        record(rows)
    for row in rows:
        print(
            row.to_json()
            if args.json
            else f"{row.metric}: {row.value:.1f} s ({row.ratio:.1f} x scan)"
        )


if __name__ == "__main__":
    main()
