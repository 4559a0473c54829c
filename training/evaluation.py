"""Run a model over a protocol's split and compute its metrics.

``evaluate`` scores the split's users in batches (so memory stays bounded on large
catalogues), masks what each user may not be shown, and returns the mean of every metric
the protocol reports plus the per-user values the promotion gate resamples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training import metrics
from training.models.base import Recommender
from training.protocols import PROTOCOL_METRICS, Split

K = 10
BATCH_USERS = 256


@dataclass
class Evaluation:
    protocol: str
    k: int
    metrics: dict[str, float]
    per_user: dict[str, np.ndarray] = field(repr=False)
    users: list[int] = field(repr=False)  # row numbers into the split's queries

    def named(self) -> dict[str, float]:
        """Metrics named as MLflow logs them: ``P1.ndcg_at_10``."""
        return {
            f"{self.protocol}.{name}" + ("" if name == "auc" else f"_at_{self.k}"): value
            for name, value in self.metrics.items()
        }

    def summary(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "k": self.k, "users": len(self.users), **self.metrics}


def evaluate(
    model: Recommender, split: Split, k: int = K, names: tuple[str, ...] | None = None
) -> Evaluation:
    names = names or PROTOCOL_METRICS[split.protocol]
    candidates = split.candidates or list(split.train.items["item_id"])
    column = {item: c for c, item in enumerate(candidates)}
    score_batches, relevant_batches = [], []
    for start in range(0, len(split), BATCH_USERS):
        queries = split.queries[start : start + BATCH_USERS]
        scores = model.score(queries, candidates).astype(np.float64)
        relevant = np.zeros(scores.shape, dtype=bool)
        for row, offset in enumerate(range(start, start + len(queries))):
            relevant[row, [column[i] for i in split.relevant[offset] if i in column]] = True
            excluded = [column[i] for i in split.exclude[offset] if i in column]
            scores[row, excluded] = -np.inf
        score_batches.append(scores)
        relevant_batches.append(relevant)
    scores = np.concatenate(score_batches)
    relevant = np.concatenate(relevant_batches)
    rows = np.flatnonzero(relevant.any(axis=1))
    scores, relevant = scores[rows], relevant[rows]
    per_user = {name: metrics.per_user(name, scores, relevant, k) for name in names}
    return Evaluation(
        protocol=split.protocol,
        k=k,
        metrics={name: float(values.mean()) for name, values in per_user.items()},
        per_user=per_user,
        users=rows.tolist(),
    )
