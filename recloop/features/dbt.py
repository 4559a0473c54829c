"""Running the dbt project with a profile rendered from the settings.

``profiles.yml`` is generated under ``<home>/dbt/`` at every call, from the one settings
object, so no path or URL is written down twice; dbt's target and log folders live there too,
keeping the checkout clean and two homes apart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from recloop.settings import Settings

PROFILE = "recloop"
PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"


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
        url = urlsplit(settings.postgres_url.get_secret_value())
        output = {
            "type": "postgres",
            "host": url.hostname or "127.0.0.1",
            "port": url.port or 5432,
            "user": unquote(url.username or "postgres"),
            "password": unquote(url.password or ""),
            "dbname": url.path.lstrip("/") or "postgres",
            "schema": "public",
            "threads": 4,
        }
    return {PROFILE: {"target": settings.profile, "outputs": {settings.profile: output}}}


def render_profiles(settings: Settings) -> Path:
    """Write ``<home>/dbt/profiles.yml`` (owner-only: it may hold a password)."""
    where = paths(settings)
    where.profiles_dir.mkdir(parents=True, exist_ok=True)
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    path = where.profiles_dir / "profiles.yml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(profile(settings), handle, sort_keys=False)
    return path


def dbt_args(settings: Settings, command: list[str], *, as_of: datetime | None = None) -> list[str]:
    """The full dbt argument list: the command plus where everything is."""
    where = paths(settings)
    args = [
        *command,
        "--no-use-colors",  # the log is read in files and in the Airflow UI, not a terminal
        "--project-dir", str(where.project_dir),
        "--profiles-dir", str(where.profiles_dir),
        "--target-path", str(where.target_path),
        "--log-path", str(where.log_path),
    ]  # fmt: skip
    if as_of is not None:
        args += ["--vars", json.dumps({"as_of": as_of.isoformat()})]
    return args


def run_dbt(settings: Settings, command: list[str], *, as_of: datetime | None = None) -> Any:
    """Run a dbt command in this process; raise DbtError naming what failed."""
    from dbt.cli.main import dbtRunner

    from recloop import warehouse

    render_profiles(settings)
    if settings.profile == "local":
        # The events view must exist (and see the log's first sealed segment) before dbt reads it.
        warehouse.init_warehouse(settings)
    result = dbtRunner().invoke(dbt_args(settings, command, as_of=as_of))
    if result.success:
        return result.result
    if result.exception is not None:
        raise DbtError(f"dbt {' '.join(command)} failed: {result.exception}")
    failures = [
        f"{node.node.unique_id}: {node.status} ({(node.message or '').strip()})"
        for node in getattr(result.result, "results", [])
        if str(node.status) in ("error", "fail", "runtime error")
    ]
    raise DbtError(f"dbt {' '.join(command)} failed: " + "; ".join(failures or ["see dbt log"]))
