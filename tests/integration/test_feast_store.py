"""Feast on real pipeline output: online values equal the marts, historical retrieval is
point-in-time correct, and a failing gate leaves the online store as it was.

The store's tests run on both profiles: DuckDB offline store, SQLite online store and file
registry (local); Postgres offline store, Redis online store and SQL registry (production, in
a database and a Redis database of the test's own: tests/production.py)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from recloop.eventlog import open_event_log
from recloop.features import store
from recloop.features.gate import GateFailed
from recloop.features.pipeline import run_pipeline
from recloop.ingest import ingest_simulation
from recloop.settings import Settings
from recloop.sources.simulator import WorldConfig
from tests.feature_reads import latest_rows, online
from tests.production import production_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = WorldConfig(users=60, items=40, days=3, seed=21)
AS_OF = WORLD.start + timedelta(days=WORLD.days + 8)
USER_FEATURES = ["interactions_last_1_hour", "interactions_last_24_hours",
                 "interactions_last_7_days", "interactions_all_time", "impressions_all_time",
                 "clicks_all_time", "click_through_rate", "rating_count", "rating_mean",
                 "days_since_last_interaction", "top_categories", "recent_item_ids"]  # fmt: skip
ITEM_FEATURES = ["popularity_last_24_hours", "popularity_all_time", "click_through_rate",
                 "rating_count", "rating_mean", "age_in_days"]  # fmt: skip


@pytest.fixture(scope="module")
def local_published(tmp_path_factory) -> Settings:
    settings = Settings(home=tmp_path_factory.mktemp("feast") / "var")
    ingest_simulation(settings, WORLD)
    run_pipeline(settings, None, AS_OF, echo=False)
    return settings


@pytest.fixture(
    scope="module", params=["local", pytest.param("production", marks=pytest.mark.production)]
)
def published(request, tmp_path_factory) -> Iterator[Settings]:
    if request.param == "local":
        yield request.getfixturevalue("local_published")
        return
    with production_settings(tmp_path_factory.mktemp("feast-production") / "var") as settings:
        ingest_simulation(settings, WORLD)
        run_pipeline(settings, None, AS_OF, echo=False)
        yield settings


def same(left, right) -> bool:
    if isinstance(left, float) or isinstance(right, float):
        return (pd.isna(left) and pd.isna(right)) or left == pytest.approx(right)
    if hasattr(right, "tolist"):
        right = right.tolist()
    return left == right


def test_online_values_equal_the_marts(published: Settings) -> None:
    users = latest_rows(published, "user_features", "user_id", AS_OF).sample(15, random_state=0)
    items = latest_rows(published, "item_features", "item_id", AS_OF).sample(15, random_state=0)
    values = online(
        published,
        [{"user_id": u, "item_id": i} for u, i in zip(users.user_id, items.item_id, strict=True)],
    )
    for n, user in enumerate(users.itertuples()):
        for name in USER_FEATURES:
            got = values[f"user_features__{name}"][n]
            assert same(got, getattr(user, name)), (user.user_id, name, got)
    for n, item in enumerate(items.itertuples()):
        for name in ITEM_FEATURES:
            got = values[f"item_features__{name}"][n]
            assert same(got, getattr(item, name)), (item.item_id, name, got)
    unknown = online(published, [{"user_id": "nobody", "item_id": "nothing"}])
    assert unknown["user_features__interactions_all_time"] == [None]


def test_historical_features_exclude_events_after_the_entity_timestamp(published) -> None:
    with open_event_log(published) as log:
        events = log.read().to_pandas()
    events["ts"] = pd.to_datetime(events.ts, utc=True)
    positives = events[events.event_type.isin(["click", "rating", "purchase"])]
    # Entity times one second into an hour in which the user went on to interact: everything
    # the user did later that hour happened after the entity timestamp.
    busy = positives.assign(hour=positives.ts.dt.floor("h")).groupby(["user_id", "hour"]).ts.min()
    busy = busy[busy > busy.index.get_level_values("hour") + pd.Timedelta(seconds=1)]
    entities = pd.DataFrame({
        "user_id": busy.index.get_level_values("user_id"),
        "event_timestamp": busy.index.get_level_values("hour") + pd.Timedelta(seconds=1),
    }).head(25)  # fmt: skip
    assert len(entities) == 25
    feature_store = store.open_store(published)
    history = feature_store.get_historical_features(
        entity_df=entities, features=["user_features:interactions_all_time"]
    ).to_df()
    # Feast's Postgres offline store returns the timestamps without a zone (the database's: UTC).
    history["event_timestamp"] = pd.to_datetime(history.event_timestamp, utc=True)
    for row in history.itertuples():
        mine = positives[positives.user_id == row.user_id]
        before = int((mine.ts < row.event_timestamp).sum())
        later_that_hour = int(
            (
                (mine.ts > row.event_timestamp)
                & (mine.ts < row.event_timestamp + pd.Timedelta(hours=1))
            ).sum()
        )
        assert later_that_hour > 0
        assert row.interactions_all_time == before or (
            pd.isna(row.interactions_all_time) and before == 0
        ), row


def test_reads_go_on_while_another_process_materialises(local_published: Settings) -> None:
    """materialize() commits each view's state MATERIALIZING to the shared registry while it
    writes; a training task or the service reading meanwhile (another process, another store
    object) must get the last materialised values, not an error (seen in the demo: the
    hourly features run made a concurrent training task fail). On the file registry, where it
    was seen: the SQL registry's apply_feature_view does not store a change of state alone, so
    this test cannot put it in that state the way materialize() does."""
    published = local_published
    from feast.feature_view import FeatureViewState

    writer = store.open_store(published)
    view = writer.get_feature_view("user_features")
    previous, view.state = view.state, FeatureViewState.MATERIALIZING  # as materialize() does
    writer.registry.apply_feature_view(view, store.PROJECT, commit=True)
    try:
        reader = store.open_store(published)
        assert reader.get_feature_view("user_features").state == FeatureViewState.MATERIALIZING
        user = latest_rows(published, "user_features", "user_id", AS_OF).iloc[0]
        values = online(published, [{"user_id": user.user_id, "item_id": "nothing"}])
        assert values["user_features__interactions_all_time"] == [user.interactions_all_time]
        entities = pd.DataFrame({"user_id": [user.user_id], "event_timestamp": [AS_OF]})
        history = reader.get_historical_features(
            entity_df=entities, features=["user_features:interactions_all_time"]
        ).to_df()
        assert history.interactions_all_time.tolist() == [user.interactions_all_time]
    finally:
        view.state = previous
        writer.registry.apply_feature_view(view, store.PROJECT, commit=True)


def test_pushed_clicks_are_read_back_newest_first_until_the_views_ttl(published) -> None:
    """The service's fresh-activity read (serving.features): Feast's online read itself
    returns a row however old it is, so a click pushed more than the view's TTL ago must
    come back empty, and a newer push replaces it."""
    from feature_repo.constants import USER_ACTIVITY_TTL
    from serving.features import ACTIVITY_VIEW, OnlineFeatures

    features = OnlineFeatures(published)
    stale = datetime.now(UTC) - USER_ACTIVITY_TTL - timedelta(minutes=5)
    recent = datetime.now(UTC) - USER_ACTIVITY_TTL + timedelta(minutes=5)
    rows = [("ttl-stale", stale), ("ttl-recent", recent)]
    features.store.write_to_online_store(ACTIVITY_VIEW, pd.DataFrame([
        {"user_id": user, "recent_click_item_ids": ["i1"], "last_click_at": at,
         "event_timestamp": at} for user, at in rows
    ]))  # fmt: skip
    assert features.recent_clicks(["ttl-stale", "ttl-recent", "ttl-never"]) == [[], ["i1"], []]

    now = datetime.now(UTC)
    clicks = [("ttl-stale", "i3", now), ("ttl-stale", "i2", now - timedelta(seconds=1)),
              ("ttl-recent", "i2", now)]  # fmt: skip
    assert features.push_clicks(clicks) == 2
    assert features.recent_clicks(["ttl-stale", "ttl-recent"]) == [["i3", "i2"], ["i2", "i1"]]


def test_apply_is_idempotent_and_services_are_versioned(published: Settings) -> None:
    store.apply(published)
    names = {service.name for service in store.open_store(published).list_feature_services()}
    assert names == {"recommender_v1_training", "recommender_v1_serving"}


def test_a_failing_gate_leaves_the_online_store_as_it_was(local_published, tmp_path) -> None:
    # A copy of the local home (its databases are files); test_production.py poisons the
    # production profile's log the same way.
    shutil.copytree(local_published.home, tmp_path / "var")
    settings = Settings(home=tmp_path / "var")
    before = online(settings, [{"user_id": "u00001", "item_id": "i00001"}])
    later = AS_OF + timedelta(hours=6)
    partition = settings.events_dir / "event_date=2030-01-01" / "event_hour=00"
    partition.mkdir(parents=True)
    # New clicks for u00001 that would change its features, and one row with a null user.
    rows = [{"event_id": str(uuid.uuid4()), "item_id": "i00001", "event_type": "click",
             "ts": (AS_OF + timedelta(hours=1, minutes=n)).isoformat(),
             "user_id": "u00001" if n else None, "context": {},
             "logged_at": datetime.now(UTC).isoformat()} for n in range(5)]  # fmt: skip
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    (partition / "part-upstream-000001.jsonl").write_text(lines)
    with pytest.raises(GateFailed, match="expect_column_values_to_not_be_null"):
        run_pipeline(settings, AS_OF, later, echo=False)
    after = online(settings, [{"user_id": "u00001", "item_id": "i00001"}])
    assert after == before


def test_a_late_event_reaches_the_online_store_through_the_recomputed_rows(
    local_published, tmp_path
) -> None:
    """A click that happened 20 hours before the published end and arrives now: dbt
    recomputes the user's change points of that span, and the next interval's publish loads
    the span, so the user's newest row goes online (the interval alone holds none of it)."""
    shutil.copytree(local_published.home, tmp_path / "var")
    settings = Settings(home=tmp_path / "var")
    quiet = latest_rows(settings, "user_features", "user_id", AS_OF)
    user = quiet[quiet.interactions_last_24_hours == 0].user_id.iloc[0]
    happened = AS_OF - timedelta(hours=20, minutes=30)
    partition = (
        settings.events_dir / f"event_date={happened:%Y-%m-%d}" / f"event_hour={happened:%H}"
    )
    partition.mkdir(parents=True, exist_ok=True)
    row = {"event_id": str(uuid.uuid4()), "item_id": "i00001", "event_type": "click",
           "ts": happened.isoformat(), "user_id": user, "context": {},
           "logged_at": datetime.now(UTC).isoformat()}  # fmt: skip
    (partition / "part-late-000001.jsonl").write_text(json.dumps(row) + "\n")
    later = AS_OF + timedelta(hours=1)
    run_pipeline(settings, AS_OF, later, echo=False)
    newest = latest_rows(settings, "user_features", "user_id", later).set_index("user_id")
    assert newest.loc[user, "observed_at"] <= AS_OF  # recomputed, not a row of the interval
    assert newest.loc[user, "interactions_last_24_hours"] == 1
    values = online(settings, [{"user_id": user, "item_id": "i00001"}])
    assert values["user_features__interactions_last_24_hours"] == [1]
    assert values["user_features__interactions_all_time"] == [
        int(newest.loc[user, "interactions_all_time"])
    ]


