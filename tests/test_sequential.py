"""GRU4Rec and SASRec (``models.sequential``) beyond the retriever contract (tests/test_models.py):
they learn what follows what, which no bag-of-items model can; the training data offers each
user's items in time order; both are selectable by name."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models.als import ALS
from models.sequential import GRU4Rec, SASRec, last_tokens, training_windows
from pipelines.cli import build_parser
from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.retrieval import train
from pipelines.retrieval.data import load_training_data

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


@pytest.mark.parametrize("cls", [GRU4Rec, SASRec])
def test_learns_the_next_item_where_a_bag_of_items_cannot(cls) -> None:
    m, seqs = cyclic_sequences()
    model = cls(**SMALL).fit(m, sequences=seqs, progress=False)
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


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_selectable_from_the_commands_and_the_builder(name, tmp_path, monkeypatch) -> None:
    parser = build_parser()
    for argv in (
        ["train", "--model", name, "--date", "2026-01-01"],
        ["recommend", "--model", name, "--out", "x.csv"],
    ):
        assert parser.parse_args(argv).model == name
    m, seqs = cyclic_sequences()
    monkeypatch.setitem(train.SEQUENTIAL_PARAMS, "epochs", 1)
    settings = Settings.from_env({"RECLOOP_HOME": str(tmp_path), "RECLOOP_SEED": "5"})
    data = SimpleNamespace(implicit=m, sequences=seqs)
    model = train.build_model(name, data, settings, seed=settings.seed)
    assert model.name == name and model.seed == 5 and model.n_items == N_ITEMS
    np.testing.assert_array_equal(
        model.histories[0, -3:].numpy(), seqs[1][seqs[0][1] - 3 : seqs[0][1]] + 1
    )
