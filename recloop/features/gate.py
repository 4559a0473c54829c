"""The Great Expectations gate between dbt and Feast.

It validates what this interval would publish: the raw events that happened or arrived in
``(start, end]``, and the rows of each mart whose ``observed_at`` (``interacted_at`` for
interactions) falls in the interval, which are exactly the rows Feast materialises next.
A failing checkpoint raises ``GateFailed`` naming every failed expectation, so the caller (the
DAG task, ``recloop features run``) stops before Feast and the online store keeps what it had.
Rows that break the contract were already quarantined by dbt (``staging.quarantined_events``);
the gate stops the interval all the same, because a bad upstream usually sends more than the
rows it breaks.

Suites are defined here, in code, and re-applied on every run; Great Expectations keeps its
validation results and Data Docs under ``<home>/gx`` (open
``<home>/gx/uncommitted/data_docs/local_site/index.html``).

Event ids must be unique within the batch and new to it: an id that a row logged before the
batch already carries (a producer's retry of an earlier hour's event) fails the gate too
(``event_id_logged_before``), though dbt quarantines the copy.

Raw events are read as JSON objects, every key found becoming a column, rather than through
the contract's columns, so that a column renamed upstream shows up as an unexpected column
instead of as nulls. The feature marts' expected columns are those of their Feast views.

Volume: a batch's row count is compared with the median of earlier batches that passed, of the
same length and ending at the same hour of day (traffic at 4 am is not traffic at 8 pm), and
fails when it dropped by more than ``gate.max_volume_drop``. Three such batches are needed
before the check applies.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recloop.contracts import EVENT_COLUMNS, LOGGED_AT, RATING_MAX, RATING_MIN, EventType
from recloop.settings import Settings

log = logging.getLogger(__name__)

DATASOURCE = "recloop"
MIN_VOLUME_HISTORY = 3
VOLUME_HISTORY_KEPT = 200
FUTURE_MINUTES = 5  # clock skew tolerated, as dbt's var future_tolerance_minutes


class GateFailed(RuntimeError):
    """The checkpoint failed: nothing of this interval may reach Feast."""

    def __init__(self, failures: list[str], docs: str | None):
        self.failures = failures
        self.docs = docs
        shown = "\n  ".join(failures)
        super().__init__(
            f"data quality gate failed ({len(failures)} expectation(s)):\n  {shown}"
            + (f"\nData Docs: {docs}" if docs else "")
        )


@dataclass
class GateReport:
    start: datetime | None
    end: datetime
    rows: dict[str, int] = field(default_factory=dict)
    evaluated: int = 0
    docs: str | None = None


@dataclass(frozen=True)
class Dataset:
    """One thing the gate validates: how to read this interval's batch, and its suite."""

    name: str
    read: Callable[[Settings, datetime | None, datetime], pd.DataFrame]
    expectations: Callable[[datetime], list[Any]]


# ---------------------------------------------------------------------------------------------
# Reading the batches


def _between(column: str, start: datetime | None, end: datetime) -> tuple[str, dict[str, Any]]:
    """``column`` in (start, end], with ``$start``/``$end`` placeholders (both profiles)."""
    if start is None:
        return f"{column} <= $end", {"end": end}
    return f"{column} > $start AND {column} <= $end", {"start": start, "end": end}


