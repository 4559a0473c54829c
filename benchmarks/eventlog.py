"""Durable appends per second to the local event log, against the same appends without fsync.

One writer, batches of 100 events given as plain dicts (so validation is measured, as in the
service's /feedback path). Each round starts from an empty log; rounds alternate between the
durable and the reference configuration and the median is reported.

Also measured: four writer threads appending batches of 10, where group commit lets them share
flushes, against the same four threads without fsync.

    .venv/bin/python -m benchmarks.eventlog --json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from benchmarks.results import Row, add_output_options, publish
from recloop.eventlog.local import LocalEventLog

START = datetime(2026, 1, 5, tzinfo=UTC)


def make_batches(batches: int, size: int) -> list[list[dict]]:
    return [
        [
            {
                "event_id": str(uuid.uuid4()),
                "ts": (START + timedelta(seconds=b * size + n)).isoformat(),
                "user_id": f"u{n % 97}",
                "item_id": f"i{(b * 7 + n) % 1000}",
                "event_type": "impression",
                "request_id": f"r{b}",
                "position": n % 10,
                "propensity": 0.25,
                "model_version": "7",
                "policy": "plackett_luce",
                "context": {"hour": 20, "device": "mobile"},
            }
            for n in range(size)
        ]
        for b in range(batches)
    ]


def one_writer(batches: list[list[dict]], fsync: bool) -> float:
    with tempfile.TemporaryDirectory() as root:
        log = LocalEventLog(root, fsync=fsync, seal_seconds=3600)
        started = time.perf_counter()
        for batch in batches:
            log.append(batch)
        elapsed = time.perf_counter() - started
        log.close()
    return sum(len(batch) for batch in batches) / elapsed


def four_writers(batches: list[list[dict]], fsync: bool) -> float:
    with tempfile.TemporaryDirectory() as root:
        log = LocalEventLog(root, fsync=fsync, seal_seconds=3600)
        shares = [batches[n::4] for n in range(4)]
        threads = [
            threading.Thread(target=lambda s=share: [log.append(b) for b in s]) for share in shares
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        log.close()
    return sum(len(batch) for batch in batches) / elapsed


def measure(rounds: int) -> list[Row]:
    big = make_batches(300, 100)
    small = make_batches(1000, 10)
    results: dict[str, list[float]] = {"durable": [], "nosync": [], "durable4": [], "nosync4": []}
    for _ in range(rounds):
        results["durable"].append(one_writer(big, fsync=True))
        results["nosync"].append(one_writer(big, fsync=False))
        results["durable4"].append(four_writers(small, fsync=True))
        results["nosync4"].append(four_writers(small, fsync=False))
    median = {key: statistics.median(values) for key, values in results.items()}
    return [
        Row(
            "eventlog",
            "durable_appends_per_s",
            median["durable"],
            "events/s",
            "same appends without fsync",
            median["nosync"],
            protocol=f"1 writer, batches of 100, fsync per append, median of {rounds}",
        ),
        Row(
            "eventlog",
            "durable_appends_per_s_4_writers_batch_10",
            median["durable4"],
            "events/s",
            "same appends without fsync",
            median["nosync4"],
            protocol=f"4 threads, batches of 10, group commit, median of {rounds}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="repetitions (median reported)")
    add_output_options(parser)
    args = parser.parse_args()
    publish(
        measure(args.rounds),
        args,
        lambda row: (
            f"{row.metric}: {row.value:,.0f} {row.unit} ({row.ratio:.2f} x {row.reference})"
        ),
    )


if __name__ == "__main__":
    main()
