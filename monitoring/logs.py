"""What the service logged, as one row per impression with its outcome.

The event log holds impressions (slot, propensity, the item's propensity in every slot, model
version, policy, context with the traffic arm) and, separately, the clicks and ratings users
sent back for the same request and item. ``impressions`` joins them: every impression whose
``ts`` lies in the window, with ``clicked`` (1 when a click for the same request and item
arrived within the attribution window) and the rating, if any. Reads go through the profile's
own reader (DuckDB over the local log's sealed files, or the Postgres table), never through
the warehouse, so the metrics DAG needs no lock that dbt holds.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import pyarrow as pa

from recloop.eventlog import read_events
from recloop.settings import Settings

__all__ = ["COLUMNS", "clicks", "impressions", "read_events", "user_attributes"]

log = logging.getLogger(__name__)

USER_ATTRIBUTES = "feast_user_attributes"  # dbt's export of the user_attributes mart

COLUMNS = (
    "ts", "request_id", "user_id", "item_id", "position", "propensity", "slot_propensities",
    "model_version",
    "policy", "arm", "served_by", "device", "hour", "clicked", "rating",
)  # fmt: skip


JOIN = """
WITH shown AS (
    SELECT * FROM events
    WHERE event_type = 'impression' AND ts >= $start AND ts < $end AND request_id IS NOT NULL
),
outcomes AS (
    SELECT e.request_id, e.item_id,
           max(CASE WHEN e.event_type = 'click' THEN 1 ELSE 0 END) AS clicked,
           max(CASE WHEN e.event_type = 'rating' THEN e.value END) AS rating
    FROM events e JOIN shown s USING (request_id, item_id)
    WHERE e.event_type IN ('click', 'rating')
      AND e.ts >= s.ts AND e.ts < s.ts + to_seconds($attribution)
    GROUP BY ALL
)
SELECT s.ts, s.request_id, s.user_id, s.item_id, s.position, s.propensity, s.slot_propensities,
       coalesce(s.model_version, 'unknown') AS model_version,
       coalesce(s.policy, 'unknown') AS policy,
       coalesce(json_extract_string(s.context, '$.arm'), 'none') AS arm,
       json_extract_string(s.context, '$.served_by') AS served_by,
       json_extract_string(s.context, '$.device') AS device,
       TRY_CAST(json_extract_string(s.context, '$.hour') AS INTEGER) AS hour,
       coalesce(o.clicked, 0) AS clicked, o.rating
FROM shown s LEFT JOIN outcomes o USING (request_id, item_id)
ORDER BY s.ts, s.request_id, s.position
"""


def impressions(
    settings: Settings, start: datetime, end: datetime, *, events: pa.Table | None = None
) -> pd.DataFrame:
    """One row per impression shown in [start, end), with ``clicked`` and ``rating``.

    ``events`` may be passed when the caller already read a wider span (it must cover
    [start, end + attribution)).
    """
    attribution = settings.monitoring.attribution_seconds
    if events is None:
        events = read_events(settings, start, end + timedelta(seconds=attribution))
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("events", events)
        frame = con.execute(JOIN, {"start": start, "end": end, "attribution": attribution}).df()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame[list(COLUMNS)]


def clicks(
    settings: Settings, start: datetime, end: datetime, *, events: pa.Table | None = None
) -> pd.DataFrame:
    """The click events in [start, end) (``ts``, ``user_id``, ``item_id``, oldest first):
    what the service pushed to Feast as each user's fresh clicks, so what it folded into
    their next requests (``ope.greedy_slates`` does the same). ``events`` may be passed when
    the caller already read a span that covers it."""
    if events is None:
        events = read_events(settings, start, end)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("events", events)
        frame = con.execute(
            "SELECT ts, user_id, item_id FROM events WHERE event_type = 'click' "
            "AND ts >= $start AND ts < $end ORDER BY ts",
            {"start": start, "end": end},
        ).df()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def user_attributes(settings: Settings) -> pd.DataFrame | None:
    """The users' coarse attributes (``user_id``, ``age_group``, ``gender``, ``occupation``)
    as the last feature pipeline run exported them (``recloop.features.exports``: no warehouse
    lock). None before any feature run exported them."""
    from recloop.features.exports import ExportMissing, read_export

    query = "SELECT user_id, age_group, gender, occupation FROM {relation}"
    try:
        return read_export(settings, USER_ATTRIBUTES, query)
    except ExportMissing:
        return None
    except duckdb.Error as error:  # dbt rewrites the local file in place: caught mid-write
        log.warning("%s could not be read (%s): no attribute drift test this hour",
                    USER_ATTRIBUTES, error)  # fmt: skip
        return None
