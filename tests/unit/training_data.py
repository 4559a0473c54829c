"""Small synthetic InteractionData for unit tests of the training package."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from recloop.settings import Settings
from training.data import InteractionData

COLUMNS = ["user_id", "item_id", "interacted_at", "hour", "weekday", "device"]


def from_rows(
    rows: list[tuple],
    items: int,
    users: list[str],
    attributes: Callable[[int], dict[str, Any]],
    name: str,
) -> InteractionData:
    """Interactions from (user, item, time, hour, weekday, device) rows; items ``i0..`` with
    two kinds of text (even: action, odd: drama); ``attributes(n)`` for the n-th user."""
    interactions = pd.DataFrame(rows, columns=COLUMNS)
    users_frame = pd.DataFrame(
        [{"user_id": user, **attributes(n), "profile_text": None} for n, user in enumerate(users)],
        columns=["user_id", "age", "gender", "occupation", "profile_text"],
    )
    items_frame = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(items)],
        "title": [f"Item {i}" for i in range(items)],
        "text": [("A quiet drama" if i % 2 else "A loud action film") + f" number {i}"
                 for i in range(items)],
        "categories": [["Drama"] if i % 2 else ["Action"] for i in range(items)],
    })  # fmt: skip
    return InteractionData(users_frame, items_frame, interactions, name=name)


def synthetic(
    users: int = 40, items: int = 30, per_user: int = 8, seed: int = 0
) -> InteractionData:
    """Two taste groups: even users like even items, odd users odd items."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    rows = []
    for u in range(users):
        liked = [i for i in range(items) if i % 2 == u % 2]
        for n, i in enumerate(rng.choice(liked, size=min(per_user, len(liked)), replace=False)):
            when = start + pd.Timedelta(hours=u * 24 + n)
            rows.append((f"u{u}", f"i{i}", when, when.hour, when.weekday(), "web"))
    return from_rows(
        rows, items, [f"u{u}" for u in range(users)],
        lambda u: {"age": 20 + u % 40, "gender": "F" if u % 2 else "M",
                   "occupation": "writer" if u % 2 else "engineer"},
        name="synthetic",
    )  # fmt: skip


def logged_window(settings: Settings, start: datetime | None = None) -> tuple:
    """A real (local) event log with four hours of uniformly random slates of three items for
    40 known users, who click only popularity's top 3 (fitted on the history before the
    window) at 0.5 x examination, written to ``settings``' log, and the training data with
    those clicks in it. Returns (settings, data, popularity's recipe, its true CTR as the
    service would serve it, with each user's earlier clicks left out, the window's start and
    end). ``start``: when the window begins (2026-03-01 by default); the
    slates are logged as the champion arm's, served by version 1, each impression with its
    propensity in every slot (what the position-based weights need)."""
    import uuid
    from datetime import UTC, timedelta

    import pandas as pd

    from recloop.contracts import Event
    from recloop.eventlog import open_event_log
    from tests.unit.training_data import synthetic
    from training.data import UserQuery
    from training.pipeline import fit_recipe, recipe

    history = synthetic()  # interactions from 2026-01-01 over about forty days
    start = start or datetime(2026, 3, 1, tzinfo=UTC)
    the_recipe = recipe("popularity", settings)
    before = fit_recipe(the_recipe, history, settings, show_progress=False)
    users = [f"u{n}" for n in range(40)]
    ranking = {u: [i for i, _ in before.recommend([UserQuery(u)], k=30)[0]] for u in users}
    target = {u: ranking[u][:3] for u in users}
    items = [f"i{n}" for n in range(30)]
    exam = [1.0, 0.6, 0.4]
    rng = np.random.default_rng(3)
    events, clicks, truths = [], [], []
    clicked: dict[str, list[str]] = {u: [] for u in users}
    for request in range(3000):
        user, at = users[request % 40], start + timedelta(seconds=4 * request)
        request_id = f"{request:032x}"  # fixed ids: the estimate's cross-fit folds hash them
        # The target as the service would serve it: popularity's ranking without the items
        # the user clicked earlier in the window (their fresh clicks, ope.greedy_slates). Only
        # the first three of the ranking are clickable, so its CTR falls as they are clicked.
        fresh = set(clicked[user][-20:])
        slate = [i for i in ranking[user] if i not in fresh][:3]
        truths.append(np.mean([0.5 * e * (i in target[user])
                               for e, i in zip(exam, slate, strict=True)]))  # fmt: skip
        for slot, item in enumerate(rng.choice(items, size=3, replace=False)):
            events.append(Event(
                event_id=uuid.UUID(int=len(events) + 1), ts=at, user_id=user, item_id=item,
                position=slot, event_type="impression", request_id=request_id, propensity=1 / 30,
                slot_propensities=[1 / 30] * 3, model_version="1", policy="uniform",
                context={"arm": "champion"}))  # fmt: skip
            # Users click only the target's items (at 0.5 x examination): its CTR is known.
            if item in target[user] and rng.random() < exam[slot] * 0.5:
                at_click = at + timedelta(seconds=1)
                events.append(Event(event_id=uuid.UUID(int=len(events) + 1), ts=at_click,
                                    user_id=user, item_id=item, event_type="click",
                                    request_id=request_id))  # fmt: skip
                clicks.append((user, item, pd.Timestamp(at_click), at_click.hour,
                               at_click.weekday(), "web"))  # fmt: skip
                clicked[user].append(item)
    log = open_event_log(settings)
    try:
        log.append(events)
    finally:
        log.close()
    truth = float(np.mean(truths))
    window_clicks = pd.DataFrame(clicks, columns=history.interactions.columns)
    data = history.with_interactions(pd.concat([history.interactions, window_clicks]))
    return settings, data, the_recipe, truth, start, start + timedelta(hours=4)
