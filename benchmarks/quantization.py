"""int8 quantisation (``serving.quantization = "int8"``): its speed gain and its quality loss.

    .venv/bin/python -m benchmarks.quantization --data ../shared/datasets/ml-100k --json

For each kind with an int8 path (``ease``, ``two_tower``, ``seq_transformer``) and each of P1
and P2: trains on the protocol's training part, saves the model, and loads it twice, once as
is and once quantised, as the service does. Both are measured in the same run:

- quality: NDCG@10 on P1 and P2 and AUC on P2, int8 against float (``loss_pct``: the relative
  drop in percent; the issue makes int8 the default only when every drop is under 1%);
- ``score_ms``: one request's scoring, one user per call as ``/recommend`` does, the median
  over the protocol's first 300 test users, int8 against float;
- ``profile_encode_ms``: encoding a new user's profile text at request time (the two-tower
  model's cold-start path), the int8 text encoder against the float one;
- ``table_kib``: the size of the score table the service holds (item vectors or EASE's
  weights), int8 against float32.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

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
    """(float32, int8) KiB of the score table the service holds."""
    from training.quantization import int8_bytes

    kind = model.kind
    if kind == "ease":
        return model.weights.nbytes / 1024, int8_bytes(model.int8_weights) / 1024
    if kind == "two_tower":
        return model.item_vectors.nbytes / 1024, int8_bytes(model.int8_items) / 1024
    table = model.int8_items.table[1 : len(model.item_ids) + 1]
    return table.numel() * 4 / 1024, int8_bytes(model.int8_items.scores) / 1024


def profile_encode_ms(model_path: Path) -> tuple[float, float]:
    """(float, int8) median ms to encode one new profile text through the two-tower model."""
    out = []
    for int8 in (False, True):
        model = load_model(model_path)
        if int8:
            model.quantize()
        model._profiles(["warm-up text"])
        out.append(median_ms([lambda t=t, m=model: m._profiles([t]) for t in PROFILES]))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/ml-100k"))
    parser.add_argument("--models", default=",".join(KINDS), help="comma-separated kinds")
    add_output_options(parser)
    args = parser.parse_args()
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
            exact, int8 = load_model(path), load_model(path).quantize()
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
            if protocol == "P1":  # speed and size: the same model on either protocol
                rows.append(Row("quantization", "score_ms", score_ms(int8, timed), "ms",
                                "float32 score_ms", score_ms(exact, timed),
                                protocol=f"1 user per call, median of {len(timed)}, {data.name}",
                                model=kind, digits=3))  # fmt: skip
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
