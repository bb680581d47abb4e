"""One contract for every ranker (``models.base.Ranker``): each DLRM interaction and the logistic
baseline, fit on labelled rows whose clicks follow a known rule.

To put another ranker under the contract add one line to ``CASES``: ``Case("name", fit)``, where
``fit(frame)`` returns the fitted ranker (as the pipeline builds it). A check that does not
apply to a ranker is skipped with the reason, never passed.

The synthetic rows have a known right answer: a click happens when
``2 x + 0.5 log1p(count) + effect(segment) + noise > 1`` (noise ``N(0, 0.3²)``); ``user`` is a
categorical feature with no effect. The rule is linear in the encoded features, so every model,
the logistic baseline included, can rank almost perfectly: the rule's own score has held-out AUC
0.995, each case reaches 0.97 to 0.99 in three tiny epochs, and the contract asks for 0.9.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.base import CONFIG_FILE, MODEL_CLASSES, WEIGHTS_FILE, Ranker, load_model
from models.cross_lr import CrossLRRanker
from models.dlrm import INTERACTIONS, DLRMRanker
from models.wide_deep import WideDeepRanker
from pipelines.core.metrics import auc
from pipelines.ranking.train import fit_logistic_regression

DENSE = ["x", "item_clicks_7d"]
SPARSE = ["segment", "user"]
SEGMENT_EFFECT = {"a": -2.0, "b": -0.5, "c": 0.5, "d": 2.0}
#: tiny models and few epochs: each fit takes well under a second
SMALL = {"dim": 4, "bottom_mlp": (8,), "top_mlp": (8,), "epochs": 3, "batch_size": 128, "lr": 1e-2}


def labelled_frame(n: int, seed: int) -> pd.DataFrame:
    """``n`` rows: the feature columns, ``label`` (0/1) from the rule in the module docstring."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    count = rng.poisson(3.0, n)
    segment = rng.choice(list(SEGMENT_EFFECT), n)
    effect = np.array([SEGMENT_EFFECT[s] for s in segment])
    signal = 2 * x + 0.5 * np.log1p(count) + effect + rng.normal(0, 0.3, n)
    return pd.DataFrame(
        {
            "x": x,
            "item_clicks_7d": count,
            "segment": segment,
            "user": [f"u{j}" for j in rng.integers(0, 30, n)],
            "label": (signal > 1).astype(int),
        }
    )


@dataclass(frozen=True)
class Case:
    name: str
    fit: Callable[[pd.DataFrame], Ranker]


def dlrm_case(interaction: str) -> Case:
    def fit(frame: pd.DataFrame) -> Ranker:
        model = DLRMRanker(DENSE, SPARSE, interaction=interaction, **SMALL)
        return model.fit(frame, progress=False)

    return Case(f"dlrm_{interaction}", fit)


# every interaction DLRMRanker offers (dot, cross, fm, deepfm); "linear" as the pipeline builds
# the logistic baseline; Wide & Deep with one cross; the cross-feature L2 regression
CASES = [dlrm_case(kind) for kind in INTERACTIONS if kind != "linear"] + [
    Case("logistic", lambda frame: fit_logistic_regression(frame, DENSE, SPARSE, **SMALL)),
    Case(
        "wide_deep",
        lambda frame: WideDeepRanker(DENSE, SPARSE, crosses=[SPARSE], **SMALL).fit(
            frame, progress=False
        ),
    ),
    Case(
        "cross_lr",
        lambda frame: CrossLRRanker(DENSE, SPARSE, crosses=[SPARSE]).fit(frame, progress=False),
    ),
]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return labelled_frame(2000, 0), labelled_frame(1000, 1)


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def fitted(request, data) -> tuple[Case, Ranker]:
    case: Case = request.param
    return case, case.fit(data[0])


# --- the contract ---------------------------------------------------------------------------------
def test_registered_ranker(fitted):
    _, model = fitted
    assert isinstance(model, Ranker)
    assert MODEL_CLASSES[model.name] is type(model)
    assert set(model.feature_columns) == set(DENSE + SPARSE)


def test_separates_positives_from_negatives(fitted, data):
    _, model = fitted
    test = data[1]
    assert 0.2 < test["label"].mean() < 0.8  # both classes well represented
    got = auc(test["label"], model.predict_proba(test))
    assert got > 0.9, got


def test_probabilities_shape_and_range(fitted, data):
    _, model = fitted
    test = data[1]
    p = model.predict_proba(test)
    assert p.shape == (len(test),) and p.dtype == np.float32
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    assert model.predict_proba(test.head(0)).shape == (0,)
    # a row's probability does not depend on the other rows of the frame
    some = test.iloc[::7]
    np.testing.assert_allclose(model.predict_proba(some), p[::7], rtol=1e-5, atol=1e-7)


def test_deterministic_under_seed(fitted, data):
    case, model = fitted
    again = case.fit(data[0])
    assert np.array_equal(model.predict_proba(data[1]), again.predict_proba(data[1]))


def test_save_load_round_trip(fitted, data, tmp_path: Path):
    _, model = fitted
    loaded = load_model(model.save(tmp_path / "m"))
    assert type(loaded) is type(model)
    assert loaded.config() == model.config()
    assert np.array_equal(loaded.predict_proba(data[1]), model.predict_proba(data[1]))


def test_corrupt_or_missing_weights_raise_value_error(fitted, tmp_path: Path):
    _, model = fitted
    folder = model.save(tmp_path / "m")
    (folder / WEIGHTS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=str(folder / WEIGHTS_FILE)):
        load_model(folder)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ValueError, match=str(folder / WEIGHTS_FILE)):
        load_model(folder)
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=str(folder / CONFIG_FILE)):
        load_model(folder)


def test_wrong_tensors_raise_value_error(fitted):
    _, model = fitted
    fresh = type(model).from_config(model.config())
    with pytest.raises(ValueError):
        fresh.load_state({})
    state = {k: torch.zeros(1) for k in model.state()}
    with pytest.raises(ValueError):
        fresh.load_state(state)


@pytest.mark.parametrize("column", DENSE + SPARSE)
def test_missing_feature_column_is_a_value_error(fitted, data, column: str):
    _, model = fitted
    with pytest.raises(ValueError, match=column):
        model.predict_proba(data[1].drop(columns=[column]))


def test_bad_labels_are_a_value_error(fitted, data):
    case, _ = fitted
    bad = data[0].head(50).copy()
    bad.loc[bad.index[3], "label"] = 2
    with pytest.raises(ValueError, match="row 3"):
        case.fit(bad)
    with pytest.raises(ValueError, match="label"):
        case.fit(data[0].head(50).drop(columns=["label"]))
