"""Daily feature tables computed with DuckDB SQL over the validated log partitions.

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

DuckDB reads only the partitions of the window and only the columns it needs (the SQL would
carry over to Spark SQL nearly as is); nothing holds the whole history in pandas.

The tables are deterministic: the same logs give the same bytes (``created`` aside) whatever the
number of DuckDB threads. Amounts are summed as fixed-point decimals (:data:`AMOUNT_TYPE`: exact,
so the order in which threads add partial sums cannot change a float's last bits) and the top
category's ties go to the alphabetically first category (not to whichever row a thread saw
first). A rerun of a day after a crash then writes what an undisturbed run writes.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.core import layout, schema
from pipelines.core.duckdb_sql import sql_list, sql_string
from pipelines.core.progress import progress
from pipelines.core.settings import Settings
from pipelines.core.validated import validated_files

log = logging.getLogger(__name__)

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
    item top the popularity lists. (:func:`_compute` then cuts any amount at
    :data:`MAX_AMOUNT` and makes it a :data:`AMOUNT_TYPE`.)"""
    cap = float(settings.max_purchase_value)
    return (
        "CASE WHEN event = 'click' THEN 1.0 "
        f"WHEN event = 'purchase' THEN least(greatest(value, 0.0), {cap!r}) ELSE value END"
    )


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


def _user_sql(end_epoch: float, date: dt.date) -> str:
    counts = _counts_sql((*COUNTED_EVENTS, "rating"), "user")
    return f"""
    WITH agg AS (
        SELECT user_id,
           {counts},
           SUM(CASE WHEN event = 'rating' THEN value END) AS rating_sum,
           MAX(epoch(ts)) AS last_epoch
        FROM ev GROUP BY user_id
    ),
    cat_counts AS (
        SELECT e.user_id, coalesce(i.category, 'unknown') AS category, COUNT(*) AS n
        FROM ev e LEFT JOIN items i ON e.item_id = i.item_id
        WHERE e.event IN ('click', 'purchase', 'rating')
        GROUP BY 1, 2
    ),
    top_cat AS (
        SELECT user_id, first(category ORDER BY n DESC, category) AS top_category,
               MAX(n) / SUM(n) AS top_share
        FROM cat_counts GROUP BY user_id
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
           CAST(coalesce(DATE '{date + dt.timedelta(days=1)}' - u.signup_date, -1) AS BIGINT)
               AS user_tenure_days
    FROM ids
    CROSS JOIN g
    LEFT JOIN agg ON ids.user_id = agg.user_id
    LEFT JOIN top_cat ON ids.user_id = top_cat.user_id
    LEFT JOIN users u ON ids.user_id = u.user_id
    ORDER BY ids.user_id
    """


def _item_sql(end_epoch: float, date: dt.date) -> str:
    counts = _counts_sql(COUNTED_EVENTS, "item")
    count_names = [n for n, _, _ in ITEM_FEATURES[:10]]
    return f"""
    WITH agg AS (
        SELECT item_id,
           {counts},
           CAST(SUM(CASE WHEN event = 'rating' THEN 1 ELSE 0 END) AS BIGINT) AS item_ratings_28d,
           SUM(CASE WHEN event = 'rating' THEN value END) AS rating_sum,
           MIN(epoch(ts)) AS first_epoch,
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
           CAST(coalesce(DATE '{date + dt.timedelta(days=1)}' - i.created_date,
                         floor(({end_epoch} - agg.first_epoch) / 86400.0), -1) AS BIGINT)
               AS item_age_days,
           (coalesce(agg.eng_1d, 0) + 1.0) / (coalesce(agg.eng_7d, 0) / 7.0 + 1.0)
               AS item_trending,
           coalesce(i.category, 'unknown') AS item_category,
           CAST(coalesce(i.price, -1.0) AS DOUBLE) AS item_price
    FROM ids
    CROSS JOIN g
    LEFT JOIN agg ON ids.item_id = agg.item_id
    LEFT JOIN items i ON ids.item_id = i.item_id
    ORDER BY ids.item_id
    """


