"""int8 quantisation (``serving.quantization = "int8"``): its speed gain and its quality loss.

    .venv/bin/python -m benchmarks.quantization --data ../shared/datasets/ml-100k --json

For each kind with an int8 path (``ease``, ``two_tower``, ``seq_transformer``) and each of P1
and P2: trains on the protocol's training part, saves the model, and loads it twice, once as
is and once quantised, as the service does. Both are measured in the same run:

- quality: NDCG@10 on P1 and P2 and AUC on P2, int8 against float (``loss_pct``: the relative
  drop in percent; the issue makes int8 the default only when every drop is under 1%). The
  two-tower model's int8 part is its text encoder, which a request runs only for a new user's
  profile text (MovieLens has none): the catalogue's texts stand in, with the two encoders'
  agreement and P2 (new items, scored from text alone) on int8-encoded text;
- ``score_ms``: one request's scoring, one user per call as ``/recommend`` does, the median
  over the protocol's first 300 test users, int8 against float, with the service's thread
  count (``serving.compute_threads``);
- ``profile_encode_ms``: encoding a new user's profile text at request time (the two-tower
  model's cold-start path), the int8 text encoder against the float one;
- ``table_kib``: the size of EASE's weights the service holds, int8 against float32.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.results import Row, add_output_options, publish
from recloop.settings import Settings
from training import protocols
from training.data import from_movielens
from training.evaluation import evaluate
from training.models import create, load_model
from training.pipeline import _environment_config

KINDS = ("ease", "two_tower", "seq_transformer")
PROTOCOLS = ("P1", "P2")
METRICS = {"P1": ("ndcg",), "P2": ("ndcg", "auc")}
TIMED_USERS = 300
PROFILES = [
    f"A {age} year old {job} who likes {taste}."
    for age in (19, 27, 35, 44, 58)
    for job in ("nurse", "student", "programmer", "lawyer")
    for taste in ("old westerns", "romantic comedies", "space operas", "crime dramas")
]  # 80 distinct texts: every one is new to the model, so each call encodes


def median_ms(calls) -> float:
    times = []
    for call in calls:
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def score_ms(model, queries) -> float:
    model.score(queries[:5])  # warm-up
    return median_ms([lambda q=q: model.score([q]) for q in queries])


def table_kib(model) -> tuple[float, float]:
    """(float32, int8) KiB of EASE's items x items weights, the one table int8 replaces."""
    small = model.int8_rows.nbytes + model.int8_scale.nbytes
    return model.int8_rows.size * 4 / 1024, small / 1024


def profile_encode_ms(model_path: Path) -> tuple[float, float]:
    """(float, int8) median ms to encode one new profile text through the two-tower model."""
    out = []
    for int8 in (False, True):
        model = load_model(model_path)
        if int8:
            model.quantize(text_encoder=True)
        model._profiles(["warm-up text"])
        out.append(median_ms([lambda t=t, m=model: m._profiles([t]) for t in PROFILES]))
    return out[0], out[1]


