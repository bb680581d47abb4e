"""Users outside the two-tower's vocabulary: encoded by the user tower from their online features.

A module-scoped workspace (1 simulated tiny day through the daily task functions, so bundle 1 is
registered and its features are materialized) with its own real ``redis-server``. The tiny
world's two-tower knows only the users with positives on day 1; most users of
``data/users.parquet`` have a ``user_features`` row in Redis but no trained vector.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from pipelines.core.settings import Settings
from pipelines.release import bundle_ope
from serving.app import create_app
from serving.bundle import LoadedBundle, UserTower, load
from serving.config import ServingConfig
from serving.hydrate import read_user_features
from serving.rerank import tower_blended
from tests.helpers import free_port, tiny_served_workspace

# integration: the module's world is a tiny trained workspace on a redis-server of its own
pytestmark = pytest.mark.integration
DAY = "2026-01-01"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """``(settings, bundle 1)`` of a one-day tiny workspace on its own redis-server."""
    with tiny_served_workspace(tmp_path_factory.mktemp("user-tower"), (DAY,)) as (settings, _):
        yield settings, load(settings, "1")


def config(**kw) -> ServingConfig:
    """No exploration, no category caps, no fresh boost: the slate is the score order."""
    base = {"reload_interval_s": 0, "seed": 7, "explore_rate": 0.0, "log_flush_s": 3600,
            "category_cap": 100, "fresh_boost": 0.0, "challenger_share": 0.0,
            "new_users": "user_tower"}  # fmt: skip
    return ServingConfig(**{**base, **kw})


def ask(settings: Settings, bundle: LoadedBundle, cfg: ServingConfig, users: list[str], k: int):
    """POST /recommend for each user (k items) with ``bundle`` as champion; the JSON bodies."""

    async def go():
        app = create_app(settings, cfg, load=False)
        app.state.engine.bundles.arms["champion"] = bundle
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
                out = []
                for u in users:
                    r = await client.post("/recommend", json={"user_id": u, "k": k})
                    assert r.status_code == 200, r.text
                    out.append(r.json())
                return out

    return asyncio.run(go())


def featured_users(settings: Settings, bundle: LoadedBundle) -> pd.DataFrame:
    """Users of ``users.parquet`` outside the bundle's vocabulary, with their attributes."""
    users = pd.read_parquet(settings.data_dir / "users.parquet")
    return users[~users["user_id"].isin(set(bundle.users.ids))].reset_index(drop=True)


def tower_vector(settings: Settings, bundle: LoadedBundle, user_id: str) -> np.ndarray:
    """The tower's vector ``(1, D)`` of ``user_id``'s attributes in ``users.parquet``."""
    attrs = pd.read_parquet(settings.data_dir / "users.parquet")
    frame = bundle_ope.tower_user_frame(attrs, bundle.two_tower.user_feature_columns())
    return bundle.two_tower.encode_user_features(frame.loc[[user_id]].reset_index(drop=True))


def retrieval_top(bundle: LoadedBundle, vec: np.ndarray, k: int) -> list[str]:
    ids, _ = bundle.index.search(np.asarray(vec, np.float32), k)
    return [str(i) for i in ids[0]]


# --- the bundle's user tower ----------------------------------------------------------------


def test_bundle_user_tower_matches_trained_vectors_and_caches(world):
    settings, bundle = world
    tower = bundle.user_tower
    assert tower is not None and tower.online == ["user_age", "user_gender", "user_country"]
    assert tower.encoded > 0  # filled at load from the newest user feature table
    encoded = tower.encoded
    # a vocabulary user's online features give exactly its trained vector, from the cache
    row = 3
    user = bundle.users.ids[row]
    values = read_user_features(settings, "ranker_v1", user)
    assert values is not None
    np.testing.assert_allclose(tower.vectors([values])[0], bundle.user_vecs[row], atol=1e-6)
    assert tower.encoded == encoded
    # an attribute tuple never seen is encoded once, then served from the cache
    odd = {"user_age": 97, "user_gender": "F", "user_country": "nowhere"}
    first = tower.vectors([odd, odd])
    assert tower.encoded == encoded + 1 and np.isfinite(first).all()
    np.testing.assert_array_equal(tower.vectors([odd]), first[:1])
    assert tower.encoded == encoded + 1


