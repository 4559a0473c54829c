"""The BentoML service for real: a `recloop serve` process over HTTP, on a simulated world
that went through the real feature pipeline (dbt, gate, Feast) and real training (MLflow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from recloop.settings import Settings
from serving.launch import free_port, wait_ready
from serving.schemas import NewItem
from training import registry
from training.data import UserQuery, item_text

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
KEY = "test-key-1"
HEADERS = {"X-API-Key": KEY}
WORLD = {
    "RECLOOP_SIMULATOR__USERS": "150",
    "RECLOOP_SIMULATOR__ITEMS": "80",
    "RECLOOP_SIMULATOR__DAYS": "4",
    "RECLOOP_TRAINING__MODEL_CONFIG_OVERRIDES": json.dumps({"two_tower": {"epochs": 2}}),
    "RECLOOP_TRAINING__PROTOCOLS": '["P1"]',
}


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECLOOP_")}
    return {**env, **WORLD, "RECLOOP_HOME": str(home), **extra}


def _recloop(home: Path, *args: str) -> None:
    done = subprocess.run([str(BIN / "recloop"), *args], env=_env(home), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, (
        f"recloop {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A home with features applied and popularity, EASE and two_tower versions registered."""
    home = tmp_path_factory.mktemp("serving") / "var"
    _recloop(home, "init")
    _recloop(home, "simulate")
    _recloop(home, "features", "run")
    _recloop(home, "train", "--models", "popularity,ease,two_tower")
    return home


@contextmanager
def serving(home: Path, **settings: str) -> Iterator[httpx.Client]:
    port = free_port()
    env = _env(
        home, RECLOOP_SERVING__API_KEYS=json.dumps([KEY, "other-key"]),
        RECLOOP_SERVING__PORT=str(port), RECLOOP_SERVING__WATCH_SECONDS="0.5", **settings,
    )  # fmt: skip
    log = open(home / f"serve-{port}.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen([str(BIN / "recloop"), "serve"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=30)
    try:
        try:
            wait_ready(str(client.base_url), process, timeout=180)
        except RuntimeError as error:
            raise RuntimeError(f"{error}:\n{(home / log.name).read_text()}") from None
        client.process = process  # type: ignore[attr-defined]
        yield client
    finally:
        client.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def kill_tree(pid: int) -> None:
    """SIGKILL the server and every process under it (BentoML's workers may start their own
    sessions, so a process-group kill can miss the one that holds the event log)."""
    import psutil

    root = psutil.Process(pid)
    processes = [*root.children(recursive=True), root]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)


def _known_user(home: Path) -> str:
    from training import registry

    model = registry.download_model(Settings(home=home), "champion")
    return sorted(model.histories)[0]


def _click(user: str, item: str) -> dict:
    return {"event_id": str(uuid.uuid4()), "ts": datetime.now(UTC).isoformat(),
            "user_id": user, "item_id": item, "event_type": "click"}  # fmt: skip


