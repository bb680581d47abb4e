"""Off-policy evaluation of a registered bundle on one day's logs (the gate's SNIPS input).

The bundle's policy is its two-tower retriever turned stochastic: ``π = softmax(u·v / T)`` over
the catalog the model knows, slates of ``k`` drawn without replacement (temperature ``T`` =
``TEMPERATURE``, stated in every report). ``pipelines.release.ope.policy_table`` turns D's logged
impressions into the item-position table and ``pipelines.release.ope.estimate`` gives IPS/SNIPS/... with
bootstrap intervals. Users the model does not know (outside its ``users.json``: no positives in
the training window) are scored as the service serves them: when the two-tower's user tower reads
attributes only (no user id embedding, no history mean), a user with attributes in
``data/users.parquet`` gets the tower's vector of those attributes (the service encodes the same
attributes read from the online store; :func:`tower_user_frame` maps them to the tower's columns
the way the feature table does); a user without attributes, or any unknown user of a tower that
reads ids or history, gets the mean user vector (the service answers those with trending items;
the mean vector is the policy's closest stand-in).

Logging propensities: on a day logged by the simulator's logging policy (``truth/world.json``
present and every impression's ``arm`` is ``simulate.ARM``) its item-position marginals are
computed exactly from its definition; on any other day (real logs, or the service's own logs in
the closed loop) the logged ``propensity`` is used: it must be the item-position marginal of the
policy that served the row (the log contract; the service logs it per shown item). On simulated
data the report also carries the policy's **true** value (``truth``) from the simulator, so an
estimate can be checked.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import layout, schema
from pipelines.core.ope_reports import write_ope_report
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

TEMPERATURE = 0.05
#: the SNIPS gate's tolerance (absolute CTR): about the half-width of one demo day's 95% interval,
#: so an equally good challenger is not blocked by the width of its own interval alone
SNIPS_TOLERANCE = 0.01
N_BOOT = 300
MAX_USERS = 400  # distinct users (contexts) evaluated per day, a seeded sample, to bound the cost
N_SAMPLES = 100  # Rao-Blackwellised slates per user for the target's item-position marginals


def user_attributes(settings: Settings) -> pd.DataFrame | None:
    """``data/users.parquet`` (``user_id`` and the raw attributes), or None when absent."""
    path = layout.attributes_path(settings, "users")
    return pd.read_parquet(path) if path.exists() else None


def tower_user_frame(attributes: pd.DataFrame, columns: list[str]) -> pd.DataFrame | None:
    """The user tower's input columns from raw attributes, indexed by ``user_id`` (str).

    A column named as an attribute (``age``: the tower was trained from ``users.parquet``) is
    copied; a feature-table column (``user_age``) is the attribute with the table's fill for
    unknown values (``pipelines.features.tables.DEFAULTS``: ``-1``, ``"unknown"``), as the feature
    table and so the online store hold it. None when a column has no attribute to come from."""
    from pipelines.features.tables import DEFAULTS

    frame = attributes.drop_duplicates("user_id", keep="last")
    out = pd.DataFrame(index=pd.Index(frame["user_id"].astype(str), name="user_id"))
    for col in columns:
        if col in frame.columns:
            out[col] = frame[col].to_numpy()
        elif col.startswith("user_") and col[5:] in frame.columns and col in DEFAULTS:
            raw = frame[col[5:]]
            out[col] = raw.where(raw.notna(), DEFAULTS[col]).to_numpy()
        else:
            log.warning("user tower column %r: no such user attribute; unknown users get the "
                        "mean vector", col)  # fmt: skip
            return None
    return out


def two_tower_scorer(folder: Path, attributes: pd.DataFrame | None = None):
    """``(score(user_ids, item_ids) -> (U, I), item_ids)`` of the two-tower artifact in ``folder``.

    ``attributes``: raw user attributes (``data/users.parquet``); users outside the vocabulary
    that have a row get their user-tower vector from it when the tower reads attributes only,
    the others the mean user vector (module docstring)."""
    from models.base import load_model
    from pipelines.core.vocab import Vocab

    model = load_model(Path(folder) / "model")
    users, items = Vocab.load(Path(folder) / "users.json"), Vocab.load(Path(folder) / "items.json")
    uvec, ivec = model.user_embeddings(), model.item_embeddings()
    mean_user = uvec.mean(axis=0)
    columns_of = getattr(model, "user_feature_columns", None)
    columns = columns_of() if columns_of is not None else None
    frame = None
    if columns and attributes is not None:
        frame = tower_user_frame(attributes, columns)
    cache: dict[str, np.ndarray] = {}

    def tower_vectors(ids: np.ndarray) -> np.ndarray:
        """``(N, D)`` tower vectors of unknown users ``ids`` (mean vector: no attributes)."""
        out = np.tile(mean_user, (len(ids), 1)).astype(uvec.dtype)
        if frame is None or not len(ids):
            return out
        todo = sorted({str(x) for x in ids} - cache.keys())
        pos = frame.index.get_indexer(todo)
        have = [t for t, p in zip(todo, pos, strict=True) if p >= 0]
        if have:
            vecs = model.encode_user_features(frame.loc[have].reset_index(drop=True))
            cache.update(zip(have, vecs, strict=True))
        for j, x in enumerate(ids):
            v = cache.get(str(x))
            if v is not None:
                out[j] = v
        return out

    def score(user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        u = users.encode(user_ids)
        i = items.encode(item_ids)
        U = np.where((u >= 0)[:, None], uvec[np.maximum(u, 0)], mean_user)
        unknown = np.flatnonzero(u < 0)
        if len(unknown):
            U[unknown] = tower_vectors(np.asarray(user_ids, dtype=object)[unknown])
        V = np.where((i >= 0)[:, None], ivec[np.maximum(i, 0)], 0.0)
        return (U @ V.T).astype(np.float64)

    return score, np.array(items.ids, dtype=object)


def _world(settings: Settings):
    if not layout.world_path(settings).exists():
        return None
    from pipelines.data.simulate import load_world

    return load_world(settings)


def _logged_by_simulator(logs: Any) -> bool:
    """True when every impression of ``logs`` was shown by the simulator's logging policy."""
    from pipelines.data.simulate import ARM

    arms = logs.loc[logs["event"] == "impression", "arm"]
    return bool(len(arms)) and bool((arms == ARM).all())


