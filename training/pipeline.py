"""One training run: train the candidates, evaluate them, register them, run the gate.

Every candidate *recipe* (a kind and its configured overrides) is fitted on each protocol's
training part and evaluated on its held-out part, then fitted once more on all the data: that
last model is what gets registered and, if promoted, served. The champion is judged by its own
recipe evaluated in the same run on the same splits, so the gate compares like with like and
neither side has seen the other's test data. The DAG's tasks run in processes of their own:
``begin`` keeps the rows it read with the parent MLflow run and every later task reads that
copy, and each still checks that its data and evaluations carry the interactions digest the
run began on: the splits, and so the users' held-out items the gate pairs, are the same only
on the same data. Rows read from the feature store carry the verdict of the data gate that
checked them (``_checked_data``).

Warm start (``training.warm_start``): a neural recipe continues from the champion's weights on
only the newest ``warm_start_days`` of interactions. Its evaluation mirrors that: fitted on the
older part of each protocol's training data, then warm-started on the newest part.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, fields, is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from recloop.settings import Settings
from training import protocols
from training.data import InteractionData
from training.evaluation import Evaluation, evaluate
from training.models import ENVIRONMENT_FIELDS, create, environment_config, model_class
from training.models.base import Recommender
from training.off_policy import (
    OffPolicySelection,
    _weighs_off_policy,
    gate_off_policy,
    select_off_policy,
)
from training.promotion import Decision, decide

log = logging.getLogger(__name__)

# P3a and P3b hold out the same users: one fit serves both.
FIT_GROUP = {"P1": "P1", "P2": "P2", "P3a": "P3", "P3b": "P3", "P4": "P4", "recent": "recent"}


@dataclass
class Candidate:
    recipe: dict[str, Any]
    evaluations: dict[str, Evaluation]
    history: list[dict[str, Any]]
    seconds: float
    model: Recommender | None = None
    version: str | None = None
    run_id: str | None = None

    @property
    def kind(self) -> str:
        return self.recipe["kind"]

    def metrics(self) -> dict[str, dict[str, float]]:
        return {protocol: e.metrics for protocol, e in self.evaluations.items()}


@dataclass
class TrainingReport:
    candidates: list[dict[str, Any]]
    challenger: dict[str, Any] | None
    decision: dict[str, Any]
    champion_version: str | None
    champion_changed: bool
    data: dict[str, Any]
    seconds: float
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def recipe(kind: str, settings: Settings) -> dict[str, Any]:
    """A kind with the overrides the settings configure for it."""
    model_class(kind)  # fails early, naming the allowed kinds
    overrides = settings.training.model_config_overrides.get(kind, {})
    return {"kind": kind, "config": dict(sorted(overrides.items()))}


def _environment_config(kind: str, settings: Settings, show_progress: bool) -> dict[str, Any]:
    """Config fields that come from the environment, not the recipe (paths, device)."""
    return environment_config(kind, {
        "text_model": settings.training.text_model,
        "text_cache_dir": str(settings.text_cache_dir),
        "device": settings.training.device,
        "show_progress": show_progress,
        "seed": settings.seed,
    })  # fmt: skip


def fit_recipe(
    the_recipe: dict[str, Any],
    data: InteractionData,
    settings: Settings,
    *,
    warm_start: Recommender | None = None,
    show_progress: bool = True,
) -> Recommender:
    """Fit a recipe on data; with a warm-start model, only on the newest interval."""
    kind = the_recipe["kind"]
    model = create(
        kind, **_environment_config(kind, settings, show_progress), **the_recipe["config"]
    )
    if warm_start is None or not hasattr(model, "history"):
        return model.fit(data)
    return model.fit(split_at_warm_start(data, settings)[1], warm_start=warm_start)


def split_at_warm_start(
    data: InteractionData, settings: Settings
) -> tuple[InteractionData, InteractionData]:
    """(older, newest): the data before and within the newest warm-start interval."""
    at = data.interactions["interacted_at"]
    is_newest = at > at.max() - timedelta(days=settings.training.warm_start_days)
    return (data.with_interactions(data.interactions[~is_newest]),
            data.with_interactions(data.interactions[is_newest]))  # fmt: skip


def evaluate_recipe(
    the_recipe: dict[str, Any],
    splits: dict[str, protocols.Split],
    settings: Settings,
    *,
    warm: bool = False,
    show_progress: bool = True,
) -> tuple[dict[str, Evaluation], list[dict[str, Any]]]:
    """The recipe fitted and evaluated on each protocol's split (one fit per split)."""
    fitted: dict[str, Recommender] = {}
    evaluations: dict[str, Evaluation] = {}
    history: list[dict[str, Any]] = []
    for protocol, split in splits.items():
        group = FIT_GROUP[protocol]
        if group not in fitted:
            base = None
            if warm and model_class(the_recipe["kind"]).default_config() is not None:
                base = fit_recipe(
                    the_recipe,
                    split_at_warm_start(split.train, settings)[0],
                    settings,
                    show_progress=show_progress,
                )
            model = fit_recipe(
                the_recipe, split.train, settings, warm_start=base, show_progress=show_progress
            )
            fitted[group] = model
            history += [{"fit": group, **row} for row in getattr(model, "history", [])]
        evaluations[protocol] = evaluate(fitted[group], split)
    return evaluations, history


