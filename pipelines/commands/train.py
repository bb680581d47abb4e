"""Train one model on the validated history up to a date (what the daily DAG's train tasks do).

  recloop train --model mf|mf_explicit|two_tower|popular|itemknn|userknn|ncf|bpr --date D
                [--window-days N]

Writes artifacts/models/<model>/date=D/ (model, vocabularies, seen matrix, meta). mf_explicit is
ALS on ratings with biases (mu + b_u + b_i + p_u.q_i): `recloop predict --model mf_explicit`
then returns predicted ratings (e.g. after `recloop ingest movielens`). ncf is neural
collaborative filtering (GMF + MLP), bpr matrix factorization trained with the BPR loss. The daily
DAG trains mf, two_tower, popular and itemknn.
"""

from __future__ import annotations

import argparse
import json

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    from pipelines.retrieval.train import MODELS

    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--date", required=True, help="train on validated days up to this date")
    parser.add_argument(
        "--window-days", type=int, help="only the last N days (default: all history)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.retrieval.train import train

    print(json.dumps(train(settings, args.model, args.date, args.window_days), indent=2))
    return 0
