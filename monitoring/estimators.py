"""Estimators with intervals, on plain arrays: click-through rates of what was served and
off-policy values of what could have been served.

Everything here is per impression (one row per item shown in a slot). Clicks within one
slate share a user and a moment, so they are not independent: every interval below is
cluster-robust (the variance is computed over per-cluster sums), which is what makes the 95%
intervals hold their level on slate logs (``benchmarks/ope.py`` measures it). The off-policy
estimators call the cluster labels ``slates``; ``monitoring.ope`` passes each impression's
user, a coarser cluster that holds all of a user's slates, since a user's slates share a
taste too. A clustered standard error from J clusters is itself estimated from J sums, so
its quantile is Student's t with J - 1 degrees of freedom, not the normal's: with a handful
of clusters (an arm's NDCG over a few users, the gain on an hour's few new users) the normal
quantile gives intervals that are too narrow (Cameron and Miller 2015, "A practitioner's
guide to cluster-robust inference", section VI); with many it is the normal's.

On-policy: ``clustered_ctr`` for the CTR: Wilson's score interval (statsmodels) at the
effective sample size that clustering leaves, so that a user's many impressions count for
what they are worth (the traffic split assigns users, not impressions, to arms); ``wilson``
is the plain interval it starts from, and ``ewma_ctr`` the same with exponentially decaying
weights.

Off-policy, under the item-position click model (a click depends on the item, the slot and
the context, not on the other items of the slate; Li et al. 2018, "Offline evaluation of
ranking policies with click models"), the target policy's expected CTR is estimated from the
logging policy's per-slot marginal propensities ``logged`` = mu_k(a|x) and the target's
``target`` = pi_k(a|x) of the same item in the same slot, weight w = pi / mu:

- ``ips``: mean of w * click. vw-estimators' ``bandits.ips`` computes the same point value
  (the tests check it); ours adds the clustered interval.
- ``snips``: sum(w * click) / sum(w), with a delta-method interval. Same point value as
  vw-estimators' ``bandits.snips``.
- ``doubly_robust``: direct + w * (click - predicted), where ``predicted`` is a reward model's
  click probability for the logged item in its slot and ``direct`` is the target's expected
  click in that slot under the same model (sum over items of pi_k(a|x) * model(a, k)).
  vw-estimators has no doubly robust bandit estimator, so this one is ours; with a zero
  reward model it reduces to IPS exactly (tested).
- ``support``: the mean importance weight, about 1 when the log can see everything the
  target would show; well below 1 when it cannot, or has not yet met the target's rare
  heavy weights, which is when the intervals above stop holding their level.
- Position-based weights (``exposure``, ``position_based_support``): under the stronger
  position-based click model (a click is examination(k) * attractiveness(a | x); Li et al.
  2018, section 4.2), the slot matters only through its examination probability, so a logged
  click on item a in any slot speaks for a target that shows a in another. Each probability
  above is replaced by the item's *exposure*, sum_k examination(k) * P(a in slot k | x): the
  weight is the target's exposure of the logged item over the logging policy's. ``ips`` and
  ``doubly_robust`` take exposures in place of ``target`` and ``logged`` unchanged (the
  algebra is the same; the logging policy's exposure needs the item's propensity in every
  slot, which the service logs). A target that moves an item the log showed only in its
  greedy slot to another slot then matches every time instead of only when exploration put
  it there, so the weights are far lighter; the price is the click model's assumption, and an
  examination fitted from the same log, whose noise the fixed-weight intervals above leave
  out: ``bootstrapped`` carries it (``monitoring.ope`` refits it in every replicate).
- ``confidence_sequence``: vw-estimators' off-policy confidence sequence (Waudby-Smith et al.,
  Karampatziakis et al. 2021) for the IPS value: valid at every look, so an hourly DAG that
  checks the same cumulative log again and again keeps its error rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """A value with its interval at level 1 - alpha, and how much data it rests on."""

    estimator: str
    value: float
    low: float
    high: float
    impressions: int
    slates: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def numbers(self, prefix: str) -> dict[str, float]:
        """``{prefix}_value``, ``{prefix}_low`` and ``{prefix}_high``: the flat numbers the
        promotion gate and the hourly tables carry."""
        return {f"{prefix}_value": self.value, f"{prefix}_low": self.low,
                f"{prefix}_high": self.high}  # fmt: skip

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high


def _check(name: str, values: np.ndarray, size: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (size,):
        raise ValueError(f"{name}: expected {size} values (one per impression), got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: every value must be finite")
    return values


def cluster_codes(labels: Any) -> np.ndarray:
    """Each impression's cluster as 0 .. J-1, from any labels (user ids, request ids)."""
    return np.unique(np.asarray(labels), return_inverse=True)[1].ravel()