def train_candidate(
    the_recipe: dict[str, Any],
    data: InteractionData,
    splits: dict[str, protocols.Split],
    settings: Settings,
    *,
    warm_start: Recommender | None = None,
    show_progress: bool = True,
) -> Candidate:
    started = time.perf_counter()
    evaluations, history = evaluate_recipe(
        the_recipe, splits, settings, warm=warm_start is not None, show_progress=show_progress
    )
    model = fit_recipe(
        the_recipe, data, settings, warm_start=warm_start, show_progress=show_progress
    )
    history += [{"fit": "final", **row} for row in getattr(model, "history", [])]
    return Candidate(
        recipe=the_recipe,
        evaluations=evaluations,
        history=history,
        seconds=time.perf_counter() - started,
        model=model,
    )


def make_splits(data: InteractionData, settings: Settings) -> dict[str, protocols.Split]:
    """The splits of ``training.protocols``; a protocol the data cannot fill (no user
    qualifies, as P3b on a few days of clicks) is left out with a warning, except
    ``promotion.protocol``, which picks the challenger and decides the gate."""
    gate, share = settings.promotion.protocol, settings.training.recent_share
    names = list(settings.training.protocols)
    if gate not in names:
        names = [gate, *names]
    splits = {}
    for name in names:
        split = protocols.split(data, name, settings.seed, recent_share=share)
        if len(split) == 0:
            if name == gate:
                raise ValueError(
                    f"{gate}: no user qualifies in {data.name} "
                    f"({len(data.interactions)} interactions): nothing to train and evaluate on"
                    + (f" (in the newest {share:.0%})" if gate == "recent" else "")
                )
            log.warning("%s: no user qualifies in %s; protocol skipped", name, data.name)
            continue
        splits[name] = split
    return splits


def run_training(
    settings: Settings,
    *,
    kinds: list[str] | None = None,
    data: InteractionData | None = None,
    off_policy: dict[str, float] | None = None,
    show_progress: bool = True,
) -> TrainingReport:
    """Train, evaluate and register every candidate, then run the promotion gate: the same
    three steps the recloop_training DAG runs as tasks (begin, one train per kind, judge)."""
    started = time.perf_counter()
    data = _load_data(settings, data)
    plan = begin(settings, kinds=kinds, data=data)
    splits = make_splits(data, settings)
    summaries = [
        train_recipe(
            settings, the_recipe, plan, data=data, splits=splits, show_progress=show_progress
        )
        for the_recipe in plan["recipes"]
    ]
    report = judge(settings, summaries, plan, data=data, off_policy=off_policy,
                   show_progress=show_progress)  # fmt: skip
    report.seconds = time.perf_counter() - started
    return report


def begin(
    settings: Settings, *, kinds: list[str] | None = None, data: InteractionData | None = None
) -> dict[str, Any]:
    """Open the run: the recipes to train, the data snapshot, and the parent MLflow run that
    every candidate's run nests under. Plain data, as Airflow passes it between tasks."""
    import mlflow

    from training import registry

    frozen = data is None  # read from the feature store here: the run's tasks read this copy
    data = _load_data(settings, data)
    kinds = kinds or settings.training.models
    recipes = [recipe(kind, settings) for kind in kinds]
    client = registry.configure(settings)
    experiment = mlflow.get_experiment_by_name(registry.EXPERIMENT)
    parent = client.create_run(
        experiment.experiment_id, run_name="training",
        tags={"recloop.code_version": registry.code_version(), "recloop.step": "training"},
    )  # fmt: skip
    run_id = parent.info.run_id
    client.log_dict(run_id, data.describe(), "data_snapshot.json")
    for name, value in {"models": ",".join(kinds), "protocols": ",".join(
            settings.training.protocols), "warm_start": settings.training.warm_start,
            "seed": settings.seed}.items():  # fmt: skip
        client.log_param(run_id, name, value)
    plan = {"parent_run_id": run_id, "recipes": recipes, "data": data.describe(),
            "data_gate_passed": _data_gate_passed(data)}  # fmt: skip
    if frozen:
        # The DAG's tasks each load the data in their own process, while the hourly features
        # run may rewrite the export between them: every task would then train or judge on
        # other rows (a user's held-out items differ, so the gate's pairs would compare
        # different tests). They read the rows this task read, kept with the run, instead.
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            client.log_artifacts(run_id, str(data.save(folder)), TRAINING_DATA)
        plan["data_artifact"] = TRAINING_DATA
    return plan