def test_recommendations_for_known_unknown_and_new_users(world: Path) -> None:
    known = _known_user(world)
    with serving(world) as http:
        ready = http.get("/readyz").json()
        assert ready["ready"] and not ready["models"]["fallback"]
        assert ready["models"]["profile_model"]["kind"] == "two_tower"

        body = http.post("/recommend", json={"user_id": known, "k": 5}).json()
        assert body["served_by"] == "history" and len(body["items"]) == 5
        assert body["model_version"] == ready["models"]["champion"]["version"]
        assert all(item["propensity"] == 1.0 for item in body["items"])  # greedy

        profile = {"age": 30, "occupation": "engineer", "text": "space operas and robots"}
        cold = http.post("/recommend", json={"user_id": "nobody-1", "k": 5, "profile": profile})
        assert cold.json()["served_by"] == "profile"
        assert cold.json()["model_version"] == ready["models"]["profile_model"]["version"]

        new = http.post("/recommend", json={"user_id": "nobody-2", "k": 5}).json()
        assert new["served_by"] == "popularity"

        # A click reaches the next recommendation through Feast's push source at once.
        top = new["items"][0]["item_id"]
        click = _click("nobody-2", top)
        ack = http.post("/feedback", json={"events": [click]}).json()
        assert ack == {"appended": 1, "duplicates": 0, "users_refreshed": 1}
        # Its retry is a duplicate; the same event_id on another item is a client's bug: a 422
        # at the field, not a duplicate that drops the payload.
        again = http.post("/feedback", json={"events": [click]}).json()
        assert again["appended"] == 0 and again["duplicates"] == 1
        reused = http.post("/feedback", json={"events": [{**click, "item_id": "other-item"}]})
        assert reused.status_code == 422, reused.text
        (problem,) = reused.json()["detail"]
        assert problem["field"] == "events.0.event_id" and "other content" in problem["reason"]
        after = http.post("/recommend", json={"user_id": "nobody-2", "k": 5}).json()
        assert after["served_by"] == "fresh_clicks" and after["fresh_clicks"] == 1
        assert top not in [item["item_id"] for item in after["items"]]

        ranked = http.post("/rank", json={"user_id": known, "item_ids": [top, "no-such"]}).json()
        assert [row["known"] for row in ranked["items"]] == [True, False]
        assert ranked["items"][0]["score"] > ranked["items"][1]["score"]

        # Items added after training, known only by their text: a model that reads item text
        # (the champion if it does, else the newest two-tower) answers the whole request, and
        # its scores are the ones that model gives offline.
        new_items = [
            {"item_id": "brand-new-1", "title": "Robots in deep space", "categories": ["Sci-Fi"]},
            {"item_id": "brand-new-2", "title": "Quiet", "text": "A quiet family drama."},
        ]
        ranked = http.post("/rank", json={"user_id": known, "item_ids": [top, "no-such"],
                                          "new_items": new_items}).json()  # fmt: skip
        assert [row["known"] for row in ranked["items"]] == [True, False, False, False]
        assert [row["from_text"] for row in ranked["items"]] == [False, False, True, True]
        models = ready["models"]
        reader = models["champion"] if models["champion"]["kind"] == "two_tower" else models[
            "profile_model"]  # fmt: skip
        assert ranked["model_version"] == reader["version"]
        offline = registry.download_model(Settings(home=world), reader["version"])
        described = [NewItem(**item) for item in new_items]
        texts = [item_text(item.model_dump()) for item in described]
        expected = offline.score_texts(
            [UserQuery(known)], texts, [item.categories for item in described]
        )[0]
        served = [row["score"] for row in ranked["items"][2:]]
        assert served == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-4)
        twice = http.post("/rank", json={"user_id": known, "item_ids": ["brand-new-1"],
                                         "new_items": new_items[:1]})  # fmt: skip
        assert twice.status_code == 422
        assert [row["field"] for row in twice.json()["detail"]] == ["new_items.0.item_id"]
        assert "brand-new-1" not in twice.text  # counted, never quoted
        similar = http.post("/similar_items", json={"item_id": top, "k": 3}).json()
        assert len(similar["items"]) == 3 and top not in [i["item_id"] for i in similar["items"]]
        unknown = http.post("/similar_items", json={"item_id": "no-such"}).json()
        assert unknown["known"] is False and unknown["items"] == []

        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
            response = httpx.post(f"{http.base_url}/recommend", json={"user_id": known},
                                  headers=headers)  # fmt: skip
            assert response.status_code == 401
        assert httpx.get(f"{http.base_url}/healthz").status_code == 200
        response = http.post("/recommend", json={"user_id": known, "k": 1000})
        assert response.status_code == 422 and response.json()["detail"][0]["field"] == "k"
        assert http.get("/metrics").status_code == 200

    # Every served slate was logged as impressions, with propensities and the version.
    from recloop.eventlog import open_event_log

    with open_event_log(Settings(home=world)) as events:
        table = events.read().to_pylist()
    shown = [e for e in table if e["event_type"] == "impression" and e["request_id"] == body[
        "request_id"]]  # fmt: skip
    assert sorted(e["position"] for e in shown) == [0, 1, 2, 3, 4]
    assert {e["model_version"] for e in shown} == {body["model_version"]}
    assert all(e["propensity"] == 1.0 and e["policy"] == "greedy" for e in shown)
    # Greedy: each item in its own slot with certainty, in no other.
    for e in shown:
        assert e["slot_propensities"] == [float(k == e["position"]) for k in range(5)]


