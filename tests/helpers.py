"""Helpers shared by several test modules: the one place test files import test code from.

Test files import from here (never from ``conftest.py`` or from another test file); fixtures
shared by several files live in ``tests/conftest.py``, which builds them from these helpers.

- paths: :data:`REPO`, :data:`DAGS`
- processes: :class:`RedisServer` (a real ``redis-server``, :mod:`pipelines.core.redis_server`),
  :func:`free_port` (:mod:`pipelines.core.net`), :func:`start_service` / :func:`wait_ready`
  (``recloop serve`` as a child process, ready; :mod:`pipelines.core.service_process`),
  :func:`stop_service`
- workspaces: :func:`tiny_trained_workspace`, :func:`tiny_served_workspace`,
  :func:`champion_workspace`
- MLflow registry: :func:`fresh_mlflow`, :func:`write_validated`,
  :func:`write_validation_report`, :func:`fake_model`, :func:`fake_index`, :func:`make_bundle`,
  :func:`start_promotion_racer` / :func:`race_promotions` (promotions from other processes)
- A/B data: :data:`START`, :func:`write_day`
- serving: :class:`Service`, :func:`known_user`
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core import schema
from pipelines.core.net import free_port
from pipelines.core.redis_server import RedisServer
from pipelines.core.service_process import start_service, wait_ready
from pipelines.core.settings import Settings

if TYPE_CHECKING:
    from serving.config import ServingConfig

__all__ = [
    "DAGS",
    "REPO",
    "START",
    "RedisServer",
    "Service",
    "champion_workspace",
    "fake_index",
    "fake_model",
    "free_port",
    "fresh_mlflow",
    "known_user",
    "make_bundle",
    "start_service",
    "stop_service",
    "tiny_served_workspace",
    "tiny_trained_workspace",
    "wait_ready",
    "write_day",
    "write_validated",
    "write_validation_report",
]

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
START = dt.date(2026, 1, 1)  # the first day of the A/B experiments written by write_day


# --- trained workspaces -----------------------------------------------------------------------


def tiny_trained_workspace(
    home: Path, redis_url: str, days: tuple[str, ...], scale: str = "tiny"
) -> tuple[Settings, pytest.MonkeyPatch]:
    """A workspace at ``home`` with ``days`` simulated at tiny scale and the daily DAG's task
    bodies run for each (in-process, in the DAG's order): the registry then holds one serving
    bundle per day and, from the second day on, a champion. Returns the settings and the
    MonkeyPatch holding the ``RECLOOP_*`` environment (call ``undo()`` when done)."""
    from pipelines.data.simulate import simulate
    from pipelines.orchestration import tasks

    mp = pytest.MonkeyPatch()
    mp.setenv("RECLOOP_HOME", str(home))
    mp.setenv("RECLOOP_REDIS_URL", redis_url)
    mp.setenv("RECLOOP_SCALE", scale)
    mp.delenv("RECLOOP_MLFLOW_URI", raising=False)
    mp.delenv("RECLOOP_ADMIN_TOKEN", raising=False)
    settings = Settings.from_env()
    settings.ensure_dirs()
    simulate(settings, len(days), scale)
    for ds in days:
        tasks.validate(ds)
        tasks.features(ds)
        tasks.train_model(ds, "mf")
        tasks.train_model(ds, "two_tower")
        tasks.build_index(ds)
        tasks.train_ranker(ds)
        tasks.evaluate_ranker(ds)
        tasks.register(ds)
        tasks.gate(ds)
    return settings, mp


@contextlib.contextmanager
def tiny_served_workspace(
    tmp: Path, days: tuple[str, ...] = ("2026-01-01",)
) -> Iterator[tuple[Settings, RedisServer]]:
    """:func:`tiny_trained_workspace` on a redis-server of its own (for tests that rewrite or
    stop Redis): ``(settings, server)``; the environment and the server are undone after."""
    server = RedisServer(tmp)
    server.start()
    try:
        settings, mp = tiny_trained_workspace(tmp / "home", server.url, days)
        try:
            yield settings, server
        finally:
            mp.undo()
    finally:
        server.stop()


@contextlib.contextmanager
def champion_workspace(
    home: Path, redis_url: str, days: tuple[str, ...] = ("2026-01-01", "2026-01-02")
) -> Iterator[Settings]:
    """:func:`tiny_trained_workspace` at ``home`` on ``redis_url`` whose first bundle is the
    champion (asserted): the settings; the ``RECLOOP_*`` environment is undone after. For a
    module-scoped ``world`` fixture on the session's ``redis_server``."""
    from pipelines.release import registry

    settings, mp = tiny_trained_workspace(home, redis_url, days)
    try:
        assert registry.get_alias(settings, "champion") == "1"
        yield settings
    finally:
        mp.undo()


# --- MLflow registry --------------------------------------------------------------------------
# Creating an MLflow sqlite database runs every migration (~5-10 s): a migrated empty one is made
# once per machine and MLflow version and copied into each test's workspace. The fake artifact
# folders follow the ``pipelines.retrieval.train`` / ``pipelines.retrieval.faiss_index`` layouts.


def fresh_mlflow(settings: Settings) -> None:
    """Put an empty, migrated MLflow database at ``settings.mlflow_uri`` (the default sqlite)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    template = Path(tempfile.gettempdir()) / f"recloop-mlflow-template-{mlflow.__version__}.db"
    if not template.exists():  # made once per machine and MLflow version, then copied
        folder = Path(tempfile.mkdtemp(prefix="recloop-mlflow-template-"))
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
        os.replace(folder / "mlflow.db", template)
        shutil.rmtree(folder, ignore_errors=True)
    target = settings.mlflow_dir / "mlflow.db"
    assert settings.mlflow_uri == f"sqlite:///{target}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)


def write_validated(settings: Settings, day: str, payload: str = "x") -> Path:
    """A one-row validated partition for ``day`` (content varies with ``payload``)."""
    folder = schema.partition_dir(settings.validated_dir, dt.date.fromisoformat(day))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    pq.write_table(pa.table({"event_id": [f"{day}-{payload}"]}), path)
    return path


def write_validation_report(settings: Settings, day: str, verdict: str = "passed") -> None:
    """The validation report of ``day`` with ``verdict``."""
    path = settings.reports_dir / "validation" / f"date={day}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": day, "verdict": verdict}))


def fake_model(settings: Settings, name: str, day: str, weights: bytes = b"w") -> Path:
    """A fake trained model folder of ``name`` for ``day`` (config, ``weights`` and meta)."""
    folder = settings.artifacts_dir / "models" / name / f"date={day}"
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "model" / "config.json").write_text(json.dumps({"model": name}))
    (folder / "model" / "weights.pt").write_bytes(weights)
    (folder / "meta.json").write_text(json.dumps({"model": name, "version": f"{name}-{day}"}))
    return folder


def fake_index(
    settings: Settings, model_version: str, recall: float = 0.97, extra_meta: dict | None = None
) -> Path:
    """A fake FAISS index folder for ``model_version`` whose meta reports ``recall`` (and
    ``extra_meta``, e.g. wall-clock keys)."""
    folder = settings.artifacts_dir / "index" / f"index-{model_version}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.faiss").write_bytes(b"faiss")
    meta = {"kind": "flat", "recall": recall, "recall_target": 0.95, "model_version": model_version}
    (folder / "meta.json").write_text(json.dumps({**meta, **(extra_meta or {})}))
    return folder


def make_bundle(
    settings: Settings,
    day: str,
    recall: float = 0.97,
    ranker: bool = False,
    index_meta: dict | None = None,
) -> str:
    """Validated data, fake two-tower + index (+ ranker) of ``day``, tracked and bundled: the
    bundle version. ``index_meta``: extra keys of the index's meta (:func:`fake_index`)."""
    from pipelines.release import registry

    write_validated(settings, day)
    write_validation_report(settings, day)
    tt = registry.track_component(
        settings, "two_tower", day, fake_model(settings, "two_tower", day),
        version_key=f"two_tower-{day}", feature_service="two_tower_v1",
    )  # fmt: skip
    idx = registry.track_component(
        settings, "index", day, fake_index(settings, f"two_tower-{day}", recall, index_meta),
        version_key=f"two_tower-{day}",
    )  # fmt: skip
    rk = None
    if ranker:
        rk = registry.track_component(
            settings,
            "ranker",
            day,
            fake_model(settings, "ranker", day),
            feature_service="ranker_v1",
        )["version"]
    mv = registry.register_bundle(settings, day, tt["version"], idx["version"], rk, "serving_v1")
    return str(mv.version)


# --- A/B data ---------------------------------------------------------------------------------


def write_day(
    settings: Settings,
    day: dt.date,
    champ: str,
    chall: str,
    ctr: tuple[float, float],
    n: tuple[int, int] = (3_000, 3_000),
    seed: int = 0,
    buy: float = 0.2,
) -> None:
    """Validated partition of ``day``: ``n`` impressions per arm (slates of 5), clicks with
    probability ``ctr`` per arm, a purchase for a share ``buy`` of clicks."""
    from pipelines.experiments import ab

    rng = np.random.default_rng([seed, day.toordinal()])
    rows = []
    ts = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=12)
    for arm, version, p, count in zip(ab.ARMS, (champ, chall), ctr, n, strict=True):
        for i in range(count):
            req, pos = f"{day}-{arm}-{i // 5}", i % 5
            user = f"{arm}-u{rng.integers(400)}"
            base = {"ts": ts, "user_id": user, "item_id": f"i{rng.integers(100)}", "value": 1.0,
                    "request_id": req, "position": pos, "arm": arm,
                    "model_version": f"bundle-{version}", "propensity": 0.5}  # fmt: skip
            rows.append({**base, "event_id": f"{req}-{pos}i", "event": "impression"})
            if rng.random() < p:
                rows.append({**base, "event_id": f"{req}-{pos}c", "event": "click"})
                if rng.random() < buy:
                    rows.append({**base, "event_id": f"{req}-{pos}p", "event": "purchase"})
    table = schema.conform(pd.DataFrame(rows), schema.INTERACTIONS)
    schema.write_partition_atomic(table, settings.validated_dir, day)


