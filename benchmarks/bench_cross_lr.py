"""Does a logistic regression over item x user-segment crosses order a day's candidates better
than the served ranker? A diagnostic for issue 14 (benchmarks/README.md, twelfth session); the
platform's own version of the regression is ``models.cross_lr`` (``RECLOOP_RANKER``, thirteenth
session).

On a finished demo workspace: the users of day D are served in-process by bundle REF (the
champion that served D) as `recloop stages` serves `full`, and each request's candidates, ranker
probabilities and hydrated user features are kept. A scikit-learn L2 logistic regression is fit on
the bundle ranker's own training rows (its 28-day window of labelled impressions, through the
ranker's `trained_through`) with one-hot features chosen by `--features`:

- `i`: the item;
- `c`: the item's category, and the category x each of the user's age band, gender and country;
- `x`: the item x each of the user's age band, gender and country.

Each request's candidates are then ordered by the ranker's probability (`ranker`), tempered by
the retrieval order (`tempered`, w 0.3), by the regression's logit (`lr_<features><C>`), and by
the tempered log-probability plus that logit (`lpt+lr_...`); printed is the mean true CTR of the
top 10 of each order (the simulator's truth, positions 0-9), over requests with at least ten
candidates, ranker scores and user features. With `--served NAME` (e.g. `icx0.1`), the users are
served again with that regression's logit as the exploit score (re-ranking and exploration as
served), and both served true CTRs are printed.

  RECLOOP_HOME=/tmp/rl/d10l RECLOOP_REDIS_URL=redis://127.0.0.1:6472/0 \\
      .venv/bin/python benchmarks/bench_cross_lr.py --date 2026-01-10 --bundle 8 --users 1000

Materialize D-1's features into Redis first (`recloop features materialize --date D-1 --force`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

LEVELS = ("user_age_band", "user_gender", "user_country")
"""The user's segment features crossed with the item and its category."""


def feature_keys(features: str) -> Callable[[str, str, dict[str, Any]], list[str]]:
    """The one-hot feature names of a row (item id, its category, the user's ``LEVELS`` values)
    for the feature groups in ``features`` (``i``, ``c``, ``x``: the module docstring)."""

    def keys(item: str, cat: str, user: dict[str, Any]) -> list[str]:
        out = [f"i={item}"] if "i" in features else []
        if "c" in features:
            out += [f"c={cat}"] + [f"c={cat}|{lv}={user[lv]}" for lv in LEVELS]
        if "x" in features:
            out += [f"i={item}|{lv}={user[lv]}" for lv in LEVELS]
        return out

    return keys


def segment_of(user: dict[str, Any]) -> dict[str, str]:
    """The ``LEVELS`` values of a user's hydrated online features, as the training rows hold them."""
    from pipelines.ranking.data import age_band

    return {"user_age_band": age_band(user.get("user_age")),
            "user_gender": str(user.get("user_gender")),
            "user_country": str(user.get("user_country"))}  # fmt: skip


