"""The two-tower model on a tiny synthetic data set, with the real MiniLM text encoder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from training.data import InteractionData, UserQuery
from training.models import create, load_model
from training.models.two_tower import TwoTower, TwoTowerConfig

GENRES = ["Comedy", "Drama", "Horror", "Sci-Fi"]
COLD_ITEM = "i19"  # in the catalogue, never interacted with


def tiny_data(n_users: int = 30, n_items: int = 20, seed: int = 0) -> InteractionData:
    """Users who like one genre each; item i19 has no interactions (a new item)."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"Movie number {i}" for i in range(n_items)],
            "text": [
                f"Movie number {i} ({1980 + i}). Genres: {GENRES[i % 4]}." for i in range(n_items)
            ],
            "categories": [[GENRES[i % 4]] for i in range(n_items)],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(n_users)],
            "age": [18 + (u * 7) % 50 for u in range(n_users)],
            "gender": ["F" if u % 2 else "M" for u in range(n_users)],
            "occupation": [["writer", "student", "engineer"][u % 3] for u in range(n_users)],
            "profile_text": [f"I love {GENRES[u % 4]} films" if u % 5 == 0 else None
                             for u in range(n_users)],
        }
    )  # fmt: skip
    rows = []
    start = pd.Timestamp("2026-01-01", tz="UTC")
    for u in range(n_users):
        liked = [i for i in range(n_items - 1) if i % 4 == u % 4]
        others = [i for i in range(n_items - 1) if i % 4 != u % 4]
        chosen = list(rng.choice(liked, 3, replace=False)) + list(rng.choice(others, 2))
        for step, i in enumerate(dict.fromkeys(chosen)):
            rows.append((f"u{u}", f"i{i}", start + pd.Timedelta(minutes=60 * u + step)))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "interacted_at"])
    interactions["hour"] = interactions["interacted_at"].dt.hour
    interactions["weekday"] = interactions["interacted_at"].dt.weekday
    interactions["device"] = "unknown"
    return InteractionData(users, items, interactions, name="tiny")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    # Shared by the module's tests, so the texts are encoded once.
    return str(tmp_path_factory.mktemp("text-cache"))


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return tiny_data()


def small(cache_dir: str, **changes) -> TwoTower:
    config = {
        "dim": 8, "hidden": 16, "epochs": 3, "batch_size": 32, "show_progress": False,
        "text_cache_dir": cache_dir, "device": "cpu", **changes,
    }  # fmt: skip
    model = create("two_tower", **config)
    assert isinstance(model, TwoTower)
    return model


@pytest.fixture(scope="module")
def fitted(data: InteractionData, cache_dir: str) -> TwoTower:
    return small(cache_dir).fit(data)


KNOWN = [UserQuery(user_id="u1"), UserQuery(user_id="u2"), UserQuery(user_id="u5")]
NEW = [
    UserQuery(attributes={"age": 30, "gender": "F", "occupation": "writer"}),
    UserQuery(history=("i1", "i5"), attributes={"gender": "M"}),
    UserQuery(profile_text="Scary horror movies, please", history=("i2",)),
]


def test_fit_and_score_shapes(fitted: TwoTower) -> None:
    scores = fitted.score(KNOWN + NEW)
    assert scores.shape == (6, 20)
    assert np.isfinite(scores).all()
    # Column selection compared within one batch: the same users scored in a batch of six
    # can differ in the last float32 bit (the matmul kernels split batches differently).
    known = fitted.score(KNOWN)
    subset = fitted.score(KNOWN, ["i3", "i0", "not-an-item"])
    assert subset.shape == (3, 3)
    np.testing.assert_array_equal(subset[:, :2], known[:, [3, 0]])
    assert (subset[:, 2] < known.min()).all()
    assert [row["epoch"] for row in fitted.history] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) for row in fitted.history)
    top = fitted.recommend([UserQuery(user_id="u1")], k=5)[0]
    assert len(top) == 5
    assert not {item for item, _ in top} & set(fitted.histories["u1"])


def test_the_same_seed_gives_the_same_scores(data: InteractionData, cache_dir: str) -> None:
    first = small(cache_dir).fit(data).score(KNOWN + NEW)
    second = small(cache_dir).fit(data).score(KNOWN + NEW)
    other = small(cache_dir, seed=7).fit(data).score(KNOWN + NEW)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)


def test_save_and_load_give_identical_scores(fitted: TwoTower, tmp_path) -> None:
    fitted.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded, TwoTower)
    np.testing.assert_array_equal(loaded.score(KNOWN + NEW), fitted.score(KNOWN + NEW))
    assert loaded.config == fitted.config


