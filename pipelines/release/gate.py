"""Promotion gates: does a registered serving bundle become ``challenger`` (or, on the first day,
``champion``)?

:func:`decide` is pure: numbers in, a :class:`Decision` out. Gates, in order:

==============  ==============================================================================
``validation``  the bundle's training data (its logical date's partition) passed validation
                (``reports/validation/date=D.json`` verdict ``passed``). Missing report: fail.
``ndcg@10``     offline NDCG@10 of the bundle's two-tower on the test window (the test day, or with
                ``RECLOOP_GATE_TEST_DAYS`` = H the H days ending on it) >= champion's on the
                same window − ``tol.ndcg`` (a refresh: − ``tol.refresh_ndcg_rel`` × the champion's
                value, the forward NDCG being circular, see :class:`Tolerances`); no champion:
                > ``tol.ndcg_floor``. Missing: fail.
``ranker_auc``  ranker AUC >= champion's − ``tol.auc`` (no champion AUC: > ``tol.auc_floor``);
                on logged slates (both have ``auc_within_position``) the AUC within position:
                the champion chose the slates, so its scores follow position and so do clicks
                (position bias), which inflated its pooled AUC (demo days 8-9: pooled 0.7105 vs
                the refresh's 0.6917, within position 0.6168 vs 0.6255).
                No ranker pinned: ``skipped`` ("not evaluated: no ranker in the bundle": logs
                without impressions and too few positives train none). Ranker pinned but no
                AUC given: ``not_evaluated`` (the ranker report's note says why).
``index_recall``  ANN recall@10 of the pinned index >= its target (``tol.recall_target`` when
                the index does not record one). Missing: fail.
``snips``       lower bound of the candidate's SNIPS interval >= champion's SNIPS estimate −
                ``tol.snips`` (with ``ope["vs_champion"]``, both estimated on the same requests:
                the champion's estimate + the lower bound of the paired difference's interval);
                an effective sample size below ``tol.snips_min_ess`` on either side:
                ``not_evaluated``. No OPE numbers: ``not_evaluated`` (``ope`` may be
                ``{"not_evaluated": why}``, e.g. "no logged propensities"); no champion: the
                candidate's numbers are reported and the gate passes (nothing to compare with).
                In the daily gate the SNIPS is of each bundle's **served** policy (the bundle
                through the serving pipeline, :mod:`pipelines.release.bundle_ope`), both
                bundles on the same sample of the day's requests; the decision records both
                estimates under ``ope`` (with the truth on simulated data).
==============  ==============================================================================

Verdicts: ``pass``, ``fail``, ``skipped`` (does not apply), ``not_evaluated`` (an input is
missing: said so in the decision, never counted as a pass; it blocks only when ``tol.strict``).
Any ``fail`` rejects. With a champion, a bundle that passes becomes ``challenger``; with none, it
becomes ``champion`` directly (first day: the gates above with no champion are the absolute floors).

**Refresh or change.** Each candidate's configuration fingerprint (:mod:`pipelines.release.fingerprint`,
recorded on the bundle at registration) is compared with the champion's: equal, it is a
**refresh** (the champion's configuration retrained on newer data); else a **change** (a new model,
feature set, hyper-parameter or setting). A change that passes every gate becomes ``challenger``
and the A/B test decides it, as below. A refresh that passes every gate **replaces the champion's
bundle** (action ``champion``; the alias moves by compare-and-set, the move is stamped on the
version, tagged ``recloop.refreshed_from`` and recorded as a ``refresh`` run of
``recloop-release``, so ``recloop release --action rollback`` returns to the bundle it replaced),
after the load and smoke test the service itself runs (``operations.check_loads``). No shadow or
canary step: the refresh is judged beside the champion on the same day by the offline gates and
the stage gate, a canary at demo traffic (1,500 requests a day) has no power to tell two retrains
apart (the 1-vs-2 experiment had p = 1 after 7 days), and the rollback is one command. A refresh
is ``held`` (reason given) while the champion is pinned, and **while an A/B experiment runs**:
the experiment's arms are bundle versions (``pipelines.experiments.ab``: rows of
``bundle-<champion>``), so swapping the champion arm mid-test would change one arm's policy under
the sequential test and drop its rows; the experiment ends within its ``max_days`` and the next
gate refreshes from the newest bundle. The decision records ``kind`` (``refresh`` / ``change``;
None without a champion) and ``fingerprints``; the candidate version is tagged ``recloop.kind``.
A bundle whose ranker the stage gate left out (:mod:`pipelines.release.register`) says so in the
reason and in ``stage_gate``.

**One experiment at a time.** While the ``challenger`` alias points at another bundle, its A/B
experiment (``pipelines.experiments.ab``) is running: a bundle that passes every gate is then ``held`` (its
numbers recorded, no alias moved) instead of replacing the challenger mid-test, which would
restart the experiment every day and never let it reach its sample size. The A/B analysis
clears the alias when the experiment ends (promote, rollback or stop); the next day's gate then
makes the newest passing bundle the challenger. ``gate_day(..., replace_challenger=True)``
restores the replace-every-day behaviour. A champion pinned by hand
(:mod:`pipelines.release.operations`, ``recloop release --action pin``) is never moved by the
gate: a bundle that would become champion is ``held`` with the pin named in the reason.

:func:`daily_gate` is the DAG's gate task for logical date D: it gathers the numbers other tasks
measured (ranker AUCs, OPE) and calls :func:`gate_day`, which gates one bundle. **Which bundle**:
offline numbers must come from a day the models did not see (forward chaining, as in
``pipelines.retrieval.evaluate.evaluate_forward``), so on day D the candidate is the newest bundle trained
before D (normally the one registered by the run of D−1: what would serve on D), scored on D's
positives beside the champion scored on the same day. **With a test window** of H days
(``RECLOOP_GATE_TEST_DAYS``, :mod:`pipelines.core.forward_window`; for thin imported logs) the
candidate is the newest bundle trained through D−H or before, scored on the pooled positives
of D−H+1..D; the decision records ``test_days`` and ``test_window``. Every decision is written to
``reports/gates/date=D.json``, logged to MLflow (experiment ``recloop-gates``: params, metrics,
``decision.json``) and to the task log as a table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core import fmt, layout, schema
from pipelines.core.artifact_meta import require_artifact_meta
from pipelines.core.fmt import finite
from pipelines.core.forward_window import ForwardWindow, forward_window
from pipelines.core.gate_decisions import read_gate_decision, write_gate_decision
from pipelines.core.settings import Settings
from pipelines.release import fingerprint

log = logging.getLogger(__name__)

GATES_EXPERIMENT = "recloop-gates"
PASS, FAIL, SKIPPED, NOT_EVALUATED = "pass", "fail", "skipped", "not_evaluated"
NO_RANKER = "not evaluated: no ranker in the bundle"
"""The ranker gate's note for a bundle without a ranker (it serves in retrieval order)."""
REFRESH, CHANGE = "refresh", "change"


