"""Candidate sources and their merge (serving.sources): quotas, de-duplication, exclusions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipelines.core.vocab import Vocab
from serving import sources
from serving.sources import (
    CATALOG_ROUNDS,
    CovisitSource,
    MFSource,
    SourceList,
    catalog_cumulative,
    catalog_sample,
    merge,
    top_excluding,
)


def _list(name: str, ids: list[str]) -> SourceList:
    return SourceList(name, ids, np.linspace(1.0, 0.1, len(ids)))


def test_merge_interleaves_by_quota_and_keeps_first_source_of_a_duplicate():
    a = _list("two_tower", ["a1", "a2", "a3", "a4"])
    b = _list("trending", ["b1", "a2", "b3"])
    m = merge([a, b], {"two_tower": 4, "trending": 2}, n=10)
    # keys: a1 .25, a2 .5, b1 .5, a3 .75, a4 1, a2(b) 1 (dropped: taken)
    assert m.ids == ["a1", "a2", "b1", "a3", "a4"]
    assert m.sources == ["two_tower", "two_tower", "trending", "two_tower", "two_tower"]
    assert np.all(np.diff(m.scores) < 0) and m.scores[0] == 1.0
    assert m.source_scores[2] == b.scores[0]


def test_merge_takes_at_most_the_quota_of_a_source_and_n_in_all():
    a = _list("mf", [f"m{j}" for j in range(10)])
    b = _list("covisit", [f"c{j}" for j in range(10)])
    m = merge([a, b], {"mf": 3, "covisit": 5}, n=6)
    assert len(m.ids) == 6
    assert sum(s == "mf" for s in m.sources) <= 3
    assert merge([a, b], {"mf": 3, "covisit": 5}, n=100).sources.count("covisit") == 5


def test_top_excluding_drops_and_orders():
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    ids = np.array(["i0", "i1", "i2", "i3"])
    got, s = top_excluding(scores, ids, 2, drop={"i1"})
    assert got == ["i3", "i2"]
    np.testing.assert_allclose(s, [0.7, 0.5])


def test_top_excluding_equals_the_one_by_one_rule_on_random_scores():
    """Vectorized: the same ids (Python str), scores and order as filtering the sorted top one
    item at a time, with ties, float32 scores, drops inside and outside the top and long ids."""
    rng = np.random.default_rng(5)
    for t in range(200):
        size = int(rng.integers(1, 300))
        ids = np.array([f"item-{j}" * (1 + j % 3) for j in range(size)])
        scores = np.round(rng.random(size), 2).astype(np.float32 if t % 2 else np.float64)
        drop = {str(i) for i in rng.choice(ids, int(rng.integers(0, 20)))} | {"not-an-item"}
        n = int(rng.integers(0, size + 5))
        got, s = top_excluding(scores, ids, n, drop)
        m = min(n + len(drop), size)
        top = np.argpartition(-scores, m - 1)[:m] if 0 < m < size else np.arange(m)
        top = top[np.argsort(-scores[top], kind="stable")]
        want = [(str(ids[j]), float(scores[j])) for j in top if str(ids[j]) not in drop][:n]
        assert got == [i for i, _ in want] and all(type(i) is str for i in got)
        assert s.dtype == np.float64 and s.tolist() == [x for _, x in want]


def test_mf_source_scores_by_inner_product_and_knows_only_its_users():
    users, items = Vocab(["u0", "u1"]), Vocab(["i0", "i1", "i2"])

    class Model:
        def user_embeddings(self):
            return np.array([[1.0, 0.0], [0.0, 1.0]])

        def item_embeddings(self):
            return np.array([[0.2, 0.9], [0.8, 0.1], [0.5, 0.5]])

    src = MFSource.from_model(Model(), users, items)
    assert src.offer("u0", 2, set()).ids == ["i1", "i2"]
    assert src.offer("u1", 3, {"i0"}).ids == ["i2", "i1"]
    assert src.offer("nobody", 3, set()).ids == []


def test_model_source_offers_any_retrievers_scores_under_its_name():
    class Model:
        def score_all(self, users):
            return np.array([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])[users]

    src = sources.ModelSource("gru4rec", Model(), Vocab(["u0", "u1"]), np.array(["i0", "i1", "i2"]))
    offer = src.offer("u0", 2, set())
    assert offer.name == "gru4rec" and offer.ids == ["i1", "i2"]
    assert src.offer("u1", 3, {"i0"}).ids == ["i2", "i1"]
    assert src.offer("nobody", 3, set()).ids == [] and not src.knows("nobody")
    assert "gru4rec" in sources.SOURCES


def test_sequential_source_follows_the_online_sequence():
    """A sequential model source scores from its state after the user's recent items when
    given them (any user), from the user's training state otherwise (known users only)."""
    items = np.array(["i0", "i1", "i2"])

    class Seq:
        def encode(self, sequences):  # state = the last item's one-hot
            return np.eye(3)[[seq[-1] for seq in sequences]]

        def item_embeddings(self):  # item j follows item j - 1
            return np.roll(np.eye(3), -1, axis=1)

        def score_all(self, users):
            return np.array([[0.0, 0.0, 1.0]])[users]

    src = sources.ModelSource("gru4rec", Seq(), Vocab(["u0"]), items)
    assert src.offer("u0", 1, set()).ids == ["i2"]  # no sequence: the training state
    assert src.offer("u0", 1, set(), ["i2", "i0"]).ids == ["i1"]  # after i0 comes i1
    assert src.offer("new", 1, set(), ["zz", "i1"]).ids == ["i2"]  # unknown user, known items
    assert src.offer("new", 1, set()).ids == []
    bpr = sources.ModelSource("bpr", Seq(), Vocab(["u0"]), items)
    assert bpr.offer("u0", 1, set(), ["i0"]).ids == ["i2"]  # not sequential: ignores it


