"""Running the dbt project with a profile rendered from the settings.

``profiles.yml`` is generated under ``<home>/dbt/`` at every call, from the one settings
object, so no path or URL is written down twice; dbt's target and log folders live there too,
keeping the checkout clean and two homes apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from recloop.settings import Settings, write_rendered_config

PROFILE = "recloop"
PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"


def project_var(name: str) -> Any:
    """A var's default in ``dbt_project.yml`` (what the pipeline's builds run with)."""
    import yaml

    with (PROJECT_DIR / "dbt_project.yml").open() as handle:
        return yaml.safe_load(handle)["vars"][name]


class DbtError(RuntimeError):
    """A dbt command failed; the message lists the nodes that failed and why."""


@dataclass(frozen=True)
class DbtPaths:
    project_dir: Path
    profiles_dir: Path
    target_path: Path
    log_path: Path


def paths(settings: Settings) -> DbtPaths:
    root = settings.home / "dbt"
    return DbtPaths(PROJECT_DIR, root, root / "target", root / "logs")


def profile(settings: Settings) -> dict[str, Any]:
    """The dbt profile for the settings' profile (target named after it)."""
    if settings.profile == "local":
        output: dict[str, Any] = {
            "type": "duckdb",
            "path": str(settings.warehouse_path),
            "schema": "main",
            "threads": 2,
            # dbt-duckdb writes external (Parquet) models here: Feast's offline store reads them.
            "external_root": str(settings.features_dir),
            "settings": {"TimeZone": "UTC"},
        }
    else:
        postgres = settings.postgres_connection()
        output = {
            "type": "postgres",
            "host": postgres.host,
            "port": postgres.port,
            "user": postgres.user,
            "password": postgres.password,
            "dbname": postgres.database,
            "sslmode": postgres.sslmode,
            "schema": "public",
            "threads": 4,
        }
    return {PROFILE: {"target": settings.profile, "outputs": {settings.profile: output}}}


def render_profiles(settings: Settings) -> Path:
    """Write ``<home>/dbt/profiles.yml`` (owner-only: it may hold a password)."""
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    return write_rendered_config(paths(settings).profiles_dir / "profiles.yml", profile(settings))


# The interval's end reaches the project's as_of() macro through the environment, not
# through --vars: dbt re-parses the whole project when its vars change, and only the files
# that read an environment variable when that changes. Measured with `dbt parse` over
# consecutive intervals (medians of 3, two rounds): 5.8 / 8.0 s with --vars, 4.7 / 7.2 s
# with the environment, 4.8 / 5.8 s with nothing changed; about a second per features run.
# Compiled SQL reads the value of its own run either way (test_dbt_project checks it).
AS_OF_ENV = "RECLOOP_AS_OF"


def dbt_args(settings: Settings, command: list[str]) -> list[str]:
    """The full dbt argument list: the command plus where everything is."""
    where = paths(settings)
    return [
        *command,
        "--no-use-colors",  # the log is read in files and in the Airflow UI, not a terminal
        "--project-dir", str(where.project_dir),
        "--profiles-dir", str(where.profiles_dir),
        "--target-path", str(where.target_path),
        "--log-path", str(where.log_path),
    ]  # fmt: skip


def run_dbt(
    settings: Settings,
    command: list[str],
    *,
    as_of: datetime | None = None,
    echo: bool = True,
) -> list[dict[str, Any]]:
    """Run a dbt command in a child process; return its node results, or raise DbtError.

    A child process, not dbt's in-process runner: dbt-duckdb keeps the warehouse open for the
    life of the process that ran it, which would lock out the steps that read the warehouse
    after dbt (the gate, the tests), and a fresh process carries no dbt global state between
    runs. Its output is streamed line by line (to the terminal, or the Airflow task log).
    """
    from recloop import warehouse

    render_profiles(settings)
    if settings.profile == "local":
        # The events view must exist (and see the log's first sealed segment) before dbt reads it.
        warehouse.init_warehouse(settings)
    where = paths(settings)
    results_file = where.target_path / "run_results.json"
    results_file.unlink(missing_ok=True)  # a stale file must not pass for this run's results
    # The dbt script of this environment, whichever interpreter runs us (venv, Airflow worker).
    executable = Path(sys.executable).with_name("dbt")
    args = [str(executable), *dbt_args(settings, command)]
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    env.pop(AS_OF_ENV, None)  # a value left in the caller's shell must not pin the interval
    if as_of is not None:
        env[AS_OF_ENV] = as_of.isoformat()
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env=env,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            if echo:
                sys.stdout.write(line)
    results = _node_results(results_file)
    if process.returncode == 0:
        return results
    failures = [
        f"{node['unique_id']}: {node['status']} ({(node.get('message') or '').strip()})"
        for node in results
        if node["status"] in ("error", "fail", "runtime error")
    ]
    detail = "; ".join(failures) if failures else "\n".join(tail)
    raise DbtError(f"dbt {' '.join(command)} failed: {detail}")


def _node_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return json.loads(path.read_text()).get("results", [])
