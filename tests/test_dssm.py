"""DSSM beyond the retriever contract (``tests/test_models.py``): word hashing, where item text
comes from (generated simulator titles, kept MovieLens titles), the leave-one-out user side, and
DSSM's point: a brand-new item is placed by its title alone."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models.base import load_model
from models.dssm import DSSM, _TrainingBatches, history_matrix, one_hot_groups, text_bags
from pipelines.cli import build_parser
from pipelines.core import layout
from pipelines.core.settings import Settings
from pipelines.core.vocab import Vocab
from pipelines.data import ingest, simulate, titles
from pipelines.retrieval import train

SMALL = {"n_buckets": 1024, "hidden": (32,), "dim": 16, "epochs": 10, "batch_size": 64, "lr": 0.02}


# --- word hashing -------------------------------------------------------------------------------
def test_letter_trigrams_and_bags():
    assert titles.letter_trigrams("Cat") == ["#ca", "cat", "at#"]
    assert titles.letter_trigrams("a-B (1995)") == ["#a#", "#b#", "#19", "199", "995", "95#"]
    bags = titles.trigram_bags(["cat cat", "Cat", "", "dog"], 1 << 16)
    assert bags.shape == (4, 1 << 16) and bags.dtype == np.float32
    assert bags[0].sum() == 6 and bags[0].nnz == 3  # each trigram twice
    assert (bags[0] - 2 * bags[1]).nnz == 0  # case folded, same buckets
    assert bags[2].nnz == 0 and bags[3].multiply(bags[1]).nnz == 0
    # stable across processes and platforms (crc32), not Python's salted hash()
    assert bags[1].indices.tolist() == sorted(
        __import__("zlib").crc32(t.encode()) % (1 << 16) for t in ("#ca", "cat", "at#")
    )
    unit = text_bags(["cat cat", ""], 64)
    assert np.isclose(unit[0].multiply(unit[0]).sum(), 1.0) and unit[1].nnz == 0


def test_generated_titles_stable_and_category_words():
    pinned = titles.generate_titles(["i1", "i2", "i3"], ["books", "books", "toys"])
    assert pinned == ["Paxnobex ultra anthology", "Orimar pro anthology", "Noixix essential puzzle"]
    ids = [f"i{k}" for k in range(400)]
    books = titles.generate_titles(ids, ["books"] * 400)
    pets = titles.generate_titles(ids, ["pets"] * 400)
    assert len(set(books)) > 390  # near-unique titles
    noun = {t.split(" ", 2)[2] for t in books}
    assert noun == set(titles.CATEGORY_NOUNS["books"])  # a category's titles share its nouns
    assert not noun & {t.split(" ", 2)[2] for t in pets}
    assert set(simulate.CATEGORIES) == set(titles.CATEGORY_NOUNS)


def test_item_text_from_file_else_generated_for_a_simulated_workspace(tmp_path: Path):
    s = Settings.from_env({"RECLOOP_HOME": str(tmp_path)})
    s.ensure_dirs()
    vocab = Vocab(["i1", "i2", "i9"])
    assert titles.load_item_text(s, vocab) == ["", "", ""]  # no world, no file
    items = pd.DataFrame({"item_id": ["i1", "i2"], "category": ["books", "toys"]})
    items.to_parquet(layout.attributes_path(s, "items"))
    assert titles.load_item_text(s, vocab) == ["", "", ""]  # not simulated: no made-up titles
    layout.world_path(s).parent.mkdir(parents=True, exist_ok=True)
    layout.world_path(s).write_text(json.dumps({"scale": "tiny", "seed": 1}))
    expected = titles.generate_titles(["i1", "i2"], ["books", "toys"])
    assert titles.load_item_text(s, vocab) == [*expected, ""]
    titles.write_item_text(s, pd.DataFrame({"item_id": ["i2", "i1"], "title": ["Heat", None]}))
    assert titles.load_item_text(s, vocab) == ["", "Heat", ""]  # the file wins


def test_movielens_import_keeps_titles(tmp_path: Path):
    s = Settings.from_env({"RECLOOP_HOME": str(tmp_path / "home")})
    ml = tmp_path / "ml"
    ml.mkdir()
    t0 = 1_700_000_000
    (ml / "u.data").write_text(f"1\t10\t5\t{t0}\n2\t20\t3\t{t0 + 86400}\n")
    flags = "|".join(["0"] * 19)
    (ml / "u.item").write_text(
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags}\n"
        f"20|Heat (1995)|15-Dec-1995||http://x|{flags}\n",
        encoding="latin-1",
    )
    ingest.import_movielens(s, ml / "u.data")
    text = pd.read_parquet(titles.item_text_path(s))
    assert text.to_dict("list") == {
        "item_id": ["10", "20"],
        "title": ["Toy Story (1995)", "Heat (1995)"],
    }
    assert titles.load_item_text(s, Vocab(["20", "10"])) == ["Heat (1995)", "Toy Story (1995)"]


# --- the model ----------------------------------------------------------------------------------
def themed() -> tuple[sp.csr_matrix, list[str]]:
    """40 users x 24 items in two blocks; block 0's titles are about rivers, block 1's about
    engines; each user saw 6 of their block's 12 items. Items 24 (a river title) and 25 (an
    engine title) are brand new: no interactions at all."""
    rng = np.random.default_rng(1)
    rows, cols = [], []
    for u in range(40):
        rows += [u] * 6
        cols += ((u // 20) * 12 + rng.choice(12, 6, replace=False)).tolist()
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(40, 26))
    river = ("river", "brook", "canoe", "delta")
    engine = ("engine", "piston", "turbo", "gearbox")
    text = [
        f"{(river, engine)[i // 12][i % 4]} {('red', 'blue', 'tall')[i % 3]} {i}" for i in range(24)
    ]
    return m, [*text, "canoe river brook", "piston turbo engine"]


def test_new_item_ranked_by_its_title():
    m, text = themed()
    model = DSSM(**SMALL).fit(m, item_text=text, progress=False)
    scores = model.score_all(np.arange(40))
    river_users, engine_users = np.arange(20), np.arange(20, 40)
    assert (scores[river_users, 24] > scores[river_users, 25]).all()
    assert (scores[engine_users, 25] > scores[engine_users, 24]).all()
    # the same from titles the model never saw, through encode_items
    new = model.encode_items(["brook delta canoe", "gearbox turbo"])
    by_text = model.user_embeddings() @ new.T
    assert (by_text[river_users, 0] > by_text[river_users, 1]).all()
    assert (by_text[engine_users, 1] > by_text[engine_users, 0]).all()
    # without text, the two new items are indistinguishable: the text is what places them
    blind = DSSM(**{**SMALL, "epochs": 2}).fit(m, item_text=[""] * 26, progress=False)
    np.testing.assert_allclose(blind.score_all([0])[0, 24], blind.score_all([0])[0, 25])


def test_training_user_side_leaves_the_positive_out():
    m, text = themed()
    x = text_bags(text, 256)
    hist = history_matrix(m, None, 50)
    side = one_hot_groups(np.array([[0, 1]] * 40), 40, [1, 2])
    batches = _TrainingBatches(hist, np.asarray(hist.sum(1)).ravel(), x, side)
    u, i = 3, int(m[3].indices[0])
    others = [j for j in m[3].indices if j != i]
    weights, sub, side_rows = batches.user_rows(np.array([u, u]), np.array([i, 25]))
    got = (weights @ x[sub]).toarray()
    np.testing.assert_allclose(got[0], x[others].toarray().mean(0), atol=1e-6)
    np.testing.assert_allclose(got[1], x[m[3].indices].toarray().mean(0), atol=1e-6)
    assert side_rows.shape == (2, 256 + 3)
    assert side_rows.toarray()[0, 256:].tolist() == [1.0, 0.0, 1.0]  # code 0 of 1, code 1 of 2


def test_recent_history_from_sequences_and_side_codes_round_trip(tmp_path: Path):
    m, text = themed()
    # user 0's sequence, oldest first, with a repeat: the 2 most recent distinct items count
    seq_items = [m[u].indices.tolist() for u in range(40)]
    seq_items[0] = [5, 7, 5, 9]
    indptr = np.r_[0, np.cumsum([len(s) for s in seq_items])]
    hist = history_matrix(m, (indptr, np.concatenate(seq_items)), max_history=2)
    assert sorted(hist[0].indices.tolist()) == [5, 9]
    groups = np.stack([np.arange(40) // 20, np.full(40, -1)], axis=1)
    model = DSSM(**{**SMALL, "epochs": 2, "popularity_weight": 0.5}).fit(
        m, item_text=text, user_groups=groups, item_groups=np.arange(26) % 3,
        sequences=(indptr, np.concatenate(seq_items)), progress=False,
    )  # fmt: skip
    assert model.user_group_sizes == [2, 1] and model.item_group_sizes == [3]
    assert model.score_all([0])[0, 25] < model.score_all([0])[0, int(m[1].indices[0])] + 1  # finite
    loaded = load_model(model.save(tmp_path / "m"))
    assert np.array_equal(loaded.score_all(np.arange(40)), model.score_all(np.arange(40)))
    np.testing.assert_allclose(
        model.user_embeddings() @ model.item_embeddings().T,
        model.score_all(np.arange(40)),
        atol=1e-5,
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        DSSM(temperature=0)
    m, text = themed()
    with pytest.raises(ValueError, match="item texts"):
        DSSM(**SMALL).fit(m, item_text=text[:3])
    with pytest.raises(ValueError, match="group codes"):
        DSSM(**SMALL).fit(m, item_text=text, user_groups=np.zeros(3, np.int64))


def test_selectable_from_the_commands_and_the_builder(tmp_path: Path, monkeypatch):
    parser = build_parser()
    for argv in (
        ["train", "--model", "dssm", "--date", "2026-01-01"],
        ["recommend", "--model", "dssm", "--out", "x.csv"],
    ):
        assert parser.parse_args(argv).model == "dssm"
    m, _ = themed()
    s = Settings.from_env({"RECLOOP_HOME": str(tmp_path), "RECLOOP_SEED": "5"})
    monkeypatch.setitem(train.DSSM_PARAMS, "epochs", 1)
    ids = [f"i{k}" for k in range(26)]
    data = SimpleNamespace(
        implicit=m, date=None, users=Vocab([f"u{k}" for k in range(40)]), items=Vocab(ids),
        sequences=None,
    )  # fmt: skip
    model = train.build_model("dssm", data, s, seed=s.seed)
    assert model.name == "dssm" and model.seed == 5 and model.n_items == 26
