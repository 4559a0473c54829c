"""The training gate's off-policy evidence: candidates judged on what the service logged.

Under ``promotion.criterion`` off_policy, ``select_off_policy`` picks the challenger among a
run's candidates by its doubly robust CTR on the impressions of ``promotion.off_policy_hours``
before the training data's newest interaction; under the offline criterion, ``gate_off_policy``
adds the chosen challenger's estimate to the gate's evidence. Either way each recipe is refitted
on the interactions before that window first (``_fit_before``), and the estimates come from
``monitoring.ope`` (``gate_estimate``/``gate_estimates``), as the hourly ones do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from recloop.redaction import log_failure
from recloop.settings import Settings
from training.data import InteractionData
from training.promotion import unsupported

log = logging.getLogger(__name__)


def _weighs_off_policy(
    champion_evaluations: Any, challenger_recipe: dict[str, Any], champion_recipe: Any
) -> bool:
    """Whether the gate estimates the challenger off-policy: only against a champion, and not
    for a refresh (the champion's own recipe on newer data, judged as a refresh)."""
    return champion_evaluations is not None and challenger_recipe != champion_recipe


def _off_policy_window(
    settings: Settings, described: dict[str, Any]
) -> tuple[datetime, datetime] | None:
    """[start, end) of the impressions the gate estimates on: ``promotion.off_policy_hours``
    before the training data's newest interaction. None when turned off, or when the data has
    no time (read from a source folder: no service logged anything for it)."""
    hours = settings.promotion.off_policy_hours
    end = described.get("last_interaction_at")
    if hours <= 0 or end is None:
        return None
    end = datetime.fromisoformat(end)
    return end - timedelta(hours=hours), end


def _fit_before(
    settings: Settings,
    recipes: dict[str, dict[str, Any]],
    data: InteractionData,
    start: datetime,
    show_progress: bool,
) -> dict[str, Any] | None:
    """Each recipe refitted on the interactions before ``start``: a registered model learned
    from the window's clicks, and a model that has seen them cannot be judged on them (it
    would leave each clicked item out of its own slate as already seen, and never match a
    click). None when nothing comes before ``start``."""
    import pandas as pd

    from training.pipeline import fit_recipe  # here: the pipeline imports this module

    before = data.interactions[data.interactions["interacted_at"] < pd.Timestamp(start)]
    if before.empty:
        return None
    earlier = data.with_interactions(before)
    return {name: fit_recipe(recipe, earlier, settings, show_progress=show_progress)
            for name, recipe in recipes.items()}  # fmt: skip


def gate_off_policy(
    settings: Settings,
    the_recipe: dict[str, Any],
    described: dict[str, Any],
    *,
    data: InteractionData | None = None,
    show_progress: bool = True,
) -> dict[str, float] | None:
    """The gate's off-policy numbers for the challenger's recipe (refitted on the
    interactions before the window, ``_fit_before``), on the impressions logged in
    ``promotion.off_policy_hours`` before the training data's newest interaction
    (``described``: the data's ``describe()``). None when turned off, or when the data has
    no time. A failure here does not stop the run: it is logged with its traceback and
    returned as ``{"failed": 1.0}``, which holds the champion unless
    ``promotion.off_policy_on_failure`` is offline (``training.promotion``)."""
    from monitoring.logs import clicks, impressions
    from monitoring.ope import gate_estimate
    from training.pipeline import _load_data  # here: the pipeline imports this module

    window = _off_policy_window(settings, described)
    if window is None:
        return None
    try:
        frame = impressions(settings, *window)
        if frame.empty:
            return {"impressions": 0.0}
        models = _fit_before(settings, {"challenger": the_recipe}, _load_data(settings, data),
                             window[0], show_progress)  # fmt: skip
        if models is None:  # nothing to fit on: no match, so the estimate is reported unused
            return {"impressions": float(len(frame)), "matches": 0.0}
        return gate_estimate(frame, models["challenger"], settings.monitoring.alpha,
                             clicks=clicks(settings, *window),
                             fresh_clicks=settings.serving.fresh_clicks,
                             weights=settings.monitoring.off_policy_weights)  # fmt: skip
    except Exception as error:
        log_failure(log, settings, "the gate's off-policy estimate failed "
                    "(promotion.off_policy_on_failure says what the gate does without it)",
                    error)  # fmt: skip
        return {"failed": 1.0}


CHAMPION_RECIPE = "champion"  # select_off_policy's name for a champion recipe not retrained


@dataclass
class OffPolicySelection:
    """``select_off_policy``'s outcome: the chosen candidate's summary and estimate (both
    None when the log had too little and the offline criterion decides), every candidate's
    estimate by version, and what happened, in words."""

    chosen: dict[str, Any] | None
    estimate: dict[str, float] | None
    estimates: dict[str, dict[str, float]]
    reason: str


def select_off_policy(
    settings: Settings,
    summaries: list[dict[str, Any]],
    champion_recipe: dict[str, Any] | None,
    described: dict[str, Any],
    *,
    data: InteractionData | None = None,
    show_progress: bool = True,
) -> OffPolicySelection:
    """The challenger by ``promotion.criterion`` off_policy: every candidate's recipe (and the
    champion's, when this run did not retrain it) refitted on the interactions before the
    window and estimated as the greedy target on the window's logged impressions, all with
    one reward model; the highest doubly robust CTR among those that match at least
    ``promotion.off_policy_min_matches`` impressions within the log's support
    (``training.promotion.unsupported`` as for a promotion: a position-based IPS estimate
    that the log's support cuts short only undersells its candidate, so the one ranked first
    is, in expectation, at least as good as it reads; the ranking can pass over one the log
    undersells, never promote one it oversells), is chosen. Each gain is
    paired against the champion's recipe (against the logged clicks when there is no
    champion) at level alpha / candidates (Bonferroni: the gate tests the best of several).
    With no window, no impressions, too little overlap or a failure, nothing is chosen, and
    the reason says so."""
    from monitoring.logs import clicks, impressions
    from monitoring.ope import gate_estimates, label
    from training.pipeline import _load_data  # here: the pipeline imports this module

    def fallback(why: str, estimates: dict | None = None) -> OffPolicySelection:
        reason = f"off-policy selection: {why}; chosen and judged offline"
        return OffPolicySelection(None, None, estimates or {}, reason)

    window = _off_policy_window(settings, described)
    if window is None:
        return fallback("no logged window (turned off, or data without time)")
    recipes = {s["version"]: s["recipe"] for s in summaries}
    baseline = None
    if champion_recipe is not None:
        baseline = next((v for v, r in recipes.items() if r == champion_recipe), None)
        if baseline is None:
            baseline = CHAMPION_RECIPE
            recipes[baseline] = champion_recipe
    candidates = [s["version"] for s in summaries]
    alpha = settings.monitoring.alpha / len(candidates)
    try:
        frame = impressions(settings, *window)
        if frame.empty:
            return fallback(f"no impressions logged in {window[0]:%Y-%m-%d %H:%M} - "
                            f"{window[1]:%Y-%m-%d %H:%M}")  # fmt: skip
        models = _fit_before(settings, recipes, _load_data(settings, data), window[0],
                             show_progress)  # fmt: skip
        if models is None:
            return fallback("no interactions before the logged window to fit the candidates on")
        estimates = gate_estimates(frame, models, baseline=baseline, alpha=alpha,
                                   clicks=clicks(settings, *window),
                                   fresh_clicks=settings.serving.fresh_clicks,
                                   weights=settings.monitoring.off_policy_weights)  # fmt: skip
    except Exception as error:
        log_failure(log, settings, "the off-policy selection failed; the offline criterion "
                    "decides", error)  # fmt: skip
        return fallback("the estimate failed (see the training log)")
    for values in estimates.values():
        values["alpha"] = alpha
    gate = settings.promotion
    least, most = gate.off_policy_min_matches, gate.off_policy_max_unlogged
    eligible = [v for v in candidates if estimates[v].get("matches", 0) >= least
                and unsupported(estimates[v], gate, promote=True) is None]  # fmt: skip
    if not eligible:
        return fallback(f"no candidate matches {least} logged impressions with the log's "
                        f"support (at most {most:.0%} of its slots unlogged, its mean "
                        f"importance weight's upper bound at least {1 - most:.2f} and its "
                        "half interval within promotion.off_policy_support_half_width; for a "
                        "position-based IPS estimate, the champion's recipe's unlogged share "
                        "and no floor on the weight)",
                        estimates)  # fmt: skip
    best = max(eligible, key=lambda v: estimates[v]["challenger_value"])
    chosen = next(s for s in summaries if s["version"] == best)
    ranked = sorted(eligible, key=lambda v: -estimates[v]["challenger_value"])
    listed = ", ".join(
        f"{recipes[v]['kind']} (v{v}) {estimates[v]['challenger_value']:.4f}" for v in ranked
    )
    reason = (
        f"off-policy selection: {label(estimates[best])} CTR on "
        f"{int(estimates[best]['impressions'])} "
        f"logged impressions: {listed}"
    )
    if len(eligible) < len(candidates):
        reason += (f"; {len(candidates) - len(eligible)} left out (under {least} matches, or "
                   "outside the log's support)")  # fmt: skip
    return OffPolicySelection(chosen, estimates[best], estimates, reason)
