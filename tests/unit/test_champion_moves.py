"""The champion alias moves only from the champion a promotion was judged against, and a
registered version carries its recipe from the moment it exists: on a temporary SQLite
MLflow registry (nothing here needs a service)."""

from __future__ import annotations

import contextlib
import threading

import mlflow
import pytest

from recloop.settings import Settings
from tests.unit.test_registry_errors import register
from tests.unit.training_data import synthetic
from training import pipeline, registry


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path)


@pytest.fixture
def client(settings: Settings):
    client = registry.configure(settings)
    client.create_registered_model(registry.MODEL_NAME)
    return client


def champion(client) -> str | None:
    version = registry.alias_version(client, registry.CHAMPION)
    return str(version.version) if version is not None else None


def test_the_champion_moves_only_from_the_version_judged_against(settings, client) -> None:
    first, second, third = (register(client, settings, "popularity") for _ in range(3))
    assert registry.move_champion(settings, client, first, None) is None  # the first champion
    assert champion(client) == first
    # Judged against "no champion", but one serves now: refused, and nothing moves.
    assert registry.move_champion(settings, client, second, None) == first
    # Judged against the first: moves.
    assert registry.move_champion(settings, client, second, first) is None
    # A promotion judged against the first meanwhile replaced: refused, the second stays.
    assert registry.move_champion(settings, client, third, first) == second
    assert champion(client) == second


def test_the_check_and_the_move_are_one_step(settings, client, monkeypatch) -> None:
    """Two promotions judged against the same champion, racing: one moves it, the other is
    refused (without the lock both would see the old champion and the second would win)."""
    base, left, right = (register(client, settings, "popularity") for _ in range(3))
    registry.set_alias(client, registry.CHAMPION, base)
    checked = threading.Barrier(2, timeout=5)
    read = registry.alias_version

    def slow_read(the_client, alias):
        version = read(the_client, alias)
        # Both threads read before either moves, unless the lock keeps them apart.
        with contextlib.suppress(threading.BrokenBarrierError):
            checked.wait(timeout=1)
        return version

    monkeypatch.setattr(registry, "alias_version", slow_read)
    outcomes: dict[str, str | None] = {}

    def promote(version: str) -> None:
        outcomes[version] = registry.move_champion(settings, client, version, base)

    threads = [threading.Thread(target=promote, args=(v,)) for v in (left, right)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    moved = [v for v, now in outcomes.items() if now is None]
    assert len(moved) == 1, outcomes
    (refused,) = {left, right} - set(moved)
    assert outcomes[refused] == moved[0]
    assert champion(client) == moved[0]


def test_a_promotion_judged_against_a_replaced_champion_is_refused(
    settings, client, monkeypatch
) -> None:
    """`recloop promote` reads the champion, evaluates for minutes, then moves the alias: if
    the other DAG promoted meanwhile, the decision says so and the newer champion stays."""
    old, challenger, newer = (register(client, settings, "popularity") for _ in range(3))
    registry.set_alias(client, registry.CHAMPION, old)
    registry.set_alias(client, registry.CHALLENGER, challenger)
    evaluate = pipeline.evaluate_recipe
    calls = []

    def promoted_meanwhile(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # while the challenger is evaluated, another promotion lands
            registry.set_alias(client, registry.CHAMPION, newer)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate_recipe", promoted_meanwhile)
    # A recipe as good as the champion's would not pass the gate; this test needs one that
    # does: popularity against popularity passes with margin 0 only if strictly better, so
    # the decision is forced to pass and the move is what is tested.
    monkeypatch.setattr(pipeline, "decide", lambda *a, **k: pipeline.Decision(True, ["passed"]))
    decision = pipeline.promote_challenger(settings, data=synthetic(), show_progress=False)
    assert not decision.promote
    assert f"the champion moved from {old} to {newer}" in decision.reasons[-1]
    assert champion(client) == newer
    experiment = mlflow.get_experiment_by_name(registry.EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`recloop.step` = 'promotion'")
    assert run.data.tags["recloop.promoted"] == "False"
    assert run.data.tags["promoted_version"] == "none"


def test_online_evidence_measured_against_a_replaced_champion_promotes_nothing(
    settings, client
) -> None:
    old, winner, newer = (register(client, settings, "popularity") for _ in range(3))
    registry.set_alias(client, registry.CHAMPION, newer)
    decision = pipeline.promote_on_evidence(settings, winner, {}, against=old)
    assert not decision.promote
    assert (
        f"measured against champion {old}, and the champion is now {newer}" in (decision.reasons[0])
    )
    assert champion(client) == newer


def test_a_registered_version_carries_its_recipe_and_run(settings, tmp_path) -> None:
    registry.configure(settings)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.txt").write_text("1")
    the_recipe = pipeline.recipe("popularity", settings)
    with mlflow.start_run() as run:
        version = registry.log_model_version(folder, recipe=the_recipe)
    entry = mlflow.MlflowClient().get_model_version(registry.MODEL_NAME, version)
    assert registry.recipe_of(entry) == the_recipe
    assert entry.tags["kind"] == "popularity"
    assert entry.run_id == run.info.run_id  # the gate reads a version's evaluations by run


@pytest.mark.production
def test_the_production_lock_is_one_across_connections(tmp_path) -> None:
    """Production: Celery workers on several hosts promote, so the lock is Postgres's (an
    advisory lock), not a file: while one holder has it, another connection waits."""
    from tests.production import SERVER, postgres_admin

    postgres_admin().close()  # skips, with the reason, when Postgres cannot be reached
    production = Settings(profile="production", home=tmp_path, postgres_url=f"{SERVER}/postgres")
    entered, order = threading.Event(), []

    def second() -> None:
        entered.wait(timeout=5)
        with registry.promotion_lock(production):
            order.append("second")

    waiting = threading.Thread(target=second)
    waiting.start()
    with registry.promotion_lock(production):
        entered.set()
        waiting.join(timeout=1)  # it cannot get in while this holds the lock
        order.append("first")
    waiting.join(timeout=10)
    assert order == ["first", "second"]


def test_recloop_promote_adjusts_for_the_candidates_the_run_chose_from(
    settings, client, monkeypatch
) -> None:
    """The training run picked the challenger as the best of several on the same splits;
    judged again by `recloop promote`, its interval is adjusted as the run's gate was."""
    challenger = register(client, settings, "popularity")
    client.set_model_version_tag(registry.MODEL_NAME, challenger, registry.CHOSEN_FROM_TAG, "4")
    registry.set_alias(client, registry.CHALLENGER, challenger)
    seen = {}

    def record(*args, **kwargs):
        seen["chosen_from"] = kwargs.get("chosen_from", 1)
        return pipeline.Decision(False, ["recorded"])

    monkeypatch.setattr(pipeline, "decide", record)
    pipeline.promote_challenger(settings, data=synthetic(), show_progress=False)
    assert seen["chosen_from"] == 4
