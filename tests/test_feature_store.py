"""Feast + Redis (pipelines/features/store.py): against the real redis-server of conftest."""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import time

import pandas as pd
import pytest
import redis

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.features import online
from pipelines.features import store as fs
from pipelines.features.tables import (
    DEFAULTS,
    ITEM_FEATURES,
    ITEM_SCHEMA,
    USER_FEATURES,
    USER_SCHEMA,
    compute_features,
    feature_time,
    read_table,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # dask, inside Feast's file store
]

D = dt.date(2024, 5, 10)
PREV = D - dt.timedelta(days=1)
USER_NAMES = [n for n, _, _ in USER_FEATURES]
ITEM_NAMES = [n for n, _, _ in ITEM_FEATURES]


def write_world(settings: Settings) -> None:
    """Two days of logs for 6 users x 8 items, and attribute files."""
    rows = []
    for back, date in ((1, PREV), (0, D)):
        for u in range(6):
            for i in range(8):
                if (u + i + back) % 3 == 0:
                    continue
                ts = pd.Timestamp(date, tz="UTC") + pd.Timedelta(hours=u + 1, minutes=i)
                rows.append((ts, f"u{u}", f"i{i}", "impression", 1.0))
                if (u * i + back) % 4 == 0:
                    rows.append((ts + pd.Timedelta(seconds=5), f"u{u}", f"i{i}", "click", 1.0))
                if (u + 2 * i) % 7 == 0:
                    rows.append(
                        (ts + pd.Timedelta(seconds=9), f"u{u}", f"i{i}", "rating", 1.0 + i % 5)
                    )
    df = pd.DataFrame(rows, columns=["ts", "user_id", "item_id", "event", "value"])
    df["event_id"] = [f"e{k}" for k in range(len(df))]
    for date, part in df.groupby(df["ts"].dt.date):
        schema.write_partition_atomic(schema.conform(part), settings.validated_dir, date)
    users = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(5)],
            "age": [20 + u for u in range(5)],
            "gender": ["f", "m", "f", "m", "x"],
            "country": ["DE"] * 5,
            "signup_date": [dt.date(2024, 1, 1)] * 5,
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(8)],
            "category": ["a", "b", "c", "a"] * 2,
            "price": [float(i) for i in range(8)],
            "created_date": [dt.date(2024, 4, 1)] * 8,
        }
    )
    schema.write_table_atomic(
        schema.conform(users, schema.USERS), settings.data_dir / "users.parquet"
    )
    schema.write_table_atomic(
        schema.conform(items, schema.ITEMS), settings.data_dir / "items.parquet"
    )


@pytest.fixture()
def loaded(redis_settings: Settings) -> Settings:
    """Workspace with D-1 and D computed, the repo applied and D materialized."""
    write_world(redis_settings)
    compute_features(redis_settings, PREV)
    compute_features(redis_settings, D)
    fs.apply_repo(redis_settings)
    out = fs.materialize_date(redis_settings, D)
    assert out["users"] == 6 and out["items"] == 8 and not out["skipped"]
    return redis_settings


def redis_dump(settings: Settings) -> dict[bytes, dict[bytes, bytes]]:
    client = redis.Redis.from_url(settings.redis_url)
    return {k: client.hgetall(k) for k in client.scan_iter() if client.type(k) == b"hash"}


