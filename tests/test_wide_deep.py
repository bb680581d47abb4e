"""What is particular to the Wide & Deep and DeepFM rankers (the shared contract is
tests/test_ranker_contract.py): the crosses hash as documented, the wide part alone learns a
cross-only rule, both parts get gradient, DeepFM's first-order term, ``RECLOOP_RANKER``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from models.cross_lr import CrossLRRanker
from models.dlrm import DLRMRanker, bce_loss, table_size
from models.wide_deep import (
    CROSS_MULTIPLIER,
    CROSS_PRIME,
    WIDE_CROSSES,
    WideDeepRanker,
    cross_index,
    cross_table_size,
)
from pipelines.core.metrics import auc
from pipelines.core.settings import RANKERS, Settings
from pipelines.ranking import data as rd
from pipelines.ranking import train as rk_train
from serving.hydrate import Hydrated, with_ranker_columns
from serving.rank import score_candidates

SMALL = {"dim": 4, "bottom_mlp": (8,), "top_mlp": (8,), "batch_size": 128, "lr": 3e-2}


def parity_frame(n: int, seed: int) -> pd.DataFrame:
    """Two categorical features with 4 values each; click iff their indices have the same parity.
    Each value alone says nothing (every value clicks half of the time)."""
    rng = np.random.default_rng(seed)
    p, q = rng.integers(0, 4, n), rng.integers(0, 4, n)
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "p": [f"p{j}" for j in p],
            "q": [f"q{j}" for j in q],
            "label": ((p + q) % 2 == 0).astype(int),
        }
    )


def linear_frame(n: int, seed: int) -> pd.DataFrame:
    """A rule linear in the encoded features: ``2 x + effect(seg) + noise > 0``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    seg = rng.integers(0, 4, n)
    signal = 2 * x + np.array([-1.5, -0.5, 0.5, 1.5])[seg] + rng.normal(0, 0.3, n)
    return pd.DataFrame({"x": x, "seg": [f"s{j}" for j in seg], "label": (signal > 0).astype(int)})


def freeze_zero(params: list[nn.Parameter]) -> None:
    """Set each of ``params`` to zero and keep it there (no gradient)."""
    for param in params:
        nn.init.zeros_(param)
        param.requires_grad_(False)


class WideOnly(WideDeepRanker):
    """The deep part's output layer frozen at zero: only the wide part (and the bias) learns."""

    def _make_net(self, n_dense: int, table_sizes: list[int]) -> nn.Module:
        net = super()._make_net(n_dense, table_sizes)
        freeze_zero([net.deep.mlp[-1].weight])
        return net


class LinearOnlyFM(DLRMRanker):
    """DeepFM / FM with the embeddings and the DNN's output layer frozen at zero."""

    def _make_net(self, n_dense: int, table_sizes: list[int]) -> nn.Module:
        net = super()._make_net(n_dense, table_sizes)
        freeze_zero([*net.sparse_arch.parameters(), net.over_arch.mlp[-1].weight])
        return net


# --- crosses --------------------------------------------------------------------------------------
def test_cross_index_is_the_documented_formula():
    a = torch.tensor([[0, 1, 3, 2], [5, 0, 1, 7]])
    b = torch.tensor([[2, 1, 4, 0], [6, 3, 1, 9]])
    size_b = torch.tensor([10, 10, 10, 10])
    exact = torch.tensor([True, True, False, False])
    got = cross_index(a, b, size_b, exact, buckets=7).numpy()
    an, bn = a.numpy(), b.numpy()
    pair = (an - 1) * 9 + (bn - 1)
    hashed = 1 + (pair % CROSS_PRIME) * CROSS_MULTIPLIER % CROSS_PRIME % 7
    want = np.where([True, True, False, False], 1 + pair, hashed)
    want[(an == 0) | (bn == 0)] = 0  # a missing / unseen value on either side: the missing row
    assert np.array_equal(got, want)
    assert got[0, 0] == 0 and got[0, 3] == 0 and got[0, 1] == 1  # (1, 1) is the first pair


def test_small_crosses_get_one_row_per_pair_large_ones_hash_into_buckets():
    assert cross_table_size(5, 4, 100) == 1 + 4 * 3
    assert cross_table_size(500, 400, 100) == 1 + 100
    a, b = torch.meshgrid(torch.arange(1, 5), torch.arange(1, 4), indexing="ij")
    exact = torch.tensor([True])
    got = cross_index(a.reshape(-1, 1), b.reshape(-1, 1), torch.tensor([4]), exact, 100)
    assert sorted(got.flatten().tolist()) == list(range(1, 13))  # no collision, rows 1..12
    big = torch.arange(1, 5000).reshape(-1, 1)
    hashed = cross_index(big, big, torch.tensor([5000]), torch.tensor([False]), 100)
    assert hashed.min() >= 1 and hashed.max() <= 100 and len(hashed.unique()) == 100


