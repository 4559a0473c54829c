"""Drift and degradation alarms.

- ``degradation``: river's ADWIN over the champion version's click stream (one 0/1 per
  impression, in time order, since that version started serving). ADWIN keeps the longest
  recent window whose mean is consistent with itself and cuts the older part when two
  sub-windows differ beyond its bound (Bifet & Gavalda 2007). A cut inside the hour being
  estimated, after which the mean is lower than before, is a degradation. Running it over the
  version's whole stream each hour keeps the DAG stateless: a newly promoted version starts
  a new stream, so an alarm is never raised twice for the same change.
- ``feature_drift``: the population stability index of each feature of the hour's requests
  against the week before it: the request's device, and the requesting users' attributes
  (age group, gender, occupation: dbt's ``user_attributes`` mart; requests of users it does
  not hold yet, signed up since the last feature run, are left out of both sides), so a
  change of who asks is seen as well as a change of how they ask. (Hour of day and weekday
  are left out: one hour's requests share them by construction. The serving path (history,
  fresh clicks, profile, popularity) is left out too: the loop itself moves it, as users
  gather fresh clicks and a retrained champion knows them, so it raised alarms that asked for
  retraining after retraining.) PSI = sum (a - e) ln(a / e) over the bins (shares smoothed by
  half a count); 0.1 is a shift worth a look, 0.25 a large one. PSI says how large a shift
  is, not whether it is more than the noise of one hour's few requests over many bins (an
  occupation has 21): an alarm also needs a chi-square test of homogeneity (scipy) to reject
  "same distribution" at alpha, Bonferroni-divided over the fields tested. Its p-value comes
  from 999 tables drawn with the observed margins (scipy's MonteCarloMethod), not from the
  chi-square distribution, which fails when the hour expects fewer than 5 requests in a bin
  (100 requests over 21 occupations). Both count requesters, not requests: a user's
  attributes (and, mostly, their device) repeat on each of their requests, so requests are not
  independent draws, and counted per request the test rejected "same distribution" in 95-100%
  of drift-free simulated hours (5 requests a user; 0-3% at one a user) and PSI's noise
  follows the number of users, not of requests. So each user counts once per window for their
  attributes, and each (user, device) pair once for the device (each request once where the
  log has no user). Only counts per bin are computed; no attribute of any user is logged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

CONTEXT_FIELDS = ("device",)
USER_FIELDS = ("age_group", "gender", "occupation")  # the requesting users' attributes
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Alarm:
    kind: str  # degradation | challenger_wins | feature_drift
    subject: str  # what it is about: a model version, a context field
    detail: str
    before: float
    after: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Change:
    index: int  # position in the stream where ADWIN cut
    before: float  # mean of the part it dropped
    after: float  # mean of the window it kept


def adwin_changes(stream: np.ndarray, delta: float) -> list[Change]:
    """Every cut ADWIN makes over a 0/1 stream, with the means on either side."""
    from river import drift

    detector = drift.ADWIN(delta=delta)
    values = np.asarray(stream, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    changes, since = [], 0
    for index, value in enumerate(values):
        detector.update(float(value))
        if detector.drift_detected:
            kept_from = index + 1 - int(detector.width)
            dropped = max(kept_from - since, 1)
            before = (cumulative[kept_from] - cumulative[since]) / dropped
            changes.append(Change(index, float(before), float(detector.estimation)))
            since = kept_from
    return changes


def degradation(
    stream: np.ndarray, hour_starts_at: int, version: str, delta: float
) -> Alarm | None:
    """An alarm when ADWIN cuts the stream inside the hour (positions >= ``hour_starts_at``)
    to a lower click-through rate."""
    for change in adwin_changes(stream, delta):
        if change.index >= hour_starts_at and change.after < change.before:
            return Alarm(
                "degradation", version,
                f"ADWIN (delta={delta:g}) cut the click stream of version {version}: CTR "
                f"{change.before:.4f} before, {change.after:.4f} after",
                change.before, change.after,
            )  # fmt: skip
    return None


def _on_common_bins(expected: pd.Series, actual: pd.Series) -> np.ndarray:
    """The two count vectors as the rows of one table over the union of their bins (a bin
    one of them lacks counts 0 there)."""
    bins = expected.index.union(actual.index)
    return np.vstack([expected.reindex(bins, fill_value=0).to_numpy(dtype=np.float64),
                      actual.reindex(bins, fill_value=0).to_numpy(dtype=np.float64)])  # fmt: skip


def psi(expected: pd.Series, actual: pd.Series) -> float:
    """Population stability index between two count vectors over the same bins."""
    e, a = _on_common_bins(expected, actual) + 0.5
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def requester_attributes(requests: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """The ``requests`` (one row per request, with ``user_id``) of users in ``users`` (dbt's
    ``user_attributes`` mart: age already a group), with their attribute groups (USER_FIELDS)
    beside them. Users the mart does not hold yet are left out: compared with the week, whose
    users the mart has caught up with, they would always look like a shift."""
    table = users.drop_duplicates("user_id").set_index("user_id")[list(USER_FIELDS)]
    known = requests[requests["user_id"].isin(table.index)]
    joined = table.reindex(known["user_id"].to_numpy()).fillna(UNKNOWN)
    return known.assign(**{f: joined[f].to_numpy() for f in USER_FIELDS})


def requesters(requests: pd.DataFrame, field: str) -> pd.Series:
    """Counts per bin of ``field`` over the distinct requesters (module docstring): one per
    user and value of the field (a user who changed device counts once for each), one per
    request where the rows carry no ``user_id``."""
    if "user_id" in requests.columns:
        requests = requests.drop_duplicates(["user_id", field])
    return requests[field].value_counts()


def homogeneity_p_value(expected: pd.Series, actual: pd.Series, resamples: int = 999) -> float:
    """Chi-square test that two count vectors come from one distribution, its p-value from
    ``resamples`` random tables with the same margins (valid however sparse the bins; the
    smallest p-value it can give is 1 / (resamples + 1)). Seeded: a rerun gives the same."""
    from scipy.stats import MonteCarloMethod, chi2_contingency

    table = _on_common_bins(expected, actual).astype(np.int64)  # scipy draws integer tables
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    method = MonteCarloMethod(n_resamples=resamples, rng=np.random.default_rng(0))
    return float(chi2_contingency(table, correction=False, method=method).pvalue)


def feature_drift(
    hour: pd.DataFrame,
    before: pd.DataFrame,
    threshold: float,
    min_requests: int,
    *,
    users: pd.DataFrame | None = None,
    alpha: float = 0.05,
) -> list[Alarm]:
    """An alarm per request feature (one row per request) whose distribution over the hour's
    requesters has moved from the week's by PSI > ``threshold`` and beyond chance (see the
    module's note). An hour with fewer than ``min_requests`` requests, or a field with fewer
    requesters on either side, is not tested.
    ``users``: the warehouse's users, for the requesters' attributes; None tests the request
    context only."""
    alarms: list[Alarm] = []
    hour_requests = hour.drop_duplicates("request_id")
    past_requests = before.drop_duplicates("request_id")
    if len(hour_requests) < min_requests or len(past_requests) < min_requests:
        return alarms
    # (field, the week's requests, the hour's): context over every request, attributes over
    # the requests of users the mart holds.
    frames = [(field, past_requests, hour_requests) for field in CONTEXT_FIELDS]
    if users is not None:
        past_known = requester_attributes(past_requests, users)
        hour_known = requester_attributes(hour_requests, users)
        frames += [(field, past_known, hour_known) for field in USER_FIELDS]
    tested = []
    for field, past, now in frames:
        expected, actual = requesters(past, field), requesters(now, field)
        if expected.sum() < min_requests or actual.sum() < min_requests:
            continue  # e.g. traffic logged before the field existed: nothing to compare with
        tested.append((field, psi(expected, actual), homogeneity_p_value(expected, actual)))
    for field, index, p_value in tested:
        if math.isfinite(index) and index > threshold and p_value < alpha / len(tested):
            subject = field if field in CONTEXT_FIELDS else f"user {field}"
            where = "request" if field in CONTEXT_FIELDS else "requesting users'"
            alarms.append(Alarm(
                "feature_drift", subject,
                f"PSI of {where} {field} against the week before: {index:.3f} "
                f"(chi-square p = {p_value:.2g})", threshold, index,
            ))  # fmt: skip
    return alarms
