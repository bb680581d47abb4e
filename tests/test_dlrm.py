"""DLRM ranker: each interaction learns a known click model; encoding, persistence, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from models.base import WEIGHTS_FILE, load_model
from models.dlrm import (
    CrossInteraction,
    DLRMRanker,
    DotInteraction,
    FMInteraction,
    category_keys,
    fm_second_order,
    fm_second_order_explicit,
    hash_bucket,
)
from pipelines.core.metrics import auc

DENSE = ["x1", "x2", "item_clicks_7d"]
SPARSE = ["cat", "user"]
CAT_EFFECT = dict(zip([f"c{j}" for j in range(8)], np.linspace(-1.5, 1.5, 8), strict=True))


def make_frame(n: int, seed: int) -> pd.DataFrame:
    """Known truth: logit = -1 + 1.5 x1 - x2 + 0.5 log1p(count) + effect(cat)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    count = rng.poisson(np.exp(rng.normal(1.0, 1.0, n)))
    cat = rng.choice(list(CAT_EFFECT), n)
    logit = -1 + 1.5 * x1 - x2 + 0.5 * np.log1p(count) + np.array([CAT_EFFECT[c] for c in cat])
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "item_clicks_7d": count,
            "cat": cat,
            "user": [f"u{j}" for j in rng.integers(0, 50, n)],
            "label": label,
        }
    )


def small_ranker(**kw) -> DLRMRanker:
    params = dict(dense_features=DENSE, sparse_features=SPARSE, dim=8, epochs=4, batch_size=256)
    params.update(kw)
    return DLRMRanker(**params)


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_frame(6000, 0), make_frame(2000, 1)


@pytest.fixture(scope="module")
def fitted(data) -> DLRMRanker:
    return small_ranker(feature_service="ranker_v1").fit(data[0], progress=False)


@pytest.mark.parametrize("interaction", ["dot", "cross", "fm", "linear"])
def test_each_interaction_learns_the_click_model(data, interaction: str) -> None:
    train, test = data
    lr = 1e-2 if interaction == "linear" else 3e-3  # as fit_logistic_regression does
    model = small_ranker(interaction=interaction, lr=lr).fit(train, progress=False)
    p = model.predict_proba(test)
    assert p.shape == (len(test),) and p.dtype == np.float32
    assert np.all((p > 0) & (p < 1))
    bayes = auc(test["label"], 1.5 * test["x1"] - test["x2"] + test["cat"].map(CAT_EFFECT))
    got = auc(test["label"], p)
    assert got > 0.75, (interaction, got, bayes)
    assert got > bayes - 0.04, (interaction, got, bayes)
    assert abs(p.mean() - test["label"].mean()) < 0.05  # calibrated on average


