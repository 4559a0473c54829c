"""Popularity and EASE through the common interface: fit, score, recommend, save, load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.unit.training_data import synthetic
from training import protocols
from training.data import UserQuery
from training.evaluation import evaluate
from training.models import create, load_model


@pytest.fixture(scope="module")
def data():
    return synthetic()


def test_popularity_ranks_by_training_count(data) -> None:
    model = create("popularity").fit(data)
    counts = data.interactions["item_id"].value_counts()
    top = model.recommend([UserQuery(user_id="nobody")], k=3, exclude_seen=False)[0]
    assert [item for item, _ in top] == list(counts.index[:3]) or (
        [counts[i] for i, _ in top] == sorted(counts.values, reverse=True)[:3]
    )


def test_ease_matches_the_closed_form(data) -> None:
    model = create("ease", l2=10.0, dropout=0.0).fit(data)
    x = model._matrix(data).astype(np.float64)
    p = np.linalg.inv(x.T @ x + 10.0 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)
    np.testing.assert_allclose(model.weights, b, atol=1e-5)


def test_dlae_matches_its_closed_form_and_is_tuned_with_lambda(data) -> None:
    model = create("ease", l2=10.0, dropout=0.5).fit(data)
    x = model._matrix(data).astype(np.float64)
    gram = x.T @ x
    penalty = np.diag(10.0 + 0.5 / 0.5 * np.diag(gram))  # Steck 2020: p / (1 - p) diag(G)
    b = np.eye(x.shape[1]) - np.linalg.inv(gram + penalty) @ penalty  # B = I - P Lambda
    np.fill_diagonal(b, 0.0)  # scores only seen items; zeroed as EASE's
    np.testing.assert_allclose(model.weights, b, atol=1e-5)
    tuned = create("ease", l2_grid=(10.0, 100.0), dropout_grid=(0.0, 0.5)).fit(data)
    assert tuned.tuning["l2"] in (10.0, 100.0) and tuned.tuning["dropout"] in (0.0, 0.5)
    assert (tuned.config.l2, tuned.config.dropout) == (tuned.tuning["l2"], tuned.tuning["dropout"])
    with pytest.raises(ValueError, match=r"dropout=1\.0 is invalid"):
        create("ease", dropout=1.0)


def test_ease_learns_the_taste_groups_and_folds_in_new_users(data) -> None:
    split = protocols.split(data, "P1")
    ease = evaluate(create("ease", l2=10.0, dropout=0.0).fit(split.train), split).metrics["ndcg"]
    popularity = evaluate(create("popularity").fit(split.train), split).metrics["ndcg"]
    assert ease > popularity + 0.1
    model = create("ease", l2=10.0).fit(data)
    new_even = model.recommend([UserQuery(history=("i0", "i2", "i4"))], k=5)[0]
    assert all(int(item[1:]) % 2 == 0 for item, _ in new_even)


def test_recommend_excludes_what_the_user_saw(data) -> None:
    model = create("ease", l2=10.0).fit(data)
    seen = set(model.histories["u0"])
    recommended = {item for item, _ in model.recommend([UserQuery(user_id="u0")], k=10)[0]}
    assert recommended and not (recommended & seen)


def test_trending_popularity_weighs_interactions_by_their_age(data, tmp_path: Path) -> None:
    model = create("popularity", half_life_hours=2.0).fit(data)
    frame = data.interactions
    age = (frame["interacted_at"].max() - frame["interacted_at"]).dt.total_seconds() / 3600
    weights = (0.5 ** (age / 2.0)).groupby(frame["item_id"]).sum()
    expected = weights.reindex(model.item_ids, fill_value=0.0).to_numpy()
    np.testing.assert_allclose(model.popularity, expected)
    # The newest interaction's item counts 1; one two hours older, a half.
    newest = frame.loc[frame["interacted_at"].idxmax(), "item_id"]
    assert model.popularity[model.item_index[newest]] >= 1.0
    loaded = load_model(model.save(tmp_path / "trending"))
    assert loaded.config.half_life_hours == 2.0
    np.testing.assert_array_equal(loaded.popularity, model.popularity)
    with pytest.raises(ValueError, match="half_life_hours=-1"):
        create("popularity", half_life_hours=-1)


def test_a_popularity_model_saved_without_a_config_still_loads(data, tmp_path: Path) -> None:
    import json

    path = create("popularity").fit(data).save(tmp_path / "old")
    manifest = json.loads((path / "model.json").read_text())
    manifest["config"] = None  # as versions registered before the half life existed
    (path / "model.json").write_text(json.dumps(manifest))
    assert load_model(path).config.half_life_hours is None


@pytest.mark.parametrize("kind", ["popularity", "ease"])
def test_save_and_load_score_identically(kind: str, data, tmp_path: Path) -> None:
    model = create(kind).fit(data)
    users = [UserQuery(user_id="u1"), UserQuery(history=("i3",))]
    loaded = load_model(model.save(tmp_path / kind))
    np.testing.assert_array_equal(loaded.score(users), model.score(users))
    assert loaded.kind == kind


def test_unknown_items_rank_last(data) -> None:
    model = create("popularity").fit(data)
    scores = model.score([UserQuery(user_id="u0")], ["i0", "not-an-item"])
    assert scores[0, 1] < scores[0, 0]


def test_bad_kind_and_config_are_named() -> None:
    with pytest.raises(ValueError, match="unknown 'bpr'"):
        create("bpr")
    with pytest.raises(ValueError, match=r"unknown config fields \['lambda'\]"):
        create("ease", **{"lambda": 3})


def test_two_stage_blends_and_round_trips(data, tmp_path: Path) -> None:
    model = create("two_stage", ranker="popularity", candidates=5, ranker_weight=0.5).fit(data)
    users = [UserQuery(user_id="u0"), UserQuery(history=("i1", "i3"))]
    scores = model.score(users)
    assert scores.shape == (2, len(model.item_ids)) and np.isfinite(scores).all()
    # The pool (at most 2 x 5 items) ranks above everything else.
    assert (np.sort(scores, axis=1)[:, -1] > np.sort(scores, axis=1)[:, -11]).all()
    loaded = load_model(model.save(tmp_path / "two_stage"))
    np.testing.assert_array_equal(loaded.score(users), scores)
    assert [part.kind for part in loaded.parts()] == ["two_stage", "ease", "popularity"]
    assert not loaded.reads_item_text  # neither part reads text: /rank's new items go elsewhere
    with pytest.raises(ValueError, match="ranker_weight"):
        create("two_stage", ranker_weight=2.0)


def test_two_stage_tunes_its_weight_on_a_validation_split(data) -> None:
    from training.models.two_stage import TwoStage

    grid = (0.0, 0.5, 1.0)
    model = create("two_stage", ranker="popularity", candidates=5, weight_grid=grid).fit(data)
    found = model.tuning["validation"]
    assert set(found) == {"0.0", "0.5", "1.0"}
    assert model.config.ranker_weight == max(grid, key=lambda w: found[str(w)])
    # The same figures, recomputed: each weight fixed, fitted on the validation split's
    # training part and evaluated on its held-out share (a quarter, as P1 holds out).
    assert model.config.validation_share == 0.25
    split = protocols.validation(data, model.config.validation_share, model.config.seed)
    assert len(split) > 0
    for weight in grid:
        probe = create("two_stage", ranker="popularity", candidates=5, ranker_weight=weight)
        value = evaluate(probe.fit(split.train), split, names=("ndcg",)).metrics["ndcg"]
        assert found[str(weight)] == pytest.approx(value, abs=1e-5)
    # The parts are fitted again on all of the data.
    assert model.retriever.histories == model.histories
    # A warm start keeps the champion's weight instead of tuning again.
    warm = TwoStage(type(model.config)(ranker="popularity", candidates=5, weight_grid=grid))
    warm.fit(data, warm_start=model)
    assert warm.config.ranker_weight == model.config.ranker_weight
    assert not hasattr(warm, "tuning")


def test_two_stage_scores_what_the_retriever_cannot_by_the_ranker_alone() -> None:
    """Items 3 and 4 never reached the retriever's training data and it reads no text: their
    blend is the ranker's standardised score alone, and the retriever's statistics come from
    the items it can score."""
    from types import SimpleNamespace

    from training.models.two_stage import TwoStage, TwoStageConfig, _standardise

    model = TwoStage(TwoStageConfig(candidates=5, ranker_weight=0.3))
    model._set_catalogue(["i0", "i1", "i2", "i3", "i4"])
    first = np.array([[3.0, 2.0, 1.0, 0.0, 0.0]])
    second = np.array([[0.5, 1.0, 0.0, 2.0, -1.0]])
    model.retriever = SimpleNamespace(_score=lambda users: first, reads_item_text=False,
                                      popularity=np.array([5.0, 3.0, 1.0, 0.0, 0.0]))  # fmt: skip
    model.ranker = SimpleNamespace(_score=lambda users: second)
    scores = model._score([model.resolve(UserQuery(history=()))])
    everything = np.ones_like(first, dtype=bool)
    known = np.array([[True, True, True, False, False]])
    ranker, retriever = _standardise(second, everything), _standardise(first, known)
    np.testing.assert_allclose(scores[0, 3:], ranker[0, 3:], rtol=1e-6)
    np.testing.assert_allclose(scores[0, :3], 0.7 * retriever[0, :3] + 0.3 * ranker[0, :3],
                               rtol=1e-6)  # fmt: skip
    # The new item the ranker likes best now leads; with a text-reading retriever it would not
    # be silent.
    assert np.argmax(scores[0]) == 3
    model.retriever.reads_item_text = True
    assert not model._retriever_silent().any()


def test_two_stage_pools_each_models_best_unseen_items() -> None:
    """A user who has seen the retriever's two best items: the pool takes its best two of the
    rest, not the seen ones, so with all the weight on the retriever its order among unseen
    items is the retriever's, and the ranker's favourite (i4) does not jump ahead of them."""
    from types import SimpleNamespace

    from training.models.two_stage import TwoStage, TwoStageConfig

    model = TwoStage(TwoStageConfig(candidates=2, ranker_weight=0.0))
    model._set_catalogue(["i0", "i1", "i2", "i3", "i4"])
    first = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    model.retriever = SimpleNamespace(_score=lambda users: first, reads_item_text=False,
                                      popularity=np.ones(5))  # fmt: skip
    model.ranker = SimpleNamespace(_score=lambda users: np.array([[0.0, 0.0, 0.0, 0.0, 5.0]]))
    scores = model._score([model.resolve(UserQuery(history=("i0", "i1")))])[0]
    assert list(np.argsort(-scores[2:]) + 2) == [2, 3, 4]
    assert scores[0] > scores[1] > scores[2]  # seen items keep the blend's order among the pool


def test_history_columns_are_kept_per_history_and_follow_the_catalogue(data) -> None:
    """The cached columns of a history: known items once each, in order; a new catalogue
    (a refit or a load) drops what was kept for the old one."""
    model = create("ease").fit(data)
    index = model.item_index
    history = ("i3", "nobody-knows", "i1", "i3")
    columns = model.history_columns(history)
    assert columns.tolist() == [index["i3"], index["i1"]]
    assert model.history_columns(list(history)) is columns  # a list asks for the same key
    model._set_catalogue(["i1", "i3"])
    assert model.history_columns(history).tolist() == [1, 0]
