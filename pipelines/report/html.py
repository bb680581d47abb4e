"""The workspace's HTML report: one self-contained page over everything under ``reports/``.

:func:`write_report` reads the JSON reports the pipeline writes and renders
``RECLOOP_HOME/reports/index.html`` — plots as inline base64 PNGs (matplotlib, Agg canvas, no
pyplot state), numbers as HTML tables — written atomically (temp file, then ``os.replace``).

==========================  =====================================================================
source (under ``reports/``)  section
==========================  =====================================================================
``loop/days.json``          1. Days: source, DAG states, seconds per phase (stacked bars), traffic
                            counts, aliases before/after, gate and A/B actions
``eval/date=D.json``        2. Offline metrics: NDCG@10 and recall@100 per model over days
                            (forward evaluation), with the gated index's recall@10
``stats/date=D.json``       3. Data: events per day and CTR per day
``gates/date=D.json``       4. Promotion gates: one row per day, each gate's numbers and verdict
``ope/date=D/*.json``       5. OPE vs truth: SNIPS (95% interval) and DR of each bundle's served
                            policy per day, its ESS, beside the simulator's true value and
                            ``|SNIPS − truth| / truth``
``ab/<E>/date=D.json``      6. A/B experiments: CTR per arm (Wilson 95%) over the cumulative
                            looks, the always-valid interval of the difference, the decision per
                            day, guardrails, and OPE prediction vs A/B measurement vs truth per
                            arm (``predicted`` / ``truth`` keys, when present)
``data/validated/date=D/``  7. Catalog health of the logged impressions per day: distinct items,
                            coverage, Gini of impressions per item, novelty and the share of new
                            items (:mod:`pipelines.report.catalog`; one DuckDB scan of the logs)
==========================  =====================================================================

Every section degrades to a "no data" line: a missing or unreadable file, a missing key or a
value of the wrong type never raises (unreadable files are logged as warnings, and a section that
still fails is logged with its traceback and shown as "no data"). All text from the reports is
escaped (``html.escape``). The page holds no timestamp, so the same reports give the same bytes.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core import layout, schema
from pipelines.core.ab_decisions import ab_decision_dates, ab_experiments, read_ab_decision
from pipelines.core.eval_reports import eval_report_dates, read_eval_report
from pipelines.core.fmt import cell, finite
from pipelines.core.gate_decisions import gate_decision_dates, read_gate_decision
from pipelines.core.loop_days import read_loop_days
from pipelines.core.ope_reports import (
    ope_labels,
    ope_report_dates,
    read_ope_report,
    relative_error,
    target_of,
)
from pipelines.core.settings import Settings
from pipelines.core.stats_reports import read_stats_report, stats_report_dates
from pipelines.loop.closed_loop import served_bundle

log = logging.getLogger("recloop.report")

ARMS = ("champion", "challenger")
SECTIONS = (
    ("days", "1. Days"),
    ("metrics", "2. Offline metrics"),
    ("data", "3. Data"),
    ("gates", "4. Promotion gates"),
    ("ope", "5. Off-policy evaluation vs truth"),
    ("ab", "6. A/B experiments"),
    ("catalog", "7. Catalog health"),
)
NO_DATA = "no data"
ROTATE_AFTER = 6  # date labels are drawn at 45° when an axis has more
#: order of the stacked phases in the days plot (contracts.md); other phases follow, as found
PHASES = ("logs", "simulate", "traffic", "ingest", "dags", "daily_dag", "ab_dag")
#: leading columns of the guardrail and per-arm service tables (other keys follow, as found)
GUARDRAIL_KEYS = ("name", "kind", "champion", "challenger", "value", "threshold", "verdict")

# --- reading ---------------------------------------------------------------------------------


@dataclass
class ReportData:
    """Everything the report shows, keyed by ISO date strings (``YYYY-MM-DD``)."""

    days: list[dict[str, Any]] = field(default_factory=list)
    """``loop/days.json`` records, by date."""
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    ope: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """date → policy label (file stem) → OPE report."""
    ab: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """experiment → date → decision record."""
    catalog: list[dict[str, Any]] = field(default_factory=list)
    """Catalog health of the validated impressions, one record per day
    (:func:`pipelines.report.catalog.daily_health`), by date."""

    def dates(self) -> list[str]:
        """Every date any report mentions, sorted."""
        found = {d.get("date") for d in self.days} | {c.get("date") for c in self.catalog}
        for group in (self.evals, self.stats, self.gates, self.ope):
            found |= set(group)
        for recs in self.ab.values():
            found |= set(recs)
        return sorted(d for d in found if isinstance(d, str))


def _logged(read: Callable[..., dict[str, Any] | None], *args: Any) -> dict[str, Any] | None:
    """``read(*args)``, or None (logged) when it raises ``ValueError``: an unreadable or wrongly
    shaped file, which the readers name."""
    try:
        return read(*args)
    except ValueError as exc:
        log.warning("report: skipping %s", exc)
        return None


def _dated(
    dates: Iterable[dt.date], keep: set[str] | None, read: Callable[..., Any], *args: Any
) -> dict[str, Any]:
    """``{D: read(*args, D)}`` over ``dates`` (those in ``keep`` only, when given); files that
    are missing or unreadable (logged) are left out."""
    out: dict[str, Any] = {}
    for day in dates:
        if keep is not None and day.isoformat() not in keep:
            continue
        record = _logged(read, *args, day)
        if record is not None:
            out[day.isoformat()] = record
    return out


def _ope_day(settings: Settings, day: dt.date) -> dict[str, dict[str, Any]]:
    """``{label: OPE report}`` of ``day``; unreadable reports are logged and left out."""
    out = {}
    for label in ope_labels(settings, day):
        report = _logged(read_ope_report, settings, day, label)
        if report is not None:
            out[label] = report
    return out


def load_reports(settings: Settings, dates: Iterable[dt.date | str] | None = None) -> ReportData:
    """Read every report under ``settings.reports_dir`` (restricted to ``dates`` when given)."""
    keep = None if dates is None else {schema.parse_date(d).isoformat() for d in dates}
    data = ReportData()
    try:
        days = read_loop_days(settings)
    except ValueError as exc:
        log.warning("report: skipping %s", exc)
        days = []
    data.days = [d for d in days if keep is None or d["date"][:10] in keep]
    data.evals = _dated(eval_report_dates(settings), keep, read_eval_report, settings)
    data.stats = _dated(stats_report_dates(settings), keep, read_stats_report, settings)
    data.gates = _dated(gate_decision_dates(settings), keep, read_gate_decision, settings)
    ope = _dated(ope_report_dates(settings), keep, _ope_day, settings)
    data.ope = {day: by_label for day, by_label in ope.items() if by_label}
    for name in ab_experiments(settings):
        found = _dated(ab_decision_dates(settings, name), keep, read_ab_decision, settings, name)
        if found:
            data.ab[name] = found
    data.catalog = _catalog_days(settings, keep)
    return data


def _catalog_days(settings: Settings, keep: set[str] | None) -> list[dict[str, Any]]:
    """Catalog health per validated day (those in ``keep`` only, when given); ``[]`` (logged)
    when the logs cannot be read."""
    from pipelines.core.validated import validated_dates
    from pipelines.report import catalog

    days = [d for d in validated_dates(settings) if keep is None or d.isoformat() in keep]
    if not days:
        return []
    try:
        frame = catalog.daily_health(settings, days)
    except Exception as exc:  # noqa: BLE001 - unreadable logs: the section says no data
        log.warning("report: catalog health skipped (%s: %s)", type(exc).__name__, exc)
        return []
    return frame.to_dict(orient="records")


# --- small helpers ---------------------------------------------------------------------------


def _interval(lo: Any, hi: Any, spec: str = ".4f") -> str:
    return f"[{cell(finite(lo), spec)}, {cell(finite(hi), spec)}]"


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _no_data(what: str) -> str:
    return f'<p class="nodata">{NO_DATA}: {_esc(what)}</p>'


Cell = str | tuple[str, str]
"""A table cell: its text, or ``(text, css class)``; the text is escaped when rendered."""


def _table(headers: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for c in row:
            text, cls = c if isinstance(c, tuple) else (c, "")
            attr = f' class="{_esc(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{_esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _verdict_class(verdict: Any) -> str:
    v = str(verdict)
    if v in ("pass", "passed", "success", "promote", "champion", "challenger"):
        return "good"
    if v in ("fail", "failed", "rejected", "rollback"):
        return "bad"
    return "other"


def _figure(
    height: float = 3.2, rows: int = 1, n_labels: int = 0, width: float = 9.0
) -> tuple[Any, list[Any]]:
    """A matplotlib Figure on an Agg canvas (no pyplot: no global state) and its ``rows``
    stacked axes, ``height`` inches plus room for ``n_labels`` date labels under each axes
    (rotated when there are many, see :func:`_date_axis`). Fixed margins in inches, a legend's
    room right of the axes: cheaper than a layout engine, which doubles the rendering time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    label = 0.75 if n_labels > ROTATE_AFTER else 0.35  # inches under each axes for its labels
    height += label * rows
    left, right, top, bottom, gap = 0.8, 2.3, 0.4, label + 0.1, label + 0.2  # inches
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        hspace=gap * rows / max(height - top - bottom - gap * (rows - 1), 0.5),
    )
    axes = fig.subplots(rows, 1, squeeze=False)
    return fig, [row[0] for row in axes]


