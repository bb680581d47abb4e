"""The main job: the whole loop over simulated days, ending with a summary and an HTML report.

  recloop demo [--days 5] [--scale demo] [--seed 42] [--start-date 2026-01-01]
               [--requests N] [--share 0.5] [--runner airflow|inline] [--cluster]

For each simulated day D (pipelines.loop.closed_loop):
1. D's logs: until a champion bundle exists, the simulator's logging policy writes them; then the
   platform's own service does (`recloop serve` on loopback, hot-reloading the registry aliases):
   the simulator's users of D are sent to it over HTTP, click and buy according to the truth,
   report it through /feedback, and the service's log becomes D's partition;
2. the daily DAG through Airflow (validate, features to Redis, MF / two-tower / baselines, FAISS
   index, ranker, forward evaluation, OPE, register, gate → challenger);
3. the A/B DAG: the running experiment (champion vs challenger arms) under an always-valid test:
   promote (the service serves the new champion the next day), roll back, or keep collecting.

Ends with a table per day (who logged it, each arm's measured and true CTR, gate and A/B
decisions, seconds), the offline metrics, OPE against the truth, the gate decisions, the A/B
history, and RECLOOP_HOME/reports/index.html with the plots. Resumable: run it again on the same
RECLOOP_HOME and it continues where it stopped. Needs Redis on loopback (infra/demo.sh starts it).
"""

from __future__ import annotations

import argparse
import datetime as dt

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=5, help="days to run (default 5)")
    parser.add_argument(
        "--scale", choices=["tiny", "small", "demo", "large"], help="default: RECLOOP_SCALE"
    )
    parser.add_argument("--seed", type=int, help="default: RECLOOP_SEED")
    parser.add_argument("--start-date", default="2026-01-01", help="first simulated day")
    parser.add_argument(
        "--requests", type=int, default=1500,
        help="simulated requests sent to the service per served day (default 1500; 0 = all)",
    )  # fmt: skip
    parser.add_argument("--share", type=float, default=0.5, help="challenger traffic share")
    parser.add_argument(
        "--runner", choices=["airflow", "inline"], default="airflow",
        help="run the DAGs through Airflow (default) or their task functions in-process",
    )  # fmt: skip
    parser.add_argument(
        "--cluster", action="store_true",
        help="run the loop through the local cluster of this RECLOOP_HOME (bash infra/cluster.sh "
        "up ...): its MLflow server and Redis Cluster, the DAGs through Airflow on Celery, the "
        "traffic through HAProxy to the serving replicas (each part the cluster does not run "
        "falls back to the embedded one, and the demo says so)",
    )  # fmt: skip


def metrics_table(settings: Settings, dates: list[dt.date]) -> str:
    """Forward-evaluation NDCG@10 / recall@100 per day and model, and each day's index recall."""
    import pandas as pd

    from pipelines.core.eval_reports import read_eval_report

    rows = []
    for day in dates:
        report = read_eval_report(settings, day) or {}
        for model, m in report.get("metrics", {}).items():
            rows.append(
                {
                    "day": day.isoformat(),
                    "model": model,
                    "ndcg@10": m.get("ndcg@10"),
                    "recall@100": m.get("recall@100"),
                }
            )
    if not rows:
        return "offline metrics: none yet (the first day has no model trained before it)"
    table = pd.DataFrame(rows).pivot(index="model", columns="day", values="ndcg@10")
    return (
        "offline NDCG@10 of the models trained through the day before (forward evaluation):\n"
        + table.to_string(float_format="%.4f")
    )


def ope_table(settings: Settings, dates: list[dt.date]) -> str:
    """Each day's off-policy estimates of the gated bundles beside the simulator's truth: for the
    served policy (the gate's) SNIPS, DR, ESS, truth and ``|SNIPS − truth| / truth``."""
    from pipelines.core import fmt
    from pipelines.core.ope_reports import ope_labels, read_ope_report, target_of

    lines = [
        "off-policy estimates of each bundle's served policy on the day's logs (PBM SNIPS, DR) "
        "vs the truth:"
    ]
    for day in dates:
        for label in ope_labels(settings, day):
            r = read_ope_report(settings, day, label)
            if r is None:  # removed since it was listed
                continue
            est = r.get("estimates", {})

            def estimate(name: str, est=est) -> str:
                e = est.get(name) or {}
                if e.get("estimate") is None:
                    return f"{name} -"
                return (f"{name} {fmt.number(e['estimate'])} [{fmt.number(e.get('ci_low'))}, "
                        f"{fmt.number(e.get('ci_high'))}]")  # fmt: skip

            line = f"  {day} {r.get('policy')}: {estimate('snips')}  {estimate('dr')}  truth "
            line += fmt.number(r.get("truth"))
            if target_of(r) == "served":
                ess = (est.get("snips") or {}).get("ess")
                line += (f"  |err|/truth {fmt.number(r.get('rel_error'), '.3f')}  ESS "
                         f"{fmt.number(ess, '.0f')}  (served, {r.get('requests')} requests)")  # fmt: skip
            else:
                line += f"  (softmax T={r.get('temperature')}, {r.get('users')} users)"
            lines.append(line)
    return "\n".join(lines) if len(lines) > 1 else "off-policy estimates: none yet"


