"""The ``register`` task: track and register in MLflow what was trained through logical date D
(``mf``, ``two_tower``, its FAISS index, the ranker) and the ``serving_bundle`` pinning a
consistent set of them. Idempotent: a rerun on the same data registers nothing new.

The MLflow calls themselves (runs, registered versions, bundles, aliases) are
:mod:`pipelines.release.registry`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.core import layout, schema
from pipelines.core.artifact_meta import artifact_meta_path
from pipelines.core.settings import Settings
from pipelines.release import registry

log = logging.getLogger(__name__)


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
) -> dict[str, Any]:
    """The one call the DAG's register task makes for logical date D: track and register the
    artifacts trained through D (``mf`` if present, ``two_tower``, its index, the ranker if
    present: ``ranker_path`` or ``artifacts/models/ranker/date=D``) and the serving bundle pinning
    them. Idempotent (a rerun on the same data registers nothing new). Returns JSON-able
    ``{mf, two_tower, index, ranker: track_component results or None, bundle: version}``.
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
    bundle = registry.register_bundle(
        settings, day, out["two_tower"]["version"], out["index"]["version"],
        out["ranker"]["version"] if out["ranker"] else None, feature_service,
    )  # fmt: skip
    out["bundle"] = str(bundle.version)
    pinned = {k: v["version"] for k, v in out.items() if isinstance(v, dict)}
    log.info("registry: %s registered %s, bundle %s", day, pinned, out["bundle"])
    return out