def test_rerunning_an_earlier_interval_rolls_no_entity_back(local_published, tmp_path) -> None:
    """Feast writes each entity's latest row in the interval, and the SQLite online store
    replaces a row whatever its timestamp (Redis keeps the newer): rerunning an earlier hour
    (a cleared DAG run) must not put an entity changed since back to its older values."""
    shutil.copytree(local_published.home, tmp_path / "var")
    settings = Settings(home=tmp_path / "var")
    assert store.published_until(settings) == AS_OF
    # A user and an earlier change point of theirs whose counts differ from their latest: the
    # online store holds the latest one's.
    from recloop import warehouse

    counts = ["interactions_last_1_hour", "interactions_last_24_hours", "interactions_all_time"]
    points = warehouse.read_frame(
        settings,
        f"SELECT user_id, observed_at, {', '.join(counts)} FROM marts.user_features "
        "WHERE observed_at <= $at ORDER BY user_id, observed_at DESC",
        {"at": AS_OF},
    )
    latest = points.groupby("user_id").head(1).set_index("user_id")
    older = points[points.user_id.duplicated()]
    differs = (older[counts].to_numpy() != latest.loc[older.user_id, counts].to_numpy()).any(1)
    earlier = older[differs].iloc[0]  # the newest such row of the first such user
    user, earlier = earlier.user_id, earlier.observed_at.to_pydatetime()
    rows = [{"user_id": user, "item_id": "i00001"}]
    before = online(settings, rows)
    assert [before[f"user_features__{c}"] for c in counts] == [
        [latest.loc[user, c]] for c in counts
    ]

    store.materialize(settings, earlier - timedelta(hours=1), earlier)  # an earlier hour again
    assert online(settings, rows) == before
    # Straddling the end of what was loaded: only what is newer is loaded, and recorded.
    store.materialize(settings, earlier - timedelta(hours=1), AS_OF + timedelta(hours=1))
    assert online(settings, rows) == before
    assert store.published_until(settings) == AS_OF + timedelta(hours=1)
