"""monitoring.estimators against hand-computed values and against vw-estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest
from estimators.bandits import ips as vw_ips
from estimators.bandits import snips as vw_snips
from scipy import stats

from monitoring import estimators

# The two-sided 95% quantiles of Student's t, by degrees of freedom (clusters - 1): what a
# clustered interval's half-width multiplies its standard error by.
T_975 = {1: 12.706204736174698, 3: 3.182446305284263, 4: 2.7764451051977987}


def test_ips_and_snips_by_hand() -> None:
    # Two slates of two slots. Weights pi/mu: 2, 0, 1, 4; clicks 1, 1, 0, 1.
    clicks = [1, 1, 0, 1]
    logged = [0.5, 0.5, 1.0, 0.25]
    target = [1.0, 0.0, 1.0, 1.0]
    slates = ["a", "a", "b", "b"]
    ips = estimators.ips(clicks, logged, target, slates)
    assert ips.value == pytest.approx((2 + 0 + 0 + 4) / 4)
    snips = estimators.snips(clicks, logged, target, slates)
    assert snips.value == pytest.approx(6 / 7)
    # Slate sums of w*c: a = 2, b = 4; centred by value * size (1.5 * 2 = 3): -1, +1.
    # var = J/(J-1) * sum(centred^2) / n^2 = 2 * 2 / 16 = 0.25; two slates: t with 1 df.
    half = T_975[1] * math.sqrt(0.25)
    assert (ips.low, ips.high) == pytest.approx((1.5 - half, 1.5 + half))
    assert ips.impressions == 4 and ips.slates == 2


def test_exposure_and_position_based_weights_by_hand() -> None:
    """Two impressions of a three-slot slate, examination (1, 0.5, 0.25). The first item is
    logged with probabilities (0.8, 0.1, 0.1) over the slots: exposure 0.8 + 0.05 + 0.025;
    a target that puts it in slot 1 exposes it 0.5. The second, logged only in slot 2 (a
    two-slot list: the third slot is past its slate), is not in the target's slate."""
    exam = [1.0, 0.5, 0.25]
    logged = estimators.exposure(exam, [[0.8, 0.1, 0.1], [0.0, 0.2, 0.0]])
    assert logged == pytest.approx([0.875, 0.1])
    target = estimators.exposure(exam, [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert target == pytest.approx([0.5, 0.0])
    # Examination fitted for fewer slots than the slate: the last one's holds further down.
    assert estimators.exposure([1.0, 0.5], [[0.0, 0.0, 1.0]]) == pytest.approx([0.5])
    ips = estimators.ips([1, 1], logged, target, ["a", "a"])
    assert ips.value == pytest.approx((0.5 / 0.875) / 2)
    with pytest.raises(ValueError, match="examination: one row per impression"):
        estimators.exposure([[1.0, 0.5]] * 3, [[0.5, 0.5]] * 2)


def test_bootstrapped_interval_is_the_replicates_spread() -> None:
    replicates = [0.9, 1.1, 1.0, 1.0]
    estimate = estimators.bootstrapped("pbm_ips", 1.0, replicates, 40, 4)
    half = T_975[3] * float(np.std(replicates, ddof=1))  # 4 clusters resampled: t with 3 df
    assert (estimate.low, estimate.high) == pytest.approx((1 - half, 1 + half))
    assert math.isinf(estimators.bootstrapped("pbm_ips", 1.0, [1.0], 40, 4).high)
    # One slate: every replicate is the same slate again, so no interval can be read off.
    assert math.isinf(estimators.bootstrapped("pbm_ips", 1.0, replicates, 10, 1).high)


def _random_log(
    seed: int, n: int, lowest_propensity: float, ctr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logged propensities, target probabilities, clicks) of n impressions."""
    rng = np.random.default_rng(seed)
    logged = rng.uniform(lowest_propensity, 1.0, n)
    target = rng.uniform(0.0, 1.0, n)
    clicks = (rng.random(n) < ctr).astype(float)
    return logged, target, clicks


def test_point_values_match_vw_estimators() -> None:
    n = 2000
    logged, target, clicks = _random_log(3, n, lowest_propensity=0.05, ctr=0.2)
    slates = np.arange(n) // 10
    vw_i, vw_s = vw_ips.Estimator(), vw_snips.Estimator()
    for p_log, r, p_pred in zip(logged, clicks, target, strict=True):
        vw_i.add_example(p_log, r, p_pred)
        vw_s.add_example(p_log, r, p_pred)
    assert estimators.ips(clicks, logged, target, slates).value == pytest.approx(vw_i.get())
    assert estimators.snips(clicks, logged, target, slates).value == pytest.approx(vw_s.get())


def test_doubly_robust_reduces_to_ips_with_a_zero_model_and_is_exact_with_a_perfect_one() -> None:
    n = 500
    logged, target, clicks = _random_log(5, n, lowest_propensity=0.1, ctr=0.3)
    slates = np.arange(n)
    zero = estimators.doubly_robust(clicks, logged, target, slates,
                                    predicted=np.zeros(n), direct=np.zeros(n))  # fmt: skip
    assert zero.value == pytest.approx(estimators.ips(clicks, logged, target, slates).value)
    # A model that predicts every click exactly leaves only the direct term.
    exact = estimators.doubly_robust(clicks, logged, target, slates,
                                     predicted=clicks, direct=np.full(n, 0.42))  # fmt: skip
    assert exact.value == pytest.approx(0.42)
    assert exact.high - exact.low == pytest.approx(0.0, abs=1e-12)


def test_the_paired_gain_is_dr_less_the_logged_ctr_with_the_differences_interval() -> None:
    n = 4000
    logged, target, clicks = _random_log(5, n, lowest_propensity=0.1, ctr=0.3)
    slates = np.arange(n) // 4
    model = {"predicted": np.full(n, 0.3), "direct": np.full(n, 0.3) * target}
    dr = estimators.doubly_robust(clicks, logged, target, slates, **model)
    gain = estimators.doubly_robust_gain(clicks, logged, target, slates, **model)
    assert gain.value == pytest.approx(dr.value - clicks.mean())
    # Hand-computed: the slate-clustered normal interval of the per-impression differences.
    terms = model["direct"] + target / logged * (clicks - model["predicted"]) - clicks
    sums = np.bincount(slates, weights=terms) - terms.mean() * np.bincount(slates)
    half = stats.t.ppf(0.975, n / 4 - 1) * np.sqrt((sums**2).sum() * (n / 4) / (n / 4 - 1)) / n
    assert (gain.low, gain.high) == pytest.approx((gain.value - half, gain.value + half))
    # The target logged policy itself gains nothing, exactly, with a zero-width interval.
    same = estimators.doubly_robust_gain(clicks, logged, logged, slates, predicted=clicks,
                                         direct=clicks)  # fmt: skip
    assert (same.value, same.low, same.high) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


def test_the_difference_of_two_targets_is_their_paired_dr_difference() -> None:
    n = 4000
    logged, target, clicks = _random_log(7, n, lowest_propensity=0.1, ctr=0.3)
    other = np.random.default_rng(8).uniform(0.0, 1.0, n)
    slates = np.arange(n) // 4
    predicted = np.full(n, 0.3)
    a = estimators.doubly_robust(clicks, logged, target, slates, predicted=predicted,
                                 direct=0.3 * target)  # fmt: skip
    b = estimators.doubly_robust(clicks, logged, other, slates, predicted=predicted,
                                 direct=0.2 * other)  # fmt: skip
    difference = estimators.doubly_robust_difference(
        clicks, logged, target, other, slates, predicted=predicted, direct=0.3 * target,
        baseline_direct=0.2 * other,
    )  # fmt: skip
    assert difference.value == pytest.approx(a.value - b.value)
    # Hand-computed: the slate-clustered interval of the per-impression differences of terms.
    terms = (0.3 * target + target / logged * (clicks - predicted)) - (
        0.2 * other + other / logged * (clicks - predicted)
    )
    sums = np.bincount(slates, weights=terms) - terms.mean() * np.bincount(slates)
    half = stats.t.ppf(0.975, n / 4 - 1) * np.sqrt((sums**2).sum() * (n / 4) / (n / 4 - 1)) / n
    assert (difference.low, difference.high) == pytest.approx(
        (difference.value - half, difference.value + half)
    )
    # Paired, it is narrower than the two intervals side by side would suggest.
    assert difference.high - difference.low < (a.high - a.low) + (b.high - b.low)
    # A target against itself differs by nothing, exactly.
    same = estimators.doubly_robust_difference(
        clicks, logged, target, target, slates, predicted=predicted, direct=0.3 * target,
        baseline_direct=0.3 * target,
    )  # fmt: skip
    assert (same.value, same.low, same.high) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


def test_on_policy_ips_is_the_ctr() -> None:
    clicks = np.array([1, 0, 0, 1, 0, 0, 0, 0])
    p = np.full(8, 0.3)
    estimate = estimators.ips(clicks, p, p, np.arange(8) // 2)
    assert estimate.value == pytest.approx(0.25)
    assert estimators.snips(clicks, p, p, np.arange(8) // 2).value == pytest.approx(0.25)


def test_wilson_matches_the_formula() -> None:
    low, high = estimators.wilson(5, 50)
    z = 1.959963984540054
    p, n = 0.1, 50
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (low, high) == pytest.approx((centre - half, centre + half))
    # A fractional count (a weighted rate at its effective size) gives the same interval.
    assert estimators.wilson(0.1 * 50.0, 50.0) == pytest.approx((low, high))


def test_clustered_ctr_with_one_impression_per_cluster_is_wilson() -> None:
    rng = np.random.default_rng(3)
    clicks = (rng.random(400) < 0.1).astype(float)
    rate, low, high, effective = estimators.clustered_ctr(clicks, np.arange(400))
    assert effective == pytest.approx(400)
    assert (low, high) == pytest.approx(estimators.wilson(clicks.sum(), 400))
    # Weighted, it is Wilson at Kish's size (sum w)^2 / sum w^2.
    weights = rng.random(400)
    rate, low, high, effective = estimators.clustered_ctr(clicks, np.arange(400), weights)
    kish = weights.sum() ** 2 / (weights**2).sum()
    assert rate == pytest.approx((weights * clicks).sum() / weights.sum())
    assert effective == pytest.approx(kish)
    assert (low, high) == pytest.approx(estimators.wilson(rate * kish, kish))


def test_clustered_ctr_holds_its_level_where_users_differ_and_wilson_does_not() -> None:
    """200 users a repetition, each shown 50 items, each with their own CTR drawn from
    Beta(0.5, 9.5) (mean 0.05; intra-user correlation 1/11, so a design effect near
    1 + 49/11 = 5.5): the binomial interval counts every impression as independent and holds
    the population's CTR in about 60% of repetitions; the clustered one in about 95%."""
    rng = np.random.default_rng(11)
    users, shown, repetitions = 200, 50, 400
    labels = np.repeat(np.arange(users), shown)
    plain = clustered = 0
    for _ in range(repetitions):
        ctr = rng.beta(0.5, 9.5, size=users)
        clicks = (rng.random((users, shown)) < ctr[:, None]).astype(float).ravel()
        low, high = estimators.wilson(clicks.sum(), clicks.size)
        plain += low <= 0.05 <= high
        _, low, high, effective = estimators.clustered_ctr(clicks, labels)
        clustered += low <= 0.05 <= high
        assert effective < clicks.size / 2
    assert plain / repetitions < 0.75
    assert clustered / repetitions >= 0.91


def test_clustered_ctr_never_claims_more_than_independent_impressions() -> None:
    # Exactly one click in each cluster of ten: the clusters are less alike than
    # independent draws would be (design effect near 0), which is truncated at 1.
    clicks = np.tile(np.eye(10)[0], 30)
    _, low, high, effective = estimators.clustered_ctr(clicks, np.repeat(np.arange(30), 10))
    assert effective == pytest.approx(300)
    assert (low, high) == pytest.approx(estimators.wilson(30, 300))
    # No click at all: no design effect to estimate, Kish's size stands.
    assert estimators.clustered_ctr(np.zeros(20), np.repeat([0, 1], 10))[3] == 20
    # One cluster: one independent unit.
    rate, low, high, effective = estimators.clustered_ctr([1, 0, 0, 1], ["u", "u", "u", "u"])
    assert (rate, effective) == (0.5, 1.0) and low < 0.1 and high > 0.9
    with pytest.raises(ValueError, match="clusters"):
        estimators.clustered_ctr([1, 0, 0], ["u", "v"])
    with pytest.raises(ValueError, match="weights"):
        estimators.clustered_ctr([1, 0], ["u", "v"], weights=[1.0, -1.0])


def test_ewma_weights_recent_impressions_more() -> None:
    clicks = np.array([0, 0, 0, 0, 1, 1])
    ages = np.array([10.0, 10.0, 10.0, 10.0, 0.0, 0.0])
    rate, low, high, effective = estimators.ewma_ctr(clicks, ages, half_life_hours=1.0)
    assert rate > 0.9 and low < rate < high and 2.0 <= effective < 6.0
    flat, *_ = estimators.ewma_ctr(clicks, np.zeros(6), half_life_hours=1.0)
    assert flat == pytest.approx(2 / 6)


def test_confidence_sequence_holds_the_value_and_is_wider_than_the_fixed_interval() -> None:
    rng = np.random.default_rng(9)
    n = 3000
    p = np.full(n, 0.5)
    clicks = (rng.random(n) < 0.1).astype(float)
    low, high = estimators.confidence_sequence(clicks, p, p)
    fixed = estimators.wilson(int(clicks.sum()), n)
    assert low <= 0.1 <= high
    assert high - low > fixed[1] - fixed[0]


def test_support_is_the_mean_importance_weight_by_hand() -> None:
    # The slates of test_ips_and_snips_by_hand: weights 2, 0, 1, 4; mean 7/4.
    weights = estimators.support([0.5, 0.5, 1.0, 0.25], [1.0, 0.0, 1.0, 1.0], ["a", "a", "b", "b"])
    # Slate sums 2 and 5, centred by 7/4 * 2: -1.5, +1.5; var = 2 * 4.5 / 16.
    half = T_975[1] * math.sqrt(2 * 4.5 / 16)
    assert (weights.value, weights.low, weights.high) == pytest.approx(
        (1.75, 1.75 - half, 1.75 + half)
    )


def test_clustered_intervals_take_the_t_quantile_of_their_clusters() -> None:
    """Five clusters (say an arm's NDCG over five users, or the gain on an hour's five new
    users): the half-width is t(0.975, 4) = 2.78 times the clustered standard error, not the
    normal's 1.96, which holds far less than 95% with so few; the bootstrap's interval,
    whose replicates resample the same five clusters, too. With many clusters the t quantile
    is the normal's."""
    assert stats.t.ppf(0.975, 4) == pytest.approx(T_975[4])
    values = np.array([1.0, 0.0, 0.5, 2.0, 1.5, 0.5, 3.0, 1.0, 0.0, 2.5])
    clusters = np.repeat(list("abcde"), 2)
    mean = estimators.clustered_mean("ndcg", values, clusters)
    # Per-cluster sums of the residuals, with the small-sample factor J / (J - 1).
    sums = np.bincount(np.repeat(np.arange(5), 2), weights=values - values.mean())
    se = math.sqrt(5 / 4 * float((sums**2).sum())) / len(values)
    assert mean.slates == 5 and mean.value == pytest.approx(values.mean())
    assert (mean.low, mean.high) == pytest.approx(
        (mean.value - T_975[4] * se, mean.value + T_975[4] * se)
    )
    # The off-policy estimators share the interval: IPS on the same five users.
    ips = estimators.ips(values / 3, np.full(10, 0.5), np.full(10, 0.5), clusters)
    assert ips.high - ips.value == pytest.approx(T_975[4] * se / 3)
    replicates = [0.9, 1.1, 1.0, 1.05, 0.95]
    booted = estimators.bootstrapped("cold_gain", 1.0, replicates, 10, 5)
    assert booted.high - booted.value == pytest.approx(T_975[4] * float(np.std(replicates, ddof=1)))
    many = estimators.clustered_mean("ndcg", np.tile(values, 500), np.arange(5000))
    se = float(np.std(np.tile(values, 500), ddof=1)) / math.sqrt(5000)
    assert many.high - many.value == pytest.approx(1.96 * se, rel=1e-3)


def test_a_zero_logged_exposure_is_unsupported_not_an_error() -> None:
    """A position-based exposure, unlike a propensity, can be 0 (an item logged only in a
    slot whose examination reads 0): its weight is 0, and the support's mean falls short of
    1 by it, as for an item the log never shows. A negative or NaN one is still an error."""
    weights = estimators.exposure_weights([0.5, 0.0, 0.25], [0.5, 1.0, 0.5])
    np.testing.assert_array_equal(weights, [1.0, 0.0, 2.0])
    support = estimators.position_based_support(
        [0.5, 0.0, 0.25, 1.0], [0.5, 1.0, 0.5, 1.0], np.ones(4), ["a", "a", "b", "b"]
    )
    assert support.value == pytest.approx((1 + 0 + 2 + 1) / 4)
    for bad, message in ((-0.1, "exposures must lie in"), (math.nan, "must be finite")):
        with pytest.raises(ValueError, match=message):
            estimators.position_based_support([0.5, bad], [0.5, 0.5], [1, 1], ["a", "b"])


def _tail_log(seed: int, slates: int, explore: float, tail: int) -> tuple[bool, dict]:
    """A log of 3-slot slates whose every slot shows its head item (CTR 0.1), except with
    probability ``explore`` one of ``tail`` others drawn uniformly; the target shows the first
    of those (CTR 0.4) in every slot, so its value is 0.4 and its weight 1 / its propensity.
    The reward model has never seen it and predicts the pooled 0.1. Returns whether the
    doubly robust 95% interval held 0.4, and the support numbers the gate reads."""
    rng = np.random.default_rng(seed)
    n = 3 * slates
    explored = rng.random(n) < explore
    is_target = explored & (rng.integers(0, tail, n) == 0)
    logged = np.where(explored, explore / tail, 1 - explore)
    ctr = np.where(is_target, 0.4, np.where(explored, 0.05, 0.1))
    clicks = (rng.random(n) < ctr).astype(float)
    groups = np.arange(n) // 3
    target = is_target.astype(float)
    model = {"predicted": np.full(n, 0.1), "direct": np.full(n, 0.1)}
    dr = estimators.doubly_robust(clicks, logged, target, groups, **model)
    return dr.covers(0.4), estimators.support(logged, target, groups).numbers("support")


def test_support_flags_the_logs_whose_intervals_do_not_hold() -> None:
    """Where the target's item is logged a handful of times (weight 1,000), the doubly robust
    interval holds the truth in about a third of the logs; the gate's support check refuses
    every one of them. Where it is logged about 90 times per slot, the interval holds its
    95% and the check lets nearly every log through."""
    from recloop.settings import PromotionSettings
    from training.promotion import unsupported

    settings = PromotionSettings()
    rare = [_tail_log(seed, 300, 0.02, 20) for seed in range(200)]
    assert np.mean([held for held, _ in rare]) < 0.5
    assert all(unsupported(numbers, settings) is not None for _, numbers in rare)
    common = [_tail_log(seed, 3000, 0.2, 20) for seed in range(200)]
    assert np.mean([held for held, _ in common]) > 0.9
    assert np.mean([unsupported(numbers, settings) is None for _, numbers in common]) > 0.95


@pytest.mark.parametrize(
    ("field", "kwargs", "message"),
    [
        ("logged", {"logged": [0.0, 0.5]}, "logged: propensities must lie in (0, 1]"),
        ("target", {"target": [1.5, 0.5]}, "target: probabilities must lie in [0, 1]"),
        ("clicks", {"clicks": [1.0]}, "logged: expected 1 values"),
        ("slates", {"slates": ["a"]}, "slates: expected 2 slate ids"),
    ],
)
def test_bad_input_names_the_field(field: str, kwargs: dict, message: str) -> None:
    arguments = {"clicks": [1.0, 0.0], "logged": [0.5, 0.5], "target": [1.0, 0.0],
                 "slates": ["a", "b"], **kwargs}  # fmt: skip
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):  # fmt: skip
        estimators.ips(**arguments)