def _img(fig: Any, alt: str) -> str:
    """The figure as an inline ``<img>`` (base64 PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'


def _legend(ax: Any) -> None:
    """A legend right of ``ax``, one entry per distinct label; none when nothing is labelled."""
    handles, names = ax.get_legend_handles_labels()
    uniq = dict(zip(names, handles, strict=True))
    if uniq:
        ax.legend(
            uniq.values(), uniq.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0)
        )


def _date_axis(ax: Any, labels: Sequence[str]) -> None:
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(
        labels,
        rotation=45 if len(labels) > ROTATE_AFTER else 0,
        ha="right" if len(labels) > ROTATE_AFTER else "center",
        fontsize=8,
    )
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.grid(True, alpha=0.3)


def _pair(d: dict[str, Any], a: str, b: str) -> str:
    """``"a <value> / b <value>"`` of two keys of ``d`` (``–`` for a missing value)."""
    va, vb = (d.get(k) if d.get(k) is not None else "–" for k in (a, b))
    return f"{a} {va} / {b} {vb}"


# --- 1. days ---------------------------------------------------------------------------------


def _traffic_text(t: Any) -> str:
    if not isinstance(t, dict):
        return "–"
    keys = ("requests", "served", "errors", "skipped", "degraded", "impressions", "clicks")
    parts = [f"{k} {cell(t[k])}" for k in keys if k in t]
    ctr = _dict(t.get("ctr_by_arm"))
    if ctr:
        parts.append("CTR " + ", ".join(f"{a} {cell(finite(v))}" for a, v in sorted(ctr.items())))
    return "; ".join(parts) or "–"


def _served_text(served: Any) -> str:
    """``served`` of a day record: per arm, measured CTR (true CTR) over impressions."""
    parts = []
    for arm, v in sorted(_dict(served).items()):
        v = _dict(v)
        parts.append(
            f"{arm}: CTR {cell(finite(v.get('ctr')))} (true {cell(finite(v.get('true_ctr')))}) "
            f"over {cell(v.get('impressions'))} impressions"
        )
    return "; ".join(parts) or "–"


def section_days(data: ReportData) -> str:
    """Per simulated day: table of what happened, and seconds per phase as stacked bars."""
    if not data.days:
        return _no_data("no reports/loop/days.json records")
    rows = []
    for d in data.days:
        dag = _dict(d.get("dag"))
        gate, ab = _dict(d.get("gate")), _dict(d.get("ab"))
        secs = _dict(d.get("seconds"))
        cand = gate.get("candidate_version") or "–"
        gate_text = f"bundle {cand} → {gate.get('action') or '–'}"
        gate_text += f" ({gate['kind']})" if gate.get("kind") else ""
        ab_text = f"{ab.get('experiment') or '–'}: {ab.get('action') or '–'}"
        rows.append(
            [
                d["date"],
                str(d.get("source") or "–"),
                served_bundle(d),
                ", ".join(f"{k}: {v or '–'}" for k, v in sorted(dag.items())) or "–",
                cell(finite(secs.get("total")), ".1f"),
                _traffic_text(d.get("traffic")),
                _served_text(d.get("served")),
                _pair(_dict(d.get("aliases_before")), *ARMS),
                _pair(_dict(d.get("aliases_after")), *ARMS),
                (gate_text if gate else "–", _verdict_class(gate.get("action"))),
                (ab_text if ab else "–", _verdict_class(ab.get("action"))),
            ]
        )
    table = _table(
        [
            "date",
            "source",
            "champion served (kind, trained through)",
            "DAG runs",
            "seconds",
            "traffic",
            "served (measured vs true CTR)",
            "aliases before",
            "aliases after",
            "gate",
            "A/B",
        ],
        rows,
    )
    found: list[str] = []
    for d in data.days:
        for k, v in _dict(d.get("seconds")).items():
            if k != "total" and k not in found and finite(v) is not None:
                found.append(k)
    phases = [p for p in PHASES if p in found] + [p for p in found if p not in PHASES]
    if not phases:
        return table + _no_data("no seconds per phase recorded")
    labels = [d["date"] for d in data.days]
    fig, (ax,) = _figure(height=2.6, n_labels=len(labels))
    bottom = [0.0] * len(labels)
    for phase in phases:
        vals = [finite(_dict(d.get("seconds")).get(phase)) or 0.0 for d in data.days]
        ax.bar(range(len(labels)), vals, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("seconds")
    ax.set_title("time per phase per simulated day")
    _legend(ax)
    _date_axis(ax, labels)
    return _img(fig, "seconds per phase per day") + table


# --- 2. offline metrics ----------------------------------------------------------------------


def _index_recall(gate_record: dict[str, Any]) -> tuple[float | None, float | None]:
    for g in _list(gate_record.get("gates")):
        if isinstance(g, dict) and g.get("name") == "index_recall":
            return finite(g.get("candidate")), finite(g.get("tolerance"))
    return None, None


def section_metrics(data: ReportData) -> str:
    """NDCG@10 and recall@100 per model per day (forward evaluation) and the index recall@10."""
    metrics = ("ndcg@10", "recall@100")
    dates = sorted(
        set(data.evals) | {d for d in data.gates if _index_recall(data.gates[d])[0] is not None}
    )
    models: list[str] = []
    for day in sorted(data.evals):
        for m in _dict(data.evals[day].get("metrics")):
            if m not in models:
                models.append(m)
    recall = {d: _index_recall(data.gates.get(d, {})) for d in dates}
    has_recall = any(r[0] is not None for r in recall.values())
    if not models and not has_recall:
        notes = [str(r["note"]) for r in data.evals.values() if r.get("note")]
        return _no_data(notes[0] if notes else "no reports/eval/date=*.json with metrics")
    value = {
        (day, m, k): finite(_dict(_dict(data.evals.get(day, {}).get("metrics")).get(m)).get(k))
        for day in dates
        for m in models
        for k in metrics
    }
    panels = [
        k for k in metrics if any(value[(d, m, k)] is not None for d in dates for m in models)
    ]
    panels += ["index recall@10"] if has_recall else []
    if not panels:
        return _no_data("no NDCG@10, recall@100 or index recall in the reports")
    fig, axes = _figure(height=0.4 + 2.0 * len(panels), rows=len(panels), n_labels=len(dates))
    for ax, k in zip(axes, panels, strict=True):
        if k == "index recall@10":
            xs = [i for i, d in enumerate(dates) if recall[d][0] is not None]
            ax.plot(xs, [recall[dates[i]][0] for i in xs], "o-", label="gated bundle's index")
            ts = [i for i, d in enumerate(dates) if recall[d][1] is not None]
            if ts:
                ax.plot(ts, [recall[dates[i]][1] for i in ts], "k--", lw=1, label="target")
        else:
            for m in models:
                xs = [i for i, d in enumerate(dates) if value[(d, m, k)] is not None]
                if xs:
                    ax.plot(xs, [value[(dates[i], m, k)] for i in xs], "o-", label=m)
        ax.set_ylabel(k)
        _legend(ax)
        _date_axis(ax, dates)
    axes[0].set_title("forward evaluation: models trained through D−1 scored on day D")
    rows = []
    for day in dates:
        for m in models:
            if any(value[(day, m, k)] is not None for k in metrics):
                rows.append([day, m, *(cell(value[(day, m, k)]) for k in metrics)])
        if recall[day][0] is not None:
            rows.append([day, "index (gated bundle)", "–", "–", cell(recall[day][0])])
    table = _table(
        ["date", "model", "NDCG@10", "recall@100", "index recall@10"],
        [r if len(r) == 5 else [*r, "–"] for r in rows],
    )
    return _img(fig, "offline metrics per day") + table


# --- 3. data ---------------------------------------------------------------------------------


def section_data(data: ReportData) -> str:
    """Events per day by type (bars, log scale) and the day's CTR (clicks / impressions)."""
    if not data.stats:
        return _no_data("no reports/stats/date=*.json")
    dates = sorted(data.stats)
    events: list[str] = []
    for day in dates:
        for e in _dict(data.stats[day].get("events")):
            if e not in events:
                events.append(e)
    fig, (ax1, ax2) = _figure(height=4.2, rows=2, n_labels=len(dates))
    width = 0.8 / max(len(events), 1)
    top = 0.0
    for j, e in enumerate(events):
        vals = [finite(_dict(data.stats[d].get("events")).get(e)) or 0.0 for d in dates]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(dates))]
        ax1.bar(xs, vals, width=width, label=e)
        top = max(top, *vals)
    if top > 0:
        ax1.set_yscale("log")
    ax1.set_ylabel("events (log scale)" if top > 0 else "events")
    ax1.set_title("validated events per day, by type")
    _legend(ax1)
    _date_axis(ax1, dates)
    xs = [i for i, d in enumerate(dates) if finite(data.stats[d].get("ctr")) is not None]
    ax2.plot(xs, [data.stats[dates[i]]["ctr"] for i in xs], "o-", label="CTR")
    ax2.set_ylabel("CTR (clicks / impression)")
    _date_axis(ax2, dates)
    rows = []
    for day in dates:
        s = data.stats[day]
        ev = _dict(s.get("events"))
        rows.append(
            [
                day,
                cell(s.get("rows")),
                *(cell(ev.get(e)) for e in events),
                f"{cell(s.get('users'))} ({cell(s.get('new_users'))} new)",
                f"{cell(s.get('items'))} ({cell(s.get('new_items'))} new)",
                cell(finite(s.get("ctr"))),
            ]
        )
    table = _table(["date", "rows", *events, "users", "items", "CTR"], rows)
    return _img(fig, "events and CTR per day") + table


