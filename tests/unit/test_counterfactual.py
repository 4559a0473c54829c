"""The demo's replay of a version on live requests (recloop.counterfactual), checked by hand
against the world's click model on a small world and a popularity model."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recloop import counterfactual
from recloop.counterfactual import LiveRequest, paired_difference, replay
from recloop.sources.simulator import WorldConfig, build_world
from training.data import InteractionData
from training.models.popularity import Popularity

AT = datetime(2026, 1, 5, 20, tzinfo=UTC)
CONTEXT = {"hour": 20, "weekday": 0, "device": "web"}


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(users=20, items=30, days=4, seed=3))


@pytest.fixture(scope="module")
def model(world):
    """Popularity over the world's items: item n has 30 - n interactions (i00000 most
    popular), and user u00000 has seen i00000 and i00001."""
    item_ids = [item.item_id for item in world.items]
    rows = [("u00001", item, pd.Timestamp("2026-01-01", tz="UTC"), 0, 3, "web")
            for n, item in enumerate(item_ids) for _ in range(30 - n)]  # fmt: skip
    rows += [("u00000", item_ids[n], pd.Timestamp("2026-01-02", tz="UTC"), 0, 4, "web")
             for n in (0, 1)]  # fmt: skip
    interactions = pd.DataFrame(
        rows, columns=["user_id", "item_id", "interacted_at", "hour", "weekday", "device"]
    )
    users = pd.DataFrame({"user_id": ["u00000", "u00001"], "age": [30, 40],
                          "gender": ["F", "M"], "occupation": ["writer", "engineer"],
                          "profile_text": [None, None]})  # fmt: skip
    items = pd.DataFrame({"item_id": item_ids, "title": item_ids, "text": item_ids,
                          "categories": [["Drama"]] * len(item_ids)})  # fmt: skip
    return Popularity().fit(InteractionData(users, items, interactions, name="replay"))


def greedy(*args, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """replay's greedy figures: (expected clicks, slate lengths)."""
    replayed = replay(*args, **kwargs)
    assert replayed.best is None and replayed.random is None  # not asked for
    return replayed.expected, replayed.shown


