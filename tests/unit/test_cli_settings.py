"""``recloop config show`` and the settings errors every command prints: no secret on screen."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from recloop.cli import app
from recloop.settings import MASK


def test_an_invalid_setting_is_printed_by_field_without_its_value(monkeypatch) -> None:
    monkeypatch.setenv("RECLOOP_SERVING__API_KEY", '["k1secret"]')  # api_keys, misspelt
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "k1secret" not in result.output
    assert "serving.api_key: Extra inputs are not permitted" in result.output
    assert "Traceback" not in result.output


def test_config_show_masks_every_credential(monkeypatch) -> None:
    monkeypatch.setenv("RECLOOP_POSTGRES_URL", "postgresql://app@db/recs?password=s3cret")
    monkeypatch.setenv("RECLOOP_MLFLOW_TRACKING_URI", "https://s3cret@mlflow.example")
    monkeypatch.setenv("RECLOOP_MLFLOW_ARTIFACT_ROOT", "https://store/a?token=s3cret")
    for command in (["config", "show", "--json"], ["config", "show"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
        assert "s3cret" not in result.output
    values = json.loads(CliRunner().invoke(app, ["config", "show", "--json"]).output)
    assert values["postgres_url"] == f"postgresql://app@db/recs?password={MASK}"
    assert values["mlflow_tracking_uri"] == f"https://{MASK}@mlflow.example"
    assert values["mlflow_artifact_root"] == f"https://store/a?token={MASK}"


def test_a_settings_error_is_printed_as_text_not_rich_markup(monkeypatch, tmp_path) -> None:
    missing = tmp_path / "recloop[bold].yaml"
    monkeypatch.setenv("RECLOOP_CONFIG_FILE", str(missing))
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "recloop[bold].yaml does not exist" in result.output.replace("\n", "")
