"""The ``evaluate`` task: forward evaluation of the retrieval models.

**Evaluation is forward-chained**: on day D, the models trained through D−1 (what would serve on
day D) are scored against D's positives beside the baselines trained on the same history — no
model is ever scored on data it saw. Writes ``reports/eval/date=D.json``
(:mod:`pipelines.core.eval_reports`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from pipelines.core import schema
from pipelines.core.eval_reports import write_eval_report
from pipelines.core.settings import Settings
from pipelines.core.vocab import Vocab
from pipelines.retrieval.data import load_training_data, matrices, read_positives
from pipelines.retrieval.train import build_model, load_artifact

log = logging.getLogger(__name__)

BASELINES = ("popular", "itemknn", "userknn")


def day_relevance(settings: Settings, date: dt.date, users: Vocab, items: Vocab) -> sp.csr_matrix:
    """Day ``date``'s positives as a ``(U, I)`` graded matrix over the given vocabularies
    (1 = click/rating, 2 = purchase; ids the vocabularies do not know are dropped)."""
    events = read_positives(settings, date, date)
    implicit, _ = matrices(events, users, items)
    implicit.data = np.minimum(implicit.data, 2.0)
    return implicit


def evaluate_forward(
    settings: Settings,
    date: str | dt.date,
    k: int = 10,
    models: tuple[str, ...] = ("mf", "two_tower"),
) -> dict[str, Any]:
    """Score the models trained through D−1 on day D's positives, beside baselines fit on the same
    history. Writes ``reports/eval/date=D.json`` and returns it; says so when there is no D−1 model."""
    from pipelines.core.metrics import compare_models

    day = schema.parse_date(date)
    prev = day - dt.timedelta(days=1)
    loaded = {}
    for name in models:
        try:
            loaded[name] = load_artifact(settings, name, prev)
        except FileNotFoundError:
            continue
    out: dict[str, Any] = {"date": day.isoformat(), "trained_through": prev.isoformat(), "k": k}
    if not loaded:
        out["note"] = f"no models trained through {prev}: nothing to evaluate yet"
        log.info(out["note"])
    else:
        ref = next(iter(loaded.values()))
        data = load_training_data(settings, prev)
        if data.users.ids != ref.users.ids or data.items.ids != ref.items.ids:
            raise RuntimeError(
                f"validated history through {prev} changed since the models were trained: retrain {prev} first"
            )
        test = day_relevance(settings, day, data.users, data.items)
        candidates = {name: art.model for name, art in loaded.items()}
        for name in BASELINES:
            candidates[name] = build_model(name, data, settings, seed=settings.seed)
        table = compare_models(candidates, data.implicit, test, k=k, recall_ks=(100,))
        out["metrics"] = json.loads(table.to_json(orient="index"))
        log.info(
            "forward evaluation on %s (models through %s):\n%s",
            day,
            prev,
            table.to_string(float_format="%.4f"),
        )
    write_eval_report(settings, out)
    return out
