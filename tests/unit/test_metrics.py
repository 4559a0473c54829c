"""Ranking metrics: perfect rankings score 1, no hits score 0, and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics

NEG = -np.inf


def test_perfect_ranking_scores_one() -> None:
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    relevant = np.array([[True, True, False, False]])
    for metric in (metrics.ndcg_at_k, metrics.map_at_k, metrics.mrr_at_k, metrics.hit_rate_at_k,
                   metrics.recall_at_k, metrics.auc):  # fmt: skip
        assert metric(scores, relevant, 2) == pytest.approx(1.0), metric.__name__
    assert metrics.precision_at_k(scores, relevant, 2) == pytest.approx(1.0)


def test_no_hits_score_zero() -> None:
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    relevant = np.array([[False, False, False, True]])
    for metric in (metrics.ndcg_at_k, metrics.map_at_k, metrics.mrr_at_k, metrics.hit_rate_at_k,
                   metrics.recall_at_k, metrics.precision_at_k):  # fmt: skip
        assert metric(scores, relevant, 2) == 0.0, metric.__name__
    assert metrics.auc(scores, relevant, 2) == 0.0  # the one relevant item ranks last


def test_worked_example() -> None:
    # Ranking: items 0..4 in score order; relevant: items 1 and 3 (plus item 5, unranked).
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, NEG]])
    relevant = np.array([[False, True, False, True, False, True]])
    k = 4
    # Hits at ranks 2 and 4.
    assert metrics.precision_at_k(scores, relevant, k) == pytest.approx(2 / 4)
    assert metrics.recall_at_k(scores, relevant, k) == pytest.approx(2 / 3)
    assert metrics.hit_rate_at_k(scores, relevant, k) == 1.0
    assert metrics.mrr_at_k(scores, relevant, k) == pytest.approx(1 / 2)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg_at_k(scores, relevant, k) == pytest.approx(dcg / idcg)
    assert metrics.map_at_k(scores, relevant, k) == pytest.approx((1 / 2 + 2 / 4) / 3)
    # AUC over the rankable items (positives at ranks 2 and 4 of 5): item 1 outranks negatives
    # 2 and 4, item 3 outranks negative 4: 3 pairs won of 2 x 3.
    assert metrics.auc(scores, relevant, k) == pytest.approx(3 / 6)
    assert metrics.coverage_at_k(scores, relevant, 2) == pytest.approx(2 / 6)


def test_mean_over_users() -> None:
    scores = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 2.0]])
    relevant = np.array([[True, False, False], [False, True, False]])
    assert metrics.per_user("hit_rate", scores, relevant, 1).tolist() == [1.0, 0.0]
    assert metrics.precision_at_k(scores, relevant, 1) == 0.5


def test_ties_break_in_a_fixed_random_order_not_by_column() -> None:
    """A model that scores every candidate the same ranks like a random ranking: over many
    users its NDCG is a random ranking's, whether the relevant item is listed first or last,
    and the same scores give the same values every time (paired comparisons stay paired)."""
    users, items = 4000, 20
    tied = np.zeros((users, items))
    first, last = np.zeros((users, items), dtype=bool), np.zeros((users, items), dtype=bool)
    first[:, 0], last[:, -1] = True, True
    # One relevant item among 20 in a random order: E[1 / log2(rank + 1)] over the top 10.
    expected = np.mean([1 / np.log2(r + 2) for r in range(10)]) * 10 / items
    for relevant in (first, last):
        assert metrics.ndcg_at_k(tied, relevant, 10) == pytest.approx(expected, rel=0.05)
    np.testing.assert_array_equal(metrics.per_user("ndcg", tied, first, 10),
                                  metrics.per_user("ndcg", tied, first, 10))  # fmt: skip
    # Strict order still decides, and -inf stays out.
    ordered = np.tile(np.arange(items, dtype=float), (users, 1))
    ordered[:, -2] = -np.inf
    assert metrics.hit_rate_at_k(ordered, last, 1) == 1.0


def test_auc_counts_ties_half() -> None:
    scores = np.array([[1.0, 1.0, 1.0, 1.0]])
    relevant = np.array([[True, False, True, False]])
    assert metrics.auc(scores, relevant, 10) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("scores", "relevant", "k", "message"),
    [
        (np.zeros(3), np.ones(3, dtype=bool), 1, "2-d"),
        (np.zeros((1, 3)), np.ones((1, 2), dtype=bool), 1, "shape"),
        (np.zeros((1, 3)), np.ones((1, 3)), 1, "bool"),
        (np.full((1, 3), np.nan), np.ones((1, 3), dtype=bool), 1, "NaN"),
        (np.zeros((1, 3)), np.ones((1, 3), dtype=bool), 0, "k: expected a positive"),
        (np.zeros((2, 3)), np.array([[True, False, False], [False] * 3]), 1, "no relevant"),
    ],
)
def test_bad_input_is_named(scores, relevant, k, message) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.ndcg_at_k(scores, relevant, k)


def test_unknown_metric_lists_the_allowed() -> None:
    with pytest.raises(ValueError, match="allowed: ndcg"):
        metrics.per_user("nDCG", np.zeros((1, 2)), np.ones((1, 2), dtype=bool), 1)
