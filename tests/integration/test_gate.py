"""The Great Expectations gate on real dbt output, and every poisoned batch the issue names:
each stops the gate naming the expectation, and what can be quarantined is."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from recloop.eventlog.local import LocalEventLog
from recloop.features import store
from recloop.features.dbt import DbtError, run_dbt
from recloop.features.gate import GateFailed, run_gate, volume_floor
from recloop.features.pipeline import run_pipeline
from recloop.ingest import ingest_simulation
from recloop.settings import Settings
from recloop.sources.simulator import WorldConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = WorldConfig(users=60, items=40, days=3, seed=5)
AS_OF = WORLD.start + timedelta(days=WORLD.days + 8)


@pytest.fixture(scope="module")
def clean_home(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gate")
    settings = Settings(home=root / "var")
    ingest_simulation(settings, WORLD)
    run_pipeline(settings, None, AS_OF, echo=False)  # published: the online store has values
    return settings.home


@pytest.fixture
def home(clean_home: Path, tmp_path: Path) -> Settings:
    """A private copy of the built home, for one poisoning."""
    shutil.copytree(clean_home, tmp_path / "var")
    return Settings(home=tmp_path / "var")


def inject(settings: Settings, rows: list[dict]) -> None:
    """What a bad upstream does: write straight into the log's folder, past its validation."""
    base = {"ts": (AS_OF - timedelta(days=9)).isoformat(), "user_id": "u00001",
            "item_id": "i00001", "event_type": "click", "context": {},
            "logged_at": datetime.now(UTC).isoformat()}  # fmt: skip
    partition = settings.events_dir / "event_date=2030-01-01" / "event_hour=00"
    partition.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        merged = {**base, "event_id": str(uuid.uuid4()), **row}
        lines.append(json.dumps({k: v for k, v in merged.items() if v != "<drop>"}) + "\n")
    (partition / f"part-upstream-{uuid.uuid4().hex[:6]}.jsonl").write_text("".join(lines))


def quarantine_reasons(settings: Settings) -> list[str]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute("SELECT rejection_reason FROM staging.quarantined_events").fetchall()
    return [row[0] for row in rows]


def online_snapshot(settings: Settings) -> dict:
    if not store.has_materialized(settings):
        return {}
    feature_store = store.open_store(settings)
    rows = [{"user_id": f"u{n:05d}", "item_id": f"i{n:05d}"} for n in range(20)]
    return feature_store.get_online_features(
        features=feature_store.get_feature_service("recommender_v1_serving"),
        entity_rows=rows, full_feature_names=True,
    ).to_dict()  # fmt: skip


def gate_failure(settings: Settings, start=None, end=None) -> str:
    """Run the whole pipeline; the gate must stop it and the online store must not change."""
    before = online_snapshot(settings)
    with pytest.raises(GateFailed) as caught:
        run_pipeline(settings, start, end or datetime.now(UTC), echo=False)
    assert online_snapshot(settings) == before, "the online store changed"
    return str(caught.value)


def test_a_clean_batch_passes_and_publishes_data_docs(home: Settings) -> None:
    report = run_gate(home, None, AS_OF)
    assert report.rows["raw_events"] > 500 and report.rows["user_features"] > 100
    assert report.evaluated > 30
    assert report.docs and Path(report.docs.removeprefix("file://")).exists()


@pytest.mark.parametrize(
    ("rows", "expectation", "quarantined"),
    [
        ([{"user_id": None}], "expect_column_values_to_not_be_null", "user_id"),
        ([{"event_type": "rating", "value": 9}], "expect_column_values_to_be_between", "value"),
        ([{"ts": "2099-01-01T00:00:00+00:00"}], "expect_column_max_to_be_between", "ts"),
        ([{"user_id": "<drop>", "userId": "u00001"}], "expect_table_columns_to_match_set",
         "user_id"),
        ([{"event_type": "impression", "position": 0, "propensity": 0.5,
           "slot_propensities": [0.5, 1.5]}],
         'expect_column_values_to_be_between({"column": "slot_propensities_max"',
         "slot_propensities"),
    ],
    ids=["null_user_id", "rating_out_of_range", "timestamp_in_the_future", "column_renamed",
         "slot_propensity_out_of_range"],
)  # fmt: skip
def test_poisoned_raw_batches_stop_the_gate(home: Settings, rows, expectation, quarantined) -> None:
    inject(home, rows)
    message = gate_failure(home)
    assert f"raw_events: {expectation}" in message
    assert [reason.split(":")[0] for reason in quarantine_reasons(home)] == [quarantined]