def read_raw_events(settings: Settings, start: datetime | None, end: datetime) -> pd.DataFrame:
    """Raw events of the interval, as written.

    A row belongs to the interval when it happened in it (a backfill validates history) or
    arrived in it (a live run sees whatever came in, future-dated rows included). Lines are
    read as JSON objects, without schema inference (inferring over thousands of hourly files
    exhausts memory), and every key found becomes a column: a column renamed upstream shows up
    as an unexpected one.
    """
    import duckdb

    from recloop.eventlog.local import has_sealed_segments, sealed_pattern

    if settings.profile == "production":
        return _read_postgres_events(settings, start, end)
    if not has_sealed_segments(settings.events_dir):
        return pd.DataFrame(columns=[*EVENT_COLUMNS, LOGGED_AT])
    pattern = sealed_pattern(settings.events_dir).replace("'", "''")
    happened, happened_params = _between("TRY_CAST(json ->> 'ts' AS TIMESTAMPTZ)", start, end)
    arrived, arrived_params = _between(
        f"TRY_CAST(json ->> '{LOGGED_AT}' AS TIMESTAMPTZ)", start, end
    )
    batch = (
        f"(SELECT json FROM read_json_objects('{pattern}', format='newline_delimited') "
        f"WHERE ({happened}) OR ({arrived}))"
    )
    params = {**happened_params, **arrived_params}
    numeric = {"value": "DOUBLE", "position": "BIGINT", "propensity": "DOUBLE",
               "slot_propensities": "DOUBLE[]"}  # fmt: skip
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        keys = [row[0] for row in con.execute(
            f"SELECT DISTINCT unnest(json_keys(json)) FROM {batch}", params
        ).fetchall()]  # fmt: skip
        columns = list(dict.fromkeys([*EVENT_COLUMNS, LOGGED_AT, *keys]))
        selected = ", ".join(
            f"TRY_CAST(json ->> '{c}' AS {numeric[c]}) AS \"{c}\""
            if c in numeric
            else f"json ->> '{c}' AS \"{c}\""
            for c in columns
        )
        frame = con.execute(f"SELECT {selected} FROM {batch}", params).df()
    # A contract column no row carries is absent upstream, not null: drop it so that the
    # column-set expectation names it.
    # slot_propensities came later: events logged before it do not carry the key.
    optional = {"context", "slot_propensities"}
    missing = [c for c in (*EVENT_COLUMNS, LOGGED_AT) if c not in keys and c not in optional]
    return frame.drop(columns=missing if len(frame) else [])


def _read_postgres_events(
    settings: Settings, start: datetime | None, end: datetime
) -> pd.DataFrame:
    """The production log's rows of the interval (same rule as the files). Its table has the
    contract's columns and types, so nothing unexpected can appear."""
    from recloop import warehouse

    happened, params = _between("ts", start, end)
    arrived, _ = _between(LOGGED_AT, start, end)
    text = {"event_id", "context"}
    selected = ", ".join(
        f"{c}::text AS {c}" if c in text else c for c in (*EVENT_COLUMNS, LOGGED_AT)
    )
    return warehouse.read_frame(
        settings,
        f"SELECT {selected} FROM raw.events WHERE ({happened}) OR ({arrived})",
        params,
    )


def _event_ids_logged_before(
    settings: Settings, batch: pd.DataFrame, start: datetime | None, end: datetime
) -> set[str]:
    """The batch's event ids that events logged before it already carry.

    The batch's own rows are checked for uniqueness among themselves; an event first logged in
    an earlier interval and sent again (a producer's retry) is in no earlier batch with its
    copy, so this looks it up among the rows logged up to ``start`` that are not in the batch
    (those that happened in the interval are). dbt quarantines such a copy; the gate stops the
    interval all the same, as the README says of duplicate ids. A backfill (no start) has no
    earlier rows. The production log's table keys ``event_id`` (a re-sent id is dropped on
    insert), so there it finds none by construction.
    """
    import duckdb

    from recloop.eventlog.local import has_sealed_segments, sealed_pattern

    if start is None or "event_id" not in batch or settings.profile == "production":
        return set()
    ids = pd.DataFrame({"event_id": batch["event_id"].dropna().astype(str).unique()})
    if ids.empty or not has_sealed_segments(settings.events_dir):
        return set()
    pattern = sealed_pattern(settings.events_dir).replace("'", "''")
    happened, params = _between("TRY_CAST(json ->> 'ts' AS TIMESTAMPTZ)", start, end)
    query = (
        f"SELECT DISTINCT json ->> 'event_id' "
        f"FROM read_json_objects('{pattern}', format='newline_delimited') "
        f"WHERE TRY_CAST(json ->> '{LOGGED_AT}' AS TIMESTAMPTZ) <= $start "
        f"AND NOT coalesce(({happened}), false) "
        f"AND json ->> 'event_id' IN (SELECT event_id FROM batch_ids)"
    )
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("batch_ids", ids)
        return {row[0] for row in con.execute(query, params).fetchall()}


def _mart_reader(relation: str, column: str) -> Callable[..., pd.DataFrame]:
    def read(settings: Settings, start: datetime | None, end: datetime) -> pd.DataFrame:
        from recloop import warehouse

        where, params = _between(column, start, end)
        return warehouse.read_frame(settings, f"SELECT * FROM {relation} WHERE {where}", params)

    return read


# ---------------------------------------------------------------------------------------------
# The suites


