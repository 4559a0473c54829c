"""Most popular first: the reference every protocol reports, and the fallback the service
uses for anything no other model can score."""

from __future__ import annotations

import numpy as np

from training.data import InteractionData
from training.models.base import Recommender, ResolvedUser


class Popularity(Recommender):
    """Scores every item by its number of training interactions, the same for every user."""

    kind = "popularity"

    def _fit(self, data: InteractionData, warm_start: Recommender | None) -> None:
        del data, warm_start  # the counts are what the base class remembers

    def _score(self, users: list[ResolvedUser]) -> np.ndarray:
        # log1p keeps the ordering and puts the scores on a scale a blend can combine with.
        return np.tile(np.log1p(self.popularity), (len(users), 1))
