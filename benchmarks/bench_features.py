"""Feature store figures: DuckDB feature computation, Feast materialization into Redis, reads.

    .venv/bin/python benchmarks/bench_features.py [--sizes demo,large] [--days 28] [--reads 200]

For each size it writes ``--days`` days of synthetic validated logs (Zipf users and items;
85 % impressions, 10 % clicks, 2 % purchases, 3 % ratings) and attribute files into a temporary
workspace, then times:

- ``compute_features`` for the last day (28-day window: every partition read by DuckDB);
- ``apply_repo`` + ``materialize_date`` for that day into a fresh ``redis-server`` started by
  this script on a free loopback port (rows/s = user + item rows written);
- ``training_frame`` (Feast point-in-time retrieval, file offline store) for 20k events;
- online reads of 1 user + 500 items, interleaved, ``--reads`` times each: Feast's
  ``get_online_features`` path vs the fast path (one Redis pipeline of HMGETs), p50/p99 ms.

Sizes: ``demo`` 50k events/day, 5k users, 2k items; ``large`` 2M events/day, 200k users,
50k items (a few minutes on 2 cores, mostly writing the synthetic logs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from pipelines.core import layout, schema
from pipelines.core.redis_server import RedisServer
from pipelines.core.settings import Settings  # noqa: E402
from pipelines.features import online
from pipelines.features import store as fs
from pipelines.features.tables import compute_features  # noqa: E402

SIZES = {
    "demo": {"events": 50_000, "users": 5_000, "items": 2_000},
    "large": {"events": 2_000_000, "users": 200_000, "items": 50_000},
}
END = dt.date(2024, 6, 28)
EVENT_P = {"impression": 0.85, "click": 0.10, "purchase": 0.02, "rating": 0.03}


def _ids(prefix: str, idx: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(idx), pa.string()), "")


def _zipf(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Indices in [0, n) with weight ~ 1/(rank+1)^0.9."""
    w = 1.0 / np.arange(1, n + 1) ** 0.9
    return rng.choice(n, size=size, p=w / w.sum())


