"""item_ctr: clicks over impressions, recency-weighted, checked by hand on a tiny log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import InteractionData, UserQuery
from training.models import create, load_model

NOW = pd.Timestamp("2026-01-10 12:00", tz="UTC")


def _data(positives: list[tuple[str, str, float]], shown: list[tuple[str, str, float]]):
    """Items a, b, c; (user, item, hours before NOW) for positives and impressions."""
    users = pd.DataFrame({"user_id": [f"u{n}" for n in range(6)], "age": 30, "gender": "F",
                          "occupation": "writer", "profile_text": None})  # fmt: skip
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["a", "b", "c"],
                          "text": ["a", "b", "c"], "categories": [["x"]] * 3})  # fmt: skip
    interactions = pd.DataFrame(
        [(u, i, NOW - pd.Timedelta(hours=h), 12, 0, "web") for u, i, h in positives],
        columns=["user_id", "item_id", "interacted_at", "hour", "weekday", "device"],
    )
    exposures = pd.DataFrame(
        [(u, i, NOW - pd.Timedelta(hours=h)) for u, i, h in shown],
        columns=["user_id", "item_id", "shown_at"],
    )
    return InteractionData(users, items, interactions, name="log", exposures=exposures)


# a: shown to four users, clicked by two; b: shown to two, clicked by both; c: shown to
# none, but u5 rated it (a positive from outside the service: it counts as no click).
SHOWN = [("u0", "a", 0), ("u1", "a", 0), ("u2", "a", 0), ("u3", "a", 0), ("u0", "b", 0),
         ("u1", "b", 0)]  # fmt: skip
POSITIVES = [("u0", "a", 0), ("u1", "a", 0), ("u0", "b", 0), ("u1", "b", 0), ("u5", "c", 0)]


def test_clicks_over_impressions_shrunk_to_the_overall_rate(tmp_path: Path) -> None:
    model = create("item_ctr", half_life_hours=None, prior=2.0).fit(_data(POSITIVES, SHOWN))
    rate = 4 / 6
    expected = np.log([(2 + 2 * rate) / (4 + 2), (2 + 2 * rate) / (2 + 2), 2 * rate / 2])
    np.testing.assert_allclose(model.scores, expected)
    # The same for every user, seen items left out as for any kind.
    top = model.recommend([UserQuery(user_id="u2")], k=3)[0]
    assert [item for item, _ in top] == ["b", "c", "a"]  # 0.83, 0.67, 0.56
    assert [item for item, _ in model.recommend([UserQuery(user_id="u0")], k=3)[0]] == ["c"]
    loaded = load_model(model.save(tmp_path / "item_ctr"))
    users = [UserQuery(user_id="u3"), UserQuery(history=("a",))]
    np.testing.assert_array_equal(loaded.score(users), model.score(users))


def test_recency_weighs_clicks_and_impressions_alike() -> None:
    """b's two impressions and clicks are a half life old: each weighs a half."""
    shown = [(u, i, 2.0 if i == "b" else 0.0) for u, i, _ in SHOWN]
    positives = [(u, i, 2.0 if i == "b" else 0.0) for u, i, _ in POSITIVES]
    model = create("item_ctr", half_life_hours=2.0, prior=2.0).fit(_data(positives, shown))
    rate = (2 + 2 * 0.5) / (4 + 2 * 0.5)
    np.testing.assert_allclose(
        model.scores[:2], np.log([(2 + 2 * rate) / 6, (1 + 2 * rate) / (1 + 2)])
    )


def test_a_held_out_click_takes_its_impression_with_it() -> None:
    """Without u1's click on b (held out), b has one click in one impression: the impression
    behind the held-out click is held out too, or b would look shown to u1 and not clicked,
    exactly where the test asks about it. Passed only as training, the click's impression
    stays (the caller said nothing is held out)."""
    data = _data(POSITIVES, SHOWN)
    train = data.with_interactions(data.interactions.drop(index=3),
                                   held_out=data.interactions.loc[[3]])  # fmt: skip
    assert len(train.exposures) == len(SHOWN) - 1
    assert not ((train.exposures["user_id"] == "u1") & (train.exposures["item_id"] == "b")).any()
    model = create("item_ctr", half_life_hours=None, prior=2.0).fit(train)
    rate = 3 / 5
    assert model.scores[1] == pytest.approx(np.log((1 + 2 * rate) / (1 + 2)))
    kept = data.with_interactions(data.interactions.drop(index=3))
    assert kept.exposures is data.exposures
    # New items and new users have never been shown, nor been shown anything.
    cold = data.with_interactions(data.interactions, new_items=["b"], new_users=["u3"])
    assert set(cold.exposures["item_id"]) == {"a"} and "u3" not in set(cold.exposures["user_id"])


def test_the_protocols_hold_out_the_impressions_of_what_they_hold_out() -> None:
    from training import protocols

    data = _data(POSITIVES, SHOWN)
    for name in ("P1", "P2", "P3a", "P3b", "P4", "recent"):
        split = protocols.split(data, name, recent_share=0.5)
        shown = set(zip(split.train.exposures["user_id"], split.train.exposures["item_id"],
                        strict=True))  # fmt: skip
        trained = set(zip(split.train.interactions["user_id"], split.train.interactions["item_id"],
                          strict=True))  # fmt: skip
        held = {(u, i) for u, i, _ in POSITIVES} - trained
        assert not shown & held, (name, shown & held)
        if name == "P2":
            assert not set(split.train.exposures["item_id"]) & set(split.candidates)


def test_impressions_after_the_newest_training_interaction_are_left_out() -> None:
    """A split by time holds out the newest clicks: the impressions of that time go too (here
    b shown twice more an hour after every positive), or b would look shown and not clicked."""
    later = [*SHOWN, ("u2", "b", -1.0), ("u3", "b", -1.0)]
    without, with_later = (
        create("item_ctr", half_life_hours=None, prior=2.0).fit(_data(POSITIVES, shown))
        for shown in (SHOWN, later)
    )
    np.testing.assert_array_equal(with_later.scores, without.scores)


def test_without_exposures_it_refuses_by_name() -> None:
    data = _data(POSITIVES, SHOWN)
    bare = InteractionData(data.users, data.items, data.interactions, name="ratings")
    with pytest.raises(ValueError, match="item_ctr: the training data hold no exposures"):
        create("item_ctr").fit(bare)
    with pytest.raises(ValueError, match="prior=0"):
        create("item_ctr", prior=0)
    with pytest.raises(ValueError, match=r"exposures: missing columns \['shown_at'\]"):
        InteractionData(data.users, data.items, data.interactions,
                        exposures=data.exposures.drop(columns="shown_at"))  # fmt: skip
