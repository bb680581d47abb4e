#!/usr/bin/env bash
# The local cluster: recloop's multi-process topology on loopback (issue 18).
#   infra/cluster.sh up [--airflow-workers N]|status|down
# `up` installs what is missing (Debian's postgresql, through infra/setup.sh's apt-get branch),
# then starts PostgreSQL as the postgres user (Airflow's and MLflow's metadata) and the MLflow
# tracking server on it, and prints where each listens and what to export. Files live under
# $RECLOOP_HOME/cluster/ (PostgreSQL's data under /var/lib/recloop/ when the postgres user cannot
# reach the workspace; `status` says where). Ports: RECLOOP_CLUSTER_PG_PORT (5433),
# RECLOOP_CLUSTER_MLFLOW_PORT (5001). `down` stops them and keeps the data.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:-status}
case "$action" in
  up) bash infra/setup.sh ;;
  status|down) [ -x .venv/bin/python ] || { echo "cluster: not set up (run: bash infra/cluster.sh up)" >&2; exit 1; } ;;
  -h|--help) ;;
  *) echo "usage: $0 up [--airflow-workers N]|status|down" >&2; exit 2 ;;
esac
exec .venv/bin/python -m pipelines.cluster "$action" "${@:2}"
