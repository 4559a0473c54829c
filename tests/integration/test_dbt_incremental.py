"""Incremental dbt runs against a full rebuild of the same raw rows: after any sequence of
hourly runs the marts equal `dbt build --full-refresh` (for events within the late-arrival
margin), a rerun of an interval changes nothing, and no raw row is lost or recorded twice.

Rows are landed as an upstream writing straight into the log would (a segment file locally, the
event table in production), with their own `logged_at`. Each scenario runs on both profiles;
rows that the production event table cannot hold (duplicate or null event ids: its primary key)
only locally."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recloop import postgres_warehouse, warehouse
from recloop.contracts import Item, User
from recloop.features.dbt import run_dbt
from recloop.settings import Settings
from tests.production import production_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILES = ["local", pytest.param("production", marks=pytest.mark.production)]
# Each table's key, for comparing snapshots row by row.
KEYS = {
    "staging.stg_events": ["event_id"],
    "staging.quarantined_events": ["quarantine_id"],
    "marts.interactions": ["interaction_id"],
    "marts.user_features": ["user_id", "observed_at"],
    "marts.item_features": ["item_id", "observed_at"],
}
EVENT_COLUMNS = ["event_id", "ts", "user_id", "item_id", "event_type", "value", "request_id",
                 "position", "propensity", "logged_at"]  # fmt: skip


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@contextmanager
def small_home(root: Path, profile: str) -> Iterator[Settings]:
    """A home of either profile with users u1, u2 and items i1, i2 and an empty event log."""
    with production_settings(root / "var") if profile == "production" else _local(root) as settings:
        warehouse.init_warehouse(settings)
        created = at("2026-02-01T00:00")
        warehouse.upsert(
            settings, "users", [User(user_id=u, created_at=created) for u in ("u1", "u2")]
        )
        warehouse.upsert(
            settings,
            "items",
            [Item(item_id=i, title=i, categories=["a"], created_at=created) for i in ("i1", "i2")],
        )
        yield settings


@contextmanager
def _local(root: Path) -> Iterator[Settings]:
    settings = Settings(home=root / "var")
    settings.ensure_home()
    yield settings


def event(event_id: str | None, ts: datetime, user: str, item: str, kind: str, logged_at: datetime,
          **fields: Any) -> dict[str, Any]:  # fmt: skip
    return {"event_id": event_id, "ts": ts.isoformat(), "user_id": user, "item_id": item,
            "event_type": kind, "logged_at": logged_at.isoformat(), **fields}  # fmt: skip


def land(settings: Settings, rows: list[dict[str, Any]]) -> None:
    """Rows as an upstream writing past the log's validation would leave them, logged_at
    included: a sealed segment per logged hour locally, rows of the event table in production."""
    if settings.profile == "local":
        by_hour: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_hour[row["logged_at"][:13]].append({"context": {}, **row})
        for hour, group in by_hour.items():
            folder = settings.events_dir / f"event_date={hour[:10]}" / f"event_hour={hour[11:13]}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"part-upstream-{uuid.uuid4().hex}.jsonl").write_text(
                "".join(json.dumps(row) + "\n" for row in group)
            )
        return
    with postgres_warehouse.connect(settings) as con:
        con.cursor().executemany(
            f"INSERT INTO public.events ({', '.join(EVENT_COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(EVENT_COLUMNS))})",
            [[row.get(column) for column in EVENT_COLUMNS] for row in rows],
        )


def build(settings: Settings, as_of: datetime, *flags: str) -> None:
    run_dbt(settings, ["build", *flags], as_of=as_of, echo=False)


def snapshot(settings: Settings) -> dict[str, pd.DataFrame]:
    """Every incremental table, sorted by its key (lists as tuples, so frames compare)."""
    tables = {}
    for table, key in KEYS.items():
        frame = warehouse.read_frame(settings, f"SELECT * FROM {table}")
        for column in frame.select_dtypes(include="object").columns:
            frame[column] = frame[column].map(
                lambda v: tuple(v) if isinstance(v, list | tuple | np.ndarray) else v
            )
        tables[table] = frame.sort_values(key).reset_index(drop=True)
    return tables


def assert_same(left: dict[str, pd.DataFrame], right: dict[str, pd.DataFrame],
                drop: dict[str, list[str]] | None = None) -> None:  # fmt: skip
    for table in KEYS:
        columns = (drop or {}).get(table, [])
        pd.testing.assert_frame_equal(
            left[table].drop(columns=columns), right[table].drop(columns=columns), obj=table
        )


# -- one late-arrival story, run hour by hour and then rebuilt --------------------------------

C1, D, IMP, C2 = (str(uuid.uuid4()) for _ in range(4))


def story(local: bool) -> list[tuple[datetime, list[dict[str, Any]]]]:
    """(as_of, rows landed before that run). A click (C1) staged an hour before the impression
    it answers (IMP); a click at 10:30 (C2) logged at 11:20, after the 11:00 run; a rating out
    of range; locally also rows without an event id and two copies of an event id (D) logged
    at the same instant (a click and a purchase)."""
    first = at("2026-03-02T10:10")
    second = at("2026-03-02T11:20")
    rows_1 = [event(C1, at("2026-03-02T10:05"), "u1", "i1", "click", first, request_id="r1"),
              event(D, at("2026-03-02T10:08"), "u2", "i2", "click", first)]  # fmt: skip
    rows_2 = [
        event(IMP, at("2026-03-02T10:04"), "u1", "i1", "impression", second, request_id="r1",
              position=0, propensity=1.0),
        event(C2, at("2026-03-02T10:30"), "u2", "i1", "click", second),
    ]  # fmt: skip
    if local:
        rows_1 += [event(None, at("2026-03-02T10:06"), "u1", "i2", "click", first),
                   event(D, at("2026-03-02T10:09"), "u2", "i2", "purchase", first)]  # fmt: skip
        rows_2 += [event(None, at("2026-03-02T11:05"), "u2", "i2", "click", second)]
    rows_3 = [event(str(uuid.uuid4()), at("2026-03-03T10:50"), "u1", "i1", "rating",
                    at("2026-03-03T11:00"), value=9.5)]  # fmt: skip
    return [(at("2026-03-02T11:00"), rows_1), (at("2026-03-02T12:00"), rows_2),
            (at("2026-03-03T12:00"), rows_3)]  # fmt: skip


def replay(root: Path, profile: str) -> dict[str, dict[str, pd.DataFrame]]:
    """Snapshots after the story's hourly runs, after a rerun of the last interval, and after a
    full refresh of the same raw rows."""
    with small_home(root, profile) as settings:
        for as_of, rows in story(local=profile == "local"):
            land(settings, rows)
            build(settings, as_of)
        last = story(local=False)[-1][0]
        incremental = snapshot(settings)
        build(settings, last)
        rerun = snapshot(settings)
        build(settings, last, "--full-refresh")
        return {"incremental": incremental, "rerun": rerun, "full": snapshot(settings)}


@pytest.fixture(scope="module")
def replays(tmp_path_factory) -> Callable[[str], dict[str, dict[str, pd.DataFrame]]]:
    done: dict[str, dict[str, dict[str, pd.DataFrame]]] = {}

    def once(profile: str) -> dict[str, dict[str, pd.DataFrame]]:
        if profile not in done:
            done[profile] = replay(tmp_path_factory.mktemp(f"replay-{profile}"), profile)
        return done[profile]

    return once


@pytest.fixture(scope="module", params=PROFILES)
def runs(request, replays) -> dict[str, dict[str, pd.DataFrame]]:
    return replays(request.param)


@pytest.fixture(scope="module")
def local_runs(replays) -> dict[str, dict[str, pd.DataFrame]]:
    return replays("local")


def test_hourly_runs_equal_a_full_refresh(runs) -> None:
    # quarantined_at is the interval that quarantined a row: a rebuild quarantines all at once.
    assert_same(
        runs["incremental"], runs["full"], {"staging.quarantined_events": ["quarantined_at"]}
    )


def test_a_rerun_of_the_same_interval_changes_nothing(runs) -> None:
    assert_same(runs["incremental"], runs["rerun"])


def test_a_click_staged_before_its_impression_is_counted_once(runs) -> None:
    interactions = runs["incremental"]["marts.interactions"]
    assert C1 not in set(interactions.interaction_id)  # its impression's row carries it
    shown = interactions[interactions.interaction_id == IMP].iloc[0]
    assert shown.is_positive and shown.is_clicked
    assert len(interactions[(interactions.user_id == "u1") & (interactions.item_id == "i1")]) == 1


def test_a_late_click_enters_the_windows_it_happened_in(runs) -> None:
    """C2 happened at 10:30 but was logged at 11:20, after the run that computed 11:00."""
    users = runs["incremental"]["marts.user_features"]
    u2 = users[
        (users.user_id == "u2")
        & (pd.to_datetime(users.observed_at, utc=True) == at("2026-03-02T11:00"))
    ]
    assert list(u2.interactions_last_1_hour) == [2]
    items = runs["incremental"]["marts.item_features"]
    i1 = items[
        (items.item_id == "i1")
        & (pd.to_datetime(items.observed_at, utc=True) == at("2026-03-02T11:00"))
    ]
    assert list(i1.popularity_last_1_hour) == [2]


def test_each_rejected_row_is_quarantined_once(local_runs) -> None:
    """Two rows without an event id, the purchase copy of D and the rating out of range: each
    once, through three intervals and a rerun, with the ids a rebuild gives them."""
    quarantined = local_runs["rerun"]["staging.quarantined_events"]
    reasons = sorted(quarantined.rejection_reason.str.split(":").str[0])
    assert reasons == ["event_id", "event_id", "event_id", "value"]
    assert list(quarantined.quarantine_id) == list(
        local_runs["full"]["staging.quarantined_events"].quarantine_id
    )


def test_copies_logged_at_the_same_instant_are_one_event(local_runs) -> None:
    staged = local_runs["incremental"]["staging.stg_events"]
    assert list(staged[staged.event_id == D].event_type) == ["click"]  # the earlier ts
    quarantined = local_runs["incremental"]["staging.quarantined_events"]
    copy = quarantined[quarantined.event_id == D]
    assert list(copy.event_type) == ["purchase"]
    assert copy.rejection_reason.iloc[0].startswith("event_id: duplicate of an event logged at")


# -- logged_at in the future ------------------------------------------------------------------


def staged_ids(settings: Settings) -> set[str]:
    return set(warehouse.read_frame(settings, "SELECT event_id FROM staging.stg_events").event_id)


def quarantine(settings: Settings) -> pd.DataFrame:
    return warehouse.read_frame(
        settings, "SELECT event_id, rejection_reason FROM staging.quarantined_events"
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_a_row_logged_in_the_future_holds_nothing_back(tmp_path: Path, profile: str) -> None:
    """A writer whose clock runs two days fast logs a row. It is quarantined, naming logged_at,
    and the rows logged before it, in this run and the next, are still staged."""
    now = datetime.now(UTC).replace(microsecond=0)
    before, fast, after = (str(uuid.uuid4()) for _ in range(3))
    with small_home(tmp_path, profile) as settings:
        land(settings, [
            event(before, now - timedelta(hours=3), "u1", "i1", "click", now - timedelta(hours=3)),
            event(fast, now - timedelta(hours=2), "u1", "i2", "click", now + timedelta(days=2)),
        ])  # fmt: skip
        build(settings, now - timedelta(hours=1))
        assert staged_ids(settings) == {before}
        held = quarantine(settings)
        assert list(held.event_id) == [fast]
        assert held.rejection_reason[0].startswith("logged_at: ")
        assert held.rejection_reason[0].endswith(" is in the future")

        land(settings, [event(after, now - timedelta(minutes=30), "u2", "i1", "click",
                              now - timedelta(minutes=29))])  # fmt: skip
        build(settings, now)
        assert staged_ids(settings) == {before, after}
        assert list(quarantine(settings).event_id) == [fast]  # once, not once per run


def test_a_row_held_for_its_logged_at_is_staged_once_the_clock_passes_it(tmp_path: Path) -> None:
    """What happens to a held row later: the first run that starts after its logged_at (less
    future_tolerance_minutes, 0 here) stages it; its quarantine row stays, as the record."""
    now = datetime.now(UTC)
    ahead = now + timedelta(seconds=30)
    held = str(uuid.uuid4())
    vars_ = ["--vars", "{future_tolerance_minutes: 0}"]
    with small_home(tmp_path, "local") as settings:
        land(settings, [event(held, now - timedelta(minutes=1), "u1", "i1", "click", ahead)])
        build(settings, now, *vars_)
        assert staged_ids(settings) == set()
        assert list(quarantine(settings).event_id) == [held]
        time.sleep(max(0.0, (ahead - datetime.now(UTC)).total_seconds()) + 1)
        build(settings, now, *vars_)
        assert staged_ids(settings) == {held}
        assert list(quarantine(settings).event_id) == [held]
        interactions = warehouse.read_frame(
            settings, "SELECT interaction_id FROM marts.interactions"
        )
        assert list(interactions.interaction_id) == [held]
