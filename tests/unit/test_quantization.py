"""The int8 serving path: each kind scores like its float self, to int8 rounding, and a
quantised model refuses what it can no longer do (train, be saved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.training_data import synthetic
from training.data import InteractionData, UserQuery
from training.models import create, load_model
from training.quantization import int8_rows

# Small but real: the two-tower model encodes item text with the packaged MiniLM.
CONFIGS = {
    "ease": {"l2": 10.0},
    "two_tower": {"dim": 16, "hidden": 32, "epochs": 3, "batch_size": 32, "device": "cpu",
                  "show_progress": False},
    "seq_transformer": {"max_len": 8, "dim": 16, "heads": 2, "layers": 1, "epochs": 5,
                        "batch_size": 16, "use_text": True, "device": "cpu",
                        "show_progress": False},
}  # fmt: skip


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return synthetic()


@pytest.fixture(scope="module")
def saved(data: InteractionData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    cache = str(root / "text-cache")
    paths = {}
    for kind, config in CONFIGS.items():
        extra = {"text_cache_dir": cache} if kind != "ease" else {}
        paths[kind] = create(kind, **config, **extra).fit(data).save(root / kind)
    return paths


def test_int8_rows_rebuild_the_weights_to_rounding() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(50, 16)).astype(np.float32)
    weights[0] *= 1e-3  # a row of small values keeps its precision: one scale per row
    values, scale = int8_rows(weights)
    assert values.dtype == np.int8 and values.shape == (50, 16) and scale.shape == (50,)
    rebuilt = values * scale[:, None]
    assert (np.abs(rebuilt - weights) <= scale[:, None] / 2 + 1e-7).all()
    assert np.abs(rebuilt[0] - weights[0]).max() < 1e-4


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_each_kind_scores_as_its_float_self_to_int8_rounding(kind: str, saved, data) -> None:
    float_model = load_model(saved[kind])
    int8_model = load_model(saved[kind]).quantize(text_encoder=True)
    assert int8_model.quantized and not float_model.quantized
    users = [UserQuery(user_id=u) for u in sorted(float_model.histories)[:10]]
    users.append(UserQuery(user_id=None, history=("i0", "i2", "i4")))  # a new user's clicks
    exact = float_model.score(users)
    close = int8_model.score(users)
    assert close.shape == exact.shape and np.isfinite(close).all()
    spread = exact.max(axis=1) - exact.min(axis=1)
    # int8 rounding moves scores by a small share of each user's score range ...
    assert (np.abs(close - exact).max(axis=1) <= 0.1 * spread).all()
    # ... and keeps each user's best items among the best.
    for row in range(len(users)):
        best = set(np.argsort(-exact[row])[:5])
        assert len(best & set(np.argsort(-close[row])[:8])) >= 4


def test_two_tower_encodes_new_profiles_with_the_int8_encoder(saved) -> None:
    from training.text import _shared_encoder, default_model_path

    exact, model = load_model(saved["two_tower"]), load_model(saved["two_tower"]).quantize(True)
    # Without the text encoder, a two-tower model has nothing it would gain from int8.
    assert not load_model(saved["two_tower"]).quantize().quantized
    text = "I watch quiet dramas"
    vector, reference = model._profiles([text])[0], exact._profiles([text])[0]
    # int8 rounding, not another encoder: the unit vectors nearly coincide.
    assert float(vector @ reference) > 0.95 and not np.array_equal(vector, reference)
    _, encoder, _ = _shared_encoder(default_model_path(), "cpu", True)
    assert any("quantized" in type(m).__module__ for m in encoder.modules())
    profile = UserQuery(user_id=None, attributes={"age": 30, "gender": "F",
                        "occupation": "writer"}, profile_text=text)  # fmt: skip
    assert np.isfinite(model.score([profile])).all()
    # The int8 encoder's vectors are cached apart from the float encoder's.
    cached = {p.name for p in Path(model.config.text_cache_dir).glob("*.npz")}
    floats = [name for name in cached if not name.endswith("-int8.npz")]
    assert len(floats) == 1
    assert cached == {floats[0], floats[0].removesuffix(".npz") + "-int8.npz"}


def test_int8_ease_holds_a_quarter_of_the_weights(saved) -> None:
    exact, model = load_model(saved["ease"]), load_model(saved["ease"]).quantize()
    assert not hasattr(model, "weights") and model.int8_rows.dtype == np.int8
    assert model.int8_rows.nbytes == exact.weights.nbytes // 4
    users = [UserQuery(user_id=u) for u in sorted(model.histories)[:12]]  # a batch, too
    np.testing.assert_allclose(model.score(users), exact.score(users), atol=0.02)
    assert model.item_embeddings().shape == exact.weights.shape


def test_a_two_stage_model_quantises_its_parts(data, tmp_path: Path) -> None:
    model = create("two_stage", retriever="ease", ranker="seq_transformer", ranker_weight=0.5,
                   retriever_config=CONFIGS["ease"],
                   ranker_config={**CONFIGS["seq_transformer"], "use_text": False})  # fmt: skip
    saved = model.fit(data).save(tmp_path / "two_stage")
    int8 = load_model(saved).quantize()
    assert int8.quantized and int8.retriever.quantized and int8.ranker.quantized
    users = [UserQuery(user_id=u) for u in sorted(int8.histories)[:5]]
    assert np.isfinite(int8.score(users)).all() and int8.score(users).shape == (5, 30)


def test_popularity_has_nothing_to_quantise(data) -> None:
    model = create("popularity").fit(data)
    before = model.score([UserQuery(user_id="u1")])
    assert not model.quantize().quantized
    np.testing.assert_array_equal(model.score([UserQuery(user_id="u1")]), before)


def test_a_quantised_model_only_scores(saved, data, tmp_path: Path) -> None:
    model = load_model(saved["ease"]).quantize()
    with pytest.raises(RuntimeError, match="cannot be saved"):
        model.save(tmp_path / "int8")
    with pytest.raises(ValueError, match="int8-quantised models only score"):
        model.fit(data)
    with pytest.raises(ValueError, match="int8-quantised models only score"):
        create("ease", **CONFIGS["ease"]).fit(data, warm_start=model)


def test_the_int8_path_runs_on_the_cpu(saved) -> None:
    model = load_model(saved["seq_transformer"]).quantize()
    assert model.network.text.device == torch.device("cpu")
    assert np.isfinite(model.score([UserQuery(user_id="u0")])).all()
