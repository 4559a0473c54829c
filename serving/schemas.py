"""The API's request and response bodies. Field descriptions become the OpenAPI page's docs;
bounds keep every request's cost bounded (k, list lengths, text lengths).

A rule that spans fields still fails at one field: the gate's 422 (serving/http.py) names
each error's location, and a client can only fix what the 422 points at. Those errors raise
``_errors_at`` (a located ``ValidationError``), never a bare ValueError from a model
validator, which pydantic would place at the whole model (``events.0``, or ``body``). Their
messages never quote the input.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from recloop.contracts import Event, EventType, Id, NoNul, Text

MAX_K = 100
MAX_ITEMS = 1000
MAX_NEW_ITEMS = 100  # each new text may run the text encoder (about 5-20 ms here)
MAX_EVENTS = 1000
MAX_TEXT = 2000
# Every string of a request refuses NUL (as the contracts' do): /recommend logs the user id
# and context unvalidated (model_construct), and the Postgres event log refuses NUL, failing
# the shared impression batch. Bounds sit inside the Annotated, before NoNul, so that an
# optional field's length error keeps pydantic's string wording.
ShortField = Annotated[str, Field(max_length=64), NoNul]
FreeText = Annotated[str, Field(max_length=MAX_TEXT), NoNul]
# How far ahead of the server's clock an event's ts may be: the data gate's tolerance
# (recloop/features/gate.py, FUTURE_MINUTES, as dbt's future_tolerance_minutes), which refuses
# a batch holding a later one. Not imported from there: the gate pulls pandas into the API's
# import. tests/unit/test_serving_schemas.py checks that the two agree.
FUTURE_TOLERANCE = timedelta(minutes=5)

EXAMPLES = {
    "recommend": {"user_id": "u1", "k": 10, "context": {"hour": 20, "device": "mobile"}},
    "rank": {
        "user_id": "u1",
        "item_ids": ["i1", "i2", "i3"],
        "new_items": [
            {"item_id": "n1", "title": "A film released today", "categories": ["Sci-Fi"]}
        ],
    },
    "feedback": {
        "events": [
            {
                "event_id": "5b8f6c3e-8d0f-4d44-9b7e-2f1c6a9d3e10",
                "ts": "2026-01-05T12:00:00Z",
                "user_id": "u1",
                "item_id": "i1",
                "event_type": "click",
                "request_id": "r-1",
                "position": 0,
            }
        ]
    },
    "similar_items": {"item_id": "i1", "k": 5},
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _errors_at(title: str, errors: list[tuple[tuple[str | int, ...], str]]) -> ValidationError:
    """A ValidationError with each (location, reason): raised in a validator, its errors keep
    their locations, under the enclosing model's path (``events.0`` + ``value``)."""
    return ValidationError.from_exception_data(title, [
        # The reason goes in as context, not as the template: braces in it stay literal.
        InitErrorDetails(type=PydanticCustomError("value_error", "{reason}", {"reason": reason}),
                         loc=loc, input=None)  # input: none kept, so none can be echoed
        for loc, reason in errors
    ])  # fmt: skip


def _example(name: str) -> ConfigDict:
    """A request model's config addition: its OpenAPI example (merged with _Body's config)."""
    return ConfigDict(json_schema_extra={"example": EXAMPLES[name]})


class Context(_Body):
    """Request context; the sequential ranker uses it where it was trained with it."""

    hour: int | None = Field(None, ge=0, le=23, description="Hour of day, 0-23, user's time.")
    weekday: int | None = Field(None, ge=0, le=6, description="Day of week, 0 = Monday.")
    device: ShortField | None = Field(None, description="Device class, e.g. mobile or desktop.")


class Profile(_Body):
    """What is known of a user the system has never seen (cold start)."""

    age: int | None = Field(None, ge=0, le=130, description="Age in years.")
    gender: ShortField | None = Field(None, description="Self-reported gender.")
    occupation: ShortField | None = Field(None, description="Occupation.")
    text: FreeText | None = Field(None, description="Free text about the user's tastes.")


