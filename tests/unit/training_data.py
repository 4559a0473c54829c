"""A small synthetic InteractionData for unit tests of the training package."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.data import InteractionData


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
    interactions = pd.DataFrame(
        rows, columns=["user_id", "item_id", "interacted_at", "hour", "weekday", "device"]
    )
    users_frame = pd.DataFrame({
        "user_id": [f"u{u}" for u in range(users)],
        "age": [20 + u % 40 for u in range(users)],
        "gender": ["F" if u % 2 else "M" for u in range(users)],
        "occupation": ["writer" if u % 2 else "engineer" for u in range(users)],
        "profile_text": [None] * users,
    })  # fmt: skip
    items_frame = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(items)],
        "title": [f"Item {i}" for i in range(items)],
        "text": [("A quiet drama" if i % 2 else "A loud action film") + f" number {i}"
                 for i in range(items)],
        "categories": [["Drama"] if i % 2 else ["Action"] for i in range(items)],
    })  # fmt: skip
    return InteractionData(users_frame, items_frame, interactions, name="synthetic")
