"""The plain data every model kind trains on, and where it comes from.

``InteractionData`` is three data frames: users (id and attributes), items (id, title, text,
categories) and positive interactions (user, item, time, request context), and, where the data
were logged by the service, a fourth: the exposures (every impression: user, item, time),
which only kinds that learn from what was shown read (``item_ctr``). Models map ids to
indices themselves (``Vocabulary``), so a data set can carry users and items that have no
interactions at all: the cold-start cases the protocols test.

Two sources fill it: ``from_movielens`` (a MovieLens folder, for the quality benchmark; every
rating counts as an implicit positive, as DESIGN.md's protocols say) and
``training.datasets.from_feature_store`` (the pipeline's point-in-time training set).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

USER_COLUMNS = ("user_id", "age", "gender", "occupation", "profile_text")
ITEM_COLUMNS = ("item_id", "title", "text", "categories")
INTERACTION_COLUMNS = ("user_id", "item_id", "interacted_at", "hour", "weekday", "device")
EXPOSURE_COLUMNS = ("user_id", "item_id", "shown_at")
ATTRIBUTES = ("age", "gender", "occupation")


@dataclass
class InteractionData:
    """Users, items and positive interactions, as data frames with the columns above, and
    the impressions logged (``exposures``; None where the source logged none, as MovieLens)."""

    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    name: str = "data"
    snapshot: dict[str, Any] = field(default_factory=dict)
    exposures: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        frames = [
            (self.users, USER_COLUMNS, "users"),
            (self.items, ITEM_COLUMNS, "items"),
            (self.interactions, INTERACTION_COLUMNS, "interactions"),
        ]
        if self.exposures is not None:
            frames.append((self.exposures, EXPOSURE_COLUMNS, "exposures"))
        for frame, columns, what in frames:
            missing = [column for column in columns if column not in frame.columns]
            if missing:
                raise ValueError(f"{what}: missing columns {missing} (expected {list(columns)})")
        unknown_items = ~self.interactions["item_id"].isin(self.items["item_id"])
        if unknown_items.any():
            example = self.interactions.loc[unknown_items, "item_id"].iloc[0]
            raise ValueError(
                f"interactions.item_id: {int(unknown_items.sum())} rows name items missing "
                f"from items (e.g. {example!r})"
            )

    def with_interactions(
        self,
        interactions: pd.DataFrame,
        *,
        held_out: pd.DataFrame | None = None,
        new_items: Collection[str] = (),
        new_users: Collection[str] = (),
    ) -> InteractionData:
        """The same users and items with other interactions (a protocol's training part).
        The exposures carry no labels (a click counts only as one of the interactions), so
        they stay, except those of ``held_out``'s (user_id, item_id) pairs (the impression
        behind a held-out click is held out with it: a model that counts impressions,
        item_ctr, would otherwise see an impression nobody clicked exactly where the test
        asks) and every one of ``new_items`` and ``new_users`` (a protocol's cold items and
        users: what is new has never been shown, nor been shown anything)."""
        exposures = self.exposures
        if exposures is not None and (
            (held_out is not None and len(held_out)) or len(new_items) or len(new_users)
        ):
            keep = ~(exposures["item_id"].isin(new_items) | exposures["user_id"].isin(new_users))
            if held_out is not None and len(held_out):
                pairs = held_out[["user_id", "item_id"]].drop_duplicates().assign(_held=True)
                marked = exposures.merge(pairs, on=["user_id", "item_id"], how="left")
                keep &= marked["_held"].isna().to_numpy()
            exposures = exposures[keep.to_numpy()].reset_index(drop=True)
        return InteractionData(self.users, self.items, interactions.reset_index(drop=True),
                               self.name, self.snapshot, exposures)  # fmt: skip

    def save(self, folder: Path | str) -> Path:
        """Write the data to ``folder`` (Parquet per frame, the name and snapshot as JSON), so
        that another process reads back exactly these rows (``load``)."""
        import json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        frames = {"users": self.users, "items": self.items, "interactions": self.interactions}
        if self.exposures is not None:
            frames["exposures"] = self.exposures
        for name, frame in frames.items():
            frame.to_parquet(folder / f"{name}.parquet", index=False)
        meta = {"name": self.name, "snapshot": self.snapshot}
        (folder / "data.json").write_text(json.dumps(meta, default=str))
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> InteractionData:
        """The data ``save`` wrote to ``folder``."""
        import json

        folder = Path(folder)
        meta = json.loads((folder / "data.json").read_text())
        items = pd.read_parquet(folder / "items.parquet")
        # Parquet gives list columns back as arrays; the models expect lists.
        items["categories"] = items["categories"].map(list)
        exposures = folder / "exposures.parquet"
        return cls(
            pd.read_parquet(folder / "users.parquet"),
            items,
            pd.read_parquet(folder / "interactions.parquet"),
            name=meta["name"],
            snapshot=meta["snapshot"],
            exposures=pd.read_parquet(exposures) if exposures.exists() else None,
        )

    def user_attributes(self) -> dict[str, dict[str, Any]]:
        """Each user's attributes as plain Python values (None where unknown)."""
        users = self.users.set_index("user_id")[list(ATTRIBUTES)]
        return {
            user: {name: _plain(value) for name, value in row.items()}
            for user, row in users.iterrows()
        }

    def profile_texts(self) -> dict[str, str]:
        """The free text of the users who have one."""
        texts = self.users.set_index("user_id")["profile_text"]
        return {user: text for user, text in texts.items() if isinstance(text, str)}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "users": len(self.users),
            "items": len(self.items),
            "interactions": len(self.interactions),
            "users_with_interactions": int(self.interactions["user_id"].nunique()),
            "items_with_interactions": int(self.interactions["item_id"].nunique()),
            "exposures": len(self.exposures) if self.exposures is not None else None,
            **self.snapshot,
        }


