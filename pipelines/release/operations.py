"""Release operations an operator starts by hand: promote, roll back, pin and unpin the champion.

One entry point, :func:`release`, behind three front ends that share it: the ``recloop_release``
DAG (``dags/recloop_release.py``, triggered from the Airflow UI with params ``action``,
``version``, ``reason``, ``operator``), ``recloop release`` (``pipelines/commands/release.py``)
and the tests. Each operation runs the same checks and the same compare-and-set alias move as the
automatic path (:func:`pipelines.release.registry.promote` under the registry lock), refuses what
those checks refuse (:class:`ReleaseRefused`, a ``RuntimeError`` whose message says why), and
records every attempt, refused or done, as a run of the MLflow experiment ``recloop-release``
(:data:`RELEASE_EXPERIMENT`; params ``action``, ``version``, ``reason``, ``operator``,
``previous_champion``, ``champion``, ``outcome``; tags ``recloop.action``, ``recloop.operator``,
``recloop.outcome``).

**Actions** (``version``: a ``serving_bundle`` version number):

=============  ================================================================================
``promote``    ``champion`` → ``version``. Refused when the version is not registered, when its
               newest gate decision (``reports/gates/date=D.json`` whose ``candidate_version`` is
               it) did not pass or there is none (never gated), when the newest A/B decision of
               an experiment with it as challenger rolled it back, when the bundle fails
               ``registry.load_bundle`` (pins and artifact hashes, ``check_bundle``) or the
               service's load + smoke test (``serving.bundle.load``, ``smoke_score``), when the
               champion is pinned to another version, or when the champion moved while this ran
               (compare-and-set). A promoted version that was the ``challenger`` has its
               challenger alias cleared (its experiment ends, as an A/B promotion does).
``rollback``   ``champion`` → the previous champion (or ``version`` when given, which must have
               been champion before). **The previous champion** is read from the version tags
               the registry keeps: every move through ``registry.promote`` stamps
               ``promoted_champion_at`` on the version, and a rollback stamps
               ``rolled_back_at`` on the version it leaves; the previous champion is the version
               other than the current one with the newest ``promoted_champion_at`` that has not
               been rolled back since. So repeated rollbacks walk back through the history (a
               stack), and a version that was rolled back is not returned to by the next one.
               The same load checks as ``promote``; the gate decision is not re-asked (the
               version served as champion). Refused while pinned.
``pin``        the champion is fixed at ``version`` (default: the current champion; another
               version is first promoted with every ``promote`` check) until ``unpin``: the
               daily gate (:func:`pipelines.release.gate.gate_day`) and the A/B promotion
               (:func:`pipelines.experiments.ab.analyze`) leave the champion where it is while a
               pin is set (an A/B experiment keeps running; its promotion waits for ``unpin``),
               and ``promote`` / ``rollback`` of another version are refused. The pin is a tag of
               the registered model ``serving_bundle`` (:data:`PIN_TAG` = the version,
               :data:`PIN_BY_TAG`, :data:`PIN_REASON_TAG`): the MLflow UI shows it on the model's
               page.
``unpin``      removes the pin (``version`` ignored); refused when nothing is pinned.
=============  ================================================================================

The daily gate's automatic **refresh** of the champion (the same configuration retrained on newer
data, :func:`pipelines.release.gate.gate_day`) moves the alias through the same
``registry.promote`` and is recorded in ``recloop-release`` too (action ``refresh``, operator
``gate``, :func:`record_refresh`), so the experiment lists every champion move; a pin holds it.

Moving the ``champion`` alias by hand in the MLflow UI bypasses these checks; the service still
refuses a bundle that fails to load or smoke-score and keeps serving the old one
(``serving.bundle.BundleManager``). A pin and an automatic promotion that start in the same
instant can race (the pin is read just before the compare-and-set, not under the same lock).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

RELEASE_EXPERIMENT = "recloop-release"
ACTIONS = ("promote", "rollback", "pin", "unpin")
PIN_TAG = "recloop.pinned_champion"
PIN_BY_TAG = "recloop.pinned_by"
PIN_REASON_TAG = "recloop.pinned_reason"
PROMOTED_TAG = "promoted_champion_at"
"""The version tag ``registry.promote`` stamps when it moves ``champion`` (ISO UTC time)."""
ROLLED_BACK_TAG = "rolled_back_at"
"""The version tag a rollback stamps on the champion it replaces (ISO UTC time)."""
PASSED_ACTIONS = ("champion", "challenger", "held", "already_champion")

LoadCheck = Callable[[Settings, str], None]


class ReleaseRefused(RuntimeError):
    """An operation the release checks refuse; the message says which check and why."""


@dataclass
class ReleaseResult:
    """What one operation did: JSON-able through :meth:`to_dict` (the DAG task's XCom)."""

    action: str
    version: str | None
    reason: str
    operator: str
    previous_champion: str | None
    champion: str | None = None
    pinned: str | None = None
    outcome: str = "done"
    notes: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- reading the registry ---------------------------------------------------------------------


def normalize_version(version: str | int | None) -> str | None:
    """``"7"`` for 7, ``" 7 "`` or ``"v7"``; None for None or blank; ``ValueError`` otherwise."""
    if version is None or (isinstance(version, str) and not version.strip()):
        return None
    text = str(version).strip().removeprefix("v")
    if not text.isdigit():
        raise ValueError(f"version {version!r}: expected a serving_bundle version number")
    return str(int(text))


def pinned_champion(settings: Settings) -> dict[str, str] | None:
    """``{"version", "by", "reason"}`` of the champion pin (registered-model tags of
    ``serving_bundle``), or None when the champion is not pinned (or the model does not exist)."""
    from mlflow.exceptions import MlflowException

    from pipelines.release import registry

    try:
        tags = registry.client(settings).get_registered_model(registry.BUNDLE).tags or {}
    except MlflowException:
        return None
    if not tags.get(PIN_TAG):
        return None
    return {
        "version": tags[PIN_TAG],
        "by": tags.get(PIN_BY_TAG, ""),
        "reason": tags.get(PIN_REASON_TAG, ""),
    }


def pin_note(pin: Mapping[str, str]) -> str:
    """One line naming a pin, for refusals and decisions: version, who, why, how to lift it."""
    return (
        f"champion pinned to version {pin['version']} by {pin.get('by') or '?'} "
        f"({pin.get('reason') or 'no reason'}); `recloop release --action unpin` lifts it"
    )


def newest_gate_decision(settings: Settings, version: str) -> dict[str, Any] | None:
    """The newest recorded gate decision (``reports/gates/``) whose candidate is ``version``."""
    from pipelines.core.gate_decisions import gate_decision_dates, read_gate_decision

    for day in reversed(gate_decision_dates(settings)):
        record = read_gate_decision(settings, day)
        if record is not None and str(record.get("candidate_version")) == version:
            return record
    return None


def ab_rollback(settings: Settings, version: str) -> dict[str, Any] | None:
    """The newest A/B decision that rolled back ``version`` as a challenger, when that is the
    last word on it (a later decision on it that is not a rollback clears it); else None."""
    from pipelines.core.ab_decisions import ab_decision_dates, ab_experiments, read_ab_decision

    newest: dict[str, Any] | None = None
    for experiment in ab_experiments(settings):
        if not experiment.endswith(f"-vs-{version}"):
            continue
        for day in ab_decision_dates(settings, experiment):
            record = read_ab_decision(settings, experiment, day)
            if record is not None and (newest is None or record["date"] >= newest["date"]):
                newest = record
    return newest if newest is not None and newest.get("action") == "rollback" else None


def previous_champion(settings: Settings, current: str | None) -> str | None:
    """The version to roll back to from ``current`` (module docstring): newest
    ``promoted_champion_at`` among the other bundle versions not rolled back since; or None."""
    from pipelines.release import registry

    best: tuple[str, int] | None = None
    for mv in registry.find_versions(settings, registry.BUNDLE):
        promoted = mv.tags.get(PROMOTED_TAG)
        if str(mv.version) == current or not promoted:
            continue
        if mv.tags.get(ROLLED_BACK_TAG, "") > promoted:
            continue
        key = (promoted, int(mv.version))
        if best is None or key > best:
            best = key
    return None if best is None else str(best[1])


# --- checks -----------------------------------------------------------------------------------


def check_loads(settings: Settings, version: str) -> None:
    """What the service does before it swaps a bundle in: ``registry.load_bundle`` (pins, hashes),
    ``serving.bundle.load`` and ``smoke_score``; :class:`ReleaseRefused` with the error."""
    from pipelines.release import registry
    from serving.bundle import load, smoke_score

    try:
        registry.load_bundle(settings, version)
        smoke_score(load(settings, version))
    except Exception as exc:  # noqa: BLE001 - any failure refuses the bundle, named
        raise ReleaseRefused(
            f"bundle version {version} fails the load and smoke test the service runs: {exc}"
        ) from exc


def check_gated(settings: Settings, version: str) -> str:
    """:class:`ReleaseRefused` unless ``version``'s newest gate decision passed and no A/B
    experiment rolled it back; the passing decision's date and action as a note."""
    decision = newest_gate_decision(settings, version)
    if decision is None:
        raise ReleaseRefused(
            f"bundle version {version} has no gate decision (reports/gates/): it was never "
            "gated; the daily DAG's gate task gates it"
        )
    if decision.get("action") not in PASSED_ACTIONS:
        raise ReleaseRefused(
            f"bundle version {version} was {decision.get('action')} by the gate of "
            f"{decision.get('date')}: {decision.get('reason')}"
        )
    rolled = ab_rollback(settings, version)
    if rolled is not None:
        raise ReleaseRefused(
            f"bundle version {version} was rolled back by A/B experiment "
            f"{rolled.get('experiment')} on {rolled.get('date')}: {rolled.get('reason')}"
        )
    return f"gate of {decision.get('date')}: {decision.get('action')}"


def _check_registered(settings: Settings, version: str) -> None:
    from pipelines.release import registry

    if registry.bundle_version(settings, version) is None:
        raise ReleaseRefused(f"serving_bundle version {version} is not registered")


def _check_not_pinned(settings: Settings, version: str) -> None:
    pin = pinned_champion(settings)
    if pin is not None and pin["version"] != version:
        raise ReleaseRefused(pin_note(pin))


def _move_champion(settings: Settings, version: str, current: str | None) -> list[str]:
    """Compare-and-set ``champion`` from ``current`` to ``version``; clear ``challenger`` when
    it pointed at ``version``. :class:`ReleaseRefused` when the champion moved meanwhile."""
    from pipelines.release import registry

    if current == version:
        return [f"champion already version {version}"]
    if not registry.promote(settings, version, "champion", expected=current):
        now = registry.get_alias(settings, "champion")
        raise ReleaseRefused(f"champion moved to version {now} meanwhile (expected {current})")
    notes = [f"champion {current} -> {version}"]
    with registry.registry_lock(settings):
        if registry.get_alias(settings, "challenger") == version:
            registry.client(settings).delete_registered_model_alias(registry.BUNDLE, "challenger")
            notes.append(f"challenger alias (version {version}) cleared: its experiment ends")
    return notes


# --- the operations ---------------------------------------------------------------------------


def _promote(settings: Settings, res: ReleaseResult, load_check: LoadCheck) -> None:
    if res.version is None:
        raise ValueError("promote needs a version")
    _check_registered(settings, res.version)
    _check_not_pinned(settings, res.version)
    if res.version != res.previous_champion:
        res.notes.append(check_gated(settings, res.version))
        load_check(settings, res.version)
    res.notes += _move_champion(settings, res.version, res.previous_champion)


def _rollback(settings: Settings, res: ReleaseResult, load_check: LoadCheck) -> None:
    from pipelines.release import registry

    current = res.previous_champion
    if current is None:
        raise ReleaseRefused("no champion to roll back")
    pin = pinned_champion(settings)
    if pin is not None:
        raise ReleaseRefused(pin_note(pin))
    target = res.version or previous_champion(settings, current)
    if target is None:
        raise ReleaseRefused(f"no previous champion to roll back to from version {current}")
    _check_registered(settings, target)
    mv = registry.bundle_version(settings, target)
    if target == current or not mv.tags.get(PROMOTED_TAG):
        raise ReleaseRefused(f"bundle version {target} was never champion before {current}")
    res.version = target
    load_check(settings, target)
    res.notes += _move_champion(settings, target, current)
    registry.client(settings).set_model_version_tag(
        registry.BUNDLE, current, ROLLED_BACK_TAG, dt.datetime.now(dt.UTC).isoformat()
    )


def _pin(settings: Settings, res: ReleaseResult, load_check: LoadCheck) -> None:
    from pipelines.release import registry

    res.version = res.version or res.previous_champion
    if res.version is None:
        raise ReleaseRefused("no champion to pin: give a version")
    _promote(settings, res, load_check)
    with registry.registry_lock(settings):
        c = registry.client(settings)
        c.set_registered_model_tag(registry.BUNDLE, PIN_TAG, res.version)
        c.set_registered_model_tag(registry.BUNDLE, PIN_BY_TAG, res.operator)
        c.set_registered_model_tag(registry.BUNDLE, PIN_REASON_TAG, res.reason[:5000])
    res.notes.append(f"champion pinned to version {res.version}")


def _unpin(settings: Settings, res: ReleaseResult, load_check: LoadCheck) -> None:
    from pipelines.release import registry

    pin = pinned_champion(settings)
    if pin is None:
        raise ReleaseRefused("the champion is not pinned")
    with registry.registry_lock(settings):
        c = registry.client(settings)
        for tag in (PIN_TAG, PIN_BY_TAG, PIN_REASON_TAG):
            c.delete_registered_model_tag(registry.BUNDLE, tag)
    res.version = pin["version"]
    res.notes.append(f"pin of version {pin['version']} ({pin.get('reason')}) lifted")


_OPERATIONS: dict[str, Callable[[Settings, ReleaseResult, LoadCheck], None]] = {
    "promote": _promote,
    "rollback": _rollback,
    "pin": _pin,
    "unpin": _unpin,
}


def _record(settings: Settings, res: ReleaseResult) -> str:
    """Log the attempt as a run of ``recloop-release``; its run id."""
    from pipelines.release import registry

    params = {
        "action": res.action,
        "version": res.version,
        "reason": res.reason,
        "operator": res.operator,
        "previous_champion": res.previous_champion,
        "champion": res.champion,
        "pinned": res.pinned,
        "outcome": res.outcome,
        "notes": "; ".join(res.notes),
    }
    tags = {
        "recloop.action": res.action,
        "recloop.operator": res.operator,
        "recloop.outcome": "refused" if res.outcome.startswith("refused") else "done",
        "mlflow.note.content": res.reason,
    }
    name = f"{res.action}-v{res.version}" if res.version else res.action
    return registry.log_run(settings, RELEASE_EXPERIMENT, name, params, {}, tags)


def record_refresh(settings: Settings, version: str, previous: str | None, reason: str) -> str:
    """Record the daily gate's refresh of the champion (``previous`` -> ``version``, the same
    configuration retrained; :func:`pipelines.release.gate.gate_day`) as a run of
    ``recloop-release`` with action ``refresh`` and operator ``gate``, beside the operators'
    moves; its run id. (The move itself stamps ``promoted_champion_at``: a rollback returns to
    ``previous``.)"""
    res = ReleaseResult(
        "refresh", version, reason, "gate", previous, champion=version,
        notes=[f"champion {previous} -> {version} (refresh)"],
    )  # fmt: skip
    pin = pinned_champion(settings)
    res.pinned = pin["version"] if pin else None
    return _record(settings, res)


def release(
    settings: Settings,
    action: str,
    version: str | int | None,
    reason: str,
    operator: str,
    load_check: LoadCheck = check_loads,
) -> dict[str, Any]:
    """Run one release ``action`` (module docstring) on ``serving_bundle`` ``version``; every
    attempt is recorded in MLflow (``recloop-release``). Returns :class:`ReleaseResult` as a dict.

    ``reason`` (non-empty) and ``operator`` say why and who. ``load_check(settings, version)``:
    the load and smoke test (default :func:`check_loads`; tests of the other checks swap it).
    Raises :class:`ReleaseRefused` (after recording it) when a check refuses, ``ValueError`` on
    an unknown action, a blank reason or a version that is not a number.
    """
    from pipelines.release import registry

    if action not in ACTIONS:
        raise ValueError(f"action {action!r}: expected one of {ACTIONS}")
    if not str(reason or "").strip():
        raise ValueError("a release needs a reason (who asked, what for)")
    res = ReleaseResult(
        action, normalize_version(version), str(reason).strip(), str(operator or "unknown"),
        registry.get_alias(settings, "champion"),
    )  # fmt: skip
    try:
        _OPERATIONS[action](settings, res, load_check)
    except ReleaseRefused as exc:
        res.outcome = f"refused: {exc}"
        res.champion = registry.get_alias(settings, "champion")
        res.mlflow_run_id = _record(settings, res)
        log.error("release %s of version %s refused: %s", action, res.version, exc)
        raise
    res.champion = registry.get_alias(settings, "champion")
    pin = pinned_champion(settings)
    res.pinned = pin["version"] if pin else None
    res.mlflow_run_id = _record(settings, res)
    log.info(
        "release %s by %s (%s): champion %s -> %s; %s",
        action, res.operator, res.reason, res.previous_champion, res.champion, "; ".join(res.notes),
    )  # fmt: skip
    return res.to_dict()


def release_task(params: Mapping[str, Any] | None, triggered_by: str | None) -> dict[str, Any]:
    """The ``recloop_release`` DAG's task: :func:`release` with the run's params (``action``,
    ``version``, ``reason``, ``operator``; an empty ``operator`` falls back to the user who
    triggered the run). A refusal or bad input fails the task without retries
    (``AirflowFailException`` carrying the reason into the task log)."""
    from airflow.sdk.exceptions import AirflowFailException

    p = dict(params or {})
    operator = str(p.get("operator") or triggered_by or "airflow")
    settings = Settings.from_env()
    settings.ensure_dirs()
    try:
        return release(settings, str(p.get("action")), p.get("version"), p.get("reason") or "",
                       operator)  # fmt: skip
    except (ReleaseRefused, ValueError) as exc:
        raise AirflowFailException(f"release refused: {exc}") from exc
