"""``recloop backfill``: every day validated and featurized, models trained once at the end, a
champion; a rerun does nothing new; a corrupt day stops the run naming the day and the step."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from pipelines.core import layout, schema
from pipelines.data import simulate
from pipelines.orchestration.backfill import (
    BackfillError,
    backfill,
    checkpoint_days,
    format_summary,
)
from pipelines.release import registry

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


@pytest.fixture()
def workspace(redis_settings, mlflow_settings):
    """A tiny simulated workspace of :data:`DAYS` on the session's Redis, MLflow migrated."""
    simulate.simulate(redis_settings, len(DAYS), "tiny", 7)
    return redis_settings


def _model_dates(settings, name: str) -> list[str]:
    folder = layout.models_dir(settings, name)
    return sorted(p.name for p in folder.glob("date=*")) if folder.exists() else []


def test_checkpoint_days():
    d = dt.date(2026, 1, 1)
    assert checkpoint_days(d, d + dt.timedelta(days=9), None) == [d + dt.timedelta(days=9)]
    got = checkpoint_days(d, d + dt.timedelta(days=9), 4)
    assert got == [d + dt.timedelta(days=n) for n in (4, 8, 9)]
    with pytest.raises(ValueError, match="--every"):
        checkpoint_days(d, d + dt.timedelta(days=3), -1)


def test_train_from_date_param_skips_earlier_runs_only():
    from airflow.sdk.exceptions import AirflowSkipException

    from pipelines.orchestration import tasks

    tasks.skip_before_train_from("2026-01-01", None)  # default: nothing skipped
    tasks.skip_before_train_from("2026-01-01", {"train_from_date": ""})
    tasks.skip_before_train_from("2026-01-03", {"train_from_date": "2026-01-03"})
    with pytest.raises(AirflowSkipException, match="2026-01-02 is before"):
        tasks.skip_before_train_from("2026-01-02", {"train_from_date": "2026-01-03"})
    with pytest.raises(ValueError, match="train_from_date"):
        tasks.skip_before_train_from("2026-01-02", {"train_from_date": "soon"})


def test_backfill_trains_once_gates_a_champion_and_a_rerun_does_nothing(workspace):
    from pipelines.release.gate import read_decision

    s = workspace
    summary = backfill(s, DAYS[0], DAYS[-1], progress=False)

    assert [x.day for x in summary.ran("validate")] == DAYS
    assert [x.day for x in summary.ran("features")] == DAYS
    for day in DAYS:
        assert layout.feature_table_path(s, "user", day).exists()
    # trained once, through the day before the last (scored forward on the last), then gated
    assert len(summary.ran("train_mf")) == 1 and len(summary.ran("train_two_tower")) == 1
    gated = read_decision(s, DAYS[-1])
    assert gated["action"] == "champion", gated["reason"]
    assert layout.gate_report_path(s, DAYS[-1]).exists()
    # then the final refit: the same configuration through the last day replaces it (a refresh)
    assert len(summary.ran("refit_train_mf")) == 1 and len(summary.ran("refit_promote")) == 1
    assert _model_dates(s, "mf") == [f"date={DAYS[-2]}", f"date={DAYS[-1]}"]
    assert _model_dates(s, "two_tower") == [f"date={DAYS[-2]}", f"date={DAYS[-1]}"]
    assert summary.champion is not None and summary.champion != gated["candidate_version"]
    assert registry.get_alias(s, "champion") == summary.champion
    tags = registry.bundle_version(s, summary.champion).tags
    assert tags["logical_date"] == DAYS[-1]
    assert tags["recloop.refreshed_from"] == gated["candidate_version"]
    table = format_summary(summary)
    assert "train_mf" in table and f"champion: bundle {summary.champion}" in table
    assert "refit_promote" in table and "champion: bundle" in table

    again = backfill(s, DAYS[0], DAYS[-1], progress=False)
    assert again.ran() == []
    assert {x.step for x in again.steps} == {"validate", "features", "checkpoint", "refit"}
    (refit,) = [x for x in again.steps if x.step == "refit"]
    assert "up to date" in refit.detail
    assert again.champion == summary.champion
    assert _model_dates(s, "mf") == [f"date={DAYS[-2]}", f"date={DAYS[-1]}"]


def test_refit_is_held_when_the_champion_is_pinned(workspace):
    """A pinned champion stays: the refit is trained and registered but held, and says why."""
    from pipelines.release.operations import release

    s = workspace
    first = backfill(s, DAYS[0], DAYS[-1], progress=False, refit=False)
    assert first.ran("refit_promote") == [] and first.champion is not None
    release(s, "pin", first.champion, "freeze for the test", "tester")

    summary = backfill(s, DAYS[0], DAYS[-1], progress=False)
    (promote,) = summary.ran("refit_promote")
    assert promote.detail.startswith("held"), promote.detail
    assert registry.get_alias(s, "champion") == first.champion == summary.champion


