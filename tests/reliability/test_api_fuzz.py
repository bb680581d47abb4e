"""Issue 17, API fuzzing: schemathesis requests on every endpoint, none answered with a 5xx.

The service's OpenAPI document (:func:`serving.api_models.openapi_document`: FastAPI's routes with
the bodies, query and admin token the handlers read) drives schemathesis; every operation gets
schema-conforming (positive) and schema-breaking (negative) requests, sent over real HTTP to the
app under real uvicorn on a free loopback port, serving the champion of a tiny trained workspace
(two simulated days, the daily task functions) on the session's redis-server.

What the generated requests are given besides schemathesis' own data (drawn by hypothesis):

- ``/admin/*``: no ``Authorization`` header, a wrong token or the right one (so the token-checked
  code runs: config changes under fuzzed experiment bodies, then more fuzzed traffic);
- ``/feedback``: sometimes a real request id and an item it showed (else every case is a 404);
- ``/recommend``: sometimes a user the bundle knows (else nearly every case is a cold start).

Bounded and reproducible (``derandomize``): :data:`EXAMPLES` per operation and mode, at least
:data:`MIN_REQUESTS` requests in all, counted here; the test fails on any response >= 500 or
transport error, naming the request that got it. A second test sends :data:`EDGES`, bodies
hypothesis does not draw (lone surrogates, ``NaN``, numbers past int64, NUL), each followed by a
normal ``/recommend`` and ``GET /admin/experiment``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from pipelines.core.settings import Settings
from pipelines.core.wait import wait_until
from serving.api_models import ADMIN_PATHS, ExperimentBody, openapi_document
from serving.config import ServingConfig
from serving.engine import EXPERIMENT_KEYS
from tests.helpers import RedisServer, champion_workspace, free_port, known_user

DAYS = ("2026-01-01", "2026-01-02")
TOKEN = "fuzz-admin-token-0123456789"
MIN_REQUESTS = 2_000
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
EXAMPLES: dict[tuple[str, str], dict[GenerationMode, int]] = {
    ("POST", "/admin/experiment"): {POSITIVE: 200, NEGATIVE: 200},
    ("GET", "/admin/experiment"): {POSITIVE: 30},
    ("POST", "/admin/reload"): {POSITIVE: 30},
    ("POST", "/recommend"): {POSITIVE: 300, NEGATIVE: 300},
    ("GET", "/recommend"): {POSITIVE: 250, NEGATIVE: 250},
    ("POST", "/feedback"): {POSITIVE: 300, NEGATIVE: 300},
    ("GET", "/health/live"): {POSITIVE: 10},
    ("GET", "/health/ready"): {POSITIVE: 10},
    ("GET", "/metrics"): {POSITIVE: 10},
}
"""Hypothesis examples per operation and generation mode (an operation without inputs has no
negative cases, and hypothesis stops early once it has tried every distinct one). The admin
operations go first: the rest then runs under whatever experiment settings they left."""

RID = "@RID@"  # replaced by a served request id in EDGES
EDGES: list[tuple[str, str, str, bool]] = [
    # (method, path + query, raw JSON body or "", with the admin token): what hypothesis does not
    # draw: lone surrogates (valid JSON escapes, not encodable as UTF-8), NaN / Infinity literals
    # (Python's json accepts them), numbers past float and int64, NUL, non-objects
    ("POST", "/recommend", '{"user_id": "\\ud800"}', False),
    ("POST", "/recommend", '{"user_id": "u1", "exclude": ["\\ud800", "\\u0000"]}', False),
    ("POST", "/recommend", '{"user_id": "u1", "context": {"categories": ["\\udfff"]}}', False),
    ("POST", "/recommend", '{"user_id": "u1", "k": NaN}', False),
    ("POST", "/recommend", '{"user_id": "u1", "k": 1e400}', False),
    ("POST", "/recommend", '{"user_id": "u1", "k": -Infinity}', False),
    ("POST", "/recommend", '{"user_id": "u1", "k": 100000000000000000000000000000}', False),
    ("POST", "/recommend", '{"user_id": "u1", "k": true}', False),
    ("POST", "/recommend", '{"user_id": "u1", "k": 2.0}', False),
    ("POST", "/recommend", '{"user_id": "u1\\u0000"}', False),
    ("POST", "/recommend", '{"user_id": "u1", "\\ud800": 1}', False),
    ("POST", "/recommend", "[]", False),
    ("POST", "/recommend", "null", False),
    ("POST", "/recommend", '"text"', False),
    ("GET", "/recommend?user_id=%ED%A0%80", "", False),
    ("GET", "/recommend?user_id=u1&k=1e400", "", False),
    ("GET", "/recommend?user_id=u1&k=NaN", "", False),
    ("GET", "/recommend?user_id=u1&user_id=u2&categories=%00,%FF", "", False),
    ("POST", "/feedback", '{"request_id": "\\ud800", "item_id": "x"}', False),
    ("POST", "/feedback", '{"request_id": "@RID@", "item_id": "\\ud800"}', False),
    ("POST", "/feedback", '{"request_id": "@RID@", "item_id": "x", "event": "\\ud800"}', False),
    ("POST", "/feedback", '{"request_id": "@RID@", "item_id": "x", "value": NaN}', False),
    ("POST", "/feedback", '{"request_id": "@RID@", "item_id": "x", "\\udfff": 1}', False),
    ("POST", "/feedback", '{"request_id": "@RID@", "item_id": "x", "value": 1e400}', False),
    ("POST", "/feedback", '{"request_id": "@RID@", "item_id": "x", "value": true}', False),
    ("POST", "/feedback", '{"request_id": "@RID@", "item_id": "x", "value": "1"}', False),
    ("POST", "/admin/experiment", '{"salt": "\\ud800"}', True),
    ("POST", "/admin/experiment", '{"experiment": "\\udfff"}', True),
    ("POST", "/admin/experiment", '{"challenger_share": NaN}', True),
    ("POST", "/admin/experiment", '{"explore_rate": Infinity}', True),
    ("POST", "/admin/experiment", '{"challenger_share": true}', True),
    ("POST", "/admin/experiment", '{"salt": null}', True),
    ("POST", "/admin/experiment", '{"salt": 5}', True),
    ("POST", "/admin/experiment", '{"experiment": [1, 2]}', True),
    ("POST", "/admin/experiment", '{"salt": "s", "\\ud800": 1}', True),
    ("POST", "/admin/experiment", "[]", True),
    ("GET", "/admin/experiment", "", True),
    ("POST", "/recommend", '{"user_id": "u1", "k": 3}', False),
]


def config() -> ServingConfig:
    return ServingConfig(reload_interval_s=0, seed=7, log_flush_s=3600, admin_token=TOKEN)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer):
    home = tmp_path_factory.mktemp("fuzz") / "home"
    with champion_workspace(home, redis_server.url, DAYS) as settings:
        yield settings


@pytest.fixture(scope="module")
def server(world: Settings):
    """``(base_url, app)``: the app under real uvicorn in a thread on a loopback port."""
    import uvicorn

    from serving.app import create_app

    app = create_app(world, config())
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, 60, "uvicorn to start", interval_s=0.05)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        srv.should_exit = True
        thread.join(30)


@dataclass
class Tally:
    """Every request sent: status classes per operation, and the ones that went wrong."""

    by_class: Counter = field(default_factory=Counter)
    by_operation: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_class.values())

    def add(self, label: str, case: Any, status: int | None, text: str) -> None:
        self.by_operation[label] += 1
        self.by_class["error" if status is None else f"{status // 100}xx"] += 1
        if status is None or status >= 500:
            sent = {"query": case.query, "headers": case.headers, "body": case.body}
            self.failures.append(f"{label} {sent!r:.400} -> {status}: {text[:300]}")


@dataclass
class Pool:
    """Real values to splice into generated cases: known users, served requests' shown items."""

    users: list[str]
    shown: list[tuple[str, str]]


