"""The promotion gate's decisions, on hand-made per-user values."""

from __future__ import annotations

import numpy as np
import pytest

from recloop.settings import PromotionSettings
from training.evaluation import Evaluation
from training.promotion import decide, paired_bootstrap

SETTINGS = PromotionSettings(bootstrap_samples=500)


def evaluation(protocol: str, values: np.ndarray) -> Evaluation:
    return Evaluation(protocol, 10, {"ndcg": float(values.mean())}, {"ndcg": values},
                      list(range(len(values))))  # fmt: skip


def evaluations(p1: np.ndarray, p2: float = 0.3) -> dict[str, Evaluation]:
    return {"P1": evaluation("P1", p1), "P2": evaluation("P2", np.full(50, p2))}


rng = np.random.default_rng(0)
BASE = rng.uniform(0.2, 0.6, size=300)


def test_paired_bootstrap_interval_contains_the_mean() -> None:
    mean, low, high = paired_bootstrap(BASE + 0.05, BASE, 1000, 0.95, seed=1)
    assert low <= mean <= high
    assert mean == pytest.approx(0.05)


def test_a_clearly_better_challenger_is_promoted() -> None:
    decision = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS, data_gate_passed=True)
    assert decision.promote, decision.reasons
    assert decision.numbers["gain.P1.ndcg.low"] > 0


def test_noise_is_not_promoted() -> None:
    noisy = BASE + rng.normal(0, 0.05, size=BASE.size)
    decision = decide(evaluations(noisy), evaluations(BASE), SETTINGS, data_gate_passed=True)
    assert not decision.promote
    assert "does not clear the margin" in decision.reasons[0]


def test_a_worse_challenger_is_not_promoted() -> None:
    decision = decide(evaluations(BASE - 0.1), evaluations(BASE), SETTINGS, data_gate_passed=True)
    assert not decision.promote


def test_a_cold_start_drop_blocks_promotion() -> None:
    decision = decide(evaluations(BASE + 0.05, p2=0.1), evaluations(BASE, p2=0.3), SETTINGS,
                      data_gate_passed=True)  # fmt: skip
    assert not decision.promote
    assert any("P2 NDCG@10 drops" in reason for reason in decision.reasons)


def test_a_failed_data_gate_blocks_everything() -> None:
    decision = decide(evaluations(BASE + 0.2), None, SETTINGS, data_gate_passed=False)
    assert not decision.promote and "data gate failed" in decision.reasons[0]


def test_first_champion_must_beat_popularity() -> None:
    assert decide(evaluations(BASE), None, SETTINGS, data_gate_passed=True).promote
    decision = decide(evaluations(BASE), None, SETTINGS, data_gate_passed=True,
                      popularity=evaluations(BASE + 0.1))  # fmt: skip
    assert not decision.promote


def off_policy(value: float, low: float, high: float, matches: int = 400) -> dict[str, float]:
    return {"impressions": 5000.0, "matches": float(matches), "challenger_value": value,
            "challenger_low": low, "challenger_upper": high, "champion_online": 0.05,
            "champion_low": 0.044, "champion_high": 0.056}  # fmt: skip


def test_off_policy_refuses_a_challenger_whose_interval_lies_below_the_online_ctr() -> None:
    decision = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=off_policy(0.02, 0.01, 0.03))  # fmt: skip
    assert not decision.promote
    assert "lies below the served policy's online CTR 0.0500" in decision.reasons[-1]
    assert decision.numbers["off_policy.challenger_upper"] == 0.03


@pytest.mark.parametrize(
    ("estimate", "reason"),
    [
        (off_policy(0.07, 0.06, 0.08), "against the served policy's online CTR"),
        (off_policy(0.04, 0.01, 0.07), "against the served policy's online CTR"),  # wide: no
        (off_policy(0.0, 0.0, 0.0, matches=3), "only 3 of 5000 logged impressions match"),
        ({"impressions": 0.0}, "no logged impressions"),
    ],
)
def test_off_policy_never_blocks_without_evidence_against(estimate, reason: str) -> None:
    decision = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=estimate)  # fmt: skip
    assert decision.promote, decision.reasons
    assert reason in decision.reasons[-1]


def test_off_policy_does_not_rescue_a_challenger_the_protocols_refuse() -> None:
    decision = decide(evaluations(BASE - 0.1), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=off_policy(0.09, 0.08, 0.10))  # fmt: skip
    assert not decision.promote
