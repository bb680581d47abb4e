"""The configuration fingerprint of a serving bundle: tells a *refresh* from a *change*.

A **refresh** is the same configuration retrained on newer data; a **change** is anything else
(a new model, feature set, hyper-parameter or setting). Two bundles are the same configuration
when their fingerprints are equal: the sha256 (first 16 hex digits) of the canonical JSON of
:func:`configuration`, which holds

``components``  for each artifact that serves (``two_tower``, ``index``, ``ranker``, ``mf``: the
                bundle's pins, and the MF found by date as ``serving.bundle`` loads it), its
                ``meta.json`` and ``model/config.json`` **minus the data-dependent fields**
                (:data:`DATA_KEYS`: counts, vocabularies, dates, versions, normalization
                statistics, the ranker's fitted calibration and validation results, timings,
                training curves, measured recall, the index kind and parameters chosen by size / tuning,
                library versions) and minus any key the artifact's ``meta.json`` lists under
                ``"data_keys"`` (how a training step declares values it chose on data, e.g.
                hyper-parameters picked on a validation day). A component absent: ``null``. The
                ranker is the one *trained*, even when the stage gate leaves it out of the
                bundle (keeping or dropping it is a judgement on data, recorded beside).
``feature_service``  the bundle's feature service version.
``settings``    the platform settings that change what is trained (:data:`TRAINING_SETTINGS`:
                ``rating_positive``, the rating that counts as a positive).

Not in it: the serving settings (``serving.config.ServingConfig``: candidate quotas, re-ranking,
exploration) — they belong to the service process and apply to both arms at once, so they cannot
tell two bundles apart and an A/B test of bundles could not judge them; the git commit and library
versions (code that changes what is trained changes the configs above). Unknown new keys count
(a key nobody declared data-dependent makes a change): the safe side, since a change is A/B
tested while a refresh is not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.core.settings import Settings

FINGERPRINT_FORMAT = 1
COMPONENTS = ("two_tower", "index", "ranker", "mf")
TRAINING_SETTINGS = ("rating_positive",)
DATA_KEYS = frozenset(
    {
        # what the data was: counts, vocabularies, dates, versions
        "n_items", "n_users", "n_events", "nnz", "rows", "positives", "n_queries",
        "vocab", "values", "trained_through", "logical_date", "version", "model_version",
        "label_source", "fit_report",
        # statistics fitted or measured on the data (feature normalization, the ranker's
        # calibration and its validation day: whether one existed is the data's doing too)
        "mean", "std", "var", "min", "max", "median", "quantiles",
        "calibration", "validation", "validation_rows", "best_epoch", "epochs_run",
        "l2_c",  # the L2 strength models.cross_lr chose on the validation day
        # what a build measured; timings and library versions
        "created_at", "build_seconds", "tune_seconds", "tuning", "recall", "faiss_version",
    }
)  # fmt: skip
"""Keys dropped at any depth of an artifact's meta and config (plus ``history`` when it is a
list: a training curve, while a boolean ``history`` is a two-tower setting)."""
INDEX_DATA_KEYS = frozenset({"kind", "params"})
"""Top-level keys of an index's meta chosen on the data: the index kind (``auto`` picks it by
catalog size) and its search parameters (tuned to reach the recall target)."""
DATA_KEYS_FIELD = "data_keys"
"""A ``meta.json`` list of further top-level keys (meta and config) an artifact declares
data-dependent."""


def _strip(obj: Any, extra: frozenset[str] = frozenset()) -> Any:
    """``obj`` without the data-dependent keys (module docstring), recursively."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if k in DATA_KEYS or k in extra or k == DATA_KEYS_FIELD:
                continue
            if k == "history" and isinstance(v, list):
                continue
            out[str(k)] = _strip(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [_strip(v) for v in obj]
    return obj


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def component_config(
    folder: str | Path | None, data_keys: frozenset[str] = frozenset()
) -> dict[str, Any] | None:
    """``{"meta": ..., "config": ...}`` of the artifact in ``folder`` without its data-dependent
    fields (``config``: ``model/config.json``, absent for an index; ``data_keys``: more top-level
    keys to drop); None without a folder."""
    if folder is None or not Path(folder).exists():
        return None
    folder = Path(folder)
    meta = _read(folder / "meta.json") or {}
    extra = data_keys | frozenset(str(k) for k in meta.get(DATA_KEYS_FIELD) or [])
    out: dict[str, Any] = {"meta": _strip(meta, extra)}
    config = _read(folder / "model" / "config.json")
    if config is not None:
        out["config"] = _strip(config, extra)
    return out


def configuration(
    settings: Settings, folders: Mapping[str, str | Path | None], feature_service: str | None
) -> dict[str, Any]:
    """The fingerprinted document (module docstring) of the artifacts in ``folders``
    {component: local folder or None}."""
    return {
        "format": FINGERPRINT_FORMAT,
        "components": {
            c: component_config(folders.get(c), INDEX_DATA_KEYS if c == "index" else frozenset())
            for c in COMPONENTS
        },
        "feature_service": feature_service,
        "settings": {k: getattr(settings, k) for k in TRAINING_SETTINGS},
    }


def fingerprint(doc: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``doc``, first 16 hex digits."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mf_folder(settings: Settings, logical_date: str | None) -> Path | None:
    """The MF artifact trained through ``logical_date`` (what ``serving.bundle`` loads by date),
    or None when there is none."""
    from pipelines.core import layout

    if not logical_date:
        return None
    folder = layout.model_dir(settings, "mf", logical_date)
    return folder if folder.exists() else None


def kind(candidate: str | None, champion: str | None) -> str:
    """``refresh`` when both fingerprints are known and equal, else ``change``."""
    return "refresh" if candidate is not None and candidate == champion else "change"
