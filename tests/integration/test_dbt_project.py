"""The dbt project on real simulator output: features checked against an independent
computation from the raw event log, reruns, incremental runs and quarantine.

The tests of the built project run on both profiles: DuckDB (local) and Postgres (production,
a database of the test's own: tests/production.py), the same SQL through dbt-duckdb and
dbt-postgres."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from recloop import warehouse
from recloop.eventlog import open_event_log
from recloop.eventlog.local import LocalEventLog
from recloop.features.dbt import run_dbt
from recloop.features.store import FEAST_SCHEMA
from recloop.ingest import ingest_simulation
from recloop.settings import Settings
from recloop.sources.simulator import WorldConfig
from tests.production import production_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = WorldConfig(users=60, items=40, days=3, seed=11)
AS_OF = WORLD.start + timedelta(days=WORLD.days + 8)  # past every change point
TABLES = ["staging.stg_events", "staging.quarantined_events", "marts.interactions",
          "marts.user_features", "marts.item_features"]  # fmt: skip
POSITIVE = {"click", "rating", "purchase"}


def simulated_home(root: Path) -> Settings:
    settings = Settings(home=root / "var")
    ingest_simulation(settings, WORLD)
    return settings


def query(settings: Settings, sql: str) -> pd.DataFrame:
    return warehouse.read_frame(settings, sql)


def logged_events(settings: Settings) -> pd.DataFrame:
    with open_event_log(settings) as log:
        events = log.read().to_pandas()
    events["ts"] = pd.to_datetime(events.ts, utc=True)
    return events


def fingerprints(settings: Settings) -> dict[str, tuple]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return {
            table: con.execute(
                f"SELECT count(*), md5(string_agg(t::varchar, ',' ORDER BY t::varchar)) "
                f"FROM {table} AS t"
            ).fetchone()
            for table in TABLES
        }


@pytest.fixture(
    scope="module", params=["local", pytest.param("production", marks=pytest.mark.production)]
)
def built(request, tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp(f"dbt-{request.param}")
    if request.param == "local":
        settings = simulated_home(root)
        run_dbt(settings, ["build"], as_of=AS_OF)
        yield settings
        return
    with production_settings(root / "var") as settings:
        ingest_simulation(settings, WORLD)
        run_dbt(settings, ["build"], as_of=AS_OF)
        yield settings


def test_every_logged_event_is_staged_once(built: Settings) -> None:
    logged = len(logged_events(built))
    counts = query(
        built, "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM staging.stg_events"
    )
    assert counts.n[0] == counts.ids[0] == logged
    assert query(built, "SELECT count(*) AS n FROM staging.quarantined_events").n[0] == 0


def test_user_features_match_an_independent_computation(built: Settings) -> None:
    events = logged_events(built)
    items = query(built, "SELECT item_id, categories FROM staging.stg_items")
    categories = dict(zip(items.item_id, items.categories, strict=True))
    features = query(built, "SELECT * FROM marts.user_features").sample(40, random_state=1)
    assert len(features) == 40
    for row in features.itertuples():
        mine = events[(events.user_id == row.user_id) & (events.ts < row.observed_at)]
        positives = mine[mine.event_type.isin(POSITIVE)]

        def within(hours: int, frame=positives, at=row.observed_at) -> int:
            return int((frame.ts >= at - pd.Timedelta(hours=hours)).sum())

        assert row.interactions_last_1_hour == within(1)
        assert row.interactions_last_24_hours == within(24)
        assert row.interactions_last_7_days == within(168)
        assert row.interactions_all_time == len(positives)
        clicks = int((mine.event_type == "click").sum())
        impressions = int((mine.event_type == "impression").sum())
        assert row.click_through_rate == pytest.approx((clicks + 0.05 * 20) / (impressions + 20))
        ratings = mine[mine.event_type == "rating"].value
        assert row.rating_count == len(ratings)
        if len(ratings):
            assert row.rating_mean == pytest.approx(ratings.mean())
        latest = positives.groupby("item_id").ts.max().reset_index()
        latest = latest.sort_values(["ts", "item_id"], ascending=[False, True])
        assert list(row.recent_item_ids) == list(latest.item_id[:10])
        counts: dict[str, int] = {}
        for item in positives.item_id:
            for category in categories[item]:
                counts[category] = counts.get(category, 0) + 1
        top = sorted(counts, key=lambda c: (-counts[c], c))[:3]
        assert list(row.top_categories) == top


def test_what_feast_reads_equals_the_marts(built: Settings) -> None:
    for name in ("user_features", "item_features", "interactions"):
        if built.profile == "local":  # Parquet exports: Feast's DuckDB offline store reads files
            exported = len(pd.read_parquet(built.features_dir / f"feast_{name}.parquet"))
        else:  # the dbt relations in the feast schema
            exported = query(built, f"SELECT count(*) AS n FROM {FEAST_SCHEMA}.feast_{name}").n[0]
        assert exported == len(query(built, f"SELECT * FROM marts.{name}"))


def test_rerun_changes_nothing_and_new_events_extend_the_features(tmp_path: Path) -> None:
    settings = simulated_home(tmp_path)
    run_dbt(settings, ["build"], as_of=AS_OF)
    before = fingerprints(settings)
    run_dbt(settings, ["build"], as_of=AS_OF)
    assert fingerprints(settings) == before

    newest = query(settings, "SELECT max(observed_at) AS t FROM marts.user_features").t[0]
    old_rows = query(settings, "SELECT * FROM marts.user_features ORDER BY ALL")
    later = AS_OF + timedelta(days=1)
    with LocalEventLog(settings.events_dir) as log:
        log.append(
            [
                {
                    "event_id": str(uuid.uuid4()),
                    "ts": AS_OF + timedelta(hours=2, minutes=n),
                    "user_id": "u00001",
                    "item_id": "i00002",
                    "event_type": "click",
                }
                for n in range(3)
            ]
        )
    run_dbt(settings, ["build"], as_of=later)
    extended = query(settings, "SELECT * FROM marts.user_features ORDER BY ALL")
    added = extended[extended.observed_at > newest]
    assert set(added.user_id) == {"u00001"}
    first = added.sort_values("observed_at").iloc[0]
    assert first.interactions_last_1_hour == 3 and first.recent_item_ids[0] == "i00002"
    kept = extended[extended.observed_at <= newest].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, old_rows)


def test_a_build_sees_nothing_after_its_as_of(tmp_path: Path) -> None:
    """as_of reaches the models (through RECLOOP_AS_OF): an earlier interval end bounds the
    change points and the catalogue, and a later one extends them."""
    settings = simulated_home(tmp_path)
    middle = WORLD.start + timedelta(days=1, hours=6)
    run_dbt(settings, ["build"], as_of=middle)
    features = query(settings, "SELECT max(observed_at) AS newest FROM marts.user_features")
    assert pd.Timestamp(features.newest[0]).tz_localize(None) <= middle.replace(tzinfo=None)
    items = query(settings, "SELECT max(created_at) AS newest, count(*) AS n FROM marts.items")
    assert pd.Timestamp(items.newest[0]).tz_localize(None) <= middle.replace(tzinfo=None)
    run_dbt(settings, ["build"], as_of=AS_OF)
    later = query(settings, "SELECT max(observed_at) AS newest FROM marts.user_features")
    assert pd.Timestamp(later.newest[0]).tz_localize(None) > middle.replace(tzinfo=None)
    # Two of the world's items enter the catalogue after the middle (seed 11).
    assert query(settings, "SELECT count(*) AS n FROM marts.items").n[0] == items.n[0] + 2


def test_rows_breaking_the_contract_are_quarantined_with_reasons(tmp_path: Path) -> None:
    settings = simulated_home(tmp_path)
    run_dbt(settings, ["build"], as_of=AS_OF)
    staged = query(settings, "SELECT count(*) AS n FROM staging.stg_events").n[0]
    existing = query(settings, "SELECT event_id FROM staging.stg_events LIMIT 1").event_id[0]
    # A bad upstream writes straight into the log's folder, bypassing the log's validation.
    at = (AS_OF - timedelta(days=1)).isoformat()
    base = {
        "ts": at,
        "user_id": "u00001",
        "item_id": "i00001",
        "event_type": "click",
        "context": {},
        "logged_at": AS_OF.isoformat(),
    }
    rows = [
        {**base, "event_id": str(uuid.uuid4()), "user_id": None},
        {**base, "event_id": str(uuid.uuid4()), "event_type": "rating", "value": 9},
        {**base, "event_id": str(uuid.uuid4()), "ts": "2099-01-01T00:00:00+00:00"},
        {**base, "event_id": existing},
        # An impression whose per-slot propensities disagree with its own propensity, and
        # one with a probability above 1 in another slot.
        {**base, "event_id": str(uuid.uuid4()), "event_type": "impression", "position": 1,
         "propensity": 0.5, "slot_propensities": [0.1, 0.4]},
        {**base, "event_id": str(uuid.uuid4()), "event_type": "impression", "position": 0,
         "propensity": 0.5, "slot_propensities": [0.5, 1.5]},
    ]  # fmt: skip
    partition = settings.events_dir / "event_date=2030-01-01" / "event_hour=00"
    partition.mkdir(parents=True)
    (partition / "part-upstream-000001.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows)
    )
    run_dbt(settings, ["build"], as_of=AS_OF)
    quarantined = query(settings, "SELECT * FROM staging.quarantined_events ORDER BY ALL")
    reasons = sorted(quarantined.rejection_reason)
    assert [reason.split(":")[0] for reason in reasons] == [
        "event_id", "slot_propensities", "slot_propensities", "ts", "user_id", "value"
    ]  # fmt: skip
    assert "slot_propensities: a value is outside [0, 1]" in reasons
    assert "slot_propensities: the value at the position is not the propensity" in reasons
    assert query(settings, "SELECT count(*) AS n FROM staging.stg_events").n[0] == staged
    run_dbt(settings, ["build"], as_of=AS_OF)  # quarantining again adds nothing
    assert len(query(settings, "SELECT * FROM staging.quarantined_events")) == 6


def test_docs_generate(built: Settings) -> None:
    run_dbt(built, ["docs", "generate"])
    catalog = json.loads((built.home / "dbt" / "target" / "catalog.json").read_text())
    assert "model.recloop.user_features" in catalog["nodes"]
