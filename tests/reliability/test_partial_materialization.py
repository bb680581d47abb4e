"""Issue 17, case 9 (the writes): a materialization that fails part way is seen, not silent.

Feast writes one feature view after the other; Redis dying between them leaves the users of
day D beside the items of day D-1. The marker (the latest materialized date) still names D-1,
so before this fix nothing told anyone that the store was a mix of days. Now
:data:`pipelines.features.online.PARTIAL_KEY` names D from the first write until the write
completed (cleared with the marker in one transaction): ``recloop status`` says so and what to
run, the service's item cache sees it (``/metrics`` ``recloop_features_partial``) and drops
its cached rows when the state changes, and a rerun completes D.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import redis

from pipelines.core.settings import Settings
from pipelines.features import online
from pipelines.features import tables as ft
from tests.helpers import RedisServer

DAYS = ("2026-01-01", "2026-01-02")


@pytest.fixture()
def two_days(tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch):
    """Two tiny simulated days validated with feature tables; day 1 materialized."""
    from pipelines.data.simulate import simulate
    from pipelines.orchestration import tasks

    redis.Redis.from_url(redis_server.url).flushall()
    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECLOOP_REDIS_URL", redis_server.url)
    settings = Settings.from_env()
    settings.ensure_dirs()
    simulate(settings, 2, "tiny")
    for day in DAYS:
        tasks.validate(day)
    tasks.features(DAYS[0])
    ft.compute_features(settings, DAYS[1])
    return settings


def fail_second_view(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the Redis writes fail from the second feature view on (Redis gone after the
    first), whichever writer materializes (Feast's, or the bulk writer, the default); returns
    the views written."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    from pipelines.features import bulk_write

    real_feast, real_bulk = RedisOnlineStore.online_write_batch, bulk_write.write_table
    written: list[str] = []

    def injected(name: str) -> None:
        if written:
            raise redis.ConnectionError("Connection refused (injected)")
        written.append(name)

    def write(self, config, table, data, progress):
        injected(table.name)
        return real_feast(self, config, table, data, progress)

    def write_bulk(client, table, layout, chunk_rows):
        injected(layout.view)
        return real_bulk(client, table, layout, chunk_rows)

    monkeypatch.setattr(RedisOnlineStore, "online_write_batch", write)
    monkeypatch.setattr(bulk_write, "write_table", write_bulk)
    return written


def row_days(settings: Settings, user: str, items: list[str]) -> tuple[str, set[str]]:
    """The feature day of the user's row and of the items' rows in Redis (a row of day D is
    stamped D+1 00:00, :func:`pipelines.features.tables.feature_time`)."""
    got = online.online_features_fast(settings, user, items)

    def day(ts) -> str:
        return str((ts - dt.timedelta(days=1)).date())

    return day(got.user_event_timestamp), {day(ts) for ts in got.items.event_timestamp}


def cache_partial(settings: Settings, user: str, items: list[str]) -> str | None:
    """What the service's item cache sees of a partial materialization after one read."""
    from serving.item_cache import ItemFeatureCache

    cache = ItemFeatureCache(ttl_s=60.0)
    cache.read(settings, online.read_plan(settings, "ranker_v1"), "ranker_v1", user, items)
    return cache.partial


def test_a_failed_materialization_is_reported_and_a_rerun_completes_it(
    two_days: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.features.store import materialize_date
    from pipelines.report import status

    settings = two_days
    r = redis.Redis.from_url(settings.redis_url)
    user = str(pd.read_parquet(ft.table_path(settings, "user", DAYS[1])).user_id.iloc[0])
    items = [str(i) for i in pd.read_parquet(ft.table_path(settings, "item", DAYS[1])).item_id[:5]]
    assert row_days(settings, user, items)[1] == {DAYS[0]}
    assert status.materializing(settings) is None and cache_partial(settings, user, items) is None

    with monkeypatch.context() as m:
        written = fail_second_view(m)
        with pytest.raises((ConnectionError, redis.ConnectionError)):
            materialize_date(settings, DAYS[1])
    assert len(written) == 1  # one view of D written, then the failure: a real mix of days
    days = row_days(settings, user, items)
    assert {days[0], *days[1]} == set(DAYS)
    assert r.get(online.MARKER_KEY) == DAYS[0].encode()  # the marker alone would hide it
    assert r.get(online.PARTIAL_KEY).decode().startswith(DAYS[1] + " ")
    note = status.materializing(settings)
    assert note and DAYS[1] in note and f"materialize --date {DAYS[1]}" in note
    assert status.stage_dates(settings)["notes"]["materializing"] == note
    assert cache_partial(settings, user, items).startswith(DAYS[1])

    out = materialize_date(settings, DAYS[1])  # the rerun (Airflow's retry) completes D
    assert out["skipped"] is False
    assert row_days(settings, user, items) == (DAYS[1], {DAYS[1]})
    assert r.get(online.MARKER_KEY) == DAYS[1].encode() and r.get(online.PARTIAL_KEY) is None
    assert status.materializing(settings) is None and cache_partial(settings, user, items) is None
