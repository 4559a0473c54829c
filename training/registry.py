"""MLflow: tracking, the pyfunc (logged as code: training/pyfunc_model.py) and the model
registry with aliases.

One registered model, ``recloop-recommender``. Every candidate a run trains becomes a version;
the best of a run carries the alias ``challenger`` and the served one ``champion`` (MLflow 3
aliases; the deprecated stages are never used). A version's artifacts hold the model folder
(``model/``, what ``Recommender.save`` wrote), so the service loads it directly (the fast
path) while ``mlflow.pyfunc.load_model`` works on the same files.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recloop.settings import Settings

MODEL_NAME = "recloop-recommender"
EXPERIMENT = "recloop-training"
CHAMPION = "champion"
CHALLENGER = "challenger"
RECIPE_TAG = "recloop.recipe"
CHOSEN_FROM_TAG = "recloop.chosen_from"  # how many candidates a challenger was picked from
ARTIFACT = "model"  # the folder inside the logged model's artifacts


def configure(settings: Settings, experiment: str = EXPERIMENT):
    """Point MLflow at the settings' tracking/registry URI; the client for the registry."""
    import mlflow

    uri = settings.tracking_uri()
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    if settings.profile == "production" and settings.mlflow_tracking_uri is None:
        from recloop.postgres_warehouse import ensure_schema

        ensure_schema(settings, "mlflow")  # the default URI's schema
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, uri)
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment, artifact_location=settings.artifact_location())
    mlflow.set_experiment(experiment)
    return client


def signature():
    """What the pyfunc takes (``k`` optional, 10 by default) and returns, stated rather than
    inferred (inferring would load and run the model at logging time)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "k", required=False)]),
        outputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "rank"),
                        ColSpec("string", "item_id"), ColSpec("double", "score")]),
    )  # fmt: skip


def code_version() -> str:
    """The git commit of the running code (with -dirty when the tree has changes)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import version

        return f"recloop=={version('recloop')}"
    return commit + ("-dirty" if dirty else "")


def _requirements() -> list[str]:
    # Explicit, so that MLflow does not load the model in a subprocess to infer them.
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("numpy", "pandas", "torch", "transformers")]


def log_model_version(model_dir: Path, *, recipe: dict[str, Any]) -> str:
    """Log the model folder as a pyfunc in the active run and register it; the version."""
    import mlflow

    recipe_json = json.dumps(recipe, sort_keys=True)
    info = mlflow.pyfunc.log_model(
        name="recommender",
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # logged as code
        signature=signature(),
        artifacts={ARTIFACT: str(model_dir)},
        pip_requirements=_requirements(),
        tags={RECIPE_TAG: recipe_json},  # on the logged model (MLflow 3's Models tab)
    )
    # Registered with its tags in one call: the gate and the hourly estimates read a
    # version's recipe from its registry entry, and a version created first and tagged
    # after would be left untagged by an error between the calls (the task's retry then
    # registers another).
    registered = mlflow.register_model(
        info.model_uri, MODEL_NAME, tags={RECIPE_TAG: recipe_json, "kind": recipe["kind"]}
    )
    return str(registered.version)


# The error codes with which MLflow 3 says that no version carries an alias: an unset alias
# is INVALID_PARAMETER_VALUE ("Registered model alias champion not found."), and a registry
# where the model was never registered (before the first training) RESOURCE_DOES_NOT_EXIST;
# a tracking server passes the same codes on. Any other code says nothing about the alias.
NO_ALIAS_CODES = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"})


