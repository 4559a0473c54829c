import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from recloop.contracts import (
    EVENT_COLUMNS,
    Event,
    Item,
    User,
    arrow_schema,
    duckdb_columns,
    to_table,
    validate_rows,
)

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def event(**changes):
    row = {
        "event_id": str(uuid.uuid4()),
        "ts": NOW.isoformat(),
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "impression",
        "position": 0,
        "propensity": 0.5,
        "context": {"device": "mobile"},
    }
    row.update(changes)
    return row


def test_valid_rows_pass_and_timestamps_become_utc() -> None:
    result = validate_rows(Event, [event(ts="2026-01-05T13:00:00+01:00")])
    assert not result.rejected
    assert result.valid[0].ts == NOW
    assert result.valid[0].ts.tzinfo == UTC
    # An impression's propensity in every slot of its slate: 0 is allowed (a slot the policy
    # never puts it in), and its own slot's is its propensity.
    slots = validate_rows(Event, [event(position=1, slot_propensities=[0.0, 0.5, 0.25])])
    assert slots.valid[0].slot_propensities == [0.0, 0.5, 0.25]


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"ts": "2026-01-05T12:00:00"}, "ts", "time zone"),
        ({"ts": "yesterday"}, "ts", "datetime"),
        ({"event_id": "not-a-uuid"}, "event_id", "UUID"),
        ({"user_id": ""}, "user_id", "at least 1"),
        ({"event_type": "teleport"}, "event_type", "impression"),
        ({"propensity": 0.0}, "propensity", "greater than 0"),
        ({"propensity": 1.5}, "propensity", "less than or equal to 1"),
        ({"position": -1}, "position", "greater than or equal to 0"),
        ({"position": None}, "position", "slot"),
        ({"event_type": "rating", "value": 7}, "value", "outside"),
        ({"event_type": "rating", "value": None}, "value", "needs a value"),
        ({"value": float("nan")}, "value", "finite"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
        ({"slot_propensities": [0.4, 0.1]}, "slot_propensities", "is not the propensity"),
        ({"slot_propensities": []}, "slot_propensities", "none for position 0"),
        ({"slot_propensities": [0.5, 1.2]}, "slot_propensities.1", "less than or equal to 1"),
        ({"slot_propensities": [0.5, -0.1]}, "slot_propensities.1", "greater than or equal"),
        (
            {"event_type": "click", "slot_propensities": [0.5]},
            "slot_propensities",
            "only an impression",
        ),
        # Postgres text and jsonb refuse NUL: every string of an event, context included.
        ({"user_id": "u\x001"}, "user_id", "must not contain NUL characters"),
        ({"item_id": "\x00"}, "item_id", "must not contain NUL characters"),
        ({"request_id": "r\x00"}, "request_id", "must not contain NUL characters"),
        ({"model_version": "3\x00"}, "model_version", "must not contain NUL characters"),
        ({"policy": "greedy\x00"}, "policy", "must not contain NUL characters"),
        ({"context": {"device": "mo\x00bile"}}, "context", "must not contain NUL characters"),
        ({"context": {"dev\x00ice": "mobile"}}, "context", "must not contain NUL characters"),
        ({"context": {"a": [{"b\x00": 1}]}}, "context", "must not contain NUL characters"),
        ({"context": {"a": {"b": ["\x00"]}}}, "context", "must not contain NUL characters"),
        # JSON (and jsonb) has no NaN or Infinity.
        ({"context": {"x": float("nan")}}, "context", "finite numbers only"),
        ({"context": {"x": [1.0, float("-inf")]}}, "context", "finite numbers only"),
        ({"context": {"x": {"y": float("inf")}}}, "context", "finite numbers only"),
        ({"context": {"x": {1: "one"}}}, "context", "keys must be strings"),
        ({"context": {"x": {1, 2}}}, "context", "JSON values only, not set"),
        # pandas reads ts as datetime64[ns] (from 1677): the contract starts at the epoch.
        ({"ts": "0001-01-01T00:00:00Z"}, "ts", "before 1970-01-01 UTC (the Unix epoch)"),
        ({"ts": "1969-12-31T23:59:59.999999Z"}, "ts", "before 1970-01-01 UTC"),
        ({"ts": "1970-01-01T00:59:59+01:00"}, "ts", "before 1970-01-01 UTC"),
        # Converting these to UTC overflows datetime: a rejection, not an OverflowError.
        ({"ts": "0001-01-01T00:00:00+14:00"}, "ts", "out of range once converted to UTC"),
        ({"ts": "9999-12-31T23:59:59-14:00"}, "ts", "out of range once converted to UTC"),
    ],
)
def test_broken_rows_are_rejected_with_field_and_reason(changes, field, reason) -> None:
    result = validate_rows(Event, [event(), event(**changes)])
    assert len(result.valid) == 1
    (rejection,) = result.rejected
    assert rejection.index == 1
    assert rejection.field == field
    assert reason in rejection.reason


