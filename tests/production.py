"""Isolated production-profile backends for one test: its own Postgres database and its own
Redis database number, both removed afterwards, so tests never see each other's state.

Skips with the reason when the running Postgres or Redis cannot be reached (the only case in
which the production tests may skip)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from recloop.settings import Settings, mask_url

SERVER = os.environ.get("RECLOOP_TEST_POSTGRES_SERVER", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("RECLOOP_TEST_REDIS_SERVER", "redis://127.0.0.1:6379")
CLAIM = "recloop:test-claim"


def _redis_database():
    """A Redis database number nobody uses, claimed with a key (released by FLUSHDB)."""
    import redis

    for number in range(1, 16):
        client = redis.Redis.from_url(f"{REDIS}/{number}", socket_connect_timeout=3)
        if client.dbsize() == 0 and client.set(CLAIM, "1", nx=True, ex=6 * 3600):
            return number, client
        client.close()
    pytest.fail("every Redis database 1-15 holds data: flush the ones a crashed test left")


def postgres_admin():
    """An autocommit connection to the server's ``postgres`` database (to make and drop a
    test's databases); skips the test, with the reason, when the server is unreachable."""
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        pytest.skip(f"Postgres unreachable at {mask_url(SERVER)}: {error}")


@contextmanager
def production_settings(home: Path, **overrides) -> Iterator[Settings]:
    """Production settings whose Postgres database and Redis database are this test's own."""
    redis = pytest.importorskip("redis")
    admin = postgres_admin()
    try:
        number, client = _redis_database()
    except redis.ConnectionError as error:
        admin.close()
        pytest.skip(f"Redis unreachable at {REDIS}: {error}")
    database = f"recloop_test_{uuid.uuid4().hex[:10]}"
    try:
        yield Settings(
            profile="production",
            home=home,
            postgres_url=f"{SERVER}/{database}",
            redis_url=f"{REDIS}/{number}",
            **overrides,
        )
    finally:
        client.flushdb()
        client.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
