"""Daily feature tables computed with SQL over the validated log partitions: DuckDB (the
default) or Spark (``RECLOOP_FEATURE_ENGINE=spark``, :mod:`pipelines.features.spark_engine`).

``compute_features(settings, D)`` writes two tables, one partition per logical date:

- ``features/user/date=D/part-0.parquet`` — one row per user (``user_id``);
- ``features/item/date=D/part-0.parquet`` — one row per item (``item_id``).

Both carry ``event_timestamp`` = the end of day D (``D+1 00:00:00 UTC``: the moment D's logs are
complete, so no event of day D can see features that include itself) and ``created`` (UTC wall
clock of the computation), the two timestamps Feast's point-in-time join wants.

The rows: every entity in the attribute file (``data/users.parquet`` / ``data/items.parquet``,
either may be missing) plus every entity with an event in the 28-day window ``[D-27, D]``.
Windows are whole days by partition: ``1d`` = D, ``7d`` = ``[D-6, D]``, ``28d`` = ``[D-27, D]``.
Counts are sums of ``value`` for impression/click/purchase rows and row counts for ratings; a
click counts 1 and a purchase's ``value`` is clipped to ``[0, settings.max_purchase_value]``
(:func:`_amount_sql`: logged feedback cannot inflate them).
No column is null: unknown attributes read ``"unknown"`` (strings) or ``-1`` (numbers); see
:data:`USER_FEATURES` / :data:`ITEM_FEATURES` for every column, its type and meaning.

DuckDB reads only the partitions of the window and only the columns it needs; nothing holds
the whole history in pandas. Both engines run the same SQL text (:func:`feature_queries`): it
differs only where the dialects do (:class:`Dialect`: epoch seconds, days between dates), and
the two write equal tables (tests/test_spark_features.py).

The tables are deterministic: the same logs give the same bytes (``created`` aside) whatever the
number of DuckDB threads or Spark tasks. Amounts are summed as fixed-point decimals
(:data:`AMOUNT_TYPE`: exact, so the order in which threads add partial sums cannot change a
float's last bits; a sum becomes a ``DOUBLE`` once, before any division) and the top category's
ties go to the alphabetically first category (not to whichever row a thread saw first). A rerun
of a day after a crash then writes what an undisturbed run writes.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.core import layout, schema
from pipelines.core.duckdb_sql import sql_list, sql_string
from pipelines.core.progress import progress
from pipelines.core.settings import Settings
from pipelines.core.validated import validated_files

log = logging.getLogger(__name__)

ENGINES = ("duckdb", "spark")
"""The values of ``RECLOOP_FEATURE_ENGINE``: what computes the tables (DuckDB is the default)."""
WINDOWS = (1, 7, 28)
LOOKBACK_DAYS = max(WINDOWS)
COUNTED_EVENTS = ("impression", "click", "purchase")
CTR_PRIOR_IMPRESSIONS = 50.0
"""Strength of the beta prior on CTR, in pseudo-impressions at the global rate."""
DEFAULT_GLOBAL_CTR = 0.05
"""Prior CTR when the window holds no impressions at all."""
DEFAULT_GLOBAL_RATING = 3.0
"""Average rating filled in when the window holds no rating at all."""

# (name, type, meaning). Types: "int64", "float64", "string". The order is the table's order.
USER_FEATURES: tuple[tuple[str, str, str], ...] = (
    *(
        (f"user_{ev}s_{w}d", "int64", f"{ev} count over the last {w} day(s)")
        for ev in (*COUNTED_EVENTS, "rating")
        for w in WINDOWS
    ),
    (
        "user_ctr_28d",
        "float64",
        "clicks / impressions over 28 days, beta-smoothed to the global CTR",
    ),
    ("user_avg_rating_28d", "float64", "mean rating over 28 days (global mean when none)"),
    ("user_days_since_last_event", "float64", "days from the last event to the end of D (cap 28)"),
    (
        "user_top_category",
        "string",
        "category of most clicks/purchases/ratings over 28 days (ties: first by name)",
    ),
    ("user_top_category_share", "float64", "share of those events in the top category (0 if none)"),
    ("user_age", "int64", "age in years (-1 unknown)"),
    ("user_gender", "string", "gender ('unknown' unknown)"),
    ("user_country", "string", "country ('unknown' unknown)"),
    ("user_tenure_days", "int64", "days from signup to the end of D (-1 unknown)"),
)

ITEM_FEATURES: tuple[tuple[str, str, str], ...] = (
    *(
        (f"item_{ev}s_{w}d", "int64", f"{ev} count over the last {w} day(s)")
        for ev in COUNTED_EVENTS
        for w in WINDOWS
    ),
    ("item_ratings_28d", "int64", "rating count over 28 days"),
    (
        "item_ctr_28d",
        "float64",
        "clicks / impressions over 28 days, beta-smoothed to the global CTR",
    ),
    ("item_avg_rating_28d", "float64", "mean rating over 28 days (global mean when none)"),
    ("item_age_days", "int64", "days from created_date (else first event in window) to end of D"),
    ("item_trending", "float64", "(engagements on D + 1) / (daily mean engagements over 7d + 1)"),
    ("item_category", "string", "category ('unknown' unknown)"),
    ("item_price", "float64", "price (-1 unknown)"),
)

FEATURE_TYPES: dict[str, str] = {n: t for n, t, _ in (*USER_FEATURES, *ITEM_FEATURES)}
"""Feature name → ``int64`` / ``float64`` / ``string``."""

_SPECIAL_DEFAULTS: dict[str, Any] = {
    "user_ctr_28d": DEFAULT_GLOBAL_CTR,
    "item_ctr_28d": DEFAULT_GLOBAL_CTR,
    "user_avg_rating_28d": DEFAULT_GLOBAL_RATING,
    "item_avg_rating_28d": DEFAULT_GLOBAL_RATING,
    "user_days_since_last_event": float(LOOKBACK_DAYS),
    "item_trending": 1.0,
    "user_age": -1,
    "user_tenure_days": -1,
    "item_age_days": -1,
    "item_price": -1.0,
}
DEFAULTS: dict[str, Any] = {
    n: _SPECIAL_DEFAULTS.get(n, {"int64": 0, "float64": 0.0, "string": "unknown"}[t])
    for n, t in FEATURE_TYPES.items()
}
"""Value of each feature for an entity with no row (unknown id, or older than the ttl): what
the table would hold for an entity with no events and unknown attributes."""

AMOUNT_TYPE = "DECIMAL(18, 6)"
"""SQL type of an event's amount (``value`` in the ``ev`` view): fixed point, 6 decimals (a
purchase value to the micro-unit), below 10^12 (see :data:`MAX_AMOUNT`). Sums of decimals are
exact integer sums (DuckDB sums them as ``DECIMAL(38, 6)``), hence independent of the summation
order; sums of DOUBLEs are not (DuckDB's parallel aggregation adds partial sums in whatever order
its threads finish, and float addition is not associative)."""
MAX_AMOUNT = 1e9
"""Largest amount one row adds (an impression row's count is cut there; a rating is <= 5, a
click 1, a purchase <= ``settings.max_purchase_value``): every amount fits
:data:`AMOUNT_TYPE`, so no finite value that validation lets through fails the cast."""

_ARROW = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
TIMESTAMP = pa.timestamp("us", tz="UTC")


def _table_schema(key: str, features: tuple[tuple[str, str, str], ...]) -> pa.Schema:
    fields = [pa.field(key, pa.string(), nullable=False)]
    fields += [pa.field(n, _ARROW[t], nullable=False) for n, t, _ in features]
    fields += [pa.field("event_timestamp", TIMESTAMP), pa.field("created", TIMESTAMP)]
    return pa.schema(fields)


USER_SCHEMA = _table_schema("user_id", USER_FEATURES)
ITEM_SCHEMA = _table_schema("item_id", ITEM_FEATURES)


def feature_time(date: str | dt.date) -> dt.datetime:
    """The event timestamp of D's feature rows: ``D+1 00:00:00 UTC`` (the end of day D)."""
    d = schema.parse_date(date)
    return dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def table_dir(settings: Settings, entity: str) -> Path:
    """``features/<entity>`` (entity: ``user`` or ``item``): the FileSource path Feast reads."""
    return layout.feature_table_dir(settings, entity)


