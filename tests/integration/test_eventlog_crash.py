"""SIGKILL a writer mid-append: no acknowledged event is lost, no reader sees a torn record."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recloop.eventlog.local import LocalEventLog, read_events

WRITER = Path(__file__).resolve().parents[1] / "eventlog_writer.py"


@pytest.mark.integration
@pytest.mark.parametrize("kill_after_s", [0.3, 0.9, 1.7])
def test_sigkill_mid_append_loses_no_acknowledged_event(tmp_path: Path, kill_after_s) -> None:
    process = subprocess.Popen(
        [sys.executable, str(WRITER), str(tmp_path), "4"],
        stdout=subprocess.PIPE,
    )
    acknowledged: set[str] = set()
    try:
        assert process.stdout.readline().strip() == b"ready"
        fd = process.stdout.fileno()
        os.set_blocking(fd, False)
        chunks = []
        deadline = time.monotonic() + kill_after_s
        while time.monotonic() < deadline:
            try:
                chunks.append(os.read(fd, 1 << 20))
            except BlockingIOError:
                time.sleep(0.01)
        # Kill while the writer threads are still appending, then take every line it had
        # printed: each was printed only after its append returned.
        process.send_signal(signal.SIGKILL)
        process.wait()
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        buffered = b"".join(chunks).decode()
    finally:
        if process.poll() is None:
            process.kill()
    for line in buffered.split("\n")[:-1]:  # the last piece may be a half-printed line
        acknowledged.update(line.split(","))
    acknowledged.discard("")
    assert len(acknowledged) >= 200, "the writer should have appended for a while"

    # A reader before recovery: only sealed segments, every record whole.
    before = read_events(tmp_path)
    assert before.num_rows == len(set(before.column("event_id").to_pylist()))

    with LocalEventLog(tmp_path) as log:  # recovery seals what the dead writer left open
        table = log.read()
    logged = table.column("event_id").to_pylist()
    assert len(logged) == len(set(logged)), "an event was logged twice"
    missing = acknowledged - set(logged)
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert not list(tmp_path.glob("**/*.open"))
