"""The sequential transformer on tiny synthetic sequences: it learns, it is reproducible, it
round-trips, and its edges (new users, context, warm start, bad config) behave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.unit.training_data import from_rows
from training import protocols
from training.data import InteractionData, UserQuery
from training.evaluation import evaluate
from training.models import create, load_model

# Small and quick: a few hundred interactions, a few seconds per fit on one CPU thread.
FAST = {
    "max_len": 8, "dim": 16, "heads": 2, "layers": 1, "dropout": 0.0, "epochs": 30,
    "batch_size": 16, "lr": 1e-2, "use_text": False, "show_progress": False,
}  # fmt: skip


def _frame(rows: list[tuple], items: int) -> InteractionData:
    users = sorted({row[0] for row in rows})
    return from_rows(
        rows,
        items,
        users,
        lambda _: {"age": 30, "gender": "F", "occupation": "writer"},
        name="sequences",
    )


def cycles(users: int = 40, items: int = 20, length: int = 12, seed: int = 0) -> InteractionData:
    """Every user walks the items in a cycle (i0, i1, ..., i19, i0, ...) from a random start:
    the next item is the last one plus one, which only an order-aware model can know."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    rows = []
    for u in range(users):
        first = int(rng.integers(items))
        for n in range(length):
            when = start + pd.Timedelta(hours=u * 24 + n)
            rows.append(
                (f"u{u}", f"i{(first + n) % items}", when, when.hour, when.weekday(), "web")
            )
    return _frame(rows, items)


