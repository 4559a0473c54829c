"""Reruns of a recloop_metrics hour (an Airflow retry, a cleared task, an operator's window in
another UTC offset) record what the first run recorded, and only for that hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pandas as pd
import pytest

from monitoring import hourly, store
from recloop.settings import Settings

START = datetime(2026, 1, 5, 9, tzinfo=UTC)
END = START + timedelta(hours=1)


def _won_hour(settings: Settings) -> None:
    """The hour's stored estimate: version 6 beat champion 4 (a challenger_wins alarm and its
    gain row), as ``hourly.estimate`` writes them."""
    stamp = {"hour_start": pd.Timestamp(START), "hour_end": pd.Timestamp(END),
             "champion_version": "4"}  # fmt: skip
    store.write(settings, "alarms", END, pd.DataFrame([{
        **stamp, "kind": "challenger_wins", "subject": "6", "detail": "version 6 beats it",
        "before": 0.02, "after": 0.15,
    }]))  # fmt: skip
    store.write(settings, "off_policy", END, pd.DataFrame([{
        **stamp, "candidate_version": "6", "window": "since_registered",
        "estimator": "pbm_ips_gain", "value": 0.13, "low": 0.05, "high": 0.21, "level": 0.9875,
        "baseline": 0.02, "impressions": 15000, "matches": 3000, "unlogged_share": 0.0,
    }]))  # fmt: skip


@pytest.fixture
def registry_alias(monkeypatch) -> dict[str, str]:
    """A stand-in for the registry's champion alias and for the promotion gate, which moves
    it and, like ``training.pipeline.promote_on_evidence``, refuses the champion itself."""
    from training import pipeline, registry

    alias = {"champion": "4"}

    def promote_on_evidence(settings, version, evidence, against=None):
        if alias["champion"] == version:
            said = f"version {version} is already the champion"
            return SimpleNamespace(promote=False, reasons=[said])
        alias["champion"] = version
        return SimpleNamespace(promote=True, reasons=["gain's lower bound clears the margin"])

    monkeypatch.setattr(pipeline, "promote_on_evidence", promote_on_evidence)
    monkeypatch.setattr(registry, "configure", lambda settings: None)
    monkeypatch.setattr(registry, "alias_version", lambda client, name: SimpleNamespace(
        version=alias[name]))  # fmt: skip
    return alias


def _stored(settings: Settings) -> dict:
    decisions = store.read(settings, "decisions")
    return decisions[decisions["hour_end"] == pd.Timestamp(END)].iloc[0].to_dict()


def test_a_rerun_of_decide_records_the_hours_promotion_again(tmp_path, registry_alias) -> None:
    """The first attempt promotes version 6 and requests no retraining; a cleared task's
    rerun, and a retry whose first attempt died before writing its decision, record the same
    (the gate now says 6 "is already the champion")."""
    settings = Settings(home=tmp_path)
    _won_hour(settings)
    first = hourly.decide(settings, START, END)
    assert (first["promoted"], first["requested"]) == ("6", False)
    assert registry_alias["champion"] == "6"

    rerun = hourly.decide(settings, START, END)
    assert (rerun["promoted"], rerun["requested"]) == ("6", False), rerun["reason"]
    assert "already promoted by this hour's evidence (a rerun)" in rerun["reason"]
    assert (_stored(settings)["promoted"], _stored(settings)["requested"]) == ("6", False)

    store.write(settings, "decisions", END, pd.DataFrame())  # died before writing it
    retry = hourly.decide(settings, START, END)
    assert (retry["promoted"], retry["requested"]) == ("6", False), retry["reason"]
    assert _stored(settings)["promoted"] == "6"


def test_a_rerun_does_not_claim_a_promotion_the_hour_did_not_make(tmp_path, registry_alias) -> None:
    """The hour's first decision did not promote 6 (the gate refused it); another hour's
    promoted it since. The rerun says what the gate says and requests the retraining, as the
    first attempt did."""
    settings = Settings(home=tmp_path)
    _won_hour(settings)
    store.write(settings, "decisions", END, pd.DataFrame([{
        "hour_start": pd.Timestamp(START), "hour_end": pd.Timestamp(END), "requested": True,
        "reason": "version 6 not promoted on online evidence", "promoted": None,
        "champion_version": "4",
    }]))  # fmt: skip
    later = END + timedelta(hours=1)
    store.write(settings, "decisions", later, pd.DataFrame([{
        "hour_start": pd.Timestamp(END), "hour_end": pd.Timestamp(later), "requested": False,
        "reason": "promoted version 6", "promoted": "6", "champion_version": "4",
    }]))  # fmt: skip
    registry_alias["champion"] = "6"
    rerun = hourly.decide(settings, START, END)
    assert (rerun["promoted"], rerun["requested"]) == (None, True)
    assert "version 6 is already the champion" in rerun["reason"]
    # Without this hour's decision (lost with its attempt), another hour's promotion of the
    # version still says it was not this hour's.
    store.write(settings, "decisions", END, pd.DataFrame())
    assert hourly.decide(settings, START, END)["promoted"] is None


def test_an_hour_given_in_another_offset_is_stored_as_its_utc_hour(tmp_path) -> None:
    """09:00-10:00Z given as 11:00-12:00+02:00 is the 09-10Z hour to every task and in the
    store: it replaces that hour's rows, never the 11-12Z hour's (keyed 1200 by its clock)."""
    from monitoring.tasks import hour

    window = hour("2026-11-23T11:00+02:00", "2026-11-23T12:00+02:00", "x", "y")
    assert window == {"start": "2026-11-23T09:00:00+00:00", "end": "2026-11-23T10:00:00+00:00"}
    # The scheduled interval too, and the hour-before fallback computed on the UTC end.
    assert hour(None, None, "2026-11-23T11:00:00-05:00", "2026-11-23T12:00:00-05:00") == {
        "start": "2026-11-23T16:00:00+00:00", "end": "2026-11-23T17:00:00+00:00"}  # fmt: skip

    settings = Settings(home=tmp_path)
    plus_two = timezone(timedelta(hours=2))
    eleven_to_noon_z = datetime(2026, 11, 23, 12, tzinfo=UTC)
    nine_to_ten_z = datetime(2026, 11, 23, 12, tzinfo=plus_two)  # 10:00Z
    assert store.hour_key(nine_to_ten_z) == "20261123T1000"
    assert store.hour_key(datetime(2026, 11, 23, 12, 0, 30, 5, tzinfo=plus_two)) == (
        "20261123T100030000005")  # fmt: skip
    for table in store.TABLES:
        store.write(settings, table, eleven_to_noon_z, pd.DataFrame([{"hour": "11-12Z"}]))
        store.write(settings, table, nine_to_ten_z, pd.DataFrame([{"hour": "09-10Z"}]))
        assert sorted(store.read(settings, table)["hour"]) == ["09-10Z", "11-12Z"], table
    # A naive end names no hour at all.
    with pytest.raises(ValueError, match="end: must carry a time zone"):
        store.hour_key(datetime(2026, 11, 23, 12))
