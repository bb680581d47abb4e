"""The main job on the embedded default: simulate days, then run the daily DAG over each.

  recloop demo [--days 3] [--scale demo] [--seed 42] [--start-date 2026-01-01]

1. simulates --days days of a seeded world (users, items, a logging policy with known
   propensities) into RECLOOP_HOME/data, with the ground truth apart in RECLOOP_HOME/truth;
2. runs the daily DAG through Airflow (`airflow dags test`) for each simulated date;
3. prints a summary: the simulated days, each DAG run's task outcomes, the day statistics and
   the offline metrics of each day's models (forward evaluation: trained through D-1, scored on D).

Needs Redis on loopback for the feature tasks (infra/demo.sh starts it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

from pipelines.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=3, help="days to simulate and run (default 3)")
    parser.add_argument("--scale", choices=["tiny", "demo", "large"], help="default: RECLOOP_SCALE")
    parser.add_argument("--seed", type=int, help="default: RECLOOP_SEED")
    parser.add_argument("--start-date", default="2026-01-01", help="first simulated day")


def metrics_table(settings: Settings, dates: list[dt.date]) -> str:
    """Forward-evaluation NDCG@10 / recall@100 per day and model, and each day's index recall."""
    import pandas as pd

    rows = []
    for day in dates:
        path = settings.reports_dir / "eval" / f"date={day.isoformat()}.json"
        report = json.loads(path.read_text()) if path.exists() else {}
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
    """Each day's off-policy estimates of the gated bundles beside the simulator's truth."""
    lines = [
        "off-policy estimates of each bundle's policy on the day's logs (SNIPS, DR) vs the truth:"
    ]
    for day in dates:
        folder = settings.reports_dir / "ope" / f"date={day.isoformat()}"
        for path in sorted(folder.glob("*.json")) if folder.exists() else []:
            r = json.loads(path.read_text())
            est = r.get("estimates", {})

            def fmt(name: str, est=est) -> str:
                e = est.get(name) or {}
                if e.get("estimate") is None:
                    return f"{name} -"
                return f"{name} {e['estimate']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}]"

            truth = r.get("truth")
            lines.append(
                f"  {day} {r.get('policy')}: {fmt('snips')}  {fmt('dr')}  truth "
                + (f"{truth:.4f}" if truth is not None else "-")
                + f"  (softmax T={r.get('temperature')}, {r.get('users')} users)"
            )
    return "\n".join(lines) if len(lines) > 1 else "off-policy estimates: none yet"


def gates_table(settings: Settings, dates: list[dt.date]) -> str:
    """One line per day: the gated bundle, the decision and the aliases after it."""
    lines = ["promotion gates (bundle trained through the day before, judged on the day):"]
    for day in dates:
        path = settings.reports_dir / "gates" / f"date={day.isoformat()}.json"
        if not path.exists():
            lines.append(f"  {day}: no gate decision")
            continue
        d = json.loads(path.read_text())
        lines.append(
            f"  {day}: bundle {d.get('candidate_version', '-')} -> {d.get('action', '?')}"
            f" ({d.get('reason', '')}); aliases {d.get('aliases', {})}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines import simulate
    from pipelines.airflow_runner import run_dag
    from pipelines.schema import parse_date
    from pipelines.stats import format_stats

    start = parse_date(args.start_date)
    print(f"recloop demo: workspace {settings.home}", flush=True)
    print(f"== 1. simulating {args.days} day(s) ==", flush=True)
    summaries = simulate.simulate(settings, args.days, args.scale, args.seed, start)
    print(simulate.format_summary(summaries), flush=True)

    print("== 2. daily DAG through Airflow ==", flush=True)
    results = []
    for offset in range(args.days):
        day = start + dt.timedelta(days=offset)
        result = run_dag(settings, day)
        results.append(result)
        print(result, flush=True)
        if not result.ok:
            print("--- Airflow log (tail) ---\n" + result.log_tail[-2500:])
            return 1

    print("== 3. summary ==", flush=True)
    for result in results:
        path = settings.reports_dir / "stats" / f"date={result.date.isoformat()}.json"
        if path.exists():
            print(format_stats(json.loads(path.read_text())))
    print(metrics_table(settings, [r.date for r in results]))
    print(ope_table(settings, [r.date for r in results]))
    print(gates_table(settings, [r.date for r in results]))
    total = sum(r.seconds for r in results)
    print(f"{len(results)} DAG run(s) succeeded in {total:.0f}s; outputs under {settings.home}")
    return 0
