"""The online service against a real Redis and a bundle trained on tiny data by the real pipeline.

A module-scoped workspace: 2 simulated tiny days, each run through the daily task functions
(validate, features → Redis, MF, two-tower, index, ranker, register, gate), so the bundle
trained through day 1 is the champion and day 2's bundle is registered (version 2).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.core.wait import wait_until
from pipelines.release import registry
from serving.config import ServingConfig
from serving.logging import impressions_dir
from serving.routing import bucket, route
from tests.helpers import (
    REPO,
    RedisServer,
    Service,
    free_port,
    known_user,
    tiny_trained_workspace,
)

DAYS = ("2026-01-01", "2026-01-02")
TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer):
    """Settings of a workspace whose registry has champion = bundle 1 and a bundle 2."""
    home = tmp_path_factory.mktemp("serving") / "home"
    settings, mp = tiny_trained_workspace(home, redis_server.url, DAYS)
    assert registry.get_alias(settings, "champion") == "1"
    assert registry.bundle_version(settings, "2") is not None
    yield settings
    mp.undo()


def config(**kw) -> ServingConfig:
    base = {"reload_interval_s": 0, "seed": 7, "explore_rate": 0.3, "log_flush_s": 3600}
    return ServingConfig(**{**base, **kw})


def run(coro):
    return asyncio.run(coro)


# --- the full path ------------------------------------------------------------------------


def test_full_path_returns_k_distinct_unseen_items_with_propensities(world: Settings):
    user, seen = known_user(world)
    assert seen

    async def go():
        async with Service(world, config(challenger_share=0.0)) as s:
            r = await s.client.post("/recommend", json={"user_id": user, "k": 8})
            g = await s.client.get("/recommend", params={"user_id": user, "k": 3})
            return r, g

    r, g = run(go())
    assert r.status_code == 200, r.text
    body = r.json()
    items = [x["item_id"] for x in body["items"]]
    assert len(items) == 8 and len(set(items)) == 8
    assert not set(items) & seen
    props = [x["propensity"] for x in body["items"]]
    assert all(0 < p <= 1 for p in props)
    assert [x["position"] for x in body["items"]] == list(range(8))
    assert body["arm"] == "champion" and body["bundle"]["bundle"] == "1"
    assert body["bundle"]["ranker"] is not None
    assert body["degraded"] is False and body["cold_start"] is False and body["fallbacks"] == []
    assert set(body["timings_ms"]) == {"route", "retrieve", "hydrate", "rank", "rerank", "log",
                                       "total"}  # fmt: skip
    assert len(body["request_id"]) == 32
    assert g.status_code == 200 and len(g.json()["items"]) == 3


def test_serve_threads_zero_runs_the_stages_on_the_event_loop(
    world: Settings, monkeypatch: pytest.MonkeyPatch
):
    import serving.routes

    user, _ = known_user(world)
    real, on_loop = serving.routes.recommend, []

    def recording(*args, **kw):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:  # a worker thread has no running loop
            on_loop.append(False)
        return real(*args, **kw)

    monkeypatch.setattr(serving.routes, "recommend", recording)

    async def go(threads: int):
        cfg = config(challenger_share=0.0, explore_rate=0.0, workers=threads)
        async with Service(world, cfg) as s:
            return await s.client.post("/recommend", json={"user_id": user, "k": 8})

    inline, threaded = run(go(0)), run(go(4))
    assert on_loop == [True, False]
    assert inline.status_code == threaded.status_code == 200
    items = [[x["item_id"] for x in r.json()["items"]] for r in (inline, threaded)]
    assert items[0] == items[1] and len(items[0]) == 8  # the same answer either way


def test_cold_start_is_trending_steered_by_categories(world: Settings):
    async def go():
        async with Service(world, config(explore_rate=0.0)) as s:
            plain = await s.client.post("/recommend", json={"user_id": "brand-new.user", "k": 5})
            cats = s.engine.bundles.get("champion").item_table.category
            top = pd.Series(cats).value_counts().index[0]
            steered = await s.client.post(
                "/recommend",
                json={"user_id": "brand-new.user", "k": 5, "context": {"categories": [top]}},
            )
            return plain, steered, top, s.engine.bundles.get("champion").item_table

    plain, steered, top, table = run(go())
    assert plain.status_code == 200 and plain.json()["cold_start"] is True
    trending = [str(table.ids[r]) for r in table.order[:20]]
    assert plain.json()["items"][0]["item_id"] == trending[0]
    got = [x["item_id"] for x in steered.json()["items"]]
    assert all(table.category[table.row[i]] == top for i in got)


def test_feedback_and_impression_log_pass_the_validation_gate(world: Settings, tmp_path: Path):
    from pipelines.data.validate import validate_partition

    user, _ = known_user(world)

    async def go():
        async with Service(world, config()) as s:
            shutil.rmtree(impressions_dir(world.home), ignore_errors=True)
            bodies = []
            for u in (user, "another-new-user", user):
                r = await s.client.post("/recommend", json={"user_id": u, "k": 6})
                bodies.append(r.json())
            first = bodies[0]
            item = first["items"][2]["item_id"]
            ok = await s.client.post(
                "/feedback", json={"request_id": first["request_id"], "item_id": item}
            )
            again = await s.client.post(
                "/feedback", json={"request_id": first["request_id"], "item_id": item}
            )
            buy = await s.client.post("/feedback", json={
                "request_id": first["request_id"], "item_id": item, "event": "purchase"})  # fmt: skip
            unknown = await s.client.post("/feedback", json={"request_id": "nope", "item_id": item})
            not_shown = await s.client.post(
                "/feedback", json={"request_id": first["request_id"], "item_id": "zzz"}
            )
            return bodies, ok, again, buy, unknown, not_shown

    bodies, ok, again, buy, unknown, not_shown = run(go())  # lifespan exit flushes the log
    assert (ok.status_code, again.status_code, buy.status_code) == (200, 200, 200)
    assert ok.json()["logged"] == again.json()["logged"]  # a repeat click is not logged again
    assert (ok.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert unknown.status_code == 404 and not_shown.status_code == 422
    dates = schema.partition_dates(impressions_dir(world.home))
    assert len(dates) == 1
    logged = schema.read_partition(impressions_dir(world.home), dates[0])
    assert len(logged) == 18 + 2  # 3 slates of 6, one click, one purchase
    imp = logged[logged["event"] == "impression"]
    assert set(imp["request_id"]) == {b["request_id"] for b in bodies}
    assert imp["propensity"].between(0, 1, inclusive="right").all()
    assert set(imp["model_version"]) == {"bundle-1"}
    click = logged[logged["event"] == "click"].iloc[0]
    shown = bodies[0]["items"][2]
    assert (click["position"], click["propensity"]) == (2, pytest.approx(shown["propensity"]))
    # the pipeline ingests it: the served partition passes the validation gate as a day's logs
    fresh = Settings.from_env({"RECLOOP_HOME": str(tmp_path / "fresh")})
    fresh.ensure_dirs()
    target = schema.partition_dir(fresh.interactions_dir, dates[0])
    shutil.copytree(schema.partition_dir(impressions_dir(world.home), dates[0]), target)
    result = validate_partition(fresh, dates[0])
    assert result.rows_quarantined == 0 and result.rows_good == len(logged)


# --- bad input and overload ---------------------------------------------------------------


BAD = [
    ("post", b"{not json", 400),
    ("post", b"[1, 2]", 422),
    ("post", json.dumps({"user_id": ""}).encode(), 422),
    ("post", json.dumps({"user_id": "x" * 129}).encode(), 422),
    ("post", json.dumps({"user_id": "bad id; drop"}).encode(), 422),
    ("post", json.dumps({"user_id": 12}).encode(), 422),
    ("post", json.dumps({"user_id": "u1", "k": 0}).encode(), 422),
    ("post", json.dumps({"user_id": "u1", "k": 101}).encode(), 422),
    ("post", json.dumps({"user_id": "u1", "k": "ten"}).encode(), 422),
    ("post", json.dumps({"user_id": "u1", "surprise": 1}).encode(), 422),
    ("post", json.dumps({"user_id": "u1", "context": {"categories": ["c"] * 50}}).encode(), 422),
    ("post", json.dumps({"user_id": "u1", "exclude": ["i"] * 5000}).encode(), 413),
    ("post", b"\xff\xfe\x00garbage", 400),
    ("get", {"k": "5"}, 422),
    ("get", {"user_id": "u1", "k": "-3"}, 422),
    ("get", {"user_id": "u1", "debug": "1"}, 422),
]


def test_bad_inputs_get_4xx_never_500(world: Settings):
    async def go():
        out = []
        async with Service(world, config()) as s:
            for method, payload, want in BAD:
                if method == "post":
                    r = await s.client.post(
                        "/recommend", content=payload, headers={"content-type": "application/json"}
                    )
                else:
                    r = await s.client.get("/recommend", params=payload)
                out.append((payload, want, r.status_code, r.json()))

            # a chunked body with no content-length, over the limit
            async def chunks():
                for _ in range(40):
                    yield b" " * 1024

            r = await s.client.post("/recommend", content=chunks())
            out.append(("chunked", 413, r.status_code, r.json()))
            r = await s.client.post("/feedback", json={"request_id": "", "item_id": "i1"})
            out.append(("feedback", 422, r.status_code, r.json()))
        return out

    for payload, want, got, body in run(go()):
        assert got == want, (payload, got, body)
        assert body["detail"]  # a message that says what is wrong


@pytest.mark.parametrize("threads", [4, 0])
def test_overload_answers_503_fast(world: Settings, threads: int):
    user, _ = known_user(world)

    async def go():
        async with Service(world, config(max_in_flight=2, workers=threads)) as s:
            s.engine.metrics.in_flight = 2  # two requests hold the slots
            t0 = time.perf_counter()
            full = await s.client.post("/recommend", json={"user_id": user})
            took = time.perf_counter() - t0
            health = await s.client.get("/health/live")  # not limited
            s.engine.metrics.in_flight = 0
            burst = await asyncio.gather(
                *(s.client.post("/recommend", json={"user_id": f"u{i}"}) for i in range(40))
            )
            return full, took, health, [r.status_code for r in burst]

    full, took, health, burst = run(go())
    assert full.status_code == 503 and "overloaded" in full.json()["detail"]
    assert full.headers["retry-after"] == "1"
    assert health.status_code == 200
    assert set(burst) <= {200, 503} and 200 in burst and 503 in burst
    print(f"503 answered in {took * 1e3:.2f} ms")


# --- routing ------------------------------------------------------------------------------


def test_routing_is_sticky_and_follows_the_split(world: Settings):
    shares = np.array([bucket(f"user-{i}", "salt-a", "exp") for i in range(20_000)])
    for share in (0.1, 0.5):
        frac = float((shares < share).mean())
        assert abs(frac - share) < 4 * np.sqrt(share * (1 - share) / len(shares))
    other = np.array([bucket(f"user-{i}", "salt-b", "exp") for i in range(20_000)])
    assert np.corrcoef(shares, other)[0, 1] < 0.05  # a new salt reshuffles the users
    registry.promote(world, "2", "challenger")
    try:

        async def go():
            async with Service(world, config(challenger_share=0.5)) as s:
                arms = {}
                for i in range(40):
                    u = f"route-user-{i}"
                    got = set()
                    for _ in range(3):
                        r = await s.client.post("/recommend", json={"user_id": u, "k": 2})
                        got.add((r.json()["arm"], r.json()["bundle"]["bundle"]))
                    assert len(got) == 1, (u, got)
                    arms[u] = got.pop()
                    want = route(s.engine, u)[0]
                    assert arms[u][0] == want
                return arms

        arms = run(go())
        assert {a for a, _ in arms.values()} == {"champion", "challenger"}
        assert all(v == ("challenger", "2") for v in arms.values() if v[0] == "challenger")
    finally:
        registry.client(world).delete_registered_model_alias(registry.BUNDLE, "challenger")


# --- lifecycle ----------------------------------------------------------------------------


def test_hot_reload_under_concurrent_requests(world: Settings):
    user, _ = known_user(world)

    async def go():
        async with Service(world, config()) as s:
            assert s.engine.bundles.get("champion").version == "1"
            statuses, versions = [], []
            stop = asyncio.Event()

            async def load():
                while not stop.is_set():
                    started = time.perf_counter()
                    r = await s.client.post("/recommend", json={"user_id": user, "k": 5})
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.append((started, r.json()["bundle"]["bundle"]))

            workers = [asyncio.create_task(load()) for _ in range(4)]
            await asyncio.sleep(0.3)
            registry.promote(world, "2", "champion")
            outcome = await asyncio.to_thread(s.engine.bundles.check)
            swapped = time.perf_counter()
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*workers)
            return outcome, statuses, versions, swapped

    try:
        outcome, statuses, versions, swapped = run(go())
    finally:
        registry.promote(world, "1", "champion")
    assert outcome["champion"] == "loaded 2"
    assert statuses and set(statuses) == {200}
    assert {v for t, v in versions if t < swapped} >= {"1"}
    assert {v for t, v in versions if t > swapped} == {"2"}  # once swapped, never back


def test_a_champion_serving_another_day_takes_the_newer_item_table(world: Settings):
    """No new bundle, a newer item feature table: the check swaps it in (trending list, click
    posteriors, catalog weights of the day), as a fresh load and the served OPE's replay see."""
    from pipelines.features.tables import table_dir

    root = table_dir(world, "item")
    dates = schema.partition_dates(root)
    newer = dates[-1] + dt.timedelta(days=1)
    frame = pd.read_parquet(root / f"date={dates[-1]}")
    frame["item_trending"] = np.arange(len(frame), dtype=np.float64)  # a new trending order

    async def go():
        async with Service(world, config()) as s:
            before = s.engine.bundles.get("champion")
            same = await asyncio.to_thread(s.engine.bundles.check)
            schema.write_partition_atomic(frame, root, newer)
            swapped = await asyncio.to_thread(s.engine.bundles.check)
            again = await asyncio.to_thread(s.engine.bundles.check)
            return before, same, swapped, again, s.engine.bundles.get("champion")

    try:
        before, same, swapped, again, after = run(go())
    finally:
        shutil.rmtree(root / f"date={newer}")
    assert same["champion"] == "unchanged"
    assert before.item_table.date == dates[-1].isoformat()
    assert swapped["champion"] == f"unchanged, item table {newer}"
    assert again["champion"] == "unchanged"
    assert after.version == before.version and after.item_table.date == newer.isoformat()
    rows = after.item_table.rows(frame["item_id"].astype(str).tolist())
    assert np.array_equal(after.item_table.trending[rows], frame["item_trending"].to_numpy())
    assert not np.array_equal(after.item_table.order, before.item_table.order)


