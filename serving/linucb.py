"""LinUCB for the explore slot (``RECLOOP_SERVE_EXPLORER=linucb``): a linear click model over a
small context vector, its ridge-regression state, and a stochastic choice with exact
probabilities.

**Context vector** (:func:`context_features`, ``D`` = 10, :data:`FEATURES`, each in about
``[0, 1]``), per explore-pool candidate, from what the re-rank stage has and what the daily fit
can rebuild from the served logs and the day's feature tables (so fit and serving see the same
numbers; the ranker's score is left out for that reason: the logs do not keep it):

0. ``bias``: 1;
1. ``item_ctr``: the item's 28-day click posterior mean ``(a0 + clicks) / (a0 + b0 +
   impressions)`` (item table counts, prior ``explore_prior``), times 10, at most 3;
2. ``item_log_impressions``: ``log1p(impressions) / 10``;
3. ``item_fresh``: 1 when ``0 <= age_days <= 7``;
4. ``item_age``: ``min(age_days, 365) / 365`` (0 unknown);
5. ``item_trending``: ``log1p(max(trending, 0)) / 3`` clipped to ``[0, 1]``;
6. ``category_match``: 1 when the item's category is the user's ``user_top_category``;
7. ``category_match_share``: that times ``user_top_category_share``;
8. ``user_ctr``: ``user_ctr_28d`` times 10 (clipped to ``[0, 1]``);
9. ``user_log_impressions``: ``log1p(user_impressions_28d) / 10``.

A user without hydrated features gets the defaults (0 for 6-9 but ``user_ctr``, which falls to 0).

**State** (:class:`LinUCBState`): ``A = lam I + sum x x^T`` ``(D, D)`` and ``b = sum r x``
``(D,)`` over logged impressions (``r`` = 1 when clicked), ``theta = A^-1 b``. It is fitted daily
from the validated served logs by the daily DAG's ``fit_linucb`` task
(:mod:`pipelines.release.linucb_fit`) and saved as
``RECLOOP_HOME/serving/linucb/state.npz`` (:func:`state_path`; a copy per fitted-through day,
:func:`dated_state_path`, read by :func:`state_path_for`); the service reloads it when the
file changes (:func:`cached_state`, checked at most every ``check_s``); no file = the prior
``A = lam I``, ``b = 0``, under which the choice is uniform (the widths alone would pick the
longest vectors). No in-process update from ``/feedback`` (not built): worker processes would
each hold another state, and the served OPE's replay of a configuration
(:mod:`pipelines.release.served_ope`) could not rebuild a state that moved during the day; the
logged propensities would stay exact either way (computed per request).

**Choice** (:func:`choice_probabilities`): ``ucb_j = x_j theta + alpha sqrt(x_j A^-1 x_j)``,
``P(j) = softmax(ucb / temperature)`` over the pool, mixed with a uniform share ``uniform``:
``P(j) = uniform / P + (1 - uniform) softmax_j``. Every pool item keeps a positive probability
(overlap for the off-policy evaluation); the draw is made from these numbers, so the logged
propensity ``rate / k * P(j)`` is exact.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = (
    "bias", "item_ctr", "item_log_impressions", "item_fresh", "item_age", "item_trending",
    "category_match", "category_match_share", "user_ctr", "user_log_impressions",
)  # fmt: skip
"""Names of the context vector's dimensions, in order (module docstring)."""
D = len(FEATURES)


