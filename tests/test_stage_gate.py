"""Stage gate decision: the ranker is left out when it does not lift the retrieval order."""

from __future__ import annotations

from pipelines.release.stage_gate import MIN_ESS, decide


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
