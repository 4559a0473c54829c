"""The local event log when an event_id comes back with other content: the batch is refused
whole (InvalidEvents at event_id), never acknowledged as a duplicate with its payload lost;
an exact repeat stays a duplicate (see recloop/eventlog/base.py CONTENT_FIELDS)."""

import threading
from datetime import timedelta, timezone
from pathlib import Path

import pytest

from recloop.contracts import Event
from recloop.eventlog import InvalidEvents
from recloop.eventlog.local import LocalEventLog, read_events
from tests.unit.test_eventlog_failures import NOW, BlockedFsync, event, in_thread


def click(**changes) -> dict:
    """test_eventlog_failures' click, with a request and a position (content fields too)."""
    return {**event(), "request_id": "r1", "position": 2, **changes}


def refused(log: LocalEventLog, batch: list[dict]) -> list[tuple[int, str, str]]:
    with pytest.raises(InvalidEvents) as caught:
        log.append(batch)
    return [(r.index, r.field, r.errors[0].reason) for r in caught.value.rejections]


def logged(root: Path) -> dict[str, tuple[str, str]]:
    table = read_events(root)
    ids, types, items = (table.column(c).to_pylist() for c in ("event_id", "event_type", "item_id"))
    return {i: (t, item) for i, t, item in zip(ids, types, items, strict=True)}


def test_a_reused_id_with_other_content_in_a_later_batch_refuses_that_batch(
    tmp_path: Path,
) -> None:
    first = click()
    reused = {**first, "event_type": "dismiss", "item_id": "i2"}
    other = click()
    mention = click(item_id="i9", context={"event_id": first["event_id"]})  # not first's line
    with LocalEventLog(tmp_path, seal_seconds=3600) as log:
        assert log.append([mention]).appended == 1
        assert log.append([first]).appended == 1
        # first's line is still in the open segment: its content is read from there
        assert refused(log, [other, reused]) == [
            (1, "event_id", "already logged with other content (event_type, item_id differ)")
        ]
        assert log.count() == 2  # all or nothing: the valid event beside it is not logged
        assert log.append([other]).appended == 1
    assert logged(tmp_path) == {
        mention["event_id"]: ("click", "i9"),
        first["event_id"]: ("click", "i1"),
        other["event_id"]: ("click", "i1"),
    }


def test_a_reused_id_with_other_content_within_one_batch_refuses_it(tmp_path: Path) -> None:
    first, other = click(), click()
    later = {**first, "ts": NOW + timedelta(seconds=1)}
    with LocalEventLog(tmp_path) as log:
        assert refused(log, [first, other, later]) == [
            (2, "event_id", "repeats row 0's event_id with other content (ts differs)")
        ]
        assert log.count() == 0
        assert (log.append([first, other, first]).appended, log.count()) == (2, 2)
        # Every clashing row is named, those after the first clash too.
        fresh = click()
        assert refused(log, [{**first, "user_id": "u9"}, fresh, {**fresh, "item_id": "i2"}]) == [
            (0, "event_id", "already logged with other content (user_id differs)"),
            (2, "event_id", "repeats row 1's event_id with other content (item_id differs)"),
        ]
        assert log.append([fresh]).appended == 1  # the refused batch's claims were let go
    assert read_events(tmp_path).num_rows == 3


def test_a_reused_id_is_caught_after_reopening_the_log(tmp_path: Path) -> None:
    """The digests are rebuilt from the sealed segments, recovered ones included."""
    sealed, recovered = click(), click(user_id="u2")
    with LocalEventLog(tmp_path) as log:
        log.append([sealed])
    # What a writer killed after acknowledging `recovered` leaves: its line, in an open segment.
    line = (
        Event.model_validate(recovered).model_dump_json()[:-1]
        + ',"logged_at":"2026-01-05T10:31:00Z"}'
    )
    partition = next(tmp_path.glob("event_date=*/event_hour=*"))
    (partition / "part-dead-writer-000001.jsonl.open").write_text(line + "\n")
    with LocalEventLog(tmp_path) as log:
        assert log.stats.recovered_segments == 1
        assert refused(log, [{**sealed, "value": 1.0}, {**recovered, "request_id": None}]) == [
            (0, "event_id", "already logged with other content (value differs)"),
            (1, "event_id", "already logged with other content (request_id differs)"),
        ]
        assert log.append([sealed, recovered]).duplicates == 2
        assert log.count() == 2


def test_an_id_being_logged_by_a_concurrent_append_with_other_content_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = click()
    fsync = BlockedFsync(monkeypatch, fail=False)
    with LocalEventLog(tmp_path, auto_seal=False) as log:
        thread, outcome = in_thread(log, [first])
        assert fsync.entered.wait(10)
        # Refused at once: not held until the other append is durable.
        assert refused(log, [{**first, "position": 3}]) == [
            (0, "event_id", "being logged by a concurrent append with other content "
                            "(position differs)")
        ]  # fmt: skip
        fsync.release.set()
        thread.join(10)
        assert outcome["result"].appended == 1
    assert logged(tmp_path) == {first["event_id"]: ("click", "i1")}


def test_an_exact_repeat_stays_a_duplicate_however_it_is_written(tmp_path: Path) -> None:
    """Equal content normalises equally from a fresh event and a stored row: ts in another
    zone, an integer value, an Event object; what is not content (context, propensity,
    model_version, policy) may change on a retry."""
    odd = 'é "quoted" \\ back\tslash 😀'
    batch = [
        click(ts=NOW + timedelta(microseconds=123_457), value=0.1 + 0.2, item_id=odd),
        click(event_type="rating", value=4, request_id=None, position=None, user_id=odd),
        click(event_type="purchase", value=1.7976931348623157e308, ts="2026-01-05T12:30:00+02:00"),
        click(value=-0.0, context={"device": "tv"}),
        click(event_type="impression", propensity=0.5, model_version="7", policy="greedy"),
    ]
    retries = [
        {**batch[0], "ts": (NOW + timedelta(microseconds=123_457)).astimezone(
            timezone(timedelta(hours=-5)))},
        {**batch[1], "value": 4.0},
        Event.model_validate(batch[2]),
        {**batch[3], "value": 0.0, "context": {"device": "phone", "sent_at": "later"}},
        {**batch[4], "propensity": 0.25, "model_version": "8", "policy": "thompson"},
    ]  # fmt: skip
    with LocalEventLog(tmp_path, seal_seconds=3600) as log:
        assert log.append(batch).appended == 5
        assert log.append(retries).duplicates == 5  # against the in-memory digests
    with LocalEventLog(tmp_path) as log:
        result = log.append(retries)  # against the digests rebuilt from the files
        assert (result.appended, result.duplicates) == (0, 5)
    assert read_events(tmp_path).num_rows == 5


def test_concurrent_exact_repeats_are_still_acknowledged_once(tmp_path: Path) -> None:
    batch = [click() for _ in range(20)]
    results = []
    with LocalEventLog(tmp_path) as log:
        threads = [
            threading.Thread(target=lambda: results.append(log.append(batch))) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(r.appended for r in results) == [0, 0, 0, 20]
    assert read_events(tmp_path).num_rows == 20
