#!/usr/bin/env bash
# Entrypoint of the recloop image (Dockerfile): `recloop ARGS` by default, so that
#   docker run IMAGE serve --host 0.0.0.0 --allow-remote      runs `recloop serve ...`
# and the programs the Apache Airflow Helm chart and the manifests start by name run as they are:
# the chart's containers start `bash -c "exec airflow scheduler"`, its init containers
# `airflow db check-migrations`, KubernetesExecutor pods `airflow tasks run ...`, MLflow's pod
# `mlflow server ...`. So a first argument naming one of those programs is executed itself:
# `airflow` is Airflow's own CLI here; recloop's standalone wrapper is `recloop airflow`.
set -euo pipefail
case "${1:-}" in
  recloop | airflow | mlflow | feast | python | python3 | bash | sh | env)
    exec "$@"
    ;;
  *)
    exec recloop "$@"
    ;;
esac
