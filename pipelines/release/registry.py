"""MLflow tracking and model registry: training runs, component versions, serving bundles, aliases.

**Where.** Tracking and registry share ``settings.mlflow_uri`` (default
``sqlite:///$RECLOOP_HOME/mlflow/mlflow.db``; ``RECLOOP_MLFLOW_URI`` may name any MLflow URI, a
tracking server included). With a local (sqlite / file) URI each experiment's artifacts go to
``$RECLOOP_HOME/mlflow/artifacts/<experiment>/`` (set explicitly, so nothing lands in ``./mlruns``).
The client is created once per process and URI (:func:`client`).

**Runs** (experiment ``recloop-training``): :func:`log_training_run` logs one component's training
for one logical date: parameters, the data window, a content hash of the training partitions
(:func:`data_hash`), the feature service version, the git commit, metrics and the artifact folder
as plain files (JSON config + ``weights_only`` tensors, FAISS index, vocabularies): no pickled
model flavour, so loading never unpickles arbitrary code.

**Registered models**, one per component in :data:`COMPONENTS` (``mf``, ``two_tower``, ``ranker``,
``index``), plus :data:`BUNDLE` (``serving_bundle``). Every version is tagged ``logical_date``,
``data_hash``, ``version_key`` (the artifact's own version string, e.g. ``two_tower-2026-01-02``)
and ``artifact_hash``. :func:`register` is idempotent: a version with the same ``logical_date``
and ``data_hash`` is returned instead of a new one (a rerun of a day on the same data registers
nothing); a changed data hash registers a new version.

**Bundles.** A ``serving_bundle`` version's artifact is ``bundle.json`` pinning one consistent set:
a two-tower version, the index built from it (the index's ``model_version`` must be that
two-tower's ``version_key``), a ranker version (``None`` until one exists) and a feature service
version. Serving loads bundles only (:func:`load_bundle`), which re-checks the set against the
artifacts themselves and refuses a mismatch.

**DAG tasks** built on this module: ``pipelines.release.register.register_day`` (the register
task: every artifact trained through D plus the bundle) and ``pipelines.release.gate.daily_gate``
(the gate task); :func:`track_component` registers one component.

**Aliases** ``challenger`` and ``champion`` (aliases, not the deprecated stages) are set on the
bundle model by :func:`promote`, which holds an exclusive file lock
(``$RECLOOP_HOME/mlflow/registry.lock``, ``fcntl.flock``) around read-compare-set: with
``expected`` given, a promotion whose view of the alias is stale loses instead of overwriting,
so two racing promotions leave exactly one champion, the one that won. With a tracking server
(``http://``) the lock is held in the online store's Redis instead, so racing clients on
different machines exclude each other too (:mod:`pipelines.release.remote_lock`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipelines.core import layout, schema
from pipelines.core.artifact_meta import artifact_meta_path, require_artifact_meta
from pipelines.core.settings import Settings
from pipelines.core.validated import validated_files

log = logging.getLogger(__name__)

COMPONENTS = ("mf", "two_tower", "ranker", "index")
BUNDLE = "serving_bundle"
ALIASES = ("challenger", "champion")
TRAINING_EXPERIMENT = "recloop-training"
BUNDLE_EXPERIMENT = "recloop-bundles"
BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = 1
FINGERPRINT_TAG = "config_fingerprint"
"""Bundle version tag: the configuration fingerprint (:mod:`pipelines.release.fingerprint`)."""
NEW_USERS_TAG = "recloop.new_users"
"""Bundle version tag: how users without a vector are served (``trending`` / ``user_tower``), as
the stage gate chose it or inherited from the champion a refresh replaces
(:mod:`pipelines.release.register`); read by ``serving.bundle.load``."""
RETRIEVAL_WEIGHT_TAG = "recloop.retrieval_weight"
"""Bundle version tag: the ``w`` of ``serving.rerank.retrieval_tempered`` (a float as text), set
like :data:`NEW_USERS_TAG`."""
KIND_TAG = "recloop.kind"
"""Bundle version tag the gate sets: ``refresh`` or ``change`` relative to the champion then."""
FEATURE_SERVICES = ("ranker_v1", "two_tower_v1", "serving_v1")
"""Same names as ``pipelines.features.store.SERVICES`` (not imported: it pulls in Feast)."""

_lock = threading.Lock()
_clients: dict[str, Any] = {}
_experiments: dict[tuple[str, str], str] = {}


class BundleError(ValueError):
    """A bundle that pins an inconsistent set, or that cannot be resolved."""


# --- client and experiments -----------------------------------------------------------------------


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("sqlite", "file", "")


def client(settings: Settings) -> Any:
    """The ``MlflowClient`` for ``settings.mlflow_uri`` (tracking and registry), one per process."""
    uri = settings.mlflow_uri
    with _lock:
        if uri not in _clients:
            from mlflow.tracking import MlflowClient

            if uri.startswith("sqlite:///"):
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            _clients[uri] = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return _clients[uri]


def experiment_id(settings: Settings, name: str) -> str:
    """Id of experiment ``name``, created on first use (artifacts under ``mlflow/artifacts/``)."""
    key = (settings.mlflow_uri, name)
    if key in _experiments:
        return _experiments[key]
    from mlflow.exceptions import MlflowException

    c = client(settings)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        location = None
        if _is_local(settings.mlflow_uri):
            folder = layout.mlflow_artifacts_dir(settings, name)
            folder.mkdir(parents=True, exist_ok=True)
            location = folder.as_uri()
        try:
            eid = c.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
            eid = exp.experiment_id
    else:
        eid = exp.experiment_id
    _experiments[key] = eid
    return eid


@contextlib.contextmanager
def registry_lock(settings: Settings) -> Iterator[None]:
    """Exclusive lock across threads and processes: ``fcntl.flock`` on ``mlflow/registry.lock``
    for a local registry; in the online store's Redis for a tracking server that several
    machines share (:mod:`pipelines.release.remote_lock`)."""
    if not _is_local(settings.mlflow_uri):
        from pipelines.release.remote_lock import redis_lock

        with redis_lock(settings.redis_url, settings.mlflow_uri):
            yield
        return
    path = layout.registry_lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:  # one descriptor per holder: flock excludes threads too
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --- hashes and provenance ------------------------------------------------------------------------


WALLCLOCK_SUFFIXES = ("_at", "_seconds", "_per_s")
"""Suffixes of the JSON keys, at any depth, that stamp when or how fast an artifact was made (an
index's ``created_at``, ``build_seconds``, ``tune_seconds``; a training curve's
``examples_per_s``): :func:`hash_folder` leaves them out, so two builds of the same content have
the same ``artifact_hash``."""
_WALLCLOCK_KEY = re.compile(rb'(?:_at|_seconds|_per_s)"\s*:')


def _without_wallclock(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_wallclock(v) for k, v in obj.items()
                if not str(k).endswith(WALLCLOCK_SUFFIXES)}  # fmt: skip
    if isinstance(obj, list):
        return [_without_wallclock(v) for v in obj]
    return obj


def _stable_json(path: Path) -> bytes | None:
    """A ``.json`` file holding wall-clock keys: its canonical JSON without them; else None (the
    file's bytes are hashed as they are, so hashes of other files are what they always were)."""
    if path.suffix != ".json":
        return None
    data = path.read_bytes()
    if not _WALLCLOCK_KEY.search(data):
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    stripped = _without_wallclock(obj)
    return None if stripped == obj else json.dumps(stripped, sort_keys=True).encode()


def hash_files(files: list[Path], root: Path | None = None, stable: bool = False) -> str:
    """sha256 over each file's name (relative to ``root`` when given) and bytes, in sorted order;
    with ``stable``, a JSON file's wall-clock keys aside (:data:`WALLCLOCK_SUFFIXES`)."""
    h = hashlib.sha256()
    for f in sorted(Path(p) for p in files):
        name = str(f.relative_to(root)) if root is not None else f.name
        h.update(name.encode() + b"\0")
        if stable and (content := _stable_json(f)) is not None:
            h.update(content)
        else:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def hash_folder(folder: Path, stable: bool = True) -> str:
    """Content hash of every file under ``folder`` (a single file: that file), JSON wall-clock
    keys aside (``stable=False``: every byte, the ``artifact_hash`` of versions registered
    before wall-clock keys were left out)."""
    folder = Path(folder)
    if folder.is_file():
        return hash_files([folder], stable=stable)
    return hash_files([p for p in folder.rglob("*") if p.is_file()], root=folder, stable=stable)


def data_hash(settings: Settings, date: str | dt.date, first: str | dt.date | None = None) -> str:
    """Content hash of the validated partitions ``first``..``date`` (all history when ``first``
    is None) under ``settings.validated_dir``: what a model trained through ``date`` saw."""
    last = schema.parse_date(date)
    start = schema.parse_date(first) if first else None
    files = validated_files(settings, start, last)
    if not files:
        raise FileNotFoundError(
            f"no validated partitions up to {last} under {settings.validated_dir}"
        )
    return hash_files(files, root=settings.validated_dir)


def git_commit(repo: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the code's repository, or ``"unknown"``."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


# --- runs -----------------------------------------------------------------------------------------


def mlflow_key(name: str) -> str:
    """``name`` as a valid MLflow param/metric key: ``@`` → ``_at_``, other odd characters → ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", str(name).replace("@", "_at_"))


def _metric_items(metrics: Mapping[str, Any]) -> list[tuple[str, float]]:
    out = []
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out.append((mlflow_key(k), float(v)))
    return out


def log_run(
    settings: Settings,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    tags: Mapping[str, str],
    artifacts: Mapping[str, Path] | None = None,
) -> str:
    """One finished MLflow run: params (stringified, 6000 chars max), finite numeric metrics
    (keys through :func:`mlflow_key`: ``ndcg@10`` → ``ndcg_at_10``), tags, and ``artifacts`` {artifact path: local file or folder}."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    c = client(settings)
    run = c.create_run(experiment_id(settings, experiment), run_name=run_name)
    rid = run.info.run_id
    now = int(time.time() * 1000)
    c.log_batch(
        rid,
        metrics=[Metric(k, v, now, 0) for k, v in _metric_items(metrics)],
        params=[Param(mlflow_key(k), str(v)[:6000]) for k, v in params.items()],
        tags=[RunTag(str(k), str(v)) for k, v in tags.items()],
    )
    for dest, local in (artifacts or {}).items():
        local = Path(local)
        if local.is_dir():
            c.log_artifacts(rid, str(local), dest)
        else:
            c.log_artifact(rid, str(local), dest or None)
    c.set_terminated(rid)
    return rid


def log_training_run(
    settings: Settings,
    component: str,
    date: str | dt.date,
    artifact_path: Path,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    data_window: tuple[str | dt.date | None, str | dt.date],
    data_hash: str,
    feature_service: str | None,
) -> str:
    """Log the training of ``component`` for logical ``date``; returns the run id.

    ``artifact_path``: the local artifact folder (or file), logged as plain files under
    ``<component>/`` in the run. ``data_window``: (first day or None = all history, last day).
    """
    _check_component(component)
    day = schema.parse_date(date).isoformat()
    first, last = data_window
    commit = git_commit()
    window = {"data_first": str(first) if first else "all", "data_last": str(last)}
    tags = {
        "recloop.component": component,
        "recloop.logical_date": day,
        "recloop.data_hash": data_hash,
        "recloop.feature_service": str(feature_service),
        "recloop.git_commit": commit,
        "mlflow.source.git.commit": commit,
    }
    all_params = {
        **params,
        **window,
        "data_hash": data_hash,
        "feature_service": feature_service,
        "git_commit": commit,
        "logical_date": day,
    }
    rid = log_run(
        settings,
        TRAINING_EXPERIMENT,
        f"{component}-{day}",
        all_params,
        metrics,
        tags,
        {component: Path(artifact_path)},
    )
    log.info(
        "mlflow: logged %s training for %s as run %s (data %s)", component, day, rid, data_hash[:12]
    )
    return rid


# --- registration ---------------------------------------------------------------------------------


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: expected one of {COMPONENTS}")


def local_path(uri: str) -> Path | None:
    """The local path of a ``file://`` URI or absolute path; ``None`` for remote URIs."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def _ensure_model(settings: Settings, name: str) -> None:
    from mlflow.exceptions import MlflowException

    c = client(settings)
    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(name, description=f"recloop {name}")
        except MlflowException:  # created meanwhile
            c.get_registered_model(name)


def find_versions(settings: Settings, name: str, **tags: str) -> list[Any]:
    """Versions of registered model ``name`` whose tags equal ``tags``, newest first."""
    _ensure_model(settings, name)
    flt = " and ".join([f"name='{name}'", *(f"tags.{k}='{v}'" for k, v in tags.items())])
    found = client(settings).search_model_versions(flt)
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def register(
    settings: Settings,
    component: str,
    run_id: str,
    artifact_subpath: str | None = None,
    version_key: str | None = None,
) -> Any:
    """Register the run's artifact ``artifact_subpath`` (default: the component's folder) as a
    version of registered model ``component``; returns the ``ModelVersion``.

    Idempotent: a version of the same ``logical_date`` and ``data_hash`` (read from the run's
    tags) is returned as is. ``version_key``: the artifact's version string (``meta["version"]``
    for models, ``model_version`` for an index, which is also tagged ``built_from``).
    """
    _check_component(component)
    c = client(settings)
    run = c.get_run(run_id)
    day = run.data.tags.get("recloop.logical_date")
    dhash = run.data.tags.get("recloop.data_hash")
    if not day or not dhash:
        raise ValueError(f"run {run_id} has no recloop.logical_date / recloop.data_hash tags")
    sub = artifact_subpath or component
    source = f"{run.info.artifact_uri.rstrip('/')}/{sub}"
    with registry_lock(settings):
        existing = find_versions(settings, component, logical_date=day, data_hash=dhash)
        if existing:
            mv = existing[0]
            log.info(
                "registry: %s %s on data %s already registered as version %s: not registering again",
                component, day, dhash[:12], mv.version,
            )  # fmt: skip
            return mv
        folder = _resolve(settings, source, f"run-{run_id}-{sub}")
        tags = {
            "logical_date": day,
            "data_hash": dhash,
            "version_key": version_key or f"{component}-{day}",
            "artifact_hash": hash_folder(folder),
            "feature_service": run.data.tags.get("recloop.feature_service", "None"),
            "git_commit": run.data.tags.get("recloop.git_commit", "unknown"),
        }
        if component == "index":
            meta = artifact_meta(folder)
            tags["built_from"] = str(meta.get("model_version"))
            if version_key and version_key != tags["built_from"]:
                raise BundleError(
                    f"{artifact_meta_path(folder)}: index built from {tags['built_from']!r}, "
                    f"registered as {version_key!r}"
                )
        mv = c.create_model_version(component, source=source, run_id=run_id, tags=tags)
    log.info(
        "registry: registered %s version %s (%s, data %s)", component, mv.version, day, dhash[:12]
    )
    return mv


def artifact_meta(folder: Path | str) -> dict[str, Any]:
    """The ``meta.json`` of the artifact in ``folder``
    (:func:`pipelines.core.artifact_meta.require_artifact_meta`); :class:`BundleError` naming the
    file when it is missing, unreadable or not a JSON object."""
    try:
        return require_artifact_meta(folder)
    except (OSError, ValueError) as exc:
        raise BundleError(str(exc)) from exc


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (the bundle file); :class:`BundleError` naming the file when
    it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read ({exc})") from exc


def _resolve(settings: Settings, source: str, cache_key: str) -> Path:
    """Local folder of an artifact URI: the path itself for a local store, else a download into
    ``mlflow/cache/<cache_key>`` (kept: registered artifacts are immutable)."""
    path = local_path(source)
    if path is not None:
        if not path.exists():
            raise BundleError(f"artifact {source} is missing on disk")
        return path
    import mlflow

    dst = layout.mlflow_cache_dir(settings, cache_key)
    if not dst.exists():
        tmp = Path(tempfile.mkdtemp(dir=settings.mlflow_dir, prefix=".dl-"))
        got = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(tmp), tracking_uri=settings.mlflow_uri
        )
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got, dst)
    return dst


def version_path(settings: Settings, name: str, version: str | int) -> Path:
    """Local folder (or file) holding the artifact of ``name`` version ``version``."""
    mv = client(settings).get_model_version(name, str(version))
    return _resolve(settings, mv.source, f"{name}-v{mv.version}")


def track_component(
    settings: Settings,
    component: str,
    date: str | dt.date,
    artifact_path: Path,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    window_first: str | dt.date | None = None,
    feature_service: str | None = None,
    version_key: str | None = None,
    built_from: Path | None = None,
    data_hash_override: str | None = None,
) -> dict[str, Any]:
    """The one call a training task makes: hash the data, log the run, register (idempotent).

    ``built_from`` (index only): the local two-tower artifact folder the index was built from;
    its content hash is tagged ``built_from_hash`` and :func:`register_bundle` then requires it
    to equal the pinned two-tower's registered ``artifact_hash``.
    ``data_hash_override``: the data hash to record instead of hashing the window (an artifact
    derived from another one on the same data, e.g. ``pipelines.loop.scenarios``' variants).
    Skips the run when this (date, data hash) is already registered. Returns JSON-able
    ``{component, version, run_id, data_hash, logical_date, version_key, reused}``.
    """
    day = schema.parse_date(date)
    dhash = data_hash_override or data_hash(settings, day, window_first)
    existing = find_versions(settings, component, logical_date=day.isoformat(), data_hash=dhash)
    if existing:
        mv, reused = existing[0], True
        log.info("registry: %s %s unchanged data: keeping version %s", component, day, mv.version)
    else:
        rid = log_training_run(
            settings, component, day, artifact_path, params or {}, metrics or {},
            (window_first, day), dhash, feature_service,
        )  # fmt: skip
        mv, reused = register(settings, component, rid, component, version_key), False
        if built_from is not None:
            client(settings).set_model_version_tag(
                component, str(mv.version), "built_from_hash", hash_folder(Path(built_from))
            )
    return {
        "component": component,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "data_hash": dhash,
        "logical_date": day.isoformat(),
        "version_key": mv.tags.get("version_key"),
        "reused": reused,
    }


# --- bundles --------------------------------------------------------------------------------------


def _pin(settings: Settings, name: str, version: str | int | None) -> dict[str, Any] | None:
    if version is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version(name, str(version))
    except MlflowException as exc:
        raise BundleError(f"{name} version {version} is not registered") from exc
    return {
        "name": name,
        "version": str(mv.version),
        "version_key": mv.tags.get("version_key"),
        "logical_date": mv.tags.get("logical_date"),
        "data_hash": mv.tags.get("data_hash"),
        "artifact_hash": mv.tags.get("artifact_hash"),
        "built_from": mv.tags.get("built_from"),
        "built_from_hash": mv.tags.get("built_from_hash"),
        "source": mv.source,
    }


def check_bundle(bundle: Mapping[str, Any]) -> None:
    """Raise :class:`BundleError` unless the pins are consistent: a two-tower and an index pinned,
    the index built from that two-tower, a known feature service."""
    tt, idx = bundle.get("two_tower"), bundle.get("index")
    if not tt or not idx:
        raise BundleError(f"a bundle pins a two_tower and an index (got {tt!r}, {idx!r})")
    if idx.get("built_from") != tt.get("version_key"):
        raise BundleError(
            f"index version {idx.get('version')} was built from {idx.get('built_from')!r}, "
            f"not from two_tower version {tt.get('version')} ({tt.get('version_key')!r}): "
            "refusing a mismatched set"
        )
    if idx.get("built_from_hash") and idx["built_from_hash"] != tt.get("artifact_hash"):
        raise BundleError(
            f"index version {idx.get('version')} was built from a {tt.get('version_key')!r} whose "
            f"content differs from two_tower version {tt.get('version')} as registered: "
            "refusing a mismatched set"
        )
    fs = bundle.get("feature_service")
    if fs not in FEATURE_SERVICES:
        raise BundleError(f"feature service {fs!r}: expected one of {FEATURE_SERVICES}")


def pinned_configuration(settings: Settings, bundle: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`pipelines.release.fingerprint.configuration` of a bundle's pinned artifacts, with
    the MF trained through its logical date (found by date, as the service loads it)."""
    from pipelines.release import fingerprint

    folders: dict[str, Any] = {}
    for comp in ("two_tower", "index", "ranker"):
        pin = bundle.get(comp)
        folders[comp] = (
            _resolve(settings, pin["source"], f"{comp}-v{pin['version']}") if pin else None
        )
    folders["mf"] = fingerprint.mf_folder(settings, bundle.get("logical_date"))
    return fingerprint.configuration(settings, folders, bundle.get("feature_service"))


def register_bundle(
    settings: Settings,
    date: str | dt.date,
    two_tower_version: str | int,
    index_version: str | int,
    ranker_version: str | int | None,
    feature_service: str = "serving_v1",
    configuration: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Any:
    """Register a ``serving_bundle`` version pinning the given component versions; returns it.

    Refuses (:class:`BundleError`) an index not built from the pinned two-tower. Idempotent:
    the same pinned set returns the existing bundle version. ``configuration``: the bundle's
    configuration document (:mod:`pipelines.release.fingerprint`; default: that of the pinned
    artifacts, :func:`pinned_configuration`); it and its fingerprint go into ``bundle.json``
    (``configuration``, ``config_fingerprint``), the version tag ``config_fingerprint`` and the
    run's params. ``tags``: more version tags (e.g. the stage gate's judgement).
    """
    from pipelines.release import fingerprint

    day = schema.parse_date(date).isoformat()
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "logical_date": day,
        "two_tower": _pin(settings, "two_tower", two_tower_version),
        "index": _pin(settings, "index", index_version),
        "ranker": _pin(settings, "ranker", ranker_version),
        "feature_service": feature_service,
    }
    check_bundle(bundle)
    bundle["configuration"] = dict(configuration or pinned_configuration(settings, bundle))
    bundle["config_fingerprint"] = fingerprint.fingerprint(bundle["configuration"])
    pins = (
        f"two_tower={bundle['two_tower']['version']};index={bundle['index']['version']};"
        f"ranker={bundle['ranker']['version'] if bundle['ranker'] else 'none'};fs={feature_service}"
    )
    with registry_lock(settings):
        existing = find_versions(settings, BUNDLE, pins=pins)
        if existing:
            log.info(
                "registry: bundle %s already registered as version %s", pins, existing[0].version
            )
            return existing[0]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / BUNDLE_FILE
            path.write_text(json.dumps(bundle, indent=2, sort_keys=True))
            run_tags = {
                "recloop.logical_date": day,
                "recloop.data_hash": bundle["two_tower"]["data_hash"] or "",
            }
            params = {"pins": pins, "config_fingerprint": bundle["config_fingerprint"]}
            rid = log_run(
                settings, BUNDLE_EXPERIMENT, f"bundle-{day}", params, {}, run_tags,
                {"bundle": path},
            )  # fmt: skip
        run = client(settings).get_run(rid)
        mv = client(settings).create_model_version(
            BUNDLE,
            source=f"{run.info.artifact_uri.rstrip('/')}/bundle",
            run_id=rid,
            tags={
                "logical_date": day,
                "pins": pins,
                "two_tower_version": bundle["two_tower"]["version"],
                "index_version": bundle["index"]["version"],
                "ranker_version": bundle["ranker"]["version"] if bundle["ranker"] else "none",
                "feature_service": feature_service,
                "data_hash": bundle["two_tower"]["data_hash"] or "",
                FINGERPRINT_TAG: bundle["config_fingerprint"],
                **dict(tags or {}),
            },
        )
    log.info("registry: registered serving bundle version %s: %s", mv.version, pins)
    return mv


def bundle_version(settings: Settings, alias_or_version: str | int) -> Any | None:
    """The ``serving_bundle`` ``ModelVersion`` of an alias or a version number; None if unset."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    ref = str(alias_or_version)
    try:
        if ref.isdigit():
            return c.get_model_version(BUNDLE, ref)
        return c.get_model_version_by_alias(BUNDLE, ref)
    except MlflowException:
        return None


def load_bundle(settings: Settings, alias_or_version: str | int) -> dict[str, Any]:
    """The bundle JSON of an alias (``champion``, ``challenger``) or version number, with
    ``bundle_version``, ``aliases``, ``tags`` (the version's) and ``paths`` {component: local
    artifact folder} added.

    Re-checks the set against the artifacts (the index folder's ``meta.json`` ``model_version``
    must be the two-tower folder's ``meta.json`` ``version`` when both exist; the artifact hashes
    must match the registered ones) and raises :class:`BundleError` on any mismatch.
    """
    mv = bundle_version(settings, alias_or_version)
    if mv is None:
        raise BundleError(f"no {BUNDLE} version {alias_or_version!r} in {settings.mlflow_uri}")
    folder = _resolve(settings, mv.source, f"{BUNDLE}-v{mv.version}")
    bundle = read_json(folder / BUNDLE_FILE)
    check_bundle(bundle)
    paths: dict[str, str | None] = {}
    for comp in ("two_tower", "index", "ranker"):
        pin = bundle.get(comp)
        if not pin:
            paths[comp] = None
            continue
        path = _resolve(settings, pin["source"], f"{comp}-v{pin['version']}")
        registered = pin.get("artifact_hash")  # registered before wall-clock keys left out: raw
        if registered and hash_folder(path) != registered != hash_folder(path, stable=False):
            raise BundleError(
                f"{path}: content differs from {comp} version {pin['version']} as registered"
            )
        paths[comp] = str(path)
    tt_meta = artifact_meta_path(paths["two_tower"])
    idx_meta = artifact_meta_path(paths["index"])
    if tt_meta.exists() and idx_meta.exists():
        built, version = (
            artifact_meta(paths["index"]).get("model_version"),
            artifact_meta(paths["two_tower"]).get("version"),
        )
        if built != version:
            raise BundleError(
                f"{idx_meta}: index built from {built!r} but the bundle's two-tower "
                f"({tt_meta}) is {version!r}: refusing a mismatched set"
            )
    return {
        **bundle,
        "bundle_version": str(mv.version),
        "aliases": list(mv.aliases),
        "tags": dict(mv.tags),
        "paths": paths,
    }


def bundle_fingerprint(settings: Settings, version: str | int) -> str | None:
    """The configuration fingerprint of bundle ``version``: its ``config_fingerprint`` tag, else
    (a bundle registered before fingerprints) computed now from its pinned artifacts; None when
    the version does not exist."""
    from pipelines.release import fingerprint

    mv = bundle_version(settings, version)
    if mv is None:
        return None
    if mv.tags.get(FINGERPRINT_TAG):
        return str(mv.tags[FINGERPRINT_TAG])
    folder = _resolve(settings, mv.source, f"{BUNDLE}-v{mv.version}")
    return fingerprint.fingerprint(pinned_configuration(settings, read_json(folder / BUNDLE_FILE)))


# --- aliases --------------------------------------------------------------------------------------


ALIAS_ATTEMPTS = 5
"""Tries of an alias lookup that meets a store error (``database is locked``, a server down)."""
ALIAS_BACKOFF_S = 0.2
"""Wait before the second try, doubled before each next one (0.2 + 0.4 + 0.8 + 1.6 s)."""


def alias_unset(exc: Exception) -> bool:
    """Whether an MLflow error of an alias lookup means "no such alias" (or no such registered
    model): ``RESOURCE_DOES_NOT_EXIST``, or MLflow's ``INVALID_PARAMETER_VALUE`` "alias ... not
    found"; anything else is a store error."""
    code = getattr(exc, "error_code", "")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    text = str(getattr(exc, "message", exc)).lower()
    return code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text


def is_store_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the registry store failing (an ``MlflowException`` that is not a
    "does not exist" / invalid-argument answer): worth trying again, not the caller's fault."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    return exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def get_alias(settings: Settings, alias: str, name: str = BUNDLE) -> str | None:
    """Version number the alias points to on ``name`` (default the bundle); None when the
    alias is unset or the model is not registered (:func:`alias_unset`). A store error
    ("database is locked", the tracking server down) is tried :data:`ALIAS_ATTEMPTS` times with
    doubling waits from :data:`ALIAS_BACKOFF_S`, then raised (``MlflowException``): a caller must
    never take a failing store for "unset" (the service would drop its challenger)."""
    import time

    from mlflow.exceptions import MlflowException

    for attempt in range(ALIAS_ATTEMPTS):
        try:
            return str(client(settings).get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if alias_unset(exc):
                return None
            if not is_store_error(exc) or attempt == ALIAS_ATTEMPTS - 1:
                raise
            log.warning("registry: alias %s of %s: store error %r (try %d of %d)",
                        alias, name, exc, attempt + 1, ALIAS_ATTEMPTS)  # fmt: skip
            time.sleep(ALIAS_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


_UNSET: Any = object()


def promote(
    settings: Settings,
    version: str | int,
    alias: str,
    expected: str | int | None = _UNSET,
    name: str = BUNDLE,
) -> bool:
    """Point ``alias`` of ``name`` at ``version`` under the registry lock; returns True if set.

    ``expected``: compare-and-set: the version (or None = unset) the caller last saw; when the
    alias has moved since, nothing changes and False is returned (the other promotion won).
    Omitted: set unconditionally. Either way an alias names exactly one version.
    """
    if alias not in ALIASES:
        raise ValueError(f"alias {alias!r}: expected one of {ALIASES}")
    version = str(version)
    c = client(settings)
    c.get_model_version(name, version)  # raises when it does not exist
    with registry_lock(settings):
        current = get_alias(settings, alias, name)
        if expected is not _UNSET and current != (None if expected is None else str(expected)):
            log.warning(
                "registry: %s not moved to %s: it points to %s, expected %s (another promotion won)",
                alias, version, current, expected,
            )  # fmt: skip
            return False
        if current == version:
            log.info("registry: %s already points to %s version %s", alias, name, version)
            return True
        c.set_registered_model_alias(name, alias, version)
        c.set_model_version_tag(
            name, version, f"promoted_{alias}_at", dt.datetime.now(dt.UTC).isoformat()
        )
    log.info("registry: %s %s -> version %s (was %s)", name, alias, version, current)
    return True
