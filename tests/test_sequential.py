"""GRU4Rec, SASRec and BERT4Rec (``models.sequential``) beyond the retriever contract (tests/test_models.py):
they learn what follows what, which no bag-of-items model can; the training data offers each
user's items in time order; all are selectable by name."""

from __future__ import annotations

import datetime as dt
import functools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from models.als import ALS
from models.base import CONFIG_FILE, load_model
from models.sequential import (
    BERT4Rec,
    GRU4Rec,
    SASRec,
    SequentialRetriever,
    last_tokens,
    training_windows,
)
from pipelines.cli import build_parser
from pipelines.core import layout, schema
from pipelines.core.settings import Settings
from pipelines.core.vocab import Vocab
from pipelines.retrieval import train
from pipelines.retrieval.data import item_impressions, load_training_data

N_ITEMS, N_USERS = 20, 120


def cyclic_sequences(seed: int = 0) -> tuple[sp.csr_matrix, tuple[np.ndarray, np.ndarray]]:
    """Users walk the items in a cycle (``i -> i + 1 mod 20``) from a random start, 5 to 9 steps:
    the next item is a function of the last one only. Returns the ``(U, I)`` matrix and the
    sequences ``(indptr, items)``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 10, N_USERS)
    starts = rng.integers(0, N_ITEMS, N_USERS)
    items = np.concatenate(
        [(s + np.arange(n)) % N_ITEMS for s, n in zip(starts, lengths, strict=True)]
    )
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    rows = np.repeat(np.arange(N_USERS), lengths)
    m = sp.csr_matrix((np.ones(len(items), np.float32), (rows, items)), (N_USERS, N_ITEMS))
    return m, (indptr, items)


SMALL = {"dim": 16, "max_len": 8, "epochs": 20, "batch_size": 32, "lr": 0.01, "dropout": 0.1}


#: Cloze trains on the masked ~20 % of the items only: more epochs for the same fit
EPOCHS = {BERT4Rec: 40}


@functools.cache
def fitted_on_cycles(cls: type[SequentialRetriever]) -> SequentialRetriever:
    """``cls`` with :data:`SMALL` fitted on :func:`cyclic_sequences` (shared by tests, read only)."""
    m, seqs = cyclic_sequences()
    return cls(**{**SMALL, "epochs": EPOCHS.get(cls, 20)}).fit(m, sequences=seqs, progress=False)


@pytest.mark.parametrize("cls", [GRU4Rec, SASRec, BERT4Rec])
def test_learns_the_next_item_where_a_bag_of_items_cannot(cls) -> None:
    m, seqs = cyclic_sequences()
    model = fitted_on_cycles(cls)
    users = np.arange(N_USERS)
    last = seqs[1][seqs[0][1:] - 1]
    top, _ = model.recommend(users, 1, exclude=m)
    hit = float((top[:, 0] == (last + 1) % N_ITEMS).mean())
    assert hit > 0.9, hit
    als = ALS(factors=8, iterations=10, alpha=5.0).fit(m)  # knows the arc, not its direction
    als_hit = float((als.recommend(users, 1, exclude=m)[0][:, 0] == (last + 1) % N_ITEMS).mean())
    assert hit > als_hit + 0.3, (hit, als_hit)
    # a fresh sequence is scored from its own last items, not a user's
    state = model.encode([[3, 4, 5], []])
    assert state.shape == (2, 16)
    assert int(np.argmax(state[0] @ model.item_embeddings().T)) == 6
    np.testing.assert_allclose(model.encode([seqs[1][: seqs[0][1]]])[0], model.user_embeddings()[0],
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_bert4rec_reads_a_masked_item_from_both_sides() -> None:
    """Cloze: a [MASK] in first place is read from the items after it (bidirectional attention;
    a causal model sees nothing there); training masks ~mask_prob of the real items, never a
    pad, at least one per window; inference appends [MASK] after the last max_len - 1 items."""
    _, seqs = cyclic_sequences()
    model = fitted_on_cycles(BERT4Rec)
    net, mask = model.net.eval(), model.net.mask_token
    starts = np.arange(N_ITEMS)
    tokens = np.zeros((N_ITEMS, SMALL["max_len"]), dtype=np.int64)  # [MASK], s + 1 .. s + 5
    tokens[:, -6] = mask
    tokens[:, -5:] = np.stack([(starts + k) % N_ITEMS + 1 for k in range(1, 6)], axis=1)
    with torch.no_grad():
        first = net(torch.from_numpy(tokens))[:, -6] @ net.item_vectors().T
    # chance (and a causal mask here) 0.05; seeds 0-1 give 0.65-0.7 (the first item is the
    # rarest masked one)
    assert (first.argmax(1).numpy() == starts).mean() > 0.4
    windows = torch.from_numpy(model._windows(*seqs))
    assert windows.shape[1] == SMALL["max_len"]
    with torch.no_grad():
        draws = [model._predictions(windows, torch.Generator().manual_seed(r)) for r in range(10)]
    targets = [len(target) for _, target in draws]
    real = int((windows > 0).sum())
    assert 0.2 * real < np.mean(targets) < 0.2 * real + len(windows)  # + one per empty window
    query = model._query(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]))
    assert query.tolist() == [[2, 3, 4, 5, 6, 7, 8, mask]]
    with pytest.raises(ValueError, match="mask_prob"):
        BERT4Rec(mask_prob=1.0)


def test_windows_and_histories() -> None:
    indptr, items = np.array([0, 3, 3, 4, 9]), np.array([5, 6, 7, 1, 0, 1, 2, 3, 4])
    w = training_windows(indptr, items, max_len=3)
    # user 0: one window; user 1 empty, user 2 a single item: none; user 3: 5 items, two windows
    np.testing.assert_array_equal(w, [[0, 6, 7, 8], [2, 3, 4, 5], [0, 0, 1, 2]])
    np.testing.assert_array_equal(
        last_tokens(indptr, items, 3), [[6, 7, 8], [0, 0, 0], [0, 0, 2], [3, 4, 5]]
    )
    with pytest.raises(ValueError, match="sequence of 2"):
        GRU4Rec(**SMALL).fit(sp.csr_matrix((2, 3)), sequences=(np.zeros(3, int), np.zeros(0, int)))


def test_training_data_has_time_ordered_sequences(tmp_path: Path) -> None:
    """Sequences follow the events' time across days (not item order), a click and its purchase
    of the same item are one step, and the user rows match the vocabulary."""
    s = Settings.from_env({"RECLOOP_HOME": str(tmp_path)})
    t0 = pd.Timestamp("2026-01-01 10:00", tz="UTC")
    rows = [  # (day offset, minutes, user, item, event)
        (0, 0, "ub", "i9", "click"), (0, 1, "ub", "i9", "purchase"), (0, 5, "ua", "i2", "click"),
        (0, 9, "ub", "i1", "click"), (1, 0, "ua", "i0", "click"), (1, 3, "ub", "i9", "click"),
        (1, 4, "ua", "i5", "impression"),
    ]  # fmt: skip
    for day in (0, 1):
        frame = pd.DataFrame(
            [
                {"event_id": f"e{d}{m}{u}", "ts": t0 + pd.Timedelta(days=d, minutes=m),
                 "user_id": u, "item_id": i, "event": e, "value": 1.0}
                for d, m, u, i, e in rows if d == day
            ]
        )  # fmt: skip
        date = dt.date(2026, 1, 1) + dt.timedelta(days=day)
        schema.write_partition_atomic(
            schema.conform(frame, schema.INTERACTIONS), s.validated_dir, date
        )
    data = load_training_data(s, "2026-01-02")
    indptr, items = data.sequences
    decoded = {
        data.users.ids[u]: [data.items.ids[i] for i in items[indptr[u] : indptr[u + 1]]]
        for u in range(len(data.users))
    }
    assert decoded == {"ua": ["i2", "i0"], "ub": ["i9", "i1", "i9"]}


@pytest.mark.parametrize("name", ["gru4rec", "sasrec", "bert4rec"])
def test_selectable_from_the_commands_and_the_builder(name, tmp_path, monkeypatch) -> None:
    parser = build_parser()
    for argv in (
        ["train", "--model", name, "--date", "2026-01-01"],
        ["recommend", "--model", name, "--out", "x.csv"],
    ):
        assert parser.parse_args(argv).model == name
    m, seqs = cyclic_sequences()
    monkeypatch.setitem(train.SEQUENTIAL_PARAMS, "epochs", 1)
    settings = Settings.from_env({"RECLOOP_HOME": str(tmp_path), "RECLOOP_SEED": "5",
                                  "RECLOOP_SEQUENTIAL_POPULARITY_WEIGHT": "2"})  # fmt: skip
    settings.ensure_dirs()
    ids = [f"i{i:02d}" for i in range(N_ITEMS)]  # the items' categories, as the simulator's
    pd.DataFrame({"item_id": ids[::-1], "category": [f"c{i % 3}" for i in range(N_ITEMS)][::-1]}
                 ).to_parquet(layout.attributes_path(settings, "items"))  # fmt: skip
    shown = [(d, i) for d in range(2) for i in range(N_ITEMS) for _ in range(i % 5)]
    for day in (0, 1):  # impressions on two days (and a click, and an unknown item's impression)
        rows = [("impression", ids[i]) for d, i in shown if d == day] + [
            ("click", ids[0]), ("impression", "i99")]  # fmt: skip
        frame = pd.DataFrame(
            [{"event_id": f"e{day}_{n}", "ts": pd.Timestamp("2026-01-01", tz="UTC")
              + pd.Timedelta(days=day, seconds=n), "user_id": "u000", "item_id": i, "event": e,
              "value": 1.0} for n, (e, i) in enumerate(rows)]
        )  # fmt: skip
        date = dt.date(2026, 1, 1) + dt.timedelta(days=day)
        schema.write_partition_atomic(
            schema.conform(frame, schema.INTERACTIONS), settings.validated_dir, date
        )
    data = SimpleNamespace(
        implicit=m, sequences=seqs, date=dt.date(2026, 1, 2), items=Vocab(ids), first=None,
        users=Vocab(f"u{u:03d}" for u in range(N_USERS)), recent=np.arange(N_ITEMS) % 4.0,
    )  # fmt: skip
    model = train.build_model(name, data, settings, seed=settings.seed)
    assert model.name == name and model.seed == 5 and model.n_items == N_ITEMS
    # the exposure correction: the daily weight over the training days' impressions per item
    assert model.exposure_weight == train.SEQUENTIAL_PARAMS["exposure_weight"] > 0
    np.testing.assert_array_equal(model.item_exposure.numpy(), 2 * (np.arange(N_ITEMS) % 5))
    data.first = dt.date(2026, 1, 2)  # a window of the last day: its impressions only
    np.testing.assert_array_equal(item_impressions(settings, data), np.arange(N_ITEMS) % 5)
    # the prior: the setting's weight over the last days' counts (data.recent)
    assert model.popularity_weight == 2.0
    np.testing.assert_array_equal(model.item_counts.numpy(), np.arange(N_ITEMS) % 4.0)
    assert model.group_sizes == (3,)
    np.testing.assert_array_equal(model.item_codes[:, 0].numpy(), np.arange(N_ITEMS) % 3)
    np.testing.assert_array_equal(
        model.histories[0, -3:].numpy(), seqs[1][seqs[0][1] - 3 : seqs[0][1]] + 1
    )


N_CATS, PER_CAT = 8, 10


def category_walks(seed: int = 0) -> tuple[sp.csr_matrix, tuple[np.ndarray, np.ndarray]]:
    """150 users of 2 to 4 clicks each over 80 items in 8 categories (item ``i`` in category
    ``i // 10``): each click's category is the previous one's successor (``c -> c + 1 mod 8``),
    the item uniform within it. Sparse at the item level (~6 next items seen per item), as the
    simulator's: the transition is there to learn only between categories."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 5, 150)
    starts = rng.integers(0, N_CATS, 150)
    cats = np.concatenate(
        [(c + np.arange(n)) % N_CATS for c, n in zip(starts, lengths, strict=True)]
    )
    items = cats * PER_CAT + rng.integers(0, PER_CAT, len(cats))
    rows = np.repeat(np.arange(150), lengths)
    m = sp.csr_matrix((np.ones(len(items), np.float32), (rows, items)), (150, N_CATS * PER_CAT))
    return m, (np.concatenate([[0], np.cumsum(lengths)]), items)


@pytest.mark.parametrize("cls", [GRU4Rec, SASRec, BERT4Rec])
def test_item_categories_carry_the_transition_between_categories(cls) -> None:
    """With each item's category embedded beside it (input and tied output), the items after a
    one-item sequence are the successor category's; from item co-occurrence alone they are
    less so (gru4rec 0.71, sasrec 0.53, bert4rec 0.22 of the top 10 on seed 0)."""
    m, seqs = category_walks()
    cats = np.arange(N_CATS * PER_CAT) // PER_CAT
    share = {}
    for groups in (None, cats[:, None]):
        model = cls(**SMALL).fit(m, sequences=seqs, progress=False, item_groups=groups)
        scores = model.encode([[i] for i in range(len(cats))]) @ model.item_embeddings().T
        top = np.argsort(-scores, axis=1)[:, :PER_CAT]
        share[groups is not None] = float((cats[top] == ((cats + 1) % N_CATS)[:, None]).mean())
    assert share[True] > 0.75 and share[True] > share[False] + 0.15, share  # seed 0: 0.83-0.98


def test_user_attributes_add_the_users_taste_to_the_state() -> None:
    """Users of group ``u % 2`` click only categories of that parity, in any order: the state of
    an empty sequence knows nothing (half of the top 20 of each parity); with the user's
    attribute vector added it points at the user's parity (seed 0: all of the top 20)."""
    rng = np.random.default_rng(0)
    group, lengths = np.arange(150) % 2, rng.integers(2, 5, 150)
    cats = np.concatenate(
        [2 * rng.integers(0, N_CATS // 2, n) + g for g, n in zip(group, lengths, strict=True)]
    )
    items = cats * PER_CAT + rng.integers(0, PER_CAT, len(cats))
    m = sp.csr_matrix((np.ones(len(items)), (np.repeat(np.arange(150), lengths), items)), (150, 80))
    seqs = (np.concatenate([[0], np.cumsum(lengths)]), items)
    model = GRU4Rec(**SMALL).fit(m, sequences=seqs, progress=False, user_groups=group[:, None])
    users = np.arange(20)
    for rows, lo, hi in ((None, 0.4, 0.6), (users, 0.9, 1.0)):
        top = np.argsort(-(model.encode([[]] * 20, users=rows) @ model.item_embeddings().T), 1)
        share = float((top[:, :20] // PER_CAT % 2 == group[users, None]).mean())
        assert lo <= share <= hi, (rows, share)
    np.testing.assert_allclose(
        model.encode([items[: lengths[0]]], users=[0])[0], model.user_embeddings()[0], atol=1e-5
    )


def test_item_categories_save_load_and_older_models_still_load(tmp_path: Path) -> None:
    m, seqs = category_walks()
    cats = np.arange(N_CATS * PER_CAT) // PER_CAT
    cats[:3] = -1  # unknown category: no attribute vector
    small = {**SMALL, "epochs": 2}
    group = np.arange(m.shape[0]) % 3
    model = SASRec(**small).fit(
        m, sequences=seqs, progress=False, item_groups=cats[:, None], user_groups=group[:, None]
    )
    assert model.config()["group_sizes"] == [N_CATS]
    assert model.config()["user_group_sizes"] == [3]
    loaded = load_model(model.save(tmp_path / "m"))
    assert loaded.config() == model.config()
    np.testing.assert_array_equal(loaded.item_codes.numpy(), cats[:, None])
    np.testing.assert_array_equal(loaded.user_codes.numpy(), group[:, None])
    users = np.arange(m.shape[0])
    np.testing.assert_array_equal(loaded.score_all(users), model.score_all(users))
    np.testing.assert_array_equal(
        loaded.encode([[5, 40]], users=[4]), model.encode([[5, 40]], users=[4])
    )
    # a model saved before item attributes existed: no config keys, no tensors for them
    old = GRU4Rec(**small).fit(m, sequences=seqs, progress=False)
    folder = old.save(tmp_path / "old")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    del cfg["group_sizes"], cfg["group_output"], cfg["user_group_sizes"]
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    assert not any("group" in k for k in torch.load(folder / "weights.pt", weights_only=True))
    again = load_model(folder)
    assert again.group_sizes == () and again.user_group_sizes == ()
    np.testing.assert_array_equal(again.score_all(users), old.score_all(users))
    with pytest.raises(ValueError, match="item_groups has 2 rows"):
        GRU4Rec(**small).fit(m, sequences=seqs, item_groups=np.zeros((2, 1), np.int64))


@pytest.mark.parametrize("cls", [GRU4Rec, BERT4Rec])
def test_popularity_prior_adds_weight_times_log_count_on_every_scoring_path(cls) -> None:
    """``popularity_weight`` w leaves training alone and adds exactly ``w * log(1 + positives of
    the item)`` to ``score_all`` / ``score`` and to serving's ``encode(s) @ item_embeddings().T``
    (user states and encodings gain a last 1, item embeddings the prior)."""
    from serving.sources import ModelSource

    m, seqs = cyclic_sequences()
    m = m.tolil()
    m[0, 3] = 0.0  # an explicit zero is no positive
    m = m.tocsr()
    small = {**SMALL, "epochs": 2}
    plain = cls(**small).fit(m, sequences=seqs, progress=False)
    model = cls(**small, popularity_weight=0.7).fit(m, sequences=seqs, progress=False)
    counts = np.asarray((m > 0).sum(axis=0)).ravel()
    prior = 0.7 * np.log1p(counts)
    assert np.ptp(prior) > 0.1  # the counts differ: the test can tell items apart
    np.testing.assert_array_equal(model.item_counts.numpy(), counts)
    users = np.arange(N_USERS)
    np.testing.assert_allclose(
        model.score_all(users), plain.score_all(users) + prior[None], rtol=1e-6, atol=1e-5
    )
    np.testing.assert_allclose(
        model.score(users, users % N_ITEMS),
        plain.score(users, users % N_ITEMS) + prior[users % N_ITEMS],
        rtol=1e-6,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        model.user_embeddings() @ model.item_embeddings().T, model.score_all(users), atol=1e-5
    )
    fresh = [[3, 4, 5], []]
    np.testing.assert_allclose(
        model.encode(fresh) @ model.item_embeddings().T,
        plain.encode(fresh) @ plain.item_embeddings().T + prior[None],
        atol=1e-5,
    )
    ids = np.array([f"i{j}" for j in range(N_ITEMS)])
    vocab = Vocab([f"u{u}" for u in range(N_USERS)])
    for recent in (["i3", "i4"], None):  # online sequence, and the training state
        served = ModelSource(cls.name, model, vocab, ids).offer("u1", N_ITEMS, set(), recent)
        base = ModelSource(cls.name, plain, vocab, ids).offer("u1", N_ITEMS, set(), recent)
        expected = {i: x + prior[int(i[1:])] for i, x in zip(base.ids, base.scores, strict=True)}
        np.testing.assert_allclose([expected[i] for i in served.ids], served.scores, atol=1e-5)


def test_popularity_prior_saves_and_older_models_load_without_it(tmp_path: Path) -> None:
    m, seqs = cyclic_sequences()
    small = {**SMALL, "epochs": 1}
    model = SASRec(**small, popularity_weight=0.5).fit(
        m, sequences=seqs, progress=False, item_counts=np.arange(N_ITEMS)
    )
    loaded = load_model(model.save(tmp_path / "m"))
    assert loaded.config()["popularity_weight"] == 0.5
    np.testing.assert_array_equal(loaded.item_counts.numpy(), np.arange(N_ITEMS))
    users = np.arange(N_USERS)
    np.testing.assert_array_equal(loaded.score_all(users), model.score_all(users))
    # a model saved before the prior existed: no config key, no counts tensor; today's scores
    old = SASRec(**small).fit(m, sequences=seqs, progress=False)
    folder = old.save(tmp_path / "old")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    del cfg["popularity_weight"]
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    weights = torch.load(folder / "weights.pt", weights_only=True)
    del weights["item_counts"]
    torch.save(weights, folder / "weights.pt")
    again = load_model(folder)
    assert again.popularity_weight == 0.0
    np.testing.assert_array_equal(again.score_all(users), old.score_all(users))
    assert again.item_embeddings().shape == (N_ITEMS, small["dim"])
    cfg["popularity_weight"] = 0.5  # a prior without its counts is refused
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="item_counts"):
        load_model(folder)
    with pytest.raises(ValueError, match="popularity_weight"):
        SASRec(popularity_weight=-1.0)


def test_the_prior_weight_is_a_setting(tmp_path):
    from pipelines.core.settings import Settings

    home = {"RECLOOP_HOME": str(tmp_path)}
    assert Settings.from_env(home).sequential_popularity_weight == 0.0
    s = Settings.from_env({**home, "RECLOOP_SEQUENTIAL_POPULARITY_WEIGHT": "3"})
    assert s.sequential_popularity_weight == 3.0
    assert Settings.from_env(s.as_env()).sequential_popularity_weight == 3.0


@pytest.mark.parametrize("cls", [GRU4Rec, SASRec])
def test_exposure_correction_subtracts_weight_times_log_impressions_everywhere(cls) -> None:
    """``exposure_weight`` e leaves training alone and takes exactly ``e * log(1 + impressions of
    the item)`` off ``score_all`` / ``score`` and serving's ``encode(s) @ item_embeddings().T``,
    beside the popularity prior; without impressions it changes no score."""
    m, seqs = cyclic_sequences()
    small = {**SMALL, "epochs": 2}
    shown = np.arange(N_ITEMS) * 7.0
    plain = cls(**small, popularity_weight=0.3).fit(m, sequences=seqs, progress=False)
    model = cls(**small, popularity_weight=0.3, exposure_weight=0.4).fit(
        m, sequences=seqs, progress=False, item_exposure=shown
    )
    correction = 0.4 * np.log1p(shown)
    np.testing.assert_array_equal(model.item_exposure.numpy(), shown)
    users = np.arange(N_USERS)
    np.testing.assert_allclose(
        model.score_all(users), plain.score_all(users) - correction[None], rtol=1e-6, atol=1e-5
    )
    pairs = users % N_ITEMS
    np.testing.assert_allclose(
        model.score(users, pairs), plain.score(users, pairs) - correction[pairs], atol=1e-5
    )
    np.testing.assert_allclose(
        model.user_embeddings() @ model.item_embeddings().T, model.score_all(users), atol=1e-5
    )
    fresh = [[3, 4, 5], []]
    np.testing.assert_allclose(
        model.encode(fresh) @ model.item_embeddings().T,
        plain.encode(fresh) @ plain.item_embeddings().T - correction[None],
        atol=1e-5,
    )
    # the ranking moves toward the items shown least (the test can tell)
    assert (np.argmax(model.score_all(users), 1) != np.argmax(plain.score_all(users), 1)).any()
    unseen = cls(**small, exposure_weight=0.4).fit(m, sequences=seqs, progress=False)
    bare = cls(**small).fit(m, sequences=seqs, progress=False)
    np.testing.assert_allclose(unseen.score_all(users), bare.score_all(users), atol=1e-6)
    with pytest.raises(ValueError, match="exposure_weight"):
        cls(exposure_weight=-0.1)
    with pytest.raises(ValueError, match="item_exposure"):
        cls(**small).fit(m, sequences=seqs, progress=False, item_exposure=np.ones(3))


def test_exposure_correction_saves_and_older_models_load_without_it(tmp_path: Path) -> None:
    m, seqs = cyclic_sequences()
    small = {**SMALL, "epochs": 1}
    model = GRU4Rec(**small, exposure_weight=0.4).fit(
        m, sequences=seqs, progress=False, item_exposure=np.arange(N_ITEMS) * 3.0
    )
    loaded = load_model(model.save(tmp_path / "m"))
    assert loaded.config()["exposure_weight"] == 0.4
    np.testing.assert_array_equal(loaded.item_exposure.numpy(), np.arange(N_ITEMS) * 3.0)
    users = np.arange(N_USERS)
    np.testing.assert_array_equal(loaded.score_all(users), model.score_all(users))
    # a model saved before the correction existed: no config key, no tensor; today's scores
    old = GRU4Rec(**small).fit(m, sequences=seqs, progress=False)
    folder = old.save(tmp_path / "old")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    del cfg["exposure_weight"]
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    weights = torch.load(folder / "weights.pt", weights_only=True)
    del weights["item_exposure"]
    torch.save(weights, folder / "weights.pt")
    again = load_model(folder)
    assert again.exposure_weight == 0.0
    np.testing.assert_array_equal(again.score_all(users), old.score_all(users))
    assert again.item_embeddings().shape == (N_ITEMS, small["dim"])
    cfg["exposure_weight"] = 0.4  # a correction without its impressions is refused
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="item_exposure"):
        load_model(folder)