def train_recipe(
    settings: Settings,
    the_recipe: dict[str, Any],
    plan: dict[str, Any],
    *,
    data: InteractionData | None = None,
    splits: dict[str, protocols.Split] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train one candidate recipe, evaluate it on the protocols and register it. ``splits``:
    the data's protocol splits when the caller already made them (one process, many recipes)."""
    from training import registry

    data = _load_data(settings, data, plan)
    _same_data(plan, data.snapshot.get("interactions_digest"), f"training {the_recipe['kind']}")
    if splits is None:
        splits = make_splits(data, settings)
    client = registry.configure(settings)
    warm = None
    champion = registry.alias_version(client, registry.CHAMPION)
    if (
        settings.training.warm_start
        and champion is not None
        and (registry.recipe_of(champion)["kind"] == the_recipe["kind"])
    ):
        warm = registry.download_model(settings, champion.version)
    log.info("training %s%s", the_recipe, " (warm start)" if warm else "")
    candidate = train_candidate(
        the_recipe, data, splits, settings, warm_start=warm, show_progress=show_progress
    )
    _log_candidate(settings, candidate, data, plan["parent_run_id"])
    return _summary(candidate)


def judge(
    settings: Settings,
    summaries: list[dict[str, Any]],
    plan: dict[str, Any],
    *,
    data: InteractionData | None = None,
    off_policy: dict[str, float] | None = None,
    show_progress: bool = True,
) -> TrainingReport:
    """Pick the challenger (best NDCG@10 on ``promotion.protocol``, or best off-policy CTR
    with ``promotion.criterion`` off_policy), run the gate against the champion (and, when
    the challenger loses, the refresh of the champion's recipe), move the aliases, and close
    the parent run."""
    from training import registry

    client = registry.configure(settings)
    if not summaries:
        raise ValueError("summaries: no candidate was trained")
    if data is None and plan.get("data_artifact"):
        data = _load_data(settings, None, plan)  # the rows the candidates were trained on
    champion_version = registry.alias_version(client, registry.CHAMPION)
    champion_recipe = registry.recipe_of(champion_version) if champion_version else None
    evaluations = {s["version"]: load_evaluations(s["run_id"]) for s in summaries}
    for s in summaries:
        for protocol, evaluation in evaluations[s["version"]].items():
            _same_data(plan, evaluation.data_digest,
                       f"{s['kind']} (version {s['version']}), {protocol}")  # fmt: skip
    gate = settings.promotion.protocol
    best = max(summaries, key=lambda s: s["metrics"][gate]["ndcg"])
    criterion, selection = "offline", None
    if settings.promotion.criterion == "off_policy" and off_policy is None:
        selection = select_off_policy(settings, summaries, champion_recipe, plan["data"],
                                      data=data, show_progress=show_progress)  # fmt: skip
        log.info("%s", selection.reason)
        if selection.chosen is not None:
            best, off_policy, criterion = selection.chosen, selection.estimate, "off_policy"
    # How many candidates it was picked from on these users: `recloop promote`, judging the
    # challenger again later, adjusts its interval as this gate does (promotion.decide).
    chosen_from = len(summaries) if criterion == "offline" else 1
    client.set_model_version_tag(registry.MODEL_NAME, best["version"], registry.CHOSEN_FROM_TAG,
                                 str(chosen_from))  # fmt: skip
    registry.set_alias(client, registry.CHALLENGER, best["version"])
    challenger = Candidate(best["recipe"], evaluations[best["version"]], [], best["seconds"],
                          version=best["version"], run_id=best["run_id"])  # fmt: skip
    # A challenger must beat popularity, unless it is popularity (then nothing beat it). Off
    # the policy, it was chosen over popularity's estimate already.
    popularity = next((evaluations[s["version"]] for s in summaries
                       if s["recipe"]["kind"] == "popularity" and s is not best
                       and criterion == "offline"), None)  # fmt: skip
    champion_evaluations = None
    # The champion's own recipe, retrained in this run on current data (when it was).
    refreshed = None
    if champion_recipe is not None:
        same = [s for s in summaries if s["recipe"] == champion_recipe]
        if same:
            refreshed = same[0]
            champion_evaluations = evaluations[refreshed["version"]]
        else:
            data = _load_data(settings, data, plan)
            _same_data(plan, data.snapshot.get("interactions_digest"),
                       "judge (the champion's recipe)")  # fmt: skip
            splits = make_splits(data, settings)
            champion_evaluations, _ = evaluate_recipe(
                champion_recipe, splits, settings, show_progress=show_progress
            )
    if off_policy is None and _weighs_off_policy(champion_evaluations, challenger.recipe,
                                                 champion_recipe):  # fmt: skip
        off_policy = gate_off_policy(settings, challenger.recipe, plan["data"], data=data,
                                     show_progress=show_progress)  # fmt: skip
    is_refresh = challenger.recipe == champion_recipe
    decision = decide(
        challenger.evaluations, champion_evaluations, settings.promotion,
        data_gate_passed=plan["data_gate_passed"], popularity=popularity,
        off_policy=off_policy if not (criterion == "off_policy" and is_refresh) else None,
        refresh=is_refresh, seed=settings.seed, criterion=criterion,
        # Picked as the best on the very users the gain is measured on (promotion.decide).
        chosen_from=chosen_from,
    )  # fmt: skip
    if selection is not None:
        numbers = {**decision.numbers, **_selection_numbers(selection, summaries)}
        decision = Decision(decision.promote, [selection.reason, *decision.reasons], numbers)
    promoted = challenger.version
    if not decision.promote and refreshed is not None and refreshed is not best:
        # The challenger lost to the champion's recipe, which this run retrained on current
        # data: those newer weights replace the champion's (a refresh, judged as one), or a
        # loop whose challengers keep losing would serve the same old weights for ever.
        refresh = decide(
            evaluations[refreshed["version"]], None, settings.promotion,
            data_gate_passed=plan["data_gate_passed"],
            popularity=popularity if refreshed["recipe"]["kind"] != "popularity"
            and criterion == "offline" else None,
            refresh=True, seed=settings.seed,
        )  # fmt: skip
        numbers = {**decision.numbers, **{f"refresh.{k}": v for k, v in refresh.numbers.items()}}
        decision = Decision(refresh.promote, decision.reasons + refresh.reasons, numbers)
        promoted = refreshed["version"]
    if decision.promote:
        decision = _move_champion(settings, client, decision, promoted, champion_version)
    _log_decision(decision, challenger, champion_version, plan["parent_run_id"],
                  promoted=promoted if decision.promote else None)  # fmt: skip
    client.set_terminated(plan["parent_run_id"])
    new_champion = registry.alias_version(client, registry.CHAMPION)
    return TrainingReport(
        candidates=summaries,
        challenger=best,
        decision=decision.to_dict(),
        champion_version=str(new_champion.version) if new_champion else None,
        champion_changed=decision.promote,
        data=plan["data"],
        seconds=sum(s["seconds"] for s in summaries),
        run_id=plan["parent_run_id"],
    )


def _selection_numbers(
    selection: OffPolicySelection, summaries: list[dict[str, Any]]
) -> dict[str, float]:
    """Every candidate's off-policy CTR and matches, for the promotion run's metrics."""
    kinds = {s["version"]: s["recipe"]["kind"] for s in summaries}
    numbers = {}
    for version, values in selection.estimates.items():
        name = (f"selection.{kinds[version]}.v{version}" if version in kinds
                else "selection.champion_recipe")  # fmt: skip
        for key in ("challenger_value", "challenger_low", "challenger_high", "matches",
                    "unlogged_share", "support_value", "support_high"):  # fmt: skip
            if key in values:
                numbers[f"{name}.{key.removeprefix('challenger_')}"] = values[key]
    return numbers


EVALUATIONS = "evaluations.npz"
TRAINING_DATA = "training_data"  # the parent run's artifact: the rows every task reads


def save_evaluations(evaluations: dict[str, Evaluation], path: Path) -> Path:
    """Per-user values of every protocol, so the gate can resample them in another task: per
    protocol ``P1|<metric>`` arrays, ``P1|user_ids`` (who each value is, where the split names
    its users), ``P1|data_digest`` (the data the split came from, where the source records
    one), ``P1|users`` (row numbers, for tracing: never paired on) and ``P1|k``. Strings are
    saved as fixed-width text arrays, which load without pickle."""
    import numpy as np

    arrays = {}
    for protocol, evaluation in evaluations.items():
        arrays[f"{protocol}|users"] = np.asarray(evaluation.users, dtype=np.int64)
        arrays[f"{protocol}|k"] = np.asarray(evaluation.k)
        if evaluation.user_ids is not None:
            arrays[f"{protocol}|user_ids"] = np.asarray(evaluation.user_ids, dtype=str)
        if evaluation.data_digest is not None:
            arrays[f"{protocol}|data_digest"] = np.asarray(evaluation.data_digest, dtype=str)
        for name, values in evaluation.per_user.items():
            arrays[f"{protocol}|{name}"] = values
    np.savez(path, **arrays)
    return path


def read_evaluations(path: Path | str) -> dict[str, Evaluation]:
    """What ``save_evaluations`` wrote. A file saved before user ids and digests were
    recorded loads with ``user_ids`` and ``data_digest`` None (its ``users`` are row numbers,
    which name users only within the split they came from): the gate never pairs such an
    evaluation (``training.promotion.unpaired``), the judge of a run refuses it and a
    promotion on online evidence reports no offline gain for it."""
    import numpy as np

    grouped: dict[str, dict[str, Any]] = {}
    with np.load(path, allow_pickle=False) as arrays:
        for key in arrays.files:
            protocol, name = key.split("|")
            grouped.setdefault(protocol, {})[name] = arrays[key]
    evaluations = {}
    for protocol, values in grouped.items():
        rows, k = values.pop("users"), int(values.pop("k"))
        user_ids, digest = values.pop("user_ids", None), values.pop("data_digest", None)
        evaluations[protocol] = Evaluation(
            protocol=protocol, k=k, metrics={n: float(v.mean()) for n, v in values.items()},
            per_user=values, users=rows.tolist(),
            user_ids=None if user_ids is None else [str(u) for u in user_ids],
            data_digest=None if digest is None else str(digest),
        )  # fmt: skip
    return evaluations


def load_evaluations(run_id: str) -> dict[str, Evaluation]:
    import mlflow

    return read_evaluations(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=EVALUATIONS)
    )


