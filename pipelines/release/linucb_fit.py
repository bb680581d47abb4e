"""Daily fit of the LinUCB explorer's state (:mod:`serving.linucb`) from the served logs.

For each of the ``days`` days up to ``date`` (included), the service's impression log
(``RECLOOP_HOME/serving/impressions/date=D``, :mod:`serving.logging`: one ``impression`` row
per shown item, ``click`` rows carrying the impression's ``request_id`` and ``position``) gives
the rows: every impression, reward ``r`` = 1 when the same request clicked the same position.
Its context vector is rebuilt as the service built it that day
(:func:`serving.linucb.context_features`) from the feature tables of the day before (the ones
materialized for serving on day ``D``): the item table (28-day counts, category, age, trending)
and the user's row (top category and its share, 28-day CTR and impressions). A day without logs
or without those feature tables is skipped (counted in the summary).

The state ``A = lam I + sum x x^T``, ``b = sum r x`` over all those rows is written to
``RECLOOP_HOME/serving/linucb/state.npz`` (:func:`serving.linucb.state_path`), which the
service reloads when it changes. All impressions are used, explored or not: the linear model
is one of the user-item click probability, and the exploit slots carry most of the data.
Position is not in the context (a click at a low slot counts as one at the top).

``python -m pipelines.release.linucb_fit --date D [--days 7] [--lam 1.0]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import layout
from pipelines.core.settings import Settings
from serving import linucb


def day_rewards(settings: Settings, date: dt.date) -> pd.DataFrame | None:
    """``date``'s served impressions ``(user_id, item_id, clicked)`` (None: no log that day)."""
    folder = layout.impressions_dir(settings) / f"date={date.isoformat()}"
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    if not files:
        return None
    cols = ["event", "user_id", "item_id", "request_id", "position"]
    log = pd.concat([pd.read_parquet(f, columns=cols) for f in files], ignore_index=True)
    imp = log[log["event"] == "impression"].drop_duplicates(["request_id", "position"])
    clicks = log.loc[log["event"] == "click", ["request_id", "position"]].drop_duplicates()
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
