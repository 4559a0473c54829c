"""Data contracts for users, items and events: one definition used everywhere.

The pydantic models below are the source of truth. The API validates with them, and the Arrow
schema (files), the DuckDB column types (readers) and the column-name tuples are all derived
from their fields, so a column is named and typed once.

``validate_rows`` splits a batch into valid rows and rejected rows, each rejection naming the
field and the reason, so that pipelines can quarantine instead of dropping.
"""

from __future__ import annotations

import json
import math
import types
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Union, get_args, get_origin

import pyarrow as pa
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

RATING_MIN = 0.5  # ml-latest-small rates in half stars from 0.5; ml-100k and ml-1m from 1
RATING_MAX = 5.0
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 10_000


# The earliest timestamp the contract admits. Readers parse timestamps with pandas, whose
# datetime64[ns] starts in 1677: an earlier one becomes NaT there and fails every feature run
# that reads the whole history, for good. No source of events predates the Unix epoch.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(value: datetime) -> datetime:
    # A naive timestamp is ambiguous (whose local time?), so it breaks the contract rather
    # than being guessed at.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must carry a time zone (UTC expected), got a naive timestamp")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        # Year 1 at +14:00 or year 9999 at -14:00: pydantic passes an OverflowError through
        # (an exception, not a rejection), so it is restated as a ValueError at the field.
        raise ValueError("is out of range once converted to UTC") from None
    if value < EARLIEST:
        raise ValueError("is before 1970-01-01 UTC (the Unix epoch)")
    return value


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _no_nul(value: str) -> str:
    # Postgres text and jsonb cannot hold U+0000: one such event fails the whole batch it is
    # written with (other users' impressions included), so it is refused at the contract.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _json_safe(value: dict[str, Any]) -> dict[str, Any]:
    """A context as the event log's JSON column can hold it: JSON types only, string keys,
    no NUL in any key or string, finite numbers, at any depth (walked without recursion)."""
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            _no_nul(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                # JSON has no NaN or Infinity: Postgres jsonb refuses the event (and its batch).
                raise ValueError("must hold finite numbers only (no NaN or Infinity)")
        elif isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise ValueError("keys must be strings")
                _no_nul(key)
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif item is not None and not isinstance(item, int):  # bool is an int
            raise ValueError(f"must hold JSON values only, not {type(item).__name__}")
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
# Every string of a contract refuses NUL: the Postgres event log and warehouse cannot store
# it. The length constraints come first (in the same Annotated) so that their errors keep
# pydantic's string wording; Text takes its bounds from the field's own Field(...).
NoNul = AfterValidator(_no_nul)
Text = Annotated[str, NoNul]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^\S(.*\S)?$"), NoNul]
ShortText = Annotated[str, Field(max_length=256), NoNul]
LongText = Annotated[str, Field(max_length=MAX_TEXT_LENGTH), NoNul]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_safe)]
FiniteFloat = Annotated[float, AfterValidator(_finite)]
Probability = Annotated[float, AfterValidator(_finite), Field(ge=0, le=1)]


class EventType(StrEnum):
    """What happened. Impressions come from the serving policy, the rest from users."""

    impression = "impression"
    click = "click"
    rating = "rating"
    purchase = "purchase"
    dismiss = "dismiss"


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class User(_Contract):
    """A user. Attributes are optional; zip codes are deliberately not part of the contract."""

    user_id: Id = Field(description="Stable user key.")
    age: int | None = Field(None, ge=0, le=130, description="Age in years (or bucket start).")
    gender: ShortText | None = Field(None, description="Self-reported gender, free text.")
    occupation: ShortText | None = Field(None, description="Occupation, free text.")
    profile_text: LongText | None = Field(None, description="Free text about the user.")
    created_at: UtcDatetime = Field(description="When the user entered the system, UTC.")


class Item(_Contract):
    """A catalogue item with the text the cold-start encoders read."""

    item_id: Id = Field(description="Stable item key.")
    title: Annotated[str, Field(min_length=1, max_length=1000), NoNul] = Field(
        description="Display title."
    )
    text: LongText = Field("", description="Description used by text encoders.")
    categories: list[ShortText] = Field(default_factory=list, description="Genres or topics.")
    created_at: UtcDatetime = Field(description="When the item entered the catalogue, UTC.")


