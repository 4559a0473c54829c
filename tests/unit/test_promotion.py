"""The promotion gate's decisions, on hand-made per-user values."""

from __future__ import annotations

import numpy as np
import pytest

from recloop.settings import PromotionSettings, Settings
from tests.unit.training_data import logged_window
from training.evaluation import Evaluation
from training.promotion import decide, paired_bootstrap

SETTINGS = PromotionSettings(bootstrap_samples=500)


def evaluation(
    protocol: str, values: np.ndarray, digest: str | None = None, first_user: int = 0
) -> Evaluation:
    users = [f"u{first_user + i}" for i in range(len(values))]
    return Evaluation(protocol, 10, {"ndcg": float(values.mean())}, {"ndcg": values},
                      list(range(len(values))), user_ids=users, data_digest=digest)  # fmt: skip


def evaluations(
    p1: np.ndarray, p2: float = 0.3, digest: str | None = None
) -> dict[str, Evaluation]:
    return {"P1": evaluation("P1", p1, digest), "P2": evaluation("P2", np.full(50, p2), digest)}


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


def off_policy(
    value: float, low: float, high: float, matches: int = 400, widen: float = 0.0
) -> dict[str, float]:
    """gate_estimate's numbers against a served CTR of 0.05; the paired gain's interval is
    the challenger's shifted by it, ``widen`` wider on each side (the served CTR's noise)."""
    return {"impressions": 5000.0, "matches": float(matches), "challenger_value": value,
            "challenger_low": low, "challenger_high": high, "champion_online": 0.05,
            "champion_low": 0.044, "champion_high": 0.056, "gain_value": value - 0.05,
            "gain_low": low - 0.05 - widen, "gain_high": high - 0.05 + widen}  # fmt: skip


def test_off_policy_refuses_a_challenger_whose_paired_gain_lies_below_zero() -> None:
    decision = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=off_policy(0.02, 0.01, 0.03))  # fmt: skip
    assert not decision.promote
    assert "online CTR 0.0500: gain -0.0300 [-0.0400, -0.0200]" in decision.reasons[-1]
    assert "wholly below zero" in decision.reasons[-1]
    assert decision.numbers["off_policy.gain_high"] == pytest.approx(-0.02)


def test_off_policy_weighs_the_served_ctrs_noise_too() -> None:
    # The challenger's own interval lies below the served CTR, but the served CTR is an
    # estimate too: the paired gain's interval holds zero, which is no evidence against.
    decision = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=off_policy(0.045, 0.041, 0.049, widen=0.004))  # fmt: skip
    assert decision.promote, decision.reasons


@pytest.mark.parametrize(
    ("estimate", "reason"),
    [
        (off_policy(0.07, 0.06, 0.08), "against the served policy's online CTR"),
        (off_policy(0.04, 0.01, 0.07), "on the same impressions"),  # wide: no evidence
        (off_policy(0.0, 0.0, 0.0, matches=3), "only 3 of 5000 logged impressions match"),
        ({"impressions": 0.0}, "no logged impressions"),
    ],
)
def test_off_policy_never_blocks_without_evidence_against(estimate, reason: str) -> None:
    decision = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=estimate)  # fmt: skip
    assert decision.promote, decision.reasons
    assert reason in decision.reasons[-1]


def test_a_failed_off_policy_check_holds_the_champion_unless_told_otherwise() -> None:
    # A check that could not run is no evidence for the challenger: by default it stays out,
    # and the reason names the setting that lets offline evidence decide alone.
    decision = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy={"failed": 1.0})  # fmt: skip
    assert not decision.promote
    assert "the estimate failed" in decision.reasons[-1]
    assert "promotion.off_policy_on_failure=offline" in decision.reasons[-1]
    lenient = SETTINGS.model_copy(update={"off_policy_on_failure": "offline"})
    decision = decide(evaluations(BASE + 0.05), evaluations(BASE), lenient, data_gate_passed=True,
                      off_policy={"failed": 1.0})  # fmt: skip
    assert decision.promote, decision.reasons
    assert "not computed (the estimate failed" in decision.reasons[-1]


def test_off_policy_does_not_rescue_a_challenger_the_protocols_refuse() -> None:
    decision = decide(evaluations(BASE - 0.1), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=off_policy(0.09, 0.08, 0.10))  # fmt: skip
    assert not decision.promote


