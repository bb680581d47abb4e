"""The HTML report: sections from synthetic report files, "no data" fallbacks, escaping, reruns."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import re
import shutil

import numpy as np
import pandas as pd

from pipelines.core import schema
from pipelines.experiments import ab
from pipelines.release import gate
from pipelines.report.html import NO_DATA, SECTIONS, load_reports, write_report
from tests.helpers import write_day

D1, D2 = dt.date(2026, 1, 2), dt.date(2026, 1, 3)
EVIL = '<script>alert("x")</script>'
IMG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def _day_record(day: dt.date, source: str, ab_action: str | None) -> dict:
    return {
        "date": day.isoformat(),
        "source": source,
        "seconds": {"simulate": 1.2, "traffic": 40.1, "ingest": 0.8, "daily_dag": 61.0,
                    "ab_dag": 9.5, "total": 112.6},
        "traffic": {"requests": 100, "served": 99, "errors": 1, "impressions": 990,
                    "clicks": 21, "ctr_by_arm": {"champion": 0.02, "challenger": 0.023}},
        "served": {"champion": {"impressions": 700, "clicks": 14, "ctr": 0.02, "true_ctr": 0.021},
                   "challenger": {"impressions": 290, "clicks": 7, "ctr": 0.024}},
        "dag": {"recloop_daily": "success", "recloop_ab": "success" if ab_action else None},
        "aliases_before": {"champion": "1", "challenger": None},
        "aliases_after": {"champion": "1", "challenger": "2"},
        "gate": {"candidate_version": "2", "action": "challenger"},
        "ab": {"experiment": "1-vs-2", "action": ab_action} if ab_action else None,
    }  # fmt: skip


def _gate_record(day: dt.date, reason: str) -> dict:
    gates = [
        gate.Gate("validation", "passed", None, None, "pass"),
        gate.Gate("ndcg@10", 0.21, 0.2, 0.005, "pass"),
        gate.Gate("index_recall", 0.97, None, 0.95, "pass"),
        gate.Gate("snips", 0.019, 0.021, 0.0, "fail"),
    ]
    rec = gate.Decision(day.isoformat(), "2", "1", "rejected", gates, reason).to_dict()
    rec["aliases"] = {"champion": "1", "challenger": None}
    return rec


def _ope_record(day: dt.date, label: str, snips: float, truth: float) -> dict:
    est = {"estimate": snips, "ci_low": snips - 0.004, "ci_high": snips + 0.004}
    return {
        "date": day.isoformat(),
        "policy": label,
        "temperature": 0.05,
        "k": 10,
        "users": 400,
        "estimates": {"snips": est, "dr": {**est, "estimate": snips + 0.001}},
        "truth": truth,
        "logging_ctr": 0.02,
    }


def _ab_rows(days: list[dt.date], seed: int = 0) -> pd.DataFrame:
    """Experiment rows: 40 users per arm per day, 10 impressions each, a few clicks."""
    rng = np.random.default_rng(seed)
    out = []
    for day in days:
        for arm, version, p in (("champion", "bundle-1", 0.02), ("challenger", "bundle-2", 0.03)):
            for u in range(40):
                rid = f"{day}-{arm}-{u}"
                for pos in range(10):
                    base = {"user_id": f"{arm}-u{u}", "request_id": rid, "position": pos,
                            "arm": arm, "model_version": version, "date": day}  # fmt: skip
                    out.append({**base, "event_id": f"{rid}-i{pos}", "event": "impression"})
                    if rng.random() < p:
                        out.append({**base, "event_id": f"{rid}-c{pos}", "event": "click"})
    return pd.DataFrame(out)


def _ab_record(experiment: str, upto: list[dt.date], with_prediction: bool) -> dict:
    champ, chall = ab.parse_experiment(experiment)
    cfg = ab.ABConfig(min_impressions=100)
    rows = _ab_rows(upto)
    looks = ab.daily_looks(rows, upto, cfg)
    action, reason, guardrails = ab.decide(looks, len(upto), cfg)
    arms = json.loads(ab.summarize(rows).reset_index().to_json(orient="records"))
    rec = ab.Decision(
        experiment, upto[-1].isoformat(), champ, chall, action, reason, upto[0].isoformat(),
        len(upto), arms, {k: looks[-1][k] for k in ("ctr_diff", "p_value", "lower", "upper")},
        looks, guardrails, dataclasses.asdict(cfg), "nothing to apply",
        {"champion": champ, "challenger": chall},
    ).to_dict()  # fmt: skip
    if with_prediction:
        source = f"reports/ope/date={D1}/bundle-1.json"
        ope = {"snips": 0.021, "ci_low": 0.017, "ci_high": 0.025, "dr": None,
               "date": D1.isoformat(), "source": source}  # fmt: skip
        rec["predicted"] = {"champion": ope, "challenger": None}
        rec["truth"] = {"champion": 0.02, "challenger": 0.03}
    return rec


def populate(settings) -> None:
    """Two days of every report kind, two A/B experiments (one with OPE/truth keys)."""
    r = settings.reports_dir
    days = [_day_record(D1, "logging_policy", None), _day_record(D2, "service", "continue")]
    schema.write_json_atomic(days, r / "loop" / "days.json")
    for day, ndcg in ((D1, 0.18), (D2, 0.2)):
        metrics = {m: {"ndcg@10": ndcg + i / 100, "recall@100": 0.5 + i / 10, "auc": 0.8}
                   for i, m in enumerate(("mf", "two_tower"))}  # fmt: skip
        schema.write_json_atomic({"date": day.isoformat(), "metrics": metrics},
                                 r / "eval" / f"date={day}.json")  # fmt: skip
        stats = {"date": day.isoformat(), "rows": 1000, "users": 50, "items": 80,
                 "new_users": 5, "new_items": 2, "ctr": 0.021,
                 "events": {"impression": 900, "click": 19, "purchase": 6}}  # fmt: skip
        schema.write_json_atomic(stats, r / "stats" / f"date={day}.json")
        schema.write_json_atomic(_gate_record(day, EVIL), r / "gates" / f"date={day}.json")
    for label, snips, truth in (("bundle-1", 0.021, 0.02), ("bundle-2", 0.026, 0.03)):
        rec = _ope_record(D2, label, snips, truth)
        if label == "bundle-2":  # a served-policy report (the gate's); bundle-1 an older softmax
            rec.update(target="served", requests=600)
            rec["estimates"]["snips"]["ess"] = 812.0
        schema.write_json_atomic(rec, r / "ope" / f"date={D2}" / f"{label}.json")
    for day_list in ([D1], [D1, D2]):
        rec = _ab_record("1-vs-2", day_list, with_prediction=True)
        schema.write_json_atomic(rec, ab.report_path(settings, "1-vs-2", day_list[-1]))
    rec = _ab_record("1-vs-3", [D2], with_prediction=False)
    schema.write_json_atomic(rec, ab.report_path(settings, "1-vs-3", D2))
    for day in (D1, D2):  # validated impressions: the catalog-health section
        write_day(settings, day, "1", "2", (0.02, 0.03), n=(50, 50))


# plots: days 1, offline metrics 1, data 1, OPE 1, A/B 1-vs-2 (looks + OPE-vs-A/B) 2, 1-vs-3 1,
# catalog health 1
EXPECTED_IMAGES = 8


def test_full_report_sections_plots_and_escaping(settings):
    populate(settings)
    path = write_report(settings)
    assert path == settings.reports_dir / "index.html"
    page = path.read_text()
    for _, title in SECTIONS:
        assert f">{title}</h2>" in page
    images = IMG.findall(page)
    assert len(images) == EXPECTED_IMAGES == page.count("<img ")
    for b64 in images:
        assert base64.b64decode(b64).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    # data from every section made it into the tables
    assert "experiment 1-vs-2" in page and "experiment 1-vs-3" in page
    assert "0.2100 vs 0.2000: pass" in page  # ndcg gate cell
    assert "bundle 2 → challenger" in page  # days table
    assert "champion: CTR 0.0200 (true 0.0210) over 700 impressions" in page
    assert "reports/ope/date=2026-01-02/bundle-1.json" in page  # OPE prediction source
    # OPE section: the served report's ESS and |SNIPS - truth| / truth, the older one's target
    assert "<td>served</td>" in page and "<td>812</td>" in page and "<td>0.133</td>" in page
    assert "softmax T=0.0500" in page and "<td>0.050</td>" in page
    # the only "no data" line: 1-vs-3 has no OPE prediction or truth
    assert page.count(f">{NO_DATA}:") == 1
    assert "no OPE prediction or truth recorded for 1-vs-3" in page


def test_empty_workspace_says_no_data_everywhere(settings):
    page = write_report(settings).read_text()
    assert page.count(f'<p class="nodata">{NO_DATA}:') == len(SECTIONS)
    assert "<img " not in page


def test_missing_reports_dir_entirely(tmp_path, monkeypatch):
    from pipelines.core.settings import Settings

    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path / "never-created"))
    s = Settings.from_env()
    page = write_report(s).read_text()
    assert page.count(f">{NO_DATA}:") == len(SECTIONS)


def test_malformed_files_degrade_to_no_data(settings, caplog):
    populate(settings)
    r = settings.reports_dir
    (r / "loop" / "days.json").write_text('{"not": "a list"}')
    (r / "stats" / f"date={D1}.json").write_text("{broken")
    (r / "stats" / f"date={D2}.json").write_text('["a list"]')
    schema.write_json_atomic({"date": str(D2), "metrics": "oops"}, r / "eval" / f"date={D2}.json")
    schema.write_json_atomic(
        {"date": str(D1), "metrics": {"mf": 3}}, r / "eval" / f"date={D1}.json"
    )
    rec = json.loads(ab.report_path(settings, "1-vs-3", D2).read_text())
    rec.update(looks="nonsense", arms=[1, None], guardrails={"x": 1}, predicted=[], truth="?")
    schema.write_json_atomic(rec, ab.report_path(settings, "1-vs-3", D2))
    (r / "gates" / "date=not-a-date.json").write_text("[]")
    page = write_report(settings).read_text()
    for what in ("no reports/loop/days.json records", "no reports/stats/date=*.json",
                 "no looks recorded for 1-vs-3", "no guardrails recorded"):  # fmt: skip
        assert f"{NO_DATA}: {what}" in page
    assert "skipping" in caplog.text  # the unreadable stats file was logged
    # gates, OPE and the healthy experiment still render; the metrics plot keeps only the
    # gates' index recall panel
    # index recall, OPE, 1-vs-2 looks, 1-vs-2 OPE-vs-A/B, catalog health
    assert page.count("<img ") == 5
    assert "0.2100 vs 0.2000: pass" in page


def test_rerun_overwrites_atomically_and_deterministically(settings):
    populate(settings)
    shutil.rmtree(settings.reports_dir / "ab")  # fewer plots: this test renders three times
    first = write_report(settings).read_bytes()
    assert write_report(settings).read_bytes() == first  # same reports, same bytes
    schema.write_json_atomic(
        _ope_record(D1, "bundle-9", 0.05, 0.04),
        settings.reports_dir / "ope" / f"date={D1}" / "bundle-9.json",
    )
    second = write_report(settings).read_text()
    assert second.encode() != first and "bundle-9" in second
    leftovers = [p.name for p in settings.reports_dir.iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


def test_dates_restrict_every_section(settings):
    populate(settings)
    data = load_reports(settings, [D1])
    assert data.dates() == [D1.isoformat()]
    assert list(data.ab) == ["1-vs-2"] and list(data.ab["1-vs-2"]) == [D1.isoformat()]
    page = write_report(settings, [D1]).read_text()
    assert str(D2) not in page
    # D2 holds the OPE reports and 1-vs-3: their sections / plots disappear
    assert "experiment 1-vs-3" not in page
    assert f"{NO_DATA}: no reports/ope/date=*/*.json" in page


def test_cli_report_writes_to_out(settings, tmp_path, capsys):
    from pipelines.cli import main

    populate(settings)
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", "--out", str(out), "--date", str(D2)]) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text()
    assert page.count("<img ") >= 1 and str(D1) not in page.split("<h2")[1:][0]
    assert not (settings.reports_dir / "index.html").exists()