def test_user_outside_vocabulary_gets_tower_items_not_cold_start(world):
    settings, bundle = world
    user = str(featured_users(settings, bundle)["user_id"].iloc[0])
    assert bundle.user_row(user) < 0 and read_user_features(settings, "ranker_v1", user)
    # the ranker on: the full personalised path, flagged user_tower, not degraded
    [ranked] = ask(settings, bundle, config(), [user], 8)
    assert ranked["fallbacks"] == ["user_tower"] and ranked["cold_start"] is False
    assert ranked["degraded"] is False and ranked["error"] is None
    assert len({x["item_id"] for x in ranked["items"]}) == 8
    # the ranker off, the two-tower source alone: the slate is the FAISS top-k of the tower vector
    plain = _without_ranker(bundle)
    tower_only = config(candidates=20, k_max=10, source_quotas=(("two_tower", 20),))
    [body] = ask(settings, plain, tower_only, [user], 6)
    expected = retrieval_top(bundle, tower_vector(settings, bundle, user), 6)
    assert [x["item_id"] for x in body["items"]] == expected
    # remembered for the bundle's lifetime: the next request reads no Redis for the vector
    np.testing.assert_allclose(
        bundle.user_tower.cached(user), tower_vector(settings, bundle, user), atol=1e-6
    )
    trending = [str(bundle.item_table.ids[r]) for r in bundle.item_table.order[:6]]
    assert expected != trending  # the check could fail: this is not the cold-start answer
    # new_users="trending" keeps such a user on the cold-start list
    [default] = ask(settings, bundle, config(new_users="trending"), [user], 8)
    assert default["fallbacks"] == ["cold_start"] and default["cold_start"] is True
    # "auto" (the default) follows the bundle's stage-gate choice, the tower when it made none
    # (the gate judged this tiny world's new users by the truth: either choice is the data's)
    assert ServingConfig().new_users == "auto" and bundle.new_users in ("user_tower", "trending")
    [auto] = ask(settings, _with_new_users(bundle, None), config(new_users="auto"), [user], 8)
    assert auto["fallbacks"] == ["user_tower"]
    chose_trending = _with_new_users(bundle, "trending")
    [chosen] = ask(settings, chose_trending, config(new_users="auto"), [user], 8)
    assert chosen["fallbacks"] == ["cold_start"] and chosen["cold_start"] is True
    # an operator's explicit setting wins over the bundle's choice
    [forced] = ask(settings, chose_trending, config(new_users="user_tower"), [user], 8)
    assert forced["fallbacks"] == ["user_tower"]


def test_the_retrieval_weight_tempers_the_rankers_order(world):
    """Weight 0: the ranker's order; a large weight: the retrieval order (the slate without the
    ranker); ``auto`` follows the bundle's stage-gate choice, an explicit weight wins."""
    import dataclasses

    settings, bundle = world
    users = [str(u) for u in bundle.users.ids[:5]]

    def slates(b: LoadedBundle, cfg: ServingConfig) -> list[list[str]]:
        return [[x["item_id"] for x in r["items"]] for r in ask(settings, b, cfg, users, 8)]

    ranker_order = slates(bundle, config(retrieval_weight=0.0))
    retrieval_order = slates(_without_ranker(bundle), config())
    assert ranker_order != retrieval_order  # the check could fail: the ranker reorders
    assert slates(bundle, config(retrieval_weight=50.0)) == retrieval_order
    chose = dataclasses.replace(bundle, retrieval_weight=50.0)
    assert slates(chose, config(retrieval_weight=None)) == retrieval_order
    assert slates(chose, config(retrieval_weight=0.0)) == ranker_order
    assert ServingConfig().retrieval_weight is None
    assert (
        ServingConfig.from_env({"RECLOOP_SERVE_RETRIEVAL_WEIGHT": "auto"}).retrieval_weight is None
    )
    assert ServingConfig.from_env({"RECLOOP_SERVE_RETRIEVAL_WEIGHT": "0.3"}).retrieval_weight == 0.3
    with pytest.raises(ValueError, match="retrieval_weight"):
        ServingConfig(retrieval_weight=-1.0)