def seed_pool(session: requests.Session, base: str, settings: Settings) -> Pool:
    user, _ = known_user(settings)
    shown = []
    for u in (user, "fuzz-new-user", user):
        r = session.post(f"{base}/recommend", json={"user_id": u, "k": 5}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        shown += [(body["request_id"], it["item_id"]) for it in body["items"]]
    return Pool(users=[user], shown=shown)


def splice(label: str, case: Any, data: st.DataObject, pool: Pool) -> dict[str, str]:
    """Put real ids into a generated case (in place) and pick its admin header; the headers."""
    if label == "POST /feedback" and isinstance(case.body, dict):
        if data.draw(st.booleans(), label="real request"):
            rid, item = data.draw(st.sampled_from(pool.shown), label="shown")
            case.body["request_id"] = rid
            if data.draw(st.booleans(), label="shown item"):
                case.body["item_id"] = item
    elif label == "POST /recommend" and isinstance(case.body, dict):
        if data.draw(st.booleans(), label="known user"):
            case.body["user_id"] = data.draw(st.sampled_from(pool.users))
    elif label == "GET /recommend" and isinstance(case.query, dict):
        if data.draw(st.booleans(), label="known user"):
            case.query["user_id"] = data.draw(st.sampled_from(pool.users))
    if case.path in ADMIN_PATHS:
        auth = data.draw(st.sampled_from([None, "Bearer wrong-token", f"Bearer {TOKEN}"]))
        return {"Authorization": auth} if auth else {}
    return {}


def fuzz(op: Any, mode: GenerationMode, examples: int, send: Any) -> None:
    """Run ``examples`` hypothesis examples of ``op`` in ``mode``, each one request (``send``)."""

    @hsettings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode), data=st.data())
    def one(case: Any, data: st.DataObject) -> None:
        send(case, data)

    one()


