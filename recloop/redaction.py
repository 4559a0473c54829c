"""Keeping the configured secrets out of what the platform writes: log lines, tracebacks,
stored error texts and Airflow task logs.

An exception's message can carry a secret the code never meant to print: MLflow's "API request
to <tracking URI> failed" names a tracking URI with its credentials, psycopg names users and
hosts. ``redact`` blanks every secret the settings hold out of a text; ``log_failure`` logs an
exception that way; ``mask_in_airflow`` hands the same secrets to Airflow's secrets masker, so
that a task's own traceback (which Airflow prints) is masked too.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import traceback
from urllib.parse import unquote, urlsplit

from recloop.settings import Settings


def secrets_of(settings: Settings) -> set[str]:
    """The secret strings the settings hold: a configured MLflow tracking URI, the Postgres
    and Redis URLs, the API keys, and any password or user-info token in those URLs (as
    written and decoded). The default tracking URI is not one: locally a SQLite path, in
    production the Postgres URL's database, whose password is blanked with it."""
    secrets = set()
    for secret in (settings.mlflow_tracking_uri, settings.postgres_url, settings.redis_url):
        if secret is not None:
            secrets.add(secret.get_secret_value())
    secrets |= {key.get_secret_value() for key in settings.serving.api_keys}
    for url in list(secrets):
        with contextlib.suppress(ValueError):  # not a URL: blanked out whole all the same
            parts = urlsplit(url)
            for part in (parts.password, parts.username if parts.password is None else None):
                if part:  # a password, or a token written as the whole user info
                    secrets |= {part, unquote(part)}
    return secrets - {""}


def redact(settings: Settings, text: str) -> str:
    """``text`` with every secret the settings hold replaced by ***."""
    for secret in sorted(secrets_of(settings), key=len, reverse=True):  # a URL before its parts
        text = text.replace(secret, "***")
    return text


def describe(settings: Settings, error: BaseException) -> str:
    """An exception's class and message, redacted: what may be stored or shown to operators."""
    return redact(settings, f"{type(error).__name__}: {error}")


def log_failure(
    log: logging.Logger,
    settings: Settings,
    message: str,
    error: BaseException,
    level: int = logging.ERROR,
    *,
    trace: bool = True,
) -> str:
    """Log ``message`` with the exception (its traceback when ``trace``), redacted; returns
    the redacted class and message (``describe``)."""
    detail = describe(settings, error)
    if trace:
        lines = redact(settings, "".join(traceback.format_exception(error)).rstrip())
        log.log(level, "%s: %s\n%s", message, detail, lines)
    else:
        log.log(level, "%s: %s", message, detail)
    return detail


def mask_in_airflow(settings: Settings) -> None:
    """Register the secrets with Airflow's secrets masker (the task's own log and the
    supervisor's), so that a task failing with a secret in its message or traceback shows
    *** in the Airflow UI. Outside a task the masker only keeps them in this process."""
    # Imported by name: the serving image carries no Airflow, and its dependency scan
    # (docker/serving_requirements.py, tests/integration/test_bento_build.py) follows import
    # statements. This runs only in a process that imported Airflow already (load_settings).
    mask_secret = importlib.import_module("airflow.sdk.log").mask_secret
    for secret in secrets_of(settings):
        mask_secret(secret)