def test_the_gates_estimate_is_fitted_before_the_window_it_is_judged_on(tmp_path) -> None:
    """Known users click in the logged window, and those clicks are in the training data. A
    model that learned them leaves each clicked item out of its own slate (already seen) and
    never matches a click; the gate refits the recipe on what came before the window, and
    its interval holds the target's true CTR."""
    from monitoring import logs, ope
    from training.off_policy import gate_off_policy
    from training.pipeline import fit_recipe

    settings, data, the_recipe, truth, start, end = logged_window(Settings(home=tmp_path))
    described = {"last_interaction_at": end.isoformat()}
    estimate = gate_off_policy(settings, the_recipe, described, data=data, show_progress=False)
    assert estimate["challenger_low"] <= truth <= estimate["challenger_high"]
    # The registered model, fitted on everything, is what must not be judged on the window.
    leaked = fit_recipe(the_recipe, data, settings, show_progress=False)
    frame = logs.impressions(settings, start, end)
    assert ope.gate_estimate(frame, leaked)["challenger_high"] < truth


def test_off_policy_selection_picks_the_candidate_the_log_favours(tmp_path) -> None:
    """The same window, with EASE as the champion's recipe: users click only popularity's
    slate, so the off-policy selection picks popularity, with a paired gain over EASE whose
    interval lies above zero, even though this run trained EASE too. With too little
    overlap, or no impressions, nothing is chosen and the reason says why."""
    from datetime import timedelta

    from training.off_policy import CHAMPION_RECIPE, select_off_policy
    from training.pipeline import recipe

    settings, data, popularity, truth, start, end = logged_window(Settings(home=tmp_path))
    ease = recipe("ease", settings)
    summaries = [{"version": "1", "recipe": ease}, {"version": "2", "recipe": popularity}]
    described = {"last_interaction_at": end.isoformat()}
    chosen = select_off_policy(settings, summaries, ease, described, data=data,
                               show_progress=False)  # fmt: skip
    assert chosen.chosen is summaries[1], chosen.reason
    estimate = chosen.estimate
    assert estimate["challenger_low"] <= truth <= estimate["challenger_high"]
    assert estimate["baseline_value"] == pytest.approx(chosen.estimates["1"]["challenger_value"])
    assert estimate["gain_value"] == pytest.approx(
        estimate["challenger_value"] - estimate["baseline_value"])  # fmt: skip
    assert estimate["gain_low"] > 0 and estimate["alpha"] == pytest.approx(0.05 / 2)
    assert "position-based IPS CTR on 9000 logged impressions: popularity (v2)" in chosen.reason
    # A champion recipe this run did not retrain is refitted as the baseline, by name.
    other = select_off_policy(settings, summaries[1:], ease, described, data=data,
                              show_progress=False)  # fmt: skip
    assert CHAMPION_RECIPE in other.estimates and other.chosen is summaries[1]
    assert other.estimate["baseline_value"] == pytest.approx(estimate["baseline_value"])
    # Too little overlap, and no impressions at all: nothing chosen, the offline criterion
    # decides, and the reason says so.
    strict = settings.model_copy(update={"promotion": settings.promotion.model_copy(
        update={"off_policy_min_matches": 10**6})})  # fmt: skip
    few = select_off_policy(strict, summaries, ease, described, data=data, show_progress=False)
    assert few.chosen is None and "no candidate matches 1000000" in few.reason
    early = {"last_interaction_at": (start - timedelta(hours=1)).isoformat()}
    none = select_off_policy(settings, summaries, ease, early, data=data, show_progress=False)
    assert none.chosen is None and "no impressions logged" in none.reason
    assert none.reason.endswith("chosen and judged offline")