@dataclass(frozen=True)
class UserQuery:
    """Who to recommend for. A known user needs only the id; an unknown one is described by
    attributes, free text and the items they interacted with (cold start), and any user can
    bring request context (hour, weekday, device)."""

    user_id: str | None = None
    history: tuple[str, ...] | None = None  # None: the history the model saw in training
    attributes: dict[str, Any] | None = None  # None: the attributes the model saw in training
    profile_text: str | None = None
    context: dict[str, Any] | None = None


class Vocabulary:
    """A stable id <-> index map. Index 0 is reserved for "unknown" (padding in sequences)."""

    def __init__(self, ids: Iterable[str]):
        self.ids: list[str] = ["<unknown>"]
        self.index: dict[str, int] = {}
        for value in ids:
            if value not in self.index:
                self.index[value] = len(self.ids)
                self.ids.append(value)

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, values: Sequence[str]) -> np.ndarray:
        return np.fromiter(
            (self.index.get(v, 0) for v in values), dtype=np.int64, count=len(values)
        )

    def to_list(self) -> list[str]:
        return self.ids[1:]


def shared_rows(old_ids: Sequence[str], new_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(new rows, old rows) of the ids both id lists hold, in the Vocabulary layout (row 0
    unknown, id n at row n + 1), row 0 included: how a warm start copies embedding rows."""
    old_row = {value: row + 1 for row, value in enumerate(old_ids)}
    pairs = [(0, 0)] + [(row + 1, old_row[v]) for row, v in enumerate(new_ids) if v in old_row]
    new_rows, old_rows = zip(*pairs, strict=True)
    return np.array(new_rows), np.array(old_rows)


def _plain(value: Any) -> Any:
    """A data frame cell as plain Python: None for any missing marker, numpy scalars unboxed."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def age_bucket(age: Any) -> str:
    """Ages grouped as MovieLens-1M does (under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+)."""
    if age is None or (isinstance(age, float) and np.isnan(age)):
        return "unknown"
    for upper, label in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"),
                         (56, "50-55")):  # fmt: skip
        if age < upper:
            return label
    return "56+"


def attribute_tokens(attributes: dict[str, Any] | None) -> list[str]:
    """A user's attributes as categorical tokens (``gender=F``), the form the towers embed."""
    if not attributes:
        return []
    tokens = []
    for name in ATTRIBUTES:
        value = attributes.get(name)
        if name == "age":
            value = age_bucket(value)
        if value is None or (isinstance(value, float) and np.isnan(value)) or value == "unknown":
            continue
        tokens.append(f"{name}={str(value).strip().lower()}")
    return tokens


