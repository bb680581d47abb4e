"""``recloop status``: the stages, the registry, the experiment and the "next:" line of a workspace.

Unit tier: workspaces written with the formats' own writers (partitions, gate and A/B
decisions), Redis and the service pointed at closed loopback ports. The registry test uses a
real MLflow store (integration tier through ``ab_registry``).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pyarrow as pa
import pytest

from pipelines import cli
from pipelines.core import layout, schema
from pipelines.core.ab_decisions import write_ab_decision
from pipelines.core.gate_decisions import write_gate_decision
from pipelines.core.net import free_port
from pipelines.core.settings import Settings
from pipelines.report import status as st
from tests.helpers import write_validated


@pytest.fixture()
def offline(settings: Settings) -> Settings:
    """The workspace with Redis and the service on closed loopback ports (refused at once)."""
    return dataclasses.replace(
        settings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        serve_url=f"http://127.0.0.1:{free_port()}",
    )


def _collect(s: Settings) -> dict:
    return st.collect(s, f"{s.serve_url}/health/ready")


def _raw(s: Settings, day: str) -> None:
    schema.write_partition_atomic(pa.table({"event_id": [f"{day}-a"]}), s.interactions_dir, day)


def _features(s: Settings, day: str) -> None:
    for entity in ("user", "item"):
        path = layout.feature_table_path(s, entity, day)
        schema.write_partition_atomic(pa.table({"id": ["x"]}), path.parent.parent, day)


def _gate(s: Settings, day: str, candidate: str | None, action: str, **extra) -> None:
    write_gate_decision(s, {"date": day, "candidate_version": candidate, "champion_version": None,
                            "action": action, "reason": f"{action} on {day}", "gates": [],
                            "aliases": {}, "passed": action != "rejected", **extra})  # fmt: skip


def test_empty_workspace_says_what_to_do_first(offline: Settings) -> None:
    out = _collect(offline)
    assert set(out["stages"].values()) == {None}
    assert out["pending"] == [] and out["dag_runs"] == [] and out["experiment"] is None
    assert out["registry"] == {"champion": None, "challenger": None, "latest_bundle": None}
    assert out["quarantine_rows"] == 0
    assert out["service"]["ready"] is False
    assert "Redis online store unreachable" in out["notes"]["materialized"]
    assert out["next"].startswith("no logs yet: run recloop demo")
    text = st.format_status(out)
    assert "next: no logs yet" in text and "champion    none" in text


def test_stages_walk_the_next_step_forward(offline: Settings) -> None:
    s = offline
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        _raw(s, day)
    for day in ("2026-01-01", "2026-01-02"):
        write_validated(s, day)
        _features(s, day)
    _gate(s, "2026-01-02", None, "rejected")
    bad = pa.table({"event_id": ["a", "b", "c"], "reason": ["x", "y", "z"]})
    schema.write_partition_atomic(bad, s.quarantine_dir, "2026-01-02")
    schema.write_partition_atomic(bad.slice(0, 1), layout.served_quarantine_dir(s), "2026-01-02")

    out = _collect(s)
    assert out["stages"]["raw"] == "2026-01-03" and out["stages"]["validated"] == "2026-01-02"
    assert out["stages"]["features"] == "2026-01-02" and out["stages"]["gated"] == "2026-01-02"
    assert out["pending"] == ["2026-01-03"]
    assert out["quarantine_rows"] == 4
    assert out["next"].startswith("validate 2026-01-03: raw logs present, not validated")

    write_validated(s, "2026-01-03")
    assert _collect(s)["next"].startswith("features 2026-01-03: validated, no feature tables")

    _features(s, "2026-01-03")
    _gate(s, "2026-01-03", None, "rejected")
    out = _collect(s)
    assert out["stages"]["gated"] == "2026-01-03"
    assert out["next"].startswith("no champion: the gate of 2026-01-03 rejected")
    assert "quarantine: 4 row(s)" in st.format_status(out)


def test_latest_dag_runs_with_failed_tasks(offline: Settings) -> None:
    """The query over Airflow 3's ``dag_run`` / ``task_instance`` columns that status reads."""
    path = layout.airflow_db_path(offline)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id TEXT, run_id TEXT, "
                "logical_date TEXT, state TEXT, start_date TEXT, end_date TEXT)")  # fmt: skip
    con.execute("CREATE TABLE task_instance (dag_id TEXT, run_id TEXT, task_id TEXT, state TEXT)")
    con.executemany(
        "INSERT INTO dag_run VALUES (?, ?, ?, ?, ?, NULL, NULL)",
        [(1, "recloop_daily", "r1", "2026-01-01", "success"),
         (2, "recloop_daily", "r2", "2026-01-02", "failed"),
         (3, "recloop_ab", "a1", "2026-01-01", "success")],
    )  # fmt: skip
    con.executemany(
        "INSERT INTO task_instance VALUES ('recloop_daily', ?, ?, ?)",
        [("r2", "validate", "success"), ("r2", "features", "failed"),
         ("r2", "gate", "upstream_failed"), ("r1", "train_mf", "failed")],
    )  # fmt: skip
    con.commit()
    con.close()
    runs, note = st.dag_runs(offline)
    assert note is None
    assert [(r["dag_id"], r["run_id"], r["state"]) for r in runs] == [
        ("recloop_ab", "a1", "success"),
        ("recloop_daily", "r2", "failed"),
    ]
    assert runs[1]["failed_tasks"] == ["features", "gate"]
    _raw(offline, "2026-01-02")
    write_validated(offline, "2026-01-02")
    assert _collect(offline)["next"].startswith("recloop_daily run r2 failed at features, gate")