@dataclass(frozen=True)
class Tolerances:
    """How much worse than the champion a candidate may be (absolute), and the first-day floors."""

    ndcg: float = 0.005
    refresh_ndcg_rel: float = 0.10
    """For a refresh, the ``ndcg@10`` gate allows this share of the champion's value (at least
    ``ndcg``). The forward NDCG is measured on positives from slates the champion chose, so a
    retrain of the same configuration scores lower on it by construction (10-day demo: 0.6467
    vs 0.6857, -5.7%, while the retrain's served slate had the higher true CTR, 0.0577 vs about
    0.055): for a refresh the served-policy OPE, paired on the same requests, is the relative
    judge, and NDCG stays a guard against a broken model."""
    auc: float = 0.005
    snips: float = 0.0
    snips_min_ess: float = 500.0
    """Below this effective sample size (candidate's or champion's SNIPS) the logs give too
    little support to judge off-policy: the gate is ``not_evaluated`` and the A/B test decides.
    (The served policy's PBM SNIPS on a demo day, 1,500 requests: ESS ~6,000 for the policy
    that logged the day, 490-2,600 for a retrain of it; the old softmax target had 10-38.)"""
    recall_target: float = 0.95
    ndcg_floor: float = 0.0
    auc_floor: float = 0.5
    strict: bool = False
    """When True a ``not_evaluated`` gate blocks promotion too."""


@dataclass
class Gate:
    """One gate's numbers and verdict."""

    name: str
    candidate: float | str | None
    champion: float | str | None
    tolerance: float | None
    verdict: str
    note: str = ""


@dataclass
class Decision:
    """The outcome for one candidate bundle on one date.

    ``action``: ``champion`` (first day), ``challenger``, ``held`` (passed, but another
    challenger's experiment is running), ``rejected`` or ``already_champion``.
    """

    date: str
    candidate_version: str | None
    champion_version: str | None
    action: str
    gates: list[Gate] = field(default_factory=list)
    reason: str = ""
    kind: str | None = None
    """``refresh`` (the champion's configuration retrained) or ``change``, relative to the
    champion (:mod:`pipelines.release.fingerprint`); None when not known."""

    @property
    def passed(self) -> bool:
        return self.action in ("champion", "challenger", "held", "already_champion")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}


def _snips(ope: dict[str, Any] | None) -> dict[str, Any] | None:
    """The SNIPS entry of a ``pipelines.release.ope.estimate`` result (or the entry itself)."""
    if not ope:
        return None
    entry = ope.get("snips", ope)
    return entry if isinstance(entry, dict) and finite(entry.get("estimate")) is not None else None


def _ess(entry: dict[str, Any]) -> float:
    """The entry's effective sample size (infinite when not reported: not a reason to skip)."""
    v = finite(entry.get("ess"))
    return math.inf if v is None else v


def _compare(
    name: str, cand: float | None, champ: float | None, tol: float, floor: float, missing: str
) -> Gate:
    if cand is None:
        return Gate(name, None, champ, tol, missing, f"no {name} for the candidate")
    if champ is None:
        ok = cand > floor
        return Gate(
            name, cand, None, floor, PASS if ok else FAIL, f"no champion value: floor > {floor}"
        )
    ok = cand >= champ - tol
    return Gate(name, cand, champ, tol, PASS if ok else FAIL, f"candidate >= champion - {tol}")


def _validation_gate(verdict: str | None) -> Gate:
    note = "no validation report" if verdict is None else "verdict of the bundle's data day"
    return Gate("validation", verdict, None, None, PASS if verdict == "passed" else FAIL, note)


