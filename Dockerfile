# The recloop image: the package, its pinned environment (requirements.lock, torch 2.13.0 CPU
# build), the DAGs and the Feast repository baked in. One image runs every part on Kubernetes
# (infra/k8s/README.md): `recloop serve`, the Airflow components of the official Helm chart
# (scheduler, DAG processor, triggerer, API server, Celery workers, KubernetesExecutor pods) and
# `mlflow server`.
#
#   docker build -t recloop:0.1.0 .
#   docker run --rm -p 8000:8000 -e RECLOOP_ADMIN_TOKEN=... -v DATA:/data/recloop recloop:0.1.0
#
# The entrypoint (infra/k8s/entrypoint.sh) runs `recloop ARGS`; a first argument naming
# airflow, mlflow, feast, python, bash, sh or env runs that program (what the Helm chart starts).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RECLOOP_HOME=/data/recloop \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/recloop/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

# uid 50000, gid 0: the user the Apache Airflow chart runs its pods as (values `uid`, `gid`)
RUN useradd --uid 50000 --gid 0 --create-home --home-dir /home/recloop --shell /bin/bash recloop

WORKDIR /opt/recloop

# torch first and alone, from the CPU wheel index (PyPI's linux build pulls CUDA: several GB),
# then the whole pinned environment (torch==2.13.0 is already satisfied by 2.13.0+cpu)
COPY requirements.lock ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    && pip install -r requirements.lock

# The KubernetesExecutor's provider (values-kubernetes.yaml), resolved against the lock: what
# `pip install --dry-run -c requirements.lock apache-airflow-providers-cncf-kubernetes==10.25.0`
# chose. The Celery provider comes with requirements.lock.
RUN pip install -c requirements.lock \
    "apache-airflow-providers-cncf-kubernetes==10.25.0" "kubernetes==36.0.3" \
    "kubernetes_asyncio==36.1.0" "aiofiles==25.1.0" "durationpy==0.11" \
    "websocket-client==1.9.2" "requests-oauthlib==2.0.0" "oauthlib==4.0.1"

# The package, editable as infra/setup.sh installs it: the code finds dags/ and feature_repo/
# beside itself (pipelines/orchestration/airflow_runner.py, pipelines/features/store.py)
COPY pyproject.toml README.md ./
COPY pipelines/ pipelines/
COPY models/ models/
COPY serving/ serving/
COPY dags/ dags/
COPY feature_repo/ feature_repo/
COPY infra/k8s/entrypoint.sh /usr/local/bin/recloop-entrypoint
RUN pip install --no-deps -e . \
    && python -c "import torch, airflow, feast, mlflow, faiss, redis, duckdb, pipelines.cli" \
    && python -m compileall -q pipelines models serving dags \
    && chmod 755 /usr/local/bin/recloop-entrypoint \
    && mkdir -p "$RECLOOP_HOME" "$AIRFLOW_HOME" \
    && chown -R 50000:0 "$RECLOOP_HOME" "$AIRFLOW_HOME" \
    && chmod -R g=u "$RECLOOP_HOME" "$AIRFLOW_HOME"

USER 50000
VOLUME ["/data/recloop"]

# `recloop serve --port` default (serving/config.py ServingConfig.port)
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)"]

ENTRYPOINT ["recloop-entrypoint"]
CMD ["serve", "--host", "0.0.0.0", "--allow-remote", "--port", "8000", "--workers", "2"]
