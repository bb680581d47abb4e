"""One typed settings object, read from ``RECLOOP_*`` environment variables.

Nothing here touches the disk or the network: ``Settings.from_env()`` only reads the
environment, and ``Settings.ensure_dirs()`` is the one place that creates the workspace.

| variable                     | default                                   | meaning |
|------------------------------|-------------------------------------------|---------|
| ``RECLOOP_HOME``             | ``~/.recloop``                            | workspace root: everything a run writes |
| ``RECLOOP_REDIS_URL``        | ``redis://127.0.0.1:6399/0``              | Redis online store (loopback); a Redis Cluster: ``redis+cluster://[:pw@]host:port,host:port,...`` (seed nodes, database 0; ``infra/redis-cluster.sh`` prints it; checked when a client is built, :mod:`pipelines.features.redis_client`) |
| ``RECLOOP_MLFLOW_URI``       | ``sqlite:///$RECLOOP_HOME/mlflow/mlflow.db`` | MLflow tracking + registry URI |
| ``RECLOOP_SCALE``            | ``demo``                                  | default simulator scale |
| ``RECLOOP_SEED``             | ``42``                                    | default simulator seed |
| ``RECLOOP_MAX_BAD_ROW_SHARE``| ``0.05``                                  | validation: share of bad rows that fails a partition |
| ``RECLOOP_MIN_VOLUME_RATIO`` | ``0.2``                                   | validation: day volume / trailing-7-day mean below this fails |
| ``RECLOOP_IMPORTED_MIN_VOLUME_RATIO`` | ``0``                            | validation of imported days: volume / trailing-7-day median below this fails (0: never; below ``RECLOOP_MIN_VOLUME_RATIO`` warns) |
| ``RECLOOP_RATING_POSITIVE``  | ``0``                                     | ranker without impressions: a rating >= this is a positive (0: every rating, as retrieval and evaluation count it) |
| ``RECLOOP_RANKER_WINDOW_DAYS`` | ``28``                                 | ranker training window: labelled impressions of the last N validated days (the last one held out for early stopping and calibration) |
| ``RECLOOP_RANKER``           | ``auto``                                  | the daily ranker (``ranker`` artifact): ``auto`` (``cross_lr`` and ``dlrm_dot`` both trained, the better on the validation day kept: ``pipelines.ranking.train.AUTO_KINDS``), ``cross_lr`` (L2 logistic regression over item / category × user-segment crosses, :mod:`models.cross_lr`), ``dlrm_dot``, ``dlrm_cross``, ``dlrm_fm``, ``deepfm``, ``wide_deep`` or ``logistic`` (``pipelines.ranking.train.RANKERS``; the ``ranker_lr`` baseline is always trained too) |
| ``RECLOOP_TRAIN_EXTRA``      | (empty)                                   | comma-separated retrievers the daily DAG's ``train_extra`` task also trains (``bpr``, ``ncf``, ``gru4rec``, ``sasrec``, ``bert4rec``, ``dssm``), each then a candidate source the service can be given a quota of (``RECLOOP_SERVE_SOURCES``) |
| ``RECLOOP_RANKER_IPS``       | ``0``                                     | 1: the daily ranker's loss weighted by inverse logged propensities (IPS; impression-trained rankers only; off: measured worse, benchmarks/README.md) |
| ``RECLOOP_GATE_TEST_DAYS``   | ``1``                                     | forward evaluation and gate on day D: models trained through D−H scored on the pooled positives of days D−H+1..D (H test days; 1: the day itself) |
| ``RECLOOP_TASK_RETRIES``     | ``2``                                     | Airflow retries per task |
| ``RECLOOP_RETRY_DELAY_S``    | ``30``                                    | Airflow delay between retries, seconds |
| ``RECLOOP_SERVE_URL``        | ``http://127.0.0.1:8000``                 | where the online service answers (``recloop status`` asks its ``/health/ready``) |
| ``RECLOOP_MAX_PURCHASE_VALUE`` | ``10``                                  | a purchase's ``value`` counts at most this in the features (a click always counts 1) |
| ``RECLOOP_TRAIN_NPROC``      | ``1``                                     | processes the DAG trains the two-tower and the ranker with (data-parallel DDP through ``torchrun``, :mod:`pipelines.core.distributed`; 1: one plain process) |
| ``RECLOOP_INDEX_MEMORY_BUDGET_MB`` | ``4096``                            | item index: an in-memory FAISS index estimated above this many MiB is built as IVF with on-disk inverted lists instead (:func:`pipelines.retrieval.faiss_index.choose_kind`) |
| ``RECLOOP_SIM_SEQUENTIAL``  | ``0``                                     | simulator: strength in [0, 1] of the sequential structure (a user's next interests follow a category transition matrix from their last click; 0: today's world byte for byte; :mod:`pipelines.data.simulate`) |
| ``RECLOOP_FEATURE_ENGINE``  | ``duckdb``                                | what computes the feature tables: ``duckdb`` (embedded) or ``spark`` (PySpark, needs Java 17+; :mod:`pipelines.features.spark_engine`) |
| ``RECLOOP_SPARK_MASTER``    | ``local[2]``                              | Spark master URL of the ``spark`` feature engine (``local[N]``: in this process's JVM; ``spark://host:7077``, ``yarn``, ``k8s://...``: a cluster) |
| ``RECLOOP_MATERIALIZE_WRITER`` | ``bulk``                               | what writes D's feature rows into Redis: ``bulk`` (Feast's keys, fields and bytes, written from Arrow in pipelined chunks, ~12x faster: :mod:`pipelines.features.bulk_write`) or ``feast`` (Feast's ``materialize``) |
| ``RECLOOP_HISTORICAL_READER`` | ``asof``                               | what answers a training frame's point-in-time lookups on the file store: ``asof`` (Feast's answer, a day of events at a time from the tables in time: :mod:`pipelines.features.asof`) or ``feast`` (Feast's ``get_historical_features``, which reads every daily table) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

RANKERS = (
    "auto",
    "cross_lr",
    "dlrm_dot",
    "dlrm_cross",
    "dlrm_fm",
    "deepfm",
    "wide_deep",
    "logistic",
)
"""The values of ``RECLOOP_RANKER`` (``pipelines.ranking.train.RANKERS`` builds each; ``auto``
chooses between two of them, ``pipelines.ranking.train.fit_daily_ranker``)."""
WORKSPACE_DIRS = ("data", "quarantine", "features", "mlflow", "airflow", "artifacts", "reports")


def env_text(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """``env[name]``; ``default`` when it is unset or empty (an empty variable means unset)."""
    return env.get(name) or default


def env_float(env: Mapping[str, str], name: str, default: float | None = None) -> float | None:
    """``env[name]`` as a float (``default`` when unset or empty); ``ValueError`` naming the
    variable when it is not a number."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a number") from exc


