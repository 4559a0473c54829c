"""The interface every model kind implements, as small as scikit-learn's.

``fit(data)`` learns from an ``InteractionData``; ``score(users, item_ids)`` returns a float
matrix (users x items); ``recommend(users, k, exclude_seen)`` the top k per user; ``save`` and
``load`` a folder. The folder is the model's fast path: the service loads it directly (plain
arrays or torch state), while MLflow wraps the same folder as a pyfunc.

Users are ``UserQuery`` objects, so one call serves known users (by id) and new ones
(attributes, free text, a few fresh interactions). A model scores items it never saw in
training only if it can (the text-based kinds); the others give them their lowest score.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from training.data import InteractionData, UserQuery

MANIFEST = "model.json"
# Columns a model keeps for history_columns, over all the histories it keeps (4 bytes each).
HISTORY_COLUMNS_KEPT = 2_000_000


class Recommender(ABC):
    """Base class: keeps the catalogue, each known user's history and attributes."""

    kind: ClassVar[str]
    config: Any  # a dataclass of hyperparameters, defaults commented where it is defined

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.default_config()
        self.item_ids: list[str] = []
        self.item_index: dict[str, int] = {}
        self.histories: dict[str, tuple[str, ...]] = {}
        self.attributes: dict[str, dict[str, Any]] = {}
        self.profile_texts: dict[str, str] = {}
        self.popularity: np.ndarray = np.zeros(0)
        self.quantized = False  # True once quantize() switched it to the int8 path
        self._columns: dict[tuple[str, ...], np.ndarray] = {}  # history_columns' cache
        self._columns_kept = 0  # how many columns it holds
        self._prior: tuple[np.ndarray, np.ndarray] | None = None  # (popularity, its prior)

    @classmethod
    def default_config(cls) -> Any:
        return None

    # -- what subclasses implement -----------------------------------------------------------

    @abstractmethod
    def _fit(self, data: InteractionData, warm_start: Recommender | None) -> None:
        """Learn from data; a neural kind given ``warm_start`` (a model of the same kind)
        continues from its weights instead of initialising afresh."""

    @abstractmethod
    def _score(self, users: list[ResolvedUser]) -> np.ndarray:
        """Scores (users, catalogue items) for resolved users."""

    def _state(self) -> dict[str, np.ndarray]:
        """Arrays to save besides the catalogue and histories."""
        return {}

    def _load_state(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        del path, arrays

    def _quantize(self, text_encoder: bool) -> bool:
        """Switch to int8 weights (and, with ``text_encoder``, the int8 text encoder where the
        kind encodes text at scoring time); False when the kind has nothing to quantise."""
        del text_encoder
        return False

    # -- the interface -----------------------------------------------------------------------

    def fit(self, data: InteractionData, warm_start: Recommender | None = None) -> Self:
        """Learn from ``data``. ``warm_start``: a trained model of the same kind to continue
        from (the DAG's warm-start mode trains on the newest interval only)."""
        if self.quantized or (warm_start is not None and warm_start.quantized):
            raise ValueError("fit: int8-quantised models only score; train from float weights")
        if warm_start is not None and warm_start.kind != self.kind:
            raise ValueError(
                f"warm_start: a {warm_start.kind!r} model cannot start a {self.kind!r}"
            )
        self._remember(data)
        if warm_start is not None:
            # A warm start sees only the newest interval: users quiet in it keep what the
            # champion knew of them (their earlier history and attributes).
            for user, items in warm_start.histories.items():
                newer = self.histories.get(user, ())
                self.histories[user] = tuple(dict.fromkeys(items + newer))
            self.attributes = {**warm_start.attributes, **self.attributes}
            self.profile_texts = {**warm_start.profile_texts, **self.profile_texts}
        self._fit(data, warm_start)
        return self

    def score(
        self, users: Sequence[UserQuery], item_ids: Sequence[str] | None = None
    ) -> np.ndarray:
        """(len(users), len(item_ids)) scores; item_ids default to the model's catalogue."""
        scores = self._score([self.resolve(user) for user in users])
        if item_ids is None:
            return scores
        columns = np.fromiter((self.item_index.get(i, -1) for i in item_ids), dtype=np.int64)
        out = scores[:, np.maximum(columns, 0)]
        if (columns < 0).any():
            # An item the model never heard of ranks below every item it knows (per user, so a
            # user's scores do not depend on who else is in the batch).
            out[:, columns < 0] = scores.min(axis=1, keepdims=True, initial=0.0) - 1.0
        return out

    def parts(self) -> list[Recommender]:
        """This model and the models it is made of (a composite kind lists its parts), for
        settings that apply to every one, such as where a text encoder caches."""
        return [self]

    @property
    def reads_item_text(self) -> bool:
        """Whether ``score_texts`` can score items the model never saw from their text."""
        return False

    def score_texts(
        self, users: Sequence[UserQuery], texts: Sequence[str],
        categories: Sequence[Sequence[str]] | None = None,
    ) -> np.ndarray:  # fmt: skip
        """(len(users), len(texts)) scores of items known only by their text (an item added
        after training), on the same scale as ``score``'s, so both rank together. Texts are
        written as ``training.data.item_text`` writes a catalogue item's; ``categories``, one
        list per text (None: none known), are the items' categories, which a kind may read
        beside the text. Only kinds whose ``reads_item_text`` is True can; the others raise
        NotImplementedError."""
        del users, texts, categories
        raise NotImplementedError(f"{self.kind}: scores no item from its text")

    def recommend(
        self, users: Sequence[UserQuery], k: int = 10, exclude_seen: bool = True
    ) -> list[list[tuple[str, float]]]:
        from training.metrics import top_k

        scores = self.score(users)
        if exclude_seen:
            for row, user in enumerate(users):
                seen = [
                    self.item_index[i] for i in self.resolve(user).history if i in self.item_index
                ]
                scores[row, seen] = -np.inf
        top = top_k(scores, k)
        return [
            [(self.item_ids[c], float(scores[r, c])) for c in top[r] if np.isfinite(scores[r, c])]
            for r in range(len(users))
        ]

    def quantize(self, text_encoder: bool = False) -> Self:
        """Serve from int8 weights from now on (``serving.quantization``; see
        training/quantization.py), with the speed and quality measured in
        benchmarks/RESULTS.md. ``text_encoder``: also encode text met at scoring time (a new
        user's profile) with the int8 encoder, which costs quality. Meant for a loaded model
        that will only score; it cannot be trained or saved afterwards. ``quantized`` says
        whether the kind had anything to quantise (popularity has not)."""
        if not self.quantized:
            self.quantized = self._quantize(text_encoder)
        return self

    def item_embeddings(self) -> np.ndarray | None:
        """(catalogue items, dim) vectors whose cosine says how alike two items are, or None
        for kinds without any (similar items then come from co-occurrence in histories)."""
        return None

    def text_item_embeddings(
        self, texts: Sequence[str], categories: Sequence[Sequence[str]] | None = None
    ) -> np.ndarray:
        """(len(texts), dim) vectors, in ``item_embeddings``' space, of items known only by
        their text and categories (as ``score_texts`` takes them). Only kinds whose
        ``reads_item_text`` is True can; the others raise NotImplementedError."""
        del texts, categories
        raise NotImplementedError(f"{self.kind}: embeds no item from its text")

    def save(self, path: Path | str) -> Path:
        if self.quantized:
            raise RuntimeError(f"{self.kind}: an int8-quantised model cannot be saved; save "
                               "the float model it was made from")  # fmt: skip
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "kind": self.kind,
            "config": asdict(self.config) if is_dataclass(self.config) else self.config,
            "item_ids": self.item_ids,
            "histories": {user: list(items) for user, items in self.histories.items()},
            "attributes": self.attributes,
            "profile_texts": self.profile_texts,
        }
        (path / MANIFEST).write_text(json.dumps(manifest, default=_json_default))
        np.savez(path / "arrays.npz", popularity=self.popularity, **self._state())
        return path

    @classmethod
    def load(cls, path: Path | str) -> Self:
        path = Path(path)
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest["kind"] != cls.kind:
            raise ValueError(f"{path}: holds a {manifest['kind']!r} model, not {cls.kind!r}")
        config = cls.default_config()
        if is_dataclass(config):
            known = {f.name for f in fields(config)}
            # A field the saved config lacks (a model saved before it existed) takes its
            # default: for popularity, saved with no config at all, plain counts.
            saved = manifest["config"] or {}
            config = type(config)(**{k: v for k, v in saved.items() if k in known})
        model = cls(config)
        model._set_catalogue(manifest["item_ids"])
        model.histories = {user: tuple(items) for user, items in manifest["histories"].items()}
        model.attributes = manifest["attributes"]
        model.profile_texts = manifest["profile_texts"]
        with np.load(path / "arrays.npz", allow_pickle=False) as arrays:
            state = {name: arrays[name] for name in arrays.files}
        model.popularity = state.pop("popularity")
        model._load_state(path, state)
        return model

    # -- shared helpers ----------------------------------------------------------------------

    def _set_catalogue(self, item_ids: Sequence[str]) -> None:
        self.item_ids = list(item_ids)
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self._columns, self._columns_kept = {}, 0  # columns of the catalogue before

    def _remember(self, data: InteractionData) -> None:
        self._set_catalogue(list(data.items["item_id"]))
        # The protocols' order (time, then item id for ties), so that histories and splits agree.
        ordered = data.interactions.sort_values(
            ["user_id", "interacted_at", "item_id"], kind="stable"
        )
        self.histories = {
            user: tuple(items) for user, items in ordered.groupby("user_id", sort=False)["item_id"]
        }
        self.attributes = data.user_attributes()
        self.profile_texts = data.profile_texts()
        counts = data.interactions["item_id"].value_counts()
        self.popularity = counts.reindex(self.item_ids, fill_value=0).to_numpy(dtype=np.float64)

    def resolve(self, user: UserQuery) -> ResolvedUser:
        """A query with what the model knows about the user filled in."""
        known = user.user_id is not None and user.user_id in self.histories
        history = user.history if user.history is not None else (
            self.histories.get(user.user_id, ()) if user.user_id is not None else ()
        )  # fmt: skip
        attributes = user.attributes if user.attributes is not None else (
            self.attributes.get(user.user_id, {}) if user.user_id is not None else {}
        )  # fmt: skip
        text = user.profile_text or (self.profile_texts.get(user.user_id) if user.user_id else None)
        return ResolvedUser(
            user_id=user.user_id if known else None, history=tuple(history),
            attributes=attributes or {}, profile_text=text, context=user.context or {},
        )  # fmt: skip

    def history_matrix(self, users: list[ResolvedUser]) -> np.ndarray:
        """(users, items) 0/1 rows of the users' histories over the catalogue."""
        rows = np.zeros((len(users), len(self.item_ids)), dtype=np.float32)
        for r, user in enumerate(users):
            rows[r, self.history_columns(user.history)] = 1.0
        return rows

    def history_columns(self, history: Sequence[str]) -> np.ndarray:
        """Catalogue columns of the items of ``history`` the model knows, each once, in the
        history's order.

        Kept per history: the service asks for the same user's columns request after request,
        and hashing a history is one pass in C where mapping it is two dict lookups per item
        in Python (about a tenth of the worker's time under /recommend load on MovieLens-100K's
        100-item histories, by py-spy). The cache is emptied when it would hold over
        ``HISTORY_COLUMNS_KEPT`` columns (8 MB), and with the catalogue."""
        key = history if isinstance(history, tuple) else tuple(history)
        columns = self._columns.get(key)
        if columns is None:
            index = self.item_index
            columns = np.fromiter(
                dict.fromkeys(index[item] for item in key if item in index), dtype=np.int32
            )
            if self._columns_kept + len(columns) > HISTORY_COLUMNS_KEPT:
                self._columns, self._columns_kept = {}, 0
            self._columns[key] = columns
            self._columns_kept += len(columns)
        return columns

    def popularity_prior(self) -> np.ndarray:
        """Popularity scaled into [0, 1e-6]: a tie-breaker that never outweighs a real score.
        Computed once per popularity array (every request adds it to its scores)."""
        if self._prior is None or self._prior[0] is not self.popularity:
            top = self.popularity.max(initial=0.0)
            prior = self.popularity / top * 1e-6 if top > 0 else self.popularity
            self._prior = (self.popularity, prior)
        return self._prior[1]


class ResolvedUser:
    __slots__ = ("attributes", "context", "history", "profile_text", "user_id")

    def __init__(self, user_id, history, attributes, profile_text, context):
        self.user_id: str | None = user_id  # None: not a user the model trained on
        self.history: tuple[str, ...] = history
        self.attributes: dict[str, Any] = attributes
        self.profile_text: str | None = profile_text
        self.context: dict[str, Any] = context


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
