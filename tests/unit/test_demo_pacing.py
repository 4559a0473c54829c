"""When the demo keeps its simulated users coming (``Demo._unsettled``): a decision over the
hours so far, Airflow's training runs and the registry's champion, here given as plain values
(the end-to-end test runs it against the real ones)."""

from __future__ import annotations

from typing import Any

import pytest

from recloop.demo import Demo, DemoConfig, HourRecord
from recloop.settings import Settings


class _Runs:
    def __init__(self, states: list[str]) -> None:
        self.states = states

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        assert dag_id == "recloop_training"
        return [{"state": state} for state in self.states]


def _hour(n: int, served: dict[str, int], requested: bool = False) -> HourRecord:
    return HourRecord(hour=n, simulated_start="", start="", end="", requests=10,
                      impressions=100, clicks=3, true_ctr=0.03, served_versions=served,
                      retrain_requested=requested)  # fmt: skip


def _demo(tmp_path, champion: str, training: list[str], records: list[HourRecord]) -> Demo:
    demo = Demo(Settings(home=tmp_path), DemoConfig(), echo=lambda *_: None)
    demo.airflow = _Runs(training)
    demo._champion = lambda: champion  # type: ignore[method-assign]
    demo.records = records
    return demo


@pytest.mark.parametrize(
    ("champion", "training", "hours", "unsettled"),
    [
        # Nothing asked, the first champion serves: the demo may end.
        ("1", ["success"], [({"1": 10}, False), ({"1": 10}, False)], False),
        # Retraining asked in the last hour: its run may not exist yet.
        ("1", ["success"], [({"1": 10}, False), ({"1": 10}, True)], True),
        # Asked earlier and its run is in flight.
        ("1", ["success", "running"], [({"1": 10}, True), ({"1": 10}, False)], True),
        # Asked earlier, the run refused every candidate, nobody else ever served: wait (a
        # candidate may still be promoted on the logged evidence).
        ("1", ["success", "success"], [({"1": 10}, True), ({"1": 10}, False)], True),
        # A new champion that has not yet served a whole hour on its own.
        ("4", ["success", "success"], [({"1": 10}, True), ({"1": 6, "4": 4}, False)], True),
        # ... and once it has.
        ("4", ["success", "success"], [({"1": 10}, True), ({"4": 10}, False)], False),
        # A later champion (a second retraining's, or one promoted on evidence) likewise.
        ("7", ["success", "success", "success"],
         [({"1": 10}, True), ({"4": 10}, True), ({"4": 10}, False)], True),
        ("7", ["success", "success", "success"],
         [({"1": 10}, True), ({"4": 10}, True), ({"7": 10}, False)], False),
    ],
)  # fmt: skip
def test_users_keep_coming_until_the_loop_has_settled(
    tmp_path, champion: str, training: list[str], hours: list, unsettled: bool
) -> None:
    records = [_hour(n, served, requested) for n, (served, requested) in enumerate(hours)]
    demo = _demo(tmp_path, champion, training, records)
    assert demo._unsettled("1", records) is unsettled


def test_the_new_champion_is_the_replacing_version_users_met() -> None:
    from recloop.demo import new_champion

    hours = [{"1": 100}, {"1": 60, "4": 40}, {"4": 100}, {"4": 70, "6": 30}]
    # The alias's last version, served: it is the new champion.
    assert new_champion("1", "6", hours) == "6"
    # Promoted after the last hour's users came: the version they met instead.
    assert new_champion("1", "9", hours) == "4"
    assert new_champion("1", "9", [*hours, {"6": 100}]) == "6"
    # Nothing replaced the first champion in front of users.
    assert new_champion("1", "4", [{"1": 100}, None]) is None
    assert new_champion("1", "1", [{"1": 100}]) is None
