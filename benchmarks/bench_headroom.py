"""Headroom on the simulator: what knowing each part of the world's truth is worth, beside what
the loop served and how its impressions spread.

  RECLOOP_HOME=<a demo workspace> .venv/bin/python benchmarks/bench_headroom.py \
      [--date 2026-01-10] [--users 1500] [--served-days 2026-01-06..2026-01-10] [--json]

For the day's simulated users (the first ``--users`` requests), top-10 slates chosen by partial
relevance models, each scored by the full truth with position bias (the true CTR ``recloop
stages`` reports): the oracle (user taste ``u``, item taste ``v``, item appeal), the user's
demographic part of ``u`` only, the item's category part of ``v`` only, both, and two single
lists for everyone — items by appeal, and the best single list (items by their true relevance
averaged over the day's users). Then, from the workspace's logs of ``--served-days``: how many
distinct items got impressions, the share of impressions on the 50 / 100 most shown, and how
many impressions the 50 truly best items got. No Redis, no models: the world (``truth/``) and
the logs only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SLATE = 10


def slate_ctr(sim, world, users: np.ndarray, slates: np.ndarray) -> float:
    """Mean true click probability of ``slates`` ``(U, 10)`` item rows shown to ``users``."""
    u = np.repeat(users, SLATE)
    pos = np.tile(np.arange(SLATE), len(users))
    return float(sim.true_probabilities(world, u, slates.ravel(), pos)["click"].mean())


def knowledge_table(sim, world, users: np.ndarray, pool: np.ndarray) -> dict[str, float]:
    """True CTR of the top-10 by each partial relevance model (module docstring)."""
    band = np.searchsorted(np.asarray(sim.AGE_BANDS), world.user_age[users], side="right") - 1
    demo = (
        world.age_emb[band]
        + world.gender_emb[world.user_gender[users]]
        + world.country_emb[world.user_country[users]]
    )
    u, v = world.user_vec[users], world.item_vec[pool]
    cat = 0.8 * world.cat_centroids[world.item_category[pool]]
    scale = math.sqrt(sim.DIM * sim.TASTE_VAR)
    appeal = sim.REL_APPEAL * world.item_appeal[pool] / world.appeal_scale
    full = sim.REL_AFFINITY * (u @ v.T) / scale + appeal
    mean_rel = sim._sigmoid(sim.REL_BIAS + full + world.user_bias[users][:, None]).mean(0)
    models = {
        "oracle (u, v, appeal)": full,
        "demographic u, item v, appeal": sim.REL_AFFINITY * (demo @ v.T) / scale + appeal,
        "user u, category v, appeal": sim.REL_AFFINITY * (u @ cat.T) / scale + appeal,
        "demographic u, category v, appeal": sim.REL_AFFINITY * (demo @ cat.T) / scale + appeal,
        "one list: appeal": np.broadcast_to(appeal, full.shape),
        "one list: best for these users": np.broadcast_to(mean_rel, full.shape),
    }
    out = {}
    for name, score in models.items():
        top = np.argsort(-np.asarray(score), axis=1, kind="stable")[:, :SLATE]
        out[name] = round(slate_ctr(sim, world, users, pool[top]), 4)
    out["_best_items"] = [f"i{r}" for r in pool[np.argsort(-mean_rel)[:50]]]
    return out


def exposure(home: Path, first: str, last: str, best: list[str]) -> dict[str, float]:
    """How the logged impressions of days ``first``..``last`` spread over items."""
    from pipelines.core import schema

    days = pd.date_range(first, last, freq="D").date
    parts = [schema.read_partition(home / "data" / "interactions", d) for d in days]
    ev = pd.concat([p for p in parts if len(p)])
    counts = ev[ev["event"] == "impression"].groupby("item_id").size().sort_values(ascending=False)
    total = int(counts.sum())
    return {
        "impressions": total,
        "distinct_items": int(len(counts)),
        "share_top50": round(float(counts.head(50).sum()) / total, 3),
        "share_top100": round(float(counts.head(100).sum()) / total, 3),
        "best50_median_impressions": float(counts.reindex(best).fillna(0).median()),
        "best50_never_shown": int((counts.reindex(best).fillna(0) == 0).sum()),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--date", default="2026-01-10")
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--served-days", default="2026-01-06..2026-01-10", help="FIRST..LAST")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from pipelines.core.settings import Settings
    from pipelines.data import simulate as sim

    settings = Settings.from_env()
    world = sim.load_world(settings)
    world.extend_to(args.date)
    req = sim.requests_for_day(world, args.date)
    users = sim.user_rows(world, req["user_id"].to_numpy())[: args.users]
    pool = np.flatnonzero(world.created_day <= world.day_index(args.date))
    table = knowledge_table(sim, world, users, pool)
    best = table.pop("_best_items")
    first, _, last = args.served_days.partition("..")
    doc = {"date": args.date, "users": int(len(users)), "items": int(len(pool)),
           "true_ctr": table, "exposure": exposure(settings.home, first, last or first, best)}  # fmt: skip
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{args.date}: {len(users)} users, {len(pool)} items; true CTR of the top-10 by")
    for name, ctr in table.items():
        print(f"  {name:36s} {ctr:.4f}")
    print(f"impressions {first}..{last or first}: {doc['exposure']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
