"""Training for real: MLflow tracking and registry on SQLite, the promotion gate on
MovieLens-100K (a degraded challenger is never promoted, a better one is)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from recloop.settings import Settings
from tests.unit.training_data import logged_window, synthetic
from training import protocols, registry
from training.data import UserQuery, from_movielens
from training.evaluation import evaluate
from training.models import create
from training.pipeline import evaluate_reference, promote_challenger, run_training
from training.promotion import decide


@pytest.mark.integration
def test_training_registers_candidates_and_sets_aliases(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = synthetic(users=60, items=40)
    report = run_training(settings, kinds=["popularity", "ease"], data=data, show_progress=False)
    assert [c["kind"] for c in report.candidates] == ["popularity", "ease"]
    assert report.challenger["kind"] == "ease"
    assert report.decision["promote"] and report.champion_changed

    client = mlflow.MlflowClient(settings.tracking_uri(), settings.tracking_uri())
    versions = client.search_model_versions(f"name='{registry.MODEL_NAME}'")
    assert len(versions) == 2
    champion = client.get_model_version_by_alias(registry.MODEL_NAME, registry.CHAMPION)
    challenger = client.get_model_version_by_alias(registry.MODEL_NAME, registry.CHALLENGER)
    assert str(champion.version) == str(challenger.version) == report.challenger["version"]
    assert registry.recipe_of(champion) == {"kind": "ease", "config": {}}

    run = client.get_run(report.challenger["run_id"])
    assert run.data.metrics["P1.ndcg_at_10"] == pytest.approx(
        report.challenger["metrics"]["P1"]["ndcg"]
    )
    assert {"P2.auc", "P3a.ndcg_at_10", "training_seconds"} <= set(run.data.metrics)
    assert run.data.tags["mlflow.parentRunId"] == report.run_id
    assert run.data.tags["recloop.code_version"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model_card.md", "data_snapshot.json", "evaluations.npz", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/metrics_by_protocol.png" in plots

    # The pyfunc and the fast path load the same folder and agree.
    mlflow.set_tracking_uri(settings.tracking_uri())
    pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@champion")
    frame = pyfunc.predict(pd.DataFrame({"user_id": ["u0", "u1"], "k": [5, 5]}))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(downloads))
    fast = registry.download_model(settings, "champion")
    expected = [item for item, _ in fast.recommend([UserQuery(user_id="u0")], k=5)[0]]
    assert frame[frame["user_id"] == "u0"]["item_id"].tolist() == expected
    assert not any(downloads.iterdir())  # the download went once the model was loaded
    # Logged as code, not pickled; k is optional (10 by default).
    flavor = pyfunc.metadata.flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert len(pyfunc.predict(pd.DataFrame({"user_id": ["u0"]}))) == 10

    # The same recipe retrained on current data refreshes the champion.
    again = run_training(settings, kinds=["ease"], data=data, show_progress=False)
    assert again.decision["promote"] and "refreshes the champion" in again.decision["reasons"][0]
    assert again.champion_version != str(champion.version)


@pytest.mark.integration
def test_a_losing_challenger_still_lets_the_champions_recipe_refresh(settings: Settings) -> None:
    data = synthetic(users=60, items=40)
    first = run_training(settings, kinds=["popularity"], data=data, show_progress=False)
    assert first.champion_version is not None
    # No challenger can clear a margin of a whole NDCG point: EASE loses the gate, and the
    # popularity recipe retrained in the same run replaces the champion's older weights.
    strict = settings.model_copy(
        update={"promotion": settings.promotion.model_copy(update={"margin": 1.0})}
    )
    again = run_training(strict, kinds=["popularity", "ease"], data=data, show_progress=False)
    assert again.challenger["kind"] == "ease"
    reasons = again.decision["reasons"]
    assert "does not clear the margin" in reasons[0] and "refreshes the champion" in reasons[-1]
    refreshed = next(c for c in again.candidates if c["kind"] == "popularity")
    assert again.champion_changed and again.champion_version == refreshed["version"]
    assert again.champion_version != first.champion_version


@pytest.mark.integration
def test_the_off_policy_criterion_promotes_what_the_log_favours(settings: Settings) -> None:
    """With promotion.criterion off_policy, the logged impressions pick and judge: users in
    the logged window click only popularity's slate, so popularity replaces an EASE champion
    through the registry, although EASE was trained in the same run, unless the offline
    cold-start protocols bind."""
    settings = settings.model_copy(update={"promotion": settings.promotion.model_copy(
        update={"criterion": "off_policy"})})  # fmt: skip
    settings, data, *_, end = logged_window(settings)
    # The window is found from the data's newest time, which the feature store's data carry.
    data = dataclasses.replace(data, snapshot={**data.snapshot,
                                               "last_interaction_at": end.isoformat()})  # fmt: skip
    first = run_training(settings, kinds=["ease"], data=data, show_progress=False)
    assert first.decision["promote"] and first.challenger["kind"] == "ease"
    assert first.decision["reasons"][0].startswith("off-policy selection: position-based IPS CTR")
    # The log favours popularity. Where the offline cold-start protocols bind
    # (off_policy_cold_start "offline"), it would cost EASE's P3b NDCG, so it is refused, and
    # EASE's recipe refreshes the champion instead.
    offline = settings.model_copy(update={"promotion": settings.promotion.model_copy(
        update={"off_policy_cold_start": "offline"})})  # fmt: skip
    kept = run_training(offline, kinds=["ease", "popularity"], data=data, show_progress=False)
    assert kept.challenger["kind"] == "popularity"
    assert any("P3b NDCG@10 drops" in reason for reason in kept.decision["reasons"])
    assert "refreshes the champion" in kept.decision["reasons"][-1]
    # By default cold start is judged on the logged impressions to new users (none here),
    # and the off-policy gain decides.
    again = run_training(settings, kinds=["ease", "popularity"], data=data, show_progress=False)
    assert again.challenger["kind"] == "popularity", again.decision["reasons"]
    assert again.decision["promote"] and again.champion_version == again.challenger["version"]
    reasons = again.decision["reasons"]
    assert "(reported; the off-policy gain decides)" in reasons[1]
    assert any("cold-start protocols reported, not binding" in r for r in reasons)
    assert "cold start: 0 of 0 logged impressions to new users" in reasons[-2]
    assert "against the champion's recipe's" in reasons[-1] and "lies above" in reasons[-1]
    numbers = again.decision["numbers"]
    assert numbers["off_policy.gain_low"] > 0
    assert f"selection.ease.v{first.champion_version}.value" not in numbers  # not retrained
    ease = next(c for c in again.candidates if c["kind"] == "ease")
    chosen = numbers["off_policy.challenger_value"]
    assert numbers[f"selection.ease.v{ease['version']}.value"] < chosen


@pytest.mark.integration
def test_the_hourly_metrics_promote_a_candidate_the_champions_log_favours(
    settings: Settings,
) -> None:
    """EASE serves (version 1) and popularity is registered beside it (version 2, refused by
    the offline gate); then users, shown uniformly random slates under the champion's arm,
    click only popularity's slate. The hourly metrics find popularity's position-based gain
    over EASE's greedy slates above zero (challenger_wins) and feed it to the promotion gate:
    refused where the offline cold-start protocols bind (a retraining is requested instead),
    and by default, cold start judged on the log, promoted by moving the champion alias, with
    no retraining requested for it."""
    from datetime import UTC, datetime, timedelta

    from monitoring import hourly, store

    data = synthetic()
    first = run_training(settings, kinds=["ease"], data=data, show_progress=False)
    assert first.champion_version == "1"
    strict = settings.model_copy(update={"promotion": settings.promotion.model_copy(
        update={"margin": 1.0})})  # fmt: skip
    second = run_training(strict, kinds=["popularity"], data=data, show_progress=False)
    assert not second.decision["promote"] and second.challenger["version"] == "2"
    start = datetime.now(UTC) + timedelta(seconds=5)  # logged after both were registered
    *_, end = logged_window(settings, start=start)
    summary = hourly.estimate(settings, end - timedelta(hours=1), end)
    wins = [a for a in summary["alarms"] if a["kind"] == "challenger_wins"]
    assert [a["subject"] for a in wins] == ["2"], summary["alarms"]

    def gain():  # the log carries per-slot propensities: the position-based gain
        return store.read(settings, "off_policy").query("estimator == 'pbm_ips_gain'")

    # One look: alpha / (1 x 2). A rerun of the hour is the same look; the next hour's is the
    # second: alpha / (2 x 3).
    assert gain()["low"].iloc[0] > 0
    assert gain()["level"].tolist() == pytest.approx([1 - 0.05 / 2])
    # What the one-sided support rule reads (training.promotion.unsupported): an IPS gain,
    # and the share of EASE's own slates the log never showed (none: it logged them).
    assert gain()["position_based"].tolist() == [1.0]
    assert gain()["baseline_unlogged_share"].tolist() == [0.0]
    hourly.estimate(settings, end - timedelta(hours=1), end)
    assert gain()["level"].tolist() == pytest.approx([1 - 0.05 / 2])
    hourly.estimate(settings, end, end + timedelta(hours=1))
    assert gain()["level"].tolist() == pytest.approx([1 - 0.05 / 2, 1 - 0.05 / 6])
    # Where the offline cold-start protocols bind, popularity would cost EASE's P3b NDCG: the
    # gate refuses, and the win requests a retraining instead, as any alarm.
    offline = settings.model_copy(update={"promotion": settings.promotion.model_copy(
        update={"off_policy_cold_start": "offline"})})  # fmt: skip
    refused = hourly.decide(offline, end - timedelta(hours=1), end)
    assert refused["promoted"] is None and refused["requested"], refused
    assert "version 2 not promoted on online evidence" in refused["reason"]
    assert "P3b NDCG@10 drops" in refused["reason"]
    decision = hourly.decide(settings, end - timedelta(hours=1), end)
    assert decision["promoted"] == "2", decision
    assert "promoted version 2 on online evidence" in decision["reason"]
    assert not decision["requested"]  # the only alarm was the win, and it was acted on
    client = mlflow.MlflowClient(settings.tracking_uri(), settings.tracking_uri())
    champion = client.get_model_version_by_alias(registry.MODEL_NAME, registry.CHAMPION)
    assert str(champion.version) == "2"


@pytest.mark.integration
def test_promote_and_evaluate_commands_use_the_registry(settings: Settings) -> None:
    data = synthetic(users=60, items=40)
    run_training(settings, kinds=["popularity"], data=data, show_progress=False)
    decision = promote_challenger(settings, data=data, show_progress=False)
    assert not decision.promote and "already the champion" in decision.reasons[0]
    result = evaluate_reference(settings, "champion", "P1", data=data, show_progress=False)
    assert result.protocol == "P1" and 0 < result.metrics["ndcg"] < 1


def shuffled(data):
    """The same interactions with items shuffled across rows: the labels carry no signal."""
    rng = np.random.default_rng(0)
    frame = data.interactions.copy()
    frame["item_id"] = rng.permutation(frame["item_id"].to_numpy())
    return data.with_interactions(frame.drop_duplicates(["user_id", "item_id"]))


@pytest.mark.integration
@pytest.mark.dataset
@pytest.mark.slow
def test_gate_on_movielens_never_promotes_a_degraded_model(ml100k: Path) -> None:
    data = from_movielens(ml100k)
    settings = Settings()
    splits = {name: protocols.split(data, name) for name in ("P1", "P2", "P3a")}

    def evaluations(kind: str, degrade: bool = False, **config):
        result = {}
        for name, split in splits.items():
            train = shuffled(split.train) if degrade else split.train
            result[name] = evaluate(create(kind, **config).fit(train), split)
        return result

    ease = evaluations("ease", l2=300.0)
    degraded = evaluations("ease", degrade=True, l2=300.0)
    popularity = evaluations("popularity")
    worse = decide(degraded, ease, settings.promotion, data_gate_passed=True)
    assert not worse.promote, worse.reasons
    better = decide(ease, popularity, settings.promotion, data_gate_passed=True)
    assert better.promote, better.reasons
    assert better.numbers["gain.P1.ndcg.low"] > 0.1
    # First champion: a degraded model does not even beat popularity.
    first = decide(degraded, None, settings.promotion, data_gate_passed=True,
                   popularity=popularity)  # fmt: skip
    assert not first.promote