def test_corrupt_bundle_is_rejected_and_the_old_keeps_serving(world: Settings):
    user, _ = known_user(world)
    index_file = Path(registry.load_bundle(world, "2")["paths"]["index"]) / "index.faiss"
    original = index_file.read_bytes()

    async def go():
        async with Service(world, config(admin_token=TOKEN)) as s:
            index_file.write_bytes(original[: len(original) // 2])
            registry.promote(world, "2", "champion")
            r = await s.client.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
            after = await s.client.post("/recommend", json={"user_id": user, "k": 4})
            ready = await s.client.get("/health/ready")
            metrics = (await s.client.get("/metrics")).text
            return r.json(), after, ready, metrics

    try:
        outcome, after, ready, metrics = run(go())
    finally:
        index_file.write_bytes(original)
        registry.promote(world, "1", "champion")
    assert outcome["outcome"]["champion"].startswith("rejected 2")
    assert outcome["rejected"]["champion"] == 1
    assert after.status_code == 200 and after.json()["bundle"]["bundle"] == "1"
    assert ready.status_code == 200
    assert 'recloop_rejected_reloads_total{arm="champion"} 1' in metrics
    assert 'recloop_bundle_info{arm="champion",version="1"} 1' in metrics


def test_health_metrics_and_not_ready_without_a_bundle(world: Settings):
    async def go():
        async with Service(world, config(new_users="trending"), load=False) as s:
            out = [await s.client.get("/health/live"), await s.client.get("/health/ready"),
                   await s.client.post("/recommend", json={"user_id": "u1"})]  # fmt: skip
            await asyncio.to_thread(s.engine.bundles.check)
            out += [await s.client.get("/health/ready")]
            await s.client.post("/recommend", json={"user_id": "u1"})
            out += [await s.client.get("/metrics")]
            return out

    live, not_ready, unavailable, ready, metrics = run(go())
    assert live.status_code == 200
    assert not_ready.status_code == 503 and unavailable.status_code == 503
    assert ready.status_code == 200 and ready.json()["ready"] is True
    text = metrics.text
    for stage in ("route", "retrieve", "hydrate", "rank", "rerank", "total"):
        assert f'recloop_stage_seconds_count{{stage="{stage}"}} 1' in text
    assert 'recloop_requests_total{arm="champion",status="ok"} 1' in text
    assert 'recloop_fallbacks_total{kind="cold_start"} 1' in text  # new_users="trending"


def test_admin_endpoints_need_the_token_and_are_off_without_one(world: Settings):
    async def go():
        out = []
        async with Service(world, config()) as s:
            out.append(await s.client.post("/admin/reload"))
        async with Service(world, config(admin_token=TOKEN)) as s:
            out.append(await s.client.post("/admin/reload"))
            out.append(await s.client.post("/admin/reload", headers={"authorization": "Bearer x"}))
            auth = {"authorization": f"Bearer {TOKEN}"}
            out.append(await s.client.post("/admin/experiment", json={"challenger_share": 0.4},
                                           headers=auth))  # fmt: skip
            out.append(await s.client.post("/admin/experiment", json={"challenger_share": 7},
                                           headers=auth))  # fmt: skip
            out.append(s.engine.config.challenger_share)
        return out

    off, no_token, wrong, ok, invalid, share = run(go())
    assert off.status_code == 404 and "RECLOOP_ADMIN_TOKEN" in off.json()["detail"]
    assert no_token.status_code == 401 and wrong.status_code == 401
    assert ok.status_code == 200 and ok.json()["challenger_share"] == 0.4
    assert invalid.status_code == 422 and share == 0.4
    with pytest.raises(ValueError, match="16 characters"):
        ServingConfig.from_env({"RECLOOP_ADMIN_TOKEN": "short"})
    assert ServingConfig.from_env({}).admin_enabled is False
    assert ServingConfig.from_env({}).host == "127.0.0.1"


# --- degradation --------------------------------------------------------------------------


class BrokenRanker:
    feature_service = "ranker_v1"
    feature_columns: list[str] = []

    def predict_proba(self, frame):
        raise RuntimeError("ranker exploded")


class BrokenIndex:
    n_items, dim = 10, 64

    def search(self, queries, k):
        raise RuntimeError("faiss exploded")


def test_ranker_and_index_failures_fall_back_flagged(world: Settings):
    """Unit-level fakes stand in for a failing ranker / index (not for Redis or the registry)."""
    from serving.bundle import load

    user, seen = known_user(world)

    async def go():
        async with Service(world, config(explore_rate=0.0, category_cap=100), load=False) as s:
            b = load(world, "1")
            s.engine.bundles.arms["champion"] = b
            good = await s.client.post("/recommend", json={"user_id": user, "k": 5})
            b.ranker = BrokenRanker()
            no_rank = await s.client.post("/recommend", json={"user_id": user, "k": 5})
            b.index = BrokenIndex()
            no_index = await s.client.post("/recommend", json={"user_id": user, "k": 5})
            return good, no_rank, no_index

    good, no_rank, no_index = run(go())
    assert good.json()["fallbacks"] == []
    assert no_rank.status_code == 200 and no_rank.json()["fallbacks"] == ["rank"]
    assert no_rank.json()["degraded"] is True
    scores = [x["score"] for x in no_rank.json()["items"]]
    assert scores == sorted(scores, reverse=True)  # the retrieval order (cosine scores)
    assert max(scores) <= 1.0 + 0.05 + 1e-6
    assert no_index.status_code == 200 and "retrieve" in no_index.json()["fallbacks"]
    assert not {x["item_id"] for x in no_index.json()["items"]} & seen


def test_redis_stopped_mid_run_gives_degraded_answers_within_the_deadline(
    world: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from pipelines.features.store import materialize_date

    own = RedisServer(tmp_path)
    own.start()
    try:
        monkeypatch.setenv("RECLOOP_REDIS_URL", own.url)
        s2 = Settings.from_env()
        materialize_date(s2, DAYS[-1])
        user, _ = known_user(s2)
        cfg = config(hydrate_deadline_ms=150, redis_cooldown_s=0.3)

        async def go():
            async with Service(s2, cfg) as s:
                ask = lambda: s.client.post("/recommend", json={"user_id": user, "k": 5})  # noqa: E731
                healthy = await ask()
                own.proc.send_signal(signal.SIGSTOP)  # Redis hangs: reads time out
                t0 = time.perf_counter()
                slow = await ask()
                slow_s = time.perf_counter() - t0
                breaker = await ask()  # within the cooldown: Redis is not asked
                own.proc.send_signal(signal.SIGCONT)
                own.stop()  # Redis gone: connections refused
                await asyncio.sleep(0.35)
                down = await ask()
                ready = await s.client.get("/health/ready")
                return healthy, slow, slow_s, breaker, down, ready, s.engine.breaker.failures

        healthy, slow, slow_s, breaker, down, ready, failures = run(go())
    finally:
        if own.proc is not None:
            own.proc.send_signal(signal.SIGCONT)
        own.stop()
    assert healthy.json()["degraded"] is False
    for r in (slow, breaker, down):
        assert r.status_code == 200
        body = r.json()
        assert body["degraded"] is True and "redis" in body["fallbacks"]
        assert len(body["items"]) == 5
    assert "exceeded" in slow.json()["error"] and "breaker" in breaker.json()["error"]
    assert "unreachable" in down.json()["error"] or "refused" in down.json()["error"].lower()
    # the hung read was abandoned at the stage deadline, not at the 1 s socket timeout
    assert slow.json()["timings_ms"]["hydrate"] < 900 and slow_s < 0.9
    assert failures == 2 and ready.status_code == 200


# --- the real server ----------------------------------------------------------------------


def test_recloop_serve_over_real_uvicorn(world: Settings):
    port = free_port()
    env = {**os.environ, **world.as_env(), "RECLOOP_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--reload-s", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, "server did not get ready"
            try:
                return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 90, "the server's /health/ready", interval_s=0.3)
        user, _ = known_user(world)
        r = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 4}, timeout=10)
        assert r.status_code == 200 and len(r.json()["items"]) == 4
        bad = httpx.post(f"{url}/recommend", content=b"{", timeout=10)
        assert bad.status_code == 400
        admin = httpx.post(f"{url}/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
        assert admin.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out = proc.communicate(timeout=20)[0].decode()
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0].decode()
    assert proc.returncode == 0, out[-2000:]
    assert f"127.0.0.1:{port}" in out  # bound to loopback


def test_fast_hydrate_and_rank_equal_the_feature_store_and_ranker_paths(world: Settings):
    """serving's array read + batch scoring = online_features_fast + Ranker.predict_proba."""
    from pipelines.features.online import online_features_fast
    from serving.bundle import load
    from serving.hydrate import read_features
    from serving.rank import score_candidates

    b = load(world, "1")
    user = b.users.ids[0]
    ids = [str(i) for i in b.item_table.ids[:60]] + ["never-seen-item"]
    mine = read_features(world, "ranker_v1", user, ids)
    ref = online_features_fast(world, user, ids, service="ranker_v1")
    assert mine.missing_items == ref.n_missing_items == 1
    for name in ref.items.columns:
        if name in mine.items:
            assert list(mine.items[name]) == list(ref.items[name]), name
    from pipelines.ranking.data import SERVING_POSITION, add_ranker_columns

    assert {k: mine.user[k] for k in ref.user} == ref.user
    assert mine.user["slot"] == SERVING_POSITION  # the ranker's derived columns, as when scored
    frame = add_ranker_columns(ref.items.assign(**ref.user, item_id=ids), SERVING_POSITION)
    np.testing.assert_allclose(
        score_candidates(b, mine), b.ranker.predict_proba(frame), rtol=0, atol=1e-7
    )


def test_a_retriever_trained_by_train_extra_serves_as_a_candidate_source(
    world: Settings, monkeypatch: pytest.MonkeyPatch
):
    """``RECLOOP_TRAIN_EXTRA=bpr``: the DAG's ``train_extra`` trains BPR through the bundle's
    day, the bundle loads it as a source, and a ``bpr`` quota puts its items among the
    candidates (sourced ``bpr``); an unknown name fails naming the setting."""
    from pipelines.orchestration import tasks
    from serving import retrieve
    from serving.bundle import load
    from serving.engine import build_engine

    user, _ = known_user(world)
    assert "bpr" not in load(world, "champion").model_sources
    monkeypatch.setenv("RECLOOP_TRAIN_EXTRA", "nope")
    with pytest.raises(ValueError, match="RECLOOP_TRAIN_EXTRA"):
        tasks.train_extra(DAYS[0])
    monkeypatch.setenv("RECLOOP_TRAIN_EXTRA", "bpr")
    assert set(tasks.train_extra(DAYS[0])) == {"bpr"}
    bundle = load(world, "champion")
    assert set(bundle.model_sources) == {"bpr"} and bundle.model_sources["bpr"].knows(user)
    engine = build_engine(world, config(source_quotas=(("two_tower", 10), ("bpr", 10))))
    try:
        found = retrieve.candidates(engine, bundle, user, (), (), lambda: 1000.0)
    finally:
        engine.hydrate_pool.shutdown(wait=False)
    assert found.sources.count("bpr") >= 5 and not found.cold
    offer = bundle.model_sources["bpr"].offer(user, 10, set())
    assert set(offer.ids) & {i for i, s in zip(found.ids, found.sources, strict=True) if s == "bpr"}
