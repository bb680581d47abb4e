"""Backfill a range of days in one process: the fast path for an imported history.

``backfill(settings, D1, D2)`` does, in order, what the daily DAG does for each day of
``[D1, D2]``, but only the parts that a history needs:

1. **per day** — ``validate`` (:func:`pipelines.data.validate.validate_partition`) and
   ``features`` (:func:`pipelines.features.tables.compute_features`), in date order (each day's
   volume check and 28-day feature window read the days before it);
2. **at each checkpoint** — the last day, and with ``every=N`` also every N-th day after D1:
   ``materialize`` that day's features into Redis (Feast apply + materialize: only checkpoint
   days are materialized, not every day), then train the retrieval models, the FAISS index and
   the ranker through ``T = D - H``, register them and their serving bundle, score them
   forward on the H test days ``D - H + 1 .. D`` (retrieval and ranker) and gate the bundle
   there (:mod:`pipelines.core.forward_window`). Forward evaluation needs models that never saw
   the test days, so the models of a backfill ending on D2 are trained through D2 - H; the
   first bundle that passes the gate's floors becomes ``champion``.
3. **at the end** — the validation Data Docs site is rebuilt once (days are validated without
   it: its rebuild reads every stored result, about half the validation time of a history);
   then the **final refit** (``refit=True``, the default; ``recloop backfill --no-refit`` skips
   it): the champion was trained through ``D2 - H`` so that it could be judged on the H test
   days, and would serve the days after D2 without them. The same configuration is retrained
   through D2 (every ``train_*`` step, the index, the ranker, ``register``) and replaces the
   champion as a **refresh** (:func:`pipelines.release.gate.promote_refit`: the same
   configuration fingerprint, the load and smoke test the service runs; held when the champion
   is pinned, an A/B experiment runs, or the configuration differs). Its quality was judged on
   the test window as the configuration; the refit itself has no held-out day left. Skipped
   when the champion is already trained through D2 (a rerun) or there is no champion. On
   MovieLens 100K (H = 11 days) the served NDCG@10 of the day after D2 went from 0.3673 to
   0.3951 (trending 0.4005; benchmarks/README.md).

**The test window H.** One day of a real history can hold a handful of users (MovieLens 100K's
last days: 6), too few to judge a model on. ``test_days`` sets H: a number, the setting
``settings.gate_test_days`` (``RECLOOP_GATE_TEST_DAYS``, default 1: the daily DAG's
evaluation) when None, or ``"auto"`` — the default of ``recloop backfill --test-days`` — where
each checkpoint takes the smallest H, from ``settings.gate_test_days`` up, whose window has at
least ``min_test_users`` (default :data:`MIN_TEST_USERS`) users the models know
(:func:`pipelines.retrieval.evaluate.test_users_by_window`), keeping at least one day of the
range to train on. On MovieLens 100K ending 1998-03-15 that is 11 days (52 users).

**Resumable and idempotent.** A step is skipped when its outputs are current, judged from the
files (no state of its own): a day's validation when its report says ``passed``, lists the same
raw files and is newer than each of them, and its validated partition exists; a day's features
when both tables exist and are newer than every validated file of their 28-day window; a
checkpoint when its gate decision exists and is newer than every validated file up to the day.
So a rerun of a finished range does nothing new, and a rerun after a failure starts at the
first step not done. A failure raises :class:`BackfillError` naming the day and the step; what
earlier days wrote stays in place.

Calls the same functions the DAG's tasks call (``pipelines.orchestration.tasks`` shows them),
with the same arguments.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pipelines.core import layout, schema
from pipelines.core.settings import Settings
from pipelines.core.validated import validated_files

log = logging.getLogger(__name__)

RETRIEVAL_MODELS = ("mf", "two_tower", "popular", "itemknn")
"""The retrieval models the DAG trains every day (``train_*`` tasks), in its order."""

MIN_TEST_USERS = 50
"""``test_days="auto"``: the fewest users a checkpoint's test window should score (fewer make
NDCG@10 a coin toss: on 6 users one hit moves it by 0.17)."""


@dataclass(frozen=True)
class Step:
    """One step of a backfill: ``status`` is ``ran`` or ``skipped`` (its outputs were current);
    ``seconds`` its wall time; ``detail`` a short human-readable outcome."""

    day: str
    step: str
    status: str
    seconds: float
    detail: str = ""


@dataclass
class BackfillSummary:
    """What a backfill of ``[start, end]`` did: every step in order, the checkpoint days, and the
    registry's ``champion`` bundle version after it (None: no bundle passed the gate)."""

    start: dt.date
    end: dt.date
    checkpoints: list[dt.date]
    steps: list[Step] = field(default_factory=list)
    champion: str | None = None
    test_days: dict[str, int] = field(default_factory=dict)
    """Per checkpoint day (ISO): the test window H it was evaluated and gated with."""

    def ran(self, step: str | None = None) -> list[Step]:
        """The steps that ran (of name ``step`` when given)."""
        return [s for s in self.steps if s.status == "ran" and (step is None or s.step == step)]

    def seconds_by_step(self) -> dict[str, float]:
        """Total seconds per step name, in first-seen order."""
        out: dict[str, float] = {}
        for s in self.steps:
            out[s.step] = out.get(s.step, 0.0) + s.seconds
        return out


