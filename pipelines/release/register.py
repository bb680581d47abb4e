"""The ``register`` task: track and register in MLflow what was trained through logical date D
(``mf``, ``two_tower``, its FAISS index, the ranker) and the ``serving_bundle`` pinning a
consistent set of them. Idempotent: a rerun on the same data registers nothing new.

**Configuration fingerprint.** The bundle records the configuration of everything trained
through D (:mod:`pipelines.release.fingerprint`: the MF, two-tower, index and the *trained* ranker,
kept or not, minus data-dependent fields; the feature service; the training settings): the gate
tells a refresh of the champion from a change by it.

**Stage gate.** A bundle with a ranker is first registered with it, loaded as the service loads
it (``serving.bundle.load``) and judged by :func:`pipelines.release.stage_gate.judge_stages`
(``(settings, loaded bundle, D) -> {"keep_ranker": bool, "full": .., "retrieval_only": ..,
"trending": .., ...}``: its full ranked slate against its retrieval order and trending). When
``keep_ranker`` is False the same set is registered again without the ranker (retrieval order
serves) and that bundle is the day's: the gate judges the newest bundle of a date. The first one
is tagged ``recloop.superseded_by``; the served one carries the judgement (version tag
:data:`STAGE_TAG`, JSON) and ``recloop.ranker_left_out`` (the ranker version), which the gate
decision repeats. A stage gate that cannot be imported, fails or answers without ``keep_ranker``
is logged and the ranker is kept: the register task never fails on it. A rerun reuses the
judgement recorded on the first bundle.

**Serving choices.** The served bundle is tagged ``recloop.new_users`` (``trending`` /
``user_tower``: how users it has no vector for are served) and ``recloop.retrieval_weight`` (how
much the retrieval order tempers the ranker's) with the stage gate's choices, or — not judged, as
for the final refit of a backfill — the champion's when the bundle is a refresh of it
(:func:`gate_choice`); the service follows them under ``RECLOOP_SERVE_NEW_USERS=auto`` and
``RECLOOP_SERVE_RETRIEVAL_WEIGHT=auto``.

The MLflow calls themselves (runs, registered versions, bundles, aliases) are
:mod:`pipelines.release.registry`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.core import layout, schema
from pipelines.core.artifact_meta import artifact_meta_path
from pipelines.core.settings import Settings
from pipelines.release import fingerprint, registry

log = logging.getLogger(__name__)

STAGE_TAG = "recloop.stage_gate"
"""Bundle version tag: the stage gate's judgement (JSON, at most :data:`STAGE_TAG_MAX` chars)."""
STAGE_TAG_MAX = 5000
LEFT_OUT_TAG = "recloop.ranker_left_out"
SUPERSEDED_TAG = "recloop.superseded_by"
NEW_USERS_FROM_TAG = "recloop.new_users_from"
"""Bundle version tag: where its ``recloop.new_users`` came from (``stage gate``, ``champion N``)."""
RETRIEVAL_WEIGHT_FROM_TAG = "recloop.retrieval_weight_from"
"""Bundle version tag: where its ``recloop.retrieval_weight`` came from."""


def _artifact_meta(folder: Path) -> dict[str, Any]:
    """The artifact's ``meta.json`` (empty when it has none); :class:`BundleError
    <pipelines.release.registry.BundleError>` naming the file when it is unreadable."""
    path = artifact_meta_path(folder)
    return registry.artifact_meta(folder) if path.exists() else {}


def _scalars(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) and k != "path"}