def int8_text_rows(path: Path, split) -> list[Row]:
    """What the int8 text encoder costs in quality. A request only encodes a new user's
    profile text (MovieLens has none), so the catalogue's texts stand in: encoded by both
    encoders, their agreement, and P2 (new items, ranked from text alone) with the new items'
    vectors from the int8 encoder."""
    import torch

    from training.data import item_text
    from training.text import encode

    texts = [item_text(row) for _, row in split.train.items.iterrows()]
    exact = encode(texts, show_progress=False)
    small = encode(texts, show_progress=False, int8=True)
    cosine = (exact * small).sum(axis=1)
    neighbours = []
    for vectors in (exact, small):
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        neighbours.append(np.argsort(-similarity, axis=1)[:, :10])
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(*neighbours, strict=True)])
    model, reference = load_model(path), load_model(path)
    model.text = torch.from_numpy(small)
    model._set_item_features()  # the history the user tower pools reads the same text
    model._precompute_items()
    value = evaluate(model, split).metrics["ndcg"]
    ref = evaluate(reference, split).metrics["ndcg"]
    where = f"{len(texts)} item texts, int8 vs float32 MiniLM"
    return [
        Row("quantization", "text_cosine_mean", float(cosine.mean()), "", "float32", 1.0,
            protocol=where, model="two_tower", digits=4),
        Row("quantization", "text_neighbours@10", float(overlap), "share", "float32", 1.0,
            protocol=where, model="two_tower", digits=3),
        Row("quantization", "ndcg@10 int8 text", value, "", "float32", ref,
            protocol="P2", model="two_tower", digits=4),
        Row("quantization", "ndcg@10 int8 text_loss_pct", 100 * (ref - value) / ref, "%",
            "goal (default only below)", 1.0, protocol="P2", model="two_tower", digits=2),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/ml-100k"))
    parser.add_argument("--models", default=",".join(KINDS), help="comma-separated kinds")
    add_output_options(parser)
    args = parser.parse_args()
    # Timed at the service's shape: one thread for BLAS and torch (serving.compute_threads).
    from serving.engine import limit_compute_threads

    limit_compute_threads(Settings().serving.compute_threads)
    data = from_movielens(args.data)
    kinds = [k.strip() for k in args.models.split(",")]
    home = Path(tempfile.mkdtemp(prefix="recloop-int8-"))
    settings = Settings(home=home, training={"device": "cpu"})
    cache = str(Path("var/cache/text").resolve())  # shared with benchmarks.quality
    root = Path(tempfile.mkdtemp(prefix="recloop-int8-models-"))
    rows: list[Row] = []
    for protocol in PROTOCOLS:
        split = protocols.split(data, protocol, settings.seed)
        timed = split.queries[:TIMED_USERS]
        for kind in kinds:
            model = create(kind, **_environment_config(kind, settings, show_progress=False))
            if hasattr(model.config, "text_cache_dir"):
                model.config.text_cache_dir = cache
            path = model.fit(split.train).save(root / f"{protocol}-{kind}")
            exact, int8 = load_model(path), load_model(path).quantize(text_encoder=True)
            values = {name: evaluate(m, split).metrics for name, m in (("float", exact),
                                                                       ("int8", int8))}  # fmt: skip
            for metric in METRICS[protocol]:
                label = "auc" if metric == "auc" else f"{metric}@10"
                ref, value = values["float"][metric], values["int8"][metric]
                rows.append(Row("quantization", label, value, "", "float32", ref,
                                protocol=protocol, model=kind, digits=4))  # fmt: skip
                rows.append(Row("quantization", f"{label}_loss_pct", 100 * (ref - value) / ref,
                                "%", "goal (default only below)", 1.0, protocol=protocol,
                                model=kind, digits=2))  # fmt: skip
            if kind == "two_tower" and protocol == "P2":
                rows += int8_text_rows(path, split)
            if protocol == "P1":  # speed and size: the same model on either protocol
                rows.append(Row("quantization", "score_ms", score_ms(int8, timed), "ms",
                                "float32 score_ms", score_ms(exact, timed),
                                protocol=f"1 user per call, median of {len(timed)}, {data.name}",
                                model=kind, digits=3))  # fmt: skip
                if kind == "ease":
                    full, small = table_kib(int8)
                    rows.append(Row("quantization", "table_kib", small, "KiB", "float32", full,
                                    protocol=f"score table, {len(int8.item_ids)} items",
                                    model=kind))  # fmt: skip
                if kind == "two_tower":
                    full_ms, small_ms = profile_encode_ms(path)
                    rows.append(Row("quantization", "profile_encode_ms", small_ms, "ms",
                                    "float32 encoder", full_ms,
                                    protocol=f"1 new profile text per call, median of "
                                    f"{len(PROFILES)}", model=kind, digits=2))  # fmt: skip
    publish(rows, args, lambda r: f"{r.label:36} {r.value:10.4f} ({r.ratio:.3f}) {r.protocol}")


if __name__ == "__main__":
    main()