def test_the_off_policy_criterion_decides_on_the_gain_over_the_champions_recipe() -> None:
    def gain(low: float, high: float) -> dict[str, float]:
        return {**off_policy(0.07, 0.06, 0.08), "baseline_value": 0.05, "gain_value": 0.02,
                "gain_low": low, "gain_high": high, "alpha": 0.025}  # fmt: skip

    # Worse offline, better on the log: promoted, the NDCG gain reported, not deciding.
    decision = decide(evaluations(BASE - 0.1), evaluations(BASE), SETTINGS,
                      data_gate_passed=True, off_policy=gain(0.01, 0.03),
                      criterion="off_policy")  # fmt: skip
    assert decision.promote, decision.reasons
    assert "(reported; the off-policy gain decides)" in decision.reasons[0]
    assert "gain +0.0200, 97.5% interval [+0.0100, +0.0300] lies above" in decision.reasons[-1]
    # Better offline, an interval that holds zero on the log: kept.
    decision = decide(evaluations(BASE + 0.1), evaluations(BASE), SETTINGS,
                      data_gate_passed=True, off_policy=gain(-0.01, 0.05),
                      criterion="off_policy")  # fmt: skip
    assert not decision.promote and "does not clear the margin" in decision.reasons[-1]

    # Cold start is judged on the new users' logged impressions: P2 is reported, not binding;
    # a cold-start gain wholly below zero refuses, and too few matched is not judged.
    def cold(low: float, high: float, matches: int = 400) -> dict[str, float]:
        return {**gain(0.01, 0.03), "cold_impressions": 2000.0, "cold_matches": float(matches),
                "cold_gain_value": (low + high) / 2, "cold_gain_low": low,
                "cold_gain_high": high}  # fmt: skip

    worse_p2 = {"challenger": evaluations(BASE, p2=0.1), "champion": evaluations(BASE, p2=0.3)}
    decision = decide(*worse_p2.values(), SETTINGS, data_gate_passed=True,
                      off_policy=cold(-0.01, 0.02), criterion="off_policy")  # fmt: skip
    assert decision.promote, decision.reasons
    assert any("cold-start protocols reported, not binding (P2 0.3000 -> 0.1000)" in r
               for r in decision.reasons)  # fmt: skip
    assert "cold start: gain +0.0050 [-0.0100, +0.0200] on the 2000" in decision.reasons[-2]
    decision = decide(*worse_p2.values(), SETTINGS, data_gate_passed=True,
                      off_policy=cold(-0.03, -0.01), criterion="off_policy")  # fmt: skip
    assert not decision.promote and "wholly below zero" in decision.reasons[-2]
    decision = decide(*worse_p2.values(), SETTINGS, data_gate_passed=True,
                      off_policy=cold(-0.03, -0.01, matches=3), criterion="off_policy")  # fmt: skip
    assert decision.promote and "3 of 2000 logged impressions" in decision.reasons[-2]
    # With off_policy_cold_start "offline", the cold-start protocols bind as they do offline.
    offline = PromotionSettings(bootstrap_samples=500, off_policy_cold_start="offline")
    decision = decide(*worse_p2.values(), offline, data_gate_passed=True,
                      off_policy=cold(0.01, 0.02), criterion="off_policy")  # fmt: skip
    assert not decision.promote and any("P2 NDCG@10 drops" in r for r in decision.reasons)
    # Too many of the challenger's slots unlogged: the log cannot judge it, either way.
    unjudged = {**gain(0.01, 0.03), "unlogged_share": 0.1}
    decision = decide(evaluations(BASE), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=unjudged, criterion="off_policy")  # fmt: skip
    assert not decision.promote and "10.0% of the challenger's slots" in decision.reasons[-1]
    veto = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS, data_gate_passed=True,
                  off_policy={**off_policy(0.02, 0.01, 0.03), "unlogged_share": 0.1})  # fmt: skip
    assert veto.promote and veto.reasons[-1].endswith("; not used"), veto.reasons
    # Every slot logged, but its mean importance weight well short of 1: the log has barely
    # met its items, and the tight interval is not to be trusted either way.
    rare = {**gain(0.01, 0.03), "support_value": 0.6, "support_low": 0.55, "support_high": 0.7}
    decision = decide(evaluations(BASE), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=rare, criterion="off_policy")  # fmt: skip
    assert not decision.promote
    assert "mean importance weight is 0.600 [0.550, 0.700], below 0.95" in decision.reasons[-1]
    # Or about 1 but too uncertain to say whether the log has met the challenger's weights.
    unsure = {**rare, "support_value": 1.1, "support_low": 0.4, "support_high": 1.8}
    decision = decide(evaluations(BASE), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=unsure, criterion="off_policy")  # fmt: skip
    assert not decision.promote and "wider than +-0.5" in decision.reasons[-1]
    # Its upper bound reaching 0.95 (1 less the unlogged share allowed), within +-0.5: enough.
    supported = {**rare, "support_value": 0.9, "support_low": 0.8, "support_high": 1.0}
    decision = decide(evaluations(BASE), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=supported, criterion="off_policy")  # fmt: skip
    assert decision.promote, decision.reasons
    # A position-based IPS gain has no reward model: unlogged slots and a short mean weight
    # only pull the challenger's estimate down, so a gain clearing the margin promotes...
    ips = {"position_based": 1.0, "baseline_unlogged_share": 0.0}
    short = {**rare, **ips, "unlogged_share": 0.1}
    decision = decide(evaluations(BASE), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=short, criterion="off_policy")  # fmt: skip
    assert decision.promote, decision.reasons
    # ...but not when the champion's slates it subtracts are the ones short of support (the
    # gain is then inflated), nor when the weights are too uncertain, nor as a veto.
    inflated = {**short, "baseline_unlogged_share": 0.1}
    decision = decide(evaluations(BASE), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy=inflated, criterion="off_policy")  # fmt: skip
    assert not decision.promote and "10.0% of the baseline's slots" in decision.reasons[-1]
    decision = decide(evaluations(BASE), evaluations(BASE), SETTINGS, data_gate_passed=True,
                      off_policy={**unsure, **ips}, criterion="off_policy")  # fmt: skip
    assert not decision.promote and "wider than +-0.5" in decision.reasons[-1]
    ips_veto = {**off_policy(0.02, 0.01, 0.03), **ips, "unlogged_share": 0.1}
    veto = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS, data_gate_passed=True,
                  off_policy=ips_veto)  # fmt: skip
    assert veto.promote and veto.reasons[-1].endswith("; not used"), veto.reasons
    with pytest.raises(ValueError, match="needs the challenger's estimate"):
        decide(evaluations(BASE), evaluations(BASE), SETTINGS, data_gate_passed=True,
               criterion="off_policy")  # fmt: skip
    with pytest.raises(ValueError, match="criterion: 'online'"):
        decide(evaluations(BASE), None, SETTINGS, data_gate_passed=True, criterion="online")