def _same_data(plan: dict[str, Any], digest: str | None, what: str) -> None:
    """Refuse ``what`` unless its data has the interactions digest the run's plan recorded.
    The tasks read the rows ``begin`` kept, but an evaluation or a copy from elsewhere (an
    hourly features run rewrites the export between tasks) would hold other users' held-out
    items, and the gate's per-user pairs would compare different tests, not different models."""
    recorded = plan["data"].get("interactions_digest")
    if digest != recorded:
        raise ValueError(
            f"{what}: the data's interactions digest is {digest or 'unknown'}, but the "
            f"training run {plan['parent_run_id']} began on {recorded or 'unknown'}: the "
            "feature store's export changed between the run's tasks, and evaluations of "
            "different data cannot be compared user by user; start a new training run"
        )


def _not_paired_across_runs(
    version: str, champion_version: str, mine: Evaluation | None, theirs: Evaluation | None
) -> str | None:
    """Why two versions' evaluations, each from its own training run, do not pair, or None.
    Within a run every candidate is evaluated on the same splits; across runs only where the
    data is the same (one interactions digest; the seed is assumed unchanged). A source
    folder records no digest, so its runs cannot be shown to share their data."""
    if mine is None or theirs is None:
        return None  # decide names the missing evaluation itself
    if mine.data_digest is not None and mine.data_digest == theirs.data_digest:
        return None
    if mine.data_digest is None or theirs.data_digest is None:
        data = "data without a recorded digest, which cannot be shown to be the same"
    else:
        data = (f"different data (interactions digests {mine.data_digest} and "
                f"{theirs.data_digest})")  # fmt: skip
    return (
        f"version {version} and champion {champion_version} were evaluated in their own "
        f"training runs on {data}: their held-out interactions differ"
    )


