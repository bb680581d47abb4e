"""Validation-gate throughput: rows/s of ``validate_partition`` on synthetic partitions.

Writes a synthetic raw partition (valid rows following ``schema.INTERACTIONS`` plus ~1% bad rows
of every kind) into a temporary workspace, then times the whole gate (read, parse, GX suite with
``result_format=COMPLETE``, outputs, report, Data Docs) and, apart, its read+parse part.

    .venv/bin/python benchmarks/bench_validate.py [--rows 50000 1000000] [--bad-share 0.01]

The first run in the process also pays the GX import (~3.5 s); it is reported separately
(``warm-up``) and excluded from the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.data.validate import parse_frame, read_raw_partition, validate_partition

DAY = dt.date(2024, 6, 1)


def synthetic_partition(n: int, bad_share: float, seed: int = 0) -> pa.Table:
    """``n`` interactions of ``DAY`` (~``bad_share`` of them bad, spread over the kinds)."""
    rng = np.random.default_rng(seed)
    start = np.datetime64(DAY.isoformat(), "us").astype(np.int64)
    ts = start + np.sort(rng.integers(0, 86_400_000_000, n))
    events = np.array(schema.EVENTS, dtype=object)[rng.choice(4, n, p=[0.8, 0.12, 0.03, 0.05])]
    value = np.where(events == "rating", rng.integers(1, 6, n), 1).astype(np.float64)
    event_id = np.char.add("ev", np.arange(n).astype(str)).astype(object)
    user_id = np.char.add("u", rng.zipf(1.3, n).clip(max=10**6).astype(str)).astype(object)
    item_id = np.char.add("i", rng.zipf(1.2, n).clip(max=10**5).astype(str)).astype(object)
    position = rng.integers(0, 10, n).astype(np.int32)
    propensity = rng.uniform(0.01, 1.0, n)

    bad = rng.choice(n, int(n * bad_share), replace=False)
    kinds = np.array_split(bad, 6)
    events[kinds[0]] = "view"
    value[kinds[1]] = -1.0
    events[kinds[1]] = "click"
    propensity[kinds[2]] = 0.0
    ts[kinds[3]] = start - 1
    event_id[kinds[4]] = event_id[(kinds[4] + 1) % n]
    user_null = kinds[5]
    users = pa.array(user_id, type=pa.string(), mask=np.isin(np.arange(n), user_null))
    return pa.table(
        {
            "event_id": pa.array(event_id, type=pa.string()),
            "ts": pa.array(ts, type=pa.timestamp("us", tz="UTC")),
            "user_id": users,
            "item_id": pa.array(item_id, type=pa.string()),
            "event": pa.array(events, type=pa.string()),
            "value": value,
            "request_id": pa.array(
                np.char.add("r", (np.arange(n) // 10).astype(str)).astype(object)
            ),
            "position": position,
            "arm": pa.array(np.full(n, "A", dtype=object)),
            "model_version": pa.array(np.full(n, "pop-0", dtype=object)),
            "propensity": propensity,
        }
    )


def bench(home: Path, n: int, bad_share: float) -> dict[str, float]:
    settings = Settings(home=home, max_bad_row_share=max(0.05, 2 * bad_share))
    settings.ensure_dirs()
    schema.write_partition_atomic(synthetic_partition(n, bad_share), settings.interactions_dir, DAY)
    t0 = time.perf_counter()
    raw, _ = read_raw_partition(settings, DAY)
    parse_frame(raw)
    t_parse = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = validate_partition(settings, DAY)
    t_total = time.perf_counter() - t0
    assert result.rows_total == n
    return {
        "rows": n,
        "good": result.rows_good,
        "quarantined": result.rows_quarantined,
        "seconds": t_total,
        "read_parse_s": t_parse,
        "rows_per_s": n / t_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 1_000_000])
    parser.add_argument("--bad-share", type=float, default=0.01)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        t0 = time.perf_counter()
        bench(Path(tmp) / "warmup", 1_000, args.bad_share)
        print(f"warm-up (GX import + first run, 1k rows): {time.perf_counter() - t0:.2f} s")
        print(
            f"{'rows':>10} {'good':>10} {'quarant.':>9} {'total s':>8} {'read+parse s':>13} "
            f"{'rows/s':>10}"
        )
        for n in args.rows:
            r = bench(Path(tmp) / f"n{n}", n, args.bad_share)
            print(
                f"{r['rows']:>10} {r['good']:>10} {r['quarantined']:>9} {r['seconds']:>8.2f} "
                f"{r['read_parse_s']:>13.2f} {r['rows_per_s']:>10,.0f}"
            )


if __name__ == "__main__":
    main()
