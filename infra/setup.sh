#!/usr/bin/env bash
# Set up recloop on a fresh machine: a virtual environment in .venv with the pinned packages
# (requirements.lock), the recloop package itself (editable), and the Debian packages it runs
# (redis-server; shellcheck, which infra/test.sh runs; postgresql and haproxy, for the local
# cluster; a Java 17 runtime, for the Spark feature engine), installed with one apt-get call when
# missing (as root, or through sudo). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v shellcheck >/dev/null || missing+=(shellcheck)
# PostgreSQL: the local cluster's metadata database (infra/cluster.sh; its tests start one)
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)  # Debian's postgresql-common
# HAProxy: the load balancer in front of serving replicas (pipelines/cluster/serving_replicas.py)
command -v haproxy >/dev/null || missing+=(haproxy)
# Java 17+: PySpark 4's JVM (RECLOOP_FEATURE_ENGINE=spark, pipelines/features/spark_engine.py)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]} (apt-get)"
  SUDO=(); [ "$(id -u)" = 0 ] || SUDO=(sudo)
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  hash -r
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.recloop-lock.sha
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned packages (a few minutes the first time)"
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  # torch first and alone: the pinned CPU build (a multi-GB CUDA build otherwise)
  .venv/bin/pip install -q "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/pip install -q -r requirements.lock 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/pip install -q --no-deps -e . 2>&1 | grep -v '^WARNING: Location' || true
  check='import torch, airflow, feast, mlflow, great_expectations, faiss, redis, duckdb, pyspark'
  .venv/bin/python -c "$check" >/dev/null 2>&1 \
    || { .venv/bin/python -c "$check"; echo "setup: packages failed to import" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv/bin/recloop, $(redis-server --version | cut -d' ' -f3))"
