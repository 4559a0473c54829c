"""The evaluation protocols P1-P4 of DESIGN.md, implemented once.

Each protocol turns an ``InteractionData`` into a ``Split``: the interactions a model may
train on, and evaluation cases (who to rank for, what they may be shown, what they liked).
Splits are deterministic for a seed. The benchmarks, the ``recloop evaluate`` command and the
promotion gate all use these functions, so a figure in RESULTS.md and a gate decision mean
the same thing.

| id  | what is held out                                              | candidates               |
| P1  | per user, a random 25% of their interactions                  | items not in user's train |
| P2  | every interaction of a random 20% of items (new items)        | only those new items     |
| P3a | 20% of users entirely; only their attributes are known        | all items                |
| P3b | the same users; their first 3 interactions by time are known  | all items but those 3    |
| P4  | each user's last interaction by time                          | items not in user's train |
| recent | a random 25% of the newest 10% of interactions by time     | items not in train |

``recent`` is not one of DESIGN.md's: it is the closed loop's own. After a sudden change of
taste the history no longer says what users want, and P1, drawn from the whole history, keeps
rewarding the model that knows the past best; ``recent`` asks what the newest interactions say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from training.data import InteractionData, UserQuery

PROTOCOLS = ("P1", "P2", "P3a", "P3b", "P4", "recent")
TRAIN_SHARE = 0.75  # P1
COLD_ITEM_SHARE = 0.2  # P2
COLD_USER_SHARE = 0.2  # P3
REVEALED = 3  # P3b
RECENT_SHARE = 0.1  # recent: the newest share of interactions (training.recent_share)
# Metrics each protocol reports (DESIGN.md); ndcg@10 is the one the gate compares.
PROTOCOL_METRICS: dict[str, tuple[str, ...]] = {
    "P1": ("ndcg", "precision", "recall", "map", "mrr", "hit_rate", "coverage"),
    "P2": ("auc", "ndcg", "recall", "hit_rate"),
    "P3a": ("ndcg", "precision", "recall", "hit_rate"),
    "P3b": ("ndcg", "precision", "recall", "hit_rate"),
    "P4": ("ndcg", "hit_rate", "mrr", "auc"),
    "recent": ("ndcg", "precision", "recall", "map", "mrr", "hit_rate", "coverage"),
}


@dataclass
class Split:
    """A protocol's training data and its evaluation cases.

    ``queries[i]`` is the i-th evaluated user as a model sees them; ``relevant[i]`` the item
    ids they interacted with in the held-out part; ``exclude[i]`` items never to rank for
    them (their known history); ``candidates`` limits ranking to a set of items (P2), None
    meaning the whole catalogue.
    """

    protocol: str
    train: InteractionData
    queries: list[UserQuery]
    relevant: list[frozenset[str]]
    exclude: list[frozenset[str]]
    candidates: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.queries)


def split(
    data: InteractionData, protocol: str, seed: int = 42, *, recent_share: float = RECENT_SHARE
) -> Split:
    """The protocol's split of ``data`` for a seed (42 is DESIGN.md's)."""
    makers = {"P1": p1, "P2": p2, "P3a": p3a, "P3b": p3b, "P4": p4}
    if protocol == "recent":
        return recent(data, seed, share=recent_share)
    if protocol not in makers:
        raise ValueError(f"protocol: unknown {protocol!r} (allowed: {', '.join(PROTOCOLS)})")
    return makers[protocol](data, seed)


def _sorted(interactions: pd.DataFrame) -> pd.DataFrame:
    # A total order, so that "first" and "last" by time do not depend on the input order.
    return interactions.sort_values(["user_id", "interacted_at", "item_id"], kind="stable")


def _by_user(interactions: pd.DataFrame) -> dict[str, frozenset[str]]:
    return {
        user: frozenset(group)
        for user, group in interactions.groupby("user_id", sort=True)["item_id"]
    }


def _known_user_split(
    protocol: str, data: InteractionData, train: pd.DataFrame, test: pd.DataFrame, **info: Any
) -> Split:
    seen = _by_user(train)
    held = _by_user(test)
    users = [user for user in sorted(held) if user in seen]
    return Split(
        protocol=protocol,
        train=data.with_interactions(train, held_out=test),
        queries=[UserQuery(user_id=user) for user in users],
        relevant=[held[user] for user in users],
        exclude=[seen[user] for user in users],
        info={"train_interactions": len(train), "test_interactions": len(test), **info},
    )


def p1(data: InteractionData, seed: int = 42) -> Split:
    """Per-user stratified random split 75/25 (as microsoft/recommenders' stratified split)."""
    rng = np.random.default_rng(seed)
    frame = _sorted(data.interactions)
    is_train = np.zeros(len(frame), dtype=bool)
    for positions in frame.groupby("user_id", sort=True).indices.values():
        order = rng.permutation(positions)
        is_train[order[: round(TRAIN_SHARE * len(order))]] = True
    return _known_user_split("P1", data, frame[is_train], frame[~is_train])


def validation(data: InteractionData, share: float = 0.1, seed: int = 42) -> Split:
    """P1's kind of split with a smaller held-out ``share`` of each user's interactions (users
    with at least 5), for tuning a model's hyperparameters inside its own training data; its
    queries are empty when no user has enough interactions to hold any out."""
    rng = np.random.default_rng(seed)
    frame = _sorted(data.interactions)
    is_valid = np.zeros(len(frame), dtype=bool)
    for positions in frame.groupby("user_id", sort=True).indices.values():
        if len(positions) >= 5:
            held = rng.choice(positions, max(1, int(len(positions) * share)), replace=False)
            is_valid[held] = True
    return _known_user_split("validation", data, frame[~is_valid], frame[is_valid])


def p2(data: InteractionData, seed: int = 42) -> Split:
    """New items: 20% of the items that have interactions lose all of them from training;
    each user ranks only those items."""
    rng = np.random.default_rng(seed)
    frame = _sorted(data.interactions)
    items = np.array(sorted(frame["item_id"].unique()))
    cold = set(rng.choice(items, size=round(COLD_ITEM_SHARE * len(items)), replace=False))
    is_cold = frame["item_id"].isin(cold).to_numpy()
    train, test = frame[~is_cold], frame[is_cold]
    seen = _by_user(train)
    held = _by_user(test)
    users = sorted(held)
    return Split(
        protocol="P2",
        train=data.with_interactions(train, new_items=cold),
        queries=[UserQuery(user_id=user) for user in users],
        relevant=[held[user] for user in users],
        exclude=[seen.get(user, frozenset()) for user in users],
        candidates=sorted(cold),
        info={"cold_items": len(cold), "train_interactions": len(train)},
    )


def _cold_users(data: InteractionData, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, set[str]]:
    rng = np.random.default_rng(seed)
    frame = _sorted(data.interactions)
    users = np.array(sorted(frame["user_id"].unique()))
    cold = set(rng.choice(users, size=round(COLD_USER_SHARE * len(users)), replace=False))
    is_cold = frame["user_id"].isin(cold).to_numpy()
    return frame[~is_cold], frame[is_cold], cold


def p3a(data: InteractionData, seed: int = 42) -> Split:
    """New users, attributes only: 20% of users leave training; rank all items for them from
    their attributes (and profile text where the data has it)."""
    train, test, cold = _cold_users(data, seed)
    attributes, texts = data.user_attributes(), data.profile_texts()
    held = _by_user(test)
    users = sorted(held)
    return Split(
        protocol="P3a",
        train=data.with_interactions(train, new_users=cold),
        # The user id is withheld on purpose: a new user is described, not looked up.
        queries=[
            UserQuery(history=(), attributes=attributes.get(u, {}), profile_text=texts.get(u))
            for u in users
        ],
        relevant=[held[user] for user in users],
        exclude=[frozenset()] * len(users),
        info={"cold_users": len(users), "train_interactions": len(train)},
    )


def p3b(data: InteractionData, seed: int = 42) -> Split:
    """New users with their first three interactions by time revealed; the rest is held out."""
    train, test, cold = _cold_users(data, seed)
    attributes, texts = data.user_attributes(), data.profile_texts()
    queries, relevant, exclude = [], [], []
    for user, group in test.groupby("user_id", sort=True):
        items = list(group["item_id"])  # already in time order
        first, rest = items[:REVEALED], frozenset(items[REVEALED:])
        if not rest:
            continue
        queries.append(
            UserQuery(
                history=tuple(first),
                attributes=attributes.get(user, {}),
                profile_text=texts.get(user),
                context=_context(group.iloc[REVEALED]),
            )
        )
        relevant.append(rest)
        exclude.append(frozenset(first))
    return Split(
        protocol="P3b",
        train=data.with_interactions(train, new_users=cold),
        queries=queries,
        relevant=relevant,
        exclude=exclude,
        info={"cold_users": len(queries), "train_interactions": len(train)},
    )


def _context(row: pd.Series) -> dict[str, Any]:
    return {"hour": int(row["hour"]), "weekday": int(row["weekday"]), "device": row["device"]}


def p4(data: InteractionData, seed: int = 42) -> Split:
    """Leave the last interaction out: each user's latest interaction by time is the test."""
    del seed  # deterministic by time order; the signature matches the other protocols
    frame = _sorted(data.interactions)
    counts = frame.groupby("user_id", sort=True)["item_id"].transform("size")
    is_last = ~frame["user_id"].duplicated(keep="last").to_numpy() & (counts > 1).to_numpy()
    split_ = _known_user_split("P4", data, frame[~is_last], frame[is_last])
    # The request context of the held-out interaction is known at request time.
    last = frame[is_last].set_index("user_id")
    split_.queries = [
        UserQuery(user_id=q.user_id, context=_context(last.loc[q.user_id])) for q in split_.queries
    ]
    return split_


def recent(data: InteractionData, seed: int = 42, share: float = RECENT_SHARE) -> Split:
    """A random quarter of the newest ``share`` of the interactions (by time) held out;
    everything else, the rest of that window included, is training, so a model can learn
    from the window what it is tested on in it. A share, not a span of hours: the window then
    holds enough to test on whether the data is two weeks of a quiet history or an hour of
    live traffic. Users met only in the held-out part are left out (as in P1)."""
    if not 0 < share < 1:
        raise ValueError(f"recent_share: must be in (0, 1), got {share}")
    rng = np.random.default_rng(seed)
    frame = _sorted(data.interactions)
    newest_first = np.argsort(-frame["interacted_at"].to_numpy(dtype="datetime64[ns]").astype(
        np.int64), kind="stable")  # fmt: skip
    in_window = newest_first[: max(1, round(share * len(frame)))]
    is_test = np.zeros(len(frame), dtype=bool)
    is_test[rng.permutation(in_window)[: round((1 - TRAIN_SHARE) * len(in_window))]] = True
    return _known_user_split(
        "recent", data, frame[~is_test], frame[is_test], window_share=share,
        window_interactions=len(in_window),
        window_start=str(frame["interacted_at"].iloc[in_window].min()) if len(frame) else None,
    )  # fmt: skip