def test_experiment_next_at_current_traffic() -> None:
    rec = {"date": "2026-01-04", "day": 2, "action": "continue",
           "config": {"min_impressions": 2000, "max_days": 14}}  # fmt: skip
    assert st.experiment_next(rec, {"champion": 4000, "challenger": 500}).startswith(
        "6 more day(s) at current traffic"  # 250 a day: (2000 - 500) / 250
    )
    assert "stops in 2 day(s)" in st.experiment_next({**rec, "day": 12}, {"challenger": 500})
    assert st.experiment_next({**rec, "day": 0}, {}).startswith("waiting for challenger traffic")
    assert st.experiment_next(rec, {"champion": 5000, "challenger": 2500}).startswith(
        "decides when significant; stops after 12"
    )
    assert st.experiment_next({**rec, "action": "promote"}, {}) == "decided: promote on 2026-01-04"


def test_json_is_the_document_only(
    offline: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECLOOP_REDIS_URL", offline.redis_url)
    monkeypatch.setenv("RECLOOP_SERVE_URL", offline.serve_url + "/")
    _raw(offline, "2026-01-01")
    assert cli.main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {"home", "stages", "pending", "models", "notes", "registry", "dag_runs",
                        "experiment", "service", "quarantine_rows", "next", "last_gate"}  # fmt: skip
    assert list(doc["stages"]) == ["raw", "validated", "features", "materialized", "trained",
                                   "registered", "gated"]  # fmt: skip
    assert doc["stages"]["raw"] == "2026-01-01" and doc["pending"] == ["2026-01-01"]
    assert doc["service"]["url"] == f"{offline.serve_url}/health/ready"
    assert set(doc["models"]) == set(st.MODELS)


def test_registry_aliases_gate_numbers_and_experiment(
    ab_registry: tuple[Settings, str, str],
) -> None:
    """Champion / challenger read from MLflow's SQLite tables match the registry's own answer."""
    from pipelines.release import registry

    s, champ, chall = ab_registry
    s = dataclasses.replace(s, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                            serve_url=f"http://127.0.0.1:{free_port()}")  # fmt: skip
    gates = [{"name": "ndcg@10", "candidate": 0.31, "champion": 0.29, "verdict": "pass"}]
    _gate(s, "2025-12-03", chall, "challenger", gates=gates)
    write_ab_decision(s, {
        "experiment": f"{champ}-vs-{chall}", "date": "2025-12-05", "day": 2, "action": "continue",
        "reason": "below the minimum sample", "diff": {"p_value": 0.4},
        "arms": [{"arm": "champion", "impressions": 3000}, {"arm": "challenger", "impressions": 400}],
        "config": {"min_impressions": 2000, "max_days": 14},
    })  # fmt: skip
    write_validated(s, "2025-12-05")
    _features(s, "2025-12-05")
    out = _collect(s)
    reg = out["registry"]
    assert reg["champion"]["version"] == registry.get_alias(s, "champion") == champ
    assert reg["challenger"]["version"] == registry.get_alias(s, "challenger") == chall
    assert reg["challenger"]["logical_date"] == "2025-12-02"
    assert reg["challenger"]["gate"] == {
        "date": "2025-12-03",
        "action": "challenger",
        "numbers": {"ndcg@10": {"candidate": 0.31, "champion": 0.29, "verdict": "pass"}},
    }
    assert reg["champion"]["gate"] is None
    assert reg["latest_bundle"] == {"version": chall, "logical_date": "2025-12-02"}
    assert out["stages"]["registered"] == "2025-12-02"
    exp = out["experiment"]
    assert exp["impressions"] == {"champion": 3000, "challenger": 400} and exp["p_value"] == 0.4
    assert exp["next"].startswith("8 more day(s) at current traffic")  # 200 a day: 1600 / 200
    assert out["next"] == f"a challenger is under test ({champ}-vs-{chall}): {exp['next']}"


def test_service_health_ready_and_not_ready() -> None:
    """A loopback HTTP server answering 200 on /health/ready and 503 elsewhere."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/health/ready" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert st.service_health(f"{base}/health/ready") == {
            "url": f"{base}/health/ready", "ready": True, "detail": "HTTP 200"}  # fmt: skip
        assert st.service_health(f"{base}/other")["detail"] == "HTTP 503"
    finally:
        server.shutdown()
        server.server_close()
    assert st.service_health(f"{base}/health/ready")["ready"] is False
