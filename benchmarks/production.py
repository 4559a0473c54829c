"""Production-profile backends of a benchmark's own: a fresh Postgres database and an empty
Redis database, both removed afterwards (the benchmarks' counterpart of tests/production.py)."""

from __future__ import annotations

import argparse
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recloop.settings import Settings


def add_production_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default="postgresql://postgres@127.0.0.1:5432",
        help="Postgres server (a database of the benchmark's own is made)",
    )
    parser.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/15",
        help="a Redis database of its own: must be empty, flushed after",
    )


@contextmanager
def production_settings(server: str, redis_url: str) -> Iterator[Settings]:
    import psycopg
    import redis

    database = f"recloop_bench_{uuid.uuid4().hex[:8]}"
    home = Path(tempfile.mkdtemp(prefix="recloop-bench-")) / "var"
    store = redis.Redis.from_url(redis_url)
    if store.dbsize():
        raise SystemExit(f"{redis_url} holds data: give the benchmark an empty database")
    try:
        yield Settings(profile="production", home=home, redis_url=redis_url,
                       postgres_url=f"{server}/{database}")  # fmt: skip
    finally:
        store.flushdb()
        store.close()
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
