"""The local event log when the disk fails: a failed append leaves nothing behind, and nothing
is acknowledged before it is durable (see recloop/eventlog/local.py)."""

import errno
import os
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recloop.eventlog import EventLogError
from recloop.eventlog.local import OPEN_SUFFIX, LocalEventLog, read_events

NOW = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)


def event() -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "ts": NOW,
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "click",
    }


def is_segment(fd: int) -> bool:
    """Whether ``fd`` is an open segment of an event log (faults are injected only there)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(OPEN_SUFFIX)
    except OSError:
        return False


def open_segment_bytes(root: Path) -> bytes:
    (segment,) = root.glob(f"event_date=*/event_hour=*/*{OPEN_SUFFIX}")
    return segment.read_bytes()


def logged_ids(root: Path) -> list[str]:
    return sorted(read_events(root).column("event_id").to_pylist())


def short_write_then_enospc(monkeypatch: pytest.MonkeyPatch, *, keep: int = 40) -> None:
    """The next write to a segment writes ``keep`` bytes, the one after it fails: a full disk."""
    real = os.write
    calls = 0

    def write(fd, data):
        nonlocal calls
        if not is_segment(fd):
            return real(fd, data)
        calls += 1
        if calls == 1:
            return real(fd, bytes(data[:keep]))
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def fdatasync_fails_once(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fdatasync
    failed = False

    def fdatasync(fd):
        nonlocal failed
        if is_segment(fd) and not failed:
            failed = True
            raise OSError(errno.EIO, "Input/output error (injected)")
        return real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)


def test_a_torn_write_is_cut_off_and_the_log_stays_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, torn, last = [event()], [event(), event()], [event()]
    log = LocalEventLog(tmp_path, auto_seal=False)
    try:
        log.append(first)
        acknowledged = open_segment_bytes(tmp_path)
        short_write_then_enospc(monkeypatch)
        with pytest.raises(EventLogError, match="No space left"):
            log.append(torn)
        # Not a byte of the failed batch is left for the next append to land after.
        assert open_segment_bytes(tmp_path) == acknowledged
        assert log.append(last).appended == 1
    finally:
        log.close()
    expected = sorted(e["event_id"] for e in first + last)
    assert logged_ids(tmp_path) == expected
    with LocalEventLog(tmp_path, auto_seal=False) as reopened:  # a service restart
        assert reopened.stats.corrupt_lines == 0
        assert reopened.count() == 2
        assert reopened.append(torn).appended == 2  # never acknowledged, so not logged
    assert logged_ids(tmp_path) == sorted(expected + [e["event_id"] for e in torn])


def test_a_failed_fsync_then_a_retry_logs_one_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = [event(), event()]
    fdatasync_fails_once(monkeypatch)
    with LocalEventLog(tmp_path, auto_seal=False) as log:
        with pytest.raises(EventLogError, match="Input/output error"):
            log.append(batch)
        assert log.count() == 0
        assert open_segment_bytes(tmp_path) == b""  # the whole lines are gone too
        result = log.append(batch)  # the client's retry
        assert (result.appended, result.duplicates) == (2, 0)
        assert log.append(batch).duplicates == 2
    assert logged_ids(tmp_path) == sorted(e["event_id"] for e in batch)
    with LocalEventLog(tmp_path) as reopened:
        assert reopened.count() == 2


def test_a_segment_that_cannot_be_cut_back_is_abandoned_until_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, torn = [event()], [event(), event()]
    log = LocalEventLog(tmp_path, auto_seal=False)
    try:
        log.append(first)
        short_write_then_enospc(monkeypatch)

        def ftruncate(fd, size):
            raise OSError(errno.EIO, "Input/output error (injected)")

        monkeypatch.setattr(os, "ftruncate", ftruncate)
        with pytest.raises(EventLogError, match="No space left"):
            log.append(torn)
        monkeypatch.undo()  # the disk is healthy again, the torn tail is still there
        with pytest.raises(EventLogError, match="refuses appends"):
            log.append([event()])
    finally:
        log.close()
    # Torn bytes are never sealed: readers keep working, and the acknowledged event waits in
    # the abandoned open segment for the next writer's recovery.
    assert read_events(tmp_path).num_rows == 0
    with LocalEventLog(tmp_path) as reopened:
        assert reopened.stats.recovered_segments == 1
        assert reopened.stats.corrupt_lines == 1  # the torn half line, quarantined
        assert reopened.append([event()]).appended == 1
    assert first[0]["event_id"] in logged_ids(tmp_path)
    assert read_events(tmp_path).num_rows == 2


def test_a_failed_seal_does_not_fail_a_durable_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = [event()]
    real = os.rename
    failures = []

    def rename(src, dst):
        if str(src).endswith(OPEN_SUFFIX) and not failures:
            failures.append(src)
            raise OSError(errno.EIO, "Input/output error (injected)")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    # Every append fills its segment, so the flush seals it once the batch is durable.
    with LocalEventLog(tmp_path, segment_max_bytes=1, auto_seal=False) as log:
        assert log.append(batch).appended == 1  # durable, so acknowledged: sealing is later
        assert failures
        assert log.append(batch).duplicates == 1
        assert log.append([event()]).appended == 1
    assert read_events(tmp_path).num_rows == 2
    assert not list(tmp_path.glob(f"**/*{OPEN_SUFFIX}"))


class BlockedFsync:
    """Holds a segment's fdatasync until released, then fails it or lets it through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, fail: bool):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail
        real = os.fdatasync

        def fdatasync(fd):
            if not is_segment(fd) or self.entered.is_set():
                return real(fd)
            self.entered.set()
            assert self.release.wait(10)
            if self.fail:
                raise OSError(errno.EIO, "Input/output error (injected)")
            return real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)


