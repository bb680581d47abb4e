"""Airflow: the DAG task bodies, DAG defaults and the runner (``airflow dags test`` / standalone)."""