def table_path(settings: Settings, entity: str, date: str | dt.date) -> Path:
    """``features/<entity>/date=D/part-0.parquet``."""
    return layout.feature_table_path(settings, entity, date)


def _window_files(settings: Settings, date: dt.date) -> list[str]:
    """Parquet files of the validated partitions in ``[D-27, D]``; D's own must exist."""
    if not validated_files(settings, date, date):
        own = layout.validated_partition(settings, date)
        raise FileNotFoundError(
            f"no validated log for {date}: {own} holds no parquet file (run validation first)"
        )
    files: list[str] = []
    missing = []
    for back in range(LOOKBACK_DAYS):
        d = date - dt.timedelta(days=back)
        found = validated_files(settings, d, d)
        if not found:
            missing.append(d)
        files += [str(f) for f in found]
    if missing:
        log.info("features %s: %d of %d window days have no log", date, len(missing), LOOKBACK_DAYS)
    return files


@dataclass(frozen=True)
class Dialect:
    """The two spots where the feature SQL differs between DuckDB and Spark SQL; everything
    else in :func:`feature_queries` is one text both engines run. Decimal sums are cast to
    ``DOUBLE`` where a division needs a float (Spark would divide decimals as decimals)."""

    name: str
    epoch_template: str
    """Seconds since the Unix epoch of timestamp ``{ts}``, a ``DOUBLE``: its microseconds / 1e6
    (one rounding, the same in both engines; DuckDB's ``epoch()`` differs in the last bits)."""
    days_template: str
    """Whole days from date ``{earlier}`` to date ``{later}``, an integer."""

    def epoch(self, ts: str) -> str:
        return self.epoch_template.format(ts=ts)

    def days(self, later: str, earlier: str) -> str:
        return self.days_template.format(later=later, earlier=earlier)