# --- 4. gates --------------------------------------------------------------------------------


def section_gates(data: ReportData) -> str:
    """One row per day: the candidate, each gate's candidate / champion numbers and verdict."""
    if not data.gates:
        return _no_data("no reports/gates/date=*.json")
    names: list[str] = []
    for rec in data.gates.values():
        for g in _list(rec.get("gates")):
            if isinstance(g, dict) and g.get("name") not in names:
                names.append(g.get("name"))
    rows = []
    for day in sorted(data.gates):
        rec = data.gates[day]
        by_name = {g.get("name"): g for g in _list(rec.get("gates")) if isinstance(g, dict)}
        cells: list[Cell] = [
            day,
            str(rec.get("candidate_version") or "–"),
            str(rec.get("champion_version") or "–"),
        ]
        for n in names:
            g = by_name.get(n)
            if g is None:
                cells.append("–")
                continue
            text = f"{cell(g.get('candidate'))} vs {cell(g.get('champion'))}: {g.get('verdict')}"
            cells.append((text, _verdict_class(g.get("verdict"))))
        cells.append((str(rec.get("action") or "–"), _verdict_class(rec.get("action"))))
        cells.append(str(rec.get("reason") or ""))
        rows.append(cells)
    note = (
        "<p>Each gate cell: candidate value vs champion value: verdict "
        "(– where a side has no value).</p>"
    )
    return note + _table(
        ["date", "candidate", "champion", *map(str, names), "action", "reason"], rows
    )