def register_day(
    settings: Settings,
    date: str | dt.date,
    *,
    feature_service: str = "serving_v1",
    ranker_path: Path | None = None,
    stage_gate: bool = True,
) -> dict[str, Any]:
    """The one call the DAG's register task makes for logical date D: track and register the
    artifacts trained through D (``mf`` if present, ``two_tower``, its index, the ranker if
    present: ``ranker_path`` or ``artifacts/models/ranker/date=D``) and the serving bundle pinning
    them, the ranker left out when the stage gate says so (module docstring; ``stage_gate=False``
    skips the judgement). Idempotent (a rerun on the same data registers nothing new). Returns
    JSON-able ``{mf, two_tower, index, ranker: track_component results or None, bundle: the
    served version, config_fingerprint, stage_gate: judgement or None, bundle_with_ranker: the
    version left behind (only when the ranker was left out)}``.
    """
    from pipelines.retrieval.faiss_index import index_dir
    from pipelines.retrieval.train import artifact_dir

    day = schema.parse_date(date)
    out: dict[str, Any] = {"logical_date": day.isoformat()}

    def track(component: str, folder: Path, service: str | None, key: str | None, **kw: Any):
        meta = _artifact_meta(folder)
        window = meta.get("window_days")
        first = day - dt.timedelta(days=int(window) - 1) if window else None
        params = {k: v for k, v in _scalars(meta).items() if not isinstance(v, float)}
        metrics = {k: v for k, v in _scalars(meta).items() if isinstance(v, float | int)}
        return registry.track_component(
            settings, component, day, folder, params=params, metrics=metrics,
            window_first=first, feature_service=service, version_key=key, **kw,
        )  # fmt: skip

    mf = artifact_dir(settings, "mf", day)
    out["mf"] = track("mf", mf, None, _artifact_meta(mf).get("version")) if mf.exists() else None
    tt = artifact_dir(settings, "two_tower", day)
    if not tt.exists():
        raise FileNotFoundError(f"no two-tower artifact for {day} at {tt}: train it first")
    tt_version = _artifact_meta(tt).get("version") or f"two_tower-{day.isoformat()}"
    out["two_tower"] = track("two_tower", tt, "two_tower_v1", tt_version)
    idx = index_dir(layout.indexes_dir(settings), tt_version)
    if not idx.exists():
        raise FileNotFoundError(f"no index built from {tt_version} at {idx}: build it first")
    out["index"] = track("index", idx, None, tt_version, built_from=tt)
    rk = Path(ranker_path) if ranker_path else artifact_dir(settings, "ranker", day)
    out["ranker"] = (
        track("ranker", rk, "ranker_v1", _artifact_meta(rk).get("version")) if rk.exists() else None
    )
    folders = {"mf": mf if out["mf"] else None, "two_tower": tt, "index": idx,
               "ranker": rk if out["ranker"] else None}  # fmt: skip
    config = fingerprint.configuration(settings, folders, feature_service)
    out["config_fingerprint"] = fingerprint.fingerprint(config)
    out.update(_bundle_after_stage_gate(settings, day, out, feature_service, config, stage_gate))
    pinned = {k: v["version"] for k, v in out.items() if isinstance(v, dict) and "version" in v}
    log.info("registry: %s registered %s, bundle %s", day, pinned, out["bundle"])
    return out


def _bundle_after_stage_gate(
    settings: Settings,
    day: dt.date,
    out: dict[str, Any],
    feature_service: str,
    config: dict[str, Any],
    stage_gate: bool,
) -> dict[str, Any]:
    """Register the day's bundle; with a ranker, judge it (module docstring) and register it
    again without the ranker when the stage gate says so. ``{"bundle": served version,
    "stage_gate": judgement or None, "bundle_with_ranker": version (only when left out)}``."""
    ranker = out["ranker"]["version"] if out["ranker"] else None
    pins = (settings, day, out["two_tower"]["version"], out["index"]["version"])
    first = str(registry.register_bundle(*pins, ranker, feature_service, config).version)
    fp = out["config_fingerprint"]
    if ranker is None or not stage_gate:
        return {"bundle": first, "stage_gate": None, **_tag_choices(settings, first, None, fp)}
    judgement = _recorded_judgement(settings, first)
    if judgement is None:
        judgement = judge_bundle(settings, first, day)
        _tag(settings, first, {STAGE_TAG: _judgement_tag(judgement)})
    if judgement.get("keep_ranker") is not False:
        return {"bundle": first, "stage_gate": judgement,
                **_tag_choices(settings, first, judgement, fp)}  # fmt: skip
    served = str(registry.register_bundle(*pins, None, feature_service, config).version)
    _tag(settings, served, {STAGE_TAG: _judgement_tag(judgement), LEFT_OUT_TAG: ranker})
    _tag(settings, first, {SUPERSEDED_TAG: served})
    log.warning(
        "stage gate %s: the ranker (version %s) does not lift the slate: bundle %s serves in "
        "retrieval order (bundle %s with the ranker is not gated)", day, ranker, served, first,
    )  # fmt: skip
    return {"bundle": served, "stage_gate": judgement, "bundle_with_ranker": first,
            **_tag_choices(settings, served, judgement, fp)}  # fmt: skip


CHOICES = {
    "new_users": (registry.NEW_USERS_TAG, NEW_USERS_FROM_TAG),
    "retrieval_weight": (registry.RETRIEVAL_WEIGHT_TAG, RETRIEVAL_WEIGHT_FROM_TAG),
}
"""The stage gate's serving choices recorded on a bundle: judgement key → (tag, source tag)."""


