"""The name Airflow records as the host that ran a task instance (``TaskInstance.hostname``).

Airflow calls ``[core] hostname_callable`` in the process that runs a task and stores what it
returns; the UI and the REST API show it. Airflow's default is the machine's FQDN, the same
for every Celery worker on one machine. With
``AIRFLOW__CORE__HOSTNAME_CALLABLE=recloop.airflow_hostname.worker_name``, a worker started with
``RECLOOP_WORKER_NAME`` in its environment is recorded under that name; any other process
still gets the FQDN, exactly as Airflow's default would give it.
"""

from __future__ import annotations

import os

WORKER_NAME = "RECLOOP_WORKER_NAME"


def worker_name() -> str:
    """``$RECLOOP_WORKER_NAME`` when set, else Airflow's default (the FQDN)."""
    name = os.environ.get(WORKER_NAME, "").strip()
    if name:
        return name
    try:
        from airflow.utils.net import getfqdn
    except ImportError:  # a worker with the task SDK only
        from socket import getfqdn
    return getfqdn()