# --- 5. OPE ----------------------------------------------------------------------------------


def _est(report: dict[str, Any], name: str) -> tuple[float | None, float | None, float | None]:
    e = _dict(_dict(report.get("estimates")).get(name))
    return finite(e.get("estimate")), finite(e.get("ci_low")), finite(e.get("ci_high"))


def _errbar(ax: Any, x: float, est: float, lo: float | None, hi: float | None, **kw: Any) -> None:
    yerr = None
    if lo is not None and hi is not None:
        yerr = [[max(est - lo, 0.0)], [max(hi - est, 0.0)]]
    ax.errorbar([x], [est], yerr=yerr, capsize=3, **kw)


def section_ope(data: ReportData) -> str:
    """SNIPS with its 95% interval and DR per bundle (its served policy, or the softmax policy of
    an older report) per day, beside the true policy value and the relative error."""
    entries = [(d, label, r) for d in sorted(data.ope) for label, r in sorted(data.ope[d].items())]
    if not entries:
        return _no_data("no reports/ope/date=*/*.json")
    dates = sorted(data.ope)
    labels = sorted({label for _, label, _ in entries})
    width = 0.8 / max(len(labels), 1)
    colors = [f"C{i % 10}" for i in range(len(labels))]
    fig, (ax,) = _figure(height=3.0, n_labels=len(dates))
    plotted = False
    for day, label, r in entries:
        j = labels.index(label)
        x = dates.index(day) - 0.4 + width * (j + 0.5)
        snips, lo, hi = _est(r, "snips")
        if snips is not None:
            _errbar(
                ax,
                x,
                snips,
                lo,
                hi,
                fmt="o",
                color=colors[j],
                label=f"{label} SNIPS (95% CI)",
            )
            plotted = True
        dr = _est(r, "dr")[0]
        if dr is not None:
            ax.plot(
                [x],
                [dr],
                "s",
                mfc="none",
                color=colors[j],
                label="DR (hollow square)",
            )
            plotted = True
        truth = finite(r.get("truth"))
        if truth is not None:
            ax.plot(
                [x],
                [truth],
                "*",
                ms=11,
                color="crimson",
                label="truth",
            )
            plotted = True
    table = _ope_table(entries)
    if not plotted:
        return _no_data("OPE reports hold no estimates") + table
    ax.set_ylabel("clicks per impression slot")
    ax.set_title("off-policy estimates of each bundle's served policy vs the simulator's truth")
    _legend(ax)
    _date_axis(ax, dates)
    return _img(fig, "OPE estimates vs truth") + table


