"""The ``recloop`` command line (Typer). Every command reads the one settings object."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="recloop: a closed-loop recommendation platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
ingest_app = typer.Typer(
    help="Load a data source into the warehouse and event log.", no_args_is_help=True
)
features_app = typer.Typer(
    help="The feature pipeline: dbt, the Great Expectations gate, Feast.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(ingest_app, name="ingest")
app.add_typer(features_app, name="features")

TIME_FORMATS = ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]
out = Console()
err = Console(stderr=True)


def _settings():
    from rich.markup import escape

    from recloop.settings import load_settings

    try:
        return load_settings()
    except Exception as error:  # settings errors name the field; show them without a trace
        # load_settings' SettingsError leaves out the values given (one may be a secret set
        # under a misspelt name). Escaped: a [bracketed] part is text, not rich markup.
        err.print(f"[red]invalid settings:[/red] {escape(str(error))}")
        raise typer.Exit(2) from None


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


@contextmanager
def _reported() -> Iterator[None]:
    """Expected failures (bad source, busy log or warehouse) as one line, not a traceback."""
    from recloop.airflow_local import AirflowError
    from recloop.eventlog import EventLogError
    from recloop.features.dbt import DbtError
    from recloop.features.gate import GateFailed
    from recloop.sources.movielens import SourceError
    from recloop.warehouse import WarehouseUnavailable

    try:
        yield
    except (SourceError, EventLogError, WarehouseUnavailable, DbtError, GateFailed,
            AirflowError) as error:  # fmt: skip
        _fail(str(error))
    except (LookupError, ValueError, FileNotFoundError) as error:
        # Unknown model kind, alias or protocol, a missing export: each names what is wrong.
        _fail(str(error))
    except RuntimeError as error:
        from training.datasets import NoTrainingData

        if isinstance(error, NoTrainingData):
            _fail(str(error))
        raise


@config_app.command("show")
def config_show(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the effective settings (environment, recloop.yaml, defaults), secrets masked."""
    values = _settings().masked()
    if as_json:
        out.print_json(json.dumps(values))
        return
    table = Table("setting", "value", title="recloop settings")
    for key, value in _flatten(values):
        table.add_row(key, str(value))
    out.print(table)


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in values.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


@app.command()
def init() -> None:
    """Create the state folder and the warehouse (idempotent)."""
    from recloop import warehouse

    settings = _settings()
    settings.ensure_home()
    with _reported():
        warehouse.init_warehouse(settings)
    out.print(f"initialised {settings.home} (profile {settings.profile})")