def item_categories(value: Any) -> tuple[str, ...]:
    """An item's ``categories`` value (a list, an array from Parquet or Postgres, None or a
    missing value) as names."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    return tuple(str(name) for name in value)


def multi_hot(categories: Sequence[Sequence[str]], names: list[str]) -> np.ndarray:
    """(items, names) float32, 1 where the item has the category; names outside ``names``
    are left out (a category the model never met)."""
    column = {name: c for c, name in enumerate(names)}
    out = np.zeros((len(categories), len(names)), dtype=np.float32)
    for row, values in enumerate(categories):
        out[row, [column[v] for v in values if v in column]] = 1.0
    return out


def category_columns(
    items: pd.DataFrame, kept: Sequence[str] | None, enabled: bool
) -> tuple[list[str], np.ndarray]:
    """The category names a model reads and the items' multi-hot over them: ``kept`` (a warm
    start's, whose weights have one input per category), else every category the items
    have when ``enabled``, else none."""
    categories = [item_categories(value) for value in items["categories"]]
    if kept is not None:
        names = list(kept)
    elif enabled:
        names = sorted({name for values in categories for name in values})
    else:
        names = []
    return names, multi_hot(categories, names)


def item_text(row: Any) -> str:
    """The text an item's encoder reads: the item's own text when the source wrote one
    (MovieLens: title with year and genres), else its title and categories."""
    if isinstance(row["text"], str) and row["text"].strip():
        return row["text"]
    categories = list(row["categories"]) if row["categories"] is not None else []
    return f"{row['title']}. " + (f"Genres: {', '.join(categories)}." if categories else "")


def context_from(ts: pd.Series, context: Iterable[dict[str, Any] | None]) -> pd.DataFrame:
    """Hour, weekday and device per interaction: from the logged context where present,
    else hour and weekday from the timestamp (device unknown)."""
    hours, weekdays, devices = [], [], []
    for when, ctx in zip(ts, context, strict=True):
        ctx = ctx or {}
        hours.append(int(ctx.get("hour", when.hour)))
        weekdays.append(int(ctx.get("weekday", when.weekday())))
        devices.append(str(ctx.get("device", "unknown")))
    return pd.DataFrame({"hour": hours, "weekday": weekdays, "device": devices}, index=ts.index)


def from_movielens(path: Path | str) -> InteractionData:
    """A MovieLens folder (any of the three formats) as training data: every rating is an
    implicit positive, and the item text is the title with year and the genres."""
    from recloop.sources.movielens import load_movielens

    dataset = load_movielens(path)
    users = pd.DataFrame(
        [{column: getattr(user, column) for column in USER_COLUMNS} for user in dataset.users],
        columns=list(USER_COLUMNS),
    )
    items = pd.DataFrame(
        [{column: getattr(item, column) for column in ITEM_COLUMNS} for item in dataset.items],
        columns=list(ITEM_COLUMNS),
    )
    ratings = [event for event in dataset.events if event.event_type == "rating"]
    interactions = pd.DataFrame(
        {
            "user_id": [event.user_id for event in ratings],
            "item_id": [event.item_id for event in ratings],
            "interacted_at": pd.to_datetime([event.ts for event in ratings], utc=True),
        }
    )
    interactions = pd.concat(
        [interactions, context_from(interactions["interacted_at"], [None] * len(interactions))],
        axis=1,
    )
    # One positive per user and item: a re-rating is the same preference, not a second one.
    interactions = (
        interactions.sort_values(["interacted_at", "user_id", "item_id"], kind="stable")
        .drop_duplicates(["user_id", "item_id"], keep="first")
        .reset_index(drop=True)
    )
    if users.empty:
        # ml-latest-small has no user file: the users are those who rated.
        users = pd.DataFrame({"user_id": interactions["user_id"].unique()})
        for column in USER_COLUMNS[1:]:
            users[column] = None
    return InteractionData(
        users, items, interactions, name=Path(path).name,
        snapshot={"source": f"movielens:{Path(path).name}"},
    )  # fmt: skip