DUCKDB = Dialect("duckdb", "(epoch_us({ts}) / 1e6)", "({later} - {earlier})")
SPARK_SQL = Dialect("spark", "(unix_micros({ts}) / 1e6)", "datediff({later}, {earlier})")


def _attribute_view(con, name: str, path: Path, arrow_schema: pa.Schema) -> None:
    """Register ``path`` (or an empty table with ``arrow_schema`` if absent) as view ``name``."""
    if path.exists():
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({sql_string(path)})")
    else:
        log.info("no %s: %s attributes default to unknown", path, name)
        con.register(f"{name}_empty", arrow_schema.empty_table())
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM {name}_empty")


def _amount_sql(settings: Settings) -> str:
    """SQL of what one row adds to its event's count: a click 1 (whatever ``value`` says), a
    purchase its ``value`` clipped to ``[0, settings.max_purchase_value]``, impressions (a
    count) and ratings (the rating) their ``value``. One forged ``value: 1e6`` cannot make an
    item top the popularity lists. (:func:`_events_sql` then cuts any amount at
    :data:`MAX_AMOUNT` and makes it a :data:`AMOUNT_TYPE`.)"""
    cap = float(settings.max_purchase_value)
    return (
        "CASE WHEN event = 'click' THEN 1.0 "
        f"WHEN event = 'purchase' THEN least(greatest(value, 0.0), {cap!r}) ELSE value END"
    )


def _events_sql(settings: Settings, date: dt.date, dialect: Dialect, source: str) -> str:
    """The ``ev`` view: one row per window event of ``source`` (a table expression with the
    log columns and the partition's ``date``), its amount as :data:`AMOUNT_TYPE`, ``days_ago``
    (0 on D)."""
    days_ago = dialect.days(f"DATE '{date}'", "CAST(date AS DATE)")
    return f"""
    SELECT user_id, item_id, event,
           CAST(least({_amount_sql(settings)}, {MAX_AMOUNT!r}) AS {AMOUNT_TYPE}) AS value,
           ts,
           {days_ago} AS days_ago
    FROM {source}
    """


GLOBALS_SQL = f"""
    SELECT coalesce(CAST(SUM(CASE WHEN event = 'click' THEN value END) AS DOUBLE)
                    / nullif(CAST(SUM(CASE WHEN event = 'impression' THEN value END) AS DOUBLE), 0),
                    {DEFAULT_GLOBAL_CTR}) AS ctr,
           coalesce(CAST(SUM(CASE WHEN event = 'rating' THEN value END) AS DOUBLE)
                    / nullif(COUNT(CASE WHEN event = 'rating' THEN 1 END), 0),
                    {DEFAULT_GLOBAL_RATING}) AS rating,
           COUNT(*) AS n_events
    FROM ev
"""
"""The ``g`` table, one row: the window's CTR and mean rating (the priors and fill-ins), and
its number of events."""