def env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    """``env[name]`` as an int (``default`` when unset or empty); ``ValueError`` naming the
    variable when it is not an integer."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not an integer") from exc


def _positive(value: int, name: str, unit: str = "days") -> int:
    """``value`` when it is at least 1; ``ValueError`` naming the variable otherwise."""
    if value < 1:
        raise ValueError(f"{name}={value}: expected a positive number of {unit}")
    return value


@dataclass(frozen=True)
class Settings:
    """All recloop settings. Build with :meth:`from_env`; paths are derived from ``home``."""

    home: Path
    redis_url: str = "redis://127.0.0.1:6399/0"
    mlflow_uri: str = ""
    scale: str = "demo"
    seed: int = 42
    max_bad_row_share: float = 0.05
    min_volume_ratio: float = 0.2
    imported_min_volume_ratio: float = 0.0
    rating_positive: float = 0.0
    """Ranker on logs without impressions: a rating at or above this is a positive, below it a
    logged negative. 0 (was 4): every rating is an engagement, as the retrieval models and every
    evaluation count it; a ranker taught "liked" (>= 4) reordered the engagements it is judged on
    (MovieLens 100K served forward NDCG@10 0.287 at 4, 0.352 at 0; benchmarks/README.md)."""
    gate_test_days: int = 1
    ranker_window_days: int = 28
    ranker: str = "auto"
    ranker_ips: bool = False  # IPS loss weights from the logged propensities (issue 16)
    train_extra: tuple[str, ...] = ()  # retrievers the DAG's train_extra task trains (issue 16)
    task_retries: int = 2
    retry_delay_s: float = 30.0
    serve_url: str = "http://127.0.0.1:8000"
    max_purchase_value: float = 10.0  # a purchase's value counts at most this (features, feedback)
    train_nproc: int = 1  # DDP processes for the DAG's two-tower and ranker training
    index_memory_budget_mb: int = 4096  # above: the item index's lists go on disk (issue 19)
    sequential_popularity_weight: float = 0.0
    """The sequential retrievers' log-popularity prior ``w`` (score ``+ w * log1p(positives of
    the last 7 days)``): 0 on the simulator (w = 3 cost its truth 12 %), 6 on MovieLens 100K
    (chosen on its validation split; test NDCG@10 1.03-1.06x the 7-day most-popular)."""
    eval_max_users: int = 20_000
    """Forward evaluations (``evaluate``, ``evaluate_ranker``, the gate's champion AUC) score at
    most this many test users, a seeded sample (every user below it: demo days have ~1,500).
    At ``large`` a day has ~300k test users, and scoring all of them took 593 s (issue 19)."""
    ranker_max_rows: int = 3_000_000
    """The ranker trains on at most this many labelled rows of its window: whole requests, a
    seeded sample, when the window holds more (a ``large`` day logs ~3M impressions; 28 of them
    do not fit in memory)."""
    sim_sequential: float = 0.0  # simulator's sequential structure strength in [0, 1] (issue 16)
    feature_engine: str = "duckdb"  # duckdb or spark: what computes the feature tables (issue 19)
    spark_master: str = "local[2]"  # Spark master URL of the spark feature engine
    materialize_writer: str = "bulk"  # bulk or feast: what writes feature rows into Redis
    historical_reader: str = "asof"  # asof or feast: what answers training frames (file store)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        home = (
            Path(env_text(env, "RECLOOP_HOME") or Path.home() / ".recloop").expanduser().resolve()
        )
        # the default database is pipelines.core.layout.mlflow_db_path (layout needs a Settings)
        mlflow_uri = (
            env_text(env, "RECLOOP_MLFLOW_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
        )
        scale = env_text(env, "RECLOOP_SCALE", "demo")
        if scale not in ("tiny", "small", "demo", "large"):
            raise ValueError(f"RECLOOP_SCALE={scale!r}: expected tiny, small, demo or large")
        ranker = env_text(env, "RECLOOP_RANKER", cls.ranker)
        if ranker not in RANKERS:
            raise ValueError(f"RECLOOP_RANKER={ranker!r}: expected one of {', '.join(RANKERS)}")
        reader = env_text(env, "RECLOOP_HISTORICAL_READER", cls.historical_reader)
        if reader not in ("asof", "feast"):
            raise ValueError(f"RECLOOP_HISTORICAL_READER={reader!r}: expected asof or feast")
        writer = env_text(env, "RECLOOP_MATERIALIZE_WRITER", cls.materialize_writer)
        if writer not in ("feast", "bulk"):
            raise ValueError(f"RECLOOP_MATERIALIZE_WRITER={writer!r}: expected feast or bulk")
        return cls(
            home=home,
            redis_url=env_text(env, "RECLOOP_REDIS_URL", cls.redis_url),
            mlflow_uri=mlflow_uri,
            scale=scale,
            seed=env_int(env, "RECLOOP_SEED", cls.seed),
            max_bad_row_share=env_float(env, "RECLOOP_MAX_BAD_ROW_SHARE", cls.max_bad_row_share),
            min_volume_ratio=env_float(env, "RECLOOP_MIN_VOLUME_RATIO", cls.min_volume_ratio),
            imported_min_volume_ratio=env_float(
                env, "RECLOOP_IMPORTED_MIN_VOLUME_RATIO", cls.imported_min_volume_ratio
            ),
            rating_positive=env_float(env, "RECLOOP_RATING_POSITIVE", cls.rating_positive),
            gate_test_days=_positive(
                env_int(env, "RECLOOP_GATE_TEST_DAYS", cls.gate_test_days), "RECLOOP_GATE_TEST_DAYS"
            ),
            ranker_window_days=_positive(
                env_int(env, "RECLOOP_RANKER_WINDOW_DAYS", cls.ranker_window_days),
                "RECLOOP_RANKER_WINDOW_DAYS",
            ),
            ranker=ranker,
            ranker_ips=bool(env_int(env, "RECLOOP_RANKER_IPS", int(cls.ranker_ips))),
            train_extra=tuple(
                x.strip()
                for x in (env_text(env, "RECLOOP_TRAIN_EXTRA") or "").split(",")
                if x.strip()
            ),
            task_retries=env_int(env, "RECLOOP_TASK_RETRIES", cls.task_retries),
            retry_delay_s=env_float(env, "RECLOOP_RETRY_DELAY_S", cls.retry_delay_s),
            serve_url=env_text(env, "RECLOOP_SERVE_URL", cls.serve_url).rstrip("/"),
            max_purchase_value=env_float(env, "RECLOOP_MAX_PURCHASE_VALUE", cls.max_purchase_value),
            train_nproc=_positive(
                env_int(env, "RECLOOP_TRAIN_NPROC", cls.train_nproc),
                "RECLOOP_TRAIN_NPROC",
                "processes",
            ),
            sequential_popularity_weight=env_float(
                env, "RECLOOP_SEQUENTIAL_POPULARITY_WEIGHT", cls.sequential_popularity_weight
            ),
            eval_max_users=_positive(
                env_int(env, "RECLOOP_EVAL_MAX_USERS", cls.eval_max_users),
                "RECLOOP_EVAL_MAX_USERS",
                "users",
            ),
            ranker_max_rows=_positive(
                env_int(env, "RECLOOP_RANKER_MAX_ROWS", cls.ranker_max_rows),
                "RECLOOP_RANKER_MAX_ROWS",
                "rows",
            ),
            index_memory_budget_mb=_positive(
                env_int(env, "RECLOOP_INDEX_MEMORY_BUDGET_MB", cls.index_memory_budget_mb),
                "RECLOOP_INDEX_MEMORY_BUDGET_MB",
                "MiB",
            ),
            sim_sequential=env_float(env, "RECLOOP_SIM_SEQUENTIAL", cls.sim_sequential),
            feature_engine=env_text(env, "RECLOOP_FEATURE_ENGINE", cls.feature_engine),
            spark_master=env_text(env, "RECLOOP_SPARK_MASTER", cls.spark_master),
            materialize_writer=writer,
            historical_reader=reader,
        )

    # --- workspace layout -------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def interactions_dir(self) -> Path:
        return self.data_dir / "interactions"

    @property
    def truth_dir(self) -> Path:
        """Simulator ground truth, written apart from the logs; never read by training."""
        return self.home / "truth"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def validated_dir(self) -> Path:
        """Rows that passed the validation gate, one partition per date."""
        return self.data_dir / "validated"

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def redis_host_port(self) -> tuple[str, int]:
        """``(host, port)`` of ``redis_url``."""
        parsed = urlparse(self.redis_url)
        return parsed.hostname or "127.0.0.1", parsed.port or 6379

    def ensure_dirs(self) -> None:
        """Create the workspace folders (the only place that does)."""
        for name in (*WORKSPACE_DIRS, "truth"):
            (self.home / name).mkdir(parents=True, exist_ok=True)

    def as_env(self) -> dict[str, str]:
        """The ``RECLOOP_*`` variables that reproduce these settings in a child process."""
        return {
            "RECLOOP_HOME": str(self.home),
            "RECLOOP_REDIS_URL": self.redis_url,
            "RECLOOP_MLFLOW_URI": self.mlflow_uri,
            "RECLOOP_SCALE": self.scale,
            "RECLOOP_SEED": str(self.seed),
            "RECLOOP_MAX_BAD_ROW_SHARE": str(self.max_bad_row_share),
            "RECLOOP_MIN_VOLUME_RATIO": str(self.min_volume_ratio),
            "RECLOOP_IMPORTED_MIN_VOLUME_RATIO": str(self.imported_min_volume_ratio),
            "RECLOOP_RATING_POSITIVE": str(self.rating_positive),
            "RECLOOP_GATE_TEST_DAYS": str(self.gate_test_days),
            "RECLOOP_RANKER_WINDOW_DAYS": str(self.ranker_window_days),
            "RECLOOP_RANKER_IPS": str(int(self.ranker_ips)),
            "RECLOOP_TRAIN_EXTRA": ",".join(self.train_extra),
            "RECLOOP_RANKER": self.ranker,
            "RECLOOP_TASK_RETRIES": str(self.task_retries),
            "RECLOOP_RETRY_DELAY_S": str(self.retry_delay_s),
            "RECLOOP_SERVE_URL": self.serve_url,
            "RECLOOP_MAX_PURCHASE_VALUE": str(self.max_purchase_value),
            "RECLOOP_TRAIN_NPROC": str(self.train_nproc),
            "RECLOOP_INDEX_MEMORY_BUDGET_MB": str(self.index_memory_budget_mb),
            "RECLOOP_SEQUENTIAL_POPULARITY_WEIGHT": str(self.sequential_popularity_weight),
            "RECLOOP_EVAL_MAX_USERS": str(self.eval_max_users),
            "RECLOOP_RANKER_MAX_ROWS": str(self.ranker_max_rows),
            "RECLOOP_SIM_SEQUENTIAL": str(self.sim_sequential),
            "RECLOOP_FEATURE_ENGINE": self.feature_engine,
            "RECLOOP_SPARK_MASTER": self.spark_master,
            "RECLOOP_MATERIALIZE_WRITER": self.materialize_writer,
            "RECLOOP_HISTORICAL_READER": self.historical_reader,
        }