def test_the_tower_weight_blends_the_rankers_order_with_the_user_towers_scores(world):
    settings, bundle = world
    users = [str(u) for u in bundle.users.ids[:5]]
    plain = config(retrieval_weight=0.0, tower_weight=0.0, include_candidates=True)
    ranker = ask(settings, bundle, plain, users, 8)
    strong = ask(settings, bundle, plain.with_(tower_weight=50.0), users, 8)
    for u, r, s in zip(users, ranker, strong, strict=True):
        assert r["candidates"]["ids"] == s["candidates"]["ids"]  # the same candidates
        ids = s["candidates"]["ids"]
        features = read_user_features(settings, "ranker_v1", u)
        tower = bundle.tower_scores(features, ids)
        assert tower is not None and np.isfinite(tower).all()
        # the exploit score is the ranker's probability times exp(w z), and the slate its top 8;
        # at w = 50 the tower's order decides all but the tower's near-ties
        blended = tower_blended(np.asarray(r["candidates"]["scores"]), tower, 50.0)
        np.testing.assert_allclose(s["candidates"]["scores"], blended, rtol=1e-9)
        want = [ids[j] for j in np.argsort(-blended, kind="stable")[:8]]
        assert [x["item_id"] for x in s["items"]] == want
        by_tower = {ids[j] for j in np.argsort(-tower, kind="stable")[:8]}
        assert len(by_tower & set(want)) >= 6, (want, by_tower)
    slates = [[x["item_id"] for x in r["items"]] for r in ranker]
    assert slates != [[x["item_id"] for x in r["items"]] for r in strong]  # it could fail
    assert ServingConfig().tower_weight == 0.0  # off unless the operator sets it
    assert ServingConfig.from_env({"RECLOOP_SERVE_TOWER_WEIGHT": "0.2"}).tower_weight == 0.2
    with pytest.raises(ValueError, match="tower_weight"):
        ServingConfig(tower_weight=-0.5)
    assert bundle.tower_scores(None, users) is None  # no features: the ranker's order


def _with_new_users(bundle: LoadedBundle, policy: str | None) -> LoadedBundle:
    import dataclasses

    return dataclasses.replace(bundle, new_users=policy)


def _without_ranker(bundle: LoadedBundle) -> LoadedBundle:
    import dataclasses

    return dataclasses.replace(bundle, ranker=None)


def test_different_demographics_can_get_different_slates(world):
    settings, bundle = world
    users = featured_users(settings, bundle).drop_duplicates(["age", "gender", "country"])
    tops = {u: tuple(retrieval_top(bundle, tower_vector(settings, bundle, u), 5))
            for u in users["user_id"].astype(str)[:30]}  # fmt: skip
    a = next(iter(tops))
    b = next((u for u in tops if tops[u] != tops[a]), None)
    assert b is not None, "the tower gives every demographic the same top-5"
    plain = _without_ranker(bundle)
    tower_only = config(candidates=20, k_max=10, source_quotas=(("two_tower", 20),))
    bodies = ask(settings, plain, tower_only, [a, b], 5)
    slates = [tuple(x["item_id"] for x in body["items"]) for body in bodies]
    assert [body["fallbacks"] for body in bodies] == [["user_tower"], ["user_tower"]]
    assert slates == [tops[a], tops[b]] and slates[0] != slates[1]