def test_repo_applies_and_the_cli_sees_the_same_objects(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = fs.apply_repo(settings)
    assert out["entities"] == ["item", "user"]
    assert out["feature_views"] == ["item_features", "user_features"]
    assert out["feature_services"] == ["ranker_v1", "serving_v1", "two_tower_v1"]
    assert fs.registry_path(settings).exists()
    assert fs.apply_repo(settings)["feature_views"] == out["feature_views"]  # idempotent
    store = fs.get_store(settings)
    view = store.get_feature_view("user_features")
    assert view.batch_source.path == str(settings.features_dir / "user")
    assert [f.name for f in view.features] == USER_NAMES
    assert view.ttl == dt.timedelta(days=2)
    two_tower = fs.service_features(settings, "two_tower_v1")
    assert 0 < len(two_tower["item"]) < len(ITEM_NAMES)

    # What the `feast` CLI would load: feature_store.yaml (with ${RECLOOP_HOME}) + definitions.
    from feast.repo_config import load_repo_config
    from feast.repo_operations import parse_repo

    monkeypatch.setenv("RECLOOP_HOME", str(settings.home))
    config = load_repo_config(fs.REPO_DIR, fs.REPO_DIR / "feature_store.yaml")
    assert config.registry.path == str(fs.registry_path(settings))
    assert config.online_store.type == "redis" and config.project == online.PROJECT
    contents = parse_repo(fs.REPO_DIR)
    assert sorted(v.name for v in contents.feature_views) == out["feature_views"]
    assert sorted(s.name for s in contents.feature_services) == out["feature_services"]


def test_online_read_equals_offline_values(loaded: Settings) -> None:
    settings = loaded
    users = read_table(settings, "user", D).to_pandas().set_index("user_id")
    items = read_table(settings, "item", D).to_pandas().set_index("item_id")
    asked = ["i3", "i0", "i7", "i3"]  # order and duplicates kept
    for read in (fs.online_features, online.online_features_fast):
        res = read(settings, "u2", asked, now=feature_time(D) + dt.timedelta(hours=3))
        assert res.user == {n: pytest.approx(users.loc["u2", n]) for n in USER_NAMES}
        assert res.user_event_timestamp == pd.Timestamp(feature_time(D))
        assert not res.user_missing and not res.user_stale
        assert list(res.items["item_id"]) == asked
        for n in ITEM_NAMES:
            assert list(res.items[n]) == pytest.approx(list(items.loc[asked, n])), n
        assert (res.items["event_timestamp"] == pd.Timestamp(feature_time(D))).all()
        assert res.n_missing_items == 0 and res.n_stale_items == 0
    # D's values, not D-1's: the two days differ for this user, so equality above means D.
    prev = read_table(settings, "user", PREV).to_pandas().set_index("user_id")
    assert any(prev.loc["u2", n] != users.loc["u2", n] for n in USER_NAMES)


def test_fast_path_returns_identical_values(loaded: Settings) -> None:
    asked = [f"i{i}" for i in range(8)] + ["nope", "i1", "also-nope"]
    now = feature_time(D) + dt.timedelta(days=1)
    for user in ("u0", "u5", "ghost"):
        a = fs.online_features(loaded, user, asked, now=now)
        b = online.online_features_fast(loaded, user, asked, now=now)
        assert a.user == b.user
        assert (a.user_event_timestamp, a.user_missing, a.user_stale) == (
            b.user_event_timestamp,
            b.user_missing,
            b.user_stale,
        )
        pd.testing.assert_frame_equal(a.items, b.items)
    assert online.redis_key("item_id", "i1") in redis_dump(loaded)


def test_rematerialize_is_idempotent(loaded: Settings) -> None:
    before = redis_dump(loaded)
    assert len(before) == 6 + 8
    again = fs.materialize_date(loaded, D)
    assert not again["skipped"] and again["rows"] == 14
    assert redis_dump(loaded) == before


def test_recompute_updates_and_an_older_date_does_not_overwrite(loaded: Settings) -> None:
    # A corrected log for D, recomputed and rematerialized, replaces D's values in Redis.
    extra = pd.DataFrame(
        [(pd.Timestamp(D, tz="UTC") + pd.Timedelta(hours=23), "u0", "i0", "impression", 50.0)],
        columns=["ts", "user_id", "item_id", "event", "value"],
    )
    extra["event_id"] = ["extra"]
    old = schema.read_partition(loaded.validated_dir, D)
    fixed = pd.concat([old, extra], ignore_index=True)
    schema.write_partition_atomic(schema.conform(fixed), loaded.validated_dir, D)
    before = online.online_features_fast(loaded, "u0", ["i0"]).user["user_impressions_1d"]
    compute_features(loaded, D)
    fs.materialize_date(loaded, D)
    after = online.online_features_fast(loaded, "u0", ["i0"])
    assert after.user["user_impressions_1d"] == before + 50
    # Materializing the older date D-1 afterwards is skipped: Redis keeps D's values.
    out = fs.materialize_date(loaded, PREV)
    assert out["skipped"]
    assert online.online_features_fast(loaded, "u0", ["i0"]).user == after.user


def test_materialize_refuses_missing_or_empty_tables(loaded: Settings) -> None:
    before = redis_dump(loaded)
    later = D + dt.timedelta(days=1)
    with pytest.raises(FileNotFoundError, match="refusing to materialize"):
        fs.materialize_date(loaded, later)
    schema.write_partition_atomic(USER_SCHEMA.empty_table(), loaded.features_dir / "user", later)
    schema.write_partition_atomic(ITEM_SCHEMA.empty_table(), loaded.features_dir / "item", later)
    with pytest.raises(ValueError, match="is empty"):
        fs.materialize_date(loaded, later)
    assert redis_dump(loaded) == before


def test_stale_and_missing_flags(loaded: Settings) -> None:
    for read in (fs.online_features, online.online_features_fast):
        later = read(
            loaded, "u1", ["i1", "unknown-item"], now=feature_time(D) + dt.timedelta(days=3)
        )
        assert later.user_stale and not later.user_missing
        assert list(later.items["stale"]) == [True, False]  # a missing row is not "stale"
        assert list(later.items["missing"]) == [False, True]
        assert later.n_missing_items == 1 and later.n_stale_items == 1
        row = later.items.iloc[1]
        assert all(row[n] == DEFAULTS[n] for n in ITEM_NAMES)
        assert pd.isna(row["event_timestamp"])
        ghost = read(loaded, "nobody", [], now=feature_time(D))
        assert ghost.user_missing and not ghost.user_stale
        assert ghost.user == {n: DEFAULTS[n] for n in USER_NAMES}
        assert ghost.user_event_timestamp is None and ghost.n_items == 0


def test_point_in_time_join_does_not_leak(
    redis_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = redis_settings
    # Plant user tables by hand: D-1's row says 7 clicks, D's row says 999 (known at D+1 00:00).
    for date, clicks in ((PREV, 7), (D, 999)):
        row = {n: DEFAULTS[n] for n in USER_NAMES}
        row.update(user_id="u1", user_clicks_28d=clicks)
        row.update(event_timestamp=feature_time(date), created=feature_time(date))
        table = pd.DataFrame([row])
        schema.write_partition_atomic(
            schema.conform(table, USER_SCHEMA), settings.features_dir / "user", date
        )
        items = pd.DataFrame(
            [
                {n: DEFAULTS[n] for n in ITEM_NAMES}
                | {
                    "item_id": "i1",
                    "item_clicks_28d": clicks + 1,
                    "event_timestamp": feature_time(date),
                    "created": feature_time(date),
                }
            ]
        )
        schema.write_partition_atomic(
            schema.conform(items, ITEM_SCHEMA), settings.features_dir / "item", date
        )
    t_d = pd.Timestamp(D, tz="UTC")
    events = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u1", "u1", "u2"],
            "item_id": ["i1", "i2", "i1", "i1", "i1", "i1"],
            "event_timestamp": [
                t_d + pd.Timedelta(hours=12),  # during D: D's row (999) is not known yet
                t_d + pd.Timedelta(hours=12),  # same user and time, another item (a slate)
                t_d + pd.Timedelta(days=1, minutes=1),  # after D ended: 999
                t_d - pd.Timedelta(hours=1),  # before any row exists: missing
                t_d + pd.Timedelta(days=4),  # D's row is older than the 2-day ttl: missing
                t_d + pd.Timedelta(hours=12),  # unknown user
            ],
            "label": [1, 0, 1, 0, 0, 1],
        }
    )
    out = fs.training_frame(settings, events, service="ranker_v1")
    assert len(out) == len(events)
    assert list(out["label"]) == list(events["label"])
    assert list(out["user_clicks_28d"]) == [7, 7, 999, DEFAULTS["user_clicks_28d"], 0, 0]
    assert list(out["user_missing"]) == [False, False, False, True, True, True]
    assert list(out["item_clicks_28d"]) == [8, 0, 1000, 0, 0, 8]
    assert list(out["item_missing"]) == [False, True, False, True, True, False]
    assert out["user_clicks_28d"].dtype == "int64"
    two_tower = fs.training_frame(settings, events, service="two_tower_v1")
    assert "user_clicks_28d" in two_tower and "item_trending" not in two_tower
    feast = dataclasses.replace(settings, historical_reader="feast")
    pd.testing.assert_frame_equal(fs.training_frame(feast, events, service="ranker_v1"), out)
    monkeypatch.setattr(fs, "HISTORICAL_CHUNK", 1)  # one pair a Feast call: the same frame
    pd.testing.assert_frame_equal(fs.training_frame(feast, events, service="ranker_v1"), out)


