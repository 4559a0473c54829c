"""The evaluation protocols hold out exactly what DESIGN.md says, deterministically."""

from __future__ import annotations

import pytest

from tests.unit.training_data import synthetic
from training import protocols


@pytest.fixture(scope="module")
def data():
    return synthetic()


def test_p1_holds_out_a_quarter_of_each_user(data) -> None:
    split = protocols.split(data, "P1")
    train = split.train.interactions
    assert len(split) == data.interactions["user_id"].nunique()
    for query, relevant, seen in zip(split.queries, split.relevant, split.exclude, strict=True):
        assert not (relevant & seen), "a held-out item is also in training"
        assert len(relevant) == 2 and len(seen) == 6  # 8 per user: 75 / 25
        assert set(train[train["user_id"] == query.user_id]["item_id"]) == seen


def test_splits_are_deterministic_for_a_seed(data) -> None:
    one, two = protocols.split(data, "P1", 42), protocols.split(data, "P1", 42)
    other = protocols.split(data, "P1", 7)
    assert one.relevant == two.relevant
    assert one.relevant != other.relevant


def test_p2_new_items_have_no_training_interactions(data) -> None:
    split = protocols.split(data, "P2")
    cold = set(split.candidates)
    assert len(cold) == round(0.2 * data.interactions["item_id"].nunique())
    assert not (set(split.train.interactions["item_id"]) & cold)
    assert all(relevant <= cold for relevant in split.relevant)
    assert set(split.train.items["item_id"]) >= cold, "new items stay in the catalogue"


def test_p3_new_users_leave_training(data) -> None:
    a, b = protocols.split(data, "P3a"), protocols.split(data, "P3b")
    train_users = set(a.train.interactions["user_id"])
    assert all(q.user_id is None and q.history == () and q.attributes for q in a.queries)
    assert len(a) == round(0.2 * data.interactions["user_id"].nunique())
    for query, relevant in zip(b.queries, b.relevant, strict=True):
        assert len(query.history) == 3 and not (set(query.history) & relevant)
    # The revealed items are each user's first three by time.
    frame = data.interactions.sort_values("interacted_at")
    first = {
        tuple(group["item_id"][:3]) for _, group in frame.groupby("user_id")
        if group["user_id"].iloc[0] not in train_users
    }  # fmt: skip
    assert {q.history for q in b.queries} == first


def test_p4_holds_out_each_users_last_interaction(data) -> None:
    split = protocols.split(data, "P4")
    last = data.interactions.sort_values("interacted_at").groupby("user_id")["item_id"].last()
    for query, relevant in zip(split.queries, split.relevant, strict=True):
        assert relevant == {last[query.user_id]}
        assert query.context and "hour" in query.context


def test_unknown_protocol_names_the_allowed() -> None:
    with pytest.raises(ValueError, match="allowed: P1, P2, P3a, P3b, P4, recent"):
        protocols.split(synthetic(), "P5")


def test_recent_holds_out_a_quarter_of_the_newest_tenth(data) -> None:
    split = protocols.split(data, "recent", recent_share=0.1)
    frame = data.interactions
    window = frame.nlargest(round(0.1 * len(frame)), "interacted_at")
    held = len(frame) - len(split.train.interactions)
    assert held == round(0.25 * len(window))  # a quarter of the window left training
    kept = frame.merge(split.train.interactions, how="left", indicator=True)
    out = kept[kept["_merge"] == "left_only"]
    assert (out["interacted_at"] >= window["interacted_at"].min()).all()  # only from the window
    assert len(split.train.interactions.merge(window)) == len(window) - held  # the rest trains
    for query, relevant, seen in zip(split.queries, split.relevant, split.exclude, strict=True):
        assert relevant <= set(out[out["user_id"] == query.user_id]["item_id"])
        assert not (relevant & seen)
    assert split.relevant == protocols.split(data, "recent", recent_share=0.1).relevant
    with pytest.raises(ValueError, match="recent_share"):
        protocols.split(data, "recent", recent_share=1.5)


def test_validation_holds_out_a_tenth_of_users_with_five_or_more(data) -> None:
    split = protocols.validation(data, 0.1, seed=3)
    counts = data.interactions.groupby("user_id").size()
    train = split.train.interactions.groupby("user_id").size()
    held = {q.user_id: len(r) for q, r in zip(split.queries, split.relevant, strict=True)}
    for user, total in counts.items():
        expected = max(1, int(total * 0.1)) if total >= 5 else 0
        assert held.get(user, 0) == expected, user
        assert train.get(user, 0) == total - expected
    for relevant, exclude in zip(split.relevant, split.exclude, strict=True):
        assert not relevant & exclude
    assert protocols.validation(data, 0.1, seed=3).relevant == split.relevant