def test_user_without_features_gets_trending_with_cold_start(world):
    settings, bundle = world
    assert read_user_features(settings, "ranker_v1", "brand-new-user") is None
    [body] = ask(settings, bundle, config(), ["brand-new-user"], 5)
    assert body["fallbacks"] == ["cold_start"] and body["cold_start"] is True
    assert body["degraded"] is False
    trending = [str(bundle.item_table.ids[r]) for r in bundle.item_table.order[:5]]
    assert [x["item_id"] for x in body["items"]] == trending


def test_redis_down_on_the_user_read_gives_flagged_cold_start(world, monkeypatch):
    settings, bundle = world
    user = str(featured_users(settings, bundle)["user_id"].iloc[-1])  # not asked for before
    assert bundle.user_tower.cached(user) is None
    monkeypatch.setenv("RECLOOP_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nobody there
    down = Settings.from_env()
    [body] = ask(down, bundle, config(), [user], 5)
    assert body["fallbacks"] == ["redis", "cold_start"] and body["cold_start"] is True
    assert body["degraded"] is True and len(body["items"]) == 5
    assert "unreachable" in body["error"] or "refused" in body["error"].lower()


def test_bundle_whose_tower_reads_user_ids_keeps_cold_start(world):
    """An older bundle (user id embeddings): it cannot encode a new user, so trending as before."""
    import scipy.sparse as sp

    from models.two_tower import TwoTower

    settings, bundle = world
    rng = np.random.default_rng(0)
    x = sp.random(30, 20, density=0.2, random_state=0, format="csr", dtype=np.float32)
    x.data[:] = 1.0
    feats = pd.DataFrame({"user_age": rng.integers(18, 70, 30)})
    old = TwoTower(dim=8, epochs=1, batch_size=16, val_fraction=0.0).fit(x, user_features=feats)
    assert old.user_feature_columns() is None and UserTower.for_model(old) is None
    with pytest.raises(ValueError, match="reads user ids or history"):
        old.encode_user_features(feats.iloc[:2])
    user = str(featured_users(settings, bundle)["user_id"].iloc[0])
    import dataclasses

    legacy = dataclasses.replace(bundle, user_tower=None)
    [body] = ask(settings, legacy, config(), [user], 5)
    assert body["fallbacks"] == ["cold_start"] and body["cold_start"] is True


# --- off-policy evaluation --------------------------------------------------------------------


def test_ope_scorer_gives_unknown_users_their_tower_vector(world):
    settings, bundle = world
    folder = Path(bundle.paths["two_tower"])
    attrs = bundle_ope.user_attributes(settings)
    score, items = bundle_ope.two_tower_scorer(folder, attrs)
    plain_score, _ = bundle_ope.two_tower_scorer(folder)
    user = str(featured_users(settings, bundle)["user_id"].iloc[0])
    known = bundle.users.ids[0]
    users = np.array([known, user, "stranger"], dtype=object)
    s = score(users, items[:7])
    ivec = bundle.two_tower.item_embeddings()[:7]
    mean_user = bundle.user_vecs.mean(axis=0)
    # the unknown user with attributes: the tower vector, the same the service reads from Redis
    served = bundle.user_tower.vectors([read_user_features(settings, "ranker_v1", user)])
    np.testing.assert_allclose(s[1], served[0] @ ivec.T, rtol=1e-5, atol=1e-6)
    assert not np.allclose(s[1], mean_user @ ivec.T, atol=1e-4)
    # a known user is unchanged, a user with no attributes gets the mean vector
    np.testing.assert_allclose(s[0], bundle.user_vecs[0] @ ivec.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s[2], mean_user @ ivec.T, rtol=1e-5, atol=1e-6)
    # without attributes every unknown user gets the mean vector (as before)
    np.testing.assert_allclose(plain_score(users, items[:7])[1], mean_user @ ivec.T, rtol=1e-5)