# --- serving ----------------------------------------------------------------------------------


class Service:
    """An app with its lifespan running, and an httpx client over ASGI (``async with``)."""

    def __init__(self, settings: Settings, cfg: ServingConfig, load: bool = True) -> None:
        from serving.app import create_app

        self.app = create_app(settings, cfg, load=load)
        self.engine = self.app.state.engine

    async def __aenter__(self):
        import httpx

        self._life = self.app.router.lifespan_context(self.app)
        await self._life.__aenter__()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(self.app), base_url="http://serving", timeout=30
        )
        return self

    async def __aexit__(self, *exc):
        await self.client.aclose()
        await self._life.__aexit__(*exc)


def known_user(settings: Settings, version: str = "1") -> tuple[str, set[str]]:
    """A user the bundle's two-tower knows, with seen items, and those items."""
    from serving.bundle import load

    b = load(settings, version)
    counts = np.diff(b.seen.indptr)
    row = int(np.argmax(counts))
    return b.users.ids[row], b.seen_items(row)


def make_config_bundle(
    settings: Settings, day: str, lr: float = 0.005, recall: float = 0.97
) -> str:
    """:func:`make_bundle` with a two-tower config of learning rate ``lr``: the same ``lr`` is a
    retrain of the same configuration (a refresh), another one a change."""
    import sys
    from unittest import mock

    helpers = sys.modules[__name__]
    real = helpers.fake_model

    def fake_model(s: Settings, name: str, d: str, weights: bytes = b"w") -> Path:
        folder = real(s, name, d, weights)
        (folder / "model" / "config.json").write_text(json.dumps({"model": name, "lr": lr}))
        return folder

    with mock.patch.object(helpers, "fake_model", fake_model):
        return helpers.make_bundle(settings, day, recall=recall)