def test_duplicate_event_ids_stop_the_gate(home: Settings) -> None:
    with duckdb.connect(str(home.warehouse_path), read_only=True) as con:
        event_id, ts = con.execute("SELECT event_id, ts FROM staging.stg_events LIMIT 1").fetchone()
    inject(home, [{"event_id": event_id, "ts": ts.isoformat()}])
    assert 'expect_column_values_to_be_unique({"column": "event_id"' in gate_failure(home)
    assert quarantine_reasons(home)[0].startswith("event_id: duplicate")


def test_an_event_id_logged_in_an_earlier_hour_stops_the_gate(home: Settings) -> None:
    """A producer's retry re-sends, whole, an event an earlier run already logged: this run's
    batch holds one copy only, so uniqueness within the batch cannot see the duplicate."""
    start = datetime.now(UTC)  # the home's events were logged (ingested) before
    segment = sorted(home.events_dir.glob("event_date=*/event_hour=*/*.jsonl"))[0]
    original = json.loads(segment.read_text().splitlines()[0])
    resent = {**original, "logged_at": datetime.now(UTC).isoformat()}
    partition = home.events_dir / "event_date=2030-01-01" / "event_hour=00"
    partition.mkdir(parents=True)
    (partition / "part-retry.jsonl").write_text(json.dumps(resent) + "\n")
    message = gate_failure(home, start)
    assert message.startswith("data quality gate failed (1 expectation(s))")
    assert 'expect_column_values_to_be_null({"column": "event_id_logged_before"})' in message
    assert original["event_id"] in message
    assert quarantine_reasons(home)[0].startswith("event_id: duplicate")


def test_a_failed_hour_is_validated_again_until_fixed_then_published(home, monkeypatch) -> None:
    """The DAG's runs, hour after hour (recloop.features.tasks): a run starts where the last
    published interval ended, so the next hour's gate does not approve the exports that still
    hold a failed hour's rows, and the failed hour's change points are published once fixed."""
    from recloop.features import tasks
    from recloop.features.gate import last_outcome

    monkeypatch.setenv("RECLOOP_HOME", str(home.home))
    hour = timedelta(hours=1)
    # Wall-clock hours, after the home's events were logged (ingested): the last full hour
    # but one has three clicks of a user and a row with a null user.
    failing_end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - hour
    before = online_snapshot(home)
    n = next(n for n, v in enumerate(before["user_features__interactions_all_time"]) if v)
    clicks = [{"event_id": str(uuid.uuid4()), "user_id": before["user_id"][n],
               "item_id": f"i0000{k}", "event_type": "click", "context": {},
               "ts": (failing_end - hour + timedelta(minutes=10 + k)).isoformat(),
               "logged_at": (failing_end - hour + timedelta(minutes=11 + k)).isoformat()}
              for k in range(3)]  # fmt: skip
    partition = home.events_dir / "event_date=2030-01-01" / "event_hour=00"
    partition.mkdir(parents=True)
    (partition / "part-good.jsonl").write_text("".join(json.dumps(c) + "\n" for c in clicks))
    poisoned = partition / "part-bad.jsonl"
    poisoned.write_text(json.dumps({**clicks[0], "event_id": str(uuid.uuid4()),
                                    "user_id": None}) + "\n")  # fmt: skip

    def run(start: datetime, end: datetime) -> dict:
        """One DAG run of the data interval (start, end]: plan's window, then every task."""
        window = tasks.interval(start.isoformat(), end.isoformat())
        tasks.ingest_events(window)
        tasks.build(window)
        tasks.validate(window)
        tasks.publish(window)
        return window

    with pytest.raises(GateFailed, match="expect_column_values_to_not_be_null"):
        run(failing_end - hour, failing_end)
    # The next hour's run validates the failed hour again with its own: still failed, and
    # nothing published.
    with pytest.raises(GateFailed, match="expect_column_values_to_not_be_null"):
        run(failing_end, failing_end + hour)
    assert last_outcome(home)["passed"] is False
    assert online_snapshot(home) == before
    # The upstream fixes its rows: the next run checks all the hours since the last publish
    # and publishes them, the failed hour's change points included.
    poisoned.unlink()
    now = datetime.now(UTC)
    window = run(now - hour, now)
    assert window["start"] == AS_OF.isoformat()  # where the fixture's publish ended
    assert last_outcome(home)["passed"] is True
    after = online_snapshot(home)["user_features__interactions_all_time"][n]
    assert after == before["user_features__interactions_all_time"][n] + 3


