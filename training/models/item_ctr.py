"""Item click-through rate: what users clicked over what they were shown, recent first.

Popularity counts clicks, and a click needs an impression first: an item the logging policy
showed often collects clicks for that reason alone, so the counts learn the policy's exposure
as much as the users' taste. This kind divides each item's clicks by its impressions
(``InteractionData.exposures``, the service's logged impressions), with a recency weight of
``0.5 ** (age / half_life_hours)`` on both, so that after a shift of taste the items users
now click when shown rise within hours, whatever the old champion kept showing.

    score(item) = log((clicks_w + prior * rate) / (impressions_w + prior))

``rate`` is the overall weighted click rate: an item shown rarely stays near it (``prior``
pseudo-impressions). A click counts only as one of the training interactions (a user-item
pair the service also showed, at the positive's time), never from the exposures, which carry no
labels: a protocol's held-out click stays held out. Impressions after the newest training
interaction are left out, so a split by time holds out both. It is the same for every user; a
user's seen items are left out as for any kind.

It needs exposures: trained on data without any (MovieLens ratings), it refuses by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data import InteractionData
from training.models.base import Recommender, ResolvedUser
from training.models.popularity import recency_weighted_counts


@dataclass
class ItemCtrConfig:
    half_life_hours: float | None = 24.0  # None: all impressions and clicks weigh the same
    prior: float = 20.0  # pseudo-impressions at the overall rate, per item

    def __post_init__(self) -> None:
        value = self.half_life_hours
        if value is not None and not (isinstance(value, int | float) and value > 0):
            raise ValueError(
                f"item_ctr config: half_life_hours={value!r} is invalid "
                "(expected a positive number of hours, or None)"
            )
        if not (isinstance(self.prior, int | float) and self.prior > 0):
            raise ValueError(
                f"item_ctr config: prior={self.prior!r} is invalid "
                "(expected a positive number of pseudo-impressions)"
            )


class ItemCtr(Recommender):
    kind = "item_ctr"

    @classmethod
    def default_config(cls) -> ItemCtrConfig:
        return ItemCtrConfig()

    def _fit(self, data: InteractionData, warm_start: Recommender | None) -> None:
        del warm_start  # rates are recomputed from the data given
        self.config.__post_init__()  # create() may have set fields after construction
        exposures = data.exposures
        if exposures is None or exposures.empty:
            raise ValueError(
                "item_ctr: the training data hold no exposures (the impressions the service "
                "logged); it learns clicks over impressions, so it cannot train on data "
                "without any, such as MovieLens ratings"
            )
        positives = data.interactions
        # The newest training interaction: ages are measured from it, as trending popularity's
        # are, and impressions after it are left out. A split by time (the `recent` protocol,
        # the gate's off-policy window) holds out the newest clicks but not the impressions,
        # which would otherwise count there as impressions nobody clicked.
        now = positives["interacted_at"].max()
        exposures = exposures[exposures["shown_at"] <= now]
        shown = exposures.drop_duplicates(["user_id", "item_id"])[["user_id", "item_id"]]
        clicked = positives.merge(shown, on=["user_id", "item_id"], how="inner")
        half_life = self.config.half_life_hours
        impressions = recency_weighted_counts(self.item_index, exposures["item_id"],
                                              exposures["shown_at"], now, half_life)  # fmt: skip
        clicks = recency_weighted_counts(self.item_index, clicked["item_id"],
                                         clicked["interacted_at"], now, half_life)  # fmt: skip
        rate = clicks.sum() / impressions.sum() if impressions.sum() > 0 else 0.0
        prior = self.config.prior
        self.scores = np.log((clicks + prior * rate + 1e-12) / (impressions + prior))

    def _score(self, users: list[ResolvedUser]) -> np.ndarray:
        # Items never shown all score log(rate): popularity breaks their ties.
        return np.tile(self.scores + self.popularity_prior(), (len(users), 1))

    def _state(self) -> dict[str, np.ndarray]:
        return {"scores": self.scores}

    def _load_state(self, path, arrays) -> None:
        self.scores = arrays["scores"]
