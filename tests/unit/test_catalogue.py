"""The service's catalogue of items its models never trained on (serving.catalogue and the
engine's publishing of it): which items are new, and that requests only ever see a catalogue
whose new items are encoded. The engine method runs alone here, on a stand-in text model;
that the whole path works is tested through a real server (tests/integration/test_serving)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from recloop.settings import Settings
from serving import engine as engine_module
from serving.catalogue import Catalogue
from serving.engine import Engine, PublishedCatalogue
from serving.models import Deployment, ModelSet


def catalogue(*ids: str) -> Catalogue:
    return Catalogue(
        ids, tuple(f"text of {i}" for i in ids), datetime.now(UTC),
        tuple((f"genre of {i}",) for i in ids),
    )  # fmt: skip


def test_new_items_are_the_newest_unknown_ones_within_the_limit() -> None:
    items = catalogue("n3", "k1", "n2", "n1", "k2")  # newest first
    known = {"k1": 0, "k2": 1}
    new = items.new_items(("champion", "1"), known, 2)
    assert new.ids == ["n3", "n2"] and new.texts == ("text of n3", "text of n2")
    assert new.categories == (("genre of n3",), ("genre of n2",))
    assert new.text_by_id.get("n2") == "text of n2"
    assert new.categories_by_id.get("n2") == ("genre of n2",)
    assert new.text_by_id.get("n1") is None  # past the limit
    assert new.text_by_id.get("k1") is None  # trained on
    assert items.text_of("k1") == "text of k1" and items.text_of("nope") is None


class TextModel:
    """Stands in for a text-reading model: records what it was asked to encode."""

    reads_item_text = True

    def __init__(self, fail: bool = False):
        self.item_index = {"k1": 0}
        self.encoded: list[str] = []
        self.categories: list[tuple[str, ...]] = []
        self.fail = fail

    def text_item_embeddings(self, texts, categories):
        if self.fail:
            raise RuntimeError("text encoder folder missing")
        self.encoded += list(texts)
        self.categories += list(categories)


class Watcher:
    def __init__(self, model):
        self.current = ModelSet(champion=Deployment(model, "7", "champion"))


def bare_engine(model, monkeypatch, read) -> Engine:
    monkeypatch.setattr(engine_module, "read_catalogue", read)
    engine = object.__new__(Engine)  # no Feast, event log or registry: only this method's state
    engine.settings = Settings(serving={"catalogue_seconds": 60, "new_items": 100})
    engine.watcher = Watcher(model)
    engine.published = PublishedCatalogue(Catalogue(), frozenset())
    engine.catalogue_error = None
    engine._catalogue_due = 0.0
    engine._text_lock = threading.Lock()
    return engine


def test_a_catalogue_is_published_only_once_its_new_items_are_encoded(monkeypatch) -> None:
    model = TextModel()
    read = catalogue("n2", "k1", "n1")
    engine = bare_engine(model, monkeypatch, lambda settings: read)
    engine._refresh_catalogue()
    assert model.encoded == ["text of n2", "text of n1"]
    assert model.categories == [("genre of n2",), ("genre of n1",)]
    assert engine.published.catalogue is read
    assert engine.published.encoded == {("champion", "7")}
    assert engine.published.describe()["new_items_for"] == ["champion v7"]
    # The same contents read again: nothing is encoded or republished.
    engine._catalogue_due = 0.0
    same = catalogue("n2", "k1", "n1")
    monkeypatch.setattr(engine_module, "read_catalogue", lambda settings: same)
    engine._refresh_catalogue()
    assert engine.published.catalogue is read and model.encoded == ["text of n2", "text of n1"]
    # Other categories for the same texts are other items to the text model: read again.
    engine._catalogue_due = 0.0
    recategorised = Catalogue(same.item_ids, same.texts, datetime.now(UTC))
    monkeypatch.setattr(engine_module, "read_catalogue", lambda settings: recategorised)
    engine._refresh_catalogue()
    assert engine.published.catalogue is recategorised and model.categories[2:] == [(), ()]


def test_a_failed_encoding_keeps_what_was_published_and_says_why(monkeypatch) -> None:
    model = TextModel(fail=True)
    engine = bare_engine(model, monkeypatch, lambda settings: catalogue("n1", "k1"))
    before = engine.published
    engine._refresh_catalogue()  # raises nothing: the service goes on serving
    assert engine.published is before
    expected = "encoding new items: RuntimeError: text encoder folder missing"
    assert engine.catalogue_error == expected


def test_a_failed_read_keeps_the_catalogue_read_before(monkeypatch) -> None:
    model = TextModel()
    engine = bare_engine(model, monkeypatch, lambda settings: catalogue("n1", "k1"))
    engine._refresh_catalogue()
    published = engine.published

    def missing(settings):
        raise FileNotFoundError("feast_items.parquet does not exist")

    monkeypatch.setattr(engine_module, "read_catalogue", missing)
    engine._catalogue_due = 0.0
    engine._refresh_catalogue()
    assert engine.published is published
    assert engine.catalogue_error == "FileNotFoundError: feast_items.parquet does not exist"


def test_no_new_items_when_turned_off(monkeypatch) -> None:
    model = TextModel()
    engine = bare_engine(model, monkeypatch, lambda settings: catalogue("n1", "k1"))
    engine.settings = Settings(serving={"new_items": 0})
    engine._refresh_catalogue()
    assert model.encoded == [] and engine.published.encoded == frozenset()


class NonTextModel:
    """Stands in for a model that reads no text (EASE, popularity): it knows k1 only."""

    reads_item_text = False

    def __init__(self) -> None:
        self.item_index = {"k1": 0}


def test_a_non_text_model_explores_its_new_items_less_those_the_user_saw() -> None:
    """The engine's unscored new items: the newest unknown ones within the limit, less those
    in the user's history (fresh clicks included); none for a policy that does not explore
    them, with the setting off, or for a text-reading model (which scores them)."""
    from serving.policies import EpsilonGreedy, Greedy
    from training.data import UserQuery

    engine = object.__new__(Engine)
    engine.settings = Settings(serving={"new_items": 3})
    engine.policy = EpsilonGreedy(0.2)
    engine.published = PublishedCatalogue(catalogue("n4", "n3", "k1", "n2", "n1"), frozenset())
    deployment = Deployment(NonTextModel(), "7", "champion")
    user = UserQuery("u1", history=("k1", "n2"))
    assert engine._unscored_new_items(deployment, user, exclude_seen=True) == ["n4", "n3"]
    assert engine._unscored_new_items(deployment, user, exclude_seen=False) == ["n4", "n3", "n2"]
    stranger = UserQuery("u2", history=("k1",))
    assert engine._unscored_new_items(deployment, stranger, exclude_seen=True) == [
        "n4", "n3", "n2"]  # fmt: skip
    engine.policy = Greedy()
    assert engine._unscored_new_items(deployment, user, exclude_seen=True) == []
    engine.policy = EpsilonGreedy(0.2)
    engine.settings = Settings(serving={"new_items": 3, "explore_new_items": False})
    assert engine._unscored_new_items(deployment, user, exclude_seen=True) == []
    engine.settings = Settings(serving={"new_items": 3})
    text = Deployment(TextModel(), "8", "champion")
    assert engine._unscored_new_items(text, user, exclude_seen=True) == []