def _ope_table(entries: list[tuple[str, str, dict[str, Any]]]) -> str:
    """The OPE table: one row per ``(date, policy label, OPE report)`` entry."""
    rows = []
    for day, label, r in entries:
        s, slo, shi = _est(r, "snips")
        d, dlo, dhi = _est(r, "dr")
        served = target_of(r) == "served"
        rows.append(
            [
                day,
                label,
                "served" if served else f"softmax T={cell(r.get('temperature'))}",
                f"{cell(s)} [{cell(slo)}, {cell(shi)}]",
                f"{cell(d)} [{cell(dlo)}, {cell(dhi)}]",
                cell(finite(_dict(_dict(r.get("estimates")).get("snips")).get("ess")), ".0f"),
                cell(finite(r.get("truth"))),
                cell(relative_error(r), ".3f"),
                cell(finite(r.get("logging_ctr"))),
                cell(r.get("requests") if served else r.get("users")),
            ]
        )
    headers = ["date", "policy", "target", "SNIPS [95% CI]", "DR [95% CI]", "ESS", "truth",
               "|SNIPS − truth| / truth", "logging CTR", "requests (served) / users"]  # fmt: skip
    return _table(headers, rows)


# --- 6. A/B ----------------------------------------------------------------------------------


def _wilson(ctr: float | None, n: float | None) -> tuple[float | None, float | None]:
    """Wilson 95% interval of a CTR measured over ``n`` impressions (as ``pipelines.experiments.ab``)."""
    if ctr is None or n is None or n <= 0:
        return None, None
    from pipelines.experiments.ab import wilson

    lo, hi = wilson(round(ctr * n), n)
    return finite(lo), finite(hi)


