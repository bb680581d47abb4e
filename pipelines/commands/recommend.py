"""Write top-K recommendations of a trained model for every known user or the listed ones.

  recloop recommend --model mf|mf_explicit|two_tower|popular|itemknn|userknn|ncf|bpr --k 10
                    [--users FILE] --out FILE [--date D]

Output (CSV, or parquet when FILE ends in .parquet): user_id, item_id, rank, score, source — raw
ids, rank 1 = best. Every listed user gets k rows: users the model knows its top-k unseen items
(source `model`), the others the cold-start list the service shows them (trending items as of the
model's date; source `cold_start`). A user listed twice gets one row set. --users is a text file
with one user id per line, or a CSV with a `user_id` header column; blank lines are skipped, any
other bad line is an error naming the file and line. --date picks the model trained through that
date (default: the newest). The summary line (printed and logged) counts users of each source.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import pandas as pd

from pipelines.core.settings import Settings

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    from pipelines.retrieval.train import MODELS

    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--k", type=int, default=10, help="items per user (1..1000)")
    parser.add_argument("--users", type=Path, help="file with one user id per line")
    parser.add_argument("--out", type=Path, required=True, help="output .csv or .parquet")
    parser.add_argument("--date", help="use the model trained through this date")


def read_ids(path: Path, column: str) -> list[str]:
    """Ids from a text file (one id per line) or a CSV whose header names ``column``, in file
    order, repeats kept. Blank lines are skipped; ``ValueError`` naming the file and line for a
    line with the wrong number of fields or an empty / space-containing id, or no ids at all."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    ids: list[str] = []
    index, width, header_checked = 0, 1, False
    with path.open(newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            fields = [f.strip() for f in row]
            if not any(fields):
                continue
            if not header_checked:
                header_checked = True
                if column in fields:
                    index, width = fields.index(column), len(fields)
                    continue
            if len(fields) != width:
                raise ValueError(
                    f"{path} line {line_no}: expected {width} field(s), got {len(fields)}: {row!r}"
                )
            value = fields[index]
            if not value or any(ch.isspace() for ch in value):
                raise ValueError(f"{path} line {line_no}: {value!r} is not a {column}")
            ids.append(value)
    if not ids:
        raise ValueError(f"{path}: no {column}s in the file")
    return ids


def write_frame(frame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    tmp.replace(out)


def summary(frame: pd.DataFrame, requested: list[str] | None, out: Path) -> str:
    """One line: rows written, users per ``source``, ids listed more than once, and requested
    users left without rows (a model that found no candidates for them)."""
    sources = frame.drop_duplicates("user_id")["source"].value_counts()
    line = (
        f"wrote {len(frame)} recommendations for {frame['user_id'].nunique()} users to {out}: "
        f"{int(sources.get('model', 0))} from the model, "
        f"{int(sources.get('cold_start', 0))} cold start (unknown to the model)"
    )
    if requested is None:
        return line
    unique = set(requested)
    if len(requested) > len(unique):
        line += f", {len(requested) - len(unique)} repeated id(s) listed once"
    missing = len(unique - set(frame["user_id"]))
    return line + (f", {missing} without any candidate" if missing else "")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.retrieval.predict import recommend

    if not 1 <= args.k <= 1000:
        raise ValueError(f"--k {args.k}: expected 1..1000")
    users = read_ids(args.users, "user_id") if args.users else None
    frame = recommend(settings, args.model, args.k, users, args.date)
    write_frame(frame, args.out)
    line = summary(frame, users, args.out)
    print(line)
    log.info(line)
    return 0
