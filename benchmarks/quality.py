"""Recommendation quality on the DESIGN.md protocols, every candidate against its references.

Trains each model on each protocol's training part and evaluates the held-out part. Prints
one JSON line per figure: NDCG@10 on every protocol and AUC on P2 (P3 is reported as P3a,
attributes only, and P3b, three revealed interactions). `popularity` and `ease_plain` (EASE,
lambda 300, no dropout, untuned) are computed in the same run as references; ratios are to
ease_plain.
With `--training-run`, it also times `recloop train` (the whole candidate set through the real
pipeline and MLflow) on the same data, against one ease_plain fit: the settings' default
candidates (`training.models`), or the kinds `--models` names (variants and references left
out: they are benchmark names, not kinds).

    .venv/bin/python -m benchmarks.quality --data ../shared/datasets/ml-100k --json
    .venv/bin/python -m benchmarks.quality --data PATH --protocol P2 --models two_tower
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.results import Row, add_output_options, publish
from recloop.settings import Settings
from training import protocols
from training.data import from_movielens
from training.evaluation import evaluate
from training.models import create
from training.pipeline import _environment_config

REFERENCE = "ease_plain"
MODELS = ("popularity", "ease_plain", "ease", "two_tower", "seq_transformer", "two_stage",
          "two_stage_two_tower")  # fmt: skip
METRICS = {"P2": ("ndcg", "auc")}
# Names that are a kind with a config of their own: the references, and two_stage with the
# two-tower ranker instead of its default sequential one.
VARIANTS = {
    REFERENCE: ("ease", {"l2": 300.0, "dropout": 0.0}),
    "two_stage_two_tower": ("two_stage", {"ranker": "two_tower"}),
}


def build(name: str, settings: Settings):
    kind, config = VARIANTS.get(name, (name, {}))
    return create(kind, **_environment_config(kind, settings, show_progress=False), **config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/datasets/ml-100k"),
        help="a MovieLens folder (ml-100k, ml-1m or ml-latest-small format)",
    )
    parser.add_argument(
        "--protocol",
        action="append",
        choices=protocols.PROTOCOLS,
        help="protocols to run (repeatable; default all)",
    )
    parser.add_argument("--models", help=f"comma-separated models (default: {','.join(MODELS)})")
    parser.add_argument(
        "--training-run",
        action="store_true",
        help="also time the full candidate set through `recloop train`",
    )
    parser.add_argument(
        "--training-run-only",
        action="store_true",
        help="time only `recloop train` (against one ease_plain fit)",
    )
    add_output_options(parser)
    args = parser.parse_args()
    data = from_movielens(args.data)
    chosen = [name.strip() for name in args.models.split(",")] if args.models else None
    names = list(chosen or MODELS)
    kinds = [n for n in chosen if n not in VARIANTS] if chosen else Settings().training.models
    for required in ("popularity", REFERENCE):
        if required not in names:
            names.insert(0, required)
    home = Path(tempfile.mkdtemp(prefix="recloop-quality-"))
    # Text embeddings are cached across runs beside the repository's own state.
    settings = Settings(home=home, training={"device": "auto"})
    cache = Path("var/cache/text").resolve()
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    if args.training_run_only:
        # The reference alone, then the pipeline: for when the quality rows are already current.
        started = time.perf_counter()
        build(REFERENCE, settings).fit(protocols.split(data, "P1", settings.seed).train)
        row = time_training_run(data, kinds, time.perf_counter() - started)
        publish([row], args, lambda r: f"{r.label}: {r.value:.1f} s (ratio {r.ratio:.1f})")
        return
    for protocol in args.protocol or protocols.PROTOCOLS:
        split = protocols.split(data, protocol, settings.seed)
        values: dict[str, dict[str, float]] = {}
        for name in names:
            model = build(name, settings)
            if hasattr(model.config, "text_cache_dir"):
                model.config.text_cache_dir = str(cache)
            started = time.perf_counter()
            model.fit(split.train)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
            values[name] = evaluate(model, split).metrics
        for metric in METRICS.get(protocol, ("ndcg",)):
            reference = values[REFERENCE][metric]
            for name in names:
                rows.append(
                    Row(
                        benchmark="quality",
                        metric=f"{metric}@10" if metric != "auc" else "auc",
                        value=values[name][metric],
                        unit="",
                        reference=REFERENCE,
                        reference_value=reference,
                        protocol=protocol,
                        model=name,
                        digits=4,
                    )
                )
    for name in names:
        rows.append(
            Row(
                benchmark="quality",
                metric="fit_s",
                value=seconds[name],
                unit="s",
                reference=REFERENCE,
                reference_value=seconds[REFERENCE],
                protocol=f"sum over {len(args.protocol or protocols.PROTOCOLS)} protocol fits, "
                f"{data.name}",
                model=name,
                digits=1,
            )
        )
    if args.training_run:
        rows.append(time_training_run(data, kinds, seconds[REFERENCE]))
    publish(
        rows,
        args,
        lambda r: (
            f"{r.protocol:6} {r.label:28} {r.value:.4f} (ratio to {r.reference} {r.ratio:.2f})"
        ),
    )


def time_training_run(data, kinds: list[str], ease_seconds: float) -> Row:
    from training.pipeline import run_training

    settings = Settings(home=Path(tempfile.mkdtemp(prefix="recloop-train-")))
    started = time.perf_counter()
    run_training(settings, kinds=kinds, data=data, show_progress=False)
    elapsed = time.perf_counter() - started
    return Row(
        benchmark="quality",
        metric="training_run_s",
        value=elapsed,
        unit="s",
        reference="ease_plain fits",
        reference_value=ease_seconds,
        protocol=f"recloop train: {', '.join(kinds)} on {data.name}, with MLflow",
        model="candidate set",
        digits=1,
    )


if __name__ == "__main__":
    main()