def test_covisit_offers_items_engaged_by_the_same_users_not_the_history():
    # u0 and u1 both took i0 and i1; u2 took i2 and i3
    seen = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=np.float32))
    src = CovisitSource.from_matrix(seen, np.array(["i0", "i1", "i2", "i3"]), k=2)
    offer = src.offer(np.array([0]), 5, set())
    assert offer.ids == ["i1"]
    assert src.offer(np.array([2]), 5, {"i3"}).ids == []
    assert src.offer(np.array([], dtype=np.int64), 5, set()).ids == []


def test_merge_of_one_list_with_its_quota_keeps_its_order():
    only = _list("trending", ["t0", "t1", "t2"])
    m = merge([only], {"trending": 500}, n=500)
    assert m.ids == ["t0", "t1", "t2"] and set(m.sources) == {"trending"}


def test_catalog_sample_is_a_function_of_the_key_favours_the_least_shown_and_drops():
    ids = np.array([f"i{j}" for j in range(200)])
    # i0..i99 shown a lot, i100.. never
    shown = catalog_cumulative(np.where(np.arange(200) < 100, 10_000.0, 0.0))
    a = catalog_sample(ids, shown, "u1|7", 20, drop={"i150"})
    assert a.name == "catalog" and len(a.ids) == 20 == len(set(a.ids))
    assert "i150" not in a.ids
    assert a.ids == catalog_sample(ids, shown, "u1|7", 20, drop={"i150"}).ids  # same context
    assert a.ids != catalog_sample(ids, shown, "u2|7", 20, drop={"i150"}).ids  # another user
    assert a.ids != catalog_sample(ids, shown, "u1|8", 20, drop={"i150"}).ids  # another bundle
    # weights 1 / (1 + impressions): the never-shown half is ~10^4 times likelier per item
    assert sum(int(i[1:]) >= 100 for i in a.ids) >= 19
    assert np.all(np.diff(a.scores) < 0)
    assert catalog_sample(ids, shown, "u1|7", 0, set()).ids == []


def _chi2(counts: np.ndarray, expected: np.ndarray) -> float:
    return float(np.sum((counts - expected) ** 2 / expected))


@pytest.mark.parametrize("rounds", [0, CATALOG_ROUNDS])  # 0: the exact `choice` path only
def test_catalog_sample_draws_in_sequence_in_proportion_to_the_weights(monkeypatch, rounds):
    monkeypatch.setattr(sources, "CATALOG_ROUNDS", rounds)
    shown = np.arange(20) * 3.0  # weights 1 / (1 + 3 j): 1 .. 1/58
    ids = np.array([f"i{j}" for j in range(20)])
    cum = catalog_cumulative(shown)
    keys = 4000
    firsts, seconds = np.zeros(20), np.zeros(20)
    for k in range(keys):
        got = catalog_sample(ids, cum, f"u{k}|3", 2, set()).ids
        firsts[int(got[0][1:])] += 1
        seconds[int(got[1][1:])] += 1
    p = (1.0 / (1.0 + shown)) / np.sum(1.0 / (1.0 + shown))
    # second draw among the others: P(b) = sum_{a != b} p_a p_b / (1 - p_a)
    p2 = p * (np.sum(p / (1 - p)) - p / (1 - p))
    # chi-square, 19 degrees of freedom: 0.999 quantile 43.8
    assert _chi2(firsts, keys * p) < 43.8
    assert _chi2(seconds, keys * p2) < 43.8


