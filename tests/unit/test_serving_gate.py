"""The ASGI gate in front of the API: keys, body size, 422 naming the field, readyz; and what
readyz reports (the engine's status), and which requests leave the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from recloop.contracts import Event
from recloop.settings import Settings
from serving import engine as engine_module
from serving.catalogue import Catalogue
from serving.engine import Engine, ImpressionWriter, PublishedCatalogue
from serving.http import ApiGate, key_matches
from serving.policies import Greedy
from serving.schemas import NewItem, Profile, RankRequest, RecommendRequest


async def _echo(request):
    return JSONResponse({"body": (await request.json())})


async def _health(request):
    return JSONResponse({"ok": True})


def client(ready: bool = True) -> TestClient:
    app = Starlette(
        routes=[Route("/recommend", _echo, methods=["POST"]), Route("/healthz", _health)]
    )
    gated = ApiGate(
        app, keys=["alpha", "beta"], max_body_bytes=2048,
        models={"recommend": RecommendRequest}, status=lambda: {"ready": ready},
    )  # fmt: skip
    return TestClient(gated)


def test_keys_are_required_on_the_api_but_not_on_health() -> None:
    http = client()
    assert http.get("/healthz").status_code == 200
    body = {"user_id": "u1"}
    assert http.post("/recommend", json=body).status_code == 401
    assert http.post("/recommend", json=body, headers={"X-API-Key": "gamma"}).status_code == 401
    assert http.post("/recommend", json=body, headers={"X-API-Key": "beta"}).status_code == 200
    bearer = {"Authorization": "Bearer alpha"}
    assert http.post("/recommend", json=body, headers=bearer).json() == {"body": body}


def test_invalid_bodies_get_422_naming_the_field_without_echoing_input() -> None:
    http = client()
    response = http.post(
        "/recommend", json={"user_id": "u1", "k": 0, "profile": {"age": 400, "text": "secret"}},
        headers={"X-API-Key": "alpha"},
    )  # fmt: skip
    assert response.status_code == 422
    fields = {row["field"] for row in response.json()["detail"]}
    assert fields == {"k", "profile.age"}
    assert "secret" not in response.text and "400" not in response.text


def test_oversized_bodies_are_refused() -> None:
    http = client()
    big = {"user_id": "u1", "profile": {"text": "x" * 5000}}
    response = http.post("/recommend", json=big, headers={"X-API-Key": "alpha"})
    assert response.status_code == 413


def test_readyz_reports_the_status() -> None:
    assert client(ready=True).get("/readyz").json() == {"ready": True}
    assert client(ready=False).get("/readyz").status_code == 503


def test_the_gate_refuses_to_run_without_keys() -> None:
    with pytest.raises(ValueError, match=r"serving\.api_keys"):
        ApiGate(None, keys=[], max_body_bytes=10, models={}, status=dict)


def test_key_matching() -> None:
    import hashlib

    digests = [hashlib.sha256(b"k1").digest()]
    assert key_matches("k1", digests)
    assert not key_matches("k2", digests) and not key_matches("", digests)
    assert not key_matches(None, digests)


# -- what /readyz says: the engine's status ----------------------------------------------------

SECRET_URI = "postgresql://mlflow:hunter2@db.internal:5432/mlflow"


class Models:
    champion = challenger = profile = None  # no text model: nothing to encode

    def describe(self) -> dict:
        return {"champion": {"version": "3"}}


class Watcher:
    def __init__(self, error: Exception | None = None) -> None:
        self.current = Models()
        self.last_error: str | None = None
        self.error = error

    def refresh(self) -> None:
        if self.error is not None:
            raise self.error


class Impressions:
    def __init__(self) -> None:
        self.failing, self.failures = False, 0

    def pending(self) -> int:
        return 0


def bare_engine(watcher: Watcher | None = None) -> Engine:
    """An engine with only what status, the watch loop and off_the_loop read (no Feast,
    event log or registry)."""
    engine = object.__new__(Engine)
    engine.settings = Settings(mlflow_tracking_uri=SECRET_URI)
    engine.policy = Greedy()
    engine.watcher = watcher or Watcher()
    engine.published = PublishedCatalogue(Catalogue(), frozenset())
    engine.catalogue_error = engine.catalogue_error_shown = None
    engine._catalogue_due = 0.0
    engine._text_lock = threading.Lock()
    engine.impressions = Impressions()
    return engine


def test_readyz_names_a_failure_by_its_class_and_the_log_has_the_rest(monkeypatch, caplog) -> None:
    class OperationalError(Exception):
        pass

    error = OperationalError(f"connection to {SECRET_URI} failed: user mlflow, host db.internal")
    engine = bare_engine(Watcher(error))
    monkeypatch.setattr(engine, "_refresh_item_counts", lambda: None)
    monkeypatch.setattr(engine, "_refresh_catalogue", lambda: None)
    rounds = iter([False, True])  # one round of the watch loop
    engine._stop = type("Stop", (), {"wait": lambda self, seconds: next(rounds)})()

    def unreadable(settings):
        raise FileNotFoundError("/srv/secret-home/feast_items.parquet does not exist")

    with caplog.at_level(logging.WARNING, logger="recloop.serving"):
        engine._watch_loop()
        monkeypatch.setattr(engine_module, "read_catalogue", unreadable)
        Engine._refresh_catalogue(engine)
    status = engine.status()
    assert status["last_refresh_error"] == "OperationalError (see the service log)"
    assert status["catalogue"]["error"] == "FileNotFoundError (see the service log)"
    shown = str(status)
    assert "hunter2" not in shown and "db.internal" not in shown and "secret-home" not in shown
    logged = caplog.text
    assert "OperationalError: connection to *** failed: user mlflow, host db.internal" in logged
    assert "Traceback" in logged  # of the refresh: an error, where a read is a warning
    assert "FileNotFoundError: /srv/secret-home/feast_items.parquet does not exist" in logged
    assert "hunter2" not in logged and SECRET_URI not in logged


def test_readyz_is_unready_while_impressions_cannot_be_logged() -> None:
    engine = bare_engine()
    assert engine.status()["ready"] and engine.status()["reason"] is None
    engine.impressions.failing, engine.impressions.failures = True, 7
    status = engine.status()
    assert not status["ready"] and "impressions" in status["reason"]
    assert status["impression_failures"] == 7


class FlakyLog:
    """An event log whose appends fail while ``failing`` tries remain."""

    def __init__(self, failing: int) -> None:
        self.failing, self.tries = failing, 0
        self.logged: list[Event] = []

    def append(self, events) -> None:
        self.tries += 1
        if self.failing > 0:
            self.failing -= 1
            raise OSError(28, "No space left on device")
        self.logged.extend(events)


def impressions(n: int, user: str = "u-secret") -> list[Event]:
    return [
        Event(event_id=uuid.uuid4(), ts=datetime.now(UTC), user_id=user, item_id=f"i{i}",
              event_type="impression", position=i, propensity=1.0)
        for i in range(n)
    ]  # fmt: skip


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_failed_impression_append_is_retried_before_it_counts(monkeypatch) -> None:
    monkeypatch.setattr(ImpressionWriter, "RETRY_SECONDS", (0.0, 0.0))
    log = FlakyLog(failing=2)  # the third try succeeds
    writer = ImpressionWriter(log, 0.001)
    writer.put(impressions(3))
    wait_for(lambda: len(log.logged) == 3)
    writer.close()
    assert log.tries == 3 and writer.failures == 0 and not writer.failing


def test_impressions_that_fail_every_try_are_counted_until_an_append_succeeds(
    monkeypatch, caplog
) -> None:
    monkeypatch.setattr(ImpressionWriter, "RETRY_SECONDS", (0.0, 0.0))
    monkeypatch.setattr(ImpressionWriter, "PROBE_SECONDS", 3600.0)  # no probe: see below
    log = FlakyLog(failing=3)  # every try of the first batch
    writer = ImpressionWriter(log, 0.001)
    with caplog.at_level(logging.ERROR, logger="recloop.serving"):
        writer.put(impressions(4))
        wait_for(lambda: writer.failing)
    assert writer.failures == 4 and log.tries == 3 and log.logged == []
    assert "could not log 4 impressions after 3 tries (OSError)" in caplog.text
    assert "u-secret" not in caplog.text and "i0" not in caplog.text
    writer.put(impressions(2))  # the log works again: so does the service
    wait_for(lambda: len(log.logged) == 2)
    writer.close()
    assert not writer.failing and writer.failures == 4


def test_an_idle_writer_tries_the_dropped_batch_again(monkeypatch) -> None:
    """An unready instance may get no traffic, hence no new impressions: the dropped batch
    itself tries the log again, and once it is logged the instance is ready again."""
    monkeypatch.setattr(ImpressionWriter, "RETRY_SECONDS", (0.0, 0.0))
    monkeypatch.setattr(ImpressionWriter, "PROBE_SECONDS", 0.05)
    log = FlakyLog(failing=5)  # the batch's 3 tries and the first probe's first 2
    writer = ImpressionWriter(log, 0.001)
    writer.put(impressions(4))
    wait_for(lambda: len(log.logged) == 4)
    writer.close()
    assert not writer.failing and writer.failures == 0 and log.tries == 6


# -- which requests leave the event loop -------------------------------------------------------


def test_requests_that_encode_text_leave_the_event_loop() -> None:
    engine = bare_engine()
    assert not engine.off_the_loop(RecommendRequest(user_id="u1"))
    assert not engine.off_the_loop(RecommendRequest(user_id="u1", profile=Profile(age=30)))
    assert engine.off_the_loop(RecommendRequest(user_id="u1", profile=Profile(text="films")))
    assert not engine.off_the_loop(RankRequest(user_id="u1", item_ids=["i1"]))
    assert engine.off_the_loop(
        RankRequest(user_id="u1", new_items=[NewItem(item_id="n1", title="A film")])
    )
    # While the encoder holds the text lock, any request that may take it waits in a thread.
    with engine._text_lock:
        assert engine.off_the_loop(RecommendRequest(user_id="u1"))
    engine.encoding_texts = True  # the watch thread, between two chunks
    assert engine.off_the_loop(RecommendRequest(user_id="u1"))


def test_the_service_encodes_in_a_thread_and_the_loop_stays_free() -> None:
    import anyio

    from serving.service import Recommender

    class SlowTextEngine:
        """Encoding a profile's text takes 0.3 s; anything else answers at once."""

        def off_the_loop(self, request) -> bool:
            return request.profile is not None

        def recommend(self, request) -> dict:
            if request.profile is not None:
                time.sleep(0.3)
            return {"request_id": "r", "user_id": threading.current_thread().name, "items": [],
                    "model_version": "1", "policy": "greedy", "arm": "champion",
                    "served_by": "history", "fresh_clicks": 0}  # fmt: skip

    service = object.__new__(Recommender.inner)  # no Engine(): only the API methods
    service.engine = SlowTextEngine()
    service._text_threads = anyio.CapacityLimiter(2)

    async def scenario() -> tuple[str, str, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        slow = await service.recommend(RecommendRequest(user_id="u1", profile={"text": "x"}))
        fast = await service.recommend(RecommendRequest(user_id="u1"))
        ticker.cancel()
        return slow.user_id, fast.user_id, ticks

    slow_thread, fast_thread, ticks = asyncio.run(scenario())
    assert slow_thread != threading.main_thread().name  # encoded in a worker thread
    assert fast_thread == threading.main_thread().name  # the fast path stays on the loop
    assert ticks >= 10  # the loop ran other work while the text was encoded
