import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from pydantic import ValidationError

from recloop.settings import MASK, Settings, SettingsError, load_settings, mask_url


def test_defaults_are_the_local_profile_under_var(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.profile == "local"
    assert settings.home == tmp_path / "var"  # resolved against the working directory
    assert settings.warehouse_path.parent == settings.home
    assert settings.events_dir.parent == settings.home


def test_environment_overrides_including_nested(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECLOOP_PROFILE", "production")
    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("RECLOOP_EVENT_LOG__SEAL_SECONDS", "2.5")
    settings = load_settings()
    assert settings.profile == "production"
    assert settings.home == tmp_path / "elsewhere"
    assert settings.event_log.seal_seconds == 2.5


def test_yaml_file_is_read_and_environment_wins(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "recloop.yaml").write_text("seed: 7\nsimulator:\n  users: 12\n")
    assert load_settings().seed == 7
    assert load_settings().simulator.users == 12
    monkeypatch.setenv("RECLOOP_SEED", "8")
    assert load_settings().seed == 8


def test_named_config_file_must_exist(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECLOOP_CONFIG_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        load_settings()


def test_secrets_directory(monkeypatch, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "postgres_url").write_text("postgresql://app:s3cret@db:5432/recloop")
    monkeypatch.setenv("RECLOOP_SECRETS_DIR", str(secrets))
    settings = load_settings()
    assert settings.postgres_url.get_secret_value().endswith("@db:5432/recloop")


def test_invalid_values_name_the_field() -> None:
    with pytest.raises(ValidationError, match="profile"):
        Settings(profile="staging")
    with pytest.raises(ValidationError, match="seal_seconds"):
        Settings(event_log={"seal_seconds": 0})
    with pytest.raises(ValidationError, match="unknown_setting"):
        Settings(unknown_setting=1)


def test_masked_hides_passwords_but_keeps_the_rest() -> None:
    settings = Settings(postgres_url="postgresql://app:s3cret@db:5432/recloop")
    masked = settings.masked()
    assert masked["postgres_url"] == f"postgresql://app:{MASK}@db:5432/recloop"
    assert "s3cret" not in repr(masked)
    assert "s3cret" not in repr(settings)
    assert masked["redis_url"] == "redis://127.0.0.1:6379/0"  # no password, nothing to hide


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@host:6379/0", f"redis://{MASK}@host:6379/0"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("not a url", MASK),
        # libpq takes the password as a query parameter too, and sslpassword.
        (
            "postgresql://app@db/recs?password=s3cret&sslmode=require",
            f"postgresql://app@db/recs?password={MASK}&sslmode=require",
        ),
        (
            "postgresql://db/recs?sslpassword=s3cret&options=-csearch_path%3Dmlflow",
            f"postgresql://db/recs?sslpassword={MASK}&options=-csearch_path%3Dmlflow",
        ),
        (
            "https://mlflow/?access_token=a&API_KEY=b&client_secret=c&my%5Fpassword=d&x=1&flag",
            f"https://mlflow/?access_token={MASK}&API_KEY={MASK}&client_secret={MASK}"
            f"&my%5Fpassword={MASK}&x=1&flag",
        ),
        # A lone userinfo is a token, except in a Postgres URL (a role name).
        ("https://ghp_s3cret@mlflow.example/", f"https://{MASK}@mlflow.example/"),
        ("redis://s3cret@cache:6379/0", f"redis://{MASK}@cache:6379/0"),
        ("postgresql+psycopg://u:pw@[::1]:5432/db", f"postgresql+psycopg://u:{MASK}@[::1]:5432/db"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


def test_masked_hides_credentials_in_the_mlflow_artifact_root() -> None:
    for root, shown in [
        ("https://ghp_s3cret@artifacts.example/mlflow", f"https://{MASK}@artifacts.example/mlflow"),
        ("s3://AKIA:s3cret@bucket/mlflow", f"s3://AKIA:{MASK}@bucket/mlflow"),
        ("https://store/mlflow?sig=1&token=s3cret", f"https://store/mlflow?sig=1&token={MASK}"),
        ("s3://bucket/mlflow", "s3://bucket/mlflow"),
        ("/shared/mlflow", "/shared/mlflow"),  # a folder is no secret: shown as given
    ]:
        masked = Settings(mlflow_artifact_root=root).masked()
        assert masked["mlflow_artifact_root"] == shown
        assert "s3cret" not in repr(masked)
    assert Settings().masked()["mlflow_artifact_root"] is None


def test_invalid_settings_are_reported_without_their_values(monkeypatch) -> None:
    # api_keys misspelt: pydantic's message would quote the key, and the traceback of the
    # service's or a DAG file's import would print it.
    monkeypatch.setenv("RECLOOP_SERVING__API_KEY", '["k1secret"]')
    monkeypatch.setenv("RECLOOP_PROFILE", "s3cret-profile")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == (
        "2 invalid setting(s):\n"
        "  profile: Input should be 'local' or 'production'\n"
        "  serving.api_key: Extra inputs are not permitted"
    )
    printed = "".join(traceback.format_exception(caught.value))
    assert "k1secret" not in printed and "s3cret" not in printed
    assert isinstance(caught.value, ValueError)


def test_a_model_rule_names_its_field_in_the_report() -> None:
    with pytest.raises(SettingsError, match=r"^1 invalid setting\(s\):\n  serving\.workers: "):
        load_settings(serving={"workers": 2})


def test_importing_does_nothing_on_disk(tmp_path: Path) -> None:
    code = (
        "import recloop.settings, recloop.cli, recloop.eventlog; recloop.settings.load_settings()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []


def test_postgres_connection_splits_and_decodes_the_url() -> None:
    settings = Settings(postgres_url="postgresql://app:p%40ss@db.internal:6543/features")
    postgres = settings.postgres_connection()
    assert (postgres.host, postgres.port, postgres.user, postgres.password, postgres.database) == (
        "db.internal", 6543, "app", "p@ss", "features")  # fmt: skip
    defaults = Settings(postgres_url="postgresql://db").postgres_connection()
    assert (defaults.port, defaults.user, defaults.database) == (5432, "postgres", "postgres")


def test_an_unknown_nested_key_is_refused_by_name(monkeypatch) -> None:
    monkeypatch.setenv("RECLOOP_SERVING__TYPO", "1")
    with pytest.raises(ValidationError, match=r"serving\.typo"):
        Settings()
    monkeypatch.delenv("RECLOOP_SERVING__TYPO")
    monkeypatch.setenv("RECLOOP_MONITORING__RETRAIN_ON", '["nope"]')
    with pytest.raises(ValidationError, match=r"monitoring\.retrain_on"):
        Settings()


def test_production_config_is_rendered_from_the_urls(tmp_path: Path) -> None:
    from recloop.features import dbt, store

    settings = Settings(
        profile="production",
        home=tmp_path,
        postgres_url="postgresql://app:pw@db.example:5433/recs?sslmode=require",
        redis_url="redis://:secret@cache.example:6380/3",
    )
    feast = store.config(settings)
    assert feast["online_store"]["connection_string"] == "cache.example:6380,db=3,password=secret"
    assert feast["offline_store"]["sslmode"] == "require"
    assert feast["offline_store"]["db_schema"] == "feast"
    assert feast["registry"]["path"].startswith("postgresql+psycopg://app:pw@db.example:5433/recs")
    assert feast["registry"]["path"].endswith("&options=-csearch_path%3Dfeast_registry")
    output = dbt.profile(settings)["recloop"]["outputs"]["production"]
    assert (output["host"], output["port"], output["sslmode"]) == ("db.example", 5433, "require")
    # MLflow: the same database, its own schema; artifacts under home unless told otherwise.
    assert settings.tracking_uri().endswith("?sslmode=require&options=-csearch_path%3Dmlflow")
    assert settings.artifact_location() == (tmp_path / "mlflow" / "artifacts").as_uri()
    served = Settings(profile="production", mlflow_tracking_uri="http://mlflow:5000")
    assert served.artifact_location() is None  # the server's own artifact store
    shared = Settings(profile="production", mlflow_artifact_root="s3://bucket/mlflow")
    assert shared.artifact_location() == "s3://bucket/mlflow"
