"""Daily fit of the LinUCB explorer's state (:mod:`serving.linucb`) from the served logs.

For each of the ``days`` days up to ``date`` (included), the day's validated logs
(``RECLOOP_HOME/data/validated/date=D``: the service's impression and feedback rows, ingested at
their logical date and through the validation gate, beside any other logging policy's) give the
rows: every impression with a ``request_id`` and a ``position``, reward ``r`` = 1 when the same
request clicked the same position. (The service's own log, ``serving/impressions``, is
partitioned by wall-clock date; the validated partition is the logical day.)
Its context vector is rebuilt as the service built it that day
(:func:`serving.linucb.context_features`) from the feature tables of the day before (the ones
materialized for serving on day ``D``): the item table (28-day counts, category, age, trending)
and the user's row (top category and its share, 28-day CTR and impressions). A day without logs
or without those feature tables is skipped (counted in the summary).

The state ``A = lam I + sum x x^T``, ``b = sum r x`` over all those rows is written to
``RECLOOP_HOME/serving/linucb/state.npz`` (:func:`serving.linucb.state_path`), which the
service reloads when it changes, and by :func:`daily_fit` also to ``date=<last day fitted>.npz``
beside it (:func:`serving.linucb.dated_state_path`: a replay of the next day serves with it,
not with a state fitted later). All impressions are used, explored or not: the linear model
is one of the user-item click probability, and the exploit slots carry most of the data.
Position is not in the context (a click at a low slot counts as one at the top).

**In the daily DAG** (task ``fit_linucb``, after ``validate``: :func:`daily_fit`): a fresh fit
over the :data:`FIT_DAYS` days up to the logical date, so a rerun of a day writes the same state;
nothing is written when the serving explorer (``RECLOOP_SERVE_EXPLORER``) is not ``linucb``, when
those days hold no impression to fit, or when the saved state was fitted through a later day (a
rerun of an old date does not roll the service back).

``python -m pipelines.release.linucb_fit --date D [--days 7] [--lam 1.0]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import layout
from pipelines.core.settings import Settings
from pipelines.core.validated import validated_files
from serving import linucb

log = logging.getLogger("recloop.linucb_fit")


FIT_DAYS = 7
"""Days of validated logs (up to the logical date) the daily fit uses."""


def day_rewards(settings: Settings, date: dt.date) -> pd.DataFrame | None:
    """``date``'s validated impressions of a request ``(user_id, item_id, clicked)`` (None: no
    validated partition that day)."""
    files = validated_files(settings, date, date)
    if not files:
        return None
    cols = ["event", "user_id", "item_id", "request_id", "position"]
    events = pd.concat([pd.read_parquet(f, columns=cols) for f in files], ignore_index=True)
    events = events[events["request_id"].notna() & events["position"].notna()]
    imp = events[events["event"] == "impression"].drop_duplicates(["request_id", "position"])
    clicks = events.loc[events["event"] == "click", ["request_id", "position"]].drop_duplicates()
    clicks = clicks.assign(clicked=1.0)
    out = imp.merge(clicks, on=["request_id", "position"], how="left")
    out["clicked"] = out["clicked"].fillna(0.0)
    return out[["user_id", "item_id", "clicked"]].reset_index(drop=True)


def day_contexts(
    settings: Settings, date: dt.date, rows: pd.DataFrame, prior: tuple[float, float]
) -> np.ndarray | None:
    """Context vectors ``(n, D)`` of ``rows`` (``user_id``, ``item_id``) from the feature tables
    of the day before ``date`` (None when either is missing)."""
    from serving.bundle import ItemTable

    day = date - dt.timedelta(days=1)
    item_path = layout.feature_table_path(settings, "item", day)
    user_path = layout.feature_table_path(settings, "user", day)
    if not item_path.exists() or not user_path.exists():
        return None
    table = ItemTable.from_frame(pd.read_parquet(item_path), day.isoformat())
    users = pd.read_parquet(user_path).drop_duplicates("user_id", keep="last")
    users = users.set_index(users["user_id"].astype(str))
    trows = table.rows(rows["item_id"].astype(str).tolist())
    known, at = trows >= 0, np.maximum(trows, 0)
    x = np.empty((len(rows), linucb.D))
    for user_id, idx in rows.groupby(rows["user_id"].astype(str)).indices.items():
        user = users.loc[user_id].to_dict() if user_id in users.index else None
        t, k = at[idx], known[idx]
        x[idx] = linucb.context_features(
            user,
            np.where(k, table.clicks[t], 0.0),
            np.where(k, table.impressions[t], 0.0),
            np.where(k, table.category[t], "unknown"),
            np.where(k, table.age_days[t], -1),
            np.where(k, table.trending[t], 0.0),
            prior,
        )
    return x


def fit_served(
    settings: Settings,
    date: str | dt.date,
    days: int = 7,
    lam: float = 1.0,
    prior: tuple[float, float] = (1.0, 19.0),
    write: bool = True,
) -> tuple[linucb.LinUCBState, dict[str, Any]]:
    """The state fitted on the ``days`` days up to ``date`` (module docstring), written to
    :func:`serving.linucb.state_path` when ``write``; and a summary (rows, clicks, days used
    and skipped, ``theta`` by feature, the path)."""
    end = dt.date.fromisoformat(str(date))
    state = linucb.prior_state(lam)
    used: list[str] = []
    skipped: list[str] = []
    clicks = 0.0
    for back in range(days - 1, -1, -1):
        day = end - dt.timedelta(days=back)
        rows = day_rewards(settings, day)
        x = None if rows is None or rows.empty else day_contexts(settings, day, rows, prior)
        if x is None or rows is None:
            skipped.append(day.isoformat())
            continue
        r = rows["clicked"].to_numpy(np.float64)
        state = linucb.update(state, x, r)
        clicks += float(r.sum())
        used.append(day.isoformat())
    label = f"{used[0]}..{used[-1]}" if used else None
    state = linucb.LinUCBState(state.a, state.b, state.n, label)
    path = linucb.state_path(settings.home)
    if write:
        linucb.save_state(path, state)
    theta = dict(zip(linucb.FEATURES, np.round(state.theta, 6).tolist(), strict=True))
    summary = {"rows": state.n, "clicks": clicks, "days": used, "skipped": skipped,
               "theta": theta, "path": str(path) if write else None}  # fmt: skip
    return state, summary


def fitted_through(state: linucb.LinUCBState | None) -> dt.date | None:
    """The last day a saved state was fitted on (its label ``first..last``), None if unknown."""
    label = (state.fitted if state is not None else None) or ""
    try:
        return dt.date.fromisoformat(label.rsplit("..", 1)[-1])
    except ValueError:
        return None


def daily_fit(
    settings: Settings,
    date: str | dt.date,
    explorer: str,
    lam: float = 1.0,
    prior: tuple[float, float] = (1.0, 19.0),
    days: int = FIT_DAYS,
) -> dict[str, Any]:
    """The daily DAG's ``fit_linucb`` (module docstring): :func:`fit_served` over the ``days``
    days up to ``date`` with the service's ``lam`` and ``prior``, written only when ``explorer``
    is ``linucb``, some impression was fitted and no saved state is newer. Returns a summary:
    ``fitted`` (bool), ``reason`` when not, else :func:`fit_served`'s summary."""
    day = dt.date.fromisoformat(str(date))
    if explorer != "linucb":
        log.info("fit_linucb %s: serving explorer is %r, not linucb: nothing fitted", day, explorer)
        return {"date": day.isoformat(), "fitted": False, "reason": f"explorer is {explorer}"}
    path = linucb.state_path(settings.home)
    newer = fitted_through(linucb.load_state(path))
    if newer is not None and newer > day:
        log.info("fit_linucb %s: %s was fitted through %s: kept", day, path, newer)
        return {"date": day.isoformat(), "fitted": False, "reason": f"state fitted through {newer}"}
    state, summary = fit_served(settings, day, days, lam, prior, write=False)
    if state.n == 0:
        log.info("fit_linucb %s: no served impressions (with the day-before feature tables) in "
                 "the %d days up to it: LinUCB state left as it is", day, days)  # fmt: skip
        return {"date": day.isoformat(), "fitted": False, "reason": "no feedback",
                "skipped": summary["skipped"]}  # fmt: skip
    linucb.save_state(path, state)
    through = fitted_through(state)
    if through is not None:  # what a replay of the next day serves with (state_path_for)
        linucb.save_state(linucb.dated_state_path(settings.home, through.isoformat()), state)
    summary["path"] = str(path)
    log.info("fit_linucb %s: %d impressions, %d clicks (days %s) -> %s; theta %s", day,
             state.n, summary["clicks"], summary["days"], path, summary["theta"])  # fmt: skip
    return {"date": day.isoformat(), "fitted": True, **summary}


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.release.linucb_fit --date D``: fit, write, print the summary."""
    p = argparse.ArgumentParser(description="Fit the LinUCB explorer's state from served logs.")
    p.add_argument("--date", required=True, help="last day of logs (ISO)")
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--home", type=Path, default=None, help="RECLOOP_HOME (default: env)")
    args = p.parse_args(argv)
    settings = Settings.from_env() if args.home is None else Settings(home=args.home)
    _, summary = fit_served(settings, args.date, args.days, args.lam)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
