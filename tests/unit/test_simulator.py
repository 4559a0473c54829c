from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest

from recloop.sources.simulator import (
    TOPICS,
    WorldConfig,
    build_world,
    epsilon_greedy_slot_propensities,
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
        # The item's probability in every slot, the row the service logs with each impression.
        expected = epsilon_greedy_slot_propensities(greedy, [item], len(candidates), epsilon)[0]
        observed = counts[item] / draws
        # 4.5 standard errors of a binomial frequency: fails by chance about once in 10^5 runs.
        tolerance = 4.5 * np.sqrt(np.array(expected) * (1 - np.array(expected)) / draws)
        assert np.all(np.abs(observed - expected) <= tolerance), (item, observed, expected)


def test_unknown_ids_are_named(world) -> None:
    with pytest.raises(KeyError, match="user_id"):
        world.taste("nobody", SMALL.start)
    with pytest.raises(KeyError, match="item_id"):
        world.utility("u00001", ["nothing"], SMALL.start)


def test_a_movielens_world_takes_its_users_items_and_tastes_from_the_files(tmp_path) -> None:
    from datetime import UTC, datetime

    from tests.unit.test_movielens import ml100k_files, write

    # User 1 rated Toy Story (Animation, Children's, Comedy) 5 and GoldenEye 2; user 2 the
    # opposite: their tastes lean that way, and each finds their own film more clickable.
    ratings = "1\t1\t5\t881250949\n1\t2\t2\t881250950\n2\t2\t5\t891717742\n2\t1\t1\t891717743\n"
    folder = write(tmp_path / "ml", ml100k_files(ratings))
    start = datetime(2026, 1, 5, tzinfo=UTC)
    world = build_world(WorldConfig(movielens=str(folder), start=start, seed=3))
    assert [u.user_id for u in world.users] == ["1", "2"]
    assert [i.item_id for i in world.items] == ["1", "2"]
    assert world.users[1].occupation == "other" and world.items[0].title.startswith("Toy Story")
    assert world.topics == 6  # the genres the two films have
    np.testing.assert_allclose(world.item_topics.sum(axis=1), 1.0)
    np.testing.assert_allclose(world.taste_start.sum(axis=1), 1.0)
    assert all(u.created_at <= start and i.created_at <= start
               for u, i in zip(world.users, world.items, strict=True))  # fmt: skip
    at = start + timedelta(days=1)
    toy, golden = (world.click_probabilities(u, ["1", "2"], at) for u in ("1", "2"))
    assert toy[0] / toy[1] > golden[0] / golden[1]  # slot bias cancels out of the comparison
    assert world.rating("1", "1", at) >= world.rating("1", "2", at)
    # Deterministic in the seed and the files; traffic runs on it as on a synthetic world.
    again = build_world(WorldConfig(movielens=str(folder), start=start, seed=3))
    np.testing.assert_array_equal(again.user_devices, world.user_devices)
    events = [e for day in generate_traffic(replace(world, config=replace(
        world.config, days=1, slate_size=1))) for e in day]  # fmt: skip
    assert events and {e.user_id for e in events} <= {"1", "2"}


def test_the_movielens_world_on_ml100k_shifts_towards_genres_it_can_offer(ml100k) -> None:
    from datetime import UTC, datetime

    start = datetime(2026, 1, 5, tzinfo=UTC)
    shift = start + timedelta(days=14)
    world = build_world(WorldConfig(movielens=str(ml100k), start=start, shift_at=shift,
                                    shift_weight=0.9))  # fmt: skip
    assert (len(world.users), len(world.items), world.topics) == (943, 1682, 19)
    genres = sorted({g for item in world.items for g in item.categories})
    trend = [genres[t] for t in np.flatnonzero(world.trend)]
    assert "unknown" not in trend  # two films: too few to shift everyone towards
    shown = np.array([sum(g in item.categories for item in world.items) for g in trend])
    assert (shown >= 0.5 * len(world.items) / world.topics).all()
    # Users who liked a trend genre before the shift like it much more after it.
    before = world.taste("1", shift - timedelta(hours=1))
    after = world.taste("1", shift)
    assert (after[np.flatnonzero(world.trend)] > before[np.flatnonzero(world.trend)]).all()