def _ab_looks_plot(experiment: str, looks: list[dict[str, Any]]) -> str:
    dates = [str(lk.get("date")) for lk in looks]
    fig, (ax1, ax2) = _figure(height=4.4, rows=2, n_labels=len(dates))
    plotted = False
    for j, arm in enumerate(ARMS):
        off = -0.08 if j == 0 else 0.08
        for i, lk in enumerate(looks):
            ctr = finite(lk.get(f"ctr_{arm}"))
            if ctr is None:
                continue
            lo, hi = _wilson(ctr, finite(lk.get(f"impressions_{arm}")))
            _errbar(
                ax1,
                i + off,
                ctr,
                lo,
                hi,
                fmt="o",
                color=f"C{j}",
                label=f"{arm} (Wilson 95%)",
            )
            plotted = True
    ax1.set_ylabel("cumulative CTR")
    ax1.set_title(f"experiment {experiment}: CTR per arm at each daily look (cumulative)")
    _legend(ax1)
    _date_axis(ax1, dates)
    xs, diff, lo, hi = [], [], [], []
    for i, lk in enumerate(looks):
        d = finite(lk.get("ctr_diff"))
        if d is None:
            continue
        xs.append(i)
        diff.append(d)
        lo.append(finite(lk.get("lower")))
        hi.append(finite(lk.get("upper")))
    if xs:
        ax2.plot(xs, diff, "o-", color="C2", label="CTR difference (challenger − champion)")
        band = [
            (x, a, b) for x, a, b in zip(xs, lo, hi, strict=True) if a is not None and b is not None
        ]
        if band:
            bx, ba, bb = zip(*band, strict=True)
            ax2.fill_between(bx, ba, bb, color="C2", alpha=0.2, label="always-valid 95% CI (mSPRT)")
        ax2.axhline(0.0, color="k", lw=0.8)
        _legend(ax2)
        plotted = True
    ax2.set_ylabel("CTR difference")
    _date_axis(ax2, dates)
    return _img(fig, f"A/B {experiment}: arms and difference over looks") if plotted else ""


OPE_VS_AB_HEADERS = (
    "arm",
    "OPE SNIPS [95% CI]",
    "OPE DR",
    "OPE from",
    "A/B CTR [95% CI]",
    "impressions",
    "truth",
)
OPE_VS_AB_NOTE = (
    "<p>The OPE prediction is the gate's SNIPS estimate of each bundle's <em>served policy</em>"
    " (the bundle through the serving pipeline, replayed on a sample of the gate day's"
    " requests; older reports: its two-tower softmax policy, target in section 5). The A/B"
    " measures other days and other users, so the two differ by sampling and drift as well;"
    " compare with the truth of the same policy in section 5.</p>"
)
"""Why the OPE prediction of an experiment's arms may differ from their measured CTR."""


def _ope_vs_ab(experiment: str, rec: dict[str, Any]) -> str:
    """Per arm: OPE's prediction before the test, the A/B measurement, the truth."""
    predicted = _dict(rec.get("predicted"))
    truth = _dict(rec.get("truth"))
    arms = {a.get("arm"): a for a in _list(rec.get("arms")) if isinstance(a, dict)}
    has_pred = any(finite(_dict(predicted.get(a)).get("snips")) is not None for a in ARMS)
    has_truth = any(finite(truth.get(a)) is not None for a in ARMS)
    if not has_pred and not has_truth:
        return _no_data(f"no OPE prediction or truth recorded for {experiment}")
    fig, (ax,) = _figure(height=2.8, n_labels=len(ARMS))
    rows = []
    for i, arm in enumerate(ARMS):
        p = _dict(predicted.get(arm))
        snips, plo, phi = finite(p.get("snips")), finite(p.get("ci_low")), finite(p.get("ci_high"))
        if snips is not None:
            _errbar(
                ax,
                i - 0.15,
                snips,
                plo,
                phi,
                fmt="o",
                color="C0",
                label="OPE prediction (SNIPS, 95% CI)",
            )
        a = _dict(arms.get(arm))
        ctr, alo, ahi = finite(a.get("ctr")), finite(a.get("ctr_lo")), finite(a.get("ctr_hi"))
        if ctr is not None:
            _errbar(
                ax, i, ctr, alo, ahi, fmt="s", color="C2", label="A/B measured CTR (Wilson 95%)"
            )
        t = finite(truth.get(arm))
        if t is not None:
            ax.plot([i + 0.15], [t], "*", ms=12, color="crimson", label="truth")
        rows.append(
            [
                arm,
                f"{cell(snips)} [{cell(plo)}, {cell(phi)}]",
                cell(finite(p.get("dr"))),
                f"{p.get('date') or '–'} {p.get('source') or ''}".strip(),
                f"{cell(ctr)} [{cell(alo)}, {cell(ahi)}]",
                cell(a.get("impressions")),
                cell(t),
            ]
        )
    _legend(ax)
    ax.set_xticks(range(len(ARMS)))
    ax.set_xticklabels(ARMS)
    ax.set_xlim(-0.6, len(ARMS) - 0.4)
    ax.set_ylabel("clicks per impression")
    ax.set_title(f"{experiment} on {rec.get('date')}: OPE prediction vs A/B measured vs truth")
    ax.grid(True, alpha=0.3)
    table = _table(OPE_VS_AB_HEADERS, rows)
    return _img(fig, f"A/B {experiment}: OPE vs A/B vs truth") + table


