-- Runs once, when the postgres volume is first initialised: the image creates the database
-- named by POSTGRES_DB (recloop: event log, warehouse, Feast); Airflow and MLflow get their own.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