def raw_event_expectations(end: datetime) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        # The gate adds ts_parsed (ts as an instant) and each impression's smallest and
        # largest slot propensity (``_derived_event_columns``); anything else is unexpected.
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[*EVENT_COLUMNS, LOGGED_AT, *DERIVED_EVENT_COLUMNS], exact_match=True
        ),
        *[
            gxe.ExpectColumnValuesToNotBeNull(column=c)
            for c in ("event_id", "ts_parsed", "user_id", "item_id", "event_type")
        ],
        gxe.ExpectColumnValuesToBeUnique(column="event_id"),
        # Unique within the batch is not enough: a producer's retry re-sends an event logged
        # in an earlier hour (``_event_ids_logged_before``; dbt quarantines the copy).
        gxe.ExpectColumnValuesToBeNull(
            column=EARLIER_DUPLICATE_COLUMN,
            description="event ids already logged before this batch: a re-sent event",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="event_type", value_set=[e.value for e in EventType]
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="value",
            min_value=RATING_MIN,
            max_value=RATING_MAX,
            row_condition='event_type=="rating"',
            condition_parser="pandas",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="propensity", min_value=0, max_value=1, strict_min=True
        ),
        gxe.ExpectColumnValuesToBeBetween(column="position", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="slot_propensities_min", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="slot_propensities_max", max_value=1),
        gxe.ExpectColumnMaxToBeBetween(column="ts_parsed", max_value=_latest_allowed()),
    ]


def _latest_allowed() -> datetime:
    """Later than this is in the future: the wall clock now plus the skew dbt tolerates too."""
    return datetime.now(UTC) + timedelta(minutes=FUTURE_MINUTES)


def _feature_expectations(view_name: str, end: datetime) -> list[Any]:
    """The suite of a mart that Feast reads; its columns are the Feast view's own."""
    import great_expectations.expectations as gxe

    from feature_repo import entities, feature_views

    view = getattr(feature_views, view_name)
    (entity,) = view.entities
    key = getattr(entities, entity).join_key
    columns = [key, view.batch_source.timestamp_field, *(f.name for f in view.features)]
    counts = [c for c in columns if "interactions_" in c or "popularity_" in c]
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=True),
        gxe.ExpectColumnValuesToNotBeNull(column=key),
        gxe.ExpectColumnValuesToNotBeNull(column="observed_at"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=[key, "observed_at"]),
        gxe.ExpectColumnValuesToBeBetween(column="click_through_rate", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(
            column="rating_mean", min_value=RATING_MIN, max_value=RATING_MAX
        ),
        *[gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in counts],
        # Per row, not on the maximum: an hour without activity adds no snapshot, and the
        # maximum of an empty batch (NaT) would fail a rule that no row breaks.
        gxe.ExpectColumnValuesToBeBetween(column="observed_at", max_value=end),
    ]


def interaction_expectations(end: datetime) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="interaction_id"),
        gxe.ExpectColumnValuesToBeUnique(column="interaction_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="is_positive"),
        gxe.ExpectColumnValuesToBeBetween(
            column="rating", min_value=RATING_MIN, max_value=RATING_MAX
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="propensity", min_value=0, max_value=1, strict_min=True
        ),
        gxe.ExpectColumnValuesToBeBetween(column="interacted_at", max_value=_latest_allowed()),
    ]


