"""Issue 17, case 12: the recent-request cache (``/feedback`` lookups) is bounded in bytes.

Any client can make the service remember a request of ``k_max`` items; 100k of them were ~1 GB
per worker. The cache now also stops at ``request_cache_bytes`` (an estimate of what its records
hold), evicting the oldest and counting what it evicts (``/metrics``). The estimate is checked
against the memory really kept (``tracemalloc``).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from pipelines.core.settings import Settings
from serving.config import ServingConfig
from serving.engine import build_engine
from tests.helpers import Service

K = 100  # k_max: the biggest request a client can make


def record(i: int) -> dict:
    """A served request as ``/recommend`` remembers it: K item ids, K propensities."""
    return {
        "request_id": f"{i:032x}", "user_id": "u" * 128,
        "items": tuple(f"item-{i}-{j:040d}" for j in range(K)),
        "propensities": tuple(0.5 + j * 1e-3 for j in range(K)),
        "arm": "champion", "model_version": "bundle-1", "feedback": {},
    }  # fmt: skip


def test_cache_stops_at_its_byte_bound_and_counts_evictions(settings: Settings):
    bound = 4 * 2**20
    cfg = ServingConfig(request_cache=100_000, request_cache_bytes=bound)
    engine = build_engine(settings, cfg)
    n = 2_000  # ~26 MB unbounded
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            engine.remember(f"{i:032x}", record(i))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        engine.hydrate_pool.shutdown(wait=False)
    kept = len(engine.recent)
    assert 0 < kept < n  # the byte bound bit long before the 100k entries
    assert engine.recent_bytes <= bound
    assert engine.recent_evicted == n - kept  # every eviction counted
    assert held <= 1.5 * bound, f"{held / 2**20:.1f} MiB really held for a {bound >> 20} MiB bound"
    assert engine.recent_bytes >= 0.5 * held  # the estimate is not far below the truth
    assert engine.lookup(f"{n - 1:032x}") is not None  # the newest kept
    assert engine.lookup(f"{0:032x}") is None  # the oldest evicted


def test_default_bound_and_metrics(settings: Settings):
    assert ServingConfig().request_cache_bytes <= 256 * 2**20  # not the old ~1 GB
    cfg = ServingConfig(reload_interval_s=0, request_cache=3, request_cache_bytes=2**30)

    async def go():
        async with Service(settings, cfg, load=False) as s:
            for i in range(5):
                s.engine.remember(f"{i:032x}", record(i))
            return (await s.client.get("/metrics")).text

    text = asyncio.run(go())
    assert "recloop_request_cache_entries 3" in text
    assert "recloop_request_cache_evicted_total 2" in text  # the entry bound still holds
    assert "recloop_request_cache_bytes " in text


def test_shared_records_keep_a_smaller_memory_copy(settings: Settings):
    """With several worker processes Redis holds every served request for ``/feedback``: each
    worker keeps only ``request_cache_shared`` in memory, so its memory stops growing early
    (soak: the 100k-entry copy grew each worker ~10 % in 10 minutes at 50 req/s)."""
    one = ServingConfig(request_cache=50, request_cache_shared=5)
    assert one.local_requests == 50  # one process: memory is the only copy
    assert one.with_(processes=2).local_requests == 5
    engine = build_engine(settings, one.with_(processes=2))
    try:
        for i in range(20):
            engine.remember(f"{i:032x}", record(i))
    finally:
        engine.hydrate_pool.shutdown(wait=False)
    assert len(engine.recent) == 5 and engine.recent_evicted == 15
    assert engine.lookup(f"{19:032x}") is not None and engine.lookup(f"{14:032x}") is None