def _ranker_gate(candidate: dict[str, Any], champ: dict[str, Any], tol: Tolerances) -> Gate:
    """Ranker AUC against the champion's; ``skipped`` with "not evaluated: no ranker in the
    bundle" when none is pinned; ``not_evaluated`` with ``candidate["auc_note"]`` (why the
    forward evaluation had no AUC, e.g. a day without impressions or positives) when pinned
    but unmeasured."""
    if not candidate.get("has_ranker", candidate.get("auc") is not None):
        return Gate("ranker_auc", None, finite(champ.get("auc")), tol.auc, SKIPPED,
                    NO_RANKER)  # fmt: skip
    key = "auc"
    within = [finite(x.get("auc_within_position")) for x in (candidate, champ)]
    if None not in within:  # both on logged slates: compare at equal examination
        key = "auc_within_position"
    gate = _compare("ranker_auc", finite(candidate.get(key)), finite(champ.get(key)),
                    tol.auc, tol.auc_floor, NOT_EVALUATED)  # fmt: skip
    if key != "auc":
        raw = [finite(x.get("auc")) for x in (candidate, champ)]
        gate.note += (
            " (AUC within position: pairs shown at the same position, so the position bias of the"
            f" champion's own slates does not count for it; pooled AUC {fmt_pair(*raw)})"
        )
    if gate.verdict == NOT_EVALUATED and candidate.get("auc_note"):
        gate.note = str(candidate["auc_note"])
    return gate