def test_crosses_default_to_the_named_pairs_present_and_bad_ones_are_errors():
    model = WideDeepRanker(["x"], ["user_age_band", "item_category", "item_id"])
    assert model.crosses == [["user_age_band", "item_category"]]
    assert ("user_age_band", "item_category") in WIDE_CROSSES
    with pytest.raises(ValueError, match="item_price"):
        WideDeepRanker(["x"], ["p", "q"], crosses=[("p", "item_price")])


# --- the two parts --------------------------------------------------------------------------------
def test_wide_part_alone_learns_a_cross_only_rule():
    train, test = parity_frame(1000, 0), parity_frame(500, 1)
    for col in ("p", "q"):  # no single feature explains the clicks
        assert train.groupby(col)["label"].mean().between(0.4, 0.6).all()
    params = {**SMALL, "epochs": 2, "seed": 0}
    crossed = WideOnly(["x"], ["p", "q"], crosses=[("p", "q")], **params).fit(train, progress=False)
    plain = WideOnly(["x"], ["p", "q"], crosses=[], **params).fit(train, progress=False)
    assert float(crossed.net.deep.mlp[-1].weight.abs().sum()) == 0.0  # the deep part stayed off
    assert auc(test["label"], crossed.predict_proba(test)) > 0.99
    assert auc(test["label"], plain.predict_proba(test)) < 0.6


def test_wide_and_deep_parts_both_receive_gradient():
    frame = parity_frame(512, 2)
    model = WideDeepRanker(["x"], ["p", "q"], crosses=[("p", "q")], **SMALL, epochs=1, seed=0)
    model.fit(frame, progress=False)
    dense, sparse = model.encode(frame)
    net = model.net.train()
    net.zero_grad()
    y = torch.as_tensor(frame["label"].to_numpy(), dtype=torch.float32)
    bce_loss(net(dense, sparse), y).backward()
    grads = {
        "wide cross weights": net.wide.sparse_arch.tables[-1].weight.grad,
        "wide category weights": net.wide.sparse_arch.tables[0].weight.grad,
        "deep embeddings": net.sparse_arch.tables[0].weight.grad,
        "deep bottom MLP": net.dense_arch.mlp[0].weight.grad,
        "deep top MLP": net.deep.mlp[0].weight.grad,
    }
    for part, grad in grads.items():
        assert grad is not None and float(grad.abs().sum()) > 0, part


# --- DeepFM ---------------------------------------------------------------------------------------
def test_deepfm_with_embeddings_frozen_at_zero_is_logistic_regression():
    train, test = linear_frame(1000, 0), linear_frame(500, 1)
    params = {**SMALL, "epochs": 2, "seed": 0}
    deepfm = LinearOnlyFM(["x"], ["seg"], interaction="deepfm", **params).fit(train, progress=False)
    fm = LinearOnlyFM(["x"], ["seg"], interaction="fm", **params).fit(train, progress=False)
    p = deepfm.predict_proba(test).astype(np.float64)
    # by hand: sigmoid(w0 + w · normalized x + w_seg[idx]) from the saved weights
    state = {k: v.numpy().astype(np.float64) for k, v in deepfm.state().items()}
    x = (test[["x"]].to_numpy() - state["normalizer.mean"]) / state["normalizer.std"]
    idx = deepfm.encode_sparse(test)[:, 0]
    z = (
        state["over_arch.mlp.2.bias"][0]
        + x @ state["first_order.dense.weight"][0]
        + state["first_order.sparse_arch.tables.0.weight"][idx, 0]
    )
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)), rtol=1e-4, atol=1e-6)
    assert auc(test["label"], p) > 0.95  # the first-order term alone learns the linear rule
    assert np.ptp(fm.predict_proba(test)) < 1e-6  # fm has no first-order term: a constant


def test_saved_models_of_the_older_kinds_keep_their_tensors():
    """Adding ``deepfm`` left the ``fm``, ``dot`` and ``linear`` state dicts as they were, so
    artifacts saved before it load (``load_state`` is strict)."""
    specs = [{"name": "seg", "kind": "vocab", "values": ["a", "b"]}]
    old_fm = {
        "normalizer.fill", "normalizer.log_mask", "normalizer.mean", "normalizer.std",
        "dense_arch.mlp.0.weight", "dense_arch.mlp.0.bias", "dense_arch.mlp.2.weight",
        "dense_arch.mlp.2.bias", "sparse_arch.tables.0.weight", "over_arch.mlp.0.weight",
        "over_arch.mlp.0.bias", "over_arch.mlp.2.weight", "over_arch.mlp.2.bias",
    }  # fmt: skip
    old_linear = {
        "normalizer.fill", "normalizer.log_mask", "normalizer.mean", "normalizer.std",
        "linear.weight", "linear.bias", "sparse_arch.tables.0.weight",
    }  # fmt: skip
    for kind, keys in (("fm", old_fm), ("dot", old_fm), ("linear", old_linear)):
        model = DLRMRanker(["x"], ["seg"], interaction=kind, sparse_specs=specs, **SMALL)
        assert set(model.net.state_dict()) == keys, kind
    deepfm = DLRMRanker(["x"], ["seg"], interaction="deepfm", sparse_specs=specs, **SMALL)
    assert set(deepfm.state()) - old_fm == {
        "first_order.dense.weight",
        "first_order.sparse_arch.tables.0.weight",
    }
    assert table_size(specs[0]) == 3