def _keys(items: list[dict[str, Any]], first: Sequence[str]) -> list[str]:
    """The keys of ``items``: those of ``first`` present, then the others as found."""
    found: list[str] = []
    for g in items:
        found += [k for k in g if k not in found]
    return [k for k in first if k in found] + [k for k in found if k not in first]


def _service(rec: dict[str, Any]) -> str:
    """The per-arm service numbers behind the service guardrails (``service`` key), if any."""
    service = _dict(rec.get("service"))
    items = [{"arm": arm, **_dict(v)} for arm, v in service.items() if isinstance(v, dict)]
    if not items:
        return ""
    keys = _keys(items, ("arm",))
    return _table(keys, [[cell(g.get(k)) for k in keys] for g in items])


def _guardrails(rec: dict[str, Any]) -> str:
    items = [g for g in _list(rec.get("guardrails")) if isinstance(g, dict)]
    if not items:
        return _no_data("no guardrails recorded")
    keys = _keys(items, GUARDRAIL_KEYS)
    rows = [
        [
            (cell(g.get(k)), _verdict_class(g.get(k))) if k == "verdict" else cell(g.get(k))
            for k in keys
        ]
        for g in items
    ]
    return _table(keys, rows)


def _experiment(experiment: str, records: dict[str, dict[str, Any]]) -> str:
    """One experiment's part of the A/B section from ``records`` (``{D: its A/B report of D}``):
    the latest decision, the looks plot, every decision, the arms, guardrails, OPE vs A/B."""
    dates = sorted(records)
    last = records[dates[-1]]
    parts = [f'<h3 id="ab-{_esc(experiment)}">experiment {_esc(experiment)}</h3>']
    parts.append(_latest_decision(dates[-1], last))
    looks = [lk for lk in _list(last.get("looks")) if isinstance(lk, dict)]
    looks = [lk for lk in looks if str(lk.get("date", "")) <= dates[-1]]
    plot = _ab_looks_plot(experiment, looks) if looks else ""
    parts.append(plot or _no_data(f"no looks recorded for {experiment}"))
    parts += ["<h4>decisions</h4>", _decisions_table(records)]
    arms = [a for a in _list(last.get("arms")) if isinstance(a, dict)]
    if arms:
        parts += [f"<h4>arms through {_esc(dates[-1])}</h4>", _arms_table(arms)]
    parts += ["<h4>guardrails (latest decision)</h4>", _guardrails(last), _service(last)]
    parts += ["<h4>OPE prediction vs A/B measured vs truth</h4>", OPE_VS_AB_NOTE]
    parts.append(_ope_vs_ab(experiment, last))
    return "\n".join(parts)


def _latest_decision(day: str, last: dict[str, Any]) -> str:
    """The paragraph on the bundles, start and latest decision (``last``, the report of ``day``)."""
    return (
        f"<p>champion bundle {_esc(last.get('champion_version') or '–')} vs challenger bundle "
        f"{_esc(last.get('challenger_version') or '–')}; started "
        f"{_esc(last.get('start_date') or '–')}; latest decision ({_esc(day)}, day "
        f"{_esc(last.get('day', '–'))}): <b>{_esc(last.get('action') or '–')}</b> — "
        f"{_esc(last.get('reason') or '')}</p>"
    )


def _decisions_table(records: dict[str, dict[str, Any]]) -> str:
    """One row per daily A/B report: action, CTR difference, interval, p-value, aliases after."""
    rows = []
    for day in sorted(records):
        r = records[day]
        diff = _dict(r.get("diff"))
        rows.append(
            [
                day,
                cell(r.get("day")),
                (str(r.get("action") or "–"), _verdict_class(r.get("action"))),
                cell(finite(diff.get("ctr_diff")), "+.4f"),
                _interval(diff.get("lower"), diff.get("upper"), "+.4f"),
                cell(finite(diff.get("p_value"))),
                str(r.get("reason") or ""),
                str(r.get("applied") or ""),
                _pair(_dict(r.get("aliases")), *ARMS),
            ]
        )
    return _table(
        [
            "date",
            "day",
            "action",
            "CTR diff",
            "always-valid CI",
            "p (always valid)",
            "reason",
            "applied",
            "aliases after",
        ],
        rows,
    )


def _arms_table(arms: list[dict[str, Any]]) -> str:
    """One row per arm: impressions, clicks, CTR with its Wilson interval, purchases, users."""
    return _table(
        ["arm", "impressions", "clicks", "CTR [Wilson 95%]", "purchases", "conversion", "users"],
        [
            [
                str(a.get("arm")),
                cell(a.get("impressions")),
                cell(a.get("clicks")),
                f"{cell(finite(a.get('ctr')))} [{cell(finite(a.get('ctr_lo')))}, "
                f"{cell(finite(a.get('ctr_hi')))}]",
                cell(a.get("purchases")),
                cell(finite(a.get("conversion"))),
                cell(a.get("users")),
            ]
            for a in arms
        ],
    )


def section_ab(data: ReportData) -> str:
    """Per experiment: arms over looks, the always-valid difference, decisions, OPE vs A/B."""
    if not data.ab:
        return _no_data("no reports/ab/<experiment>/date=*.json")
    return "\n".join(
        _guarded(f"A/B {e}", lambda d, e=e: _experiment(e, d.ab[e]), data) for e in sorted(data.ab)
    )


