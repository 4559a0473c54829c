"""Create the secret files docker/compose.yaml mounts, with fresh random values.

    python3 docker/make_secrets.py            # into docker/secrets/ (ignored by git)
    python3 docker/make_secrets.py --dir DIR

A file that already exists is kept: the database volume was initialised with that password,
and rerunning must not lock the services out. Delete the folder (and the volumes) to rotate.
Standard library only, so it runs with any Python 3 before anything is installed.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent / "secrets"
USER = "recloop"  # POSTGRES_USER in compose.yaml
HOST = "postgres:5432"  # the compose service


def values(password: str) -> dict[str, str]:
    """Every secret by file name, all the Postgres URLs sharing ``password``."""
    return {
        "postgres_password": password,
        # The field name in recloop's settings (RECLOOP_SECRETS_DIR reads one file per field).
        "postgres_url": f"postgresql://{USER}:{password}@{HOST}/recloop",
        "airflow_sql_alchemy_conn": f"postgresql+psycopg2://{USER}:{password}@{HOST}/airflow",
        "airflow_result_backend": f"db+postgresql://{USER}:{password}@{HOST}/airflow",
        "mlflow_backend_store_uri": f"postgresql+psycopg://{USER}:{password}@{HOST}/mlflow",
        "airflow_fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "airflow_jwt_secret": secrets.token_urlsafe(32),
        "airflow_api_secret_key": secrets.token_urlsafe(32),
        "airflow_admin_password": secrets.token_urlsafe(16),
        "api_keys": secrets.token_urlsafe(32),  # one key per line; add lines for more clients
    }


def make_secrets(directory: Path = DEFAULT_DIR) -> dict[str, Path]:
    """Write the missing secret files under ``directory``; every secret's path."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    password_file = directory / "postgres_password"
    if password_file.is_file():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(24)  # URL-safe: it goes into URLs unescaped
    paths = {}
    for name, value in values(password).items():
        path = directory / name
        if not path.exists():
            path.write_text(value)  # no newline: Airflow's *_CMD keeps what `cat` prints
            # Compose bind-mounts file secrets as they are: the containers' users (airflow,
            # bentoml, postgres) must be able to read them; the folder keeps others out.
            path.chmod(0o644)
        paths[name] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where to write them")
    args = parser.parse_args()
    for name, path in make_secrets(args.dir).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
