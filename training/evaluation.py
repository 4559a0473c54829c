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
    # Row numbers into the split's queries: they name a user only within one split of one
    # data snapshot, so the gate never pairs on them (``user_ids`` and ``data_digest`` below).
    users: list[int] = field(repr=False)
    # The user behind each per-user value, in the same order; None where the split withholds
    # the ids (P3a and P3b describe a new user rather than name one) or for evaluations saved
    # before ids were recorded (``training.pipeline.read_evaluations``).
    user_ids: list[str] | None = field(default=None, repr=False)
    # The digest of the interactions the split was drawn from (the feature store's export
    # records one; a source folder does not). The same users hold out the same items only
    # in splits of the same data, so per-user values pair only within one digest.
    data_digest: str | None = None

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
    ids = [split.queries[row].user_id for row in rows]
    # As text, the form a saved evaluation reads back, so in-process and saved ids compare.
    user_ids = None if any(user is None for user in ids) else [str(user) for user in ids]
    return Evaluation(
        protocol=split.protocol,
        k=k,
        metrics={name: float(values.mean()) for name, values in per_user.items()},
        per_user=per_user,
        users=rows.tolist(),
        user_ids=user_ids,
        data_digest=split.train.snapshot.get("interactions_digest"),
    )