def references(*args, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """replay's references: (best slate's, random slate's expected clicks), and the greedy
    figures the same call returns agree with a call without references."""
    replayed = replay(*args, **kwargs, references=True)
    expected, shown = greedy(*args, **kwargs)
    assert np.array_equal(replayed.expected, expected) and np.array_equal(replayed.shown, shown)
    return replayed.best, replayed.random


def truth(world, user_id: str, items: list[str]) -> float:
    return float(world.click_probabilities(user_id, items, AT, CONTEXT).sum())


def test_a_known_users_slate_leaves_out_what_they_saw(world, model) -> None:
    ids = [item.item_id for item in world.items]
    request = LiveRequest(0, 0, "u00000", AT, CONTEXT, clicked=())
    expected, shown = greedy(model, world, [request], k=5, fresh_clicks=20)
    assert shown.tolist() == [5]
    assert expected[0] == pytest.approx(truth(world, "u00000", ids[2:7]))


def test_live_clicks_fold_in_in_request_order(world, model) -> None:
    """A user the model never saw: popularity's top 5 first; after clicking the top item, the
    next slate leaves it out; requests passed out of order are answered in order and their
    figures come back in the order given."""
    ids = [item.item_id for item in world.items]
    first = LiveRequest(0, 1, "u00005", AT, CONTEXT, clicked=(ids[0],))
    second = LiveRequest(0, 2, "u00005", AT, CONTEXT, clicked=())
    expected, shown = greedy(model, world, [second, first], k=5, fresh_clicks=20)
    assert expected.tolist() == pytest.approx(
        [truth(world, "u00005", ids[1:6]), truth(world, "u00005", ids[0:5])]
    )
    assert shown.tolist() == [5, 5]
    # Clicks of earlier hours count too, and only the newest fresh_clicks of them.
    later = LiveRequest(1, 0, "u00005", AT, CONTEXT, clicked=())
    expected, _ = greedy(model, world, [later], k=5, fresh_clicks=20, earlier=[first, second])
    assert expected[0] == pytest.approx(truth(world, "u00005", ids[1:6]))
    clicks = LiveRequest(0, 3, "u00005", AT, CONTEXT, clicked=(ids[1],))
    expected, _ = greedy(model, world, [later], k=5, fresh_clicks=1, earlier=[first, clicks])
    # Only i00001, the newest click, is left out.
    assert expected[0] == pytest.approx(truth(world, "u00005", [ids[0], *ids[2:6]]))


def test_batches_change_nothing(world, model, monkeypatch) -> None:
    requests = [LiveRequest(0, n, f"u{n % 4:05d}", AT, CONTEXT, clicked=()) for n in range(7)]
    whole = greedy(model, world, requests, k=5, fresh_clicks=20)
    monkeypatch.setattr(counterfactual, "BATCH", 2)
    batched = greedy(model, world, requests, k=5, fresh_clicks=20)
    assert np.array_equal(whole[0], batched[0]) and np.array_equal(whole[1], batched[1])


def test_the_best_and_a_random_slate_of_what_the_model_could_show(world, model) -> None:
    """u00000 has seen i00000 and i00001: the best 5-slate is the 5 most attractive of the
    other 28, most attractive first (it beats every other order of them, and greedy); a
    random one's expected clicks are the mean attractiveness in every slot, which a Monte
    Carlo over random slates agrees with; a stranger with live clicks has those left out
    too; batches change nothing."""
    ids = [item.item_id for item in world.items]
    request = LiveRequest(0, 0, "u00000", AT, CONTEXT, clicked=())
    best, uniform = references(model, world, [request], k=5, fresh_clicks=20)
    attractive = world.attractiveness("u00000", ids[2:], AT, CONTEXT)
    chosen = [ids[2:][i] for i in np.argsort(-attractive)[:5]]
    assert best[0] == pytest.approx(truth(world, "u00000", chosen))
    assert best[0] == pytest.approx(float(world.examination(5) @ -np.sort(-attractive)[:5]))
    assert best[0] > truth(world, "u00000", chosen[::-1])
    greedy_clicks, _ = greedy(model, world, [request], k=5, fresh_clicks=20)
    assert best[0] >= greedy_clicks[0] and best[0] > uniform[0]
    rng = np.random.default_rng(0)
    draws = [truth(world, "u00000", list(rng.choice(ids[2:], 5, replace=False)))
             for _ in range(4000)]  # fmt: skip
    assert uniform[0] == pytest.approx(np.mean(draws), abs=4 * np.std(draws) / np.sqrt(4000))
    assert uniform[0] == pytest.approx(world.examination(5).sum() * attractive.mean())
    first = LiveRequest(0, 1, "u00005", AT, CONTEXT, clicked=(chosen[0],))
    second = LiveRequest(0, 2, "u00005", AT, CONTEXT, clicked=())
    stranger = world.attractiveness("u00005", ids, AT, CONTEXT)
    left = np.array([i != chosen[0] for i in ids])
    after, _ = references(model, world, [second], k=5, fresh_clicks=20, earlier=[first])
    assert after[0] == pytest.approx(float(world.examination(5) @ -np.sort(-stranger[left])[:5]))
    requests = [LiveRequest(0, n, f"u{n % 4:05d}", AT, CONTEXT, clicked=()) for n in range(7)]
    whole = references(model, world, requests, k=5, fresh_clicks=20)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(counterfactual, "BATCH", 2)
        batched = references(model, world, requests, k=5, fresh_clicks=20)
    assert np.array_equal(whole[0], batched[0]) and np.array_equal(whole[1], batched[1])


def test_paired_difference_is_a_t_interval_over_requests() -> None:
    a = np.array([3.0, 2.0, 4.0, 1.0, 2.0])
    b = np.array([1.0, 2.0, 1.0, 1.0, 0.0])
    gain = paired_difference(a, b, slots=10, alpha=0.05)
    difference = (a - b) / 10
    half = stats.t.ppf(0.975, len(a) - 1) * difference.std(ddof=1) / np.sqrt(len(a))
    assert gain["value"] == pytest.approx(0.14)  # (2 + 0 + 3 + 0 + 2) / 5 / 10
    assert (gain["low"], gain["high"]) == pytest.approx((0.14 - half, 0.14 + half))
    assert gain["requests"] == 5


def test_the_replay_and_the_service_share_one_query_and_one_scoring(model) -> None:
    """serving.engine's functions, which /recommend and the replay both call: a known user's
    history then fresh clicks (oldest first), a clicked stranger, popularity for anyone else."""
    from serving.engine import slate_scores, user_query

    query, served_by = user_query(model, "u00000", ["i00005", "i00001"], CONTEXT)
    assert served_by == "history" and query.history == ("i00000", "i00001", "i00005")
    query_new, served_new = user_query(model, "u09999", ["i00007", "i00003"], CONTEXT)
    assert served_new == "fresh_clicks" and query_new.history == ("i00003", "i00007")
    assert user_query(model, "u09999", [], CONTEXT) is None
    scores = slate_scores(model, [query, None], exclude_seen=True)
    seen = [model.item_index[i] for i in query.history]
    assert np.isneginf(scores[0, seen]).all() and np.isfinite(np.delete(scores[0], seen)).all()
    np.testing.assert_allclose(scores[1], np.log1p(model.popularity))
    kept = slate_scores(model, [query], exclude_seen=False)
    assert np.isfinite(kept).all()