def _finish(con, sql: str, target: pa.Schema, ts: dt.datetime, created: dt.datetime) -> pa.Table:
    table = con.sql(sql).to_arrow_table()
    n = table.num_rows
    table = table.append_column("event_timestamp", pa.array([ts] * n, type=TIMESTAMP))
    table = table.append_column("created", pa.array([created] * n, type=TIMESTAMP))
    return table.select(target.names).cast(target)


def _quarantine_unreadable(settings: Settings, files: list[str]) -> list[str]:
    """Quarantine the window's files that cannot be read in full (the columns the features
    use); returns them. Called only after DuckDB failed on the window."""
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
    """D's ``(user table, item table, events read)`` from the validated ``files``."""
    import duckdb

    end = feature_time(d)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        _attribute_view(con, "users", layout.attributes_path(settings, "users"), schema.USERS)
        _attribute_view(con, "items", layout.attributes_path(settings, "items"), schema.ITEMS)
        con.execute(
            f"""CREATE VIEW ev AS
            SELECT user_id, item_id, event,
                   CAST(least({_amount_sql(settings)}, {MAX_AMOUNT!r}) AS {AMOUNT_TYPE}) AS value,
                   ts,
                   DATE '{d}' - CAST(date AS DATE) AS days_ago
            FROM read_parquet({sql_list(files)}, hive_partitioning = true, union_by_name = true)
            """
        )
        n_events = con.execute("SELECT COUNT(*) FROM ev").fetchone()[0]
        con.execute(
            f"""CREATE TEMP TABLE g AS SELECT
              coalesce(SUM(CASE WHEN event = 'click' THEN value END)
                       / nullif(SUM(CASE WHEN event = 'impression' THEN value END), 0),
                       {DEFAULT_GLOBAL_CTR}) AS ctr,
              coalesce(AVG(CASE WHEN event = 'rating' THEN value END), {DEFAULT_GLOBAL_RATING})
                  AS rating
            FROM ev"""
        )
        end_epoch = end.timestamp()
        with progress(total=2, desc=f"features {d}", unit="table") as bar:
            users = _finish(con, _user_sql(end_epoch, d), USER_SCHEMA, end, created)
            bar.update(1)
            items = _finish(con, _item_sql(end_epoch, d), ITEM_SCHEMA, end, created)
            bar.update(1)
    finally:
        con.close()
    return users, items, int(n_events)


def compute_features(settings: Settings, date: str | dt.date) -> dict:
    """Compute and write D's user and item feature tables (atomic; a rerun replaces them).

    Reads ``validated/date=[D-27..D]/*.parquet`` (D's partition must exist) and the attribute
    files when present. Returns ``{"date", "users", "items", "events", "seconds", "paths",
    "quarantined"}``. Raises ``FileNotFoundError`` naming the folder when D's validated
    partition is missing. A window file that cannot be read (damaged after its validation) is
    quarantined (``quarantine/files/...``, with its reason) and the features computed from the
    other files: ``quarantined`` lists them.
    """
    import duckdb

    t0 = time.perf_counter()
    d = schema.parse_date(date)
    files = _window_files(settings, d)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    try:
        users, items, n_events = _compute(settings, d, files, created)
        bad: list[str] = []
    except duckdb.Error:
        bad = _quarantine_unreadable(settings, files)
        own = str(layout.validated_partition(settings, d))
        if not bad or any(Path(f).parent == Path(own) for f in bad):
            raise  # nothing to blame, or D's own log is gone: rerun `recloop validate`
        files = [f for f in files if f not in bad]
        users, items, n_events = _compute(settings, d, files, created)
    user_dir = schema.write_partition_atomic(users, table_dir(settings, "user"), d)
    item_dir = schema.write_partition_atomic(items, table_dir(settings, "item"), d)
    seconds = round(time.perf_counter() - t0, 3)
    log.info(
        "features %s: %d users, %d items from %d events (%d files) in %.2fs",
        d,
        users.num_rows,
        items.num_rows,
        n_events,
        len(files),
        seconds,
    )
    return {
        "date": d.isoformat(),
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