def test_a_rejection_lists_every_failing_field() -> None:
    result = validate_rows(Event, [event(user_id="", item_id="")])
    assert {error.field for error in result.rejected[0].errors} == {"user_id", "item_id"}


def test_arrow_schema_is_derived_field_for_field() -> None:
    for contract in (User, Item, Event):
        schema = arrow_schema(contract)
        assert schema.names == list(contract.model_fields)
    events = arrow_schema(Event)
    assert tuple(events.names) == EVENT_COLUMNS
    assert events.field("ts").type == pa.timestamp("us", tz="UTC")
    assert not events.field("event_id").nullable
    assert events.field("value").nullable
    assert arrow_schema(Item).field("categories").type == pa.list_(pa.string())
    assert duckdb_columns(Event)["context"] == "JSON"
    assert duckdb_columns(Item)["categories"] == "VARCHAR[]"


def test_to_table_round_trips_through_arrow() -> None:
    rows = validate_rows(Event, [event(), event(event_type="click")]).valid
    table = to_table(Event, rows)
    assert table.num_rows == 2
    assert table.schema == arrow_schema(Event)
    assert table.column("context")[0].as_py() == '{"device":"mobile"}'
    back = validate_rows(
        Event, [{**row, "context": {"device": "mobile"}} for row in table.to_pylist()]
    )
    assert not back.rejected


def test_users_and_items() -> None:
    ok = {"user_id": "u1", "created_at": NOW}
    assert not validate_rows(User, [ok]).rejected
    rejected = validate_rows(User, [{**ok, "age": 200}]).rejected
    assert rejected[0].field == "age"
    item = {
        "item_id": "i1",
        "title": "Toy Story (1995)",
        "categories": ["Comedy"],
        "created_at": NOW,
    }
    assert validate_rows(Item, [item]).valid[0].text == ""
    assert validate_rows(Item, [{**item, "title": ""}]).rejected[0].field == "title"


def test_json_context_and_the_epoch_itself_pass() -> None:
    context = {"hour": 20, "ok": True, "none": None, "nested": {"list": [1, 2.5, "x"]}}
    result = validate_rows(
        Event,
        [
            event(context=context),
            event(ts="1970-01-01T00:00:00Z"),
            event(ts="1970-01-01T01:00:00+01:00"),
            event(ts="1997-09-20T03:05:10Z"),  # MovieLens-100K's first rating
            event(ts="9999-12-31T23:59:59Z"),  # no conversion, no overflow
        ],
    )
    assert not result.rejected
    assert result.valid[0].context == context
    assert result.valid[1].ts == datetime(1970, 1, 1, tzinfo=UTC)


def test_users_and_items_refuse_nul_and_dates_before_the_epoch() -> None:
    user = {"user_id": "u1", "created_at": NOW}
    for changes, field in [
        ({"occupation": "te\x00ch"}, "occupation"),
        ({"profile_text": "\x00"}, "profile_text"),
        ({"created_at": "1960-01-01T00:00:00Z"}, "created_at"),
        ({"created_at": "0001-01-01T00:00:00+05:00"}, "created_at"),
    ]:
        (rejection,) = validate_rows(User, [{**user, **changes}]).rejected
        assert rejection.field == field
    item = {"item_id": "i1", "title": "Toy Story (1995)", "created_at": NOW}
    for changes, field in [
        ({"title": "Toy\x00Story"}, "title"),
        ({"text": "\x00"}, "text"),
        ({"categories": ["Comedy", "Dra\x00ma"]}, "categories.1"),
        ({"created_at": "9999-12-31T20:00:00-05:00"}, "created_at"),
    ]:
        (rejection,) = validate_rows(Item, [{**item, **changes}]).rejected
        assert rejection.field == field