def test_catalog_sample_fills_n_close_to_the_catalog_and_with_heavy_drops(monkeypatch):
    ids = np.array([f"i{j}" for j in range(30)])
    cum = catalog_cumulative(np.arange(30) * 50.0)
    drop = {f"i{j}" for j in range(0, 30, 3)}  # 10 dropped, the likeliest among them
    for n, expect in ((20, 20), (19, 19), (25, 20)):  # at most the 20 not dropped
        got = catalog_sample(ids, cum, f"u{n}|1", n, drop).ids
        assert len(got) == expect == len(set(got)) and not set(got) & drop
    # concentrated weights: 5 items take almost all the mass, the rest is drawn exactly
    calls = []
    rest = sources._catalog_rest
    monkeypatch.setattr(sources, "_catalog_rest", lambda *a: calls.append(a[4]) or rest(*a))
    big = np.array([f"i{j}" for j in range(500)])
    heavy = catalog_cumulative(np.where(np.arange(500) < 5, 0.0, 1e6))
    got = catalog_sample(big, heavy, "u1|1", 100, {"i3"}).ids
    assert calls and len(got) == 100 == len(set(got)) and "i3" not in got
    assert sorted(got[:4]) == ["i0", "i1", "i2", "i4"]  # the heavy ones first


def test_item_table_precomputes_the_catalog_weights():
    from serving.bundle import ItemTable

    frame = pd.DataFrame({"item_id": ["a", "b", "c"], "item_impressions_28d": [0, 1, 3]})
    table = ItemTable.from_frame(frame, None)
    np.testing.assert_allclose(table.catalog_cum, np.cumsum([1, 0.5, 0.25]) / 1.75)
    assert table.catalog_cum[-1] == 1.0


def _merge_by_tuples(lists: list[SourceList], quotas: dict[str, int], n: int) -> list[tuple]:
    """The merge rule spelled out (sorted ``(key, source, rank)`` tuples, first place kept)."""
    keys = []
    for s, lst in enumerate(lists):
        q = max(int(quotas.get(lst.name, len(lst.ids))), 1)
        keys += [((r + 1) / q, s, r) for r in range(min(len(lst.ids), q))]
    out, taken = [], set()
    for _, s, r in sorted(keys):
        if lists[s].ids[r] not in taken:
            taken.add(lists[s].ids[r])
            out.append((lists[s].ids[r], lists[s].name, float(lists[s].scores[r])))
    return out[:n]


def test_merge_equals_the_rule_spelled_out_on_random_offers():
    rng = np.random.default_rng(7)
    for _ in range(300):
        lists, quotas = [], {}
        for name in ("two_tower", "mf", "covisit", "trending")[: rng.integers(1, 5)]:
            ids = list(
                dict.fromkeys(f"i{x}" for x in rng.integers(0, 30, size=rng.integers(0, 20)))
            )
            lists.append(SourceList(name, ids, rng.random(len(ids))))
            if rng.random() < 0.8:
                quotas[name] = int(rng.integers(1, 15))
        n = int(rng.integers(1, 40))
        m = merge(lists, quotas, n)
        assert list(
            zip(m.ids, m.sources, m.source_scores.tolist(), strict=True)
        ) == _merge_by_tuples(lists, quotas, n)


def test_search_drops_only_the_ids_it_names_even_longer_ones():
    """A dropped id longer than every indexed id is not truncated onto an indexed one."""
    import types

    from serving.retrieve import search

    class Index:
        n_items = 3

        def search(self, query, k):
            return np.array([["i1234", "i7", "i8"]]), np.array([[0.9, 0.8, 0.7]], np.float32)

    bundle = types.SimpleNamespace(index=Index())
    q = np.zeros((1, 4), np.float32)
    ids, scores = search(bundle, q, 3, {"i12345"})  # "i12345"[:5] == "i1234"
    assert ids == ["i1234", "i7", "i8"]
    assert search(bundle, q, 3, {"i7", "nope"})[0] == ["i1234", "i8"]