class BackfillError(RuntimeError):
    """A step failed: the message names the day and the step; ``summary`` holds what was done
    before (those outputs stay in place)."""

    def __init__(self, day: dt.date, step: str, cause: BaseException, summary: BackfillSummary):
        super().__init__(
            f"backfill stopped at {day} in step {step!r}: {type(cause).__name__}: {cause} "
            f"(days before {day} are done; rerun the same command to resume)"
        )
        self.day = day
        self.step = step
        self.summary = summary


def checkpoint_days(start: dt.date, end: dt.date, every: int | None) -> list[dt.date]:
    """The days a backfill of ``[start, end]`` trains, evaluates and gates on: ``end``, and with
    ``every=N`` also ``start + N, start + 2N, ...`` before it (a checkpoint needs a day before
    it in the range to train on, so ``start`` itself never is one)."""
    days = []
    if every:
        if every < 1:
            raise ValueError(f"--every must be a positive number of days, got {every}")
        d = start + dt.timedelta(days=every)
        while d < end:
            days.append(d)
            d += dt.timedelta(days=every)
    return [*days, end]


def days_in(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    """Every day of ``[start, end]``, in order."""
    d = start
    while d <= end:
        yield d
        d += dt.timedelta(days=1)


# --- is a step's output current? ---------------------------------------------------------------


def _newest_mtime(paths: list[Path]) -> int:
    """The newest modification time of ``paths`` in ns (0 when empty)."""
    return max((p.stat().st_mtime_ns for p in paths), default=0)


def raw_files(settings: Settings, day: dt.date) -> list[Path]:
    """The raw partition's parquet files of ``day`` (``[]`` when it has none)."""
    return sorted(schema.partition_dir(settings.interactions_dir, day).glob("*.parquet"))


def validation_current(settings: Settings, day: dt.date) -> bool:
    """True when ``day`` passed validation on its current raw input: the report says
    ``passed``, lists the same raw file names, is newer than each, and the validated partition
    exists."""
    from pipelines.data.validate import read_validation_report

    report = read_validation_report(settings, day)
    files = raw_files(settings, day)
    if not report or report.get("verdict") != "passed" or not files:
        return False
    if sorted(Path(f).name for f in report.get("files", [])) != [f.name for f in files]:
        return False
    if not validated_files(settings, day, day):
        return False
    report_time = layout.validation_report_path(settings, day).stat().st_mtime_ns
    return report_time >= _newest_mtime(files)


def features_current(settings: Settings, day: dt.date) -> bool:
    """True when both feature tables of ``day`` exist and are newer than every validated file
    of their window ``[day - 27, day]``."""
    from pipelines.features.tables import LOOKBACK_DAYS

    tables = [layout.feature_table_path(settings, e, day) for e in ("user", "item")]
    if not all(t.exists() for t in tables):
        return False
    first = day - dt.timedelta(days=LOOKBACK_DAYS - 1)
    window = validated_files(settings, first, day)
    return min(t.stat().st_mtime_ns for t in tables) >= _newest_mtime(window)


def checkpoint_current(settings: Settings, day: dt.date) -> bool:
    """True when ``day``'s gate decision exists, was made with the test window
    ``settings.gate_test_days`` and is newer than every validated file up to ``day`` (nothing
    the models or the evaluation read has changed since)."""
    from pipelines.core.gate_decisions import read_gate_decision

    path = layout.gate_report_path(settings, day)
    if not path.exists():
        return False
    if (read_gate_decision(settings, day) or {}).get("test_days", 1) != settings.gate_test_days:
        return False
    return path.stat().st_mtime_ns >= _newest_mtime(validated_files(settings, None, day))


def choose_test_days(
    settings: Settings, day: dt.date, start: dt.date, min_users: int = MIN_TEST_USERS
) -> tuple[int, int]:
    """``(H, users)`` for a checkpoint on ``day`` of a backfill from ``start``: the smallest H
    >= ``settings.gate_test_days`` whose test window scores at least ``min_users`` users, with
    at least one day of the range left to train on (H <= ``day - start``); when none does, the
    H with the most such users. Reads the validated positives through ``day``."""
    from pipelines.retrieval.evaluate import test_users_by_window

    lowest = settings.gate_test_days
    top = max((day - start).days, lowest)
    users = test_users_by_window(settings, day, top)
    for h in range(lowest, top + 1):
        if users[h] >= min_users:
            return h, users[h]
    best = max(range(lowest, top + 1), key=lambda h: (users[h], -h))
    log.warning(
        "backfill %s: no test window of %d..%d days holds %d users the models know; "
        "using %d days (%d users)", day, lowest, top, min_users, best, users[best],
    )  # fmt: skip
    return best, users[best]


# --- the steps ---------------------------------------------------------------------------------


def _validate(settings: Settings, day: dt.date) -> str:
    from pipelines.data.validate import validate_partition

    r = validate_partition(settings, day, data_docs=False)
    return f"{r.rows_good}/{r.rows_total} rows good"


def _features(settings: Settings, day: dt.date) -> str:
    from pipelines.features.tables import compute_features

    out = compute_features(settings, day)
    return f"{out['users']} users, {out['items']} items"


def _data_docs(settings: Settings) -> str:
    from pipelines.data.validate import build_data_docs

    return str(build_data_docs(settings))


def _materialize(settings: Settings, day: dt.date) -> str:
    from pipelines.features.store import apply_repo, materialize_date

    apply_repo(settings)
    out = materialize_date(settings, day)
    return "skipped (Redis holds a newer day)" if out["skipped"] else f"{out['rows']} rows"


def checkpoint_steps(
    day: dt.date, test_days: int = 1
) -> list[tuple[str, Callable[[Settings], Any]]]:
    """``(step name, call)`` of the checkpoint on ``day``: the DAG's train/index/ranker/register
    calls for ``day - test_days``, then its evaluate/evaluate_ranker/gate calls for ``day``
    (run them with ``settings.gate_test_days == test_days``)."""
    from pipelines.ranking import evaluate as ranker_eval
    from pipelines.release.gate import daily_gate
    from pipelines.retrieval.evaluate import evaluate_forward

    return [
        *training_steps(day - dt.timedelta(days=test_days)),
        ("evaluate", lambda s: evaluate_forward(s, day)),
        ("evaluate_ranker", lambda s: ranker_eval.evaluate_forward(s, day)),
        ("gate", lambda s: daily_gate(s, day)),
    ]


def training_steps(through: dt.date) -> list[tuple[str, Callable[[Settings], Any]]]:
    """``(step name, call)`` of the DAG's train/index/ranker/register calls for models trained
    through ``through``: ``train_<model>`` for each of :data:`RETRIEVAL_MODELS`, ``build_index``,
    ``train_ranker``, ``register``."""
    from pipelines.ranking.train import train_for_date
    from pipelines.release.register import register_day
    from pipelines.retrieval.index import build_item_index
    from pipelines.retrieval.train import train

    def trainer(name: str) -> Callable[[Settings], Any]:
        return lambda s: train(s, name, through)

    return [
        *((f"train_{name}", trainer(name)) for name in RETRIEVAL_MODELS),
        ("build_index", lambda s: build_item_index(s, through)),
        ("train_ranker", lambda s: train_for_date(s, through)),
        ("register", lambda s: register_day(s, through)),
    ]


def refit_needed(settings: Settings, end: dt.date) -> tuple[bool, str]:
    """``(needed, why)``: the final refit runs when there is a champion trained before ``end``
    (its bundle's ``logical_date``)."""
    from pipelines.release import registry

    champion = registry.get_alias(settings, "champion")
    if champion is None:
        return False, "no champion to refit"
    mv = registry.bundle_version(settings, champion)
    through = (dict(mv.tags) if mv is not None else {}).get("logical_date")
    if through is not None and through >= end.isoformat():
        return False, f"champion {champion} is trained through {through}: up to date"
    return True, f"champion {champion} is trained through {through}: refit through {end}"


def _describe(step: str, out: Any) -> str:
    """A short outcome of a checkpoint step for the final table."""
    if not isinstance(out, dict):
        return ""
    if step in ("register", "refit_register"):
        return f"bundle {out.get('bundle')}"
    if step == "gate":
        return f"{out.get('action')}: bundle {out.get('candidate_version')}"
    if step == "refit_promote":
        return f"{out.get('action')}: bundle {out.get('candidate_version')}"
    if step.endswith("train_ranker") and out.get("trained") is False:
        return "not trained: " + str(out.get("reason", ""))[:60]
    if "train_" in step and "n_users" in out:
        return f"{out['n_users']} users x {out['n_items']} items, {out['n_events']} events"
    if "note" in out:
        return str(out["note"])[:60]
    return ""


# --- the run -----------------------------------------------------------------------------------


class _Runner:
    """Runs and records steps; the first failure becomes a :class:`BackfillError`."""

    def __init__(
        self, settings: Settings, summary: BackfillSummary, bar: Any, min_users: int
    ) -> None:
        self.settings = settings
        self.summary = summary
        self.bar = bar
        self.min_users = min_users

    def step(
        self, day: dt.date, name: str, call: Callable[[Settings], Any], current: bool = False
    ) -> Any:
        """Run ``call(settings)`` as step ``name`` of ``day`` (record ``skipped`` if ``current``)."""
        self.bar.set_postfix_str(f"{day} {name}", refresh=True)
        if current:
            self.summary.steps.append(Step(day.isoformat(), name, "skipped", 0.0, "up to date"))
            return None
        t0 = time.perf_counter()
        try:
            out = call(self.settings)
        except Exception as exc:
            seconds = round(time.perf_counter() - t0, 3)
            self.summary.steps.append(Step(day.isoformat(), name, "failed", seconds, str(exc)))
            raise BackfillError(day, name, exc, self.summary) from exc
        seconds = round(time.perf_counter() - t0, 3)
        detail = out if isinstance(out, str) else _describe(name, out)
        self.summary.steps.append(Step(day.isoformat(), name, "ran", seconds, detail))
        log.info("backfill %s %s: %.2fs %s", day, name, seconds, detail)
        return out

    def no_logs(self, day: dt.date, checkpoint: bool) -> None:
        """Record ``day`` as skipped: its raw partition holds no file (nothing to validate,
        featurize, or score a checkpoint on)."""
        log.warning("backfill %s: no logs (no raw partition), skipped", day)
        for name in ("validate", "features", *(("checkpoint",) if checkpoint else ())):
            self.summary.steps.append(Step(day.isoformat(), name, "skipped", 0.0, "no logs"))

    def checkpoint(self, day: dt.date, test_days: int | str) -> None:
        """Materialize ``day``, then train through ``day - H``, register, evaluate on and gate
        the test window ``day - H + 1 .. day`` (H: ``test_days``, or :func:`choose_test_days`
        for ``"auto"``); skipped as a whole when its gate decision is current."""
        if test_days == "auto":
            h, users = choose_test_days(self.settings, day, self.summary.start, self.min_users)
            log.info("backfill %s: test window %d days (%d users the models know)", day, h, users)
        else:
            h = int(test_days)
        self.summary.test_days[day.isoformat()] = h
        settings = dataclasses.replace(self.settings, gate_test_days=h)
        if checkpoint_current(settings, day):
            self.step(day, "checkpoint", lambda s: None, current=True)
            return
        self.step(day, "materialize", partial(_materialize, day=day))
        for name, call in checkpoint_steps(day, h):
            self.step(day, name, partial(_with_window, call=call, test_days=h))

    def refit(self, day: dt.date) -> None:
        """The final refit (module docstring): the champion's configuration trained through
        ``day`` and promoted as a refresh; recorded as ``refit`` skipped when not needed."""
        from pipelines.release.gate import promote_refit

        needed, why = refit_needed(self.settings, day)
        log.info("backfill %s: %s", day, why)
        if not needed:
            self.summary.steps.append(Step(day.isoformat(), "refit", "skipped", 0.0, why))
            return
        bundle = None
        for name, call in training_steps(day):
            out = self.step(day, f"refit_{name}", call)
            if name == "register":
                bundle = str(out["bundle"])
        self.step(day, "refit_promote", lambda s: promote_refit(s, bundle, day))


def _with_window(settings: Settings, call: Callable[[Settings], Any], test_days: int) -> Any:
    """``call(settings)`` with the test window ``test_days``."""
    return call(dataclasses.replace(settings, gate_test_days=test_days))


def backfill(
    settings: Settings,
    start: str | dt.date,
    end: str | dt.date,
    every: int | None = None,
    progress: bool = True,
    test_days: int | str | None = None,
    min_test_users: int = MIN_TEST_USERS,
    refit: bool = True,
) -> BackfillSummary:
    """Validate and compute features for every day of ``[start, end]``, then train, register,
    evaluate and gate at each checkpoint (:func:`checkpoint_days`); returns what ran.

    ``test_days``: the test window H of each checkpoint (an int >= 1; None:
    ``settings.gate_test_days``), or ``"auto"`` (module docstring: the smallest H from
    ``settings.gate_test_days`` up with ``min_test_users``; ``recloop backfill``'s default).
    ``refit``: retrain the champion's configuration through ``end`` and promote it as a
    refresh (module docstring, step 3).
    ``progress`` shows a bar over the days on a terminal (:mod:`pipelines.core.progress`). Raises :class:`BackfillError`
    (naming the day and the step) on the first failure; ``ValueError`` for a bad range or H.
    """
    from pipelines.core.progress import progress as progress_bar
    from pipelines.release import registry

    first, last = schema.parse_date(start), schema.parse_date(end)
    test_days = settings.gate_test_days if test_days is None else test_days
    if last <= first:
        raise ValueError(
            f"backfill range {first}..{last}: --end must be after --start (a checkpoint "
            "trains on the days before it and is scored on its own day)"
        )
    if test_days != "auto" and not (isinstance(test_days, int) and 1 <= test_days):
        raise ValueError(
            f"--test-days must be a positive number of days or 'auto', got {test_days!r}"
        )
    if test_days != "auto" and test_days > (last - first).days:
        raise ValueError(
            f"--test-days {test_days} leaves no day of {first}..{last} to train on "
            f"(at most {(last - first).days})"
        )
    settings.ensure_dirs()
    checkpoints = checkpoint_days(first, last, every)
    summary = BackfillSummary(first, last, checkpoints)
    days = list(days_in(first, last))
    with progress_bar(days, desc="backfill", unit="day", enabled=progress, leave=True) as bar:
        runner = _Runner(settings, summary, bar, min_test_users)
        for day in bar:
            if not raw_files(settings, day):  # real histories have days without logs
                runner.no_logs(day, day in checkpoints)
                continue
            validated = validation_current(settings, day)
            runner.step(day, "validate", partial(_validate, day=day), validated)
            runner.step(
                day, "features", partial(_features, day=day), features_current(settings, day)
            )
            if day in checkpoints:
                runner.checkpoint(day, test_days)
    if summary.ran("validate"):
        runner.step(last, "data_docs", _data_docs)
    if refit:
        runner.refit(last)
    summary.champion = registry.get_alias(settings, "champion")
    return summary


def format_summary(summary: BackfillSummary) -> str:
    """The final table: per step name, how many days it ran / was skipped and the seconds it
    took; then each checkpoint's steps with their outcome, and the champion."""
    lines = [f"backfill {summary.start}..{summary.end}: {len(summary.steps)} steps"]
    lines.append(f"{'step':<16}{'ran':>6}{'skipped':>9}{'seconds':>10}")
    for name, seconds in summary.seconds_by_step().items():
        of = [s for s in summary.steps if s.step == name]
        ran = sum(s.status == "ran" for s in of)
        skipped = sum(s.status == "skipped" for s in of)
        lines.append(f"{name:<16}{ran:>6}{skipped:>9}{seconds:>10.1f}")
    lines.append(f"{'total':<16}{'':>15}{sum(s.seconds for s in summary.steps):>10.1f}")
    cps = {d.isoformat() for d in summary.checkpoints}
    for s in summary.steps:
        if s.day in cps and s.step not in ("validate", "features", "data_docs"):
            lines.append(f"  {s.day} {s.step:<16}{s.status:<8}{s.seconds:>8.1f}s  {s.detail}")
    for day, h in summary.test_days.items():
        first = dt.date.fromisoformat(day) - dt.timedelta(days=h - 1)
        lines.append(f"  {day} test window: {h} days ({first}..{day})")
    lines.append(f"champion: bundle {summary.champion or 'none'}")
    return "\n".join(lines)
