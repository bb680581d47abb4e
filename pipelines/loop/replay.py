"""Replay users through the service pipeline in-process: one loaded bundle, no HTTP server.

``serve_users(settings, bundle, user_ids, cfg)`` builds the serving app
(:func:`serving.app.create_app` with ``load=False``), puts ``bundle`` in as the champion, and
posts one ``/recommend`` per user id through an ASGI transport; it returns the response dicts
(:func:`serving.pipeline.recommend`'s shape), one per user id, in order. Nothing is written to
the workspace: the app's impression and request logs are swapped for logs that drop their rows,
so a replay never becomes tomorrow's data. Deadlines are raised (:func:`replay_config`) so that
no answer degrades on a busy box; the bundle's first-call costs are paid beforehand
(:func:`serving.bundle.warm_up`: the Feast read plan), and a warm-up (first Redis reads,
caches; not returned) is followed by a reset of the Redis breaker.

``slate_frame(responses)`` flattens them: one row per shown item with ``user_id``, ``item_id``,
``position`` (0-based), ``propensity``, ``explore``, ``source`` (the candidate source that
offered the item; ``""`` when the response does not say) and ``fallbacks`` (comma-joined;
``""`` for none).

Used by ``recloop stages`` (:mod:`pipelines.loop.stages`) and the OPE of the served policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from pipelines.core.settings import Settings
from serving.bundle import LoadedBundle
from serving.config import ServingConfig
from serving.logging import ImpressionLog

log = logging.getLogger("recloop.loop.replay")

SLATE_COLUMNS = ("user_id", "item_id", "position", "propensity", "explore", "source", "fallbacks")
"""Columns of :func:`slate_frame`."""


class _DiscardLog(ImpressionLog):
    """An impression / request log that counts its rows and writes (and buffers) nothing."""

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows_written += len(rows)

    def _write(self, rows: list[dict[str, Any]]) -> list:
        self.rows_written += len(rows)
        return []


def replay_config(cfg: ServingConfig | None = None, seed: int = 7) -> ServingConfig:
    """``cfg`` (default: the served defaults, ``ServingConfig()``) made fit for an offline replay:
    no registry polling, no challenger, a fixed exploration seed, no periodic log flush and
    deadlines raised (hydrate 3 s, request 6 s) so that nothing degrades on a busy machine, and
    each response carrying its whole policy (``include_policy``, for the served OPE) and its
    candidates (``include_candidates``, for the stage funnel)."""
    base = cfg or ServingConfig()
    return base.with_(
        reload_interval_s=0,
        challenger_share=0.0,
        seed=seed if base.seed is None else base.seed,
        log_flush_s=3600,
        hydrate_deadline_ms=max(base.hydrate_deadline_ms, 3000.0),
        deadline_ms=max(base.deadline_ms, 6000.0),
        include_policy=True,
        include_candidates=True,
    )


def serve_users(
    settings: Settings,
    bundle: LoadedBundle,
    user_ids: Sequence[str],
    cfg: ServingConfig | None = None,
    warmup: int = 20,
    k: int = 10,
) -> list[dict[str, Any]]:
    """One ``/recommend`` (``k`` items) per id of ``user_ids`` through the service pipeline with
    ``bundle`` as the champion; the response dicts, in order. ``cfg`` is passed through
    :func:`replay_config`. The first ``warmup`` ids are requested once more beforehand (not
    returned). A request answered with an HTTP error raises ``RuntimeError``."""
    return asyncio.run(_serve(settings, bundle, list(user_ids), replay_config(cfg), warmup, k))


async def _serve(
    settings: Settings,
    bundle: LoadedBundle,
    user_ids: list[str],
    cfg: ServingConfig,
    warmup: int,
    k: int,
) -> list[dict[str, Any]]:
    import httpx

    from serving.app import create_app
    from serving.bundle import warm_up

    warm_up(settings, bundle)  # the Feast read plan (seconds): paid here, not by a request
    app = create_app(settings, cfg, load=False)
    engine = app.state.engine
    engine.impressions = _DiscardLog(engine.impressions.root)
    engine.requests = _DiscardLog(engine.requests.root) if engine.requests is not None else None
    engine.bundles.arms["champion"] = bundle
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replay") as client:
            for u in user_ids[:warmup]:  # first Redis reads, caches: not returned
                await _post(client, u, k)
            engine.breaker.open_until = 0.0  # a slow warm-up must not leave it open
            out = [await _post(client, u, k) for u in user_ids]
    degraded = sum(bool(r.get("degraded")) for r in out)
    if degraded:
        log.warning("replay: %d of %d answers degraded", degraded, len(out))
    return out


async def _post(client: Any, user_id: str, k: int) -> dict[str, Any]:
    resp = await client.post("/recommend", json={"user_id": user_id, "k": k})
    if resp.status_code != 200:
        raise RuntimeError(f"replay: /recommend for {user_id!r} answered {resp.status_code}")
    return resp.json()


def slate_frame(responses: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per shown item of ``responses`` (:data:`SLATE_COLUMNS`); ``position`` int64,
    ``propensity`` float64, ``explore`` bool, ``source`` ``""`` when absent."""
    rows = [
        (
            r["user_id"],
            x["item_id"],
            int(x["position"]),
            float(x["propensity"]),
            bool(x.get("explore", False)),
            str(x.get("source") or ""),
            ",".join(r.get("fallbacks") or ()),
        )
        for r in responses
        for x in r["items"]
    ]
    frame = pd.DataFrame(rows, columns=list(SLATE_COLUMNS))
    return frame.astype(
        {
            "user_id": object,
            "item_id": object,
            "position": "int64",
            "propensity": "float64",
            "explore": bool,
            "source": object,
            "fallbacks": object,
        }  # fmt: skip
    )
