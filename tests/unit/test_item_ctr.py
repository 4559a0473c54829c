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


def test_a_held_out_click_stays_held_out() -> None:
    """A protocol's training part keeps the exposures whole, but a click counts only as a
    training interaction: without u1's click on b, b has one click in two impressions."""
    data = _data(POSITIVES, SHOWN)
    train = data.with_interactions(data.interactions.drop(index=3))
    assert train.exposures is data.exposures
    model = create("item_ctr", half_life_hours=None, prior=2.0).fit(train)
    rate = 3 / 6
    assert model.scores[1] == pytest.approx(np.log((1 + 2 * rate) / (2 + 2)))


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
