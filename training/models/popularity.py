"""Most popular first: the reference every protocol reports, and the fallback the service
uses for anything no other model can score.

With ``half_life_hours`` it is a *trending* model: each interaction counts
``0.5 ** (age / half_life_hours)``, its age taken from the newest interaction in the data, so
what users chose in the last hours outweighs what they chose weeks ago. After a sudden shift
of taste that the whole population shares, this is the model that catches up first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.data import InteractionData
from training.models.base import Recommender, ResolvedUser


@dataclass
class PopularityConfig:
    half_life_hours: float | None = None  # None: plain counts; else recency-weighted counts

    def __post_init__(self) -> None:
        value = self.half_life_hours
        if value is not None and not (isinstance(value, int | float) and value > 0):
            raise ValueError(
                f"popularity config: half_life_hours={value!r} is invalid "
                "(expected a positive number of hours, or None)"
            )


class Popularity(Recommender):
    """Scores every item by its number of training interactions (recency-weighted with a half
    life), the same for every user."""

    kind = "popularity"

    @classmethod
    def default_config(cls) -> PopularityConfig:
        return PopularityConfig()

    def _fit(self, data: InteractionData, warm_start: Recommender | None) -> None:
        del warm_start  # counts are recomputed from the data given
        self.config.__post_init__()  # create() may have set fields after construction
        half_life = self.config.half_life_hours
        if half_life is None:
            return  # the plain counts are what the base class remembers
        when = data.interactions["interacted_at"]
        self.popularity = recency_weighted_counts(
            self.item_index, data.interactions["item_id"], when, when.max(), half_life
        )

    def _score(self, users: list[ResolvedUser]) -> np.ndarray:
        # log1p keeps the ordering and puts the scores on a scale a blend can combine with.
        return np.tile(np.log1p(self.popularity), (len(users), 1))


def recency_weighted_counts(
    item_index: dict[str, int],
    items: pd.Series,
    at: pd.Series,
    now: pd.Timestamp,
    half_life_hours: float | None,
) -> np.ndarray:
    """Per catalogue item (``item_index``), how many of ``items`` there are, each weighing
    ``0.5 ** (age / half_life_hours)`` with its age ``now - at`` (1 without a half life).
    Items outside the catalogue are left out, as the plain counts leave them."""
    columns = items.map(item_index)
    known = columns.notna().to_numpy()
    if half_life_hours is None:
        weights = np.ones(len(items))
    else:
        age_hours = (now - at).dt.total_seconds().to_numpy() / 3600.0
        weights = np.power(0.5, age_hours / half_life_hours)
    return np.bincount(
        columns[known].to_numpy(dtype=np.int64), weights=weights[known],
        minlength=len(item_index),
    ).astype(np.float64)  # fmt: skip