def test_the_gate_can_judge_on_the_recent_protocol() -> None:
    # Better on the newest interactions, worse on the whole history: promoted when the gate
    # judges on recent, not on P1.
    def both(p1: np.ndarray, recent: np.ndarray) -> dict[str, Evaluation]:
        return {**evaluations(p1), "recent": evaluation("recent", recent)}

    challenger, champion = both(BASE - 0.05, BASE + 0.1), both(BASE, BASE)
    on_p1 = decide(challenger, champion, SETTINGS, data_gate_passed=True)
    recent = PromotionSettings(bootstrap_samples=500, protocol="recent")
    on_recent = decide(challenger, champion, recent, data_gate_passed=True)
    assert not on_p1.promote and on_recent.promote, on_recent.reasons
    assert on_recent.reasons[0].startswith("recent NDCG@10 gain +0.1000")
    assert on_recent.numbers["gain.recent.ndcg.low"] > 0
    with pytest.raises(ValueError, match="needs a recent evaluation"):
        decide(evaluations(BASE), champion, recent, data_gate_passed=True)


def test_gate_estimates_weigh_every_model_and_the_new_users_alike(tmp_path) -> None:
    """Several models and cold-start impressions on one log with per-slot propensities: each
    model gets the position-based numbers, its cold-start gain among them."""
    from monitoring import logs, ope
    from training.pipeline import fit_recipe, recipe

    settings, data, _, _, start, end = logged_window(Settings(home=tmp_path))
    models = {name: fit_recipe(recipe(name, settings), data, settings, show_progress=False)
              for name in ("popularity", "ease")}  # fmt: skip
    frame = logs.impressions(settings, start, end)
    new_user = frame["request_id"].map(lambda r: int(r, 16) % 2 == 0)  # every other request
    frame["served_by"] = np.where(new_user, "popularity", "history")
    numbers = ope.gate_estimates(frame, models, baseline="ease", weights="position_based")
    for values in numbers.values():
        assert values["position_based"] == 1.0 and values["cold_impressions"] > 0
        assert {"support_value", "cold_gain_value", "baseline_value"} <= set(values)
    assert ope.label(numbers["popularity"]) == "position-based IPS"


def gain_estimate(low: float, high: float) -> dict[str, float]:
    """An off-policy gain over the champion (the off-policy criterion's evidence)."""
    return {**off_policy(0.07, 0.06, 0.08), "baseline_value": 0.05, "gain_value": 0.02,
            "gain_low": low, "gain_high": high, "alpha": 0.025}  # fmt: skip


