"""The item catalogue the service recommends from, beyond what its models trained on.

dbt's ``items`` mart lists every item that has entered the catalogue by the interval's end,
interactions or not; its export ``feast_items`` (a Parquet file under the home's features
folder in the local profile, a view in production) is what the service reads, every
``serving.catalogue_seconds``, in its model watch thread. A Feast online store cannot list its
keys, so the catalogue does not come from there.

Items the serving model never trained on are scored from their text when its kind reads text
(``Recommender.reads_item_text``: the two-tower model's item tower, as protocol P2 trains it),
so a new item can be recommended before any retraining. Kinds that read no text cannot score
them: only an exploring policy shows them (``serving.explore_new_items``, the engine's
``_unscored_new_items``), until a retraining has seen them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

from recloop.settings import Settings
from training.data import item_categories, item_text

EXPORT = "feast_items"
QUERY = (
    "SELECT item_id, title, item_text AS text, categories FROM {relation} "
    "ORDER BY created_at DESC, item_id"
)


class NewItems(NamedTuple):
    """A model's new items: ids, texts and categories in the same order, and each id's text
    and categories. Tuples, which a model may keep by identity (``TwoTower.score_texts``)."""

    ids: list[str]
    texts: tuple[str, ...]
    text_by_id: dict[str, str]
    categories: tuple[tuple[str, ...], ...] = ()
    categories_by_id: dict[str, tuple[str, ...]] = {}  # noqa: RUF012 (read only)


NO_NEW_ITEMS = NewItems([], (), {})


class Catalogue:
    """Item ids, newest first, the text each is encoded from (``training.data.item_text``,
    the text training gave the same item) and its categories (which the two-tower item tower
    reads beside the text). Not changed once built: a refresh builds another."""

    def __init__(
        self, item_ids: tuple[str, ...] = (), texts: tuple[str, ...] = (),
        read_at: datetime | None = None, categories: tuple[tuple[str, ...], ...] | None = None,
    ):  # fmt: skip
        self.item_ids, self.texts, self.read_at = item_ids, texts, read_at
        self.categories = categories if categories is not None else ((),) * len(item_ids)
        self._index = {item: n for n, item in enumerate(item_ids)}
        self._new: dict[tuple[str, str], NewItems] = {}

    def new_items(self, key: tuple[str, str], known: dict[str, int], limit: int) -> NewItems:
        """Up to ``limit`` items, newest first, that are not keys of ``known`` (a model's item
        index). Remembered per ``key`` (a deployment's alias and version, whose index never
        changes), so a request pays for one dict lookup."""
        cached = self._new.get(key)
        if cached is None:
            ids, texts, categories = [], [], []
            for item, text, names in zip(self.item_ids, self.texts, self.categories, strict=True):
                if len(ids) == limit:
                    break
                if item not in known:
                    ids.append(item)
                    texts.append(text)
                    categories.append(names)
            if len(self._new) >= 8:  # versions come and go: keep the few being served
                self._new.clear()
            cached = self._new[key] = NewItems(
                ids, tuple(texts), dict(zip(ids, texts, strict=True)),
                tuple(categories), dict(zip(ids, categories, strict=True)),
            )  # fmt: skip
        return cached

    def same_items(self, other: Catalogue) -> bool:
        """Whether ``other`` lists the same items, described the same way."""
        return (self.item_ids, self.texts, self.categories) == (
            other.item_ids, other.texts, other.categories
        )  # fmt: skip

    def text_of(self, item_id: str) -> str | None:
        index = self._index.get(item_id)
        return self.texts[index] if index is not None else None

    def __len__(self) -> int:
        return len(self.item_ids)

    def describe(self) -> dict[str, object]:
        return {"items": len(self.item_ids),
                "read_at": self.read_at.isoformat() if self.read_at else None}  # fmt: skip


def read_catalogue(settings: Settings) -> Catalogue:
    """The catalogue as the last feature pipeline run exported it. Raises ExportMissing
    (``recloop.features.exports``) when there is none yet."""
    from recloop.features.exports import ExportMissing, read_export

    try:
        frame = read_export(settings, EXPORT, QUERY)
    except ExportMissing as error:
        raise ExportMissing(f"{error}: run the feature pipeline (`recloop features run`) for "
                            "the service to know its catalogue") from None  # fmt: skip
    rows = frame.to_dict("records")
    texts = tuple(item_text(row) for row in rows)
    categories = tuple(item_categories(row["categories"]) for row in rows)
    return Catalogue(tuple(frame["item_id"].astype(str)), texts, datetime.now(UTC), categories)