def _user_number(user: Mapping[str, Any] | None, name: str) -> float:
    """``user[name]`` as a finite float (0 when missing, None or not a number)."""
    try:
        value = float((user or {}).get(name) or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return value if np.isfinite(value) else 0.0


def context_features(
    user: Mapping[str, Any] | None,
    clicks: np.ndarray,
    impressions: np.ndarray,
    categories: np.ndarray,
    ages: np.ndarray,
    trending: np.ndarray,
    prior: tuple[float, float] = (1.0, 19.0),
) -> np.ndarray:
    """The context vectors ``(P, D)`` float64 of ``P`` candidates (module docstring): item
    arrays ``(P,)`` (28-day ``clicks`` / ``impressions``, ``categories`` str, ``ages`` days with
    -1 unknown, ``trending``) and the hydrated ``user`` features (None: none)."""
    clicks = np.maximum(np.asarray(clicks, dtype=np.float64), 0.0)
    imps = np.maximum(np.asarray(impressions, dtype=np.float64), 0.0)
    ages = np.asarray(ages, dtype=np.float64)
    n = len(clicks)
    a0, b0 = prior
    top = str((user or {}).get("user_top_category") or "unknown")
    share = float(np.clip(_user_number(user, "user_top_category_share"), 0.0, 1.0))
    match = (np.asarray(categories).astype(str) == top) & (top != "unknown")
    x = np.empty((n, D))
    x[:, 0] = 1.0
    x[:, 1] = np.minimum(10.0 * (a0 + clicks) / (a0 + b0 + imps), 3.0)
    x[:, 2] = np.log1p(imps) / 10.0
    x[:, 3] = (ages >= 0) & (ages <= 7)
    x[:, 4] = np.where(ages >= 0, np.minimum(ages, 365.0), 0.0) / 365.0
    trend = np.maximum(np.nan_to_num(np.asarray(trending, dtype=np.float64)), 0.0)
    x[:, 5] = np.clip(np.log1p(trend) / 3.0, 0.0, 1.0)
    x[:, 6] = match
    x[:, 7] = match * share
    x[:, 8] = np.clip(10.0 * _user_number(user, "user_ctr_28d"), 0.0, 1.0)
    x[:, 9] = np.log1p(max(_user_number(user, "user_impressions_28d"), 0.0)) / 10.0
    return x


@dataclass(frozen=True)
class LinUCBState:
    """``a`` ``(D, D)`` = ``lam I + sum x x^T``, ``b`` ``(D,)`` = ``sum r x``, ``n`` = rows fitted,
    ``fitted``: a label of what it was fitted on (dates), or None for the prior."""

    a: np.ndarray
    b: np.ndarray
    n: int = 0
    fitted: str | None = None

    @property
    def theta(self) -> np.ndarray:
        """``A^-1 b`` ``(D,)``: the ridge estimate of the click model's weights."""
        return np.linalg.solve(self.a, self.b)

    def ucb(self, x: np.ndarray, alpha: float) -> np.ndarray:
        """``x theta + alpha sqrt(x A^-1 x)`` for contexts ``x`` ``(P, D)``; ``(P,)``."""
        a_inv = np.linalg.inv(self.a)
        width = np.sqrt(np.maximum(np.einsum("pd,de,pe->p", x, a_inv, x), 0.0))
        return x @ (a_inv @ self.b) + alpha * width


def prior_state(lam: float = 1.0, d: int = D) -> LinUCBState:
    """The state before any data: ``A = lam I``, ``b = 0``."""
    return LinUCBState(lam * np.eye(d), np.zeros(d), 0, None)


def fit(x: np.ndarray, r: np.ndarray, lam: float = 1.0, fitted: str | None = None) -> LinUCBState:
    """Ridge fit of rewards ``r`` ``(n,)`` on contexts ``x`` ``(n, D)``: ``A = lam I + X^T X``,
    ``b = X^T r`` (the LinUCB formulas over a batch)."""
    x = np.asarray(x, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    return update(prior_state(lam, x.shape[1]), x, r, fitted)


def update(
    state: LinUCBState, x: np.ndarray, r: np.ndarray, fitted: str | None = None
) -> LinUCBState:
    """``state`` plus the rows ``x`` ``(n, D)`` with rewards ``r`` ``(n,)`` (a new state)."""
    x = np.asarray(x, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    label = fitted if fitted is not None else state.fitted
    return LinUCBState(state.a + x.T @ x, state.b + x.T @ r, state.n + len(r), label)


def choice_probabilities(
    x: np.ndarray, state: LinUCBState, alpha: float, temperature: float, uniform: float = 0.0
) -> np.ndarray:
    """``P(j)`` ``(P,)`` of the explore choice over contexts ``x`` ``(P, D)`` (module docstring):
    ``uniform / P + (1 - uniform) softmax(ucb / temperature)``; sums to 1. Uniform while the
    state holds no data (``state.n`` 0: no fitted file yet)."""
    n = len(x)
    if n == 0:
        return np.zeros(0)
    if state.n == 0:  # no data: the prior's widths alone would favour the largest vectors
        return np.full(n, 1.0 / n)
    z = state.ucb(x, alpha) / temperature
    w = np.exp(z - z.max())
    soft = w / w.sum()
    return uniform / n + (1.0 - uniform) * soft


def state_path(home: Path | str) -> Path:
    """``RECLOOP_HOME/serving/linucb/state.npz``: the state the service loads."""
    return Path(home) / "serving" / "linucb" / "state.npz"


def dated_state_path(home: Path | str, day: str) -> Path:
    """``RECLOOP_HOME/serving/linucb/date=D.npz``: the state fitted through day ``D`` (ISO), kept
    beside :func:`state_path` by the daily fit."""
    return Path(home) / "serving" / "linucb" / f"date={day}.npz"


def state_path_for(home: Path | str, as_of: str | None) -> Path:
    """The state a service serves with the item table of day ``as_of`` (ISO; None: unknown):
    the one fitted through that day when it is kept (:func:`dated_state_path`), else
    :func:`state_path`. Live, both are the same file's content (yesterday's fit, yesterday's
    table); a replay of a past day (the served OPE, ``recloop stages``: the item table of the
    day before it) then sees the state that served that day, not one fitted on the day itself."""
    if as_of:
        dated = dated_state_path(home, as_of)
        if dated.exists():
            return dated
    return state_path(home)


def save_state(path: Path, state: LinUCBState) -> Path:
    """Write ``state`` to ``path`` atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, a=state.a, b=state.b, n=np.int64(state.n), fitted=np.str_(state.fitted or ""))
    os.replace(tmp, path)
    return path


def load_state(path: Path) -> LinUCBState | None:
    """The state saved at ``path``, or None when there is none. A file of another dimension
    than :data:`D` raises ``ValueError``."""
    if not path.exists():
        return None
    with np.load(path) as z:
        a, b = np.asarray(z["a"], float), np.asarray(z["b"], float)
        n, fitted = int(z["n"]), str(z["fitted"]) or None
    if a.shape != (D, D) or b.shape != (D,):
        raise ValueError(f"{path}: LinUCB state of shape {a.shape}, expected ({D}, {D})")
    return LinUCBState(a, b, n, fitted)


_CACHE: dict[Path, tuple[float, float, LinUCBState]] = {}
_CACHE_LOCK = threading.Lock()


def cached_state(path: Path, lam: float, check_s: float = 30.0) -> LinUCBState:
    """The state at ``path`` (the prior ``lam I`` when none), read again when its modification
    time changed, looked at no more than every ``check_s`` seconds (per process)."""
    now = time.monotonic()
    with _CACHE_LOCK:
        hit = _CACHE.get(path)
        if hit is not None and now - hit[0] < check_s:
            return hit[2]
        mtime = path.stat().st_mtime if path.exists() else -1.0
        if hit is not None and hit[1] == mtime:
            _CACHE[path] = (now, mtime, hit[2])
            return hit[2]
        state = load_state(path) or prior_state(lam)
        _CACHE[path] = (now, mtime, state)
        return state
