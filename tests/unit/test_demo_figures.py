"""The demo benchmark's figures from a hand-made per-hour table (``benchmarks.demo``): what
detection and the after-shift CTR count, and what they leave out."""

from __future__ import annotations

import pytest

from benchmarks.demo import after_shift_ctr, detection


def test_a_false_alarm_before_the_shift_is_counted_apart_not_as_a_detection() -> None:
    # The saturation alarm at hour 3 (shift at 4) is not a detection an hour early.
    assert detection([3, 5, 9], shift_hour=4) == {"hours_to_detect": 1,
                                                  "false_alarms_before_shift": 1}  # fmt: skip
    assert detection([4], shift_hour=4) == {"hours_to_detect": 0, "false_alarms_before_shift": 0}
    assert detection([1, 2], shift_hour=4) == {"hours_to_detect": None,
                                               "false_alarms_before_shift": 2}  # fmt: skip
    assert detection([], shift_hour=4)["hours_to_detect"] is None


def _hours(served: list[dict[str, int]], ctrs: list[float]) -> list[dict]:
    return [{"hour": n, "true_ctr": ctr, "served_versions": versions}
            for n, (versions, ctr) in enumerate(zip(served, ctrs, strict=True))]  # fmt: skip


def test_the_after_shift_ctr_is_the_shifted_champions_alone() -> None:
    """Shift at hour 4; champion 1 serves alone through hour 6; v4 swaps in during hour 7;
    v6 (promoted on evidence) from hour 9, v9, the final champion, from hour 12. Only hours
    4-6 measure the shift: 7-11 are earlier replacements' (the old figure averaged 4-11,
    up to the hour the final champion began serving)."""
    served = ([{"1": 10}] * 7 + [{"1": 6, "4": 4}, {"4": 10}, {"4": 3, "6": 7}, {"6": 10},
              {"6": 10}, {"9": 10}, {"9": 10}])  # fmt: skip
    ctrs = [0.046, 0.044, 0.042, 0.040, 0.022, 0.021, 0.020, 0.030, 0.030, 0.080, 0.107,
            0.090, 0.123, 0.125]  # fmt: skip
    hours = _hours(served, ctrs)
    assert after_shift_ctr(hours, shift_hour=4) == pytest.approx((0.022 + 0.021 + 0.020) / 3)
    # The table in any order; a shift hour nobody was served in measures nothing.
    assert after_shift_ctr(hours[::-1], shift_hour=4) == pytest.approx(0.021)
    assert after_shift_ctr(_hours([{"1": 10}, {}, {"1": 10}], [0.04, 0.0, 0.02]), 1) is None
    # Replaced in the shift hour's own traffic: no hour shows the shifted champion alone.
    assert after_shift_ctr(_hours([{"1": 10}, {"1": 9, "4": 1}, {"4": 10}], [0.04, 0.03,
                                  0.05]), 1) is None  # fmt: skip
    # Never replaced: every hour from the shift on.
    assert after_shift_ctr(_hours([{"1": 10}] * 3, [0.04, 0.02, 0.01]), 1) == pytest.approx(0.015)
