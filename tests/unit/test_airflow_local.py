"""LocalAirflow's requests to Airflow's API when the metadata database refuses a write (a 500
"Database error"): what is safe to repeat is repeated, and a trigger is sent again under the
run id it chose, so that a run the failed request did create is not started twice. The API
here is a stand-in for httpx; that runs really start is tested through a real Airflow
(tests/integration/test_dags.py, test_demo.py)."""

from __future__ import annotations

import httpx
import pytest

from recloop import airflow_local
from recloop.airflow_local import AirflowError, LocalAirflow
from recloop.settings import Settings


class FakeApi:
    """Answers each request with the next of ``codes``; records what it was sent."""

    def __init__(self, *codes: int):
        self.codes = list(codes)
        self.sent: list[tuple[str, str, dict]] = []

    def __call__(self, method, url, headers=None, timeout=None, json=None, params=None):
        self.sent.append((method, url, json or {}))
        code = self.codes.pop(0)
        body = {"dag_run_id": (json or {}).get("dag_run_id"), "dags": []}
        if code >= 500:
            body = {"detail": {"reason": "Database error"}}
        return httpx.Response(code, json=body)


@pytest.fixture
def airflow(monkeypatch, tmp_path) -> LocalAirflow:
    monkeypatch.setattr(airflow_local.time, "sleep", lambda seconds: None)
    local = LocalAirflow(Settings(home=tmp_path), port=1)
    local._token = "token"  # no login: the stand-in API checks nothing
    return local


def test_a_trigger_is_repeated_under_its_own_run_id(airflow, monkeypatch) -> None:
    api = FakeApi(500, 500, 200)
    monkeypatch.setattr(airflow_local.httpx, "request", api)
    run_id = airflow.trigger("recloop_features", {"hour": 3})
    assert len(api.sent) == 3
    assert {body["dag_run_id"] for _, _, body in api.sent} == {run_id}
    assert all(body["conf"] == {"hour": 3} for _, _, body in api.sent)


def test_a_trigger_whose_run_was_created_after_all_returns_that_run(airflow, monkeypatch) -> None:
    api = FakeApi(500, 409)
    monkeypatch.setattr(airflow_local.httpx, "request", api)
    run_id = airflow.trigger("recloop_features")
    assert run_id == api.sent[0][2]["dag_run_id"] and len(api.sent) == 2


def test_errors_that_persist_or_are_not_the_servers_are_raised(airflow, monkeypatch) -> None:
    api = FakeApi(*[500] * airflow_local.ATTEMPTS)
    monkeypatch.setattr(airflow_local.httpx, "request", api)
    with pytest.raises(AirflowError, match="500"):
        airflow.trigger("recloop_features")
    assert len(api.sent) == airflow_local.ATTEMPTS
    # A refusal (4xx) is not repeated; nor is a POST other than a trigger.
    api = FakeApi(404, 500)
    monkeypatch.setattr(airflow_local.httpx, "request", api)
    with pytest.raises(AirflowError, match="404"):
        airflow.trigger("no_such_dag")
    assert len(api.sent) == 1
    with pytest.raises(AirflowError, match="500"):
        airflow.request("POST", "/somewhere", json={})
    # Reads are repeated.
    api = FakeApi(500, 200)
    monkeypatch.setattr(airflow_local.httpx, "request", api)
    assert airflow.request("GET", "/dags")["dags"] == []
    assert len(api.sent) == 2