def test_categories_can_be_left_out_and_older_versions_load(
    data: InteractionData, cache_dir: str, tmp_path
) -> None:
    """``categories=False`` is the item tower before it read categories; a version saved
    then (without the category arrays) still loads and scores as it did."""
    model = small(cache_dir, categories=False).fit(data)
    assert model.category_names == [] and model.item_categories.shape == (20, 0)
    path = model.save(tmp_path / "model")
    with np.load(path / "arrays.npz") as arrays:
        older = {k: arrays[k] for k in arrays.files if not k.startswith(("category", "item_cat"))}
    np.savez(path / "arrays.npz", **older)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.score(KNOWN + NEW), model.score(KNOWN + NEW))


def test_an_item_without_interactions_is_scored_from_its_text(fitted: TwoTower) -> None:
    assert fitted.item_id_index[fitted.item_index[COLD_ITEM]] == 0  # no id of its own
    scores = fitted.score(KNOWN + NEW)
    cold = scores[:, fitted.item_index[COLD_ITEM]]
    assert np.isfinite(cold).all()
    others = np.delete(scores, fitted.item_index[COLD_ITEM], axis=1)
    assert not np.isclose(others, cold[:, None]).any()


def test_a_new_items_text_scores_as_the_same_item_in_the_catalogue(
    fitted: TwoTower, data: InteractionData, tmp_path, monkeypatch
) -> None:
    from training.data import item_text
    from training.models import two_tower

    # Loaded without its text cache, as the service loads it: the encoder runs for real.
    model = load_model(fitted.save(tmp_path / "model"))
    model.config.text_cache_dir = None
    assert model.reads_item_text
    rows = data.items.set_index("item_id", drop=False)
    cold, other = item_text(rows.loc[COLD_ITEM]), item_text(rows.loc["i3"])
    genres = [list(rows.loc[COLD_ITEM, "categories"]), list(rows.loc["i3", "categories"])]
    assert model.category_names == sorted(GENRES)
    users = KNOWN + NEW
    scores = model.score_texts(users, [cold, other, cold], [genres[0], genres[1], genres[0]])
    assert scores.shape == (6, 3)
    # i19 has no interactions: in the catalogue it is the unknown id plus its text and
    # categories, which is what a new item gets. (Tolerance: the catalogue's texts were
    # encoded in one padded batch.)
    np.testing.assert_allclose(scores[:, 0], model.score(users, [COLD_ITEM])[:, 0], atol=1e-3)
    np.testing.assert_array_equal(scores[:, 2], scores[:, 0])
    # i3 has interactions and its own id vector; from its text alone it scores otherwise.
    assert not np.allclose(scores[:, 1], model.score(users, ["i3"])[:, 0], atol=1e-3)
    # The categories are read: the same text without them (or with others) is another item.
    bare = model.score_texts(users, [cold])[:, 0]
    assert not np.allclose(bare, scores[:, 0], atol=1e-3)
    with pytest.raises(ValueError, match="categories: 1 lists for 2 texts"):
        model.score_texts(users, [cold, other], [genres[0]])
    # The same holds for its place among the items (what /similar_items compares).
    embedded = model.text_item_embeddings([cold], [genres[0]])
    table = model.item_embeddings()
    np.testing.assert_allclose(embedded[0], table[model.item_index[COLD_ITEM]], atol=1e-3)

    # The service passes the same tuples on every request: found by identity, the same.
    texts, categories = (cold, other), (tuple(genres[0]), tuple(genres[1]))
    first = model.text_item_embeddings(texts, categories)
    assert model.last_stacked is None  # two items are not worth keeping stacked
    monkeypatch.setattr(two_tower, "STACK_AT_LEAST", 2)
    np.testing.assert_array_equal(model.text_item_embeddings(texts, categories), first)
    assert model.last_stacked[0] is texts and model.last_stacked[1] is categories
    np.testing.assert_array_equal(model.text_item_embeddings(texts, categories), first)
    listed = [list(genres[0]), list(genres[1])]  # lists can change: kept by value only
    np.testing.assert_array_equal(model.text_item_embeddings(list(texts), listed), first)
    assert model.last_stacked[0] is texts

    monkeypatch.setattr(two_tower, "RECENT_ITEM_TEXTS", 2)
    model.score_texts(users[:1], ["A brand new film. Genres: Horror.", cold], [["Horror"], []])
    assert list(model.recent_item_texts) == [
        ("A brand new film. Genres: Horror.", ("Horror",)),
        (cold, ()),
    ]


