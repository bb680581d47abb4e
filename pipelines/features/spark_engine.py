"""The feature tables computed by Spark (``RECLOOP_FEATURE_ENGINE=spark``): the same SQL as the
DuckDB engine (:func:`pipelines.features.tables.feature_queries` in the Spark dialect), the same
files, schema, row order and values.

The session runs on ``settings.spark_master``: ``local[2]`` (the default) is a JVM beside this
process, for one machine and the tests; a cluster URL (``spark://host:7077``, ``yarn``,
``k8s://...``) sends the work to a cluster whose executors can read the workspace's paths.
One session per process, started on first use (5-15 s for the JVM) and kept for the next days;
it is quiet and local: no web UI, driver bound to 127.0.0.1 (local masters), scratch files in a
temporary ``spark.local.dir`` removed at exit, JVM logging at ERROR.

PySpark 4 needs a Java 17+ runtime: ``JAVA_HOME``, else ``java`` on ``PATH`` (Debian:
``apt-get install openjdk-17-jre-headless``, which ``infra/setup.sh`` does); :func:`require_java`
says so before PySpark tries to start one.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.core import layout, schema
from pipelines.core.progress import progress
from pipelines.core.settings import Settings
from pipelines.features import tables

MIN_JAVA = 17
JAVA_PACKAGE = "openjdk-17-jre-headless"
LOCAL_DRIVER_MEMORY = "4g"
"""Heap of a local session's JVM (driver and executors in one): ample for a ``large`` day."""
LOCAL_SHUFFLE_PARTITIONS = 8
"""Shuffle partitions of a local session (Spark's 200 are scheduling overhead on a few cores)."""
JAVA_OPTIONS = "spark.driver.extraJavaOptions"
LOG4J2 = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
"""


def require_java(env: Mapping[str, str] | None = None) -> str:
    """The ``java`` PySpark will start (``$JAVA_HOME/bin/java``, else ``java`` on ``PATH``);
    ``RuntimeError`` naming what to install when there is none or it is older than Java 17."""
    env = os.environ if env is None else env
    home = env.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java", path=env.get("PATH"))
    install = (
        f"install a Java {MIN_JAVA}+ runtime (Debian/Ubuntu: `sudo apt-get install "
        f"{JAVA_PACKAGE}`, which infra/setup.sh runs) or point JAVA_HOME at one"
    )
    if not java or not os.access(java, os.X_OK):
        where = f"JAVA_HOME={home} has no bin/java" if home else "no `java` on PATH"
        raise RuntimeError(f"RECLOOP_FEATURE_ENGINE=spark needs Java ({where}): {install}")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = 0 if found is None else int(found.group(1))
    if major == 1 and found is not None:  # "1.8.0_392": Java 8
        major = int(found.group(2) or 0)
    if major < MIN_JAVA:
        raise RuntimeError(
            f"RECLOOP_FEATURE_ENGINE=spark needs Java {MIN_JAVA}+ (PySpark 4); {java} is "
            f"{'unrecognised' if found is None else found.group(0)}: {install}"
        )
    return java


def _session_conf(settings: Settings, scratch: Path) -> dict[str, str]:
    """The Spark settings of the feature session (``scratch``: its ``spark.local.dir``)."""
    log4j = scratch / "log4j2.properties"
    log4j.write_text(LOG4J2)
    conf = {
        "spark.app.name": "recloop-features",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.local.dir": str(scratch),
        "spark.sql.session.timeZone": "UTC",
        JAVA_OPTIONS: f"-Dlog4j2.configurationFile=file:{log4j}",
    }
    if settings.spark_master.startswith("local"):
        conf |= {
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.memory": LOCAL_DRIVER_MEMORY,
            "spark.sql.shuffle.partitions": str(LOCAL_SHUFFLE_PARTITIONS),
        }
    return conf


def spark_session(settings: Settings, extra_conf: Mapping[str, str] | None = None) -> Any:
    """This process's Spark session (a ``pyspark.sql.SparkSession``), started on
    ``settings.spark_master`` when there is none yet, with ``extra_conf`` over the defaults (its
    ``spark.driver.extraJavaOptions`` are added to the session's own). ``RuntimeError`` naming
    what to install when Java or PySpark is missing."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise RuntimeError(
            "RECLOOP_FEATURE_ENGINE=spark needs PySpark: run infra/setup.sh "
            "(or `.venv/bin/pip install pyspark==4.3.0`)"
        ) from exc
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    require_java()
    scratch = Path(tempfile.mkdtemp(prefix="recloop-spark-"))
    atexit.register(shutil.rmtree, scratch, True)
    if settings.spark_master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # read by the JVM PySpark starts
    conf = _session_conf(settings, scratch)
    extra = dict(extra_conf or {})
    java_options = extra.pop(JAVA_OPTIONS, "")
    conf[JAVA_OPTIONS] = f"{conf[JAVA_OPTIONS]} {java_options}".strip()
    builder = SparkSession.builder.master(settings.spark_master)
    for key, value in (conf | extra).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines on every connection
    return session