def test_fm_identity_equals_explicit_pairwise_sum() -> None:
    v = torch.randn(5, 7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fast, slow = fm_second_order(v), fm_second_order_explicit(v)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    # pinned: one vector pair only → exactly their dot product
    pair = torch.tensor([[[1.0, 2.0], [3.0, -4.0]]], dtype=torch.float64)
    assert fm_second_order(pair).item() == pytest.approx(1 * 3 + 2 * -4)
    # the FM block puts the same term in its last column, after the flattened vectors
    block = FMInteraction(n_sparse=6, dim=4)
    out = block(v[:, 0].float(), v[:, 1:].float())
    assert out.shape == (5, 7 * 4 + 1) == (5, block.out_dim)
    torch.testing.assert_close(out[:, -1], slow.float(), rtol=1e-5, atol=1e-5)


def test_dot_interaction_is_dense_plus_f_plus_1_choose_2_products() -> None:
    n_sparse, dim = 3, 8
    block = DotInteraction(n_sparse, dim)
    assert block.out_dim == dim + (n_sparse + 1) * n_sparse // 2 == 8 + 6
    dense, sparse = torch.randn(4, dim), torch.randn(4, n_sparse, dim)
    out = block(dense, sparse)
    assert out.shape == (4, block.out_dim)
    torch.testing.assert_close(out[:, :dim], dense)
    vecs = [dense] + [sparse[:, f] for f in range(n_sparse)]
    pairs = [(vecs[i] * vecs[j]).sum(1) for i in range(4) for j in range(i + 1, 4)]
    torch.testing.assert_close(out[:, dim:], torch.stack(pairs, 1))


def test_cross_layer_follows_the_dcn_formula() -> None:
    block = CrossInteraction(n_sparse=1, dim=2, n_layers=1)
    with torch.no_grad():
        block.w.copy_(torch.tensor([[1.0, 0.0, -1.0, 0.5]]))
        block.b.copy_(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    dense, sparse = torch.tensor([[1.0, 2.0]]), torch.tensor([[[3.0, 4.0]]])
    x0 = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    expect = x0 * (1 - 3 + 2) + torch.tensor([[0.1, 0.2, 0.3, 0.4]]) + x0
    torch.testing.assert_close(block(dense, sparse), expect)


def test_saved_model_gives_identical_predictions_from_raw_features(fitted, data, tmp_path) -> None:
    folder = fitted.save(tmp_path / "ranker")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model"] == "dlrm" and cfg["feature_service"] == "ranker_v1"
    assert cfg["dense_features"] == DENSE and cfg["sparse_features"] == SPARSE
    assert cfg["log_features"] == ["item_clicks_7d"]  # counts logged by default
    assert cfg["sparse_specs"][0]["kind"] == "vocab" and "c0" in cfg["sparse_specs"][0]["values"]
    state = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    logged = np.log1p(data[0]["item_clicks_7d"].to_numpy(np.float64))
    assert state["normalizer.mean"][2].item() == pytest.approx(logged.mean(), rel=1e-5)
    assert state["normalizer.std"][2].item() == pytest.approx(logged.std(), rel=1e-4)
    assert state["normalizer.mean"][0].item() == pytest.approx(data[0]["x1"].mean(), abs=1e-5)
    assert state["normalizer.fill"][2].item() == np.median(data[0]["item_clicks_7d"])

    loaded = load_model(folder)
    assert isinstance(loaded, DLRMRanker)
    test = data[1].copy()
    test.loc[test.index[:5], "x1"] = np.nan
    np.testing.assert_array_equal(loaded.predict_proba(test), fitted.predict_proba(test))


def test_nan_and_inf_never_reach_the_network_and_are_counted(fitted, data) -> None:
    eager = DLRMRanker.from_config({**fitted.config(), "inference": "eager"})  # hooks need eager
    eager.load_state(fitted.state())
    fitted = eager
    frame = data[1].head(10).copy()
    frame["x1"] = frame["x1"].astype(object)
    frame["item_clicks_7d"] = frame["item_clicks_7d"].astype(np.float64)
    frame.loc[frame.index[0], "x1"] = np.nan
    frame.loc[frame.index[1], "x1"] = np.inf
    frame.loc[frame.index[2], "x1"] = "not a number"
    frame.loc[frame.index[3], "x2"] = -np.inf
    frame.loc[frame.index[4], "item_clicks_7d"] = 1e300  # beyond float32: inf
    seen: list[torch.Tensor] = []
    hook = fitted.net.dense_arch.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    try:
        p = fitted.predict_proba(frame)
    finally:
        hook.remove()
    assert np.isfinite(p).all()
    assert seen and all(torch.isfinite(x).all() for x in seen)
    assert fitted.last_report["nonfinite"] == {"x1": 3, "x2": 1, "item_clicks_7d": 1}
    # a non-finite value scores as the saved default (the training median) would
    fixed = frame.copy()
    fixed.loc[fixed.index[0], "x1"] = float(fitted.net.normalizer.fill[0])
    np.testing.assert_allclose(fitted.predict_proba(fixed)[0], p[0], rtol=1e-6)


def test_unknown_category_goes_to_the_oov_bucket(fitted, data) -> None:
    frame = data[1].head(3).copy()
    frame.loc[frame.index[0], "cat"] = "never-seen"
    frame.loc[frame.index[1], "cat"] = None
    p = fitted.predict_proba(frame)
    assert fitted.last_report["oov"] == {"cat": 1}
    assert fitted.last_report["missing"] == {"cat": 1}
    _, sparse = fitted.encode(frame)
    assert sparse[0, 0].item() == 0 and sparse[1, 0].item() == 0 and sparse[2, 0].item() > 0
    assert np.isfinite(p).all()


def test_hashing_for_large_vocabularies(data) -> None:
    model = small_ranker(max_vocab=20, hash_buckets=16).fit(data[0].head(2000), progress=False)
    user_spec = model.sparse_specs[1]
    assert user_spec == {"name": "user", "kind": "hash", "buckets": 16}  # 50 users > 20
    assert model.sparse_specs[0]["kind"] == "vocab"  # 8 categories
    _, sparse = model.encode(data[1].head(200))
    assert sparse[:, 1].min() >= 1 and sparse[:, 1].max() <= 16
    # stable across processes: pandas' fixed-key SipHash, pinned
    assert hash_bucket(np.array(["u1", "u2"], dtype=object), 1000).tolist() == [
        int(pd.util.hash_array(np.array(["u1"], dtype=object))[0] % 1000) + 1,
        int(pd.util.hash_array(np.array(["u2"], dtype=object))[0] % 1000) + 1,
    ]
    keys, missing = category_keys(pd.Series([3.0, np.nan, 4.0]))
    assert keys[0] == "3" and keys[2] == "4" and missing.tolist() == [False, True, False]


def test_text_codes_equal_the_column_encoding_for_vocab_and_hash(fitted, data) -> None:
    hashed = small_ranker(max_vocab=20, hash_buckets=16).fit(data[0].head(2000), progress=False)
    values = ["c3", "never-seen", "c0", "u7", "u12", "", "c3", "3"]
    for model in (fitted, hashed):
        for j, spec in enumerate(model.sparse_specs):
            want = model.encode_sparse_column(j, pd.Series(values, dtype=object))
            got = model.encode_sparse_text(j, values)
            assert got.dtype == np.int64 and got.tolist() == want.tolist(), spec
    assert [s["kind"] for s in hashed.sparse_specs] == ["vocab", "hash"]
    assert fitted.encode_sparse_text(0, ["never-seen"]).tolist() == [0]  # OOV row
    assert fitted.encode_sparse_text(0, ["c3"]).tolist()[0] > 0
    assert fitted.encode_sparse_text(0, []).tolist() == []


def test_deterministic_under_a_seed(data) -> None:
    train = data[0].head(1500)
    a = small_ranker(seed=7, epochs=2).fit(train, progress=False).predict_proba(data[1])
    b = small_ranker(seed=7, epochs=2).fit(train, progress=False).predict_proba(data[1])
    c = small_ranker(seed=8, epochs=2).fit(train, progress=False).predict_proba(data[1])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_inference_modes_agree(fitted, data) -> None:
    assert fitted.inference == "trace"  # the default: fastest in benchmarks/bench_ranker.py
    eager = DLRMRanker.from_config({**fitted.config(), "inference": "eager"})
    eager.load_state(fitted.state())
    eager = eager.predict_proba(data[1])
    for mode in ("script", "trace"):
        other = DLRMRanker.from_config({**fitted.config(), "inference": mode})
        other.load_state(fitted.state())
        np.testing.assert_allclose(other.predict_proba(data[1]), eager, rtol=1e-5, atol=1e-7)


def test_corrupt_weights_file_is_a_value_error_naming_it(fitted, tmp_path: Path) -> None:
    folder = fitted.save(tmp_path / "ranker")
    (folder / WEIGHTS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=str(folder / WEIGHTS_FILE)):
        load_model(folder)


def test_weights_of_another_shape_are_a_value_error(fitted, tmp_path: Path) -> None:
    state = fitted.state()
    state["over_arch.mlp.0.weight"] = torch.zeros(3, 3)
    other = DLRMRanker.from_config(fitted.config())
    with pytest.raises(ValueError, match="do not match"):
        other.load_state(state)


def test_wrong_inputs_are_clear_errors(fitted, data) -> None:
    with pytest.raises(ValueError, match="item_clicks_7d"):
        fitted.predict_proba(data[1].drop(columns=["item_clicks_7d"]))
    with pytest.raises(TypeError, match="DataFrame"):
        small_ranker().fit(sp.csr_matrix((3, 3)))
    with pytest.raises(NotImplementedError, match="predict_proba"):
        fitted.score(np.array([0]), np.array([1]))
    bad = data[0].head(10).copy()
    bad.loc[bad.index[4], "label"] = 2
    with pytest.raises(ValueError, match="row 4"):
        small_ranker().fit(bad, progress=False)
    with pytest.raises(ValueError, match="interaction"):
        small_ranker(interaction="attention")


def test_weighted_loss_moves_the_base_rate(data) -> None:
    """Up-weighting positives x3 raises the predicted CTR: weights reach the loss."""
    train = data[0].assign(w=np.where(data[0]["label"] == 1, 3.0, 1.0))
    plain = small_ranker(epochs=2).fit(train, progress=False).predict_proba(data[1]).mean()
    heavy = small_ranker(epochs=2).fit(train, weight="w", progress=False)
    assert heavy.predict_proba(data[1]).mean() > plain + 0.1
