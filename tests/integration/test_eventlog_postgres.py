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


def refused(log, batch: list) -> list[tuple[int, str, str]]:
    with pytest.raises(InvalidEvents) as caught:
        log.append(batch)
    return [(r.index, r.field, r.errors[0].reason) for r in caught.value.rejections]


def stored(log) -> dict[str, tuple[str, str]]:
    table = log.read()
    ids, types, items = (table.column(c).to_pylist() for c in ("event_id", "event_type", "item_id"))
    return dict(zip(ids, zip(types, items, strict=True), strict=True))


def test_a_reused_id_with_other_content_refuses_the_batch(schema) -> None:
    """A later batch, a new connection (another writer), and within one batch: refused whole
    at event_id, nothing of the batch committed."""
    settings = Settings(profile="production", postgres_url=URL)
    first, other = events(2)
    reused = {**first, "event_type": "dismiss", "item_id": "i9"}
    with open_event_log(settings, schema=schema) as log:
        assert log.append([first]).appended == 1
        assert refused(log, [other, reused]) == [
            (1, "event_id", "already logged with other content (event_type, item_id differ)")
        ]
        assert log.count() == 1  # rolled back: the valid event beside it is not logged
        later = {**other, "ts": other["ts"] + timedelta(microseconds=1)}
        assert refused(log, [other, first, later]) == [
            (2, "event_id", "repeats row 0's event_id with other content (ts differs)")
        ]
        assert log.count() == 1
    with open_event_log(settings, schema=schema) as log:
        assert refused(log, [{**first, "value": 2.5, "position": 1}]) == [
            (0, "event_id", "already logged with other content (value, position differ)")
        ]
        assert stored(log) == {first["event_id"]: ("click", "i0")}
        # A repeat of a row this batch inserts compares equal with it: both acknowledged.
        result = log.append([other, first, other])
        assert (result.appended, result.duplicates) == (1, 2)


def test_an_exact_repeat_stays_a_duplicate(schema) -> None:
    """Content normalises alike from a fresh event and a stored row; what is not content
    (context, propensity, model_version, policy) may change on a retry."""
    settings = Settings(profile="production", postgres_url=URL)
    batch = events(4)
    batch[0].update(event_type="rating", value=4, ts=START + timedelta(microseconds=123_457))
    batch[1].update(event_type="purchase", value=0.1 + 0.2, request_id="r1", position=3)
    batch[2].update(item_id='é "quoted" \\ 😀', ts="2026-01-05T12:30:00+02:00")
    retries = [
        {**batch[0], "value": 4.0, "ts": "2026-01-05T05:00:00.123457-05:00"},
        {**batch[1], "context": {"device": "phone", "sent_at": "later"}},
        {**batch[2], "ts": START + timedelta(minutes=30)},
        {**batch[3], "propensity": 0.5, "model_version": "8", "policy": "greedy"},
    ]
    with open_event_log(settings, schema=schema) as log:
        assert log.append(batch).appended == 4
    with open_event_log(settings, schema=schema) as log:
        result = log.append(retries)
        assert (result.appended, result.duplicates) == (0, 4)
        assert log.count() == 4


def test_an_id_being_inserted_by_a_concurrent_transaction_is_compared_once_it_commits(
    schema,
) -> None:
    """Another writer's uncommitted row holds our INSERT; once it commits, its content is
    what ours is compared with."""
    psycopg = pytest.importorskip("psycopg")
    settings = Settings(profile="production", postgres_url=URL)
    first, other = events(2)
    outcome: dict = {}
    with open_event_log(settings, schema=schema) as log:
        writer = psycopg.connect(f"{SERVER}/postgres", autocommit=False)
        try:
            writer.execute(
                f"INSERT INTO {schema}.events (event_id, ts, user_id, item_id, event_type) "
                "VALUES (%s, %s, %s, %s, %s)",
                [first["event_id"], first["ts"], "u1", "i0", "click"],
            )

            def append() -> None:
                try:
                    outcome["result"] = log.append([other, {**first, "item_id": "i7"}])
                except InvalidEvents as error:
                    outcome["error"] = error

            thread = threading.Thread(target=append)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive(), f"did not wait for the other transaction: {outcome}"
            writer.commit()
            thread.join(10)
        finally:
            writer.close()
        assert "error" in outcome, outcome
        assert outcome["error"].rejections[0].errors[0].reason == (
            "already logged with other content (item_id differs)"
        )
        assert stored(log) == {first["event_id"]: ("click", "i0")}