def write_world(settings: Settings, size: dict, days: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    n_u, n_i, n_e = size["users"], size["items"], size["events"]
    users = pa.table(
        {
            "user_id": _ids("u", np.arange(n_u)),
            "age": pa.array(rng.integers(18, 70, n_u), pa.int32()),
            "gender": pa.array(rng.choice(["f", "m", "x"], n_u)),
            "country": pa.array(rng.choice(["DE", "FR", "US", "BR", "JP"], n_u)),
            "signup_date": pa.array(
                [END - dt.timedelta(days=int(d)) for d in rng.integers(0, 400, n_u)], pa.date32()
            ),
        }
    )
    items = pa.table(
        {
            "item_id": _ids("i", np.arange(n_i)),
            "category": pa.array([f"c{c}" for c in rng.integers(0, 16, n_i)]),
            "price": pa.array(np.round(rng.lognormal(2.5, 0.8, n_i), 2)),
            "created_date": pa.array(
                [END - dt.timedelta(days=int(d)) for d in rng.integers(0, 400, n_i)], pa.date32()
            ),
        }
    )
    schema.write_table_atomic(users.cast(schema.USERS), layout.attributes_path(settings, "users"))
    schema.write_table_atomic(items.cast(schema.ITEMS), layout.attributes_path(settings, "items"))
    events = np.array(list(EVENT_P))
    probs = np.array(list(EVENT_P.values()))
    for back in range(days - 1, -1, -1):
        date = END - dt.timedelta(days=back)
        t0 = int(dt.datetime.combine(date, dt.time(), tzinfo=dt.UTC).timestamp() * 1e6)
        ev = rng.choice(events, size=n_e, p=probs)
        value = np.where(ev == "rating", rng.integers(1, 6, n_e), 1).astype(float)
        table = pa.table(
            {
                "event_id": _ids(f"{date:%Y%m%d}-", np.arange(n_e)),
                "ts": pa.array(
                    t0 + rng.integers(0, 86_400_000_000, n_e), pa.timestamp("us", "UTC")
                ),
                "user_id": _ids("u", _zipf(rng, n_u, n_e)),
                "item_id": _ids("i", _zipf(rng, n_i, n_e)),
                "event": pa.array(ev),
                "value": pa.array(value),
            }
        )
        nulls = {
            f.name: pa.nulls(n_e, f.type)
            for f in schema.INTERACTIONS
            if f.name not in table.column_names
        }
        for name, arr in nulls.items():
            table = table.append_column(name, arr)
        table = table.select(schema.INTERACTIONS.names).cast(schema.INTERACTIONS)
        schema.write_partition_atomic(table, settings.validated_dir, date)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def bench(name: str, size: dict, days: int, reads: int, root: Path) -> None:
    home = root / name
    redis_server = RedisServer(root)
    redis_server.start()
    url = redis_server.url
    try:
        settings = Settings.from_env({"RECLOOP_HOME": str(home), "RECLOOP_REDIS_URL": url})
        settings.ensure_dirs()
        t0 = time.perf_counter()
        write_world(settings, size, days)
        print(
            f"[{name}] wrote {days} days x {size['events']:,} events in "
            f"{time.perf_counter() - t0:.1f}s"
        )

        out = compute_features(settings, END)
        print(
            f"[{name}] compute_features (28-day window, {out['events']:,} events): "
            f"{out['seconds']:.2f}s -> {out['users']:,} users, {out['items']:,} items"
        )
        compute_features(settings, END - dt.timedelta(days=1))  # a second partition to scan

        t0 = time.perf_counter()
        fs.get_store(settings)
        applied = fs.apply_repo(settings)
        print(
            f"[{name}] feast store + apply (in-process): {time.perf_counter() - t0:.2f}s "
            f"(apply alone {applied['seconds']:.2f}s)"
        )
        m = fs.materialize_date(settings, END)
        print(
            f"[{name}] materialize {m['rows']:,} rows: {m['seconds']:.2f}s = "
            f"{m['rows_per_s']:,.0f} rows/s"
        )
        m2 = fs.materialize_date(settings, END)
        print(f"[{name}] rematerialize (idempotent): {m2['seconds']:.2f}s")

        rng = np.random.default_rng(1)
        n_ev = 20_000
        import pandas as pd

        events = pd.DataFrame(
            {
                "user_id": [f"u{u}" for u in rng.integers(0, size["users"], n_ev)],
                "item_id": [f"i{i}" for i in rng.integers(0, size["items"], n_ev)],
                "event_timestamp": pd.Timestamp(END + dt.timedelta(days=1), tz="UTC")
                + pd.to_timedelta(rng.integers(0, 86_400, n_ev), unit="s"),
            }
        )
        t0 = time.perf_counter()
        frame = fs.training_frame(settings, events)
        print(
            f"[{name}] training_frame {n_ev:,} events (point-in-time, file store): "
            f"{time.perf_counter() - t0:.2f}s, {int(frame['item_missing'].sum())} item misses"
        )

        now = fs.ft.feature_time(END) + dt.timedelta(hours=1)
        feast_ms, fast_ms = [], []
        for k in range(reads + 5):
            user = f"u{rng.integers(0, size['users'])}"
            item_ids = [f"i{i}" for i in rng.choice(size["items"], 500, replace=False)]
            a = fs.online_features(settings, user, item_ids, now=now)
            b = online.online_features_fast(settings, user, item_ids, now=now)
            if k >= 5:  # warm-up
                feast_ms.append(a.read_ms)
                fast_ms.append(b.read_ms)
        for label, xs in (
            ("feast get_online_features", feast_ms),
            ("fast path (HMGET pipe)", fast_ms),
        ):
            print(
                f"[{name}] online 1 user + 500 items, {label:>26}: p50 {pct(xs, 50):6.2f} ms"
                f"  p99 {pct(xs, 99):6.2f} ms  (n={len(xs)})"
            )
        # The same read, whole call including DataFrame assembly (what serving pays).
        t_feast, t_fast = [], []
        for _ in range(min(reads, 50)):
            user = f"u{rng.integers(0, size['users'])}"
            item_ids = [f"i{i}" for i in rng.choice(size["items"], 500, replace=False)]
            t0 = time.perf_counter()
            fs.online_features(settings, user, item_ids, now=now)
            t_feast.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            online.online_features_fast(settings, user, item_ids, now=now)
            t_fast.append((time.perf_counter() - t0) * 1e3)
        print(
            f"[{name}] whole call incl. flags/DataFrame: feast p50 {pct(t_feast, 50):.2f} ms, "
            f"fast p50 {pct(t_fast, 50):.2f} ms"
        )
    finally:
        redis_server.stop()
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="demo,large")
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        for name in args.sizes.split(","):
            bench(name, SIZES[name], args.days, args.reads, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
