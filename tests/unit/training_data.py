"""Small synthetic InteractionData for unit tests of the training package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

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