def test_a_refit_forgets_the_vectors_it_made_of_texts(
    data: InteractionData, cache_dir: str
) -> None:
    from training.data import item_text

    # Vectors of new items' texts and of profile texts are kept between calls; a refit
    # changes the towers that made them, so the kept ones must go with it.
    model = small(cache_dir).fit(data)
    rows = data.items.set_index("item_id", drop=False)
    cold, genres = item_text(rows.loc[COLD_ITEM]), list(rows.loc[COLD_ITEM, "categories"])
    users = [*KNOWN, NEW[2]]
    before = model.score_texts(users, [cold], [genres])[:, 0]
    model.config.seed = 7
    model.fit(data)
    after = model.score_texts(users, [cold], [genres])[:, 0]
    assert not np.allclose(after, before, atol=1e-3)
    np.testing.assert_allclose(after, model.score(users, [COLD_ITEM])[:, 0], atol=1e-3)


def test_a_new_user_with_attributes_only_gets_scores(fitted: TwoTower) -> None:
    writer = UserQuery(attributes={"age": 30, "gender": "F", "occupation": "writer"})
    student = UserQuery(attributes={"age": 19, "gender": "M", "occupation": "student"})
    scores = fitted.score([writer, student, UserQuery()])
    assert np.isfinite(scores).all()
    assert not np.allclose(scores[0], scores[1])
    # A few clicks change a new user's ranking at once.
    clicked = fitted.score([UserQuery(history=("i2", "i6"), attributes=writer.attributes)])
    assert not np.allclose(clicked[0], scores[0])


def test_warm_start_maps_weights_by_id_and_trains_on(fitted: TwoTower, cache_dir: str) -> None:
    # Newer data: some users gone (so indices shift), a new user and the new item's clicks.
    newer = tiny_data(seed=1)
    keep = ~newer.interactions["user_id"].isin(["u0", "u3", "u4"])
    extra = newer.interactions.iloc[:2].assign(user_id="u99", item_id=COLD_ITEM)
    newer = newer.with_interactions(pd.concat([newer.interactions[keep], extra]))

    def user_row(model: TwoTower, user: str) -> torch.Tensor:
        return model.towers.users.user.weight[model.user_vocab.index[user]].detach().clone()

    copied = small(cache_dir, lr=1e-12).fit(newer, warm_start=fitted)
    for user in ("u1", "u10", "u29"):
        torch.testing.assert_close(user_row(copied, user), user_row(fitted, user))
    assert copied.user_vocab.index["u10"] != fitted.user_vocab.index["u10"]

    trained = small(cache_dir).fit(newer, warm_start=fitted)
    assert not torch.allclose(user_row(trained, "u10"), user_row(fitted, "u10"))
    assert trained.item_id_index[trained.item_index[COLD_ITEM]] > 0
    assert np.isfinite(trained.score([*KNOWN, UserQuery(user_id="u99")])).all()

    with pytest.raises(ValueError, match="warm_start"):
        small(cache_dir, dim=4).fit(newer, warm_start=fitted)


def test_bpr_loss_trains(data: InteractionData, cache_dir: str) -> None:
    model = small(cache_dir, loss="bpr", epochs=1).fit(data)
    assert np.isfinite(model.score(KNOWN + NEW)).all()