def alias_version(client, alias: str):
    """The model version behind an alias, or None when the alias is not set.

    Only a missing alias (or model) is None. Every other registry error is raised: a
    transient one (TEMPORARILY_UNAVAILABLE, as a SQLite file locked past its busy timeout or
    a dropped Postgres connection) read as "no champion" would make the gate promote the
    challenger without comparing it with anything."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException as error:
        if error.error_code in NO_ALIAS_CODES:
            return None
        raise


def set_alias(client, alias: str, version: str) -> None:
    client.set_registered_model_alias(MODEL_NAME, alias, str(version))


# Any fixed 64-bit number: the Postgres advisory lock every promotion takes (production).
PROMOTION_LOCK_KEY = 0x7265636C6F6F70  # "recloop"


@contextmanager
def promotion_lock(settings: Settings) -> Iterator[None]:
    """Held while the champion alias is checked and moved. Two DAGs move it (the training
    run's judge, the hourly metrics on online evidence) and operators too (``recloop
    promote``), each after minutes of work judged against the champion it read first; the
    lock makes "still that champion? then move it" one step. A file lock in the local
    profile (one host); a Postgres advisory lock in production, where Celery workers on
    several hosts share the registry."""
    if settings.profile == "production":
        import psycopg

        with psycopg.connect(settings.postgres_url.get_secret_value(), autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (PROMOTION_LOCK_KEY,))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (PROMOTION_LOCK_KEY,))
        return
    import fcntl

    settings.home.mkdir(parents=True, exist_ok=True)
    with open(settings.home / "promotion.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def move_champion(settings: Settings, client, version: str, expected: str | None) -> str | None:
    """Point ``champion`` at ``version`` if it still points at ``expected`` (the version the
    promotion was judged against; None: there was no champion). None when moved; otherwise
    the version that is champion now (None's "none" as ``"none"``), and nothing moved: the
    promotion was judged against a champion another promotion has since replaced."""
    with promotion_lock(settings):
        current = alias_version(client, CHAMPION)
        now = str(current.version) if current is not None else None
        if now != (str(expected) if expected is not None else None):
            return now or "none"
        set_alias(client, CHAMPION, version)
    return None


def recipe_of(version) -> dict[str, Any]:
    return json.loads(version.tags[RECIPE_TAG])


def download_model(settings: Settings, reference: str):
    """Load a registered model through the fast path. ``reference``: an alias (``champion``),
    a version number, or a ``models:/`` URI."""
    import mlflow

    from training.models import load_model

    configure(settings)
    client = mlflow.MlflowClient()
    if reference.startswith("models:/"):
        uri = reference
    elif reference.isdigit():
        uri = f"models:/{MODEL_NAME}/{reference}"
    else:
        if alias_version(client, reference) is None:
            raise LookupError(f"{MODEL_NAME}: no version carries the alias {reference!r}")
        uri = f"models:/{MODEL_NAME}@{reference}"
    # Every kind reads its folder whole while loading, so the download goes once it is loaded:
    # the hourly metrics run and every champion swap download versions, and copies kept in
    # the temporary folder would pile up there for as long as the machine runs.
    with tempfile.TemporaryDirectory(prefix="recloop-model-") as target:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=target)
        return load_model(Path(local) / "artifacts" / ARTIFACT)


def model_card(
    kind: str,
    recipe: dict[str, Any],
    metrics: dict[str, dict[str, float]],
    data: dict[str, Any],
    code: str,
    seconds: float,
) -> str:
    """A short model card (Mitchell et al., 2019), in Markdown."""
    lines = [
        f"# {MODEL_NAME}: {kind}",
        "",
        "## What it is",
        f"- kind `{kind}`; recipe `{json.dumps(recipe, sort_keys=True)}`",
        f"- code `{code}`; trained in {seconds:.1f} s",
        "",
        "## Intended use",
        "Top-k recommendation for the recloop service; scores are relative, not probabilities.",
        "Cold start: only the text-based kinds (two_tower, seq_transformer) score items or "
        "users they never saw from their text and attributes; the others fall back to popularity.",
        "",
        "## Training data",
        *[f"- {name}: {value}" for name, value in data.items()],
        "",
        "## Evaluation (DESIGN.md protocols, k = 10, seed 42)",
        "| protocol | " + " | ".join(sorted({n for m in metrics.values() for n in m})) + " |",
    ]
    names = sorted({n for m in metrics.values() for n in m})
    lines.append("|---" * (len(names) + 1) + "|")
    for protocol, values in metrics.items():
        cells = [f"{values[n]:.4f}" if n in values else "" for n in names]
        lines.append(f"| {protocol} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Limits",
        "Offline protocols measure ranking of held-out interactions, not online CTR; "
        "the monitoring DAG estimates that from logged impressions.",
    ]
    return "\n".join(lines) + "\n"