def _counts_sql(events: tuple[str, ...], prefix: str) -> str:
    cols = []
    for ev in events:
        for w in WINDOWS:
            amount = "1" if ev == "rating" else "value"
            cols.append(
                f"CAST(ROUND(SUM(CASE WHEN event = '{ev}' AND days_ago < {w} "
                f"THEN {amount} ELSE 0 END)) AS BIGINT) AS {prefix}_{ev}s_{w}d"
            )
    return ",\n           ".join(cols)


def _user_sql(end_epoch: float, date: dt.date, dialect: Dialect) -> str:
    counts = _counts_sql((*COUNTED_EVENTS, "rating"), "user")
    tenure = dialect.days(f"DATE '{date + dt.timedelta(days=1)}'", "u.signup_date")
    return f"""
    WITH agg AS (
        SELECT user_id,
           {counts},
           CAST(SUM(CASE WHEN event = 'rating' THEN value END) AS DOUBLE) AS rating_sum,
           MAX({dialect.epoch("ts")}) AS last_epoch
        FROM ev GROUP BY user_id
    ),
    cat_counts AS (
        SELECT e.user_id, coalesce(i.category, 'unknown') AS category, COUNT(*) AS n
        FROM ev e LEFT JOIN items i ON e.item_id = i.item_id
        WHERE e.event IN ('click', 'purchase', 'rating')
        GROUP BY e.user_id, coalesce(i.category, 'unknown')
    ),
    cat_totals AS (
        SELECT user_id, MAX(n) AS top_n, SUM(n) AS total FROM cat_counts GROUP BY user_id
    ),
    top_cat AS (
        SELECT c.user_id, MIN(c.category) AS top_category, t.top_n / t.total AS top_share
        FROM cat_counts c JOIN cat_totals t ON c.user_id = t.user_id AND c.n = t.top_n
        GROUP BY c.user_id, t.top_n, t.total
    ),
    ids AS (SELECT user_id FROM users UNION SELECT user_id FROM agg)
    SELECT ids.user_id,
           {", ".join(f"coalesce(agg.{n}, 0) AS {n}" for n, t, _ in USER_FEATURES[:12])},
           (coalesce(agg.user_clicks_28d, 0) + {CTR_PRIOR_IMPRESSIONS} * g.ctr)
               / (coalesce(agg.user_impressions_28d, 0) + {CTR_PRIOR_IMPRESSIONS})
               AS user_ctr_28d,
           CASE WHEN coalesce(agg.user_ratings_28d, 0) > 0
                THEN agg.rating_sum / agg.user_ratings_28d ELSE g.rating END
               AS user_avg_rating_28d,
           least(coalesce(({end_epoch} - agg.last_epoch) / 86400.0, {LOOKBACK_DAYS}.0),
                 {LOOKBACK_DAYS}.0) AS user_days_since_last_event,
           coalesce(top_cat.top_category, 'unknown') AS user_top_category,
           CAST(coalesce(top_cat.top_share, 0.0) AS DOUBLE) AS user_top_category_share,
           CAST(coalesce(u.age, -1) AS BIGINT) AS user_age,
           coalesce(u.gender, 'unknown') AS user_gender,
           coalesce(u.country, 'unknown') AS user_country,
           CAST(coalesce({tenure}, -1) AS BIGINT) AS user_tenure_days
    FROM ids
    CROSS JOIN g
    LEFT JOIN agg ON ids.user_id = agg.user_id
    LEFT JOIN top_cat ON ids.user_id = top_cat.user_id
    LEFT JOIN users u ON ids.user_id = u.user_id
    ORDER BY ids.user_id
    """


