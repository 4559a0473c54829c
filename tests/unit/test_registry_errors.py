"""The registry's errors and the pipeline's refusals, on a temporary SQLite MLflow registry or
a stand-in client: nothing here needs a service."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from recloop.settings import Settings
from tests.unit.training_data import synthetic
from training import pipeline, registry
from training.evaluation import Evaluation


def locked(*_args, **_kwargs):
    # What MLflow's SQLAlchemy store raises for a SQLite file locked past its busy timeout or
    # a dropped Postgres connection (sqlalchemy OperationalError).
    raise MlflowException("(sqlite3.OperationalError) database is locked",
                          error_code=TEMPORARILY_UNAVAILABLE)  # fmt: skip


def register(client, settings: Settings, kind: str) -> str:
    """A version of ``kind``'s recipe, with the tags the gate reads (no model logged)."""
    the_recipe = pipeline.recipe(kind, settings)
    version = client.create_model_version(
        registry.MODEL_NAME, source=(settings.home / "model").as_uri(),
        tags={registry.RECIPE_TAG: json.dumps(the_recipe, sort_keys=True), "kind": kind},
    )  # fmt: skip
    return str(version.version)


def test_a_missing_alias_is_none_on_a_real_registry(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    client = registry.configure(settings)
    # Before the first training the model is not even registered (RESOURCE_DOES_NOT_EXIST).
    assert registry.alias_version(client, registry.CHAMPION) is None
    client.create_registered_model(registry.MODEL_NAME)
    version = register(client, settings, "popularity")
    # Registered, but no version carries the alias (INVALID_PARAMETER_VALUE).
    assert registry.alias_version(client, registry.CHAMPION) is None
    registry.set_alias(client, registry.CHAMPION, version)
    assert str(registry.alias_version(client, registry.CHAMPION).version) == version


def test_a_transient_registry_error_is_raised_not_read_as_no_champion(
    tmp_path, monkeypatch
) -> None:
    """A locked or unreachable registry says nothing about the champion: read as "no
    champion", it would make the judge promote the challenger without a comparison."""
    client = SimpleNamespace(get_model_version_by_alias=locked)
    with pytest.raises(MlflowException) as raised:
        registry.alias_version(client, registry.CHAMPION)
    assert raised.value.error_code == "TEMPORARILY_UNAVAILABLE"
    monkeypatch.setattr(registry, "configure", lambda settings: client)
    summary = {"version": "2", "run_id": "r2", "kind": "popularity", "seconds": 1.0,
               "recipe": {"kind": "popularity", "config": {}},
               "metrics": {"P1": {"ndcg": 0.3}}}  # fmt: skip
    plan = {"parent_run_id": "p", "data": {}, "data_gate_passed": True}
    with pytest.raises(MlflowException) as raised:
        pipeline.judge(Settings(home=tmp_path), [summary], plan, show_progress=False)
    assert raised.value.error_code == "TEMPORARILY_UNAVAILABLE"
    # The codes a missing alias comes with are still None.
    missing = MlflowException("Registered model alias champion not found.",
                              error_code=INVALID_PARAMETER_VALUE)  # fmt: skip

    def unset(*_args):
        raise missing

    assert registry.alias_version(SimpleNamespace(get_model_version_by_alias=unset), "x") is None


def test_recloop_promote_tags_the_version_it_promoted(tmp_path) -> None:
    """`recloop promote` (promote_challenger): the promotion run's promoted_version tag names
    the version the champion alias moved to, as the training run's does."""
    settings = Settings(home=tmp_path)
    client = registry.configure(settings)
    client.create_registered_model(registry.MODEL_NAME)
    version = register(client, settings, "popularity")
    registry.set_alias(client, registry.CHALLENGER, version)
    decision = pipeline.promote_challenger(settings, data=synthetic(), show_progress=False)
    assert decision.promote, decision.reasons  # no champion yet: the first one
    assert str(registry.alias_version(client, registry.CHAMPION).version) == version
    experiment = mlflow.get_experiment_by_name(registry.EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`recloop.step` = 'promotion'")
    assert run.data.tags["promoted_version"] == version
    assert run.data.tags["recloop.promoted"] == "True"


def digest_plan(digest: str | None) -> dict:
    return {"parent_run_id": "p1", "data": {"interactions_digest": digest},
            "data_gate_passed": True, "recipes": []}  # fmt: skip


def test_a_task_refuses_data_that_changed_since_the_run_began(tmp_path, monkeypatch) -> None:
    """Each task of the DAG reads the feature store's export itself; an hourly run may
    rewrite it in between, and evaluations of other data do not pair user by user."""
    settings = Settings(home=tmp_path)
    data = replace(synthetic(), snapshot={"source": "feast", "interactions_digest": "bbb"})
    the_recipe = pipeline.recipe("popularity", settings)
    with pytest.raises(ValueError, match="interactions digest is bbb, but the training run p1 "
                                         "began on aaa"):  # fmt: skip
        pipeline.train_recipe(settings, the_recipe, digest_plan("aaa"), data=data,
                              show_progress=False)  # fmt: skip
    # The judge: a candidate whose saved evaluations came from other data.
    values = np.array([0.1, 0.2])
    saved = {"P1": Evaluation("P1", 10, {"ndcg": 0.15}, {"ndcg": values}, [0, 1],
                              user_ids=["u0", "u1"], data_digest="bbb")}  # fmt: skip
    monkeypatch.setattr(pipeline, "load_evaluations", lambda run_id: saved)
    monkeypatch.setattr(registry, "configure", lambda settings: SimpleNamespace(
        get_model_version_by_alias=lambda *a: None))  # fmt: skip
    summary = {
        "version": "2",
        "run_id": "r2",
        "kind": "ease",
        "seconds": 1.0,
        "recipe": {"kind": "ease", "config": {}},
        "metrics": {"P1": {"ndcg": 0.15}},
    }
    with pytest.raises(ValueError, match=r"ease \(version 2\), P1: the data's interactions "
                                         "digest is bbb, but .* began on aaa"):  # fmt: skip
        pipeline.judge(settings, [summary], digest_plan("aaa"), show_progress=False)


class Registry:
    """A stand-in registry client: the champion (version 1) and a candidate (version 2),
    each from its own training run (r1, r2)."""

    def __init__(self, settings: Settings) -> None:
        tags = {registry.RECIPE_TAG: json.dumps(pipeline.recipe("popularity", settings))}
        self.versions = {v: SimpleNamespace(version=v, run_id=f"r{v}", tags=tags)
                         for v in ("1", "2")}  # fmt: skip
        self.aliases = {registry.CHAMPION: "1"}

    def get_model_version_by_alias(self, name, alias):
        return self.versions[self.aliases[alias]]

    def get_model_version(self, name, version):
        return self.versions[version]

    def set_registered_model_alias(self, name, alias, version):
        self.aliases[alias] = version


def test_a_promotion_on_online_evidence_pairs_offline_only_on_the_same_data(
    tmp_path, monkeypatch
) -> None:
    """promote_on_evidence compares evaluations from two training runs. The same users, but
    on other data other held-out items: no paired offline gain is reported then, and the
    reasons say why; on the same data (one digest) the gain is paired and reported. The
    off-policy gain decides either way."""
    settings = Settings(home=tmp_path)
    client = Registry(settings)
    monkeypatch.setattr(registry, "configure", lambda settings: client)
    logged: list = []
    monkeypatch.setattr(pipeline, "_log_decision", lambda *a, **k: logged.append(k))
    base = np.random.default_rng(0).uniform(0.2, 0.6, size=200)
    users = [f"u{i}" for i in range(len(base))]

    def saved(values: np.ndarray, digest: str | None) -> dict[str, Evaluation]:
        return {"P1": Evaluation("P1", 10, {"ndcg": float(values.mean())}, {"ndcg": values},
                                 list(range(len(values))), user_ids=users,
                                 data_digest=digest)}  # fmt: skip

    evidence = {"impressions": 5000.0, "matches": 400.0, "challenger_value": 0.07,
                "baseline_value": 0.05, "gain_value": 0.02, "gain_low": 0.01,
                "gain_high": 0.03, "alpha": 0.05}  # fmt: skip
    runs = {"r1": saved(base, "aaa"), "r2": saved(base + 0.05, "bbb")}
    monkeypatch.setattr(pipeline, "load_evaluations", lambda run_id: runs[run_id])
    decision = pipeline.promote_on_evidence(settings, "2", evidence)
    assert decision.promote, decision.reasons
    assert (
        "P1 NDCG@10 gain not reported: version 2 and champion 1 were evaluated in their own "
        "training runs on different data (interactions digests bbb and aaa)"
    ) in decision.reasons[1]
    assert "gain.P1.ndcg" not in decision.numbers
    assert logged[-1]["promoted"] == "2" and client.aliases[registry.CHAMPION] == "2"

    client.aliases[registry.CHAMPION] = "1"
    runs["r2"] = saved(base + 0.05, "aaa")
    decision = pipeline.promote_on_evidence(settings, "2", evidence)
    assert decision.numbers["gain.P1.ndcg"] == pytest.approx(0.05)
    assert "(reported; the off-policy gain decides)" in decision.reasons[1]

    # A source folder records no digest: the two runs' data cannot be shown to be the same.
    client.aliases[registry.CHAMPION] = "1"
    runs.update(r1=saved(base, None), r2=saved(base + 0.05, None))
    decision = pipeline.promote_on_evidence(settings, "2", evidence)
    assert "on data without a recorded digest" in decision.reasons[1]
    assert "gain.P1.ndcg" not in decision.numbers


def test_the_runs_tasks_read_the_rows_begin_read_though_the_export_changes(
    tmp_path, monkeypatch
) -> None:
    """The DAG's begin reads the feature store and keeps those rows with the parent run; the
    training tasks and the judge read that copy. An hourly features run that rewrites the
    export between the tasks (here: the store now answers other rows) changes nothing."""
    import training.datasets

    settings = Settings(home=tmp_path)
    first = replace(synthetic(seed=0), snapshot={"source": "feast", "interactions_digest": "aaa"})
    later = replace(synthetic(seed=1), snapshot={"source": "feast", "interactions_digest": "bbb"})
    store = {"now": first}
    monkeypatch.setattr(training.datasets, "from_feature_store", lambda settings: store["now"])
    monkeypatch.setattr(pipeline, "_data_gate_passed", lambda data: True)
    plan = pipeline.begin(settings, kinds=["popularity"])
    assert plan["data_artifact"] == pipeline.TRAINING_DATA
    store["now"] = later  # the export rewritten by the next hour's features run
    kept = pipeline._load_data(settings, None, plan)
    assert kept.snapshot["interactions_digest"] == "aaa"
    for name in ("users", "items", "interactions"):
        pd.testing.assert_frame_equal(getattr(kept, name), getattr(first, name),
                                      check_dtype=False)  # fmt: skip
    summary = pipeline.train_recipe(settings, plan["recipes"][0], plan, show_progress=False)
    report = pipeline.judge(settings, [summary], plan, show_progress=False)
    assert report.champion_changed and report.data["interactions_digest"] == "aaa"
    # Given data (a source folder, one process) is used as it is and not kept.
    assert "data_artifact" not in pipeline.begin(settings, kinds=["popularity"], data=first)


def test_begin_reads_no_batch_that_a_gate_has_not_checked(tmp_path, monkeypatch) -> None:
    """dbt rewrites the exports before the gate checks them, and marks that (gate.
    mark_building): begin waits for the gate's outcome, and reads again when an outcome
    lands during its read, so that data_gate_passed is the verdict on the rows it read."""
    import threading

    import training.datasets
    from recloop.features import gate

    settings = Settings(home=tmp_path)
    data = replace(synthetic(), snapshot={"source": "feast", "interactions_digest": "aaa"})
    reads = []

    def read(settings):
        reads.append(gate.last_outcome(settings))
        return data

    monkeypatch.setattr(training.datasets, "from_feature_store", read)
    end = datetime(2026, 1, 5, 10, tzinfo=UTC)

    def outcome(passed: bool) -> None:
        gate._record_outcome(settings, gate.GateReport(end - timedelta(hours=1), end),
                             [] if passed else ["events: bad batch"])  # fmt: skip

    outcome(True)
    gate.mark_building(settings, end)
    assert gate.last_outcome(settings)["passed"] is True  # the last finished gate's, kept
    threading.Timer(0.5, outcome, [False]).start()  # that build's gate fails
    plan = pipeline.begin(settings, kinds=["popularity"])
    assert reads and all("building" not in r for r in reads)
    assert plan["data_gate_passed"] is False  # the verdict on the batch it read

    # An outcome landing during the read: read again, under the new outcome.
    reads.clear()

    def read_while_a_gate_passes(settings):
        if not reads:
            outcome(True)  # the next batch's gate lands while the first read runs
        reads.append(gate.last_outcome(settings)["passed"])
        return data

    monkeypatch.setattr(training.datasets, "from_feature_store", read_while_a_gate_passes)
    assert pipeline.begin(settings, kinds=["popularity"])["data_gate_passed"] is True
    assert len(reads) == 2

    # A build that never reached its gate: begin refuses by name once it has waited.
    gate.mark_building(settings, end)
    monkeypatch.setattr(pipeline, "BUILD_WAIT_SECONDS", 0.0)
    with pytest.raises(RuntimeError, match="no gate has checked them since"):
        pipeline.begin(settings, kinds=["popularity"])