def test_a_bad_upstream_change_to_the_ctr_is_stopped_twice(home: Settings) -> None:
    # What a broken change to the CTR model writes.
    with duckdb.connect(str(home.warehouse_path)) as con:
        con.execute("UPDATE marts.item_features SET click_through_rate = click_through_rate + 1")
    # First by dbt's own range test, before the gate and before Feast...
    before = online_snapshot(home)
    with pytest.raises(DbtError, match="accepted_range_item_features_click_through_rate"):
        run_pipeline(home, None, AS_OF, echo=False)
    assert online_snapshot(home) == before
    # ...and by the gate, had that test been skipped.
    with pytest.raises(GateFailed) as caught:
        run_gate(home, None, AS_OF)
    assert "item_features: expect_column_values_to_be_between(" in str(caught.value)
    assert '"column": "click_through_rate"' in str(caught.value)


def test_a_batch_90_percent_smaller_than_usual_stops_the_gate(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "var")
    world = WorldConfig(users=30, items=20, days=1, seed=3)
    ingest_simulation(settings, world)
    day = world.start + timedelta(days=10)
    with LocalEventLog(settings.events_dir) as log:
        for n, count in enumerate([400, 420, 380, 40]):
            start = day + timedelta(days=n)
            log.append([
                {"event_id": str(uuid.uuid4()), "ts": start + timedelta(minutes=3 * k + 1),
                 "user_id": f"u{k % 30:05d}", "item_id": f"i{k % 20:05d}", "event_type": "click"}
                for k in range(count)
            ])  # fmt: skip
    run_dbt(settings, ["build"], as_of=day + timedelta(days=5), echo=False)
    for n in range(3):
        run_gate(settings, day + timedelta(days=n - 1), day + timedelta(days=n))
    message = gate_failure(settings, day + timedelta(days=3), day + timedelta(days=4))
    assert "raw_events: expect_table_row_count_to_be_between" in message


def test_volume_floor_compares_like_with_like() -> None:
    end = datetime(2026, 1, 10, 20, tzinfo=UTC)
    hour = 3600.0
    history = [{"end": (end - timedelta(days=d)).isoformat(), "rows": 1000, "seconds": hour}
               for d in range(1, 4)]  # fmt: skip
    history += [{"end": (end - timedelta(hours=h)).isoformat(), "rows": 10, "seconds": hour}
                for h in range(1, 6)]  # fmt: skip
    # At 20:00 the same hour on earlier days is the reference, not the quiet hours before.
    assert volume_floor(history, end - timedelta(hours=1), end, 0.8) == 200
    # Fewer than three at this hour: all batches of the same length are the reference.
    assert volume_floor(history[:2] + history[3:], end - timedelta(hours=1), end, 0.8) == 2
    assert volume_floor([], end - timedelta(hours=1), end, 0.8) is None
    assert volume_floor(history, None, end, 0.8) is None
