"""The loop: simulated users on the real service over loopback HTTP, then its log as a day's data.

A module-scoped workspace: 2 simulated tiny days run through the daily task functions (validate,
features → Redis, MF, two-tower, index, ranker, register, gate), so bundle 1 is the champion; the
service runs in-process under real uvicorn on a free loopback port; the simulator's logging-policy
partition of the next day is written first (another source to merge with).
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.core.wait import wait_until
from pipelines.loop.served import (
    MISMATCH,
    UNKNOWN_REQUEST,
    ingest_served,
    served_quarantine_dir,
)
from pipelines.loop.traffic import check_loopback, simulate_traffic
from pipelines.release import registry
from serving.config import ServingConfig
from serving.logging import impressions_dir
from tests.helpers import RedisServer, free_port, tiny_trained_workspace

TRAIN_DAYS = ("2026-01-01", "2026-01-02")
DAY = "2026-01-03"  # the served day
MAX_REQUESTS = 60


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer):
    """``(settings, counts)`` after simulated traffic of DAY against the champion over HTTP."""
    import uvicorn

    from pipelines.data.simulate import load_world, simulate_day
    from serving.app import create_app

    home = tmp_path_factory.mktemp("loop") / "home"
    settings, mp = tiny_trained_workspace(home, redis_server.url, TRAIN_DAYS)
    assert registry.get_alias(settings, "champion") == "1"
    # the logging policy's log of DAY: rows from another source, already in the partition
    other = simulate_day(load_world(settings), DAY).events
    schema.write_partition_atomic(other, settings.interactions_dir, DAY)

    cfg = ServingConfig(reload_interval_s=0, seed=7, explore_rate=0.3, log_flush_s=3600)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, cfg), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "uvicorn to start", interval_s=0.05)
    assert server.started, "uvicorn did not start"
    try:
        counts = simulate_traffic(
            settings, DAY, f"http://127.0.0.1:{port}", max_requests=MAX_REQUESTS, concurrency=4
        )
    finally:
        server.should_exit = True  # the lifespan's shutdown flushes the impression log
        thread.join(30)
    assert not thread.is_alive()
    yield settings, counts, other.num_rows
    mp.undo()


def test_simulated_traffic_reaches_the_service_and_reports_feedback(loop):
    settings, counts, _ = loop
    assert counts["requests"] == MAX_REQUESTS
    assert counts["served"] == MAX_REQUESTS and counts["errors"] == 0 and counts["skipped"] == 0
    assert counts["impressions"] == 10 * MAX_REQUESTS  # k = 10 per slate
    assert counts["clicks"] > 0 and counts["feedback_errors"] == 0
    assert set(counts["ctr_by_arm"]) <= {"champion", "challenger"}
    ctr = counts["clicks"] / counts["impressions"]
    assert sum(counts["ctr_by_arm"].values()) == pytest.approx(ctr)  # one arm served
    logged = sorted(impressions_dir(settings.home).rglob("*.parquet"))
    assert logged, "the service wrote no impression log"


def test_ingest_writes_contract_rows_matched_and_validated(loop):
    from pipelines.data.validate import validate_partition

    settings, counts, n_other = loop
    out = ingest_served(settings, DAY)
    assert out["impressions"] == counts["impressions"]
    assert out["clicks"] == counts["clicks"] and out["purchases"] == counts["purchases"]
    assert out["missing_requests"] == 0 and out["existing_rows"] == n_other
    served_rows = counts["impressions"] + counts["clicks"] + counts["purchases"]
    assert out["rows_written"] == n_other + served_rows

    table = pq.read_table(schema.partition_dir(settings.interactions_dir, DAY) / "part-0.parquet")
    assert table.schema.equals(schema.INTERACTIONS)
    df = table.to_pandas()
    assert df["event_id"].is_unique
    day = pd.Timestamp(DAY, tz="UTC")
    assert ((df["ts"] >= day) & (df["ts"] < day + pd.Timedelta(days=1))).all()
    served = df[df["model_version"].str.startswith("bundle-", na=False)]
    assert len(served) == served_rows
    imps = served[served["event"] == "impression"]
    assert imps["propensity"].between(0, 1, inclusive="right").all()
    assert (imps["propensity"] < 1).any()  # exploration: not every slot is certain
    assert set(imps["position"]) == set(range(10)) and set(imps["arm"]) == {"champion"}
    assert imps.groupby("request_id").size().eq(10).all()
    clicks = served[served["event"].isin(["click", "purchase"])]
    key = ["request_id", "item_id", "position", "arm", "model_version", "propensity"]
    joined = clicks.merge(imps[[*key, "ts"]], on=key, how="left", suffixes=("", "_imp"))
    assert joined["ts_imp"].notna().all(), "a click without its impression"
    assert (joined["ts"] >= joined["ts_imp"]).all(), "a click before its impression"

    result = validate_partition(settings, DAY)
    assert result.rows_quarantined == 0
    assert result.rows_good == n_other + served_rows


def test_ingest_rerun_is_byte_identical(loop):
    settings, _, _ = loop
    ingest_served(settings, DAY)
    path = schema.partition_dir(settings.interactions_dir, DAY) / "part-0.parquet"
    qpath = schema.partition_dir(served_quarantine_dir(settings), DAY) / "part-0.parquet"
    before = path.read_bytes(), qpath.read_bytes()
    again = ingest_served(settings, DAY)
    assert (path.read_bytes(), qpath.read_bytes()) == before
    assert again["rows_written"] == pq.read_metadata(path).num_rows


def test_unmatched_feedback_is_counted_and_kept_aside(loop):
    settings, counts, _ = loop
    part = schema.partition_dir(settings.interactions_dir, DAY) / "part-0.parquet"
    df = pq.read_table(part).to_pandas()
    click = df[(df["event"] == "click") & df["model_version"].notna()]
    click = click[click["model_version"].str.startswith("bundle-")].iloc[:1].copy()
    assert len(click) == 1
    unknown = click.assign(event_id="nope-0c", request_id="nope")
    moved = click.assign(event_id=click["request_id"] + "-9c", position=np.int32(9))
    moved = moved[moved["item_id"].notna()]
    bad = pd.concat([unknown, moved], ignore_index=True)
    log_day = schema.partition_dir(impressions_dir(settings.home), DAY)
    log_day.mkdir(parents=True, exist_ok=True)
    schema.write_table_atomic(schema.conform(bad), log_day / "part-injected.parquet")
    try:
        out = ingest_served(settings, DAY)
    finally:
        (log_day / "part-injected.parquet").unlink()
    assert out["unmatched_feedback"] == 2
    q = pq.read_table(
        schema.partition_dir(served_quarantine_dir(settings), DAY) / "part-0.parquet"
    ).to_pandas()
    assert sorted(q["reason"]) == sorted([UNKNOWN_REQUEST, MISMATCH])
    written = pq.read_table(part).to_pandas()
    assert not written["event_id"].isin(["nope-0c", *moved["event_id"]]).any()
    assert out["clicks"] == counts["clicks"]
    ingest_served(settings, DAY)  # the injected rows gone: the quarantine empties again
    q = pq.read_table(schema.partition_dir(served_quarantine_dir(settings), DAY) / "part-0.parquet")
    assert q.num_rows == 0


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "http://example.com", "ftp://127.0.0.1"])
def test_non_loopback_url_is_refused(url: str, settings: Settings):
    with pytest.raises(ValueError):
        simulate_traffic(settings, DAY, url)
    assert check_loopback("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_loopback("http://[::1]:8000") == "http://[::1]:8000"
