"""Served OPE against the simulator's truth: a day's logged impressions, candidate bundles replayed
through the service pipeline, item-position and PBM estimators vs the true CTR.

  RECLOOP_HOME=<a demo workspace> RECLOOP_REDIS_URL=<its Redis> \
      .venv/bin/python benchmarks/bench_ope_served.py [--date 2026-01-10] [--bundles 1,9]
      [--requests 1500] [--json OUT]

Prints, per bundle, the truth, each estimator (estimate [95% CI], ESS, mean weight) and
|estimate - truth| / truth. Needs responses with a ``policy`` entry
(:func:`serving.rerank.policy_record`); until ``serving.pipeline.recommend`` returns one,
:func:`policy_shim` adds it in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@contextlib.contextmanager
def policy_shim() -> Iterator[None]:
    """Add ``policy`` (:func:`serving.rerank.policy_record`) to every response of the in-process
    app when ``serving.pipeline`` does not return it yet (benchmark only)."""
    import serving.pipeline as pipeline
    import serving.routes as routes
    from serving import rerank

    local = threading.local()
    orig_rerank, orig_rec = pipeline._rerank, routes.recommend

    def _rerank(engine, req, bundle, ranked):  # noqa: ANN001, ANN202
        slate = orig_rerank(engine, req, bundle, ranked)
        local.policy = rerank.policy_record(slate, list(ranked.ids))
        return slate

    def rec(engine, req, info=None):  # noqa: ANN001, ANN202
        out = orig_rec(engine, req, info)
        out.setdefault("policy", local.policy)
        return out

    pipeline._rerank, routes.recommend = _rerank, rec
    try:
        yield
    finally:
        pipeline._rerank, routes.recommend = orig_rerank, orig_rec


def report(label: str, res: dict) -> str:
    truth = res.get("truth")
    lines = [f"{label}: truth {truth:.4f}  (logged CTR {res['logged_ctr']:.4f}, "
             f"{res['requests']} requests, examination {res['examination']})"]  # fmt: skip
    for name, e in res["estimates"].items():
        est = e["estimate"]
        err = abs(est - truth) / truth if (truth and est is not None) else float("nan")
        ci = f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]" if e["ci_low"] is not None else ""
        lines.append(f"  {name:<11} {est:.4f} {ci:<18} ess {e['ess']:8.0f}  "
                     f"mean_w {e['mean_weight']:.3f}  |err|/truth {err:.3f}")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", default="2026-01-10")
    parser.add_argument("--bundles", default="1,9")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from pipelines.core.settings import Settings
    from pipelines.release import served_ope
    from serving.bundle import load

    s = Settings.from_env()
    imp = served_ope.day_impressions(s, args.date, args.requests)
    out = {}
    with policy_shim():
        for ref in args.bundles.split(","):
            t0 = time.perf_counter()
            res = served_ope.evaluate_served(s, load(s, ref), args.date, imp=imp)
            print(report(f"bundle {ref} ({time.perf_counter() - t0:.0f} s)", res), flush=True)
            out[ref] = res
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