def test_an_item_added_after_training_is_recommended_from_its_text(world: Path) -> None:
    """A catalogue item ingested after the last training run reaches /recommend and /rank by
    its id through the feature pipeline's catalogue (dbt's items mart), scored from its text by
    a two_tower champion as that model scores it offline: no retraining in between. (It runs
    before the schemathesis test, whose random feedback names items that do not exist: dbt's
    relationships test then stops any later feature run, as it should.)"""
    from recloop import warehouse
    from recloop.contracts import Item
    from serving.catalogue import read_catalogue

    settings = Settings(home=world)
    client = registry.configure(settings)
    champion = str(registry.alias_version(client, registry.CHAMPION).version)
    versions = client.search_model_versions(f"name = '{registry.MODEL_NAME}'")
    two_tower = max((v for v in versions if v.tags.get("kind") == "two_tower"),
                    key=lambda v: int(v.version))  # fmt: skip
    item = Item(item_id="i-added-later", title="The Galactic Nebula League",
                text="A story of galactic orbit, nebula and a striker league.",
                categories=["space"], created_at=datetime.now(UTC))  # fmt: skip
    warehouse.upsert(settings, "items", [item])
    _recloop(world, "features", "run")
    model = registry.download_model(settings, str(two_tower.version))
    assert item.item_id not in model.item_index
    known = sorted(model.histories)[0]
    registry.set_alias(client, registry.CHAMPION, str(two_tower.version))
    try:
        with serving(world) as http:
            ready = http.get("/readyz").json()
            assert ready["models"]["champion"]["version"] == str(two_tower.version)
            assert ready["catalogue"]["items"] == len(model.item_ids) + 1
            assert ready["catalogue"]["error"] is None
            k = min(len(model.item_ids) + 1 - len(model.histories[known]), 100)
            body = http.post("/recommend", json={"user_id": known, "k": k}).json()
            slate = {row["item_id"]: row["score"] for row in body["items"]}
            text, categories = [item_text(item.model_dump())], [item.categories]
            offline = model.score_texts([UserQuery(known)], text, categories)[0]
            assert slate[item.item_id] == pytest.approx(float(offline[0]), rel=1e-4, abs=1e-4)
            ranked = http.post("/rank", json={"user_id": known,
                                              "item_ids": [item.item_id]}).json()  # fmt: skip
            assert ranked["items"][0]["from_text"] is True
            assert ranked["items"][0]["score"] == pytest.approx(slate[item.item_id], abs=1e-4)
            # Its neighbours by the item tower's vectors, as the model places it offline
            # (the served item table may be int8: cosines agree to about 1e-2).
            similar = http.post("/similar_items", json={"item_id": item.item_id, "k": 3}).json()
            assert similar["known"] is True and len(similar["items"]) == 3
            own = model.text_item_embeddings(text, categories)[0]
            table = model.item_embeddings()
            for row in similar["items"]:
                other = table[model.item_index[row["item_id"]]]
                cosine = own @ other / (np.linalg.norm(own) * np.linalg.norm(other))
                assert row["similarity"] == pytest.approx(float(cosine), abs=0.02)
        # An EASE champion cannot place it, so greedy never shows it; epsilon-greedy's random
        # slates draw it, with no score, from the 20 candidates and every catalogue item EASE
        # never trained on: with epsilon 1, every slate is random, and each item's propensity
        # is 1 / the number of them.
        ease = max((v for v in versions if v.tags.get("kind") == "ease"),
                   key=lambda v: int(v.version))  # fmt: skip
        ease_model = registry.download_model(settings, str(ease.version))
        catalogue = read_catalogue(settings).item_ids
        unscored = [i for i in catalogue if i not in ease_model.item_index]
        assert item.item_id in unscored
        pool = 20 + len(unscored)
        registry.set_alias(client, registry.CHAMPION, str(ease.version))
        with serving(
            world,
            RECLOOP_SERVING__POLICY="epsilon_greedy",
            RECLOOP_SERVING__EPSILON="1.0",
            RECLOOP_SERVING__CANDIDATES="20",
        ) as http:
            assert http.get("/readyz").json()["catalogue"]["items"] == len(catalogue)
            # Enough slates that missing the item in all of them has odds under 1e-6.
            requests = int(np.ceil(np.log(1e-6) / np.log(1 - 10 / pool)))
            shown = []
            for _ in range(requests):
                body = http.post("/recommend", json={"user_id": known, "k": 10}).json()
                assert body["model_version"] == str(ease.version)
                shown += body["items"]
            added = [row for row in shown if row["item_id"] == item.item_id]
            assert added and all(row["score"] is None for row in added)
            assert all(row["propensity"] == pytest.approx(1 / pool) for row in shown)
            assert all((row["score"] is None) == (row["item_id"] in unscored) for row in shown)
        # Thompson sampling draws it too: no impressions yet, so the pooled-CTR prior alone.
        with serving(world, RECLOOP_SERVING__POLICY="thompson",
                     RECLOOP_SERVING__CANDIDATES="20") as http:  # fmt: skip
            added = []
            for _ in range(300):
                body = http.post("/recommend", json={"user_id": known, "k": 10}).json()
                added = [row for row in body["items"] if row["item_id"] == item.item_id]
                if added:
                    break
            assert added, "Thompson sampling never showed the new item in 300 slates"
            assert added[0]["score"] is None and 0 < added[0]["propensity"] <= 1
        with serving(world) as http:  # greedy, the default: never
            for _ in range(5):
                body = http.post("/recommend", json={"user_id": known, "k": 10}).json()
                assert all(row["score"] is not None for row in body["items"])
    finally:
        registry.set_alias(client, registry.CHAMPION, champion)