def test_a_corrupt_day_stops_the_backfill_naming_the_day_and_leaves_earlier_days(workspace):
    s = workspace
    bad = schema.partition_dir(s.interactions_dir, dt.date.fromisoformat(DAYS[1]))
    (bad / "part-zz.parquet").write_bytes(b"this is not parquet")

    with pytest.raises(BackfillError) as info:
        backfill(s, DAYS[0], DAYS[-1], progress=False)
    err = info.value
    assert err.day == dt.date.fromisoformat(DAYS[1]) and err.step == "validate"
    assert DAYS[1] in str(err) and "validate" in str(err)
    assert [x.day for x in err.summary.ran("features")] == [DAYS[0]]
    assert layout.feature_table_path(s, "user", DAYS[0]).exists()
    assert list(layout.validated_partition(s, DAYS[0]).glob("*.parquet"))
    assert not layout.validated_partition(s, DAYS[1]).exists()
    assert _model_dates(s, "mf") == []


def _write_ratings(path, days: int, users: int = 30, items: int = 60, per_day: int = 4) -> None:
    """A MovieLens ``u.data`` (user, item, rating, unix seconds; tab-separated) of ``days`` days
    from 2026-01-01: two taste clusters (user % 2 rates items of its parity, the lower ids more
    often), and two users who appear only on the last day."""
    rng = np.random.default_rng(3)
    start = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())
    lines = []
    for day in range(days):
        active = list(range(1, users + 1)) + ([users + 1, users + 2] if day == days - 1 else [])
        for u in active:
            liked = [i for i in range(1, items + 1) if i % 2 == u % 2]
            weights = 1.0 / np.arange(1, len(liked) + 1)  # a popularity skew, as real logs have
            for i in rng.choice(liked, size=per_day, replace=False, p=weights / weights.sum()):
                ts = start + day * 86400 + int(rng.integers(0, 86000))
                lines.append(f"{u}\t{i}\t{int(rng.integers(3, 6))}\t{ts}")
    path.write_text("\n".join(lines) + "\n")


def test_ratings_only_log_ingest_backfill_recommend_every_user(redis_settings, mlflow_settings):
    """A log of ratings (no impressions): ingest → backfill → a bundle → every user served."""
    from pipelines.data.ingest import import_movielens
    from pipelines.retrieval.predict import recommend

    s = redis_settings
    u_data = s.home / "u.data"
    _write_ratings(u_data, days=5)
    import_movielens(s, u_data)
    summary = backfill(s, "2026-01-01", "2026-01-05", progress=False)

    assert len(summary.ran("validate")) == 5 and len(summary.ran("register")) == 1
    assert summary.champion is not None
    users = [str(u) for u in range(1, 33)]
    recs = recommend(s, "mf", 5, users)
    assert set(recs["user_id"]) == set(users)
    assert (recs.groupby("user_id").size() == 5).all()
    from pipelines.release.gate import read_decision
    from pipelines.release.register import read_judgement

    # the stage gate judged the checkpoint bundle (through day 4) by forward ranking on day 5's
    # ratings: the ranker and the new-user policy; the refit (no day after it) inherits the latter
    checkpoint = read_decision(s, "2026-01-05")["candidate_version"]
    tags = registry.bundle_version(s, checkpoint).tags
    judged = read_judgement(tags)
    assert judged["judged_by"] == "forward" and judged["decided"], judged
    assert judged["forward_users"]["full"] == 32  # the 32 users who rated on day 5
    values = judged["values"]
    assert judged["keep_ranker"] == (values["full"] > values["retrieval_only"])
    choice = "trending" if values["new_users_trending"] > values["full"] else "user_tower"
    assert judged["new_users"] == choice == tags[registry.NEW_USERS_TAG]
    weight = 0.3 if values["ranker_tempered"] > values["full"] else 0.0
    assert judged["retrieval_weight"] == weight == float(tags[registry.RETRIEVAL_WEIGHT_TAG])
    refit = registry.bundle_version(s, summary.champion).tags
    assert read_judgement(refit)["judged_by"] is None  # nothing after the last day to judge on
    assert refit[registry.NEW_USERS_TAG] == choice
    assert refit["recloop.new_users_from"] == f"champion {checkpoint}"
    assert float(refit[registry.RETRIEVAL_WEIGHT_TAG]) == weight


def test_backfill_with_a_test_window_trains_before_it_and_gates_on_it(workspace):
    """--test-days 2: trained through D2 − 2, evaluated and gated on the last two days; a
    rerun with another window is not "current"."""
    from pipelines.core.eval_reports import read_eval_report
    from pipelines.release.gate import read_decision

    s = workspace
    summary = backfill(s, DAYS[0], DAYS[-1], progress=False, test_days=2, refit=False)
    assert summary.test_days == {DAYS[-1]: 2}
    assert _model_dates(s, "mf") == [f"date={DAYS[0]}"]
    report = read_eval_report(s, DAYS[-1])
    assert report["trained_through"] == DAYS[0] and report["test_window"] == DAYS[1:]
    decision = read_decision(s, DAYS[-1])
    assert decision["test_days"] == 2 and decision["test_window"] == DAYS[1:]
    assert summary.champion is not None and decision["candidate_version"] == summary.champion
    assert "test window: 2 days" in format_summary(summary)

    daily = backfill(s, DAYS[0], DAYS[-1], progress=False, test_days=1, refit=False)
    assert len(daily.ran("train_mf")) == 1 and daily.ran("validate") == []
    assert _model_dates(s, "mf") == [f"date={DAYS[0]}", f"date={DAYS[1]}"]
    with pytest.raises(ValueError, match="no day"):
        backfill(s, DAYS[0], DAYS[-1], progress=False, test_days=3)
