"""The request models' rules that span fields: each error sits at the field to fix (the
gate's 422 names it), never at the whole event or body, and never quotes the input."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.http import ApiGate
from serving.schemas import (
    FUTURE_TOLERANCE,
    FeedbackRequest,
    RankRequest,
    RecommendRequest,
    SimilarItemsRequest,
)


def event(**changes) -> dict:
    return {"event_id": str(uuid.uuid4()), "ts": datetime.now(UTC).isoformat(),
            "user_id": "u1", "item_id": "i1", "event_type": "click", **changes}  # fmt: skip


def errors(model, body: dict) -> dict[str, str]:
    """{field path: reason} as the gate renders a 422 (serving/http.py)."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return {
        ".".join(str(p) for p in e["loc"]) or "body": e["msg"]
        for e in caught.value.errors(include_input=False, include_url=False)
    }


def test_the_future_tolerance_is_the_data_gates() -> None:
    from recloop.features.gate import FUTURE_MINUTES

    assert timedelta(minutes=FUTURE_MINUTES) == FUTURE_TOLERANCE


def test_events_dated_past_the_gates_tolerance_are_refused_at_their_ts() -> None:
    now = datetime.now(UTC)
    soon = (now + FUTURE_TOLERANCE - timedelta(seconds=30)).isoformat()  # clock skew: allowed
    late = (now + FUTURE_TOLERANCE + timedelta(minutes=1)).isoformat()
    found = errors(FeedbackRequest, {"events": [event(ts=soon), event(), event(ts=late)]})
    assert list(found) == ["events.2.ts"]
    assert "future" in found["events.2.ts"] and late not in found["events.2.ts"]
    assert errors(FeedbackRequest, {"events": [event(ts="2099-01-05T12:00:00Z")]}).keys() == {
        "events.0.ts"
    }
    accepted = [event(ts=soon), event(ts="2020-01-01T00:00:00Z")]
    assert len(FeedbackRequest.model_validate({"events": accepted}).events) == 2


def test_the_contracts_rules_across_fields_name_the_field() -> None:
    body = {"events": [event(), event(event_type="rating")]}
    assert errors(FeedbackRequest, body) == {"events.1.value": "a rating event needs a value"}
    impression = event(event_type="impression", position=0)
    assert errors(FeedbackRequest, {"events": [impression]}) == {
        "events.0.event_type": "impressions are logged by the service, not posted"
    }
    slots = event(slot_propensities=[0.5], position=0, propensity=0.5)
    assert list(errors(FeedbackRequest, {"events": [slots]})) == ["events.0.slot_propensities"]
    # A plain field error is left as pydantic places it.
    assert list(errors(FeedbackRequest, {"events": [event(position=-1)]})) == ["events.0.position"]


def test_rank_candidates_errors_name_the_field_and_never_the_ids() -> None:
    assert errors(RankRequest, {"user_id": "u1"}) == {
        "item_ids": "give at least one candidate (or new_items)"
    }
    body = {
        "user_id": "u1", "item_ids": ["secret-a", "b"],
        "new_items": [{"item_id": "c", "title": "t"}, {"item_id": "secret-a", "title": "t"},
                      {"item_id": "c", "title": "t"}],
    }  # fmt: skip
    found = errors(RankRequest, body)
    assert list(found) == ["new_items.1.item_id", "new_items.2.item_id"]
    assert all("2 repeated" in reason and "secret" not in reason for reason in found.values())
    assert "new_items" in found["new_items.1.item_id"]  # tests/integration/test_serving.py reads it
    too_many = {"user_id": "u1", "item_ids": [f"i{n}" for n in range(1000)],
                "new_items": [{"item_id": "n", "title": "t"}]}  # fmt: skip
    assert list(errors(RankRequest, too_many)) == ["item_ids"]


def test_the_gates_422_names_the_fields_without_echoing_input() -> None:
    async def accept(request):
        return JSONResponse({})

    app = Starlette(routes=[Route(f"/{n}", accept, methods=["POST"]) for n in ("rank", "feedback")])
    http = TestClient(ApiGate(
        app, keys=["alpha"], max_body_bytes=10_000,
        models={"rank": RankRequest, "feedback": FeedbackRequest}, status=lambda: {"ready": True},
    ))  # fmt: skip
    key = {"X-API-Key": "alpha"}
    rank = {"user_id": "u1", "item_ids": ["secret-id"],
            "new_items": [{"item_id": "secret-id", "title": "t"}]}  # fmt: skip
    response = http.post("/rank", json=rank, headers=key)
    assert response.status_code == 422 and "secret" not in response.text
    assert [row["field"] for row in response.json()["detail"]] == ["new_items.0.item_id"]
    feedback = {"events": [event(event_type="rating", user_id="secret-user"),
                           event(ts="2099-01-01T00:00:00Z")]}  # fmt: skip
    response = http.post("/feedback", json=feedback, headers=key)
    assert response.status_code == 422 and "secret" not in response.text
    assert "2099" not in response.text
    assert [row["field"] for row in response.json()["detail"]] == ["events.0.value", "events.1.ts"]


