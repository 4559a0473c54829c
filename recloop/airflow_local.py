"""A real Airflow for one home: its api-server, scheduler and dag-processor as child processes,
and the few REST calls (Airflow's public API v2) that the demo and the end-to-end test make.

Two executors, chosen by ``LocalAirflow(executor=...)`` (default: by the settings' profile):

- ``local`` (the local profile): SQLite metadata and the LocalExecutor. State lives under
  ``<home>/airflow`` (metadata, task logs), the same folder ``make airflow`` opens, so every
  run the demo made can be inspected in the UI afterwards.
- ``celery`` (the production profile): metadata in a Postgres database on the server of
  ``postgres_url`` (``<database>_airflow``, created when missing: Airflow's migrations and
  MLflow's both keep an ``alembic_version`` table, so they cannot share one database), the
  CeleryExecutor with ``redis_url`` as its broker and the same Postgres database as its result
  backend, and ``workers`` Celery workers (``airflow celery worker``) as further children.
  Each worker has its own name (its Celery node name, and the host Airflow records for every
  task it runs); task logs are still files under ``<home>/airflow/logs``.

The API listens on 127.0.0.1 only; calls authenticate as the simple auth manager's ``admin``
with the password Airflow generated into its home (never logged).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from recloop.airflow_hostname import WORKER_NAME
from recloop.postgres_warehouse import create_database, database_url
from recloop.settings import Settings

COMPONENTS = ("api-server", "scheduler", "dag-processor")
# Airflow's SQLite metadata database (the local profile) now and then refuses a write while
# the scheduler holds it, and the API answers 500 "Database error" (seen once in a clean-clone
# test run: the audit log insert of a trigger). Requests that are safe to repeat are repeated,
# this many times in all, a second apart and more.
ATTEMPTS = 4
REPEATABLE = {"GET", "PATCH"}
TERMINAL = {"success", "failed"}
Executor = Literal["local", "celery"]
# Airflow's own default queue ([operators] default_queue).
DEFAULT_QUEUE = "default"
# The queue of recloop_training's train task (bigger machines in a cluster: docker/compose.yaml);
# the workers started here serve it too.
TRAINING_QUEUE = "training"


class AirflowError(RuntimeError):
    pass


def airflow_home(settings: Settings) -> Path:
    return settings.home / "airflow"


def environment(
    settings: Settings, port: int, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment every Airflow component (and so every task) runs with."""
    repo = Path(__file__).resolve().parents[1]
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(airflow_home(settings)),
        "AIRFLOW__CORE__DAGS_FOLDER": str(repo / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Unpausing a DAG makes the scheduler run its latest cron tick at once (catchup=False
        # still runs the most recent interval), so the caller unpauses each when it wants that.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        # A few task processes are plenty on a laptop (the default keeps 32 idle workers).
        "AIRFLOW__CORE__PARALLELISM": "4",
        # New DAG files are picked up within seconds rather than minutes.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "RECLOOP_HOME": str(settings.home),
        **(extra or {}),
    }


def metadata_database(settings: Settings) -> str:
    """The Postgres database for Airflow's metadata: ``<postgres_url's database>_airflow``."""
    return f"{settings.postgres_connection().database}_airflow"


def celery_environment(settings: Settings, database: str, namespace: str | None) -> dict[str, str]:
    """What the CeleryExecutor adds to every component's environment: Postgres metadata, the
    Redis broker, a Postgres result backend, and the queue (``namespace``, when given, is both
    the queue and a prefix of every broker key, so two Airflows can share one Redis)."""
    metadata = database_url(settings, database, driver="psycopg")
    env = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": settings.redis_url.get_secret_value(),
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata}",
        # One task slot per worker, and no message taken ahead of a free slot: a worker busy
        # with a task leaves the next one on the queue for an idle worker.
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": namespace or DEFAULT_QUEUE,
        # The host each task instance records: the worker's own name (recloop.airflow_hostname).
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "recloop.airflow_hostname.worker_name",
    }
    if namespace:
        env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"] = f"{namespace}:"
    return env