def test_asof_reader_answers_as_feast_over_many_days(redis_settings: Settings) -> None:
    """Five daily tables of 30 users / 20 items with random values (some ids absent some days),
    200 events at random times over eight days, some exactly at a table's time or its ttl's
    end: the as-of reader's training frame equals Feast's, value for value."""
    import numpy as np

    settings, rng = redis_settings, np.random.default_rng(11)
    days = [D + dt.timedelta(days=i) for i in range(5)]
    for date in days:
        for entity, names, key, n, sch in (("user", USER_NAMES, "user_id", 30, USER_SCHEMA),
                                           ("item", ITEM_NAMES, "item_id", 20, ITEM_SCHEMA)):  # fmt: skip
            ids = [f"{key[0]}{j}" for j in range(n) if rng.random() < 0.8]
            rows = [{c: DEFAULTS[c] for c in names} | {key: i} for i in ids]
            table = pd.DataFrame(rows)
            for c in names:
                if isinstance(DEFAULTS[c], (int, float)) and not isinstance(DEFAULTS[c], bool):
                    table[c] = rng.integers(0, 100, len(table)).astype(type(DEFAULTS[c]))
            table["event_timestamp"] = table["created"] = feature_time(date)
            schema.write_partition_atomic(
                schema.conform(table, sch), settings.features_dir / entity, date
            )
    start = pd.Timestamp(D, tz="UTC")
    times = start + pd.to_timedelta(rng.integers(0, 8 * 24 * 60, 200), unit="min")
    times = times.tolist()
    times[:3] = [pd.Timestamp(feature_time(days[1]))] * 3  # exactly a table's time
    times[3:5] = [pd.Timestamp(feature_time(days[4])) + pd.Timedelta(days=2)] * 2  # ttl's end
    events = pd.DataFrame(
        {
            "user_id": [f"u{j}" for j in rng.integers(0, 33, 200)],  # u30-u32: never in a table
            "item_id": [f"i{j}" for j in rng.integers(0, 22, 200)],
            "event_timestamp": times,
            "label": rng.integers(0, 2, 200),
        }
    )
    got = fs.training_frame(settings, events, service="ranker_v1")
    feast = dataclasses.replace(settings, historical_reader="feast")
    want = fs.training_frame(feast, events, service="ranker_v1")
    pd.testing.assert_frame_equal(got, want)
    assert 0 < got["user_missing"].sum() < 200 and 0 < got["item_missing"].sum() < 200