def _data_gate_passed(data: InteractionData) -> bool:
    """Whether the data gate passed the batch ``data`` was read from (``_checked_data``)."""
    if data.snapshot.get("source") != "feast":
        # Read straight from a source folder (a benchmark, `recloop train --data`): no feature
        # batch went through the gate, so there is no failed gate to respect.
        return True
    return bool((data.snapshot.get("data_gate") or {}).get("passed"))


BUILD_WAIT_SECONDS = 600.0  # how long begin waits for a features run's gate


def _checked_data(settings: Settings) -> InteractionData:
    """The feature store's training set, with the outcome of the gate that checked it in its
    snapshot (``data_gate``; absent before any gate ran), which ``_data_gate_passed`` reads.

    dbt rewrites the exports before the gate checks them, and the gate's outcome file says
    so meanwhile (``recloop.features.gate.mark_building``). So the rows are read only while
    no build is marked, and again if the outcome changed during the read (a build began, or
    a gate finished): what is returned is the batch that outcome judged. Waits at most
    ``BUILD_WAIT_SECONDS`` for a marked build, then refuses by name (the task's retry waits
    again): a build that never reached its gate (dbt failed) leaves the exports unchecked
    until the next features run."""
    from recloop.features.gate import last_outcome
    from training.datasets import from_feature_store

    deadline = time.monotonic() + BUILD_WAIT_SECONDS
    while True:
        before = last_outcome(settings)
        if before is None or "building" not in before:
            data = from_feature_store(settings)
            if last_outcome(settings) == before:
                if before is not None:
                    data.snapshot["data_gate"] = before
                return data
            continue
        if time.monotonic() > deadline:
            building = before["building"]
            raise RuntimeError(
                f"a features run began rebuilding the marts at {building['since']} (batch "
                f"ending {building['end']}) and no gate has checked them since: training "
                "reads no unchecked batch (it waits for that run's gate, or the next run's)"
            )
        log.info("a features run is rebuilding the marts: waiting for its gate")
        time.sleep(2.0)


