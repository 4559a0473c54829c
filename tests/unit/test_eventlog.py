import json
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from recloop.eventlog import EventLogBusy, InvalidEvents, open_event_log
from recloop.eventlog.local import CORRUPT_DIR, LocalEventLog, count_events, read_events

START = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)


def events(count: int, *, start: datetime = START, step: timedelta = timedelta(minutes=1)):
    return [
        {
            "event_id": str(uuid.uuid4()),
            "ts": start + n * step,
            "user_id": f"u{n % 3}",
            "item_id": f"i{n}",
            "event_type": "impression",
            "position": n % 10,
            "propensity": 0.1,
            "context": {"hour": 10},
        }
        for n in range(count)
    ]


def test_append_then_read_back(tmp_path: Path) -> None:
    batch = events(120)  # two hours: two partitions
    with LocalEventLog(tmp_path) as log:
        result = log.append(batch)
        assert (result.appended, result.duplicates) == (120, 0)
        table = log.read()
    assert table.num_rows == 120
    assert sorted(table.column("event_id").to_pylist()) == sorted(e["event_id"] for e in batch)
    assert table.column("context")[0].as_py() == '{"hour":10}'
    assert table.column("logged_at").null_count == 0
    partitions = sorted(p.parent.name for p in tmp_path.glob("event_date=*/event_hour=*/*.jsonl"))
    assert partitions == ["event_hour=10", "event_hour=11", "event_hour=12"]


def test_slot_propensities_round_trip_and_older_events_read_as_null(tmp_path: Path) -> None:
    batch = events(3)
    for row in batch:
        row["slot_propensities"] = [0.05] * 10
        row["slot_propensities"][row["position"]] = 0.1
    with LocalEventLog(tmp_path) as log:
        log.append(batch)
    # A segment written before the field existed: its lines carry no such key.
    older = {**events(1)[0], "ts": START.isoformat(), "logged_at": START.isoformat()}
    segment = tmp_path / "event_date=2026-01-05" / "event_hour=10" / "part-older-000001.jsonl"
    segment.write_text(json.dumps(older) + "\n")
    table = read_events(tmp_path)
    by_id = dict(zip(table.column("event_id").to_pylist(),
                     table.column("slot_propensities").to_pylist(), strict=True))  # fmt: skip
    assert by_id[batch[1]["event_id"]] == batch[1]["slot_propensities"]
    assert by_id[older["event_id"]] is None


def test_read_filters_by_time(tmp_path: Path) -> None:
    with LocalEventLog(tmp_path) as log:
        log.append(events(60))
    assert (
        read_events(tmp_path, START + timedelta(minutes=10), START + timedelta(minutes=20)).num_rows
        == 10
    )
    window = (START + timedelta(minutes=10), START + timedelta(minutes=20))
    assert count_events(tmp_path, *window) == 10
    assert count_events(tmp_path) == 60


def test_retried_batch_adds_nothing_even_after_reopening(tmp_path: Path) -> None:
    batch = events(50)
    with LocalEventLog(tmp_path) as log:
        log.append(batch)
        assert log.append(batch).duplicates == 50
        assert log.append(batch[:10] + events(5)).appended == 5
    with LocalEventLog(tmp_path) as log:
        assert log.count() == 55
        assert log.append(batch).appended == 0
    assert read_events(tmp_path).num_rows == 55


def test_duplicates_within_one_batch_are_written_once(tmp_path: Path) -> None:
    batch = events(3)
    with LocalEventLog(tmp_path) as log:
        result = log.append(batch + batch)
    assert (result.appended, result.duplicates) == (3, 3)


def test_a_batch_with_a_broken_event_appends_nothing(tmp_path: Path) -> None:
    batch = events(5)
    batch[3]["propensity"] = 2.0
    with LocalEventLog(tmp_path) as log:
        with pytest.raises(InvalidEvents, match=r"row 3: propensity"):
            log.append(batch)
        assert log.count() == 0
    assert read_events(tmp_path).num_rows == 0


def test_readers_never_see_the_open_segment(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path, seal_seconds=3600, auto_seal=False)
    try:
        log.append(events(10))
        assert list(tmp_path.glob("event_date=*/event_hour=*/*.jsonl.open"))
        assert read_events(tmp_path).num_rows == 0  # acknowledged, durable, not yet visible
        log.seal()
        assert read_events(tmp_path).num_rows == 10
    finally:
        log.close()


def test_segments_seal_by_age_in_the_background(tmp_path: Path) -> None:
    with LocalEventLog(tmp_path, seal_seconds=0.1) as log:
        log.append(events(10))
        deadline = datetime.now(UTC) + timedelta(seconds=5)
        while read_events(tmp_path).num_rows < 10 and datetime.now(UTC) < deadline:
            threading.Event().wait(0.05)
        assert read_events(tmp_path).num_rows == 10


def test_segments_seal_by_size(tmp_path: Path) -> None:
    with LocalEventLog(tmp_path, segment_max_bytes=2000, seal_seconds=3600) as log:
        for _ in range(5):
            log.append(events(10, start=START))
        sealed_before_close = len(list(tmp_path.glob("event_date=*/event_hour=*/*.jsonl")))
    assert sealed_before_close >= 4


def test_recovery_cuts_a_torn_tail_and_quarantines_garbage(tmp_path: Path) -> None:
    with LocalEventLog(tmp_path, seal_seconds=3600, auto_seal=False) as log:
        log.append(events(5))
        log.seal()
    # What a writer killed in the middle of a write leaves behind: whole lines, a corrupt one
    # and half a line, in an open segment.
    partition = next(tmp_path.glob("event_date=*/event_hour=*"))
    first = json.loads(next(partition.glob("*.jsonl")).read_bytes().splitlines()[0])
    line = json.dumps({**first, "event_id": str(uuid.uuid4())}).encode()
    (partition / "part-dead-writer-000001.jsonl.open").write_bytes(
        line + b"\n" + b"{not json}\n" + b'{"event_id": "3f1'
    )
    with LocalEventLog(tmp_path) as log:
        assert log.stats.recovered_segments == 1
        assert log.stats.corrupt_lines == 2
        assert log.count() == 6
    assert not list(tmp_path.glob("**/*.open"))
    assert read_events(tmp_path).num_rows == 6
    corrupt = list((tmp_path / CORRUPT_DIR).iterdir())
    assert len(corrupt) == 1
    assert b'{"event_id": "3f1' in corrupt[0].read_bytes()


def test_concurrent_appends_share_flushes(tmp_path: Path) -> None:
    with LocalEventLog(tmp_path) as log:

        def work() -> None:
            for _ in range(20):
                log.append(events(10))

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert log.stats.appended == 8 * 20 * 10
        # Group commit: fewer flushes than appends whenever appends overlapped.
        assert log.stats.flushes <= 8 * 20
    assert read_events(tmp_path).num_rows == 1600


def test_a_second_writer_process_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, time; from recloop.eventlog.local import LocalEventLog;"
        "log = LocalEventLog(sys.argv[1]); print('locked', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(EventLogBusy, match=f"process {holder.pid}"):
            LocalEventLog(tmp_path, lock_timeout=0.2)
    finally:
        holder.kill()
        holder.wait()
    with LocalEventLog(tmp_path, lock_timeout=5):  # the lock dies with its process
        pass


def test_factory_follows_the_profile(settings) -> None:
    with open_event_log(settings) as log:
        assert isinstance(log, LocalEventLog)
        assert log.root == settings.events_dir
        assert log.append(events(1)).appended == 1
    assert os.path.isdir(settings.events_dir)