class Event(_Contract):
    """One row of the append-only event log."""

    event_id: uuid.UUID = Field(description="Idempotency key: a retried event adds nothing.")
    ts: UtcDatetime = Field(description="When it happened, UTC.")
    user_id: Id = Field(description="Who.")
    item_id: Id = Field(description="Which item.")
    event_type: EventType = Field(description="impression, click, rating, purchase or dismiss.")
    value: FiniteFloat | None = Field(None, description="The rating, the price, ...")
    request_id: Annotated[str, Field(max_length=MAX_ID_LENGTH), NoNul] | None = Field(
        None, description="The recommendation request this event answers."
    )
    position: int | None = Field(None, ge=0, le=10_000, description="Slot, 0 = top.")
    propensity: FiniteFloat | None = Field(
        None, gt=0, le=1, description="Probability the logging policy showed this item here."
    )
    slot_propensities: list[Probability] | None = Field(
        None,
        max_length=10_001,
        description="Impressions: the probability the logging policy would have shown this "
        "item in each slot of the slate, slot 0 first (its own slot's is `propensity`).",
    )
    model_version: ShortText | None = Field(None, description="Model that produced the slate.")
    policy: ShortText | None = Field(None, description="Policy that produced the slate.")
    context: JsonObject = Field(
        default_factory=dict, description="Request context (hour, weekday, device, ...)."
    )

    @model_validator(mode="after")
    def _type_rules(self) -> Event:
        if self.event_type is EventType.rating:
            if self.value is None:
                raise ValueError("value: a rating event needs a value")
            if not RATING_MIN <= self.value <= RATING_MAX:
                raise ValueError(
                    f"value: rating {self.value} is outside [{RATING_MIN}, {RATING_MAX}]"
                )
        if self.event_type is EventType.impression and self.position is None:
            raise ValueError("position: an impression needs the slot it was shown in")
        if self.slot_propensities is not None:
            self._check_slot_propensities(self.slot_propensities)
        return self

    def _check_slot_propensities(self, slots: list[float]) -> None:
        if self.event_type is not EventType.impression:
            raise ValueError("slot_propensities: only an impression carries them")
        if self.position is None or self.position >= len(slots):
            raise ValueError(
                f"slot_propensities: {len(slots)} slots, none for position {self.position}"
            )
        own = slots[self.position]
        # The same number twice: it must agree with itself (to float round-off).
        if self.propensity is None or not math.isclose(own, self.propensity, rel_tol=1e-9):
            raise ValueError(
                f"slot_propensities: {own} at position {self.position} is not the "
                f"propensity ({self.propensity})"
            )


USER_COLUMNS = tuple(User.model_fields)
ITEM_COLUMNS = tuple(Item.model_fields)
EVENT_COLUMNS = tuple(Event.model_fields)
# Not part of the contract: when the event log accepted the event. dbt's incremental models
# read new events by this column, so late events are never missed.
LOGGED_AT = "logged_at"