def test_lora_fine_tunes_the_text_encoder(data: InteractionData, cache_dir: str, tmp_path):
    model = small(cache_dir, text_encoder="lora", lora_rank=2, epochs=1).fit(data)
    scores = model.score(KNOWN + NEW)
    assert np.isfinite(scores).all()
    assert model.encoder is None  # the encoder is only needed while fitting
    assert model.item_text_tuned is not None
    assert not torch.allclose(model.item_text_tuned, model.text)  # the adapters learned
    loaded = load_model(model.save(tmp_path / "lora"))
    np.testing.assert_array_equal(loaded.score(KNOWN + NEW), scores)
    # Its adapters are saved with it: a new item's text is read by the tuned encoder, so an
    # item without interactions scores from its text as it does in the catalogue, whose
    # vectors the tuned encoder made while fitting (the untuned one would not give that).
    from training.data import item_text

    assert loaded.reads_item_text
    loaded.config.text_cache_dir = None
    cold_row = data.items.set_index("item_id", drop=False).loc[COLD_ITEM]
    cold, genres = item_text(cold_row), [list(cold_row["categories"])]
    np.testing.assert_allclose(loaded.score_texts(KNOWN + NEW, [cold], genres)[:, 0],
                               scores[:, model.item_index[COLD_ITEM]], atol=1e-3)  # fmt: skip
    row = loaded.item_embeddings()[loaded.item_index[COLD_ITEM]]
    np.testing.assert_allclose(loaded.text_item_embeddings([cold], genres)[0], row, atol=1e-3)
    untuned = load_model(model.save(tmp_path / "untuned"))
    untuned.lora_weights = {name: np.zeros_like(w) for name, w in untuned.lora_weights.items()}
    assert not np.allclose(untuned.score_texts(KNOWN, [cold], genres)[:, 0],
                           scores[:3, model.item_index[COLD_ITEM]], atol=1e-3)  # fmt: skip
    # A warm start goes on from the adapters (a learning rate of ~0 keeps them as they were).
    copied = small(cache_dir, text_encoder="lora", lora_rank=2, epochs=1, lr=1e-12)
    copied.fit(data, warm_start=loaded)
    for name, value in loaded.lora_weights.items():
        np.testing.assert_allclose(copied.lora_weights[name], value, atol=1e-6)
    with pytest.raises(ValueError, match="warm_start: the saved LoRA adapters do not fit"):
        small(cache_dir, text_encoder="lora", lora_rank=4, epochs=1).fit(data, warm_start=loaded)
    # Adapters whose names the encoder does not know are refused, not silently left fresh.
    renamed = load_model(model.save(tmp_path / "renamed"))
    renamed.lora_weights = {f"x.{name}": w for name, w in renamed.lora_weights.items()}
    with pytest.raises(ValueError, match="do not fit this encoder"):
        renamed.score_texts(KNOWN, [cold])
    # The int8 path (serving.quantization) reads new text with the adapters too. One epoch's
    # adapters move this score by about 0.002, under int8's own error (about 0.02, and the
    # CPU's: on an Intel Xeon the int8 difference of tuned and untuned adapters came out
    # -0.0006 against the float's +0.0023, where an AMD EPYC's passed a 1e-3 check). So the
    # adapters are scaled tenfold (a hundredfold in A x B) on both paths, and int8 must move
    # the score as float does; if it ignored them, it would not move it at all.
    int8 = load_model(model.save(tmp_path / "int8"))
    int8.config.text_cache_dir = None
    int8.quantize(text_encoder=True)
    np.testing.assert_allclose(int8.score_texts(KNOWN, [cold], genres)[:, 0],
                               scores[:3, model.item_index[COLD_ITEM]], atol=0.1)  # fmt: skip

    def moved(quantized: bool) -> np.ndarray:
        """How far tenfold adapters move the cold item's score from no adapters."""
        found = []
        for scale in (10.0, 0.0):
            each = load_model(model.save(tmp_path / f"scaled-{quantized}-{scale}"))
            each.config.text_cache_dir = None
            each.lora_weights = {n: w * scale for n, w in each.lora_weights.items()}
            if quantized:
                each.quantize(text_encoder=True)
            found.append(each.score_texts(KNOWN, [cold], genres)[:, 0])
        return found[0] - found[1]

    in_float, in_int8 = moved(quantized=False), moved(quantized=True)
    assert np.abs(in_float).min() > 0.05  # (0.16-0.17 on an Intel Xeon)
    np.testing.assert_allclose(in_int8, in_float, rtol=0.5)  # (0.20 there)
    # A version registered before adapters were saved has none: it says so, naming LoRA.
    loaded.lora_weights = None
    assert not loaded.reads_item_text
    with pytest.raises(NotImplementedError, match="LoRA"):
        loaded.score_texts(KNOWN, ["A brand new film."])
    with pytest.raises(NotImplementedError, match="LoRA"):
        loaded.text_item_embeddings(["A brand new film."])


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"loss": "hinge"}, "loss"),
        ({"text_encoder": "full"}, "text_encoder"),
        ({"dim": 0}, "dim"),
        ({"user_id_dropout": 1.5}, "user_id_dropout"),
        ({"device": "tpu"}, "device"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_a_wrong_config_value_names_the_field(data, cache_dir, changes, field) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}="):
        TwoTowerConfig(**changes)
    # create() sets fields after construction: fit checks them again.
    with pytest.raises(ValueError, match=rf"\b{field}="):
        small(cache_dir, **changes).fit(data)


def test_data_without_interactions_is_refused(data: InteractionData, cache_dir: str) -> None:
    with pytest.raises(ValueError, match="interactions"):
        small(cache_dir).fit(data.with_interactions(data.interactions.iloc[:0]))


def test_profiles_met_at_scoring_time_are_kept_within_a_bound(fitted: TwoTower, monkeypatch):
    from training.models import two_tower

    monkeypatch.setattr(two_tower, "RECENT_PROFILES", 3)
    known = dict(fitted.profile_cache)
    texts = [f"I love film number {n}" for n in range(5)]
    first = fitted._profiles(texts)  # five new texts in one call: all answered
    assert np.abs(first).sum(axis=1).min() > 0
    assert list(fitted.recent_profiles) == texts[2:]  # the three most recent kept
    assert fitted.profile_cache.keys() == known.keys()  # the training users' are untouched
    np.testing.assert_allclose(fitted._profiles([texts[4]])[0], first[4])  # from the cache
    fitted.recent_profiles.clear()
