"""The ``evaluate_ranker`` task: forward evaluation of the rankers, and the metrics it reports.

- **Forward evaluation** (:func:`evaluate_forward`): the rankers trained through D−1 scored on D's
  impressions (with ``RECLOOP_GATE_TEST_DAYS`` = H: trained through D−H, scored on the rows of
  D−H+1..D, :mod:`pipelines.core.forward_window`), or on days without impressions on their
  positives against sampled negatives (AUC,
  logloss, calibration/ECE, NDCG@10 lift over the two-tower retrieval order; on simulated data
  also Spearman against the true click probability) → ``reports/ranker/``.
- **Metrics**: :func:`evaluate_scores` (any scores of a frame), :func:`evaluate_ranker` (a
  ranker's), :func:`calibration_table`, :func:`expected_calibration_error`, :func:`spearman`,
  :func:`mean_ndcg_at_k`; :func:`ranker_auc` is the gate's champion number.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.core import layout, schema
from pipelines.core.forward_window import forward_window
from pipelines.core.settings import Settings
from pipelines.ranking.data import (
    IMPRESSIONS_SOURCE,
    SAMPLED_PER_POSITIVE,
    SERVICE,
    SERVING_POSITION,
    NotEnoughLabels,
    add_ranker_columns,
    read_validated,
    sample_negatives,
    sample_users,
    window_labels,
)

if TYPE_CHECKING:
    from models.dlrm import DLRMRanker

log = logging.getLogger(__name__)


def mean_ndcg_at_k(
    requests: np.ndarray | pd.Series,
    labels: np.ndarray | pd.Series,
    scores: np.ndarray | pd.Series,
    k: int = 10,
    seed: int = 0,
) -> float:
    """Mean over requests with at least one positive of NDCG@``k`` of the request's rows ordered
    by ``scores`` (descending; ties broken at random under ``seed``), relevance = ``labels``."""
    codes, uniq = pd.factorize(pd.Series(requests), sort=False)
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    n, g = len(codes), len(uniq)
    if n == 0:
        return float("nan")
    tie = np.random.default_rng(seed).random(n)
    disc = 1.0 / np.log2(np.arange(n) + 2.0)

    def dcg(order: np.ndarray) -> np.ndarray:
        r = codes[order]
        starts = np.r_[0, np.flatnonzero(np.diff(r)) + 1]
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        gain = np.where(rank < k, y[order] * disc[np.minimum(rank, n - 1)], 0.0)
        return np.bincount(r, weights=gain, minlength=g)

    got = dcg(np.lexsort((tie, -s, codes)))
    ideal = dcg(np.lexsort((tie, -y, codes)))
    has = ideal > 0
    return float((got[has] / ideal[has]).mean()) if has.any() else float("nan")


def calibration_table(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Equal-count bins of the predicted probability (deciles by default): per bin ``n``,
    ``mean_pred``, ``observed_ctr``, ``low``/``high`` (its prediction range)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    rows = []
    for b, idx in enumerate(np.array_split(order, n_bins)):
        if len(idx) == 0:
            continue
        rows.append(
            {
                "bin": b,
                "n": len(idx),
                "low": float(p[idx].min()),
                "high": float(p[idx].max()),
                "mean_pred": float(p[idx].mean()),
                "observed_ctr": float(y[idx].mean()),
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(table: pd.DataFrame) -> float:
    """``Σ_b n_b / N · |mean_pred_b − observed_b|`` over a :func:`calibration_table`."""
    if len(table) == 0:
        return float("nan")
    w = table["n"] / table["n"].sum()
    return float((w * (table["mean_pred"] - table["observed_ctr"]).abs()).sum())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a, np.float64), np.asarray(b, np.float64)).statistic)


def evaluate_scores(
    frame: pd.DataFrame,
    scores: np.ndarray,
    label: str = "label",
    request_col: str = "request_id",
    retrieval_score_col: str | None = None,
    true_prob_col: str | None = None,
    probabilities: bool = True,
    k: int = 10,
) -> dict[str, Any]:
    """Metrics of ``scores`` ``(N,)`` against ``frame[label]``: ``auc`` (and, with a logged
    ``position`` on every row, ``auc_within_position``: pairs at the same position only,
    :func:`pipelines.core.metrics.auc_within_groups`); when ``probabilities``,
    ``logloss``, ``ece`` and ``calibration`` (decile table as records); ``ndcg@k`` per request
    (relevance = label); with ``retrieval_score_col`` also ``ndcg@k_retrieval`` and
    ``ndcg@k_lift`` (ours − retrieval order); with a ``position`` column ``ndcg@k_logged`` (the
    order that was shown); with ``true_prob_col`` ``spearman_truth``."""
    from pipelines.core.metrics import auc, auc_within_groups, logloss

    y = frame[label].to_numpy(dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {"rows": len(frame), "positives": int(y.sum()), "auc": auc(y, s)}
    if "position" in frame.columns and len(frame) and frame["position"].notna().all():
        out["auc_within_position"] = auc_within_groups(y, s, frame["position"].to_numpy())
    if probabilities:
        table = calibration_table(y, s)
        out["logloss"] = logloss(y, s)
        out["ece"] = expected_calibration_error(table)
        out["mean_pred"] = float(s.mean()) if len(s) else float("nan")
        out["observed_ctr"] = float(y.mean()) if len(y) else float("nan")
        out["calibration"] = table.to_dict(orient="records")
    if request_col in frame.columns:
        req = frame[request_col].to_numpy()
        out[f"ndcg@{k}"] = mean_ndcg_at_k(req, y, s, k)
        if retrieval_score_col is not None:
            base = mean_ndcg_at_k(req, y, frame[retrieval_score_col].to_numpy(np.float64), k)
            out[f"ndcg@{k}_retrieval"] = base
            out[f"ndcg@{k}_lift"] = out[f"ndcg@{k}"] - base
        if "position" in frame.columns and frame["position"].notna().all():
            shown = -frame["position"].to_numpy(dtype=np.float64)
            out[f"ndcg@{k}_logged"] = mean_ndcg_at_k(req, y, shown, k)
    if true_prob_col is not None:
        out["spearman_truth"] = spearman(s, frame[true_prob_col].to_numpy(np.float64))
    return out


def evaluate_ranker(
    ranker: DLRMRanker,
    test_frame: pd.DataFrame,
    retrieval_score_col: str | None = None,
    true_prob_col: str | None = None,
    label: str = "label",
    k: int = 10,
) -> dict[str, Any]:
    """:func:`evaluate_scores` of ``ranker.predict_proba(test_frame)`` (pass real impressions,
    e.g. the next day's, not sampled negatives), plus the input report (non-finite / OOV counts)."""
    probs = ranker.predict_proba(test_frame)
    out = evaluate_scores(
        test_frame, probs, label=label, retrieval_score_col=retrieval_score_col,
        true_prob_col=true_prob_col, k=k,
    )  # fmt: skip
    out["model"] = ranker.interaction
    out["input_report"] = ranker.last_report
    return out


def forward_test_rows(
    settings: Settings, day: dt.date, first: dt.date | None = None
) -> tuple[pd.DataFrame, str]:
    """The rows a ranker is judged on for the test days ``first``..``day`` (default: ``day``
    alone; features not joined) and their label source: the days' labelled impressions, or on
    days without usable impressions their engagement rows
    (:func:`pipelines.ranking.data.label_positives`) plus ``SAMPLED_PER_POSITIVE`` uniform
    negatives per positive from the days' items (seeded, so the candidate and the champion see
    the same rows). At most ``RECLOOP_EVAL_MAX_USERS`` users' rows, a seeded sample of users
    (:func:`pipelines.ranking.data.sample_users`). :class:`NotEnoughLabels <pipelines.ranking.data.NotEnoughLabels>` when the
    days have neither."""
    first = first or day
    labelled, source = window_labels(settings, first, day)
    labelled = sample_users(labelled, settings.eval_max_users, settings.seed)
    if source == IMPRESSIONS_SOURCE:
        return labelled, source
    pool = np.sort(read_validated(settings, first, day)["item_id"].astype(str).unique())
    rows = sample_negatives(
        labelled,
        pool,
        mix={"uniform": 1.0},
        ratio=SAMPLED_PER_POSITIVE,
        seed=settings.seed,
    )
    return rows, source


def _forward_metrics(
    settings: Settings, frame: pd.DataFrame, rankers: dict[str, DLRMRanker], prev: dt.date
) -> dict[str, Any]:
    """Each ranker's :func:`evaluate_ranker` on ``frame`` (features joined) beside the two-tower
    retrieval order trained through ``prev`` (``retrieval_only``)."""
    from pipelines.retrieval.predict import predict_pairs

    try:
        frame["retrieval_score"] = predict_pairs(
            settings, "two_tower", frame[["user_id", "item_id"]], prev.isoformat()
        )["score"].to_numpy()
    except FileNotFoundError:
        frame["retrieval_score"] = np.nan
    truth = _true_click_prob(settings, frame)
    metrics = {
        name: evaluate_ranker(r, frame, retrieval_score_col="retrieval_score", true_prob_col=truth)
        for name, r in rankers.items()
    }
    retrieval = (
        frame["retrieval_score"].fillna(frame["retrieval_score"].min()).fillna(0.0).to_numpy()
    )
    metrics["retrieval_only"] = evaluate_scores(
        frame, retrieval, true_prob_col=truth, probabilities=False
    )
    return metrics


def evaluate_forward(settings: Settings, date: str | dt.date) -> dict[str, Any]:
    """Rankers trained through D−H scored on the rows of days D−H+1..D (:func:`forward_test_rows`;
    H = ``settings.gate_test_days``, 1: D−1's rankers on D); writes ``reports/ranker/date=D.json``:
    ``metrics`` and ``label_source``, or a ``note`` saying why nothing was evaluated (no ranker
    yet, no impressions and too few positives), and the window (``trained_through``,
    ``test_days``, ``test_window``). Never raises for missing data."""
    from pipelines.features.store import training_frame
    from pipelines.ranking.predict import load_ranker
    from pipelines.ranking.train import MODEL_NAMES

    window = forward_window(schema.parse_date(date), settings.gate_test_days)
    day, prev = window.day, window.trained_through
    out: dict[str, Any] = {"date": day.isoformat(), **window.record()}
    try:
        rankers = {name: load_ranker(settings, name, prev) for name in MODEL_NAMES}
    except FileNotFoundError:
        rankers = {}
    test, source = None, ""
    if not rankers:
        out["note"] = f"no ranker trained through {prev}: nothing to evaluate yet"
    else:
        try:
            test, source = forward_test_rows(settings, day, window.first)
        except NotEnoughLabels as exc:
            out["note"] = f"not evaluated: {exc}"
    if test is not None:
        out["label_source"] = source
        frame = add_ranker_columns(training_frame(settings, test, SERVICE), SERVING_POSITION)
        out["metrics"] = _forward_metrics(settings, frame, rankers, prev)
        log.info(
            "ranker forward evaluation on %s (%s): %s", window.describe(), source,
            {n: {k: m.get(k) for k in ("auc", "logloss", "ndcg@10_lift")}
             for n, m in out["metrics"].items()},
        )  # fmt: skip
    write_ranker_report(settings, json.loads(json.dumps(out, default=_plain)))
    return read_ranker_report(settings, day) or {}


def read_ranker_report(settings: Settings, date: str | dt.date) -> dict[str, Any] | None:
    """The rankers' forward evaluation of ``date`` (``reports/ranker/date=D.json``: ``date``,
    ``trained_through``, and ``metrics`` {model: {metric: value}} or a ``note``); None when the
    file does not exist. The one reader of the file (the gate reads the candidate's AUC here).
    Raises ``ValueError`` naming the file when it is unreadable or not a JSON object."""
    return schema.read_json_file(layout.ranker_report_path(settings, date), "ranker report")


def write_ranker_report(settings: Settings, report: dict[str, Any]) -> Path:
    """Write ``report`` (its ``date`` names the day) atomically; the path written."""
    return schema.write_json_atomic(report, layout.ranker_report_path(settings, report["date"]))


AUC_KEYS = ("auc", "auc_within_position")
"""The ranker numbers the gate compares (:func:`pipelines.release.gate.decide`)."""


def ranker_auc(settings: Settings, folder: Path | str, date: str | dt.date) -> dict[str, float]:
    """``{"auc"[, "auc_within_position"]}`` of the ranker saved in ``folder`` (its ``model/``) on
    the rows of the test window ending on D (:func:`forward_test_rows`; default window:
    ``settings.gate_test_days`` days, the same rows as the candidate's forward evaluation): the
    gate's champion numbers. Empty when the window has nothing to evaluate on."""
    from models.base import load_model
    from pipelines.features.store import training_frame

    window = forward_window(schema.parse_date(date), settings.gate_test_days)
    try:
        test, _ = forward_test_rows(settings, window.day, window.first)
    except NotEnoughLabels:
        return {}
    ranker = load_model(Path(folder) / "model")
    metrics = evaluate_ranker(
        ranker, add_ranker_columns(training_frame(settings, test, SERVICE), SERVING_POSITION)
    )
    return {k: float(metrics[k]) for k in AUC_KEYS if metrics.get(k) is not None}


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, pd.DataFrame):
        return obj.to_dict(orient="records")
    return str(obj)


def _true_click_prob(settings: Settings, frame: pd.DataFrame) -> str | None:
    """On simulated data, attach the true click probability of each logged impression (by
    event_id) as column ``true_prob``; returns its name, or None when there is no truth."""
    from pipelines.data.simulate import truth_impressions_dir

    folder = truth_impressions_dir(settings)
    if "event_id" not in frame.columns or not folder.exists():
        return None
    days = pd.to_datetime(frame["event_timestamp"], utc=True).dt.date.unique()
    parts = [
        schema.read_partition(folder, d) for d in days if schema.partition_dir(folder, d).exists()
    ]
    if not parts:
        return None
    truth = pd.concat(parts, ignore_index=True)
    col = "true_click_prob" if "true_click_prob" in truth.columns else None
    if col is None:
        return None
    frame["true_prob"] = frame["event_id"].map(truth.set_index("event_id")[col])
    return "true_prob" if frame["true_prob"].notna().any() else None