def _summary(candidate: Candidate) -> dict[str, Any]:
    return {
        "kind": candidate.kind,
        "recipe": candidate.recipe,
        "version": candidate.version,
        "run_id": candidate.run_id,
        "seconds": round(candidate.seconds, 1),
        "metrics": candidate.metrics(),
    }


def _log_candidate(
    settings: Settings, candidate: Candidate, data: InteractionData, parent_run_id: str
) -> None:
    import tempfile

    import mlflow

    from training import plots, registry

    code = registry.code_version()
    with mlflow.start_run(run_name=candidate.kind, parent_run_id=parent_run_id) as run:
        candidate.run_id = run.info.run_id
        mlflow.set_tags({"recloop.code_version": code, "recloop.kind": candidate.kind})
        config = candidate.model.config
        params = {
            "kind": candidate.kind,
            **(
                {f.name: getattr(config, f.name) for f in fields(config)}
                if is_dataclass(config)
                else {}
            ),
        }
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for evaluation in candidate.evaluations.values():
            mlflow.log_metrics(evaluation.named())
        mlflow.log_metric("training_seconds", candidate.seconds)
        for row in candidate.history:
            if row["fit"] == "final":
                mlflow.log_metric("final.loss", row["loss"], step=row["epoch"])
        mlflow.log_dict(data.describe(), "data_snapshot.json")
        with tempfile.TemporaryDirectory() as folder:
            mlflow.log_artifact(
                str(save_evaluations(candidate.evaluations, Path(folder) / EVALUATIONS))
            )
        mlflow.log_input(
            mlflow.data.from_pandas(
                data.interactions[["user_id", "item_id", "interacted_at"]].head(0).assign(),
                name=data.name,
                digest=data.snapshot.get("interactions_digest"),
            ),
            context="training",
        )
        if candidate.history:
            figure = plots.training_curve(candidate.history, f"{candidate.kind}: training loss")
            mlflow.log_figure(figure, "plots/training_curve.png")
            plots.close(figure)
        figure = plots.metric_bars(candidate.metrics(), f"{candidate.kind}: metrics at 10")
        mlflow.log_figure(figure, "plots/metrics_by_protocol.png")
        plots.close(figure)
        mlflow.log_text(
            registry.model_card(
                candidate.kind,
                candidate.recipe,
                candidate.metrics(),
                data.describe(),
                code,
                candidate.seconds,
            ),
            "model_card.md",
        )
        # The folder is logged under its own name: "model", the ARTIFACT the loaders expect.
        model_dir = settings.models_dir / run.info.run_id / registry.ARTIFACT
        candidate.model.save(model_dir)
        candidate.version = registry.log_model_version(model_dir, recipe=candidate.recipe)


def _log_decision(
    decision: Decision,
    challenger: Candidate,
    champion_version,
    parent_run_id: str | None = None,
    *,
    promoted: str | None = None,
) -> None:
    import mlflow

    with mlflow.start_run(run_name="promotion", parent_run_id=parent_run_id):
        mlflow.set_tags(
            {
                "recloop.step": "promotion",
                "recloop.promoted": str(decision.promote),
                "challenger_version": challenger.version,
                "champion_version": champion_version.version if champion_version else "none",
                "promoted_version": promoted or "none",
            }
        )
        mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in decision.numbers.items()})
        mlflow.log_dict(decision.to_dict(), "decision.json")
    log.info("promotion: %s", json.dumps(decision.to_dict()))


