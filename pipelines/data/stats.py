"""Daily statistics of the validated logs: counts, CTR by position, new users and items.

Computed with DuckDB straight over the parquet partitions (nothing but the day's aggregates is held
in memory). "New" means not present in any validated partition before the day, so a rerun of a day
gives the same numbers whatever ran after it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from pipelines.core import layout, schema
from pipelines.core.duckdb_sql import sql_list, sql_string
from pipelines.core.settings import Settings
from pipelines.core.stats_reports import write_stats_report
from pipelines.core.validated import validated_files


def daily_stats(settings: Settings, date: str | dt.date) -> dict[str, Any]:
    """Aggregate the validated partition of ``date`` → a JSON-able dict; also written to
    ``reports/stats/date=D.json`` (:mod:`pipelines.core.stats_reports`). Raises
    ``FileNotFoundError`` when the day was not validated."""
    day = schema.parse_date(date)
    folder = layout.validated_partition(settings, day)
    if not any(folder.glob("*.parquet")):
        raise FileNotFoundError(
            f"no validated partition for {day} at {folder}: run validation first"
        )
    con = duckdb.connect()
    today = sql_string(folder / "*.parquet")
    con.execute(f"CREATE VIEW today AS SELECT * FROM read_parquet({today})")
    earlier = validated_files(settings, last=day - dt.timedelta(days=1))
    if earlier:
        listed = sql_list(earlier)
        con.execute(f"CREATE VIEW before AS SELECT user_id, item_id FROM read_parquet({listed})")
    else:
        con.execute(
            "CREATE VIEW before AS SELECT ''::VARCHAR AS user_id, ''::VARCHAR AS item_id WHERE false"
        )
    counts = dict(
        con.execute("SELECT event, count(*) FROM today GROUP BY event ORDER BY event").fetchall()
    )
    users, items, rows = con.execute(
        "SELECT count(DISTINCT user_id), count(DISTINCT item_id), count(*) FROM today"
    ).fetchone()
    new_users = con.execute(
        "SELECT count(*) FROM (SELECT DISTINCT user_id FROM today EXCEPT SELECT DISTINCT user_id FROM before)"
    ).fetchone()[0]
    new_items = con.execute(
        "SELECT count(*) FROM (SELECT DISTINCT item_id FROM today EXCEPT SELECT DISTINCT item_id FROM before)"
    ).fetchone()[0]
    by_position = con.execute(
        """
        WITH imp AS (SELECT request_id, item_id, position FROM today
                     WHERE event = 'impression' AND position IS NOT NULL),
             clk AS (SELECT DISTINCT request_id, item_id FROM today WHERE event = 'click')
        SELECT imp.position, count(*) AS impressions, count(clk.item_id) AS clicks
        FROM imp LEFT JOIN clk USING (request_id, item_id)
        GROUP BY imp.position ORDER BY imp.position
        """
    ).fetchall()
    con.close()
    impressions = counts.get("impression", 0)
    out: dict[str, Any] = {
        "date": day.isoformat(),
        "rows": int(rows),
        "events": {k: int(v) for k, v in counts.items()},
        "users": int(users),
        "items": int(items),
        "new_users": int(new_users),
        "new_items": int(new_items),
        "ctr": (counts.get("click", 0) / impressions) if impressions else None,
        "ctr_by_position": [
            {"position": int(p), "impressions": int(n), "clicks": int(c), "ctr": c / n}
            for p, n, c in by_position
        ],
    }
    write_stats_report(settings, out)
    return out


def format_stats(stats: dict[str, Any]) -> str:
    """One human-readable paragraph of :func:`daily_stats`' output."""
    events = ", ".join(f"{k} {v}" for k, v in sorted(stats["events"].items()))
    ctr = f"{stats['ctr']:.4f}" if stats["ctr"] is not None else "n/a"
    pos = " ".join(f"{p['ctr']:.3f}" for p in stats["ctr_by_position"][:10])
    line = (
        f"{stats['date']}: {stats['rows']} events ({events}); {stats['users']} users "
        f"({stats['new_users']} new), {stats['items']} items ({stats['new_items']} new); CTR {ctr}"
    )
    return line + (f"; CTR by position {pos}" if pos else "")
