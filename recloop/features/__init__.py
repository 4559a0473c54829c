"""The feature pipeline's steps, callable from the CLI and from the Airflow DAG alike."""
