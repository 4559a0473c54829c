"""Ingest quarantines what the contracts refuse (NUL in a string, a timestamp before the
epoch) with the field and the reason, through validate_rows: nothing to add per source."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recloop.contracts import Event, validate_rows
from recloop.ingest import ingest_movielens
from recloop.settings import Settings
from recloop.sources.movielens import load_movielens
from tests.unit.test_movielens import GOOD_100K, flags, ml100k_files, write

NUL = "must not contain NUL characters"


def test_ingest_quarantines_rows_with_nul_naming_field_and_reason(tmp_path: Path) -> None:
    files = ml100k_files(GOOD_100K + "3\t1\t4\t881250960\n1\t5\t2\t881250961\n")
    files["u.user"] += "3|30|F|wri\x00ter|00000\n"
    files["u.item"] += f"5|Toy\x00Story (1995)|01-Jan-1995||http://x|{flags(3)}\n"
    settings = Settings(home=tmp_path / "var", ingest={"max_rejected_share": 1.0})
    report = ingest_movielens(settings, write(tmp_path / "ml", files))
    assert (report.users, report.items, report.events_appended) == (2, 2, 3)
    lines = Path(report.quarantine_file).read_text(encoding="utf-8").splitlines()
    found = {(row["file"], row["field"], row["reason"]) for row in map(json.loads, lines)}
    assert found == {
        ("u.user", "occupation", f"occupation: {NUL}"),
        ("u.item", "title", f"title: {NUL}; text: {NUL}"),  # the text is made of the title
        ("u.data", "user_id", "user '3' was rejected (u.user line 3)"),
        ("u.data", "item_id", "item '5' was rejected (u.item line 3)"),
    }


def test_an_event_row_before_the_epoch_or_overflowing_is_rejected_not_raised() -> None:
    row = {"event_id": "5b8f6c3e-8d0f-4d44-9b7e-2f1c6a9d3e10", "user_id": "u1",
           "item_id": "i1", "event_type": "click"}  # fmt: skip
    stamps = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]
    result = validate_rows(Event, [{**row, "ts": ts} for ts in stamps])
    assert not result.valid
    assert [rejection.field for rejection in result.rejected] == ["ts", "ts", "ts"]


@pytest.mark.dataset
def test_real_ml100k_dates_pass_the_epoch_bound(ml100k: Path) -> None:
    dataset = load_movielens(ml100k)
    assert not dataset.quarantined
    first = min(event.ts for event in dataset.events)
    assert datetime(1997, 9, 1, tzinfo=UTC) < first < datetime(1997, 10, 1, tzinfo=UTC)
    assert min(user.created_at for user in dataset.users) == first