def _item_sql(end_epoch: float, date: dt.date, dialect: Dialect) -> str:
    counts = _counts_sql(COUNTED_EVENTS, "item")
    count_names = [n for n, _, _ in ITEM_FEATURES[:10]]
    age = dialect.days(f"DATE '{date + dt.timedelta(days=1)}'", "i.created_date")
    return f"""
    WITH agg AS (
        SELECT item_id,
           {counts},
           CAST(SUM(CASE WHEN event = 'rating' THEN 1 ELSE 0 END) AS BIGINT) AS item_ratings_28d,
           CAST(SUM(CASE WHEN event = 'rating' THEN value END) AS DOUBLE) AS rating_sum,
           MIN({dialect.epoch("ts")}) AS first_epoch,
           SUM(CASE WHEN event IN ('click', 'purchase') AND days_ago < 1 THEN value ELSE 0 END)
               AS eng_1d,
           SUM(CASE WHEN event IN ('click', 'purchase') AND days_ago < 7 THEN value ELSE 0 END)
               AS eng_7d
        FROM ev GROUP BY item_id
    ),
    ids AS (SELECT item_id FROM items UNION SELECT item_id FROM agg)
    SELECT ids.item_id,
           {", ".join(f"coalesce(agg.{n}, 0) AS {n}" for n in count_names)},
           (coalesce(agg.item_clicks_28d, 0) + {CTR_PRIOR_IMPRESSIONS} * g.ctr)
               / (coalesce(agg.item_impressions_28d, 0) + {CTR_PRIOR_IMPRESSIONS})
               AS item_ctr_28d,
           CASE WHEN coalesce(agg.item_ratings_28d, 0) > 0
                THEN agg.rating_sum / agg.item_ratings_28d ELSE g.rating END
               AS item_avg_rating_28d,
           CAST(coalesce({age}, floor(({end_epoch} - agg.first_epoch) / 86400.0), -1) AS BIGINT)
               AS item_age_days,
           CAST(coalesce(agg.eng_1d, 0) + 1.0 AS DOUBLE)
               / (CAST(coalesce(agg.eng_7d, 0) AS DOUBLE) / 7.0 + 1.0) AS item_trending,
           coalesce(i.category, 'unknown') AS item_category,
           CAST(coalesce(i.price, -1.0) AS DOUBLE) AS item_price
    FROM ids
    CROSS JOIN g
    LEFT JOIN agg ON ids.item_id = agg.item_id
    LEFT JOIN items i ON ids.item_id = i.item_id
    ORDER BY ids.item_id
    """


@dataclass(frozen=True)
class FeatureQueries:
    """D's feature SQL for one engine, run in this order: ``events`` becomes view ``ev``,
    ``GLOBALS_SQL`` (over ``ev``) table ``g`` (one row), then ``users`` and ``items`` (over ``ev``,
    ``g`` and the attribute views ``users`` / ``items``) give the tables in
    ``USER_SCHEMA`` / ``ITEM_SCHEMA`` order, less the two timestamps (:func:`finish_table`)."""

    events: str
    users: str
    items: str


def feature_queries(
    settings: Settings, date: dt.date, dialect: Dialect, source: str
) -> FeatureQueries:
    """The feature SQL of day ``date`` in ``dialect``; ``source`` is the table expression of
    the window's validated log rows (with their partition column ``date``)."""
    end_epoch = feature_time(date).timestamp()
    return FeatureQueries(
        events=_events_sql(settings, date, dialect, source),
        users=_user_sql(end_epoch, date, dialect),
        items=_item_sql(end_epoch, date, dialect),
    )


def finish_table(
    table: pa.Table, target: pa.Schema, ts: dt.datetime, created: dt.datetime
) -> pa.Table:
    """A query's result with ``event_timestamp`` = ``ts`` and ``created`` appended, cast to
    ``target`` (its column order and types)."""
    n = table.num_rows
    table = table.append_column("event_timestamp", pa.array([ts] * n, type=TIMESTAMP))
    table = table.append_column("created", pa.array([created] * n, type=TIMESTAMP))
    return table.select(target.names).cast(target)


def _quarantine_unreadable(settings: Settings, files: list[str]) -> list[str]:
    """Quarantine the window's files that cannot be read in full (the columns the features
    use); returns them. Called only after the engine failed on the window."""
    from pipelines.data.validate import quarantine_validated_file

    bad = []
    for f in files:
        problem = schema.parquet_problem(Path(f), ["user_id", "item_id", "event", "value", "ts"])
        if problem is not None:
            quarantine_validated_file(settings, Path(f), problem)
            bad.append(f)
    return bad


