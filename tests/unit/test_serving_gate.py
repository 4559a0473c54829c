"""The ASGI gate in front of the API: keys, body size, 422 naming the field, readyz."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.http import ApiGate, key_matches
from serving.schemas import RecommendRequest


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
