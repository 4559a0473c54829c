"""The gate's recorded outcome (last_gate.json, which training and the promotion gate read)
and its check of event ids against those logged before the batch (recloop.features.gate)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from recloop.features import gate
from recloop.settings import Settings


def at(hour: int) -> datetime:
    return datetime(2026, 3, 2, hour, tzinfo=UTC)


def record(settings: Settings, start: datetime, end: datetime, passed: bool) -> None:
    gate._record_outcome(settings, gate.GateReport(start, end), [] if passed else ["bad"])


def test_a_pass_on_an_earlier_interval_leaves_a_later_failure_standing(tmp_path) -> None:
    """The marts and exports hold every row built up to the failed batch's end: a rerun of an
    earlier interval that passes does not vouch for them."""
    settings = Settings(home=tmp_path)
    record(settings, at(10), at(12), passed=False)
    gate.mark_building(settings, at(11))  # a cleared earlier run rebuilds...
    record(settings, at(10), at(11), passed=True)  # ...and its own interval passes
    outcome = gate.last_outcome(settings)
    assert outcome["passed"] is False and outcome["end"] == at(12).isoformat()
    assert "building" not in outcome
    # A gate that reaches the failed batch's end decides again, either way.
    record(settings, at(10), at(12), passed=True)
    assert gate.last_outcome(settings)["passed"] is True
    record(settings, at(12), at(13), passed=False)
    record(settings, at(10), at(14), passed=True)
    assert gate.last_outcome(settings) | {"checked_at": None} == {
        "passed": True, "checked_at": None, "start": at(10).isoformat(),
        "end": at(14).isoformat(), "failures": [],
    }  # fmt: skip


def write_segment(settings: Settings, name: str, rows: list[dict]) -> None:
    folder = settings.events_dir / "event_date=2026-03-02" / "event_hour=00"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"part-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def event(event_id: str, ts: datetime, logged_at: datetime) -> dict:
    return {"event_id": event_id, "ts": ts.isoformat(), "user_id": "u1", "item_id": "i1",
            "event_type": "click", "context": {}, "logged_at": logged_at.isoformat()}  # fmt: skip


def test_event_ids_logged_before_the_batch_are_named(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    minute = timedelta(minutes=1)
    write_segment(settings, "earlier", [
        event("resent", at(9) + 5 * minute, at(9) + 6 * minute),
        event("future-dated", at(13) + minute, at(9) + 7 * minute),  # happens in the batch
    ])  # fmt: skip
    write_segment(settings, "batch", [
        event("resent", at(9) + 5 * minute, at(12) + 20 * minute),  # a producer's retry
        event("new", at(12) + 30 * minute, at(12) + 31 * minute),
    ])  # fmt: skip
    batch = gate.read_raw_events(settings, at(12), at(14))
    assert sorted(batch.event_id) == ["future-dated", "new", "resent"]
    assert gate._event_ids_logged_before(settings, batch, at(12), at(14)) == {"resent"}
    # A backfill has nothing before it.
    assert gate._event_ids_logged_before(settings, batch, None, at(14)) == set()
    derived = gate._derived_event_columns(batch, {"resent"})
    flagged = derived.set_index("event_id")[gate.EARLIER_DUPLICATE_COLUMN]
    assert flagged.to_dict() == {"resent": "resent", "new": None, "future-dated": None}