class RecommendRequest(_Body):
    model_config = _example("recommend")

    user_id: Id = Field(description="The user to recommend for; unknown ids are served too.")
    k: int = Field(10, ge=1, le=MAX_K, description=f"Slate size, 1-{MAX_K}.")
    context: Context | None = Field(None, description="Request context (hour, weekday, device).")
    exclude_seen: bool = Field(True, description="Leave out items the user interacted with.")
    profile: Profile | None = Field(
        None, description="Attributes and free text, for users the system has never seen."
    )


class RecommendedItem(BaseModel):
    item_id: str = Field(description="The item.")
    slot: int = Field(description="Position in the slate, 0 = top.")
    score: float | None = Field(
        description="The model's score (relative, not a probability); null for a new item the "
        "model cannot score (it reads no item text), shown by the policy's exploration."
    )
    propensity: float = Field(
        description="Probability that the policy shows this item in this slot for this request."
    )


ServedBy = Literal["history", "fresh_clicks", "profile", "popularity"]


class RecommendResponse(BaseModel):
    request_id: str = Field(description="Identifies this slate in the event log.")
    user_id: str
    items: list[RecommendedItem]
    model_version: str = Field(description="Registry version that scored, or the fallback.")
    policy: str = Field(description="The policy and its parameters.")
    arm: Literal["champion", "challenger"] = Field(description="Traffic-split arm.")
    served_by: ServedBy = Field(
        description="history: the model knew the user; fresh_clicks: only pushed clicks; "
        "profile: attributes and text through the two-tower user tower; popularity: nothing "
        "else applied."
    )
    fresh_clicks: int = Field(description="Pushed clicks folded into this request.")


class NewItem(_Body):
    """A candidate the catalogue may not hold yet (added after the last training), described
    the way the catalogue describes items: the text encoder reads it."""

    item_id: Id = Field(description="The item's id.")
    title: Text = Field(min_length=1, max_length=500, description="The item's title.")
    categories: list[ShortField] = Field(
        default_factory=list, max_length=20, description="The item's categories (genres)."
    )
    text: FreeText | None = Field(
        None,
        description="The item's own text; when given the text encoder reads it instead of "
        "title and categories, as for catalogue items that have one (a two-tower model "
        "still reads the categories apart).",
    )  # fmt: skip


class RankRequest(_Body):
    model_config = _example("rank")

    user_id: Id = Field(description="The user.")
    item_ids: list[Id] = Field(
        default_factory=list, max_length=MAX_ITEMS,
        description=f"Candidates to score, by id, at most {MAX_ITEMS}.",
    )  # fmt: skip
    new_items: list[NewItem] = Field(
        default_factory=list, max_length=MAX_NEW_ITEMS,
        description=f"Candidates described by their text, at most {MAX_NEW_ITEMS}: items "
        "the model never saw are scored from their text by a model that reads item text "
        "(the champion when it does, else the newest two-tower version).",
    )  # fmt: skip
    context: Context | None = Field(None, description="Request context.")

    @model_validator(mode="after")
    def _candidates(self) -> RankRequest:
        title = type(self).__name__
        if not self.item_ids and not self.new_items:
            raise _errors_at(title, [(("item_ids",), "give at least one candidate (or new_items)")])
        if len(self.item_ids) + len(self.new_items) > MAX_ITEMS:
            reason = f"with new_items, at most {MAX_ITEMS} candidates"
            raise _errors_at(title, [(("item_ids",), reason)])
        # Each new item whose id is a candidate already, at its own item_id: the 422 says
        # which entries without quoting the ids (it never echoes input).
        given = set(self.item_ids)
        repeats = []
        for n, item in enumerate(self.new_items):
            if item.item_id in given:
                repeats.append(n)
            given.add(item.item_id)
        if repeats:
            reason = (f"repeats an id given in item_ids or earlier in new_items "
                      f"({len(repeats)} repeated in all)")  # fmt: skip
            raise _errors_at(title, [(("new_items", n, "item_id"), reason) for n in repeats])
        return self


