"""Two-stage recommendation: candidates from two retrievers' top lists, re-ranked by a blend.

Stage one takes the union of the retriever's top ``candidates`` items and the ranker's own top
``candidates`` (so that items the retriever cannot score, such as new items for EASE, still
reach stage two when the text-aware ranker likes them). Stage two orders that pool by a
weighted sum of the two models' scores, each standardised per user over the pool; items
outside the pool follow, in the retriever's order. The retriever is EASE by default (strong on
known users), the ranker the sequential transformer (recency, context, cold start by text).

This is the classic retrieve-then-rank cascade (Covington et al., RecSys 2016), with a linear
score blend as the ranker's combination rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data import InteractionData
from training.models.base import Recommender, ResolvedUser


@dataclass
class TwoStageConfig:
    retriever: str = "ease"  # any kind; its top list is the first half of the pool
    ranker: str = "seq_transformer"  # any kind; re-ranks the pool (and adds its own top list)
    candidates: int = 100  # per model, for the pool
    ranker_weight: float = 0.5  # blend: (1 - w) * retriever + w * ranker, standardised scores
    retriever_config: dict[str, Any] = field(default_factory=dict)
    ranker_config: dict[str, Any] = field(default_factory=dict)
    # Set by the environment (pipeline) and passed to whichever sub-model has the field.
    text_model: str | None = None
    text_cache_dir: str | None = None
    device: str = "auto"
    show_progress: bool = True
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 <= self.ranker_weight <= 1:
            raise ValueError(f"ranker_weight: must lie in [0, 1], got {self.ranker_weight}")
        if self.candidates < 1:
            raise ValueError(f"candidates: must be positive, got {self.candidates}")
        if "two_stage" in (self.retriever, self.ranker):
            raise ValueError("retriever, ranker: a two-stage model cannot nest itself")


class TwoStage(Recommender):
    kind = "two_stage"

    @classmethod
    def default_config(cls) -> TwoStageConfig:
        return TwoStageConfig()

    def _sub_model(self, kind: str, overrides: dict[str, Any]) -> Recommender:
        from training.models import ENVIRONMENT_FIELDS, create, environment_config

        own = {name: getattr(self.config, name) for name in ENVIRONMENT_FIELDS}
        return create(kind, **{**environment_config(kind, own), **overrides})

    def _fit(self, data: InteractionData, warm_start: Recommender | None) -> None:
        self.retriever = self._sub_model(self.config.retriever, self.config.retriever_config)
        self.ranker = self._sub_model(self.config.ranker, self.config.ranker_config)
        self.retriever.fit(data, warm_start=getattr(warm_start, "retriever", None))
        self.ranker.fit(data, warm_start=getattr(warm_start, "ranker", None))
        self.history = [dict(row, model="ranker") for row in getattr(self.ranker, "history", [])]

    def _score(self, users: list[ResolvedUser]) -> np.ndarray:
        first = self.retriever._score(users)  # (users, items)
        second = self.ranker._score(users)  # (users, items)
        n = min(self.config.candidates, first.shape[1])
        pool = np.zeros(first.shape, dtype=bool)
        rows = np.arange(first.shape[0])[:, None]
        pool[rows, np.argpartition(-first, n - 1, axis=1)[:, :n]] = True
        pool[rows, np.argpartition(-second, n - 1, axis=1)[:, :n]] = True
        blended = (1 - self.config.ranker_weight) * _standardise(
            first, pool
        ) + self.config.ranker_weight * _standardise(second, pool)
        # Outside the pool: below every pooled item, in the retriever's order.
        floor = np.where(pool, blended, np.inf).min(axis=1, keepdims=True) - 1.0
        outside = floor - 1.0 + _unit(first)
        return np.where(pool, blended, outside).astype(np.float32)

    def parts(self) -> list[Recommender]:
        return [self, *self.retriever.parts(), *self.ranker.parts()]

    def _quantize(self, text_encoder: bool) -> bool:
        retriever = self.retriever.quantize(text_encoder).quantized
        ranker = self.ranker.quantize(text_encoder).quantized
        return retriever or ranker

    def save(self, path: Path | str) -> Path:
        path = super().save(path)
        self.retriever.save(Path(path) / "retriever")
        self.ranker.save(Path(path) / "ranker")
        return path

    def _load_state(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        from training.models import load_model

        self.retriever = load_model(path / "retriever")
        self.ranker = load_model(path / "ranker")


def _standardise(scores: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Per user, (score - mean) / std over the pooled items."""
    count = pool.sum(axis=1, keepdims=True)
    mean = np.where(pool, scores, 0.0).sum(axis=1, keepdims=True) / count
    var = np.where(pool, (scores - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / count
    return (scores - mean) / np.sqrt(var + 1e-12)


def _unit(scores: np.ndarray) -> np.ndarray:
    """Per user, scores squeezed into [0, 1), order kept."""
    low = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - low
    return (scores - low) / (span + 1e-12) * 0.999