def evaluate_bundle(
    settings: Settings, date: str | dt.date, two_tower_folder: Path, label: str, seed: int = 0
) -> dict[str, Any]:
    """OPE estimates (and, on simulated data, the truth) of the bundle's policy on day ``date``.

    Writes ``reports/ope/date=D/<label>.json`` (:mod:`pipelines.core.ope_reports`) and returns
    it."""
    from pipelines.release import ope

    day = schema.parse_date(date)
    logs = schema.read_partition(settings.validated_dir, day)
    rng = np.random.default_rng(seed)
    users = np.array(
        sorted(logs.loc[logs["event"] == "impression", "user_id"].unique()), dtype=object
    )
    if len(users) > MAX_USERS:
        users = np.sort(rng.choice(users, MAX_USERS, replace=False))
    logs = logs[logs["user_id"].isin(set(users))]
    score, items = two_tower_scorer(two_tower_folder, user_attributes(settings))
    world = _world(settings)
    if world is not None:
        world.extend_to(day)  # the users and items that had arrived by D
    k = int(logs["position"].max()) + 1
    marginals = None
    if world is not None and _logged_by_simulator(logs):
        marginals = ope.simulator_logging_marginals(world, day, k=k)
    table = ope.policy_table(
        logs, score, items, TEMPERATURE, k, marginals, n_samples=N_SAMPLES, seed=seed
    )
    out: dict[str, Any] = {
        "date": day.isoformat(),
        "policy": label,
        "temperature": TEMPERATURE,
        "k": k,
        "logging_propensities": "simulator marginals" if marginals is not None else "logged",
        "users": len(users),
        "estimates": ope.estimate(table, n_boot=N_BOOT, seed=seed),
    }
    if world is not None:
        per_user = ope.true_policy_value(
            world, users, score, items, TEMPERATURE, k, n_samples=N_SAMPLES, seed=seed
        )
        weights = table.groupby("user_id").size().reindex(users).fillna(0).to_numpy()
        out["truth"] = float(np.average(per_user, weights=weights)) if weights.sum() else None
        shown = table["reward"].to_numpy()
        out["logging_ctr"] = float(shown.mean()) if len(shown) else None
    write_ope_report(settings, out)
    snips = out["estimates"].get("snips", {})
    log.info(
        "OPE of %s on %s: SNIPS %.4f [%.4f, %.4f], truth %s",
        label,
        day,
        snips.get("estimate") or float("nan"),
        snips.get("ci_low") or float("nan"),
        snips.get("ci_high") or float("nan"),
        out.get("truth"),
    )
    return out


NO_PROPENSITIES = "no logged propensities"


def missing_propensities(settings: Settings, day: dt.date) -> str | None:
    """Why ``day``'s validated logs cannot be evaluated off-policy, or None when they can: they
    need impressions with a usable logging propensity (logged in ``(0, 1]``, or the simulator's
    logging policy whose marginals are computed). Ratings, purchases or clicks without slates
    (imported histories) have none: ``"no logged propensities"`` and a detail."""
    if not schema.partition_dir(settings.validated_dir, day).exists():
        return f"{NO_PROPENSITIES} (no validated logs for {day})"
    logs = schema.read_partition(settings.validated_dir, day)
    imp = logs[logs["event"] == "impression"]
    if imp.empty:
        return f"{NO_PROPENSITIES} (the logs of {day} hold no impressions)"
    if (pd.to_numeric(imp["propensity"], errors="coerce") > 0).any():
        return None
    if layout.world_path(settings).exists() and _logged_by_simulator(logs):
        return None
    return f"{NO_PROPENSITIES} (none of the {len(imp)} impressions of {day} has one)"


def gate_inputs(settings: Settings, date: str | dt.date) -> dict[str, Any]:
    """OPE of the bundle the gate will judge on ``date`` and of the champion (when another).

    On a day whose logs carry no propensities (:func:`missing_propensities`) nothing is
    estimated: ``ope`` is ``{"not_evaluated": reason}`` (the SNIPS gate reports it, it does not
    fail) and ``champion_ope`` None."""
    from pipelines.release import registry
    from pipelines.release.gate import gated_bundle_version

    day = schema.parse_date(date)
    version = gated_bundle_version(settings, day)
    champion = registry.get_alias(settings, "champion")
    out: dict[str, Any] = {"candidate_version": version, "ope": None, "champion_ope": None}
    if version is None:
        return out
    why = missing_propensities(settings, day)
    if why is not None:
        log.info("OPE of %s: not evaluated: %s", day, why)
        out["ope"] = {"not_evaluated": why}
        return out
    for key, v in (("ope", version), ("champion_ope", champion)):
        if v is None or (key == "champion_ope" and v == version):
            continue
        folder = registry.load_bundle(settings, v)["paths"]["two_tower"]
        out[key] = evaluate_bundle(settings, day, Path(folder), f"bundle-{v}")["estimates"]
    return out
