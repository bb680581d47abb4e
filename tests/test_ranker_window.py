"""The ranker that helps (issue 14 item 3): a window of labelled impressions without sampled
negatives, the slot fixed at serving, item id / age band features through the serving path, and
Platt calibration recorded with the model."""

from __future__ import annotations

import datetime as dt
import types

import numpy as np
import pandas as pd
import pytest

from models.base import load_model
from models.dlrm import DLRMRanker, platt_fit
from pipelines.data import simulate
from pipelines.data.validate import validate_partition
from pipelines.ranking import data as rd
from pipelines.ranking import train as rt
from serving.hydrate import Hydrated, with_ranker_columns
from serving.rank import score_candidates, sparse_codes

DAYS = ["2026-01-01", "2026-01-02"]
SPARSE = ["item_id", "user_age_band", "user_gender", "slot"]


def impressions(n: int, seed: int, days: int = 2) -> pd.DataFrame:
    """Labelled impressions: clicks depend on the item, the gender x item cross and the slot."""
    rng = np.random.default_rng(seed)
    item = rng.integers(0, 30, n)
    gender = rng.choice(["f", "m"], n)
    slot = rng.integers(0, 10, n)
    cross = np.where((gender == "f") == (item % 2 == 0), 1.0, -1.0)
    logit = -2.5 + 0.05 * item + cross - 0.3 * slot
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, days, n), "D")
    return pd.DataFrame(
        {
            "user_id": [f"u{j}" for j in rng.integers(0, 200, n)],
            "item_id": [f"i{j}" for j in item],
            "user_age": rng.integers(15, 80, n),
            "user_gender": gender,
            "position": pd.array(slot, dtype="Int32"),
            "propensity": 0.9,
            "event_timestamp": ts.sort_values().to_numpy(),
            "label": label,
        }
    )


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return rd.add_ranker_columns(impressions(8000, 0))


@pytest.fixture(scope="module")
def fitted(frame) -> tuple[DLRMRanker, dict]:
    train, valid = rt.split_validation_day(frame)
    params = dict(dim=8, epochs=4, batch_size=512, patience=1, min_count=5)
    return rt.fit_calibrated("ranker", train, valid, [], SPARSE, ips=False, **params)


def test_window_of_impressions_has_no_sampled_negatives_by_default(settings) -> None:
    simulate.simulate(settings, len(DAYS), "tiny", 11)
    for d in DAYS:
        validate_partition(settings, d)
    day = dt.date.fromisoformat(DAYS[-1])
    rows, mix, source = rd.training_rows(settings, day, settings.ranker_window_days)
    labelled = rd.labelled_impressions(settings, dt.date.fromisoformat(DAYS[0]), day)
    assert source == rd.IMPRESSIONS_SOURCE and mix == {}
    assert len(rows) == len(labelled) and not rows["sampled"].any()
    assert rows["ts"].dt.date.nunique() == 2  # both days of the 28-day window
    with_neg, mix, _ = rd.training_rows(settings, day, 28, negatives_per_click=1.0)
    assert with_neg["sampled"].sum() == pytest.approx(labelled["label"].sum(), abs=5)
    assert mix["uniform"] == 1.0  # no two-tower model: uniform negatives


def test_ranker_columns_copy_the_logged_slot_or_fix_it() -> None:
    rows = pd.DataFrame(
        {"user_age": [-1, 17, 18, 30, 70], "item_id": [1, 2, 3, 4, 5], "position": [0, 3, 1, 2, 9]}
    )
    logged = rd.add_ranker_columns(rows)
    assert logged["user_age_band"].tolist() == ["unknown", "<18", "18-24", "25-34", "65+"]
    assert logged["slot"].tolist() == [0, 3, 1, 2, 9] and logged["item_id"].iloc[0] == "1"
    served = rd.add_ranker_columns(rows, rd.SERVING_POSITION)
    assert (served["slot"] == 0).all() and served["position"].tolist() == [0, 3, 1, 2, 9]


