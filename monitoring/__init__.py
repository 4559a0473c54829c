"""Online metric estimation, off-policy evaluation and drift alarms over what the service
logged; the recloop_metrics DAG runs ``monitoring.hourly`` every hour (see its docstring)."""
