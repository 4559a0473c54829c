"""Policies: the logged propensities are the frequencies the policy really produces, in the
slot each item was shown in and in every other slot of the slate."""

from __future__ import annotations

import numpy as np
import pytest

from serving.policies import (
    Candidates,
    EpsilonGreedy,
    Greedy,
    PlackettLuce,
    Thompson,
    make_policy,
    plackett_luce_marginals,
)

SCORES = np.array([2.0, 1.6, 1.5, 0.7, 0.2, -0.4])
K = 3


def frequencies_and_logged(
    policy, candidates: Candidates, draws: int, seed: int = 0, size: int | None = None
):
    """Empirical P(item at slot) over many slates, and the propensities logged for them: each
    shown item's in every slot (``Slate.slot_propensities``), whose diagonal must be the
    propensity of the slot it was shown in (``size``: how many items, when unscored ones
    follow the scored)."""
    m = size or len(candidates.scores)
    counts = np.zeros((m, K))
    logged: dict[tuple[int, int], set[float]] = {}
    for n in range(draws):
        slate = policy.draw(candidates, K, np.random.default_rng(seed + n))
        everywhere = slate.slot_propensities
        assert everywhere.shape == (len(slate.indices), len(slate.indices))
        np.testing.assert_array_equal(np.diagonal(everywhere), slate.propensities)
        for shown, item in enumerate(slate.indices):
            counts[item, shown] += 1
            for slot in range(len(slate.indices)):
                logged.setdefault((int(item), slot), set()).add(
                    round(float(everywhere[shown, slot]), 9)
                )
    return counts / draws, logged


def assert_matches(freq, logged, draws, spread=0.0):
    """Every logged propensity within 4.5 standard errors (plus ``spread`` for a Monte Carlo
    estimate) of the frequency it claims; every shown pair has a propensity."""
    for (item, slot), values in logged.items():
        for p in values:
            se = np.sqrt(max(p * (1 - p), 1e-4) / draws)
            assert abs(freq[item, slot] - p) < 4.5 * se + spread, (item, slot, p, freq[item, slot])


def test_greedy_is_the_top_k_with_certainty() -> None:
    slate = Greedy().draw(Candidates(SCORES), K, np.random.default_rng(0))
    assert slate.indices.tolist() == [0, 1, 2]
    assert slate.propensities.tolist() == [1.0, 1.0, 1.0]


def test_epsilon_greedy_propensities_match_frequencies() -> None:
    policy = EpsilonGreedy(0.3)
    freq, logged = frequencies_and_logged(policy, Candidates(SCORES), 6000)
    assert_matches(freq, logged, 6000)
    assert logged[(0, 0)] == {round(0.7 + 0.3 / 6, 9)}  # greedy, or drawn into its own slot
    assert logged[(4, 1)] == {round(0.3 / 6, 9)}  # a random slate of the six candidates
    # A greedy item also shows in the other slots: any model ranking these candidates has
    # every (item, slot) pair in the log's support.
    assert freq[0, 1] > 0 and freq[0, 2] > 0 and set(logged) == {(i, k) for i in range(6)
                                                                 for k in range(K)}  # fmt: skip


def test_epsilon_greedy_explores_unscored_items_with_exact_propensities() -> None:
    """Two unscored items (positions 6 and 7) join the six scored ones in the random slates:
    each drawn with epsilon / 8 in any slot, never greedily; the policies that cannot weigh
    an item without a score never show one."""
    candidates = Candidates(SCORES, np.zeros(6), np.zeros(6), unscored=2)
    freq, logged = frequencies_and_logged(EpsilonGreedy(0.3), candidates, 6000, size=8)
    assert_matches(freq, logged, 6000)
    assert logged[(7, 2)] == {round(0.3 / 8, 9)} and logged[(4, 0)] == {round(0.3 / 8, 9)}
    assert logged[(0, 0)] == {round(0.7 + 0.3 / 8, 9)}
    assert freq[6:].sum() > 0
    for policy in (Greedy(), PlackettLuce(1.0)):
        assert not policy.explores_unscored
        for seed in range(50):
            slate = policy.draw(candidates, K, np.random.default_rng(seed))
            assert (slate.indices < len(SCORES)).all()
    # Only unscored items below an empty top: nothing to keep, the slate is empty.
    slate = EpsilonGreedy(1.0).draw(Candidates(np.empty(0), unscored=3), K,
                                    np.random.default_rng(0))  # fmt: skip
    assert len(slate.indices) == 0


def test_plackett_luce_propensities_match_frequencies() -> None:
    policy = PlackettLuce(0.5)
    freq, logged = frequencies_and_logged(policy, Candidates(SCORES), 6000)
    assert_matches(freq, logged, 6000)
    assert all(len(values) == 1 for values in logged.values())  # fixed scores, fixed marginals


@pytest.mark.parametrize("temperature", [0.05, 0.3, 3.0])
def test_plackett_luce_marginals_are_distributions(temperature: float) -> None:
    weights = PlackettLuce(temperature).weights(np.random.default_rng(1).normal(size=40))
    marginals = plackett_luce_marginals(weights, np.arange(40), 5)
    np.testing.assert_allclose(marginals.sum(axis=0), 1.0, atol=1e-5)  # each slot holds one item
    assert (marginals.sum(axis=1) <= 1 + 1e-6).all()  # an item holds at most one slot
    np.testing.assert_allclose(marginals[:, 0], weights / weights.sum(), atol=1e-9)  # softmax


