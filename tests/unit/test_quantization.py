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
from training.quantization import apply, int8_table

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


def test_an_int8_table_computes_the_float_product_to_rounding() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(50, 16)).astype(np.float32)
    weights[0] *= 1e-3  # a row of small values keeps its precision: one scale per row
    bias = rng.normal(size=50).astype(np.float32)
    x = rng.normal(size=(4, 16)).astype(np.float32)
    layer = int8_table(weights, bias)
    out = apply(layer, x)
    exact = x @ weights.T + bias
    assert out.shape == (4, 50) and out.dtype == np.float32
    np.testing.assert_allclose(out, exact, atol=0.05 * np.abs(exact).max())
    np.testing.assert_allclose(out[:, 0] - bias[0], exact[:, 0] - bias[0], atol=1e-3)
    assert any(type(m).__name__ == "Linear" and "quantized" in type(m).__module__
               for m in layer.modules())  # fmt: skip


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_each_kind_scores_as_its_float_self_to_int8_rounding(kind: str, saved, data) -> None:
    float_model = load_model(saved[kind])
    int8_model = load_model(saved[kind]).quantize()
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


def test_two_tower_serves_profiles_through_the_int8_encoder(saved) -> None:
    model = load_model(saved["two_tower"]).quantize()
    assert any("quantized" in type(m).__module__ for m in model.towers.users.modules())
    profile = UserQuery(user_id=None, attributes={"age": 30, "gender": "F",
                        "occupation": "writer"}, profile_text="I watch quiet dramas")  # fmt: skip
    scores = model.score([profile])
    assert np.isfinite(scores).all()
    # The int8 encoder's vectors are not written into the float encoder's disk cache.
    cache = Path(model.config.text_cache_dir)
    assert not list(cache.glob("*-int8.npz"))  # scoring does not touch the disk cache


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
