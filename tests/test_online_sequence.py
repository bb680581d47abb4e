"""The online per-user recent-item sequence (issues 14, 16): the daily rebuild from the validated
logs (idempotent, keeps what the service appended after the day), the ``/feedback`` append and
trim, and serving reading it (seen exclusion, ``covisit``, users unknown to the bundle), with a
dead Redis falling back to the bundle's history."""

from __future__ import annotations

import datetime as dt
import socket
import time

import anyio
import numpy as np
import pandas as pd
import pytest
import redis
import scipy.sparse as sp

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.core.vocab import Vocab
from pipelines.features import online, sequences
from pipelines.features.sequences import SequenceSettings, epoch_ms, sequence_key
from serving.config import ServingConfig

D = dt.date(2026, 1, 9)


def _at(day: dt.date, hour: int) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=hour)


def _write_logs(settings: Settings, day: dt.date, events: list[tuple[str, str, str, int]]) -> None:
    """Validated partition of ``day``: ``(user, item, event, hour)`` rows (and an impression)."""
    rows = [{"event_id": f"{day}-{j}", "ts": _at(day, h), "user_id": u, "item_id": i,
             "event": e, "value": 1.0} for j, (u, i, e, h) in enumerate(events)]  # fmt: skip
    table = schema.conform(pd.DataFrame(rows), schema.INTERACTIONS)
    schema.write_partition_atomic(table, settings.validated_dir, day)


def _dump(url: str) -> dict[str, list[tuple[bytes, float]]]:
    r = redis.Redis.from_url(url)
    return {k.decode(): r.zrange(k, 0, -1, withscores=True) for k in r.scan_iter("recloop:seq:*")}


def _seq(url: str, user: str) -> list[str]:
    return [m.decode() for m in redis.Redis.from_url(url).zrange(sequence_key(user), 0, -1)]


def test_rebuild_is_idempotent_keeps_later_appends_and_replaces_the_rest(redis_settings):
    s = redis_settings
    _write_logs(s, D - dt.timedelta(days=1), [("u1", "old", "click", 9)])  # outside the window
    _write_logs(s, D, [("u1", "a", "click", 1), ("u1", "b", "purchase", 2), ("u1", "c", "click", 3),
                       ("u1", "d", "rating", 4), ("u1", "b", "click", 5), ("u1", "x", "impression", 6),
                       ("u2", "a", "click", 7)])  # fmt: skip
    client = online.redis_client(s)
    sequences.append(client, "u1", "late", epoch_ms(_at(D + dt.timedelta(days=1), 1)), 3)
    sequences.append(client, "u1", "junk", epoch_ms(_at(D, 0)), 3)  # not in D's logs: replaced
    sequences.append(client, "ghost", "gone", epoch_ms(_at(D, 0)), 3)  # no positive: cut
    sequences.append(client, "ghost2", "kept", epoch_ms(_at(D + dt.timedelta(days=1), 2)), 3)
    cfg = SequenceSettings(length=3, days=1)
    out = sequences.rebuild(s, D, cfg)
    assert out["users"] == 2 and out["stale_users"] == 2
    # the last 3 distinct positives of D (b moved to its click at 5h), then the later append,
    # trimmed to 3: the service's append survives
    assert _seq(s.redis_url, "u1") == ["d", "b", "late"]
    assert _seq(s.redis_url, "u2") == ["a"]
    assert _seq(s.redis_url, "ghost") == [] and _seq(s.redis_url, "ghost2") == ["kept"]
    first = _dump(s.redis_url)
    sequences.rebuild(s, D, cfg)
    assert _dump(s.redis_url) == first  # a rerun of D writes the same thing
    assert SequenceSettings.from_env({"RECLOOP_SEQUENCE_LENGTH": "7"}).length == 7
    with pytest.raises(ValueError, match="RECLOOP_SEQUENCE_DAYS"):
        SequenceSettings.from_env({"RECLOOP_SEQUENCE_DAYS": "0"})


def _engine(settings: Settings, **cfg):
    from serving.engine import build_engine

    return build_engine(settings, ServingConfig(seed=1, candidates=100, k_max=10, **cfg))


def _shown(engine, request_id: str, user: str, items: list[str]) -> None:
    engine.remember(request_id, {"request_id": request_id, "user_id": user, "items": tuple(items),
                                 "propensities": (1.0,) * len(items), "arm": "champion",
                                 "model_version": "bundle-1", "feedback": {}})  # fmt: skip


def _feedback(engine, request_id: str, item: str, event: str = "click") -> tuple[str, bool]:
    from serving.api_models import FeedbackBody
    from serving.feedback import record_feedback

    body = FeedbackBody(request_id=request_id, item_id=item, event=event)
    return anyio.run(record_feedback, engine, body)


