"""The recloop command line, run as a user runs it: a real process, real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECLOOP = str(Path(sys.executable).with_name("recloop"))


def run(*args: str, home: Path, env: dict | None = None, check: bool = True):
    environment = {**os.environ, "RECLOOP_HOME": str(home), **(env or {})}
    result = subprocess.run([RECLOOP, *args], capture_output=True, text=True, env=environment)
    if check and result.returncode != 0:
        raise AssertionError(f"recloop {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.integration
def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = {
        "RECLOOP_POSTGRES_URL": "postgresql://app:hunter2@db/recloop",
        "RECLOOP_PROFILE": "production",
    }
    result = run("config", "show", "--json", home=tmp_path / "var", env=env)
    values = json.loads(result.stdout)
    assert values["profile"] == "production"
    assert values["postgres_url"] == "postgresql://app:***@db/recloop"
    assert "hunter2" not in result.stdout + result.stderr
    table = run("config", "show", home=tmp_path / "var", env=env)
    assert "hunter2" not in table.stdout and "event_log.seal_seconds" in table.stdout


@pytest.mark.integration
def test_bad_settings_are_reported_by_name(tmp_path: Path) -> None:
    result = run("config", "show", home=tmp_path, env={"RECLOOP_PROFILE": "staging"}, check=False)
    assert result.returncode == 2
    assert "profile" in result.stderr


@pytest.mark.integration
def test_init_simulate_summary(tmp_path: Path) -> None:
    home = tmp_path / "var"
    run("init", home=home)
    assert (home / "warehouse.duckdb").exists()
    report = json.loads(
        run("simulate", "--users", "40", "--items", "30", "--days", "2", "--json", home=home).stdout
    )
    assert (report["users"], report["items"], report["rejected"]) == (40, 30, 0)
    assert report["events_appended"] == report["events"] > 0
    again = json.loads(
        run("simulate", "--users", "40", "--items", "30", "--days", "2", "--json", home=home).stdout
    )
    assert again["events_duplicate"] == report["events"]  # same seed, same events: idempotent
    summary = json.loads(run("summary", "--json", home=home).stdout)
    assert summary["events"] == report["events"]
    assert summary["ctr_by_position"][0]["position"] == 0
    assert json.loads((home / "simulator.json").read_text())["users"] == 40


@pytest.mark.integration
def test_ingest_reports_failures_with_the_file_name(tmp_path: Path) -> None:
    result = run(
        "ingest",
        "movielens",
        str(tmp_path / "nowhere"),
        "--json",
        home=tmp_path / "var",
        check=False,
    )
    assert result.returncode == 1
    assert "nowhere: not a folder" in " ".join(result.stderr.split())


@pytest.mark.integration
@pytest.mark.dataset
@pytest.mark.slow
def test_ingest_real_ml100k_json(ml100k: Path, tmp_path: Path) -> None:
    report = json.loads(
        run("ingest", "movielens", str(ml100k), "--json", home=tmp_path / "var").stdout
    )
    assert (report["users"], report["items"], report["events"], report["rejected"]) == (
        943,
        1682,
        100000,
        0,
    )


@pytest.mark.integration
def test_a_busy_warehouse_is_reported_not_traced(tmp_path: Path) -> None:
    import duckdb

    home = tmp_path / "var"
    run("init", home=home)
    holder = duckdb.connect(str(home / "warehouse.duckdb"))  # another writer, as dbt would be
    try:
        result = run("summary", home=home, check=False)
    finally:
        holder.close()
    assert result.returncode == 1
    assert "cannot be opened" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_features_run_and_dbt_passthrough(tmp_path: Path) -> None:
    home = tmp_path / "var"
    run("simulate", "--users", "30", "--items", "20", "--days", "2", "--json", home=home)
    result = run("features", "run", "--end", "2026-01-20T00:00:00", home=home)
    assert (
        "features built, validated and published up to 2026-01-20T00:00:00+00:00" in result.stdout
    )
    assert "Data Docs: file://" in result.stdout
    assert (home / "features" / "feast_user_features.parquet").exists()
    assert (home / "feast" / "online.db").exists()
    assert (home / "dbt" / "profiles.yml").stat().st_mode & 0o077 == 0  # may hold a password
    listed = run("dbt", "ls", "--select", "marts", "--resource-type", "model", home=home)
    assert "recloop.marts.user_features" in listed.stdout
    missing = run("dbt", home=home, check=False)
    assert missing.returncode == 1 and "give a dbt command" in missing.stderr
