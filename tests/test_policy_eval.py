"""OPE of a trained bundle's policy on a simulated day, checked against the simulator's truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.data import simulate
from pipelines.data.validate import validate_partition
from pipelines.release import bundle_ope
from pipelines.retrieval import train

# integration: every test simulates a workspace and trains a two-tower on it
pytestmark = pytest.mark.integration
DAYS = ["2026-01-01", "2026-01-02"]


def test_bundle_policy_estimates_and_truth(settings):
    simulate.simulate(settings, len(DAYS), "tiny", 5)
    for d in DAYS:
        validate_partition(settings, d)
    train.train(settings, "two_tower", DAYS[0])
    folder = train.artifact_dir(settings, "two_tower", DAYS[0])
    out = bundle_ope.evaluate_bundle(settings, DAYS[1], folder, "bundle-x")
    snips = out["estimates"]["snips"]
    assert snips["n"] > 0 and snips["ess"] > 0
    assert snips["ci_low"] <= snips["estimate"] <= snips["ci_high"]
    assert 0.0 < out["truth"] < 1.0 and out["temperature"] == bundle_ope.TEMPERATURE
    # the estimate is in the truth's neighbourhood (CTR scale ~0.03; a broken weighting is far off)
    assert abs(snips["estimate"] - out["truth"]) < 0.5 * out["truth"] + 0.01
    saved = json.loads(
        (settings.reports_dir / "ope" / f"date={DAYS[1]}" / "bundle-x.json").read_text()
    )
    assert saved["estimates"]["snips"]["estimate"] == pytest.approx(snips["estimate"])


def test_scorer_gives_unknown_users_the_mean_vector(settings):
    simulate.simulate(settings, 1, "tiny", 5)
    validate_partition(settings, DAYS[0])
    train.train(settings, "two_tower", DAYS[0])
    score, items = bundle_ope.two_tower_scorer(train.artifact_dir(settings, "two_tower", DAYS[0]))
    art = train.load_artifact(settings, "two_tower", DAYS[0])
    known = art.users.ids[:2]
    s = score(np.array([*known, "stranger"], dtype=object), items[:5])
    assert s.shape == (3, 5) and np.isfinite(s).all()
    uvec = art.model.user_embeddings()
    expected = uvec.mean(axis=0) @ art.model.item_embeddings()[:5].T
    np.testing.assert_allclose(s[2], expected, rtol=1e-5)