def test_feedback_appends_and_trims_and_survives_a_dead_redis(redis_settings, monkeypatch):
    monkeypatch.setenv("RECLOOP_SEQUENCE_LENGTH", "3")
    engine = _engine(redis_settings)
    try:
        for j, item in enumerate(["i1", "i2", "i3", "i4"]):
            _shown(engine, f"r{j}", "u9", [item, "other"])
            _feedback(engine, f"r{j}", item)
            time.sleep(0.002)  # event times in ms: one per append
        _feedback(engine, "r1", "i2", "purchase")  # i2 again: it moves to the end
        assert _seq(redis_settings.redis_url, "u9") == ["i3", "i4", "i2"]
    finally:
        engine.hydrate_pool.shutdown(wait=False)
    dead = _engine(Settings(home=redis_settings.home, redis_url=_dead_url()))
    try:
        _shown(dead, "r9", "u9", ["i5"])
        event_id, duplicate = _feedback(dead, "r9", "i5")
        assert not duplicate and event_id
        assert dead.metrics.fallbacks["sequence_append"] == 1 and dead.breaker.is_open()
    finally:
        dead.hydrate_pool.shutdown(wait=False)


def _dead_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def _bundle():
    """A bundle whose training matrix has ``a`` took i0; ``b`` i0, i1; ``c`` and ``d`` i2, i3:
    covisit neighbours i0 ~ i1, i2 ~ i3."""
    from serving.bundle import ItemTable, LoadedBundle
    from serving.sources import CovisitSource

    ids = [f"i{j}" for j in range(6)]
    users = Vocab(["a", "b", "c", "d"])
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0],
                                   [0, 0, 1, 1, 0, 0]], dtype=np.float32))  # fmt: skip
    frame = pd.DataFrame({"item_id": ids, "item_category": ["c0"] * 6,
                          "item_impressions_28d": [10] * 6, "item_clicks_28d": [1] * 6})  # fmt: skip
    return LoadedBundle(
        version="1", pins={}, paths={}, feature_service="ranker_v1", two_tower=None, users=users,
        items=Vocab(ids), seen=seen, user_vecs=np.zeros((4, 2), np.float32), index=None,
        ranker=None, item_table=ItemTable.from_frame(frame, "2026-01-08"),
        covisit=CovisitSource.from_matrix(seen, np.array(ids)),
    )  # fmt: skip


QUOTAS = (("covisit", 10), ("trending", 10))


def _candidates(engine, bundle, user: str):
    from serving.retrieve import candidates

    return candidates(engine, bundle, user, (), (), lambda: 500.0)


def test_serving_excludes_items_clicked_since_training_and_offers_their_neighbours(
    redis_settings,
):
    bundle = _bundle()
    client = online.redis_client(redis_settings)
    sequences.append(client, "a", "i2", epoch_ms(_at(D, 3)), 50)  # clicked after training
    sequences.append(client, "z", "i2", epoch_ms(_at(D, 4)), 50)  # unknown to the bundle
    on, off = (_engine(redis_settings, source_quotas=QUOTAS, online_sequence=x) for x in (1, 0))
    try:
        before = _candidates(off, bundle, "a")
        assert "i2" in before.ids and before.ids[0] == "i1"  # bundle history only
        found = _candidates(on, bundle, "a")
        assert "i2" not in found.ids and {"i0", "i2"} <= found.drop
        covisit = [i for i, s in zip(found.ids, found.sources, strict=True) if s == "covisit"]
        assert covisit[0] == "i3" and "i1" in found.ids  # the new item's neighbour first
        assert found.sequence_error is None and not found.cold
        new = _candidates(on, bundle, "z")
        assert not new.cold and "online_sequence" in new.fallbacks
        assert new.ids[0] == "i3" and new.sources[0] == "covisit"
        assert _candidates(off, bundle, "z").cold  # without the sequence: cold start
    finally:
        for e in (on, off):
            e.hydrate_pool.shutdown(wait=False)


def test_dead_redis_serves_the_bundle_history(settings):
    bundle = _bundle()
    assert ServingConfig.from_env({"RECLOOP_SERVE_ONLINE_SEQUENCE": "1"}).online_sequence
    dead_url = Settings(home=settings.home, redis_url=_dead_url())
    dead = _engine(dead_url, source_quotas=QUOTAS, online_sequence=True)
    off = _engine(settings, source_quotas=QUOTAS, online_sequence=0)
    try:
        found = _candidates(dead, bundle, "a")
        assert found.sequence_error == "redis unreachable" and dead.breaker.is_open()
        assert found.ids == _candidates(off, bundle, "a").ids and not found.cold
        assert found.fallbacks == [] and not found.degraded
        again = _candidates(dead, bundle, "a")  # breaker open: Redis not asked
        assert again.sequence_error == "redis breaker open" and again.ids == found.ids
    finally:
        for e in (dead, off):
            e.hydrate_pool.shutdown(wait=False)


def test_recency_history_weighs_the_newest_items_most():
    from serving.sources import recency_history

    cols, w = recency_history(np.array([0, 5]), np.array([5, 7, 9]), half_life=1.0, boost=1.0)
    got = dict(zip(cols.tolist(), w.tolist(), strict=True))
    assert got == {0: 1.0, 5: 1.25, 7: 1.5, 9: 2.0}  # newest 1 + boost, halving per item