def design(rows: list[list[str]], vocab: dict[str, int], grow: bool) -> sp.csr_matrix:
    """The ``(len(rows), len(vocab))`` 0/1 matrix of ``rows``' feature names; unknown names are
    added to ``vocab`` when ``grow`` (training), else left out (scoring)."""
    r, c = [], []
    for j, names in enumerate(rows):
        for name in names:
            col = vocab.get(name)
            if col is None and grow:
                col = vocab[name] = len(vocab)
            if col is not None:
                r.append(j)
                c.append(col)
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), len(vocab)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--date", required=True, help="the served day D")
    parser.add_argument("--bundle", required=True, help="the bundle that served D")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--features", default="icx", help="comma-separated groups, e.g. i,c,icx")
    parser.add_argument("--C", default="0.03,0.1,0.3", help="inverse L2 strengths to try")
    parser.add_argument("--served", help="serve again with this regression (e.g. icx0.1)")
    args = parser.parse_args(argv)

    from sklearn.linear_model import LogisticRegression

    import serving.pipeline as serving_pipeline
    from pipelines.core.settings import Settings
    from pipelines.data import simulate
    from pipelines.features.store import training_frame
    from pipelines.loop import stages
    from pipelines.ranking.data import SERVICE, add_ranker_columns, training_rows

    settings = Settings.from_env()
    kept: list[tuple[str, list[str], np.ndarray, Any, dict[str, Any]]] = []
    rerank = serving_pipeline._rerank

    def keep(engine, req, bundle, ranked, user=None):  # noqa: ANN001, ANN202
        if ranked.probabilities and user is not None and len(ranked.ids) >= 10:
            kept.append((req.user_id, list(ranked.ids), np.asarray(ranked.scores), bundle, user))
        return rerank(engine, req, bundle, ranked, user)

    serving_pipeline._rerank = keep
    doc = stages.run_stages(settings, args.date, args.bundle, args.users, only=["full"])
    world = simulate.load_world_for_replay(settings, args.date)
    bundle = kept[0][3]
    meta = json.loads((Path(bundle.paths["ranker"]) / "meta.json").read_text())
    rows, _, _ = training_rows(settings, dt.date.fromisoformat(meta["trained_through"]), 28)
    frame = add_ranker_columns(training_frame(settings, rows, SERVICE))
    print(f"{len(frame)} training rows through {meta['trained_through']}, "
          f"CTR {frame['label'].mean():.4f}; {len(kept)} requests scored", flush=True)  # fmt: skip
    users = frame[list(LEVELS)].astype(str).to_dict("records")
    models = {}
    for features in args.features.split(","):
        keys = feature_keys(features)
        vocab: dict[str, int] = {}
        train_rows = [
            keys(str(i), str(c), u)
            for i, c, u in zip(frame["item_id"], frame["item_category"], users, strict=True)
        ]
        x = design(train_rows, vocab, grow=True)
        for c in (float(v) for v in args.C.split(",")):
            fit = LogisticRegression(C=c, max_iter=300, solver="liblinear").fit(x, frame["label"])
            models[f"{features}{c:g}"] = (keys, vocab, fit)
    slots = np.arange(10)
    res: dict[str, list[float]] = {}

    def top10(name: str, user_id: str, ids: list[str], scores: np.ndarray) -> None:
        order = np.argsort(-scores, kind="stable")[:10]
        shown = [ids[j] for j in order]
        res.setdefault(name, []).append(
            float(simulate.true_click_prob(world, [user_id] * 10, shown, slots).mean())
        )

    for user_id, ids, probs, b, user in kept:
        segment = segment_of(user)
        trows = b.item_table.rows(ids)
        cats = np.where(trows >= 0, b.item_table.category[np.maximum(trows, 0)], "unknown")
        lp = np.log(np.clip(probs, 1e-6, 1.0))
        lpt = lp - 0.3 * np.log1p(np.arange(len(lp)))
        top10("ranker", user_id, ids, lp)
        top10("tempered", user_id, ids, lpt)
        for name, (keys, vocab, fit) in models.items():
            cand = [keys(str(i), str(c), segment) for i, c in zip(ids, cats, strict=True)]
            logit = fit.decision_function(design(cand, vocab, grow=False))
            top10(f"lr_{name}", user_id, ids, logit)
            top10(f"lpt+lr_{name}", user_id, ids, lpt + logit)
    for name, values in res.items():
        print(f"{name:20s} {np.mean(values):.4f}")
    if args.served:
        keys, vocab, fit = models[args.served]
        table = bundle.item_table

        def lr_scores(cfg, b, ranked, user=None):  # noqa: ANN001, ANN202
            if not ranked.probabilities or user is None:
                return exploit(cfg, b, ranked, user)
            segment = segment_of(user)
            trows = table.rows(ranked.ids)
            cats = np.where(trows >= 0, table.category[np.maximum(trows, 0)], "unknown")
            cand = [keys(str(i), str(c), segment) for i, c in zip(ranked.ids, cats, strict=True)]
            return 1.0 / (1.0 + np.exp(-fit.decision_function(design(cand, vocab, grow=False))))

        exploit = serving_pipeline.exploit_scores
        serving_pipeline._rerank = rerank
        serving_pipeline.exploit_scores = lr_scores
        again = stages.run_stages(settings, args.date, args.bundle, args.users, only=["full"])
        for label, d in (("served, ranker", doc), (f"served, lr_{args.served}", again)):
            full = d["variants"]["full"]
            print(f"{label:20s} {full['true_ctr']:.4f} ({full['distinct_items']} items)")


if __name__ == "__main__":
    main()
