"""Train one model on the validated history up to a date (what the daily DAG's train tasks do).

  recloop train --model mf|mf_explicit|two_tower|popular|itemknn|userknn|ncf|bpr|ranker --date D
                [--window-days N] [--nproc N]

Writes artifacts/models/<model>/date=D/ (model, vocabularies, seen matrix, meta). mf_explicit is
ALS on ratings with biases (mu + b_u + b_i + p_u.q_i): `recloop predict --model mf_explicit`
then returns predicted ratings (e.g. after `recloop ingest movielens`). ncf is neural
collaborative filtering (GMF + MLP), bpr matrix factorization trained with the BPR loss. ranker
trains the ranker (RECLOOP_RANKER: by default the cross-feature regression or the DLRM, the better
on the validation day) and its logistic baseline (artifacts ranker/ and ranker_lr/, the
`train_ranker` task). The daily DAG trains mf, two_tower, popular, itemknn and the ranker.

--nproc N (two_tower, ranker): data-parallel training in N processes (PyTorch DDP; gloo on CPU,
NCCL on CUDA, one GPU per process): the command re-launches itself under
`torchrun --standalone --nproc-per-node N` and waits; each process logs its rank and the world
size, trains on its shard of every batch, and rank 0 saves the artifact (the same files as one
process). The DAG uses RECLOOP_TRAIN_NPROC.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipelines.core.settings import Settings

RANKER = "ranker"


def configure(parser: argparse.ArgumentParser) -> None:
    from pipelines.retrieval.train import MODELS

    parser.add_argument("--model", required=True, choices=(*MODELS, RANKER))
    parser.add_argument("--date", required=True, help="train on validated days up to this date")
    parser.add_argument(
        "--window-days", type=int, help="only the last N days (default: all history)"
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel processes (two_tower, ranker; default 1: one plain process)",
    )


def train_model(settings: Settings, model: str, date: str, window_days: int | None) -> Any:
    """Train ``model`` in this process (one rank of a DDP session, or the only process)."""
    if model == RANKER:
        from pipelines.ranking.train import train_for_date

        return train_for_date(settings, date, window_days)
    from pipelines.retrieval.train import train

    return train(settings, model, date, window_days)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.core import distributed

    if args.nproc < 1:
        raise ValueError(f"--nproc {args.nproc}: expected at least 1 process")
    if args.nproc > 1 and args.model not in distributed.DDP_MODELS:
        raise ValueError(
            f"--nproc {args.nproc}: {args.model} trains in one process "
            f"(data-parallel: {', '.join(distributed.DDP_MODELS)})"
        )
    if args.nproc > 1 and distributed.env_world_size() == 1:
        argv = ["train", "--model", args.model, "--date", args.date]
        if args.window_days:
            argv += ["--window-days", str(args.window_days)]
        distributed.launch(args.nproc, argv, settings.as_env())
        return 0
    with distributed.session():
        result = train_model(settings, args.model, args.date, args.window_days)
        if distributed.is_main():
            print(json.dumps(result, indent=2, default=str))
    return 0
