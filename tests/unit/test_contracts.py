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