def fmt_pair(candidate: float | None, champion: float | None) -> str:
    """``candidate 0.6917 vs champion 0.7105`` (``-`` for a missing number)."""

    def one(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    return f"candidate {one(candidate)} vs champion {one(champion)}"


def _recall_gate(candidate: dict[str, Any], tol: Tolerances) -> Gate:
    recall = finite(candidate.get("index_recall"))
    target = finite(candidate.get("index_recall_target")) or tol.recall_target
    if recall is None:
        return Gate("index_recall", None, None, target, FAIL, "no index recall recorded")
    ok = recall >= target
    return Gate("index_recall", recall, None, target, PASS if ok else FAIL, f">= target {target}")


def _snips_gate(
    candidate: dict[str, Any], champion: dict[str, Any] | None, tol: Tolerances
) -> Gate:
    """The candidate's SNIPS lower bound against the champion's estimate (module docstring)."""
    cand_snips, champ_snips = _snips(candidate.get("ope")), _snips((champion or {}).get("ope"))
    if cand_snips is None:
        why = (candidate.get("ope") or {}).get("not_evaluated")
        return Gate("snips", None, finite((champ_snips or {}).get("estimate")), tol.snips,
                    NOT_EVALUATED, f"not evaluated: {why}" if why else
                    "no OPE estimate for the candidate")  # fmt: skip
    low = finite(cand_snips.get("ci_low"))
    low = low if low is not None else finite(cand_snips["estimate"])
    note = "candidate SNIPS ci_low" + ("" if finite(cand_snips.get("ci_low")) is not None else
                                       " (no interval: point estimate used)")  # fmt: skip
    if champion is None:
        return Gate("snips", low, None, tol.snips, PASS, note + "; no champion to compare")
    if champ_snips is None:
        why = ((champion or {}).get("ope") or {}).get("not_evaluated")
        return Gate("snips", low, None, tol.snips, NOT_EVALUATED,
                    note + f"; no OPE estimate for the champion{f' ({why})' if why else ''}")  # fmt: skip
    ess = min(_ess(cand_snips), _ess(champ_snips))
    if ess < tol.snips_min_ess:
        return Gate("snips", low, finite(champ_snips["estimate"]), tol.snips,
                    NOT_EVALUATED, f"{note}; effective sample size {ess:.0f} < "
                    f"{tol.snips_min_ess:.0f}: too little support in the logs to "
                    "judge off-policy (the A/B test decides)")  # fmt: skip
    ref = finite(champ_snips["estimate"])
    pair = (candidate.get("ope") or {}).get("vs_champion") or {}
    if finite(pair.get("ci_low")) is not None:
        low = ref + finite(pair["ci_low"])
        note = ("candidate SNIPS lower bound paired with the champion's on the same requests "
                "(champion estimate + 95% lower bound of the difference)")  # fmt: skip
    ok = low >= ref - tol.snips
    return Gate("snips", low, ref, tol.snips, PASS if ok else FAIL,
                note + " >= champion SNIPS estimate - tolerance")  # fmt: skip


def _action(
    gates: list[Gate],
    first_day: bool,
    cand_v: str | None,
    champ_v: str | None,
    tol: Tolerances,
    kind: str | None = None,
) -> tuple[str, str]:
    """``(action, reason)`` from the gates' verdicts (module docstring)."""
    failed = [g.name for g in gates if g.verdict == FAIL]
    missing = [g.name for g in gates if g.verdict == NOT_EVALUATED]
    blocking = failed + (missing if tol.strict else [])
    if blocking:
        action = "rejected"
        reason = "failed: " + ", ".join(failed) if failed else ""
        if tol.strict and missing:
            reason = "; ".join(
                x for x in (reason, "not evaluated (strict): " + ", ".join(missing)) if x
            )
    elif first_day:
        action, reason = "champion", "first bundle passing the absolute floors: becomes champion"
    elif cand_v is not None and cand_v == champ_v:
        action, reason = "already_champion", "the candidate is the champion"
    elif kind == REFRESH:
        action = "champion"
        reason = "every gate passed: a refresh of the champion's configuration replaces it"
    else:
        action, reason = "challenger", "every gate passed: becomes challenger"
    if missing and not blocking:
        reason += f" (not evaluated: {', '.join(missing)})"
    skipped = [f"{g.name}: {g.note}" for g in gates if g.verdict == SKIPPED and g.note]
    if skipped:
        reason += f" (skipped: {'; '.join(skipped)})"
    return action, reason


def decide(
    settings: Settings,
    date: str | dt.date,
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    tolerances: Tolerances | None = None,
) -> Decision:
    """Apply the gates (module docstring) to ``candidate`` against ``champion`` (None: first day).

    ``candidate`` keys: ``version``, ``validation`` (verdict string or None), ``ndcg@10``,
    ``has_ranker`` (bool), ``auc`` (ranker AUC or None), ``index_recall``,
    ``index_recall_target`` (optional), ``ope`` (a ``pipelines.release.ope.estimate`` result or None).
    ``candidate["kind"]`` (optional): ``refresh`` makes a passing candidate ``champion`` (it
    replaces the champion's bundle), ``change`` (or absent) ``challenger``.
    ``champion`` keys: ``version``, ``ndcg@10``, ``auc``, ``ope`` (same day, same meanings).
    ``settings`` is accepted for symmetry with :func:`gate_day` (not read).
    """
    tol = tolerances or Tolerances()
    day = schema.parse_date(date).isoformat()
    champ = champion or {}
    champ_ndcg = finite(champ.get("ndcg@10"))
    ndcg_tol = tol.ndcg
    if candidate.get("kind") == REFRESH and champ_ndcg is not None:
        ndcg_tol = max(tol.ndcg, round(tol.refresh_ndcg_rel * champ_ndcg, 4))
    gates = [
        _validation_gate(candidate.get("validation")),
        _compare("ndcg@10", finite(candidate.get("ndcg@10")), champ_ndcg,
                 ndcg_tol, tol.ndcg_floor, FAIL),
        _ranker_gate(candidate, champ, tol),
        _recall_gate(candidate, tol),
        _snips_gate(candidate, champion, tol),
    ]  # fmt: skip
    cand_v = None if candidate.get("version") is None else str(candidate["version"])
    champ_v = None if champion is None or champ.get("version") is None else str(champ["version"])
    kind = candidate.get("kind")
    action, reason = _action(gates, champion is None, cand_v, champ_v, tol, kind)
    return Decision(day, cand_v, champ_v, action, gates, reason, kind)


def format_decision(decision: dict[str, Any] | Decision) -> str:
    """Decision as a fixed-width table: gate, candidate, champion, tolerance, verdict, note."""
    d = decision.to_dict() if isinstance(decision, Decision) else decision

    def cell(v: Any) -> str:
        return fmt.cell(v, ".4f", missing="-")

    rows = [("gate", "candidate", "champion", "tolerance", "verdict", "note")]
    rows += [
        (g["name"], cell(g["candidate"]), cell(g["champion"]), cell(g["tolerance"]), g["verdict"], g["note"])
        for g in d["gates"]
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    window = d.get("test_window")
    on = f" (test window {window[0]}..{window[1]})" if window and window[0] != window[1] else ""
    lines = [
        f"gates for {d['date']}{on}: candidate bundle {cell(d['candidate_version'])}, "
        f"champion {cell(d['champion_version'])}"
    ]
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
        )
    lines.append(f"decision: {d['action']} — {d['reason']}")
    prints = d.get("fingerprints") or {}
    if d.get("kind"):
        lines.append(
            f"kind: {d['kind']} (configuration {prints.get('candidate') or '-'}, "
            f"champion's {prints.get('champion') or '-'})"
        )
    for role, o in (d.get("ope") or {}).items():
        if o and o.get("snips") is not None:
            lines.append(f"OPE of the {role}'s {o.get('target') or ''} policy: {_ope_line(o)}")
    stage = d.get("stage_gate") or {}
    if stage:
        kept = "kept" if stage.get("keep_ranker", True) else "left out"
        lines.append(
            f"stage gate: ranker {kept}" + (f" ({stage['note']})" if stage.get("note") else "")
        )
        if stage.get("new_users"):
            lines.append(f"new users: {stage['new_users']} ({stage.get('new_users_from') or '-'})")
        if stage.get("retrieval_weight") is not None:
            lines.append(f"retrieval weight: {stage['retrieval_weight']} "
                         f"({stage.get('retrieval_weight_from') or '-'})")  # fmt: skip
        funnel = (stage.get("judgement") or {}).get("funnel") or {}
        if funnel.get("oracle") is not None:
            lines.append(
                "stage funnel (true CTR): oracle {oracle}, best of the candidates "
                "{candidates_best}, score order {score_order}, served {served}".format(**funnel)
            )
    return "\n".join(lines)


def _ope_line(o: dict[str, Any]) -> str:
    """``SNIPS x [lo, hi], DR y, ESS n, truth t (|err| e)`` of an ``ope`` record entry."""

    def num(v: Any) -> str:
        return fmt.cell(v, ".4f", missing="-")

    text = (f"SNIPS {num(o.get('snips'))} [{num(o.get('ci_low'))}, {num(o.get('ci_high'))}], "
            f"DR {num(o.get('dr'))}, ESS {fmt.cell(o.get('ess'), '.0f', missing='-')}")  # fmt: skip
    if o.get("truth") is not None:
        text += f", truth {num(o['truth'])} (|SNIPS - truth| / truth {num(o.get('rel_error'))})"
    pair = o.get("vs_champion") or {}
    if pair.get("estimate") is not None:
        text += (f"; minus the champion's {num(pair['estimate'])} [{num(pair.get('ci_low'))}, "
                 f"{num(pair.get('ci_high'))}] (paired)")  # fmt: skip
    return text


def ope_record(
    estimates: dict[str, Any] | None, report: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """What the decision records of one bundle's OPE: ``snips``, ``ci_low``, ``ci_high``,
    ``dr``, ``ess`` (from ``estimates``, the gate's input) and, from the whole OPE ``report``
    (:mod:`pipelines.core.ope_reports`) when given, ``policy``, ``target``, ``requests``,
    ``truth``, ``rel_error``, ``seconds``; ``{"not_evaluated": why}`` passes through; None
    without estimates."""
    if not estimates:
        return None
    if "not_evaluated" in estimates:
        return {"not_evaluated": estimates["not_evaluated"]}
    sn = _snips(estimates) or {}
    dr = estimates.get("dr") or {}
    pair = estimates.get("vs_champion") or {}
    paired = {k: pair.get(k) for k in ("estimate", "ci_low", "ci_high")} if pair else None
    out: dict[str, Any] = {
        "estimator": sn.get("estimator", "snips"),
        "vs_champion": paired,
        "snips": finite(sn.get("estimate")),
        "ci_low": finite(sn.get("ci_low")),
        "ci_high": finite(sn.get("ci_high")),
        "dr": finite(dr.get("estimate")) if isinstance(dr, dict) else None,
        "ess": finite(sn.get("ess")),
    }
    for key in ("policy", "target", "requests", "truth", "rel_error", "seconds"):
        if report is not None and key in report:
            out[key] = report[key]
    return out


# --- the DAG task ---------------------------------------------------------------------------------


def report_path(settings: Settings, date: str | dt.date) -> Path:
    """``reports/gates/date=D.json``."""
    return layout.gate_report_path(settings, date)


def _validation_verdict(settings: Settings, date: str | None) -> str | None:
    """The verdict of ``date``'s validation report; None without a date or a report."""
    from pipelines.data.validate import read_validation_report

    report = read_validation_report(settings, date) if date else None
    return None if report is None else report.get("verdict")


def offline_ndcg(
    settings: Settings, folder: Path, day: dt.date, k: int = 10, first: dt.date | None = None
) -> float | None:
    """NDCG@``k`` of the model artifact in ``folder`` (``pipelines.retrieval.train`` layout) on the
    pooled positives of the days ``first``..``day`` (default: ``day`` alone), its own training
    matrix excluded; None when no user it knows had a positive."""
    import scipy.sparse as sp

    from models.base import load_model
    from pipelines.core.metrics import evaluate_model
    from pipelines.core.vocab import Vocab
    from pipelines.retrieval.evaluate import day_relevance

    folder = Path(folder)
    users, items = Vocab.load(folder / "users.json"), Vocab.load(folder / "items.json")
    test = day_relevance(settings, day, users, items, first=first)
    if test.nnz == 0:
        return None
    seen = sp.load_npz(folder / "seen.npz").tocsr()
    model = load_model(folder / "model")
    return float(evaluate_model(model, seen, test, k=k, recall_ks=(), with_auc=False)[f"ndcg@{k}"])


def _bundle_numbers(
    settings: Settings, bundle: dict[str, Any], window: ForwardWindow, given: dict[str, Any] | None
) -> dict[str, Any]:
    given = dict(given or {})
    paths = bundle["paths"]
    out: dict[str, Any] = {
        "version": bundle["bundle_version"],
        "logical_date": bundle["logical_date"],
        "has_ranker": bundle.get("ranker") is not None,
    }
    if "ndcg@10" in given:
        out["ndcg@10"] = given.pop("ndcg@10")
    else:
        out["ndcg@10"] = offline_ndcg(
            settings, Path(paths["two_tower"]), window.day, first=window.first
        )
    meta = require_artifact_meta(paths["index"])
    out["index_recall"] = meta.get("recall")
    out["index_recall_target"] = meta.get("recall_target")
    out["validation"] = _validation_verdict(settings, bundle["logical_date"])
    out.update(given)
    return out


def gated_bundle_version(settings: Settings, day: dt.date) -> str | None:
    """The bundle gated on ``day``: the newest ``serving_bundle`` trained through ``day − H`` or
    before (H = ``settings.gate_test_days``; 1: trained before ``day``), or None."""
    from pipelines.release import registry

    through = forward_window(day, settings.gate_test_days).trained_through.isoformat()
    versions = registry.find_versions(settings, registry.BUNDLE)
    before = [v for v in versions if (v.tags.get("logical_date") or "9999") <= through]
    if not before:
        return None
    newest = max(before, key=lambda v: (v.tags["logical_date"], int(v.version)))
    return str(newest.version)


def _log_to_mlflow(settings: Settings, record: dict[str, Any]) -> str:
    import tempfile

    from pipelines.release import registry

    metrics: dict[str, Any] = {}
    for g in record["gates"]:
        for side in ("candidate", "champion"):
            if isinstance(g[side], (int, float)) and not isinstance(g[side], bool):
                metrics[f"{g['name']}.{side}"] = g[side]
        metrics[f"{g['name']}.pass"] = 1.0 if g["verdict"] == PASS else 0.0
    params = {
        "date": record["date"],
        "candidate_version": record["candidate_version"],
        "champion_version": record["champion_version"],
        "action": record["action"],
        **{f"verdict.{g['name']}": g["verdict"] for g in record["gates"]},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decision.json"
        path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        return registry.log_run(
            settings, GATES_EXPERIMENT, f"gates-{record['date']}", params, metrics,
            {"recloop.logical_date": record["date"], "recloop.action": record["action"]},
            {"": path},
        )  # fmt: skip


def _claim_champion(settings: Settings, version: str, record: dict[str, Any]) -> None:
    """First-day ``champion`` decision: set the alias (compare-and-set on "unset"); a champion
    pinned by hand (:mod:`pipelines.release.operations`) stays and the bundle is ``held``; a lost
    race makes it ``challenger``. Updates ``record``'s action and reason."""
    from pipelines.release import registry
    from pipelines.release.operations import pin_note, pinned_champion

    pin = pinned_champion(settings)
    if pin is not None:
        record["action"] = "held"
        record["reason"] += f"; held: {pin_note(pin)}"
    elif not registry.promote(settings, version, "champion", expected=None):
        winner = registry.get_alias(settings, "champion")
        record["reason"] += f"; lost the race: champion is now version {winner}"
        record["action"] = "challenger"
        registry.promote(settings, version, "challenger")


def _fingerprints(
    settings: Settings, version: str, champ_v: str | None
) -> tuple[str | None, str | None]:
    """The configuration fingerprints of the candidate and the champion (None: unknown)."""
    from pipelines.release import registry

    def one(v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return registry.bundle_fingerprint(settings, v)
        except (OSError, ValueError) as exc:  # unreadable artifacts: unknown, so a change
            log.warning("no configuration fingerprint for bundle %s: %s", v, exc)
            return None

    return one(version), one(champ_v)


def _stage_gate_record(
    settings: Settings, version: str, record: dict[str, Any]
) -> dict[str, Any] | None:
    """The stage gate's judgement recorded on bundle ``version`` (``register_day``), or None;
    when it left the ranker out, the decision's reason says so."""
    from pipelines.release import registry
    from pipelines.release.register import CHOICES, LEFT_OUT_TAG, read_judgement

    mv = registry.bundle_version(settings, version)
    tags = dict(mv.tags) if mv is not None else {}
    judgement = read_judgement(tags)
    choices = {}
    for key, (tag, from_tag) in CHOICES.items():
        choices[key], choices[f"{key}_from"] = tags.get(tag), tags.get(from_tag)
    if judgement is None and all(choices[key] is None for key in CHOICES):
        return None
    judgement = judgement or {}
    left_out = tags.get(LEFT_OUT_TAG)
    out = {"keep_ranker": left_out is None, "ranker_left_out": left_out, "judgement": judgement,
           **choices}  # fmt: skip
    why = judgement.get("error") or judgement.get("reason")
    if left_out is not None:
        out["note"] = f"ranker version {left_out} does not lift the slate: retrieval order serves"
        out["note"] += f" ({why})" if why else ""
        record["reason"] += f"; stage gate: {out['note']}"
    elif why:
        out["note"] = str(why)
    return out


def _tag_kind(settings: Settings, version: str, kind: str, champ_v: str | None) -> None:
    from pipelines.release import registry

    c = registry.client(settings)
    c.set_model_version_tag(registry.BUNDLE, version, registry.KIND_TAG, kind)
    c.set_model_version_tag(registry.BUNDLE, version, "recloop.kind_of", str(champ_v))


def _move_aliases(
    settings: Settings,
    record: dict[str, Any],
    replace_challenger: bool,
    load_check: Callable[[Settings, str], None] | None,
) -> None:
    """Apply ``record``'s action to the aliases: first champion, refresh, challenger or
    ``held`` (module docstring); updates the record's action and reason."""
    from pipelines.release import registry

    version, champ_v = record["candidate_version"], record["champion_version"]
    if record["action"] == "champion" and champ_v is None:
        _claim_champion(settings, version, record)
    elif record["action"] == "champion":
        _refresh_champion(settings, version, champ_v, record, load_check)
    elif record["action"] == "challenger":
        running = registry.get_alias(settings, "challenger")
        if running not in (None, version) and not replace_challenger:
            record["action"] = "held"
            record["reason"] += (
                f"; held: the A/B experiment {champ_v}-vs-{running} is running "
                "(one experiment at a time)"
            )
        else:
            registry.promote(settings, version, "challenger")


def _refresh_champion(
    settings: Settings,
    version: str,
    champ_v: str,
    record: dict[str, Any],
    load_check: Callable[[Settings, str], None] | None,
) -> None:
    """A refresh that passed the gates replaces the champion's bundle (module docstring), unless
    the champion is pinned, an A/B experiment is running, the bundle fails the load and smoke
    test, or the champion moved meanwhile: then ``held`` with the reason."""
    from pipelines.release import operations, registry

    def hold(why: str) -> None:
        record["action"] = "held"
        record["reason"] += f"; held: {why}"

    pin = operations.pinned_champion(settings)
    running = registry.get_alias(settings, "challenger")
    if pin is not None:
        return hold(f"the refresh waits for unpin: {operations.pin_note(pin)}")
    if running is not None:
        return hold(
            f"the refresh waits for the A/B experiment {champ_v}-vs-{running} to end (its arms "
            "are bundle versions: the champion arm is not swapped mid-test)"
        )
    try:
        (load_check or operations.check_loads)(settings, version)
    except Exception as exc:  # noqa: BLE001 - any failure holds the refresh, named
        return hold(f"the refresh fails the load and smoke test: {exc}")
    if not registry.promote(settings, version, "champion", expected=champ_v):
        return hold(f"the champion moved to {registry.get_alias(settings, 'champion')} meanwhile")
    record["reason"] += f"; champion {champ_v} -> {version} (refresh)"
    registry.client(settings).set_model_version_tag(
        registry.BUNDLE, version, "recloop.refreshed_from", champ_v
    )
    record["refresh_run_id"] = operations.record_refresh(
        settings, version, champ_v, f"gate of {record['date']}: {record['reason']}"
    )


def promote_refit(settings: Settings, version: str, day: str | dt.date) -> dict[str, Any]:
    """The final refit of a backfill (:mod:`pipelines.orchestration.backfill`): bundle
    ``version``, the champion's configuration retrained through ``day``, replaces the champion
    as a refresh. No offline gate runs (no held-out day is left after ``day``: the configuration
    was judged on the test window before it); the move is the daily gate's refresh
    (:func:`_refresh_champion`: held when the champion is pinned, an A/B experiment runs, the
    bundle fails the load and smoke test, or the champion moved), and it is held when the
    configuration fingerprint differs from the champion's (not a refresh: the daily gate judges
    a change). Returns ``{date, candidate_version, champion_version, action, reason, kind,
    fingerprints}`` (``action`` ``champion``, ``held`` or ``already_champion``)."""
    from pipelines.release import registry

    champ_v = registry.get_alias(settings, "champion")
    record: dict[str, Any] = {
        "date": schema.parse_date(day).isoformat(), "candidate_version": str(version),
        "champion_version": champ_v, "kind": REFRESH,
        "reason": f"final refit: the champion's configuration retrained through {day}",
    }  # fmt: skip
    cand_fp, champ_fp = _fingerprints(settings, str(version), champ_v)
    record["fingerprints"] = {"candidate": cand_fp, "champion": champ_fp}
    if champ_v is None or champ_v == str(version):
        record["action"] = "already_champion" if champ_v else "held"
        record["reason"] += "; " + ("it is the champion" if champ_v else "held: no champion")
        return record
    if cand_fp is None or cand_fp != champ_fp:
        record["action"] = "held"
        record["reason"] += (
            f"; held: its configuration ({cand_fp}) is not the champion's ({champ_fp}): a "
            "change, judged by the daily gate"
        )
        return record
    record["action"] = "champion"
    _tag_kind(settings, str(version), REFRESH, champ_v)
    _refresh_champion(settings, str(version), champ_v, record, None)
    log.info("refit %s: %s (%s)", day, record["action"], record["reason"])
    return record


def gate_day(
    settings: Settings,
    date: str | dt.date,
    *,
    candidate_version: str | int | None = None,
    ope: dict[str, Any] | None = None,
    champion_ope: dict[str, Any] | None = None,
    candidate_metrics: dict[str, Any] | None = None,
    champion_metrics: dict[str, Any] | None = None,
    tolerances: Tolerances | None = None,
    replace_challenger: bool = False,
    load_check: Callable[[Settings, str], None] | None = None,
    ope_reports: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Gate one bundle on test day ``date``, move the alias, record the decision; JSON-able dict.

    ``candidate_version``: a ``serving_bundle`` version (default: the newest bundle trained before
    ``date``, see the module docstring). ``ope`` / ``champion_ope``: ``pipelines.release.ope.estimate``
    results for the candidate and champion on ``date``'s logs (None: ``not_evaluated``).
    ``candidate_metrics`` / ``champion_metrics``: numbers measured elsewhere that override or add
    to the ones computed here, e.g. ``{"auc": ranker_auc}``; ``ndcg@10`` is computed from the
    pinned two-tower on ``date`` unless given. ``replace_challenger``: a passing bundle replaces a
    running challenger (default: it is ``held``, see "One experiment at a time").
    ``load_check(settings, version)``: the load and smoke test a refresh passes before it replaces
    the champion (default :func:`pipelines.release.operations.check_loads`, the service's own).
    ``ope_reports``: ``{"candidate": report, "champion": report}``, the whole OPE reports behind
    ``ope`` / ``champion_ope`` (:func:`pipelines.release.bundle_ope.gate_inputs`).
    The record adds ``kind``, ``fingerprints`` {candidate, champion}, ``stage_gate`` and ``ope``
    {candidate, champion} (:func:`ope_record`).
    """
    from pipelines.release import registry

    day = schema.parse_date(date)
    window = forward_window(day, settings.gate_test_days)
    version = (
        str(candidate_version)
        if candidate_version is not None
        else gated_bundle_version(settings, day)
    )
    champ_v = registry.get_alias(settings, "champion")
    recorded = _decided_already(settings, day, version)
    if recorded is not None:
        log.info("gate %s: bundle %s was judged already (%s) and the aliases are as that "
                 "decision left them: the rerun keeps it", day, version, recorded.get("action"))  # fmt: skip
        return recorded
    if version is None:
        record = Decision(day.isoformat(), None, champ_v, "rejected", [],
                          f"no serving bundle trained through {window.trained_through} "
                          "to gate").to_dict()  # fmt: skip
    else:
        cand_bundle = registry.load_bundle(settings, version)
        candidate = _bundle_numbers(settings, cand_bundle, window, candidate_metrics)
        candidate["ope"] = ope
        champion = None
        if champ_v is not None:
            if champ_v == version:
                champion = {**candidate, **(champion_metrics or {})}
            else:
                champ_bundle = registry.load_bundle(settings, champ_v)
                champion = _bundle_numbers(settings, champ_bundle, window, champion_metrics)
            same = champ_v == version and champion_ope is None
            champion["ope"] = ope if same else champion_ope
        prints = _fingerprints(settings, version, champ_v)
        # a bundle is no refresh of itself (a rerun of the day that made it champion): no kind,
        # no tag, so the rerun leaves the registry as it was
        own = champ_v is None or champ_v == version
        candidate["kind"] = None if own else fingerprint.kind(*prints)
        decision = decide(settings, day, candidate, champion, tolerances)
        record = decision.to_dict()
        record["fingerprints"] = {"candidate": prints[0], "champion": prints[1]}
        record["stage_gate"] = _stage_gate_record(settings, version, record)
        reports = ope_reports or {}
        champ_est = None if champion is None else champion.get("ope")
        record["ope"] = {
            "candidate": ope_record(ope, reports.get("candidate")),
            "champion": ope_record(champ_est, reports.get("champion")),
        }
        _move_aliases(settings, record, replace_challenger, load_check)
        if decision.kind is not None:
            _tag_kind(settings, version, decision.kind, champ_v)
    record["aliases"] = {
        "champion": registry.get_alias(settings, "champion"),
        "challenger": registry.get_alias(settings, "challenger"),
    }
    record["test_days"] = window.days
    record["test_window"] = window.record()["test_window"]
    record["tolerances"] = dataclasses.asdict(tolerances or Tolerances())
    record["mlflow_run_id"] = _log_to_mlflow(settings, record)
    write_gate_decision(settings, record)
    log.info("%s", format_decision(record))
    return json.loads(json.dumps(record, default=str))


def _decided_already(
    settings: Settings, day: dt.date, version: str | None
) -> dict[str, Any] | None:
    """The day's recorded decision when it promoted bundle ``version`` (champion or challenger)
    and the registry's aliases are still the ones it left, else None. A rerun of a finished day then returns it unchanged
    instead of judging a state its own first run made (the candidate it promoted would read
    ``already_champion``): reruns are idempotent. Aliases moved since (an operator, a later day)
    mean the day is judged again."""
    from pipelines.release import registry

    try:
        rec = read_gate_decision(settings, day)
    except ValueError:  # unreadable: judged again, and the file rewritten
        return None
    if not rec or version is None or str(rec.get("candidate_version")) != str(version):
        return None
    if rec.get("action") not in ("champion", "challenger"):  # held / rejected: judged again
        return None
    now = {a: registry.get_alias(settings, a) for a in ("champion", "challenger")}
    left = rec.get("aliases") or {}
    same = all(str(left.get(a)) == str(v) for a, v in now.items())
    return rec if same else None


def daily_gate(settings: Settings, date: str | dt.date) -> dict[str, Any]:
    """The ``gate`` task for test day ``date``: gather the numbers measured by other tasks and
    modules, then :func:`gate_day` the newest bundle trained before ``date``.

    Inputs: the candidate ranker's AUC from the ``evaluate_ranker`` report of ``date``
    (``reports/ranker/date=D.json``), the champion's ranker AUC on the same day
    (:func:`pipelines.ranking.evaluate.ranker_auc`), and the SNIPS estimates of both bundles'
    **served** policies on ``date``'s logs (:func:`pipelines.release.bundle_ope.gate_inputs`,
    judged with ``SNIPS_TOLERANCE``). Returns :func:`gate_day`'s record.
    """
    from pipelines.ranking.evaluate import AUC_KEYS, read_ranker_report
    from pipelines.release.bundle_ope import SNIPS_TOLERANCE, gate_inputs

    report = read_ranker_report(settings, date) or {}
    ranker = report.get("metrics", {}).get("ranker", {})
    auc = ranker.get("auc")
    given = (
        {k: ranker[k] for k in AUC_KEYS if ranker.get(k) is not None} if auc is not None else None
    )
    if auc is None and report.get("note"):
        given = {"auc_note": report["note"]}
    ope = gate_inputs(settings, date)
    return gate_day(
        settings,
        date,
        candidate_version=ope["candidate_version"],
        ope=ope["ope"],
        champion_ope=ope["champion_ope"],
        candidate_metrics=given,
        champion_metrics=_champion_ranker_auc(settings, date, ope["candidate_version"]),
        tolerances=Tolerances(snips=SNIPS_TOLERANCE),
        ope_reports=ope.get("reports"),
    )


def _champion_ranker_auc(
    settings: Settings, date: str | dt.date, candidate: str | None
) -> dict[str, Any] | None:
    """``{"auc": ...}`` of the champion bundle's ranker on ``date`` (the candidate's test day), or
    None when there is no other champion or it pins no ranker."""
    from pipelines.ranking.evaluate import ranker_auc
    from pipelines.release import registry

    champ = registry.get_alias(settings, "champion")
    if champ is None or champ == candidate:
        return None
    folder = registry.load_bundle(settings, champ)["paths"].get("ranker")
    if not folder:
        return None
    return ranker_auc(settings, folder, date) or None


def read_decision(settings: Settings, date: str | dt.date) -> dict[str, Any]:
    """The recorded decision of ``date``: ``reports/gates/date=D.json``, else the newest
    ``decision.json`` of the MLflow ``recloop-gates`` run of that date. An unreadable file (or
    one that is not a JSON object) is a ``ValueError`` naming it
    (:func:`pipelines.core.gate_decisions.read_gate_decision`)."""
    path = report_path(settings, date)
    recorded = read_gate_decision(settings, date)
    if recorded is not None:
        return recorded
    from pipelines.release import registry

    day = schema.parse_date(date).isoformat()
    uri = settings.mlflow_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise FileNotFoundError(f"no gate decision for {day}: no {path} and no MLflow database")
    c = registry.client(settings)
    exp = c.get_experiment_by_name(GATES_EXPERIMENT)
    runs = (
        c.search_runs(
            [exp.experiment_id],
            f"tags.`recloop.logical_date` = '{day}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if exp
        else []
    )
    if not runs:
        raise FileNotFoundError(f"no gate decision for {day}: neither {path} nor an MLflow run")
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        run_id=runs[0].info.run_id, artifact_path="decision.json", tracking_uri=settings.mlflow_uri
    )
    return schema.read_json_file(Path(local), "gate decision")
