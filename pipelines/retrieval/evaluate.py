"""The ``evaluate`` task: forward evaluation of the retrieval models.

**Evaluation is forward-chained**: on day D, the models trained through D−1 (what would serve on
day D) are scored against D's positives beside the baselines trained on the same history — no
model is ever scored on data it saw. With ``RECLOOP_GATE_TEST_DAYS`` = H
(:mod:`pipelines.core.forward_window`) the models trained through D−H are scored on the pooled
positives of D−H+1..D (H = 1: the above). At most ``RECLOOP_EVAL_MAX_USERS`` test users are
scored (a seeded sample, the same users for every model; ``test_users`` and ``scored_users`` in
the report); the ``userknn`` baseline only up to :data:`USERKNN_MAX_USERS` users. Writes ``reports/eval/date=D.json``
(:mod:`pipelines.core.eval_reports`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.core import schema
from pipelines.core.eval_reports import write_eval_report
from pipelines.core.forward_window import forward_window
from pipelines.core.settings import Settings
from pipelines.core.vocab import Vocab
from pipelines.retrieval.data import load_training_data, matrices, read_positives
from pipelines.retrieval.train import build_model, load_artifact

log = logging.getLogger(__name__)

BASELINES = ("popular", "itemknn", "userknn")
USERKNN_MAX_USERS = 200_000
"""Above this many users in the history the ``userknn`` baseline is left out (the report's
``skipped`` says so): a sampled user's neighbours are searched among every user who shares an
item, and at a large day's 28 days (687k users) one block of 1,024 users held ~10 GB of
co-occurrences. Demo histories hold ~5k users."""


def day_relevance(
    settings: Settings,
    date: dt.date,
    users: Vocab,
    items: Vocab,
    first: dt.date | None = None,
) -> sp.csr_matrix:
    """The positives of the days ``first``..``date`` (default: ``date`` alone) as a ``(U, I)``
    graded matrix over the given vocabularies (1 = click/rating, 2 = purchase, counts over the
    days capped at 2; ids the vocabularies do not know are dropped)."""
    events = read_positives(settings, date, first or date)
    implicit, _ = matrices(events, users, items)
    implicit.data = np.minimum(implicit.data, 2.0)
    return implicit


def evaluate_forward(
    settings: Settings,
    date: str | dt.date,
    k: int = 10,
    models: tuple[str, ...] = ("mf", "two_tower"),
) -> dict[str, Any]:
    """Score the models trained through D−H on the pooled positives of days D−H+1..D (H =
    ``settings.gate_test_days``; 1: D−1's models on D), beside baselines fit on the same history.
    Writes ``reports/eval/date=D.json`` (with ``trained_through``, ``test_days`` and
    ``test_window``) and returns it; says so when there is no model trained through D−H."""
    from pipelines.core.metrics import compare_models, sample_test_users

    window = forward_window(schema.parse_date(date), settings.gate_test_days)
    day, prev = window.day, window.trained_through
    loaded = {}
    for name in models:
        try:
            loaded[name] = load_artifact(settings, name, prev)
        except FileNotFoundError:
            continue
    out: dict[str, Any] = {"date": day.isoformat(), **window.record(), "k": k}
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
        test = day_relevance(settings, day, data.users, data.items, first=window.first)
        users, n_test = sample_test_users(
            data.implicit, test, settings.eval_max_users, seed=settings.seed
        )
        out["test_users"], out["scored_users"] = n_test, len(users)
        candidates = {name: art.model for name, art in loaded.items()}
        for name in BASELINES:
            if name == "userknn" and len(data.users) > USERKNN_MAX_USERS:
                out["skipped"] = {name: f"{len(data.users)} users > {USERKNN_MAX_USERS}"}
                log.info("forward evaluation: userknn skipped (%s)", out["skipped"][name])
                continue
            candidates[name] = build_model(name, data, settings, seed=settings.seed, users=users)
        table = compare_models(candidates, data.implicit, test, k=k, users=users, recall_ks=(100,))
        out["metrics"] = json.loads(table.to_json(orient="index"))
        log.info(
            "forward evaluation on %s (models through %s):\n%s",
            window.describe(),
            prev,
            table.to_string(float_format="%.4f"),
        )
    write_eval_report(settings, out)
    return out


def test_users_by_window(settings: Settings, day: dt.date, max_days: int) -> dict[int, int]:
    """For H = 1..``max_days``: how many users a forward evaluation on ``day`` with H test days
    scores — users with a positive in D−H+1..D who also had one through D−H (the trained
    models know them). Reads the validated positives through ``day`` once."""
    events = read_positives(settings, day)
    if events.empty:
        return {h: 0 for h in range(1, max_days + 1)}
    days = pd.to_datetime(events["ts"], utc=True).dt.date
    frame = pd.DataFrame({"user": events["user_id"].astype(str).to_numpy(), "day": days})
    first_seen = frame.groupby("user")["day"].min()
    out = {}
    for h in range(1, max_days + 1):
        through = day - dt.timedelta(days=h)
        tested = frame.loc[frame["day"] > through, "user"].unique()
        out[h] = int((first_seen.reindex(tested) <= through).sum())
    return out
