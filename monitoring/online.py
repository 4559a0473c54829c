"""Online metrics of what was served, per model version, policy and traffic arm.

For each window ending at the hour's end (the hour itself, i.e. the run's interval; the sliding
day and week; and an exponentially weighted view over the week):

- impressions, clicks, CTR with its Wilson interval (statsmodels) at the effective size
  that users' many impressions leave (``estimators.clustered_ctr``; ``effective_impressions``);
- requests, NDCG@k and MRR from the click positions of each slate (a slate without a click
  scores 0), each with a t interval over requests, clustered by user (J - 1 degrees of freedom);
- ratings and their mean where users rated;
- coverage: distinct items shown / items seen in the log over the week (the catalogue as the
  log knows it, since the service must not read the warehouse);
- novelty: mean self-information -log2 p(item) of what was shown, p from the week's clicks
  with add-one smoothing (higher = less popular items shown).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from monitoring.estimators import clustered_ctr, clustered_mean, ewma_ctr

WINDOWS: dict[str, float] = {"day": 24.0, "week": 168.0}  # sliding, in hours before the end
GROUP = ["model_version", "policy", "arm"]


def _mean_interval(
    values: np.ndarray, users: np.ndarray, alpha: float
) -> tuple[float, float, float]:
    """The mean of per-request values with a t interval clustered by user
    (``estimators.clustered_mean``); NaN bounds with fewer than two users."""
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    estimate = clustered_mean("mean", values, users, alpha)
    if estimate.slates < 2:
        return estimate.value, math.nan, math.nan
    return estimate.value, estimate.low, estimate.high


def slate_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """Per request: NDCG of the clicked slots (binary gains), the reciprocal rank of the
    first click, and the user who made it."""
    positions = frame["position"].to_numpy()
    clicked = frame["clicked"].to_numpy().astype(bool)
    gain = np.where(clicked, 1.0 / np.log2(positions + 2.0), 0.0)
    per = pd.DataFrame(
        {
            "request_id": frame["request_id"].to_numpy(),
            "user_id": frame["user_id"].to_numpy(),
            "gain": gain,
            "clicks": clicked.astype(int),
            "first": np.where(clicked, positions, np.inf),
        }
    ).groupby("request_id", sort=False)
    out = per.agg(dcg=("gain", "sum"), clicks=("clicks", "sum"), first=("first", "min"),
                  user_id=("user_id", "first"))  # fmt: skip
    # Ideal DCG of c clicks: all c at the top.
    discounts = np.cumsum(1.0 / np.log2(np.arange(2, 2 + int(out["clicks"].max() or 0) + 1)))
    ideal = np.where(out["clicks"] > 0, discounts[np.maximum(out["clicks"] - 1, 0)], 1.0)
    out["ndcg"] = out["dcg"] / ideal
    out["mrr"] = np.where(np.isfinite(out["first"]), 1.0 / (out["first"] + 1.0), 0.0)
    return out[["ndcg", "mrr", "user_id"]]


def _group_rows(
    part: pd.DataFrame, popularity: pd.Series, catalogue: int, alpha: float
) -> dict[str, float]:
    shown, clicks = len(part), int(part["clicked"].sum())
    # Clustered by user: the traffic split assigns users, not impressions, to arms.
    _, low, high, effective = clustered_ctr(part["clicked"], part["user_id"], alpha=alpha)
    per_request = slate_metrics(part)
    users = per_request["user_id"].to_numpy()
    ndcg = _mean_interval(per_request["ndcg"].to_numpy(), users, alpha)
    mrr = _mean_interval(per_request["mrr"].to_numpy(), users, alpha)
    ratings = part["rating"].dropna()
    surprise = -np.log2(popularity.reindex(part["item_id"]).fillna(popularity.min()).to_numpy())
    return {
        "impressions": shown, "clicks": clicks, "ctr": clicks / shown, "ctr_low": low,
        "ctr_high": high, "effective_impressions": effective, "requests": len(per_request),
        "ndcg": ndcg[0], "ndcg_low": ndcg[1], "ndcg_high": ndcg[2], "mrr": mrr[0],
        "mrr_low": mrr[1], "mrr_high": mrr[2],
        "ratings": len(ratings), "mean_rating": float(ratings.mean()) if len(ratings) else math.nan,
        "coverage": part["item_id"].nunique() / max(catalogue, 1),
        "novelty": float(surprise.mean()),
    }  # fmt: skip


def click_popularity(week: pd.DataFrame, items: int) -> pd.Series:
    """p(item) from the week's clicks, add-one smoothed over the items seen."""
    counts = week.groupby("item_id")["clicked"].sum()
    return (counts + 1) / (counts.sum() + max(items, len(counts)))


def online_metrics(
    week: pd.DataFrame,
    start: datetime,
    end: datetime,
    *,
    catalogue: int,
    alpha: float = 0.05,
    half_life_hours: float = 6.0,
) -> pd.DataFrame:
    """One row per (window, model version, policy, arm), from the week of impressions that
    ends at ``end`` (``monitoring.logs.impressions``); window ``hour`` is [start, end)."""
    popularity = click_popularity(week, catalogue)
    rows = []
    since = {"hour": start, **{w: end - timedelta(hours=h) for w, h in WINDOWS.items()}}
    for window, first in since.items():
        part = week[week["ts"] >= pd.Timestamp(first)]
        for key, group in part.groupby(GROUP, sort=True):
            rows.append({"window": window, **dict(zip(GROUP, key, strict=True)),
                         **_group_rows(group, popularity, catalogue, alpha)})  # fmt: skip
    for key, group in week.groupby(GROUP, sort=True):
        ages = (pd.Timestamp(end) - group["ts"]).dt.total_seconds().to_numpy() / 3600
        rate, low, high, effective = ewma_ctr(
            group["clicked"], ages, half_life_hours, alpha, clusters=group["user_id"]
        )
        rows.append({"window": "ewma", **dict(zip(GROUP, key, strict=True)), "impressions":
                     len(group), "clicks": int(group["clicked"].sum()), "ctr": rate,
                     "ctr_low": low, "ctr_high": high,
                     "effective_impressions": effective})  # fmt: skip
    frame = pd.DataFrame(rows, columns=None if rows else ["window", *GROUP, "impressions"])
    frame.insert(0, "hour_end", pd.Timestamp(end))
    return frame