# --- 7. catalog health ----------------------------------------------------------------------

CATALOG_SHARES = (("coverage", "coverage"), ("gini", "Gini of impressions"),
                  ("new_item_share", "new-item share"))  # fmt: skip


def section_catalog(data: ReportData) -> str:
    """Per day of validated logs: distinct items shown (bars), coverage, Gini and new-item share
    (lines, one axes), and a table with novelty."""
    from pipelines.report.catalog import NEW_DAYS, POPULARITY_WINDOW_DAYS

    if not data.catalog:
        return _no_data("no validated impressions under data/validated/")
    recs = sorted(data.catalog, key=lambda r: str(r.get("date")))
    dates = [str(r.get("date")) for r in recs]
    fig, (ax1, ax2) = _figure(height=4.2, rows=2, n_labels=len(dates))
    ax1.bar(range(len(dates)), [finite(r.get("distinct_items")) or 0.0 for r in recs],
            label="distinct items")  # fmt: skip
    ax1.set_ylabel("items")
    ax1.set_title("distinct items shown per day (validated impressions)")
    _legend(ax1)
    _date_axis(ax1, dates)
    for key, label in CATALOG_SHARES:
        xs = [i for i, r in enumerate(recs) if finite(r.get(key)) is not None]
        ax2.plot(xs, [recs[i][key] for i in xs], "o-", label=label)
    ax2.set_ylim(0.0, 1.02)
    ax2.set_ylabel("share")
    _legend(ax2)
    _date_axis(ax2, dates)
    rows = [
        [
            str(r.get("date")),
            cell(r.get("impressions")),
            f"{cell(r.get('distinct_items'))} of {cell(r.get('catalog_items'))}",
            cell(finite(r.get("coverage")), ".3f"),
            cell(finite(r.get("gini")), ".3f"),
            cell(finite(r.get("novelty")), ".2f"),
            cell(finite(r.get("new_item_share")), ".3f"),
        ]
        for r in recs
    ]
    headers = ["date", "impressions", "distinct items", "coverage", "Gini", "novelty (bits)",
               "new-item share"]  # fmt: skip
    note = (
        "<p>Coverage: distinct items shown / items in the catalog that day. Gini of impressions "
        "per catalog item (0: all equally shown). Novelty: mean −log2 of the shown items' share "
        f"of the positives of the {POPULARITY_WINDOW_DAYS} days before. New: created at most "
        f"{NEW_DAYS} days before.</p>"
    )
    return _img(fig, "catalog health per day") + note + _table(headers, rows)


# --- the page --------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[[ReportData], str]] = {
    "days": section_days,
    "metrics": section_metrics,
    "data": section_data,
    "gates": section_gates,
    "ope": section_ope,
    "ab": section_ab,
    "catalog": section_catalog,
}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.6em 0 1.2em; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.good { background: #e6f4e6; } td.bad { background: #fbe3e3; } td.other { background: #f7f3df; }
p.nodata { color: #888; font-style: italic; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
nav a { margin-right: 1em; }
"""


def _guarded(name: str, build: Callable[[ReportData], str], data: ReportData) -> str:
    """``build(data)``; on an unexpected error, a "no data" line (the error is logged)."""
    try:
        return build(data)
    except Exception as exc:  # one malformed report must not lose the others
        log.exception("report: section %s failed", name)
        return _no_data(f"section failed on malformed reports ({type(exc).__name__}: {exc})")


def render_html(settings: Settings, data: ReportData) -> str:
    """The whole page (a ``str``) for ``data``."""
    dates = data.dates()
    span = f"{dates[0]} to {dates[-1]} ({len(dates)} dates)" if dates else "no dated reports"
    nav = " ".join(f'<a href="#{key}">{_esc(title)}</a>' for key, title in SECTIONS)
    body = [
        "<h1>recloop report</h1>",
        f"<p>workspace {_esc(settings.home)}; {_esc(span)}</p>",
        f"<nav>{nav}</nav>",
    ]
    for key, title in SECTIONS:
        body.append(f'<h2 id="{key}">{_esc(title)}</h2>')
        body.append(_guarded(title, _BUILDERS[key], data))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>recloop report</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def report_path(settings: Settings) -> Path:
    """``reports/index.html``."""
    return layout.html_report_path(settings)


def write_report(
    settings: Settings, dates: list[dt.date] | None = None, out: Path | None = None
) -> Path:
    """Render the report of ``dates`` (default: every date found) and write it atomically to
    ``out`` (default ``reports/index.html``); the path written."""
    data = load_reports(settings, dates)
    page = render_html(settings, data)
    target = Path(out) if out is not None else report_path(settings)
    schema.write_text_atomic(page, target)  # a killed writer's temporary swept by the next
    log.info(
        "report: %s (%d dates, %d experiments, %d plots, %.0f kB)",
        target,
        len(data.dates()),
        len(data.ab),
        page.count("<img "),
        len(page) / 1024,
    )
    return target