# ---------------------------------------------------------------------------------------------
# Derived schemas


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner type, nullable) of an annotation such as ``Annotated[str, ...] | None``."""
    nullable = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [arg for arg in get_args(annotation) if arg is not type(None)]
            nullable = nullable or len(args) < len(get_args(annotation))
            annotation = args[0]
        else:
            return annotation, nullable


def _arrow_type(annotation: Any) -> pa.DataType:
    if get_origin(annotation) is list:
        (inner,) = get_args(annotation)
        return pa.list_(_arrow_type(_unwrap(inner)[0]))
    if get_origin(annotation) is dict:
        return pa.string()  # JSON text: an open-ended context has no fixed Arrow schema
    mapping: dict[Any, pa.DataType] = {
        str: pa.string(),
        int: pa.int64(),
        float: pa.float64(),
        bool: pa.bool_(),
        datetime: pa.timestamp("us", tz="UTC"),
        uuid.UUID: pa.string(),
    }
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return pa.string()
    return mapping[annotation]


_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    pa.list_(pa.string()): "VARCHAR[]",
    pa.list_(pa.float64()): "DOUBLE[]",
}


def arrow_schema(contract: type[_Contract]) -> pa.Schema:
    """The Arrow schema of a contract, field for field; non-optional fields are not null."""
    fields = []
    for name, info in contract.model_fields.items():
        inner, nullable = _unwrap(info.annotation)
        fields.append(
            pa.field(
                name,
                _arrow_type(inner),
                nullable=nullable,
                metadata={"description": info.description or ""},
            )
        )
    return pa.schema(fields)


def duckdb_columns(contract: type[_Contract]) -> dict[str, str]:
    """Column name -> DuckDB type, for ``read_json(columns=...)`` and ``CREATE TABLE``."""
    return _columns(contract, _DUCKDB_TYPES, json_type="JSON")


_POSTGRES_TYPES = {
    pa.string(): "text",
    pa.int64(): "bigint",
    pa.float64(): "double precision",
    pa.bool_(): "boolean",
    pa.timestamp("us", tz="UTC"): "timestamptz",
    pa.list_(pa.string()): "text[]",
    pa.list_(pa.float64()): "double precision[]",
}


def postgres_columns(contract: type[_Contract]) -> dict[str, str]:
    """Column name -> Postgres type, for the production warehouse's ``CREATE TABLE``."""
    return _columns(contract, _POSTGRES_TYPES, json_type="jsonb")


def _columns(
    contract: type[_Contract], types: dict[pa.DataType, str], json_type: str
) -> dict[str, str]:
    """Column name -> a database's type, through each field's Arrow type (dicts are JSON)."""
    columns = {}
    for name, info in contract.model_fields.items():
        inner, _ = _unwrap(info.annotation)
        columns[name] = json_type if get_origin(inner) is dict else types[_arrow_type(inner)]
    return columns


def to_record(row: _Contract) -> dict[str, Any]:
    """A validated row as plain data matching ``arrow_schema`` (context as JSON text)."""
    record = row.model_dump(mode="python")
    for name, value in record.items():
        if isinstance(value, uuid.UUID):
            record[name] = str(value)
        elif isinstance(value, dict):
            record[name] = json.dumps(value, sort_keys=True, separators=(",", ":"))
        elif isinstance(value, StrEnum):
            record[name] = value.value
    return record


def to_table(contract: type[_Contract], rows: Iterable[_Contract]) -> pa.Table:
    """Validated rows as an Arrow table with the contract's schema."""
    return pa.Table.from_pylist([to_record(row) for row in rows], schema=arrow_schema(contract))


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str


@dataclass(frozen=True)
class Rejection:
    """A row that broke the contract, with every field that failed and why."""

    index: int
    row: Mapping[str, Any]
    errors: tuple[FieldError, ...]

    @property
    def field(self) -> str:
        return self.errors[0].field

    @property
    def reason(self) -> str:
        return "; ".join(f"{error.field}: {error.reason}" for error in self.errors)


@dataclass
class ValidationResult:
    valid: list[Any] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def field_errors(error: ValidationError) -> tuple[FieldError, ...]:
    """Name the field behind each pydantic error; model-level rules name it in the message."""
    found = []
    for detail in error.errors(include_url=False):
        location = [str(part) for part in detail["loc"]]
        message = str(detail["msg"]).removeprefix("Value error, ")
        if not location and ": " in message:
            name, message = message.split(": ", 1)
            location = [name]
        found.append(FieldError(".".join(location) or "<row>", message))
    return tuple(found)


def validate_rows(contract: type[_Contract], rows: Iterable[Mapping[str, Any]]) -> ValidationResult:
    """Validate a batch: valid rows as contract models, rejected rows with field and reason."""
    result = ValidationResult()
    for index, row in enumerate(rows):
        if isinstance(row, contract):
            result.valid.append(row)
            continue
        try:
            result.valid.append(contract.model_validate(row))
        except ValidationError as error:
            result.rejected.append(Rejection(index, dict(row), field_errors(error)))
    return result
