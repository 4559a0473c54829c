"""Secrets stay out of logs, stored error texts and Airflow's task logs (recloop.redaction)."""

from __future__ import annotations

import logging

from recloop import redaction
from recloop.settings import Settings

TRACKING = "https://alice:s3cret-pass@mlflow.example.com"
TOKEN_ONLY = "redis://tok_ABC123XYZ@cache.example.com:6379/0"


def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, mlflow_tracking_uri=TRACKING, redis_url=TOKEN_ONLY,
                    serving={"api_keys": ["key-9f8e7d6c"]})  # fmt: skip


def test_every_configured_secret_is_blanked(tmp_path) -> None:
    text = (f"API request to {TRACKING}/api/2.0/x failed; password s3cret-pass; "
            f"decoded; token tok_ABC123XYZ; url {TOKEN_ONLY}; key key-9f8e7d6c")  # fmt: skip
    said = redaction.redact(settings(tmp_path), text)
    for secret in ("s3cret-pass", "alice:", "tok_ABC123XYZ", "key-9f8e7d6c", "mlflow.example"):
        assert secret not in said, said
    assert said.count("***") >= 5


def test_a_logged_failure_has_no_secret_in_its_line_or_traceback(tmp_path, caplog) -> None:
    log = logging.getLogger("recloop.test_redaction")
    try:
        raise ConnectionError(f"API request to {TRACKING}/api/2.0/mlflow/runs failed")
    except ConnectionError as error:
        with caplog.at_level(logging.ERROR, logger=log.name):
            detail = redaction.log_failure(log, settings(tmp_path), "download failed", error)
    assert detail == "ConnectionError: API request to ***/api/2.0/mlflow/runs failed"
    (record,) = caplog.records
    assert "s3cret-pass" not in record.getMessage()
    assert "Traceback" in record.getMessage()  # the traceback is kept, redacted
    assert record.exc_info is None  # so no handler prints it again unredacted


def test_airflows_masker_learns_the_secrets(tmp_path) -> None:
    from airflow.sdk.log import redact

    redaction.mask_in_airflow(settings(tmp_path))
    assert "s3cret-pass" not in redact(f"failed to reach {TRACKING}")
    assert "key-9f8e7d6c" not in redact("the key was key-9f8e7d6c")


def test_settings_loaded_in_airflow_teach_its_masker(tmp_path, monkeypatch) -> None:
    """Every task loads its settings through load_settings: inside Airflow that is where the
    masker learns them, so a task's own traceback is masked too."""
    import airflow.sdk  # noqa: F401  (what makes load_settings mask: Airflow is running it)
    from airflow.sdk.log import redact

    from recloop.settings import load_settings

    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("RECLOOP_MLFLOW_TRACKING_URI", "https://bob:other-s3cret@mlflow.example")
    load_settings()
    assert "other-s3cret" not in redact("API request to https://bob:other-s3cret@mlflow.example")