def wait_for_api(
    url: str, processes: dict[str, subprocess.Popen], logs: Path, timeout: float
) -> None:
    """Return once Airflow's API at ``url`` answers its health check. AirflowError when one
    of ``processes`` (name -> process, logging to ``<logs>/<name>.log``) exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(processes, logs)
        try:
            if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AirflowError(f"Airflow's API did not answer within {timeout:.0f} s (logs: {logs})")


def _check_alive(processes: dict[str, subprocess.Popen], logs: Path) -> None:
    for name, process in processes.items():
        if process.poll() is not None:
            raise AirflowError(
                f"airflow {name} exited with {process.returncode}; see {logs / (name + '.log')}"
            )


@dataclass
class LocalAirflow:
    """Airflow's components for one home, as child processes of this one.

    ``executor``: ``local`` or ``celery`` (see the module's docstring); None picks ``celery``
    for the production profile and ``local`` otherwise. The executor does not change which
    backends recloop's own tasks use: those follow the settings the tasks read (``extra_env``).
    With ``celery``: ``workers`` Celery workers, the metadata in ``database`` (default
    ``metadata_database(settings)``), and ``namespace`` (default: none, Airflow's queue
    ``default`` and unprefixed broker keys) to keep this Airflow's queue and broker keys apart
    from any other's on the same Redis.
    """

    settings: Settings
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _token: str | None = None
    executor: Executor | None = None
    workers: int = 2
    database: str | None = None
    namespace: str | None = None

    def __post_init__(self) -> None:
        if self.executor is None:
            self.executor = "celery" if self.settings.profile == "production" else "local"
        if self.executor not in ("local", "celery"):
            raise ValueError(f"executor: {self.executor!r} is neither 'local' nor 'celery'")
        if self.executor == "celery" and self.workers < 1:
            raise ValueError("workers: the CeleryExecutor needs at least one worker")
        if self.database is None and self.executor == "celery":
            self.database = metadata_database(self.settings)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        if self.executor == "celery":
            assert self.database is not None
            celery = celery_environment(self.settings, self.database, self.namespace)
            return environment(self.settings, self.port, {**celery, **self.extra_env})
        return environment(self.settings, self.port, self.extra_env)

    @property
    def queue(self) -> str:
        return self.namespace or DEFAULT_QUEUE

    @property
    def worker_names(self) -> list[str]:
        """The Celery node names of the workers, which are also the hosts Airflow records for
        the task instances they run (``worker-<n>@<this machine>``)."""
        if self.executor != "celery":
            return []
        return [f"worker-{n}@{socket.gethostname()}" for n in range(1, self.workers + 1)]

    def start(self, timeout: float = 180.0) -> None:
        """Migrate the metadata database and start the components; returns once the API
        answers."""
        home = airflow_home(self.settings)
        (home / "logs").mkdir(parents=True, exist_ok=True)
        airflow = str(Path(sys.executable).with_name("airflow"))
        preload = [sys.executable, "-m", "recloop.airflow_preload"]
        scheduler = preload if self.executor == "local" else [airflow]
        if self.executor == "celery":
            assert self.database is not None
            create_database(self.settings, self.database)  # Airflow's, beside recloop's
        subprocess.run([airflow, "db", "migrate"], env=self.env, check=True, capture_output=True)
        commands = {
            "api-server": [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.port)],
            # Task logs are files in this home; no log server (and no port 8793) is needed.
            # Tasks are forked from the scheduler (LocalExecutor) or from a Celery worker, so
            # whichever runs them starts with their libraries imported (recloop.airflow_preload).
            "scheduler": [*scheduler, "scheduler", "--skip-serve-logs"],
            "dag-processor": [airflow, "dag-processor"],
        }
        envs = dict.fromkeys(commands, self.env)
        for name in self.worker_names:
            short = name.split("@")[0]
            commands[short] = [*preload, "celery", "worker", "--celery-hostname", name,
                               "--queues", f"{self.queue},{TRAINING_QUEUE}",
                               "--concurrency", "1", "--skip-serve-logs"]  # fmt: skip
            envs[short] = {**self.env, WORKER_NAME: name}
        for name, command in commands.items():
            log = open(home / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
            self.processes[name] = subprocess.Popen(
                command, env=envs[name], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_for_api(self.url, self.processes, home / "logs", timeout)

    def _check_alive(self) -> None:
        _check_alive(self.processes, airflow_home(self.settings) / "logs")

    def stop(self) -> None:
        from recloop.processes import stop_tree

        for process in self.processes.values():
            stop_tree(process)
        self.processes.clear()

    # -- the Celery workers, through Celery's remote control over the broker -----------------
    def _celery(self) -> Any:
        """A Celery client of this Airflow's broker (for remote control, not for tasks)."""
        from celery import Celery

        options = {"global_keyprefix": f"{self.namespace}:"} if self.namespace else {}
        return Celery(broker=self.settings.redis_url.get_secret_value(),
                      broker_transport_options=options)  # fmt: skip

    def wait_for_workers(self, timeout: float = 180.0) -> None:
        """Return once every worker answers a ping over the broker."""
        if self.executor != "celery":
            return
        expected = set(self.worker_names)
        deadline = time.monotonic() + timeout
        with self._celery() as app:
            while time.monotonic() < deadline:
                self._check_alive()
                replies = app.control.ping(destination=sorted(expected), timeout=1.0)
                if expected <= {node for reply in replies for node in reply}:
                    return
                time.sleep(1)
        logs = airflow_home(self.settings) / "logs"
        raise AirflowError(
            f"Celery workers {sorted(expected)} did not answer in {timeout:.0f} s (logs: {logs})"
        )

    def remove_queue(self, worker: str) -> None:
        """Stop ``worker`` (a node name) taking tasks from the queue; it finishes the task it
        holds and stays up. As ``airflow celery remove-queue -H <worker> -q <queue>``."""
        with self._celery() as app:
            replies = app.control.cancel_consumer(self.queue, destination=[worker], reply=True,
                                                  timeout=10.0)  # fmt: skip
        if not any(worker in reply for reply in replies):
            raise AirflowError(f"Celery worker {worker} did not confirm leaving {self.queue}")

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            passwords = airflow_home(self.settings) / "simple_auth_manager_passwords.json.generated"
            password = json.loads(passwords.read_text())["admin"]
            response = httpx.post(f"{self.url}/auth/token", timeout=30,
                                  json={"username": "admin", "password": password})  # fmt: skip
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        attempts = ATTEMPTS if method in REPEATABLE else 1
        response = self._send(method, path, attempts, **kwargs)
        if response.status_code >= 400:
            raise AirflowError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def _send(self, method: str, path: str, attempts: int, **kwargs: Any) -> httpx.Response:
        """The response, once it is not a server error or after ``attempts`` tries."""
        for attempt in range(attempts):
            self._check_alive()
            response = httpx.request(method, f"{self.url}/api/v2{path}", headers=self._headers(),
                                     timeout=60, **kwargs)  # fmt: skip
            if response.status_code < 500 or attempt == attempts - 1:
                return response
            time.sleep(2**attempt)
        raise AssertionError("unreachable: the last attempt returns")

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            known = {dag["dag_id"] for dag in self.request("GET", "/dags")["dags"]}
            if set(dag_ids) <= known:
                return
            time.sleep(2)
        raise AirflowError(f"DAGs {dag_ids} not parsed within {timeout:.0f} s")

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Start a run and return its id. The id is chosen here, so that a trigger the API
        failed to answer can be sent again: if the first did create the run, the second
        finds it (409) instead of starting another."""
        run_id = f"manual__{datetime.now(UTC).isoformat()}_{secrets.token_hex(3)}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        path = f"/dags/{dag_id}/dagRuns"
        response = self._send("POST", path, ATTEMPTS, json=body)
        if response.status_code == 409:  # a failed try had created it after all
            return run_id
        if response.status_code >= 400:
            raise AirflowError(f"POST {path}: {response.status_code} {response.text[:500]}")
        return response.json()["dag_run_id"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return self.request("GET", path)["task_instances"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]

    def wait(self, dag_id: str, run_id: str, timeout: float = 900.0) -> dict[str, Any]:
        """Block until the run finishes; a failed run raises with its failed tasks named."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL:
                if run["state"] == "failed":
                    tasks = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
                    failed = [
                        t["task_id"] for t in tasks["task_instances"] if t["state"] == "failed"
                    ]
                    raise AirflowError(
                        f"{dag_id} run {run_id} failed in {failed}; task logs under "
                        f"{airflow_home(self.settings) / 'logs' / ('dag_id=' + dag_id)}"
                    )
                return run
            time.sleep(1)
        raise AirflowError(f"{dag_id} run {run_id} did not finish within {timeout:.0f} s")
