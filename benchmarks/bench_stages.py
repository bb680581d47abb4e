"""What each serving stage does to the truth: one day's simulated users through the service
pipeline in-process, with stages switched off, each slate scored by the simulator's true click
probability (position included).

  RECLOOP_HOME=<a demo workspace> RECLOOP_REDIS_URL=<its Redis> \
      .venv/bin/python benchmarks/bench_stages.py [--date 2026-01-05] [--bundle 1] [--users 300]

Prints, per variant, the mean true CTR of the slates, by path (``known``: the model's own user
vector; ``user_tower``: encoded from demographics; ``cold_start``: trending), and the distinct
items shown. Deadlines are raised so that no answer degrades on a busy box.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", default="2026-01-05")
    parser.add_argument("--bundle", default="1", help="bundle version or alias")
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args()

    import httpx
    import numpy as np

    from pipelines.core.settings import Settings
    from pipelines.data import simulate
    from serving.app import create_app
    from serving.bundle import load
    from serving.config import ServingConfig

    s = Settings.from_env()
    world = simulate.load_world(s)
    world.extend_to(args.date)
    users = list(simulate.requests_for_day(world, args.date)["user_id"].unique()[: args.users])
    bundle = load(s, args.bundle)

    def run(b, **kw) -> str:
        base = dict(reload_interval_s=0, seed=7, log_flush_s=3600, challenger_share=0.0,
                    new_users="user_tower", hydrate_deadline_ms=3000, deadline_ms=6000)  # fmt: skip
        cfg = ServingConfig(**{**base, **kw})

        async def go():
            app = create_app(s, cfg, load=False)
            app.state.engine.bundles.arms["champion"] = b
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app)
                async with httpx.AsyncClient(transport=transport, base_url="http://s") as c:
                    for u in users[:20]:  # warm-up (first Redis reads, caches), not scored
                        await c.post("/recommend", json={"user_id": u, "k": 10})
                    app.state.engine.breaker.open_until = 0.0  # a slow warm-up must not open it
                    return [(await c.post("/recommend", json={"user_id": u, "k": 10})).json()
                            for u in users]  # fmt: skip

        uu, ii, pp, kinds = [], [], [], []
        for u, r in zip(users, asyncio.run(go()), strict=True):
            for x in r["items"]:
                uu.append(u)
                ii.append(x["item_id"])
                pp.append(x["position"])
                kinds.append(",".join(r["fallbacks"]) or "known")
        t = simulate.true_click_prob(world, np.array(uu), np.array(ii), np.array(pp))
        kinds_a = np.array(kinds)
        by = ", ".join(f"{k} {t[kinds_a == k].mean():.4f} ({(kinds_a == k).sum()})"
                       for k in sorted(set(kinds)))  # fmt: skip
        return f"{t.mean():.4f}  [{by}]  {len(set(ii))} distinct items"

    plain = dataclasses.replace(bundle, ranker=None)
    off = dict(explore_rate=0.0, category_cap=100, fresh_boost=0.0)
    print(f"bundle {bundle.version}, {len(users)} users of {args.date}: mean true CTR [by path]")
    print("full pipeline                  ", run(bundle))
    print("ranker, no re-rank/exploration ", run(bundle, **off))
    print("no ranker, no re-rank/explor.  ", run(plain, **off))
    print("no ranker, full re-rank        ", run(plain))
    print("trending for users not known   ", run(bundle, new_users="trending", **off))
    return 0


if __name__ == "__main__":
    sys.exit(main())
