"""The champion/challenger gate.

The challenger is promoted only if, on the same evaluation data:
1. the latest data gate passed (no promotion on features from a failed batch);
2. its NDCG@10 gain over the champion on ``promotion.protocol`` (P1 by default; ``recent``
   judges on the newest interactions) has a paired-bootstrap interval (per-user differences
   resampled; Efron & Tibshirani 1993) whose lower bound is above the margin. A pair is one
   user id in splits of the same data (one interactions digest): on other data the user's
   held-out items differ, so such evaluations are never paired (``unpaired``): the offline
   criterion then refuses to decide (ValueError), and the off-policy one reports no gain;
3. its cold-start NDCG@10 (P2, P3a, P3b, where both sides were evaluated) drops by no more
   than the tolerance; a protocol not evaluated is named in the reasons, not judged;
4. when the service has logged impressions (with their propensities) in the
   ``promotion.off_policy_hours`` before the data's end, the interval of the challenger's
   doubly robust CTR less the CTR those impressions had, paired impression by impression
   (``monitoring.ope.gate_estimate``), is not entirely below zero; with too little overlap
   the estimate is reported and not used.
With ``promotion.criterion`` "off_policy", the doubly robust CTR on the logged impressions picks
the challenger instead, and its paired gain over the champion's recipe replaces 2 (the NDCG@10
gain is still reported). With ``promotion.off_policy_cold_start`` "logged" (the default), 3 is
judged on the logged impressions too: the same gain on the new users' impressions (served from
fresh clicks, a profile or popularity) must not lie wholly below zero, and P2/P3 are reported,
since their held-out logged clicks favour the logging policy's exposure as P1's do; "offline"
keeps 3 as it is.
With no champion yet, a challenger that passes 1 (and beats popularity, when it was trained)
becomes the first champion; the same holds for the champion's own recipe retrained on newer
data (a refresh), which would otherwise never replace the older weights. When a run's best
candidate loses the gate and the run also retrained the champion's recipe, the pipeline judges
that as a refresh (``training.pipeline.judge``). Every decision
comes back with its reasons and numbers, which the pipeline logs to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recloop.settings import PromotionSettings
from training.evaluation import Evaluation

COLD_START = ("P2", "P3a", "P3b")
GATE_METRIC = "ndcg"


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    numbers: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": self.reasons, "numbers": self.numbers}


def paired_bootstrap(
    challenger: np.ndarray, champion: np.ndarray, samples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """Mean of the paired differences and its percentile bootstrap interval."""
    if challenger.shape != champion.shape:
        raise ValueError(f"per-user values: shapes differ ({challenger.shape} vs {champion.shape})")
    diff = challenger - champion
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(diff), size=(samples, len(diff)))
    means = diff[draws].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(diff.mean()), float(low), float(high)


def unpaired(challenger: Evaluation, champion: Evaluation) -> str | None:
    """Why the two evaluations' per-user values cannot be paired user by user, or None when
    they can: both must name their users, and both must come from splits of the same data
    (a user's held-out items are drawn from the data, so on other data the same user is
    tested on other items, and the difference is no longer the two models' alone)."""
    missing = [side for side, e in (("challenger", challenger), ("champion", champion))
               if e.user_ids is None]  # fmt: skip
    if missing:
        return (
            f"the {' and the '.join(missing)}'s {champion.protocol} evaluation names no users "
            "(it was saved before user ids were recorded)"
        )
    if challenger.data_digest != champion.data_digest:
        return (
            f"the challenger and the champion were evaluated on different data (interactions "
            f"digests {challenger.data_digest or 'unknown'} and "
            f"{champion.data_digest or 'unknown'})"
        )
    if not set(challenger.user_ids) & set(champion.user_ids):
        return f"the challenger's and the champion's {champion.protocol} users have none in common"
    return None


def _aligned(a: Evaluation, b: Evaluation, metric: str) -> tuple[np.ndarray, np.ndarray]:
    # Matched by user id, never by row: rows number one split's queries, and a user may drop
    # out of one side (no rankable relevant item), shifting every row after it.
    if a.user_ids is None or b.user_ids is None:
        raise ValueError(f"{a.protocol}: an evaluation without user ids cannot be paired")
    pos_a = {u: i for i, u in enumerate(a.user_ids)}
    pos_b = {u: i for i, u in enumerate(b.user_ids)}
    if len(pos_a) != len(a.user_ids) or len(pos_b) != len(b.user_ids):
        raise ValueError(f"{a.protocol}: a user appears twice in one evaluation")
    common = sorted(pos_a.keys() & pos_b.keys())
    return (
        a.per_user[metric][[pos_a[u] for u in common]],
        b.per_user[metric][[pos_b[u] for u in common]],
    )


def decide(
    challenger: dict[str, Evaluation],
    champion: dict[str, Evaluation] | None,
    settings: PromotionSettings,
    *,
    data_gate_passed: bool,
    popularity: dict[str, Evaluation] | None = None,
    off_policy: dict[str, float] | None = None,
    refresh: bool = False,
    seed: int = 42,
    criterion: str = "offline",
    not_paired: str | None = None,
    chosen_from: int = 1,
) -> Decision:
    """Whether the challenger replaces the champion, and why. ``refresh``: the challenger is
    the champion's own recipe retrained on current data, so comparing it with the champion's
    recipe in the same run would compare a model with itself. ``criterion`` "off_policy":
    the challenger was chosen off-policy, and ``off_policy`` holds its gain over the
    champion's recipe (``training.off_policy.select_off_policy``), which decides in place of
    the NDCG@10 gain (still reported, where the two sides pair).

    ``not_paired``: why the caller knows the two sides' evaluations do not pair (they come
    from different training runs whose data cannot be shown to be the same). Then, as when
    ``unpaired`` finds a reason itself, no NDCG@10 gain is computed; only the off-policy
    criterion can decide without it, and the offline one raises ValueError rather than
    promote or refuse on a comparison of different users or items.

    ``chosen_from``: how many candidates the challenger was picked from on the same users
    the gain is measured on. The best of several looks better on those users than it is (in
    a simulation of 3 candidates as good as the champion, 7.7% were promoted at a nominal
    2.5%), so the interval's level is Bonferroni-adjusted: 1 - (1 - confidence) / chosen_from.
    """
    if criterion not in ("offline", "off_policy"):
        raise ValueError(f"criterion: {criterion!r} is neither offline nor off_policy")
    if criterion == "off_policy" and champion is not None and not refresh and off_policy is None:
        raise ValueError("off_policy: the off-policy criterion needs the challenger's estimate")
    reasons: list[str] = []
    numbers: dict[str, float] = {}
    gate = settings.protocol
    if not data_gate_passed:
        return Decision(False, ["the latest data gate failed: nothing is promoted on its features"])
    if gate not in challenger:
        raise ValueError(f"challenger: the gate needs a {gate} evaluation (promotion.protocol)")
    mine = f"challenger.{gate}.ndcg"
    numbers[mine] = challenger[gate].metrics[GATE_METRIC]

    if champion is None or refresh:
        # Nothing to compare with (or the champion's own recipe on newer data): the one bar
        # left is popularity.
        if popularity is not None:
            pop = popularity[gate].metrics[GATE_METRIC]
            numbers[f"popularity.{gate}.ndcg"] = pop
            if numbers[mine] <= pop:
                reason = (
                    "the champion's recipe retrained on current data no longer beats "
                    f"popularity on {gate}: kept the old weights"
                    if refresh
                    else f"no champion yet, but the challenger's {gate} NDCG@10 "
                    f"{numbers[mine]:.4f} does not beat popularity's {pop:.4f}"
                )
                return Decision(False, [reason], numbers)
        reason = (
            "the challenger is the champion's own recipe retrained on current data: it "
            "refreshes the champion"
            if refresh
            else "no champion yet: the challenger becomes the first champion"
        )
        return Decision(True, [reason], numbers)

    why_not_paired = not_paired or unpaired(challenger[gate], champion[gate])
    if why_not_paired is None:
        promote, reason = _gain_verdict(
            challenger[gate], champion[gate], settings,
            seed=seed, decides=criterion == "offline", numbers=numbers, chosen_from=chosen_from,
        )  # fmt: skip
    elif criterion == "off_policy":
        # Nothing paired to report (two means over different held-out items would invite
        # the comparison the bootstrap exists to avoid); the off-policy gain decides anyway.
        promote = True
        reason = (
            f"{gate} NDCG@10 gain not reported: {why_not_paired}, so per-user differences "
            "would not be the models' alone (the off-policy gain decides)"
        )
    else:
        raise ValueError(f"{gate}: the gate pairs NDCG@10 user by user, but {why_not_paired}")
    reasons.append(reason)

    logged_cold_start = criterion == "off_policy" and settings.off_policy_cold_start == "logged"
    judged = [p for p in COLD_START if p in challenger and p in champion]
    if not logged_cold_start:
        # A protocol left out of training.protocols, or one no user qualified for (make_splits
        # skips it), cannot bind; the decision still says what it did not judge. (Under
        # logged cold start, the reason below lists what was reported, or "none evaluated".)
        if not judged:
            reasons.append(f"no cold-start protocol ({', '.join(COLD_START)}) was evaluated "
                           "for both sides: cold start not judged")  # fmt: skip
        else:
            reasons += [_not_evaluated(p, challenger, champion) for p in COLD_START
                        if p not in judged]  # fmt: skip
    for protocol in judged:
        new, old = (
            challenger[protocol].metrics[GATE_METRIC],
            champion[protocol].metrics[GATE_METRIC],
        )
        numbers[f"challenger.{protocol}.ndcg"], numbers[f"champion.{protocol}.ndcg"] = new, old
        if new < old - settings.cold_start_tolerance and not logged_cold_start:
            promote = False
            reasons.append(
                f"{protocol} NDCG@10 drops from {old:.4f} to {new:.4f}, beyond the "
                f"tolerance {settings.cold_start_tolerance}"
            )
    if logged_cold_start:
        offline = ", ".join(
            f"{p} {numbers[f'champion.{p}.ndcg']:.4f} -> {numbers[f'challenger.{p}.ndcg']:.4f}"
            for p in COLD_START
            if f"challenger.{p}.ndcg" in numbers
        )
        reasons.append(
            f"cold-start protocols reported, not binding ({offline or 'none evaluated'}): "
            "held-out logged clicks favour the logging policy's exposure, as P1's do, so under "
            "the off-policy criterion cold start is judged on the new users' logged impressions"
        )
        if off_policy is not None:
            verdict, reason = _cold_start_verdict(off_policy, settings)
            reasons.append(reason)
            promote = promote and verdict

    if off_policy is not None:
        numbers.update({f"off_policy.{k}": v for k, v in off_policy.items()})
        verdict, reason = (
            _off_policy_gain_verdict(off_policy, settings)
            if criterion == "off_policy"
            else _off_policy_verdict(off_policy, settings)
        )
        reasons.append(reason)
        promote = promote and verdict
    return Decision(promote, reasons, numbers)


def _not_evaluated(
    protocol: str, challenger: dict[str, Evaluation], champion: dict[str, Evaluation]
) -> str:
    side = (" for the challenger" if protocol in champion
            else " for the champion" if protocol in challenger else "")  # fmt: skip
    return f"{protocol} not evaluated{side}: cold start not judged on it"


def _gain_verdict(
    challenger: Evaluation,
    champion: Evaluation,
    settings: PromotionSettings,
    *,
    seed: int,
    decides: bool,
    numbers: dict[str, float],
    chosen_from: int = 1,
) -> tuple[bool, str]:
    """(may promote, why) from the paired-bootstrap NDCG@10 gain on the gate's protocol,
    whose numbers go into ``numbers``; ``decides`` False: reported only. The interval's level
    is Bonferroni-adjusted over the ``chosen_from`` candidates (``decide``)."""
    gate = challenger.protocol
    if chosen_from < 1:
        raise ValueError(f"chosen_from: must be at least 1, got {chosen_from}")
    confidence = 1 - (1 - settings.confidence) / chosen_from
    mean, low, high = paired_bootstrap(
        *_aligned(challenger, champion, GATE_METRIC),
        samples=settings.bootstrap_samples,
        confidence=confidence,
        seed=seed,
    )
    numbers.update(
        {
            f"champion.{gate}.ndcg": champion.metrics[GATE_METRIC],
            f"gain.{gate}.ndcg": mean,
            f"gain.{gate}.ndcg.low": low,
            f"gain.{gate}.ndcg.high": high,
        }
    )
    level = f"{settings.confidence:.0%}"
    if chosen_from > 1:
        level += f" (Bonferroni over {chosen_from} candidates: {confidence:.2%})"
        numbers[f"gain.{gate}.ndcg.confidence"] = confidence
    said = f"{gate} NDCG@10 gain {mean:+.4f}, {level} interval [{low:+.4f}, {high:+.4f}]"
    if not decides:
        return True, f"{said} (reported; the off-policy gain decides)"
    if low > settings.margin:
        return True, f"{said} lies above the margin {settings.margin}"
    return False, f"{said} does not clear the margin {settings.margin}"


def unsupported(
    estimate: dict[str, float], settings: PromotionSettings, *, promote: bool = False
) -> str | None:
    """Why an off-policy estimate cannot judge the challenger, or None when it can.

    - Too many of its slots show items the logged window never showed (``unlogged_share``
      over ``off_policy_max_unlogged``): only the reward model speaks for them.
    - Its mean importance weight (``support_*``, about 1 where the log sees what the
      challenger would show; ``monitoring.estimators.support``) has its upper bound below 1
      less that share, or is too uncertain (half its interval over
      ``off_policy_support_half_width``): the log cannot show some of its items in the
      slots it puts them in, or shows them there so rarely that it has not met their heavy
      weights, and the estimate's interval, however narrow, does not hold its level
      (tests/unit/test_estimators.py: a 95% interval held the truth in 27% of such logs).

    ``promote``: the question is whether the estimate may promote the challenger (its gain's
    lower bound above a margin), not whether it may refuse it. A position-based IPS estimate
    (``position_based`` 1) has no reward model: an item the log never showed adds nothing to
    the challenger's estimate, and clicks are never negative, so where the log's support
    falls short the challenger is underestimated, never overestimated (Sachdeva et al.
    2020, "Off-policy bandits with deficient support"), and a gain whose lower bound clears
    the margin all the same stands. Then the unlogged-share check reads the baseline the
    gain subtracts instead (``baseline_unlogged_share``, the champion's greedy slates or
    recipe), whose underestimate would inflate the gain, and the mean weight's floor is not
    checked (it falls short by the same missing support); the width check stays, because an
    interval that has not met the heavy weights misses on either side.
    """
    most = settings.off_policy_max_unlogged
    one_sided = promote and estimate.get("position_based") == 1.0
    if one_sided:
        share = estimate.get("baseline_unlogged_share", 0.0)
        if share > most:
            return (
                f"{share:.1%} of the baseline's slots show items the logged window never "
                f"showed (more than {most:.0%}): its position-based IPS CTR is "
                "underestimated, and the gain over it overestimated"
            )
    else:
        share = estimate.get("unlogged_share", 0.0)
        if share > most:
            return (
                f"{share:.1%} of the challenger's slots show items the logged window never "
                f"showed (more than {most:.0%}; only the reward model speaks for them, and "
                "the interval does not hold its error)"
            )
    if "support_high" not in estimate:
        return None
    value, low, high = (estimate["support_value"], estimate["support_low"],
                        estimate["support_high"])  # fmt: skip
    said = f"its mean importance weight is {value:.3f} [{low:.3f}, {high:.3f}]"
    if high < 1.0 - most and not one_sided:
        return (
            f"{said}, below {1.0 - most:.2f}: the log cannot show, or has too rarely shown, "
            "its items in the slots it puts them in, and the interval does not hold its level"
        )
    if (high - low) / 2 > settings.off_policy_support_half_width:
        return (
            f"{said}, wider than +-{settings.off_policy_support_half_width}: the log holds too "
            "few of its items in its slots to weigh them, and the interval does not hold its "
            "level"
        )
    return None


def _cold_start_verdict(
    estimate: dict[str, float], settings: PromotionSettings
) -> tuple[bool, str]:
    """(may promote, why) from the gain on the new users' logged impressions (``cold_*``):
    refused only when its interval lies wholly below zero, with enough of them matched."""
    matches = int(estimate.get("cold_matches", 0))
    if "cold_gain_value" not in estimate or matches < settings.off_policy_min_matches:
        shown = int(estimate.get("cold_impressions", 0))
        return True, (
            f"cold start: {matches} of {shown} logged impressions to new users match the "
            f"challenger's slates (fewer than {settings.off_policy_min_matches}): not judged"
        )
    value, low, high = (estimate["cold_gain_value"], estimate["cold_gain_low"],
                        estimate["cold_gain_high"])  # fmt: skip
    said = (
        f"cold start: gain {value:+.4f} [{low:+.4f}, {high:+.4f}] on the "
        f"{int(estimate['cold_impressions'])} logged impressions to new users"
    )
    if high < 0:
        return False, f"{said}, wholly below zero"
    return True, said


def _off_policy_gain_verdict(
    estimate: dict[str, float], settings: PromotionSettings
) -> tuple[bool, str]:
    """(promote, why) with the off-policy criterion: the challenger's doubly robust CTR less
    the champion's recipe's, paired on the same impressions, must have its lower bound above
    ``off_policy_margin``."""
    if (why := unsupported(estimate, settings, promote=True)) is not None:
        return False, f"off-policy: {why}: the log cannot judge it"
    from monitoring.ope import label

    gain, low, high = estimate["gain_value"], estimate["gain_low"], estimate["gain_high"]
    level = f"{1 - estimate.get('alpha', 0.05):.1%}"
    said = (
        f"off-policy: the challenger's {label(estimate)} CTR {estimate['challenger_value']:.4f} "
        f"against the champion's recipe's {estimate['baseline_value']:.4f} on the same "
        f"{int(estimate['impressions'])} impressions: gain {gain:+.4f}, {level} interval "
        f"[{low:+.4f}, {high:+.4f}]"
    )
    if low > settings.off_policy_margin:
        return True, f"{said} lies above the margin {settings.off_policy_margin}"
    return False, f"{said} does not clear the margin {settings.off_policy_margin}"


def _off_policy_verdict(
    estimate: dict[str, float], settings: PromotionSettings
) -> tuple[bool, str]:
    """(may promote, why) from ``monitoring.ope.gate_estimate``'s numbers. Only a challenger
    whose paired gain interval (its doubly robust CTR less the served CTR, impression by
    impression, on the same impressions) lies wholly below zero is refused: the offline
    protocols already decided that it is better, and a wide interval is no evidence either
    way. Paired, the served CTR's own noise is in the interval too; comparing the
    challenger's interval with the served CTR as if exact would refuse too readily."""
    from monitoring.ope import label

    if estimate.get("failed"):
        if settings.off_policy_on_failure == "hold":
            return False, (
                "off-policy: the estimate failed (see the training log), so the check this "
                "challenger must pass did not run; the champion stays "
                "(promotion.off_policy_on_failure=offline promotes on offline evidence alone)"
            )
        return True, "off-policy: not computed (the estimate failed: see the training log)"
    impressions = int(estimate.get("impressions", 0))
    if impressions == 0:
        return True, "off-policy: no logged impressions to estimate on; not used"
    matches = int(estimate.get("matches", 0))
    if matches < settings.off_policy_min_matches:
        return True, (
            f"off-policy: only {matches} of {impressions} logged impressions match the "
            f"challenger's slates (fewer than {settings.off_policy_min_matches}); not used"
        )
    if (why := unsupported(estimate, settings)) is not None:
        return True, f"off-policy: {why}; not used"
    value, low, upper = (estimate["challenger_value"], estimate["challenger_low"],
                         estimate["challenger_high"])  # fmt: skip
    gain, gain_low, gain_high = estimate["gain_value"], estimate["gain_low"], estimate["gain_high"]
    online = estimate["champion_online"]
    said = (
        f"the challenger's {label(estimate)} CTR {value:.4f} [{low:.4f}, {upper:.4f}] against the "
        f"served policy's online CTR {online:.4f}: gain {gain:+.4f} "
        f"[{gain_low:+.4f}, {gain_high:+.4f}] on the same impressions"
    )
    if gain_high < 0:
        return False, f"off-policy: {said}, wholly below zero ({impressions} impressions)"
    return True, f"off-policy: {said} ({impressions} impressions, {matches} matched)"