def _compute(
    settings: Settings, d: dt.date, files: list[str], created: dt.datetime
) -> tuple[pa.Table, pa.Table, int]:
    """D's ``(user table, item table, events read)`` from the validated ``files`` (DuckDB)."""
    import duckdb

    end = feature_time(d)
    source = f"read_parquet({sql_list(files)}, hive_partitioning = true, union_by_name = true)"
    queries = feature_queries(settings, d, DUCKDB, source)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        _attribute_view(con, "users", layout.attributes_path(settings, "users"), schema.USERS)
        _attribute_view(con, "items", layout.attributes_path(settings, "items"), schema.ITEMS)
        con.execute(f"CREATE VIEW ev AS {queries.events}")
        con.execute(f"CREATE TEMP TABLE g AS {GLOBALS_SQL}")
        n_events = con.execute("SELECT n_events FROM g").fetchall()[0][0]
        with progress(total=2, desc=f"features {d}", unit="table") as bar:
            users = con.sql(queries.users).to_arrow_table()
            users = finish_table(users, USER_SCHEMA, end, created)
            bar.update(1)
            items = finish_table(con.sql(queries.items).to_arrow_table(), ITEM_SCHEMA, end, created)
            bar.update(1)
    finally:
        con.close()
    return users, items, int(n_events)


def _engine(settings: Settings) -> tuple[Callable, tuple[type[BaseException], ...], str]:
    """``(compute, the errors a damaged window file raises, a description)`` of the engine
    ``settings.feature_engine`` names; ``compute`` has :func:`_compute`'s signature."""
    if settings.feature_engine not in ENGINES:
        raise ValueError(
            f"RECLOOP_FEATURE_ENGINE={settings.feature_engine!r}: expected {' or '.join(ENGINES)}"
        )
    if settings.feature_engine == "spark":
        from pipelines.features import spark_engine

        return spark_engine.compute, spark_engine.read_errors(), f"spark {settings.spark_master}"
    import duckdb

    return _compute, (duckdb.Error,), "duckdb"


def compute_features(settings: Settings, date: str | dt.date) -> dict:
    """Compute and write D's user and item feature tables (atomic; a rerun replaces them).

    Reads ``validated/date=[D-27..D]/*.parquet`` (D's partition must exist) and the attribute
    files when present, with the engine ``settings.feature_engine`` names (DuckDB, or Spark:
    :mod:`pipelines.features.spark_engine`). Returns ``{"date", "engine", "users", "items",
    "events", "seconds", "paths", "quarantined"}`` (``engine``: ``duckdb`` or ``spark
    <master>``). Raises ``FileNotFoundError`` naming the folder when D's validated
    partition is missing. A window file that cannot be read (damaged after its validation) is
    quarantined (``quarantine/files/...``, with its reason) and the features computed from the
    other files: ``quarantined`` lists them.
    """
    t0 = time.perf_counter()
    d = schema.parse_date(date)
    compute, read_errors, engine = _engine(settings)
    files = _window_files(settings, d)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    try:
        users, items, n_events = compute(settings, d, files, created)
        bad: list[str] = []
    except read_errors:
        bad = _quarantine_unreadable(settings, files)
        own = str(layout.validated_partition(settings, d))
        if not bad or any(Path(f).parent == Path(own) for f in bad):
            raise  # nothing to blame, or D's own log is gone: rerun `recloop validate`
        files = [f for f in files if f not in bad]
        users, items, n_events = compute(settings, d, files, created)
    user_dir = schema.write_partition_atomic(users, table_dir(settings, "user"), d)
    item_dir = schema.write_partition_atomic(items, table_dir(settings, "item"), d)
    seconds = round(time.perf_counter() - t0, 3)
    log.info(
        "features %s (%s): %d users, %d items from %d events (%d files) in %.2fs",
        d,
        engine,
        users.num_rows,
        items.num_rows,
        n_events,
        len(files),
        seconds,
    )
    return {
        "date": d.isoformat(),
        "engine": engine,
        "users": users.num_rows,
        "items": items.num_rows,
        "events": int(n_events),
        "seconds": seconds,
        "paths": [str(user_dir), str(item_dir)],
        "quarantined": bad,
    }


def read_table(settings: Settings, entity: str, date: str | dt.date) -> pa.Table:
    """D's feature table for ``entity`` (``user``/``item``); ``FileNotFoundError`` if absent."""
    import pyarrow.parquet as pq

    path = table_path(settings, entity, date)
    if not path.exists():
        raise FileNotFoundError(f"no {entity} feature table for {schema.parse_date(date)}: {path}")
    return pq.read_table(path)