@ingest_app.command("movielens")
def ingest_movielens(
    path: Path = typer.Argument(..., help="Folder of an ml-100k, ml-1m or ml-latest-small set."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Ingest a MovieLens folder: users, items, rating events; bad rows go to quarantine."""
    from recloop.ingest import ingest_movielens as run

    settings = _settings()
    with _reported():
        report = run(settings, path, show_progress=not as_json)
    _print_report(report.to_dict(), as_json)


@app.command()
def simulate(
    users: int | None = typer.Option(None, help="Users in the world (default from settings)."),
    items: int | None = typer.Option(None, help="Items in the catalogue."),
    days: int | None = typer.Option(None, help="Days of traffic."),
    seed: int | None = typer.Option(None, help="Seed; the same seed gives the same data."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Generate the simulated world and its logged traffic (the embedded default data set)."""
    from recloop.ingest import ingest_simulation
    from recloop.sources.simulator import WorldConfig

    settings = _settings()
    defaults = settings.simulator
    config = WorldConfig(
        users=users or defaults.users,
        items=items or defaults.items,
        days=days or defaults.days,
        seed=defaults.seed if seed is None else seed,
        start=defaults.start,
    )
    with _reported():
        report = ingest_simulation(settings, config, show_progress=not as_json)
    _print_report(report.to_dict(), as_json)


@app.command()
def summary(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Summarise what the warehouse and event log hold."""
    from recloop import warehouse

    with _reported():
        values = warehouse.summary(_settings())
    if as_json:
        out.print_json(json.dumps(values))
        return
    table = Table("what", "count", title="warehouse")
    table.add_row("users", str(values["users"]))
    table.add_row("items", str(values["items"]))
    for kind, count in values["events_by_type"].items():
        table.add_row(f"events: {kind}", str(count))
    table.add_row("first event", str(values["first_event_at"]))
    table.add_row("last event", str(values["last_event_at"]))
    out.print(table)
    if values["ctr_by_position"]:
        ctr = Table("slot", "shown", "clicked", "CTR", title="click-through by slot")
        for row in values["ctr_by_position"]:
            ctr.add_row(
                str(row["position"]), str(row["shown"]), str(row["clicked"]), f"{row['ctr']:.3f}"
            )
        out.print(ctr)
    top = Table("item", "title", "clicks + ratings", title="most engaged items")
    for row in values["top_items"]:
        top.add_row(row["item_id"], row["title"], str(row["interactions"]))
    out.print(top)


@features_app.command("run")
def features_run(
    start: datetime | None = typer.Option(
        None,
        help="Start of the interval (UTC, ISO 8601), exclusive. Default: everything "
        "before the end.",
        formats=TIME_FORMATS,
    ),
    end: datetime | None = typer.Option(
        None,
        help="End of the interval (UTC, ISO 8601); features are computed up to it. Default: now.",
        formats=TIME_FORMATS,
    ),
    full_refresh: bool = typer.Option(False, help="Rebuild the incremental models from scratch."),
) -> None:
    """Run the feature pipeline outside Airflow: dbt build, the data quality gate, then Feast
    apply and materialisation of the interval into the online store."""
    from recloop.features.pipeline import run_pipeline

    settings = _settings()
    end = _utc(end) or datetime.now(UTC)
    start = _utc(start)
    with _reported():
        report = run_pipeline(settings, start, end, full_refresh=full_refresh)
    gate = report.gate
    timings = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in report.seconds.items())
    out.print(
        f"features built, validated and published up to {end.isoformat()} ({timings}); "
        f"{gate.evaluated} expectations passed on {gate.rows}",
        soft_wrap=True,
    )
    out.print(f"Data Docs: {gate.docs}", soft_wrap=True)


def _movielens_option(help_text: str) -> Any:
    """The --data option of the training commands: a MovieLens folder instead of Feast."""
    return typer.Option(None, help=help_text, exists=True, file_okay=False)


def _training_data(data: Path | None):
    """A MovieLens folder when given, else None (the pipeline reads Feast's training set)."""
    if data is None:
        return None
    from training.data import from_movielens

    return from_movielens(data)


@app.command()
def train(
    models: str | None = typer.Option(
        None, help="Comma-separated model kinds (default: the settings' training.models)."
    ),
    data: Path | None = _movielens_option(
        "Train on a MovieLens folder instead of the feature store's training set."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON line."),
) -> None:
    """Train the candidate models, evaluate them on the protocols, register them in MLflow
    and run the promotion gate (challenger vs champion)."""
    from training.pipeline import run_training

    settings = _settings()
    kinds = [kind.strip() for kind in models.split(",")] if models else None
    with _reported():
        report = run_training(settings, kinds=kinds, data=_training_data(data))
    if as_json:
        print(json.dumps(report.to_dict(), default=str))
        return
    table = Table(
        "kind",
        "version",
        "seconds",
        *report.candidates[0]["metrics"],
        title="candidates (NDCG@10 per protocol)",
    )
    for candidate in report.candidates:
        table.add_row(
            candidate["kind"],
            candidate["version"],
            str(candidate["seconds"]),
            *[f"{m['ndcg']:.4f}" for m in candidate["metrics"].values()],
        )
    out.print(table)
    verdict = "promoted" if report.decision["promote"] else "not promoted"
    out.print(
        f"challenger {report.challenger['kind']} v{report.challenger['version']}: "
        f"{verdict}; champion is v{report.champion_version}",
        soft_wrap=True,
    )
    for reason in report.decision["reasons"]:
        out.print(f"  - {reason}", soft_wrap=True)


@app.command()
def evaluate(
    model_uri: str = typer.Option(
        "champion", help="An alias (champion, challenger), a version number or a models:/ URI."
    ),
    protocol: str = typer.Option(
        "P1", help="P1, P2, P3a, P3b, P4 (see DESIGN.md) or recent (training.recent_share)."
    ),
    data: Path | None = _movielens_option(
        "Evaluate on a MovieLens folder instead of the feature store's data."
    ),
    as_is: bool = typer.Option(
        False,
        help="Score with the stored weights instead of refitting the model's recipe on "
        "the protocol's training part (honest only on data the model never saw).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON line."),
) -> None:
    """Evaluate a registered model on an evaluation protocol."""
    from training.pipeline import evaluate_reference

    settings = _settings()
    with _reported():
        result = evaluate_reference(
            settings, model_uri, protocol, data=_training_data(data), as_is=as_is
        )
    if as_json:
        print(json.dumps({"model": model_uri, **result.summary()}))
        return
    table = Table("metric", "value", title=f"{model_uri} on {protocol} ({len(result.users)} users)")
    for name, value in result.metrics.items():
        table.add_row(f"{name}@{result.k}" if name != "auc" else name, f"{value:.4f}")
    out.print(table)


@app.command()
def promote(
    data: Path | None = _movielens_option(
        "Judge on a MovieLens folder instead of the feature store's data."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as one JSON line."),
) -> None:
    """Run the promotion gate for the version behind the alias challenger; on success it
    becomes the champion."""
    from training.pipeline import promote_challenger

    settings = _settings()
    with _reported():
        decision = promote_challenger(settings, data=_training_data(data))
    if as_json:
        print(json.dumps(decision.to_dict()))
        return
    out.print("promoted" if decision.promote else "not promoted")
    for reason in decision.reasons:
        out.print(f"  - {reason}", soft_wrap=True)


def _utc(value: datetime | None) -> datetime | None:
    # The options document UTC: a time given without a zone is read as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def dbt(context: typer.Context) -> None:
    """Run any dbt command on the project with the profile rendered from the settings.

    For example: recloop dbt build --select staging, recloop dbt docs generate.
    """
    from recloop.features.dbt import run_dbt

    if not context.args:
        _fail("give a dbt command, e.g. `recloop dbt build` or `recloop dbt docs generate`")
    with _reported():
        run_dbt(_settings(), list(context.args))


@app.command()
def serve(
    port: int = typer.Option(None, help="HTTP port (default: serving.port)."),
    host: str = typer.Option(None, help="Bind address (default: serving.host)."),
) -> None:
    """Start the BentoML service on the champion model (API docs at http://HOST:PORT/).

    Requires an API key (RECLOOP_SERVING__API_KEYS='["..."]' or serving.api_keys_file) and a
    feature store the pipeline has applied (`recloop features run`).
    """
    import os
    import sys

    settings = _settings()
    if not settings.serving.keys():
        _fail("no API key: set RECLOOP_SERVING__API_KEYS='[\"<key>\"]' or serving.api_keys_file")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "RECLOOP_HOME": str(settings.home)}
    if port is not None:
        env["RECLOOP_SERVING__PORT"] = str(port)
    if host is not None:
        env["RECLOOP_SERVING__HOST"] = host
    bentoml = Path(sys.executable).with_name("bentoml")
    # exec: the server replaces this process, so signals reach it directly.
    os.chdir(root)
    os.execve(str(bentoml), [str(bentoml), "serve", "serving.service:Recommender"], env)


@app.command()
def demo(
    hours: int | None = typer.Option(None, min=2, help="Simulated hours of live traffic."),
    shift_hour: int | None = typer.Option(
        None, min=1, help="Hour at which every user's taste shifts."
    ),
    requests: int | None = typer.Option(None, min=10, help="Requests per simulated hour."),
    users: int | None = typer.Option(None, min=20, help="Users in the simulated world."),
    items: int | None = typer.Option(None, min=30, help="Items in the simulated world."),
    seed: int | None = typer.Option(None, help="Seed of the world and of the simulated users."),
    movielens: Path | None = typer.Option(
        None,
        help="A MovieLens folder: its users, films and tastes make the world "
        "(--users and --items are then unused).",
        exists=True,
        file_okay=False,
    ),
    models: str | None = typer.Option(
        None,
        help="Comma-separated kinds each training run trains (default: popularity,ease,item_ctr).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """The whole loop in a fresh home: Airflow DAGs, the BentoML service, simulated users, a
    taste shift, its detection, retraining through the asset, the new champion serving, and a
    candidate promoted on the hourly off-policy evidence.
    Options left out take recloop.demo.DemoConfig's defaults."""
    from recloop.demo import Demo, DemoConfig

    settings = _settings()
    given = {"hours": hours, "shift_hour": shift_hour, "requests_per_hour": requests,
             "users": users, "items": items, "seed": seed,
             "movielens": str(movielens.resolve()) if movielens else None,
             "models": tuple(m.strip() for m in models.split(",")) if models else None}  # fmt: skip
    config = DemoConfig(**{name: value for name, value in given.items() if value is not None})
    if config.shift_hour >= config.hours:
        _fail(f"--shift-hour: {config.shift_hour} must be below --hours ({config.hours})")
    from training.models import KINDS

    unknown = [kind for kind in config.models if kind not in KINDS]
    if unknown or not config.models:
        _fail(f"--models: {', '.join(unknown) or 'none given'} (allowed: {', '.join(KINDS)})")
    echo = (lambda message: err.print(message)) if as_json else out.print
    with _reported():
        summary = Demo(settings, config, echo=echo).run()
    if as_json:
        print(json.dumps(summary))
        return
    table = Table("hour", "CTR (95% Wilson)", "true CTR", "alarms", "decision", "served",
                  "replayed true CTR per version", "best / random slate",
                  title="recloop demo: one row per simulated hour")  # fmt: skip
    for row in summary["hours"]:
        estimate = (f"{row['ctr']:.3f} [{row['ctr_low']:.3f}, {row['ctr_high']:.3f}]"
                    if row["ctr"] is not None else "-")  # fmt: skip
        alarms = ", ".join(a.split(":")[0] for a in row["alarms"] or [])
        served = ", ".join(f"v{v}" for v in sorted(row["served_versions"] or {}))
        best = (f"{row['best_true_ctr']:.3f} / {row['random_true_ctr']:.3f}"
                if row["best_true_ctr"] is not None else "-")  # fmt: skip
        replayed = " ".join(f"v{v} {ctr:.3f}" for v, ctr in
                            sorted((row["replayed_true_ctr"] or {}).items(),
                                   key=lambda pair: int(pair[0])))  # fmt: skip
        decision = ", ".join(
            [*(["retrain requested"] if row["retrain_requested"] else []),
             *([f"v{row['promoted']} promoted"] if row.get("promoted") else [])]
        )  # fmt: skip
        table.add_row(str(row["hour"]), estimate, f"{row['true_ctr']:.3f}", alarms, decision,
                      served, replayed, best)  # fmt: skip
    out.print(table)
    promotions = ", ".join(f"v{v} in hour {h}" for h, v in summary["online_promotions"].items())
    out.print(
        f"champion v{summary['first_champion']} -> {served_champion(summary)}; drift detected "
        f"in hours {summary['drift_detected_hours']}; asset-triggered training runs: "
        f"{len(summary['asset_triggered_training_runs'])}; promoted on online evidence: "
        f"{promotions or 'none'}; new champion served from hour "
        f"{summary['new_champion_served_from_hour']}; {summary['seconds']:.0f} s",
        soft_wrap=True,
    )
    recovery = summary["recovery"]
    if recovery is not None:
        gain = recovery["gain"]
        out.print(
            f"from hour {recovery['from_hour']}, replayed on the same requests: new champion "
            f"v{recovery['new']} true CTR {recovery['new_true_ctr']:.3f}, old v{recovery['old']} "
            f"{recovery['old_true_ctr']:.3f}; gain {gain['value']:+.4f} "
            f"[{gain['low']:+.4f}, {gain['high']:+.4f}]; on the old champion's catalogue, the "
            f"best possible slates {recovery['best_true_ctr']:.3f}, random ones "
            f"{recovery['random_true_ctr']:.3f}",
            soft_wrap=True,
        )
    out.print(
        f"summary: {summary['summary_path']}\ndashboard: {summary['dashboard']}", soft_wrap=True
    )


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    table = Table("what", "count", title=f"ingested: {report['source']}")
    for key in ("users", "items", "events", "events_appended", "events_duplicate", "rejected"):
        table.add_row(key, str(report[key]))
    out.print(table)
    if report.get("quarantine_file"):
        out.print(f"rejected rows and reasons: {report['quarantine_file']}", soft_wrap=True)


def served_champion(summary: dict) -> str:
    """The demo summary's champion change, as the service saw it."""
    new, final = summary["new_champion"], summary["final_champion"]
    if new is None:
        return f"v{final} (no new champion served)"
    late = f" (v{final} promoted after the last hour)" if final != new else ""
    return f"v{new} served{late}"


if __name__ == "__main__":
    app()