def in_thread(log: LocalEventLog, batch: list[dict]) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = log.append(batch)
        except EventLogError as error:
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def retry_while_in_flight(
    log: LocalEventLog, fsync: BlockedFsync, original: list[dict], retry: list[dict]
) -> tuple[dict, dict]:
    """Append ``original``, and ``retry`` while the original's fsync is held: the retry must
    still be waiting 0.3 s later. Then release the fsync; each call's outcome."""
    first_thread, first = in_thread(log, original)
    assert fsync.entered.wait(10)
    retry_thread, second = in_thread(log, retry)
    retry_thread.join(0.3)
    assert retry_thread.is_alive(), f"acknowledged before the original was durable: {second}"
    fsync.release.set()
    first_thread.join(10)
    retry_thread.join(10)
    return first, second


def test_a_duplicate_of_an_event_in_flight_waits_and_fails_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    same = event()
    fsync = BlockedFsync(monkeypatch, fail=True)
    with LocalEventLog(tmp_path, auto_seal=False) as log:
        # A client retrying a timed-out call, with another event beside it.
        first, second = retry_while_in_flight(log, fsync, [same], [same, event()])
        assert "Input/output error" in str(first["error"])
        assert "error" in second, f"acknowledged although the original failed: {second}"
        assert "Input/output error" in str(second["error"])
        assert log.append([same]).appended == 1  # so the client's next retry writes it
    assert read_events(tmp_path).column("event_id").to_pylist().count(same["event_id"]) == 1


def test_a_duplicate_of_an_event_in_flight_is_acknowledged_once_it_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    same = event()
    fsync = BlockedFsync(monkeypatch, fail=False)
    with LocalEventLog(tmp_path, auto_seal=False) as log:
        first, second = retry_while_in_flight(log, fsync, [same], [same])
        assert (first["result"].appended, first["result"].duplicates) == (1, 0)
        assert (second["result"].appended, second["result"].duplicates) == (0, 1)
    assert read_events(tmp_path).num_rows == 1


def test_a_seal_that_fails_at_close_still_releases_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() raises the failed seal, but releases the writer lock: the next writer opens
    the log, recovers the unsealed segment and reads every acknowledged event."""
    batch = [event(), event()]
    real = os.rename

    def rename(src, dst):
        if str(src).endswith(OPEN_SUFFIX):
            raise OSError(errno.EIO, "Input/output error (injected)")
        return real(src, dst)

    log = LocalEventLog(tmp_path, auto_seal=False, lock_timeout=1.0)
    assert log.append(batch).appended == 2
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        log.close()
    monkeypatch.setattr(os, "rename", real)
    with LocalEventLog(tmp_path, auto_seal=False, lock_timeout=1.0) as again:
        assert again.append(batch).duplicates == 2
    assert logged_ids(tmp_path) == sorted(e["event_id"] for e in batch)


def test_a_segment_whose_name_cannot_be_synced_leaves_no_file_or_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recloop.eventlog.local as local

    with LocalEventLog(tmp_path, auto_seal=False) as log:
        log.append([event()])  # the partition's folders exist and are synced
        log.seal()
        real = local._fsync_dir

        def fsync_dir(path):
            raise OSError(errno.EIO, "Input/output error (injected)")

        monkeypatch.setattr(local, "_fsync_dir", fsync_dir)
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(EventLogError):
            log.append([event()])
        assert len(os.listdir("/proc/self/fd")) == before
        assert not list(tmp_path.glob(f"**/*{OPEN_SUFFIX}"))
        monkeypatch.setattr(local, "_fsync_dir", real)
        assert log.append([event()]).appended == 1