def _move_champion(settings: Settings, client, decision: Decision, version: str,
                   judged_against) -> Decision:  # fmt: skip
    """Move ``champion`` to ``version`` for a passing ``decision``, unless it no longer
    points at ``judged_against`` (the champion version read before the gate, or None):
    then another promotion (the other DAG's, an operator's) replaced it meanwhile, the
    decision compared with a champion that no longer serves, and nothing moves. The
    decision that comes back says which happened."""
    from training import registry

    expected = str(judged_against.version) if judged_against is not None else None
    now = registry.move_champion(settings, client, str(version), expected)
    if now is None:
        return decision
    reason = (f"not promoted: the champion moved from {expected or 'none'} to {now} while this "
              f"was judged (another promotion); the next gate judges against {now}")  # fmt: skip
    log.warning("%s", reason)
    return Decision(False, [*decision.reasons, reason], decision.numbers)


def _load_data(
    settings: Settings, data: InteractionData | None, plan: dict[str, Any] | None = None
) -> InteractionData:
    """``data`` when given; else the rows the run's ``begin`` kept with the ``plan``'s parent
    run; else the feature store's training set as its last data gate checked it."""
    if data is not None:
        return data
    if plan is not None and plan.get("data_artifact"):
        import tempfile

        import mlflow

        from training import registry

        registry.configure(settings)
        with tempfile.TemporaryDirectory() as folder:
            path = mlflow.artifacts.download_artifacts(
                run_id=plan["parent_run_id"], artifact_path=plan["data_artifact"], dst_path=folder
            )
            return InteractionData.load(path)
    return _checked_data(settings)


def promote_on_evidence(
    settings: Settings, version: str, evidence: dict[str, float], against: str | None = None
) -> Decision:
    """The gate for a registered ``version`` that the hourly metrics found better than the
    serving champion on the champion's own logged slates (``monitoring.hourly``: its doubly
    robust CTR less the champion's greedy slates', paired, with alpha spent over candidates
    and hourly looks). ``evidence`` holds that gain (``gain_value``, ``gain_low``,
    ``gain_high``), both CTRs (``challenger_value``, ``baseline_value``), ``impressions`` and
    ``alpha``, and the same gain on the new users' impressions (``cold_*``) where there were
    any. The version is judged with the off-policy criterion (``training.promotion.decide``):
    the latest data gate, if any ran, must have passed, the gain's lower bound must clear
    ``promotion.off_policy_margin``, and cold start must hold as
    ``promotion.off_policy_cold_start`` says (P2/P3 from each version's own training run).
    A pass moves the ``champion`` alias, which the service watches; the decision is a
    ``promotion`` run in MLflow either way. ``against``: the champion version the evidence
    was measured against (the hour's stamp); if another promotion has replaced it since,
    the evidence compares with a model that no longer serves, and nothing is promoted."""
    from recloop.features.gate import last_outcome
    from training import registry

    client = registry.configure(settings)
    champion = registry.alias_version(client, registry.CHAMPION)
    if champion is None:
        raise LookupError("no version carries the alias 'champion': nothing to compare with")
    if str(champion.version) == str(version):
        return Decision(False, [f"version {version} is already the champion"])
    if against is not None and str(champion.version) != str(against):
        return Decision(False, [
            f"version {version}'s evidence was measured against champion {against}, and the "
            f"champion is now {champion.version} (promoted since): not promoted on it"
        ])  # fmt: skip
    candidate = client.get_model_version(registry.MODEL_NAME, str(version))
    evaluations = load_evaluations(candidate.run_id)
    champion_evaluations = load_evaluations(champion.run_id)
    gate = settings.promotion.protocol
    # Two training runs: the same user ids, but (unless the data was the same) other held-out
    # items, so a paired bootstrap's pairs would not isolate the models. The off-policy gain
    # decides here anyway; the offline gain is reported only where it is a paired one.
    not_paired = _not_paired_across_runs(
        str(version), str(champion.version), evaluations.get(gate), champion_evaluations.get(gate)
    )
    outcome = last_outcome(settings)
    decision = decide(
        evaluations, champion_evaluations, settings.promotion,
        # No gate ever ran where models are trained from a source folder: nothing to respect.
        data_gate_passed=outcome is None or bool(outcome["passed"]), off_policy=evidence,
        criterion="off_policy", seed=settings.seed, not_paired=not_paired,
    )  # fmt: skip
    reason = (f"online evidence: version {version} against champion {champion.version} on the "
              "champion's logged slates (recloop_metrics)")  # fmt: skip
    decision = Decision(decision.promote, [reason, *decision.reasons], decision.numbers)
    challenger = Candidate(registry.recipe_of(candidate), evaluations, [], 0.0,
                           version=str(version), run_id=candidate.run_id)  # fmt: skip
    if decision.promote:
        decision = _move_champion(settings, client, decision, str(version), champion)
    _log_decision(decision, challenger, champion,
                  promoted=str(version) if decision.promote else None)  # fmt: skip
    return decision