def devices(users: int = 30, items: int = 12, length: int = 14, seed: int = 0) -> InteractionData:
    """Preference depends on the device: even items on mobile, odd items on desktop."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    rows = []
    for u in range(users):
        for n in range(length):
            device = ("mobile", "desktop")[int(rng.integers(2))]
            parity = 0 if device == "mobile" else 1
            item = int(rng.choice(np.arange(parity, items, 2)))
            when = start + pd.Timedelta(hours=u * 24 + n)
            rows.append((f"u{u}", f"i{item}", when, when.hour, when.weekday(), device))
    return _frame(rows, items)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Module scope, so that it is in force before the module's fitted model is built.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return cycles()


@pytest.fixture(scope="module")
def model(data):
    return create("seq_transformer", **FAST).fit(data)


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("text-cache"))


def test_fit_and_score_shapes(model, data) -> None:
    users = [UserQuery(user_id="u0"), UserQuery(user_id="u1"), UserQuery(history=("i3",))]
    assert model.score(users).shape == (3, 20)
    assert model.score(users, ["i1", "i5"]).shape == (3, 2)
    assert [row["epoch"] for row in model.history] == list(range(FAST["epochs"]))
    assert model.history[-1]["loss"] < model.history[0]["loss"]


def test_learns_the_next_item_of_a_cycle(data, text_cache: str) -> None:
    split = protocols.split(data, "P4")
    config = {**FAST, "use_text": True, "text_cache_dir": text_cache}
    sequential = evaluate(create("seq_transformer", **config).fit(split.train), split).metrics
    popularity = evaluate(create("popularity").fit(split.train), split).metrics
    # The held-out item is the one after the last: it should come first nearly always.
    assert sequential["mrr"] > 0.9
    assert sequential["ndcg"] > popularity["ndcg"] + 0.25


def test_same_seed_same_scores(data) -> None:
    users = [UserQuery(user_id="u2"), UserQuery(history=("i4", "i5"))]
    first = create("seq_transformer", **{**FAST, "epochs": 3}).fit(data).score(users)
    again = create("seq_transformer", **{**FAST, "epochs": 3}).fit(data).score(users)
    other = create("seq_transformer", **{**FAST, "epochs": 3, "seed": 7}).fit(data).score(users)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_save_and_load_score_identically(data, text_cache: str, tmp_path: Path) -> None:
    config = {**FAST, "epochs": 3, "use_text": True, "text_cache_dir": text_cache}
    model = create("seq_transformer", **config).fit(data)
    users = [
        UserQuery(user_id="u1", context={"hour": 8, "weekday": 2, "device": "web"}),
        UserQuery(history=("i3", "i4")),
        UserQuery(history=()),
    ]
    loaded = load_model(model.save(tmp_path / "seq"))
    np.testing.assert_array_equal(loaded.score(users), model.score(users))
    assert loaded.history == model.history
    assert loaded.devices.to_list() == ["web"]


def test_items_start_from_their_text_and_categories(data, text_cache: str, tmp_path) -> None:
    config = {**FAST, "epochs": 2, "use_text": True, "text_cache_dir": text_cache}
    model = create("seq_transformer", **config).fit(data)
    plain = create("seq_transformer", **config, categories=False).fit(data)
    assert model.category_names == ["Action", "Drama"] and plain.category_names == []
    text = model.network.text[1:21].cpu().numpy()  # rows 1..items: the catalogue's
    assert text.shape[1] == plain.network.text.shape[1] + 2
    np.testing.assert_array_equal(text[:, -2:], [[0, 1] if i % 2 else [1, 0] for i in range(20)])
    # A version saved before the categories were read (no category_names) loads and scores
    # as it did; a warm start from it keeps its width.
    users = [UserQuery(user_id="u1"), UserQuery(history=("i3", "i4"))]
    path = plain.save(tmp_path / "older")
    with np.load(path / "arrays.npz") as arrays:
        older = {k: arrays[k] for k in arrays.files if k != "category_names"}
    np.savez(path / "arrays.npz", **older)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.score(users), plain.score(users))
    warm = create("seq_transformer", **config).fit(data, warm_start=loaded)
    assert warm.category_names == [] and warm.network.text.shape == plain.network.text.shape


def test_rerank_orders_candidates_by_score(model) -> None:
    users = [UserQuery(user_id="u0"), UserQuery(history=("i7",))]
    candidates = [["i1", "i2", "i3", "not-an-item"], ["i9", "i8", "i0"]]
    ranked = model.rerank(users, candidates)
    for user, items, result in zip(users, candidates, ranked, strict=True):
        assert sorted(item for item, _ in result) == sorted(items)
        values = [score for _, score in result]
        assert values == sorted(values, reverse=True)
        scores = dict(zip(items, model.score([user], items)[0], strict=True))
        assert all(score == pytest.approx(scores[item]) for item, score in result)
    assert ranked[0][-1][0] == "not-an-item"
    assert ranked[1][0][0] == "i8"  # after i7 comes i8
    with pytest.raises(ValueError, match="candidates"):
        model.rerank(users, candidates[:1])


def test_new_users_get_finite_scores(model) -> None:
    users = [
        UserQuery(history=()),
        UserQuery(user_id="never-seen"),
        UserQuery(history=("not-an-item",), context={"device": "fridge", "hour": "late"}),
    ]
    scores = model.score(users)
    assert scores.shape == (3, 20) and np.isfinite(scores).all()


def test_context_changes_the_scores() -> None:
    data = devices()
    model = create("seq_transformer", **FAST).fit(data)
    history = tuple(data.interactions["item_id"][:5])
    mobile, desktop = model.score([
        UserQuery(history=history, context={"device": "mobile"}),
        UserQuery(history=history, context={"device": "desktop"}),
    ])  # fmt: skip
    lift = mobile - desktop  # how much more an item scores on mobile
    assert lift[0::2].mean() > lift[1::2].mean() + 1.0  # even items: the mobile ones
    unknown = model.score([UserQuery(history=history)])[0]
    assert np.isfinite(unknown).all() and not np.allclose(unknown, mobile)


def test_warm_start_maps_items_by_id_and_keeps_training(model, data) -> None:
    # The new interval drops item i0 from the catalogue and adds i20.
    newer = cycles(users=10, items=21, seed=1)
    newer = InteractionData(
        newer.users, newer.items[newer.items["item_id"] != "i0"].reset_index(drop=True),
        newer.interactions[newer.interactions["item_id"] != "i0"].reset_index(drop=True),
    )  # fmt: skip
    # A learning rate too small to move anything: the copied weights are the champion's.
    frozen = create("seq_transformer", **{**FAST, "epochs": 1, "lr": 1e-12})
    frozen.fit(newer, warm_start=model)
    old, new = model.network.state_dict(), frozen.network.state_dict()
    for item in ("i1", "i5", "i19"):
        np.testing.assert_allclose(
            new["item_embedding.weight"][frozen.item_index[item] + 1],
            old["item_embedding.weight"][model.item_index[item] + 1],
            atol=1e-6,
        )
    np.testing.assert_allclose(new["ln_f.weight"], old["ln_f.weight"], atol=1e-6)
    # An ordinary warm start trains on: the weights move away from the champion's.
    warm = create("seq_transformer", **{**FAST, "epochs": 5, "dim": 32}).fit(
        newer, warm_start=model
    )
    assert warm.config.dim == FAST["dim"]  # the champion's architecture, not the request's
    moved = warm.network.state_dict()["blocks.0.mlp.fc.weight"]
    assert not torch.allclose(moved, old["blocks.0.mlp.fc.weight"])
    assert np.isfinite(warm.score([UserQuery(user_id="u1")])).all()


@pytest.mark.parametrize(
    ("field", "value"),
    [("dim", 10), ("dropout", 1.0), ("epochs", 0), ("lr", -1.0), ("device", "tpu"),
     ("negatives", 2.5), ("calibration", 2.0)],
)  # fmt: skip
def test_bad_config_names_the_field(field: str, value: object) -> None:
    overrides = {field: value, "heads": 4} if field == "dim" else {field: value}
    with pytest.raises(ValueError, match=rf"^{field}: "):
        create("seq_transformer", **overrides)
