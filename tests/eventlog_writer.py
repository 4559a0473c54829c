"""A writer process for the SIGKILL test: appends from several threads until killed.

After each append returns it prints the batch's event ids on one line, so the parent knows
exactly which events were acknowledged before the kill.
"""

import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta

from recloop.eventlog.local import LocalEventLog

root, threads = sys.argv[1], int(sys.argv[2])
start = datetime(2026, 1, 5, tzinfo=UTC)
printing = threading.Lock()
log = LocalEventLog(root, seal_seconds=0.2, segment_max_bytes=256 * 1024)


def writer(number: int) -> None:
    batch = 0
    while True:
        events = [
            {
                "event_id": str(uuid.uuid4()),
                # Spread over hours so that appends touch several partitions and seal often.
                "ts": start + timedelta(minutes=7 * (batch * 50 + n)),
                "user_id": f"u{number}",
                "item_id": f"i{n}",
                "event_type": "click",
                "context": {"writer": number, "batch": batch},
            }
            for n in range(50)
        ]
        log.append(events)
        with printing:
            sys.stdout.write(",".join(e["event_id"] for e in events) + "\n")
            sys.stdout.flush()
        batch += 1


for number in range(threads):
    threading.Thread(target=writer, args=(number,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