class RankedItem(BaseModel):
    item_id: str
    score: float = Field(
        description="Point-wise score; items the model never saw, and could not read the text "
        "of, rank last."
    )
    known: bool = Field(description="Whether the model knows the item.")
    from_text: bool = Field(
        False, description="Scored from the text given in new_items (the model never saw it)."
    )


class RankResponse(BaseModel):
    user_id: str
    items: list[RankedItem] = Field(description="In the order given: item_ids, then new_items.")
    model_version: str = Field(
        description="Registry version that scored: the traffic arm's, or the text-reading "
        "model's when new items needed it."
    )


class FeedbackEvent(Event):
    """A user's event (click, rating, purchase, dismiss): the event log's contract.
    Impressions are logged by the service itself and are refused here, and so is an event
    dated further ahead than the data gate tolerates (it would refuse the whole batch)."""

    @field_validator("event_type")
    @classmethod
    def _not_impression(cls, event_type: EventType) -> EventType:
        if event_type is EventType.impression:
            raise PydanticCustomError(
                "value_error", "impressions are logged by the service, not posted"
            )
        return event_type

    @field_validator("ts")
    @classmethod
    def _not_in_the_future(cls, ts: datetime) -> datetime:
        # Checked against this server's clock; the gate checks later, against a later now, so
        # what passes here passes there.
        if ts > datetime.now(UTC) + FUTURE_TOLERANCE:
            minutes = FUTURE_TOLERANCE.total_seconds() / 60
            raise PydanticCustomError(
                "value_error",
                "{reason}",
                {"reason": f"more than {minutes:g} minutes in the future (the data gate's limit)"},
            )
        return ts

    @model_validator(mode="wrap")
    @classmethod
    def _at_the_field(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> FeedbackEvent:
        """The contract's rules across fields (``Event._type_rules``: a rating's value, an
        impression's slots) raise "field: reason" at the event; they are re-raised at that
        field, so the 422 says ``events.N.value`` rather than ``events.N``."""
        try:
            return handler(data)
        except ValidationError as error:
            errors = error.errors(include_url=False)
            if any(e["loc"] for e in errors):
                raise  # field errors, placed already (the cross-field rules ran on none)
            located = []
            for e in errors:
                message = str(e.get("ctx", {}).get("error", e["msg"]))
                name, colon, reason = message.partition(": ")
                if colon and name in cls.model_fields:
                    located.append(((name,), reason))
                else:
                    located.append(((), message))
            raise _errors_at(cls.__name__, located) from None


class FeedbackRequest(_Body):
    model_config = _example("feedback")

    events: list[FeedbackEvent] = Field(
        min_length=1, max_length=MAX_EVENTS,
        description="Events to log; a retried event_id is acknowledged and not logged twice.",
    )  # fmt: skip


class FeedbackResponse(BaseModel):
    appended: int = Field(description="Events newly written to the event log (durable).")
    duplicates: int = Field(description="Events already logged (same event_id and content).")
    users_refreshed: int = Field(description="Users whose fresh clicks were pushed to Feast.")


class SimilarItemsRequest(_Body):
    model_config = _example("similar_items")

    item_id: Id = Field(description="The item to find neighbours of.")
    k: int = Field(10, ge=1, le=MAX_K, description=f"How many, 1-{MAX_K}.")


class SimilarItem(BaseModel):
    item_id: str
    similarity: float = Field(description="Cosine similarity of the model's item vectors.")


class SimilarItemsResponse(BaseModel):
    item_id: str
    known: bool = Field(description="False when the served model does not know the item.")
    items: list[SimilarItem]
    model_version: str