def test_thompson_propensities_match_frequencies() -> None:
    clicks = np.array([30, 12, 10, 2, 1, 0])
    shown = np.array([100, 60, 40, 20, 10, 0])
    policy = Thompson(draws=2000)
    freq, logged = frequencies_and_logged(policy, Candidates(SCORES, clicks, shown), 3000)
    # Monte Carlo estimates: their own error (at most 0.5 / sqrt(2000) ~ 0.011) is allowed for.
    assert_matches(freq, logged, 3000, spread=4 * 0.5 / np.sqrt(2000))


def test_thompson_explores_unscored_items_at_the_pooled_rate_with_right_propensities() -> None:
    """Two unscored new items (no impressions yet) follow six known ones: under the pooled-CTR
    prior they are shown about as often as a known item of typical rate, neither never
    (Beta(1, 1) with no way in) nor nearly always (Beta(1, 1)'s mean 0.5 above every known
    item's 0.05-0.3), and their logged propensities match their frequencies."""
    clicks = np.array([30, 12, 10, 2, 1, 0, 0, 0])
    shown = np.array([100, 60, 40, 40, 20, 20, 0, 0])
    candidates = Candidates(SCORES, clicks, shown, unscored=2)
    freq, logged = frequencies_and_logged(Thompson(draws=2000), candidates, 3000, size=8)
    assert_matches(freq, logged, 3000, spread=4 * 0.5 / np.sqrt(2000))
    new_item_shown = freq[6:].sum(axis=1)
    assert (new_item_shown > 0.05).all() and (new_item_shown < 0.5).all(), new_item_shown
    # The clear leader (30 clicks in 100) still holds a slot in nearly every slate.
    assert freq[0].sum() > 0.95


def test_thompson_needs_counts_for_every_candidate() -> None:
    with pytest.raises(ValueError, match="clicks and impressions"):
        Thompson().draw(Candidates(SCORES), K, np.random.default_rng(0))
    short = Candidates(SCORES, np.zeros(6), np.zeros(6), unscored=2)
    with pytest.raises(ValueError, match=r"one count per candidate, scored and unscored \(8\)"):
        Thompson().draw(short, K, np.random.default_rng(0))
    with pytest.raises(ValueError, match="prior_strength"):
        Thompson(prior_strength=0)


def test_slates_never_repeat_an_item_and_respect_short_pools() -> None:
    for policy in (Greedy(), EpsilonGreedy(0.9), PlackettLuce(1.0)):
        for seed in range(50):
            slate = policy.draw(Candidates(SCORES[:4]), 10, np.random.default_rng(seed))
            assert len(slate.indices) == 4 and len(set(slate.indices.tolist())) == 4
            assert ((slate.propensities > 0) & (slate.propensities <= 1)).all()


def test_make_policy_names_the_allowed_values() -> None:
    assert make_policy("plackett_luce", epsilon=0.1, temperature=0.4, draws=100).name == (
        "plackett_luce(temperature=0.4)"
    )
    with pytest.raises(ValueError, match=r"serving\.policy: unknown 'softmax'"):
        make_policy("softmax", epsilon=0.1, temperature=0.4, draws=100)


def test_top_is_training_top_k_on_one_row() -> None:
    """``top`` (the service's per-request ranking) keeps top_k's order: best first, ties by
    position, -inf last; and an empty pool or k = 0 gives nothing."""
    from serving.policies import top
    from training.metrics import top_k

    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        scores = rng.integers(-3, 4, n).astype(float)  # many ties
        scores[rng.random(n) < 0.2] = -np.inf
        k = int(rng.integers(1, n + 3))
        assert top(scores, k).tolist() == top_k(scores[None, :], min(k, n))[0].tolist()
    assert top(np.array([1.0, 3.0, 3.0, 2.0]), 3).tolist() == [1, 2, 3]
    assert top(np.zeros(0), 5).tolist() == [] and top(SCORES, 0).tolist() == []


def test_only_greedy_draws_without_a_generator() -> None:
    """The service seeds a generator per request only for a policy that draws at random:
    greedy is given None and ranks as ever; every other policy says it needs one."""
    assert Greedy().draw(Candidates(SCORES), K, None).indices.tolist() == [0, 1, 2]
    assert not Greedy.draws_at_random
    for name in ("epsilon_greedy", "plackett_luce", "thompson"):
        policy = make_policy(name, epsilon=0.1, temperature=0.2, draws=100)
        assert policy.draws_at_random, name


def test_every_policy_draws_an_empty_slate_from_an_empty_pool() -> None:
    """exclude_seen can leave no candidate (a user who saw the whole pool): every policy then
    shows nothing, rather than failing the request (Plackett-Luce raised a ValueError: a 500)."""
    empty = Candidates(np.empty(0), np.zeros(0), np.zeros(0))
    for name in ("greedy", "epsilon_greedy", "plackett_luce", "thompson"):
        policy = make_policy(name, epsilon=0.1, temperature=0.2, draws=100)
        slate = policy.draw(empty, K, np.random.default_rng(0))
        assert slate.indices.tolist() == [], name
        assert slate.slot_propensities.shape == (0, 0) and slate.propensities.tolist() == [], name