def promote_challenger(
    settings: Settings,
    *,
    data: InteractionData | None = None,
    off_policy: dict[str, float] | None = None,
    show_progress: bool = True,
) -> Decision:
    """Run the gate for the version behind ``challenger`` against ``champion``, on the
    current data, and move the champion alias when it passes (``recloop promote``)."""

    from training import registry

    data = _load_data(settings, data)
    client = registry.configure(settings)
    challenger = registry.alias_version(client, registry.CHALLENGER)
    if challenger is None:
        raise LookupError("no version carries the alias 'challenger': run `recloop train` first")
    champion = registry.alias_version(client, registry.CHAMPION)
    splits = make_splits(data, settings)
    challenger_evaluations, _ = evaluate_recipe(
        registry.recipe_of(challenger), splits, settings, show_progress=show_progress
    )
    champion_evaluations = None
    if champion is not None and champion.version != challenger.version:
        champion_evaluations, _ = evaluate_recipe(
            registry.recipe_of(champion), splits, settings, show_progress=show_progress
        )
    if champion is not None and champion.version == challenger.version:
        return Decision(False, [f"version {challenger.version} is already the champion"])
    popularity = None
    if registry.recipe_of(challenger)["kind"] != "popularity":
        popularity, _ = evaluate_recipe(recipe("popularity", settings), splits, settings)
    champion_recipe = registry.recipe_of(champion) if champion is not None else None
    if off_policy is None and _weighs_off_policy(
        champion_evaluations, registry.recipe_of(challenger), champion_recipe
    ):
        off_policy = gate_off_policy(settings, registry.recipe_of(challenger), data.describe(),
                                     data=data, show_progress=show_progress)  # fmt: skip
    decision = decide(
        challenger_evaluations, champion_evaluations, settings.promotion,
        data_gate_passed=_data_gate_passed(data), popularity=popularity,
        off_policy=off_policy, seed=settings.seed,
        # The training run picked it as the best of this many on the same splits (same seed):
        # judged again, its interval is adjusted as that run's gate adjusted it.
        chosen_from=int(challenger.tags.get(registry.CHOSEN_FROM_TAG, "1")),
    )  # fmt: skip
    candidate = Candidate(registry.recipe_of(challenger), challenger_evaluations, [], 0.0,
                          version=challenger.version)  # fmt: skip
    if decision.promote:
        decision = _move_champion(settings, client, decision, challenger.version, champion)
    _log_decision(decision, candidate, champion,
                  promoted=challenger.version if decision.promote else None)  # fmt: skip
    return decision


def evaluate_reference(
    settings: Settings,
    reference: str,
    protocol: str,
    *,
    data: InteractionData | None = None,
    as_is: bool = False,
    show_progress: bool = True,
) -> Evaluation:
    """Evaluate a registered model (alias, version or models:/ URI) on a protocol.

    By default its *recipe* is refitted on the protocol's training part: a registered model was
    fitted on all current data, so its own weights have seen the held-out part. ``as_is``
    scores with the stored weights, which is honest only on data the model never saw.
    """
    from training import registry

    data = _load_data(settings, data)
    split = protocols.split(
        data, protocol, settings.seed, recent_share=settings.training.recent_share
    )
    model = registry.download_model(settings, reference)
    if as_is:
        return evaluate(model, split)
    the_recipe = {"kind": model.kind, "config": _recipe_config(model)}
    evaluations, _ = evaluate_recipe(
        the_recipe, {protocol: split}, settings, show_progress=show_progress
    )
    return evaluations[protocol]


def _recipe_config(model: Recommender) -> dict[str, Any]:
    # The stored config minus what the environment sets (paths, device, progress).
    config = model.config
    if not is_dataclass(config):
        return {}
    return {
        f.name: getattr(config, f.name) for f in fields(config)
        if f.name not in ENVIRONMENT_FIELDS
    }  # fmt: skip