def test_fuzzed_requests_on_every_endpoint_get_no_server_error(server, world: Settings):
    base, app = server
    cfg = config()
    schema = schemathesis.openapi.from_dict(openapi_document(app, cfg))
    ops = {f"{r.ok().method.upper()} {r.ok().path}": r.ok() for r in schema.get_all_operations()}
    routes = {f"{m} {r.path}" for r in app.routes for m in getattr(r, "methods", ()) or ()}
    routes -= {f"HEAD {r.path}" for r in app.routes}
    assert set(ops) == routes == {f"{m} {p}" for m, p in EXAMPLES}  # every endpoint, no other
    assert set(ExperimentBody.model_fields) == EXPERIMENT_KEYS  # the document says all of it

    session = requests.Session()
    pool = seed_pool(session, base, world)
    tally = Tally()

    def send(label: str) -> Any:
        def go(case: Any, data: st.DataObject) -> None:
            headers = splice(label, case, data, pool)
            try:
                r = case.call(base_url=base, session=session, headers=headers, timeout=30)
            except requests.RequestException as exc:  # a dropped connection is a failure too
                tally.add(label, case, None, repr(exc))
                return
            tally.add(label, case, r.status_code, r.text)

        return go

    t0 = time.perf_counter()
    for (method, path), modes in EXAMPLES.items():
        label = f"{method} {path}"
        for mode, n in modes.items():
            fuzz(ops[label], mode, n, send(label))
    elapsed = time.perf_counter() - t0

    print(f"fuzz: {tally.total} requests in {elapsed:.1f} s; by class {dict(tally.by_class)}; "
          f"by operation {dict(tally.by_operation)}")  # fmt: skip
    assert not tally.failures, "\n".join(tally.failures[:20])
    assert tally.total >= MIN_REQUESTS, dict(tally.by_operation)
    assert set(tally.by_operation) == set(ops)
    assert tally.by_class["2xx"] > 0 and tally.by_class["4xx"] > 0  # both kinds were reached
    # the service still answers a well-behaved client after the fuzzed admin changes
    ok = session.post(f"{base}/recommend", json={"user_id": pool.users[0], "k": 5}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["items"]) == 5


def test_hand_written_edge_bodies_get_no_server_error(server, world: Settings):
    """:data:`EDGES`, each followed by a normal ``/recommend`` and ``GET /admin/experiment``
    (an accepted admin change must not break the requests after it)."""
    base, _ = server
    session = requests.Session()
    pool = seed_pool(session, base, world)
    rid = pool.shown[0][0]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    failures = []

    def call(method: str, url: str, **kw: Any) -> tuple[int | None, str]:
        try:
            r = session.request(method, url, timeout=30, **kw)
        except requests.RequestException as exc:  # e.g. the server reset the connection
            return None, repr(exc)
        return r.status_code, r.text

    for method, target, body, admin in EDGES:
        headers = {"content-type": "application/json", **(auth if admin else {})}
        raw = body.replace(RID, rid).encode()
        answers = [
            ("itself", call(method, base + target, data=raw or None, headers=headers)),
            ("then /recommend",
             call("POST", f"{base}/recommend", json={"user_id": pool.users[0], "k": 3})),
            ("then GET /admin", call("GET", f"{base}/admin/experiment", headers=auth)),
        ]  # fmt: skip
        for what, (status, text) in answers:
            if status is None or status >= 500:
                failures.append(f"{method} {target} {body!r} -> {what}: {status} {text[:200]}")
    assert not failures, "\n".join(failures)
