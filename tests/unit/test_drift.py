"""Feature drift counts requesters, not requests (monitoring.drift's module note)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from monitoring import drift

OCCUPATIONS = [f"occupation-{n}" for n in range(21)]


def _users(rng: np.random.Generator, count: int = 3000) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [f"u{n}" for n in range(count)],
        "age_group": rng.choice(["18-24", "25-34", "35-44", "45+"], count),
        "gender": rng.choice(["F", "M"], count),
        "occupation": rng.choice(OCCUPATIONS, count, p=np.r_[[0.2], [0.04] * 20]),
    })  # fmt: skip


def _requests(rng: np.random.Generator, user_ids: np.ndarray, each: int, tag: str) -> pd.DataFrame:
    """``each`` requests per user, each user on one device throughout."""
    devices = rng.choice(["mobile", "desktop", "tv"], len(user_ids), p=[0.6, 0.35, 0.05])
    return pd.DataFrame({
        "request_id": [f"{tag}{n}" for n in range(len(user_ids) * each)],
        "user_id": np.repeat(user_ids, each),
        "device": np.repeat(devices, each),
    })  # fmt: skip


def test_users_asking_several_times_are_not_a_drift() -> None:
    """Hours drawn from the week's own population, 100 users asking 5 times each: counted per
    request, 5 of these 20 hours raised an alarm; counted per requester, none may (the test's
    level is 5%, Bonferroni-divided over the four fields)."""
    fired = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        users = _users(rng)
        week = _requests(rng, users["user_id"].to_numpy(), 5, "w")
        asking = rng.choice(users["user_id"].to_numpy(), 100, replace=False)
        hour = _requests(rng, asking, 5, "h")
        fired += drift.feature_drift(hour, week, 0.25, 100, users=users)
    assert len(fired) <= 1, [alarm.detail for alarm in fired]


def test_a_different_crowd_asking_several_times_is_still_a_drift() -> None:
    rng = np.random.default_rng(0)
    users = _users(rng)
    week = _requests(rng, users["user_id"].to_numpy()[:2800], 5, "w")
    newcomers = users["user_id"].to_numpy()[2800:2950]
    hour = _requests(rng, newcomers, 5, "h")
    artists = users.assign(occupation=np.where(users.index >= 2800, "artist", users.occupation))
    alarms = drift.feature_drift(hour, week, 0.25, 100, users=artists)
    assert [alarm.subject for alarm in alarms] == ["user occupation"]


def test_too_few_requesters_are_not_tested() -> None:
    """500 requests from 50 users: enough requests, too few requesters to judge a field by."""
    rng = np.random.default_rng(1)
    users = _users(rng)
    week = _requests(rng, users["user_id"].to_numpy(), 5, "w")
    hour = _requests(rng, users["user_id"].to_numpy()[:50], 10, "h").assign(device="tv")
    assert drift.feature_drift(hour, week, 0.25, 100, users=users) == []


def test_requesters_count_each_user_once_per_value() -> None:
    requests = pd.DataFrame({"request_id": ["a", "b", "c", "d"], "user_id": ["1", "1", "1", "2"],
                             "device": ["tv", "tv", "mobile", "tv"]})  # fmt: skip
    assert drift.requesters(requests, "device").to_dict() == {"tv": 2, "mobile": 1}
    assert drift.requesters(requests.drop(columns="user_id"), "device").to_dict() == {
        "tv": 3,
        "mobile": 1,
    }