def _hung_port() -> tuple[socket.socket, int]:
    """A socket that accepts connections (backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["closed", "hung"])
def test_redis_down_is_a_fast_clear_error(loaded: Settings, kind: str) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if kind == "hung":
        sock.listen(16)  # accepts connections into the backlog, never answers
    else:
        sock.close()  # nothing listens there
    url = f"redis://127.0.0.1:{port}/0"
    down = dataclasses.replace(loaded, redis_url=url)
    fs.service_features(down, "serving_v1")  # registry read (local file) outside the timing
    calls = {
        "feast": lambda: fs.online_features(down, "u1", ["i1", "i2"]),
        "fast": lambda: online.online_features_fast(down, "u1", ["i1", "i2"]),
        "materialize": lambda: fs.materialize_date(down, D),
    }
    try:
        for name, call in calls.items():
            t0 = time.perf_counter()
            with pytest.raises(ConnectionError, match=f"unreachable at {url}"):
                call()
            # Bound on a hang, not a speed figure: 1 s socket timeouts and no hidden retries
            # (redis-py's default retries took ~6 s on a refused connection).
            assert time.perf_counter() - t0 < 3.0, name
    finally:
        sock.close()
        fs.forget_store(down)
    # The real server still holds D's values.
    assert not online.online_features_fast(loaded, "u1", ["i1"]).user_missing


def test_cli_shows_online_values(loaded: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    code = main(["features", "--user", "u3", "--items", "i1,zzz", "--date", str(D)])
    out = capsys.readouterr().out
    assert code == 0
    assert "user u3: event_timestamp=2024-05-11 00:00:00+00:00 [fresh]" in out
    assert "MISSING (defaults)" in out and "2 items: 1 missing, 0 stale" in out
    users = read_table(loaded, "user", D).to_pandas().set_index("user_id")
    line = next(x for x in out.splitlines() if x.strip().startswith("user_impressions_7d"))
    assert line.split()[-1] == str(users.loc["u3", "user_impressions_7d"])
