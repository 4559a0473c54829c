from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest

from recloop.sources.simulator import (
    TOPICS,
    WorldConfig,
    build_world,
    epsilon_greedy_propensities,
    generate_traffic,
)

SMALL = WorldConfig(users=80, items=60, days=4, seed=7)


@pytest.fixture(scope="module")
def world():
    return build_world(SMALL)


@pytest.fixture(scope="module")
def traffic(world):
    return [event for day in generate_traffic(world) for event in day]


def test_same_seed_same_world_and_log(world, traffic) -> None:
    again = build_world(SMALL)
    assert again.users == world.users and again.items == world.items
    assert [e.model_dump() for day in generate_traffic(again) for e in day] == [
        e.model_dump() for e in traffic
    ]
    other = build_world(replace(SMALL, seed=8))
    assert other.items != world.items


def test_config_round_trips_through_plain_data() -> None:
    assert WorldConfig.from_dict(SMALL.to_dict()) == SMALL


def test_click_probabilities_are_probabilities_with_position_bias(world) -> None:
    at = SMALL.start + timedelta(days=1)
    items = [item.item_id for item in world.items[:10]]
    for user in world.users[:20]:
        probabilities = world.click_probabilities(user.user_id, items, at, {"hour": 20})
        assert probabilities.shape == (10,)
        assert np.all((probabilities > 0) & (probabilities < 1))
    # The same item is less likely to be clicked lower down the slate.
    first = world.click_probabilities("u00001", items, at)[0]
    moved = world.click_probabilities("u00001", items[1:] + items[:1], at)[-1]
    assert moved < first


def test_context_changes_preferences(world) -> None:
    at = SMALL.start
    items = [item.item_id for item in world.items[:10]]
    phone = world.click_probabilities("u00002", items, at, {"device": "mobile", "hour": 2})
    desk = world.click_probabilities("u00002", items, at, {"device": "desktop", "hour": 14})
    assert not np.allclose(phone, desk)


def test_tastes_drift_and_newcomers_arrive(world) -> None:
    start, end = world.taste("u00003", SMALL.start), world.taste("u00003", world.end)
    assert np.abs(start - end).sum() > 0.1
    assert np.isclose(end.sum(), 1.0)
    late_users = [u for u in world.users if u.created_at > SMALL.start]
    late_items = [i for i in world.items if i.created_at > SMALL.start]
    assert late_users and late_items
    assert len(world.items_at(SMALL.start)) < len(world.items_at(world.end))


def test_item_text_carries_its_topics(world) -> None:
    for n, item in enumerate(world.items[:30]):
        main = TOPICS[int(np.argmax(world.item_topics[n]))]
        assert main.name in item.categories
        words = set(
            (item.title + " " + item.text).lower().replace(".", "").replace(",", "").split()
        )
        assert words & set(main.adjectives + main.nouns)


def test_traffic_is_a_valid_log(world, traffic) -> None:
    kinds = {event.event_type.value for event in traffic}
    assert kinds == {"impression", "click", "rating"}
    assert [e.ts for e in traffic] == sorted(e.ts for e in traffic)
    for event in traffic:
        if event.event_type.value == "impression":
            assert 0 < event.propensity <= 1
            assert 0 <= event.position < SMALL.slate_size
            assert set(event.context) == {"hour", "weekday", "device"}
    users = {user.user_id: user for user in world.users}
    assert all(users[event.user_id].created_at <= event.ts for event in traffic)


def test_epsilon_greedy_propensities_match_frequencies() -> None:
    rng = np.random.default_rng(0)
    candidates, epsilon, slots = list(range(12)), 0.3, 4
    greedy = candidates[:slots]
    counts = np.zeros((len(candidates), slots))
    draws = 20_000
    for _ in range(draws):
        shown = rng.choice(candidates, slots, replace=False) if rng.random() < epsilon else greedy
        for slot, item in enumerate(shown):
            counts[item, slot] += 1
    for item in candidates:
        expected = [
            epsilon_greedy_propensities(greedy, [item] * slots, len(candidates), epsilon)[k]
            for k in range(slots)
        ]
        observed = counts[item] / draws
        # 4.5 standard errors of a binomial frequency: fails by chance about once in 10^5 runs.
        tolerance = 4.5 * np.sqrt(np.array(expected) * (1 - np.array(expected)) / draws)
        assert np.all(np.abs(observed - expected) <= tolerance), (item, observed, expected)


def test_unknown_ids_are_named(world) -> None:
    with pytest.raises(KeyError, match="user_id"):
        world.taste("nobody", SMALL.start)
    with pytest.raises(KeyError, match="item_id"):
        world.utility("u00001", ["nothing"], SMALL.start)
