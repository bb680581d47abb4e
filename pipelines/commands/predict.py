"""Score given user-item pairs with a trained model.

  recloop predict --model mf|mf_explicit|two_tower|itemknn|userknn|popular|ncf|bpr|ranker|ranker_lr
                  --pairs FILE --out FILE [--date D]

FILE is a CSV or parquet with columns user_id, item_id. The output adds `score` (for mf_explicit
a predicted rating; otherwise the model's preference score) and `known` (false where
the user or item is unknown to the model: the score is left empty, nothing is dropped).
For ranker / ranker_lr the score is a click probability computed from the online features in
Redis (RECLOOP_REDIS_URL): unknown ids get the saved defaults and are flagged in user_missing /
item_missing instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    from pipelines.retrieval.train import MODELS

    parser.add_argument("--model", required=True, choices=[*MODELS, "ranker", "ranker_lr"])
    parser.add_argument(
        "--pairs", type=Path, required=True, help="CSV/parquet with user_id, item_id"
    )
    parser.add_argument("--out", type=Path, required=True, help="output .csv or .parquet")
    parser.add_argument("--date", help="use the model trained through this date")


def read_pairs(path: Path):
    import pandas as pd

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same error for the user
        raise ValueError(f"{path}: cannot read pairs ({exc})") from exc


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.commands.recommend import write_frame
    from pipelines.retrieval.predict import predict_pairs

    pairs = read_pairs(args.pairs)
    try:
        if args.model.startswith("ranker"):
            from pipelines.ranking.predict import predict_pairs as predict_ranker

            out = predict_ranker(settings, pairs, args.model, args.date)
            flagged = int((out["user_missing"] | out["item_missing"]).sum())
            summary = (
                f"scored {len(out)} pairs ({flagged} with missing online features: defaults used)"
            )
        else:
            out = predict_pairs(settings, args.model, pairs, args.date)
            unknown = int((~out["known"]).sum())
            summary = (
                f"scored {len(out) - unknown} of {len(out)} pairs ({unknown} with unknown ids)"
            )
    except ValueError as exc:
        raise ValueError(f"{args.pairs}: {exc}") from exc
    write_frame(out, args.out)
    print(f"{summary} -> {args.out}")
    return 0