NUL = "must not contain NUL characters"


def test_request_strings_refuse_nul_at_the_field() -> None:
    # /recommend logs user_id and context without validating again (model_construct), and the
    # Postgres event log refuses NUL: one such request would sink the shared impression batch.
    found = errors(RecommendRequest, {"user_id": "u\x001", "context": {"device": "mo\x00bile"},
                                      "profile": {"text": "\x00", "gender": "\x00"}})  # fmt: skip
    assert found == {
        "user_id": f"Value error, {NUL}",
        "context.device": f"Value error, {NUL}",
        "profile.gender": f"Value error, {NUL}",
        "profile.text": f"Value error, {NUL}",
    }
    rank = {"user_id": "u1", "item_ids": ["i1", "i\x002"],
            "new_items": [{"item_id": "n", "title": "\x00", "categories": ["a", "\x00"],
                           "text": "t\x00"}]}  # fmt: skip
    assert set(errors(RankRequest, rank)) == {
        "item_ids.1", "new_items.0.title", "new_items.0.categories.1", "new_items.0.text"
    }  # fmt: skip
    assert list(errors(SimilarItemsRequest, {"item_id": "\x00"})) == ["item_id"]
    # The bounds keep their own wording ahead of NoNul.
    assert errors(RecommendRequest, {"user_id": "u1", "context": {"device": "d" * 65}}) == {
        "context.device": "String should have at most 64 characters"
    }


def test_feedback_events_refuse_nul_non_finite_context_and_out_of_range_ts() -> None:
    body = {"events": [event(user_id="u\x00"), event(context={"device": {"k\x00": 1}}),
                       event(request_id="\x00"), event(ts="0001-01-01T00:00:00Z"),
                       event(ts="0001-01-01T00:00:00+14:00")]}  # fmt: skip
    assert errors(FeedbackRequest, body) == {
        "events.0.user_id": f"Value error, {NUL}",
        "events.1.context": f"Value error, {NUL}",
        "events.2.request_id": f"Value error, {NUL}",
        "events.3.ts": "Value error, is before 1970-01-01 UTC (the Unix epoch)",
        "events.4.ts": "Value error, is out of range once converted to UTC",
    }
    # NaN and Infinity as the JSON parser takes them (pydantic reads them by default).
    raw = json.dumps({"events": [event(context={"x": 1, "y": [2]})]})
    for literal in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValidationError) as caught:
            FeedbackRequest.model_validate_json(raw.replace('"x": 1', f'"x": {literal}'))
        ((loc, message),) = [(e["loc"], e["msg"]) for e in caught.value.errors()]
        assert loc == ("events", 0, "context") and "finite numbers only" in message


def test_the_gate_answers_422_for_nul_and_an_overflowing_ts() -> None:
    async def accept(request):
        return JSONResponse({})

    names = ("recommend", "feedback")
    app = Starlette(routes=[Route(f"/{n}", accept, methods=["POST"]) for n in names])
    http = TestClient(ApiGate(
        app, keys=["alpha"], max_body_bytes=10_000,
        models={"recommend": RecommendRequest, "feedback": FeedbackRequest},
        status=lambda: {"ready": True},
    ))  # fmt: skip
    key = {"X-API-Key": "alpha"}
    body = {"user_id": "secret\x00", "context": {"device": "x\x00"}}
    response = http.post("/recommend", json=body, headers=key)
    assert response.status_code == 422 and "secret" not in response.text
    assert [row["field"] for row in response.json()["detail"]] == ["user_id", "context.device"]
    # astimezone(UTC) overflows here: it used to escape the gate (a 500).
    late = {
        "events": [event(ts="0001-01-01T00:00:00+14:00"), event(ts="9999-12-31T23:59:59-14:00")]
    }
    response = http.post("/feedback", json=late, headers=key)
    assert response.status_code == 422
    assert [row["field"] for row in response.json()["detail"]] == ["events.0.ts", "events.1.ts"]
