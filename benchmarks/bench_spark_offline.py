"""Point-in-time training frames on Feast's file and Spark offline stores (issue 19).

For a workspace with feature tables and validated logs (``--home``), the ranker's training rows
of the ``--window`` days ending at ``--date`` (the labelled impressions,
:func:`pipelines.ranking.data.window_labels`) are joined with ``ranker_v1``'s features by
:func:`pipelines.features.store.training_frame`, once per store, each in a fresh process: rows,
seconds (a cold call: Feast's registry and, for Spark, the JVM started before the clock; then a
warm second call), peak RSS of the Python process and, for Spark, of its JVM; and whether the
two frames are equal. Writes only the workspace's ``features/registry.db``.

    .venv/bin/python benchmarks/bench_spark_offline.py --home WS --date 2026-01-10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path


def _peak_kib(pid: int) -> int:
    """``VmHWM`` (peak RSS, KiB) of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def one_store(home: Path, date: dt.date, window: int, engine: str, out: Path) -> dict:
    """Build the frame with ``engine``'s offline store in this process; write it to ``out``."""
    sys.path.insert(0, os.getcwd())  # run from the repository root
    warnings.simplefilter("ignore")
    from pipelines.core.settings import Settings
    from pipelines.features import store as fs
    from pipelines.ranking.data import window_labels

    settings = replace(Settings(home=home), feature_engine=engine)
    first = date - dt.timedelta(days=window - 1)
    rows, source = window_labels(settings, first, date)
    t0 = time.perf_counter()
    fs.apply_repo(settings)
    jvm = None
    if engine == "spark":
        from pipelines.features import spark_engine

        jvm = spark_engine.offline_session(settings)._jvm
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    frame = fs.training_frame(settings, rows, "ranker_v1")
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fs.training_frame(settings, rows, "ranker_v1")
    warm_s = time.perf_counter() - t0
    frame.to_parquet(out)
    result = {
        "store": frame.attrs["offline_store"],
        "label_source": source,
        "rows": len(frame),
        "users": int(frame["user_id"].nunique()),
        "items": int(frame["item_id"].nunique()),
        "setup_s": round(setup_s, 2),
        "frame_cold_s": round(cold_s, 2),
        "frame_warm_s": round(warm_s, 2),
        "python_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }
    if jvm is not None:
        result["jvm_peak_rss_mib"] = _peak_kib(jvm.ProcessHandle.current().pid()) // 1024
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--date", type=dt.date.fromisoformat, required=True)
    ap.add_argument("--window", type=int, default=28)
    ap.add_argument("--engine", choices=("duckdb", "spark"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        print(json.dumps(one_store(args.home, args.date, args.window, args.engine, args.out)))
        return
    import pandas as pd

    frames = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("duckdb", "spark"):
            out = Path(tmp) / f"{engine}.parquet"
            cmd = [sys.executable, __file__, "--home", str(args.home), "--date", str(args.date)]
            cmd += ["--window", str(args.window), "--engine", engine, "--out", str(out)]
            env = os.environ | {"PYTHONWARNINGS": "ignore"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            print(done.stdout.strip().splitlines()[-1])
            frames[engine] = pd.read_parquet(out)
    pd.testing.assert_frame_equal(frames["spark"], frames["duckdb"], check_exact=True)
    print("frames equal: yes")


if __name__ == "__main__":
    main()