# --- RECLOOP_RANKER -------------------------------------------------------------------------------
def test_recloop_ranker_setting_picks_the_daily_ranker(tmp_path):
    assert Settings.from_env({"RECLOOP_HOME": str(tmp_path)}).ranker == rk_train.AUTO
    got = Settings.from_env({"RECLOOP_HOME": str(tmp_path), "RECLOOP_RANKER": "wide_deep"})
    assert got.ranker == "wide_deep" and got.as_env()["RECLOOP_RANKER"] == "wide_deep"
    with pytest.raises(ValueError, match="RECLOOP_RANKER='dlrm'"):
        Settings.from_env({"RECLOOP_HOME": str(tmp_path), "RECLOOP_RANKER": "dlrm"})
    assert set(rk_train.RANKERS) | {rk_train.AUTO} == set(RANKERS)
    assert set(rk_train.AUTO_KINDS) <= set(rk_train.RANKERS)
    with pytest.raises(ValueError, match="unknown ranker 'auto'"):
        rk_train.make_ranker(rk_train.AUTO, ["x"], ["p", "q"])
    kinds = {k: rk_train.make_ranker(k, ["x"], ["p", "q"]) for k in rk_train.RANKERS}
    assert kinds["dlrm_dot"].config() == DLRMRanker(["x"], ["p", "q"]).config()
    assert isinstance(kinds["cross_lr"], CrossLRRanker)
    assert isinstance(kinds["wide_deep"], WideDeepRanker)
    assert kinds["deepfm"].interaction == "deepfm" and kinds["logistic"].lr == 1e-2


def test_ips_weights_reach_every_kind_through_the_common_path():
    frame = parity_frame(400, 3).assign(propensity=0.5)
    frame.loc[frame["label"] == 1, "propensity"] = 0.05  # clicks weigh 10x
    plain = rk_train.fit_ranker(frame, ["x"], ["p", "q"], "wide_deep", epochs=1, **SMALL)
    ips = rk_train.fit_ranker(frame, ["x"], ["p", "q"], "wide_deep", ips=True, epochs=1, **SMALL)
    assert ips.predict_proba(frame).mean() > plain.predict_proba(frame).mean() + 0.1


def test_daily_path_trains_calibrates_and_serves_wide_deep():
    """``fit_calibrated`` with ``RECLOOP_RANKER=wide_deep``: the gender × item cross and the slot
    are learnt, Platt calibration is recorded, and serving's array path scores as
    ``predict_proba``."""
    rng = np.random.default_rng(0)
    n = 3000
    item, slot = rng.integers(0, 10, n), rng.integers(0, 5, n)
    gender = rng.choice(["f", "m"], n)
    logit = np.where((gender == "f") == (item % 2 == 0), 0.5, -2.5) - 0.4 * slot
    frame = rd.add_ranker_columns(
        pd.DataFrame(
            {
                "user_id": "u",
                "item_id": [f"i{j}" for j in item],
                "user_age": 30,
                "user_gender": gender,
                "position": pd.array(slot, dtype="Int32"),
                "propensity": 0.9,
                "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC")
                + pd.to_timedelta(np.sort(rng.integers(0, 2, n)), "D"),
                "label": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8),
            }
        )
    )
    train, valid = rk_train.split_validation_day(frame)
    model, record = rk_train.fit_calibrated(
        "ranker", train, valid, [], ["item_id", "user_gender", "slot"], False, "wide_deep",
        crosses=[("user_gender", "item_id")], **{**SMALL, "epochs": 3},
    )  # fmt: skip
    assert isinstance(model, WideDeepRanker) and model.feature_service == rd.SERVICE
    assert record["calibration"]["a"] > 0 and record["valid"]["auc"] > 0.75
    ids = [f"i{j}" for j in range(10)] + ["never-seen"]
    user, items = with_ranker_columns({"user_age": 30, "user_gender": "f"}, {}, ids)
    got = score_candidates(SimpleNamespace(ranker=model), Hydrated(user, items, 0, 0.0))
    rows = pd.DataFrame({"item_id": ids, "user_age": 30, "user_gender": "f"})
    want = model.predict_proba(rd.add_ranker_columns(rows, rd.SERVING_POSITION))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0:10:2].min() > got[1:10:2].max()  # "f" clicks the even items