def test_the_gain_pairs_each_user_with_the_same_user_not_the_same_row() -> None:
    """Rows number one split's queries: a user missing on one side (here u0, with no rankable
    item for the champion) shifts every row after it. Paired by user id, a challenger that is
    exactly 0.05 better for every user has a gain of exactly 0.05, interval and all."""
    challenger = {"P1": evaluation("P1", BASE + 0.05)}
    champion = {"P1": evaluation("P1", BASE[1:], first_user=1)}
    decision = decide(challenger, champion, SETTINGS, data_gate_passed=True)
    assert decision.promote, decision.reasons
    for name in ("gain.P1.ndcg", "gain.P1.ndcg.low", "gain.P1.ndcg.high"):
        assert decision.numbers[name] == pytest.approx(0.05)
    # The same users in another order pair just as well.
    order = np.random.default_rng(1).permutation(len(BASE))
    shuffled = Evaluation("P1", 10, {"ndcg": float(BASE.mean())}, {"ndcg": BASE[order]},
                          list(range(len(BASE))), user_ids=[f"u{i}" for i in order])  # fmt: skip
    decision = decide(challenger, {"P1": shuffled}, SETTINGS, data_gate_passed=True)
    assert decision.numbers["gain.P1.ndcg.low"] == pytest.approx(0.05)


def test_evaluations_of_other_data_or_without_user_ids_are_never_paired() -> None:
    """Splits of different data hold out different items for the same user, and evaluations
    saved before user ids were recorded name no one: the offline criterion, whose gain
    decides, refuses to decide on them; the off-policy one reports no offline gain."""
    mine, theirs = evaluations(BASE + 0.05, digest="aaa"), evaluations(BASE, digest="bbb")
    with pytest.raises(ValueError, match="interactions digests aaa and bbb"):
        decide(mine, theirs, SETTINGS, data_gate_passed=True)
    decision = decide(mine, theirs, SETTINGS, data_gate_passed=True,
                      off_policy=gain_estimate(0.01, 0.03), criterion="off_policy")  # fmt: skip
    assert decision.promote, decision.reasons
    assert decision.reasons[0].startswith(
        "P1 NDCG@10 gain not reported: the challenger and the champion were evaluated on "
        "different data (interactions digests aaa and bbb)")  # fmt: skip
    assert not any(name.startswith("gain.") for name in decision.numbers)

    legacy = evaluations(BASE)
    for old in legacy.values():
        old.user_ids = None  # as read_evaluations loads a file saved before ids were recorded
    with pytest.raises(ValueError, match="the champion's P1 evaluation names no users"):
        decide(evaluations(BASE + 0.05), legacy, SETTINGS, data_gate_passed=True)
    # The caller may know more than the evaluations show (two training runs on data whose
    # digest was not recorded): its reason is reported, and nothing is paired.
    decision = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS,
                      data_gate_passed=True, off_policy=gain_estimate(0.01, 0.03),
                      criterion="off_policy", not_paired="two runs")  # fmt: skip
    assert decision.reasons[0].startswith("P1 NDCG@10 gain not reported: two runs")
    with pytest.raises(ValueError, match="but two runs"):
        decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS, data_gate_passed=True,
               not_paired="two runs")  # fmt: skip


def test_cold_start_protocols_not_evaluated_are_named_in_the_reasons() -> None:
    # P2 judged; P3a and P3b evaluated on neither side (left out, or no user qualified).
    decision = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS, data_gate_passed=True)
    assert decision.promote, decision.reasons
    assert decision.reasons[1:] == ["P3a not evaluated: cold start not judged on it",
                                    "P3b not evaluated: cold start not judged on it"]  # fmt: skip
    # One side only: it says which; a drop on what was judged still refuses.
    p3b = evaluation("P3b", np.full(40, 0.2))
    challenger = {"P1": evaluation("P1", BASE + 0.05), "P3b": p3b}
    champion = {**evaluations(BASE, p2=0.3), "P3b": evaluation("P3b", np.full(40, 0.4))}
    decision = decide(challenger, champion, SETTINGS, data_gate_passed=True)
    assert not decision.promote
    assert "P2 not evaluated for the challenger: cold start not judged on it" in decision.reasons
    assert "P3a not evaluated: cold start not judged on it" in decision.reasons
    assert any(r.startswith("P3b NDCG@10 drops from 0.4000") for r in decision.reasons)
    # None at all: said once, and the rule (where evaluated) has nothing to refuse on.
    decision = decide({"P1": evaluation("P1", BASE + 0.05)}, {"P1": evaluation("P1", BASE)},
                      SETTINGS, data_gate_passed=True)  # fmt: skip
    assert decision.promote, decision.reasons
    assert decision.reasons[1:] == ["no cold-start protocol (P2, P3a, P3b) was evaluated for "
                                    "both sides: cold start not judged"]  # fmt: skip