def _inputs(
    clicks: Any, logged: Any, target: Any, slates: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    clicks = np.asarray(clicks, dtype=np.float64)
    size = clicks.shape[0] if clicks.ndim == 1 else -1
    clicks = _check("clicks", clicks, size)
    logged = _check("logged", logged, size)
    target = _check("target", target, size)
    if size == 0:
        raise ValueError("clicks: no impressions to estimate from")
    if (logged <= 0).any() or (logged > 1).any():
        raise ValueError("logged: propensities must lie in (0, 1]")
    if (target < 0).any() or (target > 1).any():
        raise ValueError("target: probabilities must lie in [0, 1]")
    groups = cluster_codes(slates)
    if groups.shape != (size,):
        raise ValueError(f"slates: expected {size} slate ids (one per impression)")
    return clicks, logged, target, groups


def _cluster_sums(terms: np.ndarray, groups: np.ndarray) -> np.ndarray:
    return np.bincount(groups, weights=terms)


def cluster_quantile(clusters: int, alpha: float) -> float:
    """The two-sided 1 - alpha quantile for a standard error estimated from ``clusters``
    cluster sums: Student's t with clusters - 1 degrees of freedom (module docstring). It
    needs at least two clusters."""
    return float(stats.t.ppf(1 - alpha / 2, clusters - 1))


def _clustered_interval(
    name: str, value: float, centred: np.ndarray, scale: float, n: int, slates: int, alpha: float
) -> Estimate:
    """Interval from slate sums of the centred per-impression terms (a sandwich variance
    with the small-sample factor J / (J - 1)), at ``cluster_quantile``'s t quantile."""
    if slates < 2:
        return Estimate(name, value, -math.inf, math.inf, n, slates)
    variance = slates / (slates - 1) * float(np.sum(centred**2)) / scale**2
    half = cluster_quantile(slates, alpha) * math.sqrt(max(variance, 0.0))
    return Estimate(name, value, float(value - half), float(value + half), n, slates)


def wilson(clicks: float, impressions: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a click-through rate (statsmodels). Counts may be
    fractional, as for a weighted rate at its effective sample size."""
    from statsmodels.stats.proportion import proportion_confint

    if impressions <= 0:
        return (0.0, 1.0)
    low, high = proportion_confint(clicks, impressions, alpha=alpha, method="wilson")
    return float(low), float(high)


def clustered_ctr(
    clicks: Any, clusters: Any, weights: Any = None, alpha: float = 0.05
) -> tuple[float, float, float, float]:
    """(CTR, low, high, effective impressions) of 0/1 ``clicks`` grouped in ``clusters``
    (one label per impression: the user, or the request), optionally ``weights``.

    Impressions of one user are not independent draws: a user who likes what is shown
    clicks on many of them, one who does not on none. The binomial interval then counts
    each of a user's impressions as new evidence and is too narrow for the question a CTR
    answers (what the policy earns on the users it serves; Deng, Knoblich and Lu, KDD 2018,
    "Applying the delta method in metric analytics"). Here the CTR's variance is estimated
    from the cluster sums of the weighted residuals (a sandwich variance with the
    small-sample factor J / (J - 1)); its ratio to the same estimate with every impression
    its own cluster is the design effect, and the interval is Wilson's at the effective
    size (Kish's, the weights' own, divided by the design effect): Wilson's behaviour at
    small CTRs, with the width that the clustering warrants (Korn and Graubard 1998).

    The design effect is truncated at 1, as Korn and Graubard advise: an estimate below 1
    (impressions of one cluster less alike than strangers') is more likely noise than a
    reason to claim more than independent impressions would give. With singleton clusters
    this is exactly ``wilson`` at Kish's size. With no clicks at all, or clicks only, the
    residuals are zero and no design effect can be estimated: Kish's size stands. With one
    cluster, one independent unit is all there is, and the size is 1.
    """
    clicks = np.asarray(clicks, dtype=np.float64)
    size = clicks.shape[0] if clicks.ndim == 1 else -1
    clicks = _check("clicks", clicks, size)
    weights = np.ones(size) if weights is None else _check("weights", weights, size)
    if (weights < 0).any():
        raise ValueError("weights: must be 0 or above")
    groups = cluster_codes(clusters)
    if groups.shape != (size,):
        raise ValueError(f"clusters: expected {size} labels (one per impression)")
    total = float(weights.sum())
    if size == 0 or total <= 0:
        return (math.nan, 0.0, 1.0, 0.0)
    rate = float(np.sum(weights * clicks) / total)
    effective = total**2 / float(np.sum(weights**2))  # Kish's
    residuals = weights * (clicks - rate)
    count = int(groups.max()) + 1
    independent = size / max(size - 1, 1) * float(np.sum(residuals**2))
    if count < 2:
        effective = min(effective, 1.0)
    elif independent > 0:
        clustered = count / (count - 1) * float(np.sum(_cluster_sums(residuals, groups) ** 2))
        effective /= max(clustered / independent, 1.0)
    low, high = wilson(rate * effective, effective, alpha)
    return rate, low, high, effective


def ewma_ctr(
    clicks: Any,
    ages_hours: Any,
    half_life_hours: float,
    alpha: float = 0.05,
    clusters: Any = None,
) -> tuple[float, float, float, float]:
    """(CTR, low, high, effective impressions) with weights 0.5 ** (age / half-life).

    The interval is ``clustered_ctr``'s with those weights: Wilson's at Kish's effective
    sample size (sum w)^2 / sum w^2, which is what the weighted mean's variance corresponds
    to for independent Bernoulli clicks, divided by the design effect of ``clusters`` (one
    label per impression; None: every impression its own).
    """
    clicks = np.asarray(clicks, dtype=np.float64)
    ages = np.asarray(ages_hours, dtype=np.float64)
    if clicks.shape != ages.shape:
        raise ValueError("ages_hours: one age per impression")
    if half_life_hours <= 0:
        raise ValueError("half_life_hours: must be above 0")
    if clicks.size == 0:
        return (math.nan, 0.0, 1.0, 0.0)
    weights = 0.5 ** (np.maximum(ages, 0.0) / half_life_hours)
    labels = np.arange(clicks.size) if clusters is None else clusters
    return clustered_ctr(clicks, labels, weights, alpha)


def _mean_of_terms(name: str, terms: np.ndarray, groups: np.ndarray, alpha: float) -> Estimate:
    """The mean of per-impression terms with its clustered interval (IPS and DR)."""
    n = len(terms)
    value = float(terms.sum() / n)
    sizes = np.bincount(groups).astype(np.float64)
    centred = _cluster_sums(terms, groups) - value * sizes
    return _clustered_interval(name, value, centred, n, n, len(sizes), alpha)


def clustered_mean(name: str, values: Any, clusters: Any, alpha: float = 0.05) -> Estimate:
    """The mean of ``values`` with its interval clustered by ``clusters`` (one label per
    value; with one value per cluster, the plain standard error and the one-sample t
    interval), at the t quantile of J - 1 degrees of freedom for J clusters
    (``cluster_quantile``). Infinite bounds with fewer than two clusters."""
    values = np.asarray(values, dtype=np.float64)
    size = values.shape[0] if values.ndim == 1 else -1
    values = _check("values", values, size)
    if size == 0:
        raise ValueError("values: nothing to average")
    groups = cluster_codes(clusters)
    if groups.shape != (size,):
        raise ValueError(f"clusters: expected {size} labels (one per value)")
    return _mean_of_terms(name, values, groups, alpha)


def ips(clicks: Any, logged: Any, target: Any, slates: Any, alpha: float = 0.05) -> Estimate:
    """Inverse propensity scoring: the target's CTR as mean(w * click)."""
    clicks, logged, target, groups = _inputs(clicks, logged, target, slates)
    return _mean_of_terms("ips", target / logged * clicks, groups, alpha)


def snips(clicks: Any, logged: Any, target: Any, slates: Any, alpha: float = 0.05) -> Estimate:
    """Self-normalised IPS: sum(w * click) / sum(w); bounded by the clicks' range, and far
    less variable than IPS when weights are large."""
    clicks, logged, target, groups = _inputs(clicks, logged, target, slates)
    weights = target / logged
    total = float(weights.sum())
    n = len(weights)
    slates_count = int(groups.max()) + 1
    if total == 0:
        # The target never agrees with the log: nothing to say about its value.
        return Estimate("snips", math.nan, -math.inf, math.inf, n, slates_count)
    value = float(np.sum(weights * clicks) / total)
    centred = _cluster_sums(weights * (clicks - value), groups)
    return _clustered_interval("snips", value, centred, total, n, slates_count, alpha)


def support(logged: Any, target: Any, slates: Any, alpha: float = 0.05) -> Estimate:
    """How much of the target's probability the log can see: the mean importance weight
    pi / mu over the impressions, with its clustered interval.

    Each slot's weights sum, in expectation over the logging policy, to the target's
    probability on items the logging policy can show there: 1 where it can show everything
    the target would. So the mean is about 1 under full support and about 1 - s where a share
    s of the target's slots hold items the log never shows. It also falls short, with a
    narrow interval, when the target's items are shown so rarely that the log holds too few
    of them: the normal approximation behind every interval here then misses the heavy
    weights it has not met yet, and an estimate that looks tight can be wrong (an importance
    sampling diagnostic: Owen 2013, "Monte Carlo theory, methods and examples", section 9.3;
    the control variate of Swaminathan and Joachims 2015, "The self-normalized estimator for
    counterfactual learning"). An upper bound well below 1, or a very wide interval, says the
    log cannot judge the target (``training.promotion.unsupported`` draws the line).
    Give it the impressions of the slots the target fills: a slot its slate leaves empty
    would count as unsupported."""
    _, logged, target, groups = _inputs(np.zeros(len(logged)), logged, target, slates)
    return _mean_of_terms("support", target / logged, groups, alpha)


def exposure(examination: Any, probabilities: Any) -> np.ndarray:
    """Per impression, sum over slots of examination(k) * P(the item in slot k): the expected
    examination an item gets from a policy (position-based weights, module docstring).

    ``examination``: (slots,) or one row per impression, 1 for slot 0; ``probabilities``:
    one row per impression, the item's probability in each slot (0 beyond a short slate's
    end). Both are padded with their last value and zeros to the longer of the two."""
    probabilities = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    examination = np.asarray(examination, dtype=np.float64)
    if examination.ndim == 1:
        examination = np.broadcast_to(examination, (len(probabilities), len(examination)))
    if len(examination) != len(probabilities):
        raise ValueError("examination: one row per impression, or one row for all")
    slots = probabilities.shape[1]
    if examination.shape[1] < slots:  # slots past those fitted: examined like the last
        tail = np.repeat(examination[:, -1:], slots - examination.shape[1], axis=1)
        examination = np.concatenate([examination, tail], axis=1)
    values = np.einsum("ns,ns->n", examination[:, :slots], probabilities)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("probabilities: every value must be finite and non-negative")
    return np.minimum(values, 1.0)  # an item is in one slot at most: round-off only


def position_based_support(
    logged: Any, target: Any, examined: Any, slates: Any, alpha: float = 0.05
) -> Estimate:
    """``support`` for position-based weights: the mean of w * examination(slot of the
    logged impression) / the slate's mean examination, about 1 under full support.

    Per slate, the expected sum of w_j * examination(j) is the target's total examination,
    sum_k examination(k) over the slots it fills, so the slate-mean-normalised terms average
    1 where the target fills every slot and the log can show its items. ``examined`` is
    examination(j) / the slate's mean examination, per impression.

    ``logged`` here is an exposure, which can be 0 where a propensity cannot: an item the
    logging policy showed only in slots whose fitted examination is 0. Such an impression
    is unsupported, not an error: its weight is 0 (``exposure_weights``), as for an item the
    log never shows, so the mean falls short of 1 by what the target's exposure there
    misses, and the support rule (``training.promotion.unsupported``) reads that."""
    weights, groups = _exposure_inputs(logged, target, slates)
    examined = _check("examined", examined, len(weights))
    return _mean_of_terms("support", weights * examined, groups, alpha)


def exposure_weights(logged: Any, target: Any) -> np.ndarray:
    """Position-based importance weights: the target's exposure of each logged item over
    the logging policy's (``exposure``), 0 where the logging policy's exposure is 0.

    An item that the logging policy exposes to no examination cannot be clicked under the
    position-based click model, so its impressions say nothing about the target: a 0 weight
    counts them as the log's missing support (``position_based_support``), which is what
    they are. Dividing instead gives infinite or NaN terms, and one such impression would
    take every estimate of the hour with it."""
    logged = np.asarray(logged, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    seen = logged > 0
    return np.divide(target, logged, out=np.zeros(np.broadcast(logged, target).shape),
                     where=seen)  # fmt: skip


def _exposure_inputs(logged: Any, target: Any, slates: Any) -> tuple[np.ndarray, np.ndarray]:
    """``_inputs``' checks for exposures, which may be 0 (``position_based_support``): the
    weights (``exposure_weights``) and the cluster codes."""
    logged = np.asarray(logged, dtype=np.float64)
    if (logged < 0).any():
        raise ValueError("logged: exposures must lie in [0, 1]")
    unexposed = logged == 0
    # 0 stands in as 1 for the checks (a propensity must be above 0; a NaN still fails
    # them), and its weight is 0.
    stand_in = np.where(unexposed, 1.0, logged)
    _, checked, target, groups = _inputs(np.zeros(len(logged)), stand_in, target, slates)
    return exposure_weights(np.where(unexposed, 0.0, checked), target), groups


def bootstrapped(
    name: str, value: float, replicates: Any, impressions: int, slates: int, alpha: float = 0.05
) -> Estimate:
    """``value`` with an interval whose standard error is the replicates' spread: for an
    estimate whose terms rest on something fitted from the same log (the position-based
    weights' examination), recomputed, fit included, under per-cluster Poisson(1) weights.
    The replicates resample the ``slates`` clusters, so their spread is a clustered standard
    error like the others here, and it takes the same t quantile of ``slates`` - 1 degrees
    of freedom (``cluster_quantile``): the gain on a quiet hour's few new users
    (``cold_gain_*``) rests on a handful of them."""
    replicates = np.asarray(replicates, dtype=np.float64)
    if slates < 2 or len(replicates) < 2 or not np.isfinite(replicates).all():
        return Estimate(name, value, -math.inf, math.inf, impressions, slates)
    half = cluster_quantile(slates, alpha) * float(np.std(replicates, ddof=1))
    return Estimate(name, value, value - half, value + half, impressions, slates)


def doubly_robust(
    clicks: Any,
    logged: Any,
    target: Any,
    slates: Any,
    *,
    predicted: Any,
    direct: Any,
    alpha: float = 0.05,
) -> Estimate:
    """Doubly robust: the reward model's value of the target, corrected by the weighted
    residual of the logged click. Unbiased when the propensities are right, whatever the
    model; low variance when the model is good (Dudik et al. 2011)."""
    terms, _, groups = _dr_terms(clicks, logged, target, slates, predicted, direct)
    return _mean_of_terms("dr", terms, groups, alpha)


def _dr_terms(
    clicks: Any, logged: Any, target: Any, slates: Any, predicted: Any, direct: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each impression's doubly robust term, with the checked clicks and the slate groups."""
    clicks, logged, target, groups = _inputs(clicks, logged, target, slates)
    n = len(clicks)
    predicted = _check("predicted", predicted, n)
    direct = _check("direct", direct, n)
    return direct + target / logged * (clicks - predicted), clicks, groups


def doubly_robust_gain(
    clicks: Any,
    logged: Any,
    target: Any,
    slates: Any,
    *,
    predicted: Any,
    direct: Any,
    alpha: float = 0.05,
) -> Estimate:
    """The target's doubly robust CTR less the logging policy's own, on the same impressions:
    each impression's DR term minus its click. Paired, so the interval is the difference's
    (both sides' noise, and their correlation, in one clustered interval) rather than a
    comparison of two separate intervals."""
    terms, clicks, groups = _dr_terms(clicks, logged, target, slates, predicted, direct)
    return _mean_of_terms("dr_gain", terms - clicks, groups, alpha)


def doubly_robust_difference(
    clicks: Any,
    logged: Any,
    target: Any,
    baseline: Any,
    slates: Any,
    *,
    predicted: Any,
    direct: Any,
    baseline_direct: Any,
    alpha: float = 0.05,
) -> Estimate:
    """One target's doubly robust CTR less another's (``baseline``, with its own
    ``baseline_direct``), on the same impressions with the same reward model: each
    impression's DR term for the target minus its term for the baseline. Paired, so what the
    two targets share (the same items in the same slots, the same clicks) cancels, and the
    interval is the difference's own."""
    terms, _, groups = _dr_terms(clicks, logged, target, slates, predicted, direct)
    base, _, _ = _dr_terms(clicks, logged, baseline, slates, predicted, baseline_direct)
    return _mean_of_terms("dr_difference", terms - base, groups, alpha)


def confidence_sequence(
    clicks: Any, logged: Any, target: Any, alpha: float = 0.05
) -> tuple[float, float]:
    """vw-estimators' anytime-valid interval for the target's IPS value, over impressions in
    time order. Valid under repeated looks; wider than the fixed-time intervals above."""
    from estimators.bandits import cs

    interval = cs.Interval()
    for p_log, r, p_pred in zip(
        np.asarray(logged, float), np.asarray(clicks, float), np.asarray(target, float), strict=True
    ):
        interval.add_example(p_log=float(p_log), r=float(r), p_pred=float(p_pred))
    low, high = interval.get(alpha)
    if low is None or high is None:
        return (0.0, 1.0)
    return float(low), float(high)