def read_errors() -> tuple[type[BaseException], ...]:
    """What Spark raises when a window file cannot be read (``compute_features`` then
    quarantines the unreadable files and computes again)."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    return (PySparkException, Py4JJavaError)


def _attribute_view(spark: Any, name: str, path: Path, arrow_schema: pa.Schema) -> None:
    """Register ``path`` (or an empty table with ``arrow_schema`` if absent) as view ``name``."""
    if path.exists():
        frame = spark.read.parquet(str(path))
    else:
        frame = spark.createDataFrame(arrow_schema.empty_table())
    frame.createOrReplaceTempView(name)


def _globals_view(spark: Any) -> int:
    """Compute ``g`` (one row) once and register it as a literal one-row view, so that the two
    table queries do not scan the window again for it; returns the window's event count."""
    row = spark.sql(tables.GLOBALS_SQL).first()
    g = pa.table({"ctr": [float(row["ctr"])], "rating": [float(row["rating"])]})
    spark.createDataFrame(g).createOrReplaceTempView("g")
    return int(row["n_events"])


def compute(
    settings: Settings, d: dt.date, files: list[str], created: dt.datetime
) -> tuple[pa.Table, pa.Table, int]:
    """D's ``(user table, item table, events read)`` from the validated ``files``, by Spark:
    the signature and results of :func:`pipelines.features.tables._compute`."""
    spark = spark_session(settings)
    end = tables.feature_time(d)
    log_rows = (
        spark.read.option("basePath", str(settings.validated_dir))
        .option("mergeSchema", "true")
        .parquet(*files)
        .select("user_id", "item_id", "event", "value", "ts", "date")
    )
    log_rows.createOrReplaceTempView("window_log")
    queries = tables.feature_queries(settings, d, tables.SPARK_SQL, "window_log")
    _attribute_view(spark, "users", layout.attributes_path(settings, "users"), schema.USERS)
    _attribute_view(spark, "items", layout.attributes_path(settings, "items"), schema.ITEMS)
    spark.sql(queries.events).createOrReplaceTempView("ev")
    n_events = _globals_view(spark)
    with progress(total=2, desc=f"features {d} (spark)", unit="table") as bar:
        users = tables.finish_table(
            spark.sql(queries.users).toArrow(), tables.USER_SCHEMA, end, created
        )
        bar.update(1)
        items = tables.finish_table(
            spark.sql(queries.items).toArrow(), tables.ITEM_SCHEMA, end, created
        )
        bar.update(1)
    return users, items, n_events


def offline_session(settings: Settings) -> Any:
    """The session Feast's Spark offline store runs point-in-time joins in: this process's
    (:func:`spark_session`, so Feast finds it active and does not start its own), with Arrow
    transfers on for the entity frame it uploads and the frame it collects (row-by-row pickling
    otherwise)."""
    session = spark_session(settings)
    session.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    return session