def gates_table(settings: Settings, dates: list[dt.date]) -> str:
    """One line per day: the gated bundle, the decision and the aliases after it."""
    from pipelines.core.gate_decisions import read_gate_decision

    lines = ["promotion gates (bundle trained through the day before, judged on the day):"]
    for day in dates:
        d = read_gate_decision(settings, day)
        if d is None:
            lines.append(f"  {day}: no gate decision")
            continue
        lines.append(
            f"  {day}: bundle {d.get('candidate_version', '-')} -> {d.get('action', '?')}"
            f" ({d.get('reason', '')}); aliases {d.get('aliases', {})}"
        )
    return "\n".join(lines)


def ab_table(settings: Settings) -> str:
    """Every A/B experiment's decisions, one line per analysed day."""
    from pipelines.core.ab_decisions import ab_experiments
    from pipelines.experiments import ab

    names = ab_experiments(settings)
    if not names:
        return "A/B experiments: none yet"
    out = []
    for name in names:
        records = ab.history(settings, name)
        out.append(f"A/B experiment {name} (champion-vs-challenger bundle versions):")
        out.append(ab.format_history(records))
        if records and records[-1].get("arms"):
            out.append(ab.format_arms(records[-1]["arms"]))
    return "\n".join(out)


def _through_cluster(settings: Settings, args: argparse.Namespace) -> tuple[Settings, dict]:
    """The workspace's settings pointed at the running local cluster, and the loop's
    ``runner`` / ``airflow_port`` / ``external_service`` for it; prints what is used."""
    import os

    from pipelines.cluster.config import ClusterConfig
    from pipelines.loop.cluster_run import ReplicaService, cluster_plan

    plan = cluster_plan(ClusterConfig.from_env())
    os.environ.update(plan.env)  # task processes and the service read the same settings
    settings = Settings.from_env()
    extra: dict = {}
    if plan.airflow_port is not None:
        extra.update(runner="celery", airflow_port=plan.airflow_port)
    if plan.serving is not None:
        experiment = {"challenger_share": args.share}
        extra["external_service"] = ReplicaService(plan.serving, plan.admin_token, experiment)
    used = ", ".join(f"{k}={v}" for k, v in plan.env.items() if k != "RECLOOP_HOME")
    where = f"HAProxy {extra['external_service'].url}" if "external_service" in extra else "-"
    print(
        f"recloop demo: through the local cluster ({used}; DAGs "
        f"{'on Celery' if plan.airflow_port else 'by airflow dags test'}; serving {where})"
    )
    for note in plan.notes:
        print(f"recloop demo: {note}")
    return settings, extra


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.core.schema import parse_date
    from pipelines.core.stats_reports import read_stats_report
    from pipelines.data.stats import format_stats
    from pipelines.loop import closed_loop
    from pipelines.report.html import write_report

    extra = {}
    if args.cluster:
        try:
            settings, extra = _through_cluster(settings, args)
        except RuntimeError as exc:
            print(f"recloop demo: {exc}", flush=True)
            return 1
    cfg = closed_loop.LoopConfig(
        days=args.days, start=parse_date(args.start_date), scale=args.scale, seed=args.seed,
        max_requests=args.requests or None, challenger_share=args.share,
        runner=extra.pop("runner", args.runner), **extra,
    )  # fmt: skip
    print(f"recloop demo: workspace {settings.home}; {args.days} day(s) from {cfg.start}, "
          f"runner {cfg.runner}", flush=True)  # fmt: skip

    def progress(day: dt.date, phase: str, rec: dict) -> None:
        secs = rec["seconds"].get(phase, 0.0)
        if phase == "logs":
            what = f"logs written by the {rec['source'].replace('_', ' ')}"
            if rec.get("traffic"):
                t = rec["traffic"]
                what += f" ({t.get('served', '?')} requests served, {t.get('clicks', '?')} clicks)"
        else:
            gate, ab = rec.get("gate") or {}, rec.get("ab") or {}
            what = f"daily + A/B DAGs: gate {gate.get('action', '-')}"
            if ab:
                what += f", A/B {ab.get('experiment')} {ab.get('action')}"
        print(f"  {day} {phase:<5} {secs:6.1f}s  {what}", flush=True)

    try:
        records = closed_loop.run_loop(settings, cfg, on_phase=progress)
    except closed_loop.StageFailed as exc:
        print(f"recloop demo: {exc}", flush=True)
        return 1
    dates = [parse_date(r["date"]) for r in records]

    print("== summary ==", flush=True)
    for day in dates:
        stats = read_stats_report(settings, day)
        if stats is not None:
            print(format_stats(stats))
    print(closed_loop.format_days(records))
    print(metrics_table(settings, dates))
    print(ope_table(settings, dates))
    print(gates_table(settings, dates))
    print(ab_table(settings))
    html = write_report(settings, dates)
    total = sum(r.get("seconds", {}).get("total", 0.0) for r in records)
    print(f"{len(records)} day(s) in {total:.0f}s; report {html}; outputs under {settings.home}")
    return 0
