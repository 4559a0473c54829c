"""The production event log against the running Postgres: same contract as the local one."""

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from recloop.eventlog import InvalidEvents, open_event_log
from recloop.settings import Settings
from tests.production import SERVER, postgres_admin

URL = f"{SERVER}/postgres"
START = datetime(2026, 1, 5, 10, tzinfo=UTC)

pytestmark = [pytest.mark.production, pytest.mark.integration]


@pytest.fixture
def schema():
    connection = postgres_admin()
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    connection.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    connection.close()


def events(count: int):
    return [
        {
            "event_id": str(uuid.uuid4()),
            "ts": START + timedelta(minutes=n),
            "user_id": "u1",
            "item_id": f"i{n}",
            "event_type": "click",
            "context": {"device": "tv"},
        }
        for n in range(count)
    ]


def test_append_is_idempotent_and_readable(schema) -> None:
    settings = Settings(profile="production", postgres_url=URL)
    batch = events(30)
    with open_event_log(settings, schema=schema) as log:
        assert log.append(batch).appended == 30
        result = log.append(batch[:10] + events(5))
        assert (result.appended, result.duplicates) == (5, 10)
        table = log.read(START + timedelta(minutes=10), START + timedelta(minutes=20))
        assert table.num_rows == 10
        assert log.count() == 35
    with open_event_log(settings, schema=schema) as log:  # durable across connections
        assert log.count() == 35
        assert log.read().column("context")[0].as_py() == '{"device": "tv"}'


def test_slot_propensities_round_trip_and_an_older_table_gains_the_column(schema) -> None:
    """A table made before the contract had slot_propensities gets the column on first use
    (its rows read null); new impressions keep theirs."""
    connection = postgres_admin()
    connection.execute(f"CREATE SCHEMA {schema}")
    connection.execute(
        f"CREATE TABLE {schema}.events (event_id uuid PRIMARY KEY, ts timestamptz NOT NULL, "
        "user_id text NOT NULL, item_id text NOT NULL, event_type text NOT NULL, "
        "value double precision, request_id text, position integer, "
        "propensity double precision, model_version text, policy text, "
        "context jsonb NOT NULL DEFAULT '{}'::jsonb, logged_at timestamptz NOT NULL DEFAULT now())"
    )
    connection.execute(
        f"INSERT INTO {schema}.events (event_id, ts, user_id, item_id, event_type) "
        "VALUES (gen_random_uuid(), '2026-01-05 09:00+00', 'u1', 'i1', 'click')"
    )
    connection.close()
    impression = {**events(1)[0], "event_type": "impression", "position": 1,
                  "propensity": 0.5, "slot_propensities": [0.25, 0.5, 0.0]}  # fmt: skip
    with open_event_log(Settings(profile="production", postgres_url=URL), schema=schema) as log:
        assert log.append([impression]).appended == 1
        table = log.read()
    assert table.column("slot_propensities").to_pylist() == [None, [0.25, 0.5, 0.0]]


def test_broken_batch_appends_nothing(schema) -> None:
    batch = events(3)
    batch[1]["ts"] = "2026-01-05T10:00:00"  # naive
    with open_event_log(Settings(profile="production", postgres_url=URL), schema=schema) as log:
        with pytest.raises(InvalidEvents, match="row 1: ts"):
            log.append(batch)
        assert log.count() == 0


def test_many_writer_connections_never_duplicate(schema) -> None:
    settings = Settings(profile="production", postgres_url=URL)
    batch = events(50)
    open_event_log(settings, schema=schema).close()  # create the table once
    appended = []

    def write() -> None:
        with open_event_log(settings, schema=schema) as log:
            appended.append(log.append(batch).appended)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(appended) == 50
    with open_event_log(settings, schema=schema) as log:
        assert log.count() == 50


def test_one_log_shared_by_threads_appends_from_all_at_once(schema) -> None:
    """The service's case: one log object, feedback appended from several threads while the
    impression writer appends from its own (one shared connection interleaved transactions:
    psycopg's "transaction rollback at the wrong nesting level")."""
    settings = Settings(profile="production", postgres_url=URL)
    batches = [events(20) for _ in range(40)]
    failures: list[BaseException] = []
    with open_event_log(settings, schema=schema) as log:
        start = threading.Barrier(8)

        def write(mine: list[list[dict]]) -> None:
            start.wait()
            for batch in mine:
                try:
                    log.append(batch)
                except BaseException as error:  # collected, asserted below
                    failures.append(error)

        threads = [threading.Thread(target=write, args=(batches[n::8],)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert log.count() == 800
