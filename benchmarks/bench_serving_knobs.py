"""Serving knobs against the simulator's truth: one bundle, one day's users, each variant's slates
scored by the true click probability (position included), with the distinct items shown.

  RECLOOP_HOME=<demo workspace> RECLOOP_REDIS_URL=<its Redis> BUNDLE=9 RANKER=<ranker folder> \
  DATE=2026-01-10 N=800 VARIANTS='[{"explore_rate": 0.0}, {"explore_pool": 150}]' \
      .venv/bin/python benchmarks/bench_serving_knobs.py

Each variant is a JSON object of ``ServingConfig`` fields (``source_quotas`` as lists), plus
``no_ranker: true`` to serve the bundle without its ranker. ``RANKER`` (optional) swaps in a ranker
model folder. Nothing is written to the workspace (pipelines.loop.replay).
"""

import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from models.base import load_model
    from pipelines.core.settings import Settings
    from pipelines.data import simulate
    from pipelines.loop.replay import serve_users, slate_frame
    from serving.bundle import load
    from serving.config import ServingConfig

    s = Settings.from_env()
    date = os.environ.get("DATE", "2026-01-10")
    w = simulate.load_world(s)
    w.extend_to(date)
    n = int(os.environ.get("N", "400"))
    users = list(simulate.requests_for_day(w, date)["user_id"].unique()[:n])
    b = load(s, os.environ.get("BUNDLE", "champion"))
    if os.environ.get("RANKER"):
        b = dataclasses.replace(b, ranker=load_model(Path(os.environ["RANKER"])))
    for kw in json.loads(os.environ.get("VARIANTS", "[{}]")):
        kw = {k: tuple(map(tuple, v)) if k == "source_quotas" else v for k, v in kw.items()}
        bb = dataclasses.replace(b, ranker=None) if kw.pop("no_ranker", False) else b
        f = slate_frame(serve_users(s, bb, users, ServingConfig().with_(**kw)))
        u, i, p = f.user_id.to_numpy(), f.item_id.to_numpy(), f.position.to_numpy()
        t = simulate.true_click_prob(w, u, i, p)
        print(kw, f"true CTR {t.mean():.4f}, {f.item_id.nunique()} distinct items, "
              f"explored share {f.explore.mean():.3f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
