"""A real Airflow for one home: its api-server, scheduler and dag-processor as child processes,
and the few REST calls (Airflow's public API v2) that the demo and the end-to-end test make.

State lives under ``<home>/airflow`` (SQLite metadata, LocalExecutor, task logs), the same
folder ``make airflow`` opens, so every run the demo made can be inspected in the UI
afterwards. The API listens on 127.0.0.1 only; calls authenticate as the simple auth
manager's ``admin`` with the password Airflow generated into its home (never logged).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from recloop.settings import Settings

COMPONENTS = ("api-server", "scheduler", "dag-processor")
TERMINAL = {"success", "failed"}


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
    settings: Settings
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return environment(self.settings, self.port, self.extra_env)

    def start(self, timeout: float = 180.0) -> None:
        """Migrate the metadata database and start the components; returns once the API
        answers."""
        home = airflow_home(self.settings)
        (home / "logs").mkdir(parents=True, exist_ok=True)
        airflow = str(Path(sys.executable).with_name("airflow"))
        subprocess.run([airflow, "db", "migrate"], env=self.env, check=True, capture_output=True)
        commands = {
            "api-server": [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.port)],
            # Task logs are files in this home; no log server (and no port 8793) is needed.
            "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
            "dag-processor": [airflow, "dag-processor"],
        }
        for name, command in commands.items():
            log = open(home / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
            self.processes[name] = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
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
        self._check_alive()
        response = httpx.request(method, f"{self.url}/api/v2{path}", headers=self._headers(),
                                 timeout=60, **kwargs)  # fmt: skip
        if response.status_code >= 400:
            raise AirflowError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

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

    def wait_for_first(self, dag_id: str, run_type: str, timeout: float = 900.0) -> dict[str, Any]:
        """Wait for the first run of a type (e.g. the scheduled run an unpause creates)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [r for r in self.runs(dag_id) if r["run_type"] == run_type]
            if runs:
                return self.wait(dag_id, runs[0]["dag_run_id"], deadline - time.monotonic())
            time.sleep(1)
        raise AirflowError(f"no {run_type} run of {dag_id} appeared within {timeout:.0f} s")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        body = {"logical_date": None, "conf": conf or {}}
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

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