def test_alias_change_swaps_versions_with_no_failed_request(world: Path) -> None:
    from training import registry

    known = _known_user(world)
    settings = Settings(home=world)
    client = registry.configure(settings)
    champion = str(registry.alias_version(client, registry.CHAMPION).version)
    versions = sorted(str(v.version) for v in client.search_model_versions(
        f"name = '{registry.MODEL_NAME}'"))  # fmt: skip
    other = next(v for v in versions if v != champion)
    # (status, version, sent, answered): four clients' requests, in the order answered.
    seen: list[tuple[int, str | None, float, float]] = []
    stop = threading.Event()
    with serving(world, RECLOOP_SERVING__POLICY="plackett_luce") as http:

        def hammer() -> None:
            with httpx.Client(base_url=http.base_url, headers=HEADERS, timeout=30) as own:
                while not stop.is_set():
                    sent = time.monotonic()
                    r = own.post("/recommend", json={"user_id": known, "k": 5})
                    answer = (r.status_code, r.json().get("model_version"))
                    seen.append((*answer, sent, time.monotonic()))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            registry.set_alias(client, registry.CHAMPION, other)
            deadline = time.monotonic() + 60
            while not seen or seen[-1][1] != other:
                assert time.monotonic() < deadline, "the new champion was never served"
                time.sleep(0.2)
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            registry.set_alias(client, registry.CHAMPION, champion)
    assert {status for status, *_ in seen} == {200}
    served = [version for _, version, *_ in seen]
    assert served[0] == champion and served[-1] == other
    # Once the new version has answered, no request sent after that gets the old one (an
    # atomic swap). Requests sent before it may still come back with the old version: they
    # were answered by the model set they started with.
    first_new = min(answered for _, version, _, answered in seen if version == other)
    assert {version for _, version, sent, _ in seen if sent > first_new} == {other}


def test_schemathesis_finds_no_server_error(world: Path) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    with serving(world) as http:
        schema = schemathesis.openapi.from_url(f"{http.base_url}/docs.json")
        failures = []
        for operation in schema.get_all_operations():
            op = operation.ok()

            @given(case=op.as_strategy())
            @settings(max_examples=25, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def check(case) -> None:
                response = case.call(headers=HEADERS)
                try:
                    case.validate_response(
                        response, checks=[not_a_server_error, response_schema_conformance]
                    )
                except Exception as error:  # schemathesis' failure groups, reported below
                    failures.append(f"{case.path}: {error}")

            check()
        assert not failures, "\n".join(failures[:5])


def test_sigkill_during_feedback_loses_no_acknowledged_event(world: Path) -> None:
    acknowledged: list[str] = []
    stop = threading.Event()
    with serving(world) as http:

        def load(worker: int) -> None:
            with httpx.Client(base_url=http.base_url, headers=HEADERS, timeout=10) as own:
                n = 0
                while not stop.is_set():
                    batch = [_click(f"crash-{worker}", f"i{n % 50:05d}") for _ in range(20)]
                    n += 1
                    try:
                        response = own.post("/feedback", json={"events": batch})
                    except httpx.TransportError:
                        return  # the server died mid-request: not acknowledged
                    if response.status_code == 200:
                        acknowledged.extend(e["event_id"] for e in batch)

        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        kill_tree(http.process.pid)  # type: ignore[attr-defined]
        stop.set()
        for thread in threads:
            thread.join()
    assert len(acknowledged) > 100

    from recloop.eventlog import open_event_log

    # Opening the log recovers what the dead writer left (cut torn lines, seal segments).
    with open_event_log(Settings(home=world)) as events:
        ids = [str(e) for e in events.read().column("event_id").to_pylist()]
    counts = {event_id: 0 for event_id in acknowledged}
    for event_id in ids:
        if event_id in counts:
            counts[event_id] += 1
    assert set(counts.values()) == {1}, "an acknowledged event is missing or duplicated"
