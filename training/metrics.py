"""Ranking metrics, all with one signature (as microsoft/recommenders' evaluation module).

Every metric is ``metric(scores, relevant, k) -> float``:

- ``scores``: float array ``(users, candidates)``; higher ranks first; ``-inf`` marks an item
  the user may not be shown (already seen, not a candidate). Ties are broken in a fixed
  pseudo-random order per user (``TIE_SEED``: the same every run, so two models' per-user
  values stay paired): a model that cannot tell candidates apart, popularity on new items,
  then scores as a random ranking does, not as well or as badly as the catalogue's order of
  item ids happens to place the relevant ones.
- ``relevant``: bool array of the same shape, True where the user interacted in the held-out
  part. Every user needs at least one relevant item (a metric of nobody is undefined).
- ``k``: the cut-off (ignored by ``auc``).

The value is the mean over users. ``per_user(name, ...)`` returns the per-user values, which
the promotion gate's paired bootstrap resamples.

Definitions (binary relevance): precision@k = hits / k; recall@k = hits / |relevant|;
hit rate@k = 1 if any hit; MRR@k = 1 / rank of the first hit (0 if none in the top k);
NDCG@k = sum over hits of 1 / log2(rank + 1), divided by its ideal for min(|relevant|, k)
hits; MAP@k = sum over hits of precision at that rank, divided by min(|relevant|, k);
AUC = probability that a relevant candidate outranks an irrelevant one (ties count half);
coverage@k = share of the candidate columns that reach at least one user's top k.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

Metric = Callable[[np.ndarray, np.ndarray, int], float]


def _validate(scores: np.ndarray, relevant: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected a 2-d array (users, candidates), got {scores.ndim}-d")
    if relevant.shape != scores.shape:
        raise ValueError(f"relevant: shape {relevant.shape} differs from scores {scores.shape}")
    if relevant.dtype != bool:
        raise ValueError(f"relevant: expected a bool array, got {relevant.dtype}")
    if np.isnan(scores).any():
        raise ValueError("scores: NaN is not a score (use -inf for items not to rank)")
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    empty = ~relevant.any(axis=1)
    if empty.any():
        raise ValueError(
            f"relevant: {int(empty.sum())} users have no relevant item "
            f"(first at row {int(np.argmax(empty))}); leave them out of the evaluation"
        )
    return scores, relevant


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best scores, best first (ties: lower column first)."""
    k = min(k, scores.shape[1])
    # argpartition finds the k best without a full sort; then sort only those k.
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part.sort(axis=1)  # so that the stable sort below breaks ties by column
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


TIE_SEED = 0


def ranked_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """``top_k`` with ties broken in a fixed pseudo-random order per row instead of by column
    (the evaluation's ranking; serving keeps ``top_k``'s, which needs no randomness)."""
    order = np.random.default_rng(TIE_SEED).permuted(
        np.broadcast_to(np.arange(scores.shape[1]), scores.shape), axis=1
    )
    return np.take_along_axis(order, top_k(np.take_along_axis(scores, order, axis=1), k), axis=1)


def _hits(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """(users, k) bool: whether the item at each rank is relevant (and rankable at all)."""
    top = ranked_top_k(scores, k)
    rankable = np.isfinite(np.take_along_axis(scores, top, axis=1))
    return np.take_along_axis(relevant, top, axis=1) & rankable


def _precision(scores, relevant, k):
    return _hits(scores, relevant, k).sum(axis=1) / k


def _recall(scores, relevant, k):
    return _hits(scores, relevant, k).sum(axis=1) / relevant.sum(axis=1)


def _hit_rate(scores, relevant, k):
    return _hits(scores, relevant, k).any(axis=1).astype(np.float64)


def _mrr(scores, relevant, k):
    hits = _hits(scores, relevant, k)
    first = np.argmax(hits, axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def _ndcg(scores, relevant, k):
    hits = _hits(scores, relevant, k)
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal_hits = np.minimum(relevant.sum(axis=1), hits.shape[1])
    idcg = np.cumsum(discounts)[ideal_hits - 1]
    return dcg / idcg


def _map(scores, relevant, k):
    hits = _hits(scores, relevant, k)
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    return (precision_at * hits).sum(axis=1) / np.minimum(relevant.sum(axis=1), hits.shape[1])


def _auc(scores, relevant, k):
    del k
    values = np.empty(scores.shape[0])
    for row in range(scores.shape[0]):
        finite = np.isfinite(scores[row])
        positive = relevant[row] & finite
        n_pos, n_neg = int(positive.sum()), int((finite & ~relevant[row]).sum())
        if n_pos == 0 or n_neg == 0:
            # Every relevant item was excluded, or nothing else is rankable: chance level.
            values[row] = 0.5
            continue
        ranks = rankdata(scores[row][finite])  # average ranks: ties count half
        positive_ranks = ranks[positive[finite]].sum()
        values[row] = (positive_ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return values


def _coverage(scores, relevant, k):
    top = ranked_top_k(scores, k)
    shown = np.zeros(scores.shape[1], dtype=bool)
    shown[top[np.isfinite(np.take_along_axis(scores, top, axis=1))]] = True
    # One value for the whole population, repeated so that every metric returns per-user rows.
    return np.full(scores.shape[0], shown.mean())


_PER_USER: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "ndcg": _ndcg,
    "precision": _precision,
    "recall": _recall,
    "map": _map,
    "mrr": _mrr,
    "hit_rate": _hit_rate,
    "auc": _auc,
    "coverage": _coverage,
}
METRICS = tuple(_PER_USER)


def per_user(name: str, scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """The metric's value for each user (row)."""
    if name not in _PER_USER:
        raise ValueError(f"metric: unknown {name!r} (allowed: {', '.join(METRICS)})")
    scores, relevant = _validate(scores, relevant, k)
    return _PER_USER[name](scores, relevant, int(k))


def _mean_of(name: str) -> Metric:
    def metric(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
        return float(per_user(name, scores, relevant, k).mean())

    metric.__name__ = f"{name}_at_k"
    metric.__doc__ = f"Mean {name} at k over users; see the module docstring."
    return metric


ndcg_at_k = _mean_of("ndcg")
precision_at_k = _mean_of("precision")
recall_at_k = _mean_of("recall")
map_at_k = _mean_of("map")
mrr_at_k = _mean_of("mrr")
hit_rate_at_k = _mean_of("hit_rate")
auc = _mean_of("auc")
coverage_at_k = _mean_of("coverage")