def stop_service(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Stop a ``recloop serve`` subprocess the way an operator does (SIGINT: logs flushed),
    killing it when it has not exited after ``timeout_s``."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


PROMOTION_RACER = """
import sys, time
from pathlib import Path
from pipelines.release import registry
from pipelines.core.settings import Settings

s = Settings.from_env()
registry.client(s).search_registered_models()  # warm up before the start signal
go = Path(sys.argv[2])
Path(sys.argv[3]).touch()
while not go.exists():
    time.sleep(0.005)
expected = None if sys.argv[4] == "none" else sys.argv[4]
print("won" if registry.promote(s, sys.argv[1], sys.argv[5], expected=expected) else "lost")
"""


def start_promotion_racer(
    env: dict[str, str],
    version: str,
    go: Path,
    ready: Path,
    expected: str | None = None,
    alias: str = "champion",
) -> subprocess.Popen:
    """A process (environment ``env``) that touches ``ready`` once its registry client is warm,
    waits for ``go`` to appear, then promotes ``version`` to ``alias`` by compare-and-set against
    ``expected`` and prints ``won`` or ``lost``."""
    import sys

    args = [version, str(go), str(ready), expected or "none", alias]
    return subprocess.Popen([sys.executable, "-c", PROMOTION_RACER, *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_racers_ready(
    ready: list[Path], procs: list[subprocess.Popen], timeout_s: float = 120
) -> None:
    """Until every ``ready`` file exists; fails with the racers' stderr when one died first."""
    import time

    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in ready):
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        assert time.monotonic() < deadline, "racers not ready"
        time.sleep(0.05)


def race_promotions(
    envs: list[dict[str, str]], versions: list[str], folder: Path
) -> dict[str, str]:
    """Promote each of ``versions`` to champion (expected: none yet) from its own process with
    ``envs[i]``, all released at once; ``{version: "won" | "lost"}``."""
    go = folder / "go"
    ready = [folder / f"ready-{v}" for v in versions]
    procs = [start_promotion_racer(e, v, go, r)
             for e, v, r in zip(envs, versions, ready, strict=True)]  # fmt: skip
    wait_racers_ready(ready, procs)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    return {v: out.strip() for v, (out, _) in zip(versions, outs, strict=True)}
