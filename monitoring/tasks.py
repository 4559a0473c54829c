"""What each task of the recloop_metrics DAG does, as plain functions of the hour.

The DAG passes ISO timestamps; the settings come from the worker's environment. An hour is
the run's data interval, or the ``start``/``end`` the run was triggered with (a manual run or
the demo's simulated hours), or the hour before the run when the interval is empty.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from recloop.settings import load_settings

log = logging.getLogger(__name__)


def hour(start: str | None, end: str | None, interval_start: str, interval_end: str) -> dict:
    """The hour to estimate, as ISO strings in UTC; validated so that a bad trigger conf fails
    here with the field named, not three tasks later."""
    chosen_end = datetime.fromisoformat(end or interval_end)
    chosen_start = datetime.fromisoformat(start or interval_start)
    # Checked before comparing: a naive and an aware time cannot be compared at all.
    if chosen_end.tzinfo is None or chosen_start.tzinfo is None:
        raise ValueError("start/end: must carry a time zone (UTC expected)")
    # Any other offset is the same instant in UTC, which every later task then sees: the
    # store names an hour by its end's clock reading, so 12:00+02:00 kept as given would
    # rewrite the 11:00-12:00Z hour's rows.
    chosen_end, chosen_start = chosen_end.astimezone(UTC), chosen_start.astimezone(UTC)
    if chosen_start >= chosen_end:
        chosen_start = chosen_end - timedelta(hours=1)
    return {"start": chosen_start.isoformat(), "end": chosen_end.isoformat()}


def settled(window: dict, explicit: bool, now: datetime | None = None) -> bool:
    """Whether the hour's clicks can all be read: a click counts for an impression up to
    ``monitoring.attribution_seconds`` after it, and the local event log shows an event up
    to ``event_log.seal_seconds`` after it is acknowledged (the production log, at once).
    The scheduled run starts as its hour ends, when its last minutes' clicks have not arrived
    yet: estimated then, the hour's CTR (never recomputed) reads low and ADWIN sees a falling
    tail, a false degradation. So the scheduled hour waits for them. A run triggered for an
    explicit window (an operator's rerun, the demo's short hours, whose simulated users click
    within the request; ``explicit``) is estimated at once, as asked; its log says when that
    window's clicks may be incomplete."""
    settings = load_settings()
    end = datetime.fromisoformat(window["end"])
    ready = end + timedelta(
        seconds=settings.monitoring.attribution_seconds
        + (settings.event_log.seal_seconds if settings.profile == "local" else 0.0)
    )
    now = now or datetime.now(end.tzinfo)
    if now >= ready:
        return True
    if explicit:
        log.warning("estimating %s-%s before its clicks are all readable (at %s): clicks "
                    "still to come are not counted", window["start"], window["end"],
                    ready.isoformat())  # fmt: skip
        return True
    log.info("waiting for the hour's clicks until %s", ready.isoformat())
    return False


def _bounds(window: dict) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])


def estimate(window: dict) -> dict[str, Any]:
    from monitoring.hourly import estimate as run

    return run(load_settings(), *_bounds(window))


def publish(window: dict) -> dict[str, Any]:
    from monitoring.hourly import publish as run

    return run(load_settings(), *_bounds(window))


def decide(window: dict) -> dict[str, Any]:
    from monitoring.hourly import decide as run

    decision = run(load_settings(), *_bounds(window))
    # What the operator reads in the task's log: why a retraining was (not) requested, and
    # any promotion on online evidence.
    log.info("retraining %s: %s", "requested" if decision["requested"] else "not requested",
             decision["reason"])  # fmt: skip
    if decision["promoted"] is not None:
        log.info("promoted version %s on online evidence", decision["promoted"])
    return decision