def gate_choice(
    settings: Settings, judgement: Mapping[str, Any] | None, fingerprint: str, key: str
) -> tuple[Any, str]:
    """``(value, source)`` of serving choice ``key`` (:data:`CHOICES`) for a new bundle: the stage
    gate's (``judgement[key]``), else the champion's recorded one when the bundle is a refresh
    of it (the same configuration ``fingerprint``: a backfill's final refit, a daily retrain on
    real data, which no forward window judges yet), else ``(None, why)``."""
    from serving.config import gate_choice_value

    chosen = gate_choice_value(key, (judgement or {}).get(key))
    if chosen is not None:
        return chosen, "stage gate"
    champ = registry.bundle_version(settings, "champion")
    recorded = None if champ is None else gate_choice_value(key, champ.tags.get(CHOICES[key][0]))
    if recorded is None:
        return None, "not judged; the champion has no recorded choice"
    if registry.bundle_fingerprint(settings, champ.version) != fingerprint:
        return None, f"not judged; champion {champ.version} has another configuration"
    return recorded, f"champion {champ.version}"


def _tag_choices(
    settings: Settings, version: str, judgement: Mapping[str, Any] | None, fingerprint: str
) -> dict[str, Any]:
    """Tag bundle ``version`` with each of :data:`CHOICES` that :func:`gate_choice` finds (the
    value and its source); ``{key: value or None, key + "_from": source}`` for the register
    result."""
    out: dict[str, Any] = {}
    for key, (tag, from_tag) in CHOICES.items():
        value, source = gate_choice(settings, judgement, fingerprint, key)
        out[key], out[f"{key}_from"] = value, source
        if value is not None:
            _tag(settings, version, {tag: str(value), from_tag: source})
            log.info("bundle %s: %s %s (%s)", version, key, value, source)
    return out


def judge_bundle(settings: Settings, version: str, day: dt.date) -> dict[str, Any]:
    """The stage gate's judgement of registered bundle ``version`` on ``day``
    (:func:`pipelines.release.stage_gate.judge_stages` on the bundle as the service loads it);
    ``{"keep_ranker": True, "error": ...}`` when it cannot be had (logged: the ranker stays)."""
    try:
        from pipelines.release.stage_gate import judge_stages
    except ImportError as exc:
        log.warning("stage gate unavailable (%r): the ranker of bundle %s is kept", exc, version)
        return {"keep_ranker": True, "error": f"stage gate unavailable: {exc!r}"}
    try:
        from serving.bundle import load

        result = dict(judge_stages(settings, load(settings, version), day.isoformat()))
    except Exception as exc:  # noqa: BLE001 - the stage gate never fails the register task
        log.exception("stage gate of bundle %s on %s failed: the ranker is kept", version, day)
        return {"keep_ranker": True, "error": f"stage gate failed: {exc!r}"}
    if not isinstance(result.get("keep_ranker"), bool):
        log.error("stage gate of bundle %s gave no keep_ranker: the ranker is kept", version)
        return {**result, "keep_ranker": True, "error": "stage gate gave no keep_ranker"}
    return result


def _judgement_tag(judgement: dict[str, Any]) -> str:
    """The judgement as compact JSON for a tag; only ``keep_ranker`` and ``error`` / ``reason``
    when the whole would be longer than :data:`STAGE_TAG_MAX`."""
    text = json.dumps(judgement, sort_keys=True, default=str, separators=(",", ":"))
    if len(text) <= STAGE_TAG_MAX:
        return text
    keep = {k: judgement.get(k) for k in ("keep_ranker", "reason", "error") if k in judgement}
    return json.dumps({**keep, "truncated": True}, default=str)[:STAGE_TAG_MAX]


def read_judgement(tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The stage gate judgement recorded in a bundle version's ``tags``, or None."""
    raw = tags.get(STAGE_TAG)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return {"keep_ranker": True, "error": f"unreadable {STAGE_TAG} tag"}
    return data if isinstance(data, dict) else None


def _recorded_judgement(settings: Settings, version: str) -> dict[str, Any] | None:
    mv = registry.bundle_version(settings, version)
    return None if mv is None else read_judgement(mv.tags)


def _tag(settings: Settings, version: str, tags: Mapping[str, str]) -> None:
    c = registry.client(settings)
    for k, v in tags.items():
        c.set_model_version_tag(registry.BUNDLE, version, k, str(v))
