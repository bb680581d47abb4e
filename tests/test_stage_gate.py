"""Stage gate decisions: the ranker is left out when it does not lift the retrieval order; new
users get the trending list when it beats the user tower."""

from __future__ import annotations

from pipelines.release.stage_gate import (
    MIN_ESS,
    MIN_FORWARD_USERS,
    _decided,
    decide,
    decide_new_users,
    decide_retrieval_weight,
)
from serving.config import RETRIEVAL_WEIGHTS


def test_ranker_kept_only_when_it_lifts():
    up = decide({"full": 0.05, "retrieval_only": 0.04, "trending": 0.045}, True, "truth")
    assert up["keep_ranker"] and up["decided"] and abs(up["lift"] - 0.25) < 1e-12
    down = decide({"full": 0.038, "retrieval_only": 0.044, "trending": 0.04}, True, "truth")
    assert not down["keep_ranker"] and down["decided"] and "does not lift" in down["reason"]
    small = decide({"full": 0.0441, "retrieval_only": 0.044}, True, "truth", min_lift=0.05)
    assert not small["keep_ranker"]


def test_no_ranker_and_undecidable_cases():
    assert not decide({"full": 0.05, "retrieval_only": 0.04}, False, "truth")["keep_ranker"]
    thin = decide({"full": 0.03, "retrieval_only": 0.05}, True, "ope",
                  ess={"full": MIN_ESS - 1, "retrieval_only": 4000.0})  # fmt: skip
    assert thin["keep_ranker"] and not thin["decided"] and "effective sample size" in thin["reason"]
    enough = decide({"full": 0.03, "retrieval_only": 0.05}, True, "ope",
                    ess={"full": MIN_ESS, "retrieval_only": MIN_ESS})  # fmt: skip
    assert not enough["keep_ranker"] and enough["decided"]
    missing = decide({"full": None, "retrieval_only": 0.05}, True, "ope")
    assert missing["keep_ranker"] and not missing["decided"]


def test_new_users_get_whichever_of_tower_and_trending_wins():
    tower = decide_new_users({"full": 0.066, "new_users_trending": 0.050}, "truth")
    assert tower["new_users"] == "user_tower" and "by truth" in tower["new_users_reason"]
    trend = decide_new_users({"full": 0.3951, "new_users_trending": 0.4006}, "forward",
                             ess={"full": 265.0, "new_users_trending": 265.0})  # fmt: skip
    assert trend["new_users"] == "trending"
    assert decide_new_users({"full": 0.04, "new_users_trending": 0.04}, "truth")["new_users"] == (
        "user_tower"
    )  # a tie keeps the tower


def test_new_users_not_judged_without_a_tower_or_enough_evidence():
    assert decide_new_users({"full": 0.05}, "truth")["new_users"] is None  # no user tower
    few = decide_new_users({"full": 0.2, "new_users_trending": 0.3}, "forward",
                           ess={"full": MIN_FORWARD_USERS - 1, "new_users_trending": 40.0})  # fmt: skip
    assert few["new_users"] is None and "users scored forward" in few["new_users_reason"]
    thin = decide_new_users({"full": 0.02, "new_users_trending": 0.03}, "ope",
                            ess={"full": MIN_ESS - 1, "new_users_trending": MIN_ESS})  # fmt: skip
    assert thin["new_users"] is None and "effective sample size" in thin["new_users_reason"]
    # the ranker decision by forward ranking needs the same evidence
    assert not decide({"full": 0.1, "retrieval_only": 0.2}, True, "forward",
                      ess={"full": 5.0, "retrieval_only": 5.0})["decided"]  # fmt: skip


def test_the_retrieval_weight_is_the_better_order_and_the_ranker_is_judged_in_it():
    w = RETRIEVAL_WEIGHTS[-1]
    sim = decide_retrieval_weight({"full": 0.0589, "ranker_tempered": 0.0620}, "truth")
    assert sim["retrieval_weight"] == w > 0
    real = decide_retrieval_weight({"full": 0.4006, "ranker_tempered": 0.3842}, "forward",
                                   ess={"full": 265.0, "ranker_tempered": 265.0})  # fmt: skip
    assert real["retrieval_weight"] == 0.0
    assert decide_retrieval_weight({"full": 0.05}, "truth")["retrieval_weight"] is None
    thin = decide_retrieval_weight({"full": 0.05, "ranker_tempered": 0.06}, "ope",
                                   ess={"full": 10.0, "ranker_tempered": 10.0})  # fmt: skip
    assert thin["retrieval_weight"] is None
    # the ranker's own order loses to the retrieval order, the tempered one beats it: kept
    out = _decided({"bundle": "3", "date": "2026-01-10", "judged_by": "truth",
                    "values": {"full": 0.0580, "retrieval_only": 0.0585, "trending": 0.04,
                               "ranker_tempered": 0.0620}}, True, None, 0.0)  # fmt: skip
    assert out["retrieval_weight"] == w and out["keep_ranker"] and out["decided"]
    assert "0.0620 vs 0.0585" in out["reason"]