def test_validation_day_is_the_last_day(frame) -> None:
    train, valid = rt.split_validation_day(frame)
    last = frame["event_timestamp"].max().date()
    assert (valid["event_timestamp"].dt.date == last).all()
    assert (train["event_timestamp"].dt.date < last).all() and len(train) + len(valid) == len(frame)
    one_day = frame[frame["event_timestamp"].dt.date == last]
    assert rt.split_validation_day(one_day)[1] is None


def test_calibration_and_validation_metrics_are_recorded(fitted, frame, tmp_path) -> None:
    model, record = fitted
    cal = record["calibration"]
    assert cal["method"] == "platt" and cal["a"] > 0
    assert abs(cal["mean_pred"] - cal["observed_ctr"]) < 1e-3  # Platt matches the mean
    assert record["valid"]["calibration_error"] < 1e-3 and record["valid"]["auc"] > 0.6
    assert 0 <= record["best_epoch"] < record["epochs_run"] <= 4
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.calibration == model.calibration
    np.testing.assert_allclose(again.predict_proba(frame), model.predict_proba(frame), rtol=1e-5)


def test_platt_fit_recovers_a_known_scaling() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(-2, 1.5, 40_000)
    y = (rng.random(len(z)) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(float)
    a, b = platt_fit(z, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.1)
    assert platt_fit(z, np.zeros_like(z)) == (1.0, 0.0)


def test_slot_learnt_in_training_is_fixed_to_zero_when_serving(fitted) -> None:
    model, _ = fitted
    rows = rd.add_ranker_columns(impressions(50, 9))
    top = model.predict_proba(rows.assign(slot=0))
    low = model.predict_proba(rows.assign(slot=9))
    assert (top > low).mean() > 0.9  # the examination bias was learnt from the slot
    user, items = with_ranker_columns({"user_age": 30, "user_gender": "f"}, {}, ["i1", "i2"])
    assert user["slot"] == rd.SERVING_POSITION == 0 and user["user_age_band"] == "25-34"
    assert items["item_id"].tolist() == ["i1", "i2"]


def test_serving_codes_equal_the_ranker_encoding_for_user_numbers_and_new_ids(fitted) -> None:
    """A user's number repeated on every row (``slot``) is encoded once and remembered, new item
    ids by the text path: every code equals ``encode_sparse`` on the whole frame, call after
    call (memo hits), for whole, fractional and missing numbers."""
    model, _ = fitted
    ids = [f"i{j}" for j in range(0, 40, 3)] + ["never-seen", "i3"]
    for slot in (0, 0, 3.0, 2.5, None, 7, 0):
        user, items = with_ranker_columns({"user_age": 33, "user_gender": "f"}, {}, ids)
        user["slot"] = slot
        got = sparse_codes(model, Hydrated(user, items, 0, 0.0), len(ids))
        rows = pd.DataFrame({"item_id": ids, "user_age_band": user["user_age_band"],
                             "user_gender": "f", "slot": np.full(len(ids), slot, float)})  # fmt: skip
        assert got.tolist() == model.encode_sparse(rows).tolist(), slot
    assert got[:, SPARSE.index("slot")].min() > 0  # slot 0 is in the vocabulary
    assert got[ids.index("never-seen"), SPARSE.index("item_id")] == 0  # out of vocabulary


def test_item_id_ranker_scores_through_serving_as_predict_proba(fitted) -> None:
    model, _ = fitted
    ids = [f"i{j}" for j in range(30)] + ["never-seen"]
    user, items = with_ranker_columns(
        {"user_age": 40, "user_gender": "m"}, {"x": np.zeros(len(ids))}, ids
    )
    online = Hydrated(user, items, 0, 0.0)
    got = score_candidates(types.SimpleNamespace(ranker=model), online)
    rows = pd.DataFrame({"item_id": ids, "user_age": 40, "user_gender": "m", "position": 5})
    want = model.predict_proba(rd.add_ranker_columns(rows, rd.SERVING_POSITION))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # an old ranker that reads none of the new columns still scores from the same request
    old = DLRMRanker(dense_features=["x"], sparse_features=["user_gender"], dim=4, epochs=1)
    old.fit(
        pd.DataFrame({"x": [0.0, 1.0] * 20, "user_gender": ["f", "m"] * 20, "label": [0, 1] * 20})
    )
    assert score_candidates(types.SimpleNamespace(ranker=old), online).shape == (len(ids),)
