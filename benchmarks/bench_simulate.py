"""Simulator throughput: events/s of ``recloop simulate`` per scale, and of ``respond``.

    .venv/bin/python benchmarks/bench_simulate.py [--scales demo,large] [--days 1] [--keep DIR]

For each scale it times the whole command (world build, every day simulated and written with its
truth, users/items files) in a fresh temporary workspace, then times ``respond`` on the logging
policy's slates for one day's traffic. Prints events/s (all log rows: impressions, clicks,
purchases, ratings), seconds per day, files' size and peak memory (RSS of this process).
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipelines.core import layout  # noqa: E402
from pipelines.core.settings import Settings  # noqa: E402
from pipelines.data import simulate as sim


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _size_mb(root: Path) -> float:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e6


def bench_scale(scale: str, days: int, home: Path) -> None:
    settings = Settings.from_env({"RECLOOP_HOME": str(home)})
    t0 = time.perf_counter()
    world = sim.build_world(scale, 42)
    t_build = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    summaries = sim.simulate(settings, days=days, scale=scale, seed=42)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_users = pq.read_metadata(layout.attributes_path(settings, "users")).num_rows
    n_items = pq.read_metadata(layout.attributes_path(settings, "items")).num_rows
    events = sum(s[e] for s in summaries for e in ("impression", "click", "purchase", "rating"))
    print(
        f"[{scale}] simulate {days} day(s): {events:,} events in {wall:.1f} s "
        f"(CPU {cpu:.1f} s; world build alone {t_build:.1f} s) -> {events / wall:,.0f} events/s "
        f"wall, {events / cpu:,.0f} events/s CPU, "
        f"{wall / days:.1f} s/day; {events / days:,.0f} events/day, "
        f"users {n_users:,}, items {n_items:,}, "
        f"ctr {summaries[-1]['ctr']:.4f}; logs {_size_mb(settings.interactions_dir):.0f} MB, "
        f"truth {_size_mb(settings.truth_dir):.0f} MB; peak RSS {_rss_mb():,.0f} MB"
    )
    day = sim.DEFAULT_START
    reqs = sim.requests_for_day(world, day)
    pool, q = sim.logging_policy(world, day)
    rows, _ = sim.sample_slates(pool, q, len(reqs), sim.SLATE_SIZE, np.random.default_rng(0))
    ids = sim.ids_from_rows("i", rows.ravel()).to_numpy(zero_copy_only=False)
    slates = np.asarray(ids).reshape(rows.shape)
    t0, c0 = time.perf_counter(), time.process_time()
    resp = sim.respond(world, reqs["user_id"].to_numpy(), slates, day, seed=1, ts=reqs["ts"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    shown = rows.size
    print(
        f"[{scale}] respond: {len(reqs):,} slates ({shown:,} shown items) -> "
        f"{len(resp.events):,} events in {wall:.2f} s (CPU {cpu:.2f} s) = "
        f"{shown / wall:,.0f} shown items/s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="demo,large", help="comma-separated scales")
    parser.add_argument("--days", type=int, default=1, help="days per scale")
    parser.add_argument("--keep", type=Path, help="workspace root to keep (default: temporary)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {dt.datetime.now():%Y-%m-%d %H:%M}")
    for scale in args.scales.split(","):
        if args.keep:
            bench_scale(scale, args.days, args.keep / scale)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                bench_scale(scale, args.days, Path(tmp) / "home")
    return 0


if __name__ == "__main__":
    sys.exit(main())
