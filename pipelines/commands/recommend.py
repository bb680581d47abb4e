"""Write top-K recommendations of a trained model for every known user or the listed ones.

  recloop recommend --model mf|two_tower|popular|itemknn|userknn --k 10 [--users FILE] --out FILE
                    [--date D]

Output (CSV, or parquet when FILE ends in .parquet): user_id, item_id, rank, score — raw ids, rank
1 = best, items the user already engaged with in training excluded. --users is a text/CSV file
with one user id per line (a `user_id` header is allowed); ids the model does not know are
reported and skipped. --date picks the model trained through that date (default: the newest).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        choices=["mf", "mf_explicit", "two_tower", "popular", "itemknn", "userknn"],
    )
    parser.add_argument("--k", type=int, default=10, help="items per user (1..1000)")
    parser.add_argument("--users", type=Path, help="file with one user id per line")
    parser.add_argument("--out", type=Path, required=True, help="output .csv or .parquet")
    parser.add_argument("--date", help="use the model trained through this date")


def read_ids(path: Path, column: str) -> list[str]:
    """Ids from a one-column text/CSV file (header ``column`` optional)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    lines = [line.split(",")[0].strip() for line in path.read_text().splitlines()]
    ids = [x for x in lines if x]
    if ids and ids[0] == column:
        ids = ids[1:]
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


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.retrieval.predict import recommend

    if not 1 <= args.k <= 1000:
        raise ValueError(f"--k {args.k}: expected 1..1000")
    users = read_ids(args.users, "user_id") if args.users else None
    frame = recommend(settings, args.model, args.k, users, args.date)
    write_frame(frame, args.out)
    print(
        f"wrote {len(frame)} recommendations for {frame['user_id'].nunique()} users to {args.out}"
    )
    return 0