DATASETS = (
    Dataset("raw_events", read_raw_events, raw_event_expectations),
    Dataset("user_features", _mart_reader("marts.user_features", "observed_at"),
            lambda end: _feature_expectations("user_features", end)),
    Dataset("item_features", _mart_reader("marts.item_features", "observed_at"),
            lambda end: _feature_expectations("item_features", end)),
    Dataset("interactions", _mart_reader("marts.interactions", "interacted_at"),
            interaction_expectations),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Volume history


def _volume_path(settings: Settings) -> Path:
    return settings.home / "gx" / "volumes.json"


def _volumes(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    path = _volume_path(settings)
    return json.loads(path.read_text()) if path.exists() else {}


def volume_floor(
    history: list[dict[str, Any]], start: datetime | None, end: datetime, max_drop: float
) -> int | None:
    """The fewest rows a batch may have, from comparable earlier batches; None: too few."""
    if start is None:
        return None
    length = (end - start).total_seconds()
    same_length = [h for h in history if h["seconds"] == length]
    same_hour = [h for h in same_length if datetime.fromisoformat(h["end"]).hour == end.hour]
    comparable = same_hour if len(same_hour) >= MIN_VOLUME_HISTORY else same_length
    if len(comparable) < MIN_VOLUME_HISTORY:
        return None
    return math.ceil(statistics.median(h["rows"] for h in comparable) * (1 - max_drop))


def _record_volumes(settings: Settings, report: GateReport) -> None:
    if report.start is None:
        return
    volumes = _volumes(settings)
    for name, rows in report.rows.items():
        entries = [h for h in volumes.get(name, []) if h["end"] != report.end.isoformat()]
        entries.append(
            {
                "end": report.end.isoformat(),
                "rows": rows,
                "seconds": (report.end - report.start).total_seconds(),
            }
        )
        volumes[name] = entries[-VOLUME_HISTORY_KEPT:]
    path = _volume_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(volumes, indent=1))


# ---------------------------------------------------------------------------------------------
# Running the checkpoint


def _context(settings: Settings):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    settings.ensure_home()
    context = gx.get_context(mode="file", project_root_dir=str(settings.home))
    # One bar per expectation floods the task log; the gate logs its own summary instead.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _describe(dataset: str, result: Any) -> str:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    observed = result.result.get("observed_value")
    unexpected = result.result.get("unexpected_count")
    if result.exception_info and result.exception_info.get("raised_exception"):
        detail = result.exception_info.get("exception_message")
    elif unexpected:
        examples = result.result.get("partial_unexpected_list", [])[:3]
        detail = f"{unexpected} unexpected value(s), e.g. {examples}"
    else:
        detail = f"observed {observed}"
    said = f" ({config.description})" if getattr(config, "description", None) else ""
    return f"{dataset}: {config.type}({json.dumps(kwargs, default=str)}){said}: {detail}"


#: The event id of a batch row when an event logged before the batch already carries it.
EARLIER_DUPLICATE_COLUMN = "event_id_logged_before"
DERIVED_EVENT_COLUMNS = ("ts_parsed", "slot_propensities_min", "slot_propensities_max",
                         EARLIER_DUPLICATE_COLUMN)  # fmt: skip


def _derived_event_columns(frame: pd.DataFrame, earlier_ids: Collection[str] = ()) -> pd.DataFrame:
    """The raw events with the columns their expectations read. Raw timestamps are text as
    written: parsed, so that "in the future" compares instants (unparseable ones become NaT
    and fail the not-null check on ts_parsed). Per-slot propensities are a list per row, which
    no column expectation reads: their extremes are what must lie in [0, 1]. ``earlier_ids``:
    the batch's event ids that events logged before it carry (``_event_ids_logged_before``),
    named per row in ``event_id_logged_before`` (null for a new id)."""
    frame = frame.copy()
    ids = frame["event_id"] if "event_id" in frame else pd.Series(None, index=frame.index)
    frame[EARLIER_DUPLICATE_COLUMN] = ids.where(ids.isin(earlier_ids), None).astype(object)
    frame["ts_parsed"] = pd.to_datetime(frame["ts"], utc=True, errors="coerce", format="ISO8601")
    slots = frame.get("slot_propensities")
    for name, extreme in (("slot_propensities_min", np.min), ("slot_propensities_max", np.max)):
        frame[name] = (
            np.nan if slots is None
            else [float(extreme(v)) if isinstance(v, list | np.ndarray) and len(v) else np.nan
                  for v in slots]
        )  # fmt: skip
    return frame


def run_gate(settings: Settings, start: datetime | None, end: datetime) -> GateReport:
    """Validate this interval's batches; raise GateFailed naming every failed expectation."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context = _context(settings)
    source = context.data_sources.add_or_update_pandas(DATASOURCE)
    report = GateReport(start=start, end=end)
    volumes = _volumes(settings)
    failures: list[str] = []
    for dataset in DATASETS:
        frame = dataset.read(settings, start, end)
        if dataset.name == "raw_events" and "ts" in frame:
            frame = _derived_event_columns(
                frame, _event_ids_logged_before(settings, frame, start, end)
            )
        report.rows[dataset.name] = len(frame)
        expectations = dataset.expectations(end)
        floor = volume_floor(
            volumes.get(dataset.name, []), start, end, settings.gate.max_volume_drop
        )
        if floor is not None:
            expectations.append(gxe.ExpectTableRowCountToBeBetween(min_value=floor))
        if frame.empty and floor is None:
            continue  # nothing new and nothing expected: no batch to validate
        batch = _batch_definition(source, dataset.name)
        suite = context.suites.add_or_update(
            gx.ExpectationSuite(name=dataset.name, expectations=expectations)
        )
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=dataset.name, data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=f"{dataset.name}_gate",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format="SUMMARY",
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": _plain(frame)})
        for validation in result.run_results.values():
            for outcome in validation.results:
                report.evaluated += 1
                if not outcome.success:
                    failures.append(_describe(dataset.name, outcome))
    report.docs = _docs_url(context)
    _record_outcome(settings, report, failures)
    if failures:
        for failure in failures:
            log.error("gate: %s", failure)
        raise GateFailed(failures, report.docs)
    _record_volumes(settings, report)
    log.info("gate passed: %s expectations on %s", report.evaluated, report.rows)
    return report


def _outcome_path(settings: Settings) -> Path:
    return settings.home / "gx" / "last_gate.json"


def _record_outcome(settings: Settings, report: GateReport, failures: list[str]) -> None:
    # The promotion gate reads this: no model is promoted on features from a failed batch.
    # It replaces the whole file, ``building`` (below) included.
    standing = {k: v for k, v in (last_outcome(settings) or {}).items() if k != "building"}
    if (
        not failures
        and standing.get("passed") is False
        and datetime.fromisoformat(standing["end"]) > report.end
    ):
        # A rerun of an earlier interval passed, but the marts and exports still hold the rows
        # of the later batch that failed (dbt keeps what it built up to that end): its verdict
        # stands until a gate that reaches that end passes.
        log.warning("gate passed on the interval up to %s, but the batch up to %s failed and "
                    "its rows are still in the marts: that failure stands",
                    report.end.isoformat(), standing["end"])  # fmt: skip
        _write_outcome(settings, standing)
        return
    _write_outcome(settings, {
        "passed": not failures,
        "checked_at": datetime.now(UTC).isoformat(),
        "start": report.start.isoformat() if report.start else None,
        "end": report.end.isoformat(),
        "failures": failures,
    })  # fmt: skip


def mark_building(settings: Settings, end: datetime) -> None:
    """Say, before dbt rewrites the marts and the exports that training reads, that they are
    about to hold a batch no gate has checked (``building``); the gate's outcome replaces the
    mark. The last finished gate's outcome stays beside it, for what was trained before.
    Training reads the exports only while no build is marked (``training.pipeline.begin``):
    else a run that began after a passed gate could read the rows of a batch whose gate then
    failed, and promote on them."""
    previous = {k: v for k, v in (last_outcome(settings) or {"passed": None}).items()
                if k != "building"}  # fmt: skip
    since = datetime.now(UTC).isoformat()
    _write_outcome(settings, {**previous, "building": {"since": since, "end": end.isoformat()}})


def _write_outcome(settings: Settings, outcome: dict[str, Any]) -> None:
    path = _outcome_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(outcome, indent=1))
    tmp.replace(path)  # atomic: a reader sees the old outcome or the new, never half of one


def last_outcome(settings: Settings) -> dict[str, Any] | None:
    """The latest gate run's outcome (passed, when, failures), or None if none ran."""
    path = _outcome_path(settings)
    return json.loads(path.read_text()) if path.exists() else None


def _batch_definition(source: Any, name: str) -> Any:
    """The whole-dataframe batch definition of an asset, created on first use."""
    if name in source.get_asset_names():
        asset = source.get_asset(name)
    else:
        asset = source.add_dataframe_asset(name)
    for definition in asset.batch_definitions:
        if definition.name == "interval":
            return definition
    return asset.add_batch_definition_whole_dataframe("interval")


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Lists and JSON become text: Great Expectations' pandas metrics hash cell values."""
    frame = frame.copy()
    for column in frame.columns:
        if (
            frame[column].dtype == object
            and frame[column]
            .map(lambda v: isinstance(v, list | dict | tuple) or hasattr(v, "tolist"))
            .any()
        ):
            frame[column] = frame[column].map(
                lambda v: json.dumps(v.tolist() if hasattr(v, "tolist") else v, default=str)
            )
    return frame


def _docs_url(context: Any) -> str | None:
    sites = context.get_docs_sites_urls()
    return sites[0]["site_url"] if sites else None