def test_evaluations_name_their_users_and_data_and_keep_them_when_saved(tmp_path) -> None:
    """evaluate() keys each per-user value by the user's id (P3a/P3b describe new users and
    name none) and tags it with the data's digest; save/read keeps both, and a file saved
    before they were recorded loads without them, so that it is never paired."""
    from dataclasses import replace

    from tests.unit.training_data import synthetic
    from training import protocols
    from training.evaluation import evaluate
    from training.pipeline import fit_recipe, read_evaluations, recipe, save_evaluations

    data = synthetic()
    data = replace(data, snapshot={"interactions_digest": "aaa"})
    settings = Settings(home=tmp_path)
    found = {}
    for name in ("P1", "P3a"):
        split = protocols.split(data, name)
        model = fit_recipe(recipe("popularity", settings), split.train, settings,
                           show_progress=False)  # fmt: skip
        found[name] = evaluate(model, split)
    p1 = found["P1"]
    queries = protocols.split(data, "P1").queries
    assert p1.user_ids == [queries[row].user_id for row in p1.users]
    assert p1.data_digest == "aaa" and found["P3a"].user_ids is None

    back = read_evaluations(save_evaluations(found, tmp_path / "evaluations.npz"))
    assert back["P1"].user_ids == p1.user_ids and back["P1"].data_digest == "aaa"
    assert back["P3a"].user_ids is None and back["P3a"].data_digest == "aaa"
    np.testing.assert_array_equal(back["P1"].per_user["ndcg"], p1.per_user["ndcg"])
    assert back["P1"].metrics == pytest.approx(p1.metrics)

    legacy = tmp_path / "legacy.npz"
    np.savez(legacy, **{"P1|users": np.arange(3), "P1|k": np.asarray(10),
                        "P1|ndcg": np.array([0.1, 0.2, 0.3])})  # fmt: skip
    old = read_evaluations(legacy)["P1"]
    assert old.user_ids is None and old.data_digest is None and old.users == [0, 1, 2]
    assert old.metrics == {"ndcg": pytest.approx(0.2)}


def test_the_best_of_several_candidates_is_judged_at_a_bonferroni_level() -> None:
    """The challenger is the best of the run's candidates on the very users its gain is then
    measured on, so it looks better there than it is. Three candidates exactly as good as the
    champion (per-user noise only), 200 trials: at the plain level the best of three clears a
    zero margin far more often than a one-sided 2.5%; adjusted over the three, it does not."""
    settings = PromotionSettings(bootstrap_samples=400)
    trials = np.random.default_rng(7)
    promoted = {1: 0, 3: 0}
    for trial in range(200):
        truth = trials.uniform(0.2, 0.6, size=200)
        champion = evaluations(np.clip(truth + trials.normal(0, 0.15, 200), 0, 1))
        candidates = [evaluations(np.clip(truth + trials.normal(0, 0.15, 200), 0, 1))
                      for _ in range(3)]  # fmt: skip
        best = max(candidates, key=lambda c: c["P1"].metrics["ndcg"])
        for chosen_from in promoted:
            decision = decide(best, champion, settings, data_gate_passed=True, seed=trial,
                              chosen_from=chosen_from)  # fmt: skip
            promoted[chosen_from] += decision.promote
    assert promoted[1] / 200 > 0.05  # the selection effect: well above the nominal 2.5%
    assert promoted[3] / 200 <= 0.035
    decision = decide(evaluations(BASE + 0.05), evaluations(BASE), SETTINGS,
                      data_gate_passed=True, chosen_from=4)  # fmt: skip
    assert "95% (Bonferroni over 4 candidates: 98.75%) interval" in decision.reasons[0]
    assert decision.numbers["gain.P1.ndcg.confidence"] == pytest.approx(0.9875)
