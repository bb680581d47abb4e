"""recloop pipelines: each stage of the daily loop as plain functions, testable without Airflow."""
